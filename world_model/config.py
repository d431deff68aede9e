"""Configs of the world model and its trainer: what ``world_model.model`` builds and ``world_model.train`` runs.

Pure Python (no torch), so the pipeline can validate a stage's params against them (``pipeline.params``) without
importing torch in every process that reads a config. Each config checks itself on construction (``ValueError``
naming the field); ``WorldModelConfig`` fills in its sub-configs' shapes (channels, image size, z width) from its own
fields, so they always agree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from latent_actions.config import LatentActionConfig

Backend = Literal["deterministic", "diffusion"]
CAMERA_NAMES = ("front", "side", "top", "oblique", "wrist")
GateLoss = Literal["product", "split"]
PredictionType = Literal["epsilon", "v_prediction", "sample"]


@dataclass
class DeterministicConfig:
    """The deterministic backend's U-Net (``world_model.deterministic``)."""

    in_channels: int = 6
    image_size: int = 64
    cond_dim: int = 16  # dimension of z
    channels: tuple[int, ...] = (32, 64, 128)  # per level, the first at H/2
    blocks_per_level: int = 1
    bottleneck_blocks: int = 2
    # the output: s_t + sigmoid(m) * delta, a change delta composited through a per-camera change mask m, so pixels
    # whose mask is closed are exact copies of s_t (gate=False: s_t + delta, the network before the gate)
    gate: bool = True
    gate_weight: float = 1.0  # weight of the mask's binary cross-entropy against the real change mask
    gate_init_logit: float = -2.0  # the mask's initial logit everywhere (sigmoid(-2) = 0.12: mostly closed)
    # split: the gated change's error unweighted, plus delta's motion-weighted where the frame changes (see the
    # predictor's loss); product: the motion-weighted error of the gated change (it over-predicts uncertain motion)
    gate_loss: GateLoss = "split"
    motion_threshold: float = 0.03  # a pixel changes if any of its camera's channels moves more than this
    num_cameras: int = 1  # one mask per camera: in_channels are num_cameras equal groups

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        for name in ("in_channels", "cond_dim", "blocks_per_level", "bottleneck_blocks", "num_cameras"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if not isinstance(self.gate, bool):
            raise ValueError(f"gate: expected true or false, got {self.gate!r}")
        if not isinstance(self.gate_weight, (int, float)) or not self.gate_weight >= 0:
            raise ValueError(f"gate_weight: expected a number >= 0, got {self.gate_weight!r}")
        if not isinstance(self.gate_init_logit, (int, float)) or not -20 <= self.gate_init_logit <= 20:
            raise ValueError(f"gate_init_logit: expected a number from -20 to 20, got {self.gate_init_logit!r}")
        if self.gate_loss not in ("product", "split"):
            raise ValueError(f"gate_loss: expected product or split, got {self.gate_loss!r}")
        if not 0 < self.motion_threshold < 2:
            raise ValueError(f"motion_threshold: expected 0 < threshold < 2, got {self.motion_threshold!r}")
        if self.in_channels % self.num_cameras:
            raise ValueError(f"num_cameras: expected a divisor of in_channels ({self.in_channels}), "
                             f"got {self.num_cameras}")
        if len(self.channels) < 2 or any(c <= 0 or c % 8 for c in self.channels):
            raise ValueError(f"channels: expected two or more widths, each a multiple of 8, got {list(self.channels)}")
        down = 2 ** len(self.channels)
        if self.image_size < down or self.image_size % down:
            raise ValueError(f"image_size: expected a multiple of {down} (2 ** len(channels)), got {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeterministicConfig:
        """A saved config. One saved before the gate existed has no ``gate`` key: it builds the ungated network its
        weights belong to (a new config, built in code, has the gate by default)."""
        return cls(**{"gate": False, **d})


@dataclass
class DiffusionConfig:
    """The diffusion backend's UNet and scheduler (``world_model.diffusion``)."""

    in_channels: int = 6
    image_size: int = 64
    cond_dim: int = 16
    patch_size: int = 4  # space-to-depth factor before the UNet
    block_out_channels: tuple[int, ...] = (48, 96)
    layers_per_block: int = 1
    num_train_timesteps: int = 1000
    num_inference_steps: int = 4
    prediction_type: PredictionType = "sample"  # x0; see world_model.diffusion

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        for name in ("in_channels", "cond_dim", "patch_size", "layers_per_block", "num_train_timesteps",
                     "num_inference_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type: expected epsilon, v_prediction or sample, got {self.prediction_type!r}")
        if not self.block_out_channels or any(c <= 0 or c % 8 for c in self.block_out_channels):
            raise ValueError(f"block_out_channels: expected widths that are multiples of 8, "
                             f"got {list(self.block_out_channels)}")
        down = self.patch_size * 2 ** (len(self.block_out_channels) - 1)
        if self.image_size % down:
            raise ValueError(f"image_size: expected a multiple of {down} (patch_size * 2 ** (levels - 1)), "
                             f"got {self.image_size}")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(f"num_inference_steps: expected <= num_train_timesteps ({self.num_train_timesteps}), "
                             f"got {self.num_inference_steps}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class WorldModelConfig:
    """The joint model (``world_model.model``): what a state is, the networks and the objective's weights."""

    # what a state is
    cameras: tuple[str, ...] = ("oblique", "top", "wrist")
    depth: bool = False  # add each camera's depth map as a channel
    max_depth_m: float = 2.0  # depth is clipped to [0, max_depth_m] and scaled to [-1, 1]
    image_size: int = 64
    # the networks (their channel counts, image size and z width are filled in from the fields above)
    backend: Backend = "deterministic"
    latent: LatentActionConfig = field(default_factory=LatentActionConfig)
    deterministic: DeterministicConfig = field(default_factory=DeterministicConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    # the objective
    alignment: bool = True
    recon_weight: float = 1.0
    action_recon_weight: float = 1.0
    align_weight: float = 0.1  # small: E should learn mostly from reconstruction (all data), not overfit the labels
    head_weight: float = 0.1
    motion_weight: float = 10.0  # extra loss weight on pixels that change between s_t and s_t+1
    motion_threshold: float = 0.03  # a pixel changes if any channel moves more than this (in [-1, 1] units)
    # training on its own predictions (deterministic backend): a ``rollout_fraction`` of each batch starts from the
    # model's own open-loop prediction of s_t, rolled ``rollout_context`` steps from a real frame without gradients,
    # so W learns to correct the drift it makes in multi-step rollouts (0: every pair starts from a real s_t)
    rollout_context: int = 0
    rollout_fraction: float = 0.5

    def __post_init__(self):
        if isinstance(self.latent, dict):
            self.latent = LatentActionConfig(**self.latent)
        if isinstance(self.deterministic, dict):
            self.deterministic = DeterministicConfig(**self.deterministic)
        if isinstance(self.diffusion, dict):
            self.diffusion = DiffusionConfig(**self.diffusion)
        self.cameras = tuple(self.cameras)
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras: expected one or more distinct camera names, got {list(self.cameras)}")
        bad = [cam for cam in self.cameras if not isinstance(cam, str) or not cam.strip()]
        if bad:
            raise ValueError(f"cameras: expected camera names (the data's own, e.g. {', '.join(CAMERA_NAMES)} in the "
                             f"embedded simulator or cam_high in a LeRobot dataset), got {bad}")
        if self.backend not in ("deterministic", "diffusion"):
            raise ValueError(f"backend: expected deterministic or diffusion, got {self.backend!r}")
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 256:
            raise ValueError(f"image_size: expected an integer from 16 to 256, got {self.image_size!r}")
        if not self.max_depth_m > 0:
            raise ValueError(f"max_depth_m: expected > 0, got {self.max_depth_m!r}")
        for name in ("recon_weight", "action_recon_weight", "align_weight", "head_weight", "motion_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
        if not 0 < self.motion_threshold < 2:
            raise ValueError(f"motion_threshold: expected 0 < threshold < 2, got {self.motion_threshold!r}")
        if isinstance(self.rollout_context, bool) or not isinstance(self.rollout_context, int) \
                or not 0 <= self.rollout_context <= 16:
            raise ValueError(f"rollout_context: expected an integer from 0 to 16, got {self.rollout_context!r}")
        if self.rollout_context and self.backend != "deterministic":
            raise ValueError("rollout_context: training on own predictions needs backend: deterministic "
                             f"(got {self.backend}); set rollout_context: 0")
        if not isinstance(self.rollout_fraction, (int, float)) or not 0 < self.rollout_fraction <= 1:
            raise ValueError(f"rollout_fraction: expected 0 < fraction <= 1, got {self.rollout_fraction!r}")
        # one source of truth for the shapes: rebuild the sub-configs so they agree (and re-validate)
        shape = {"in_channels": self.in_channels, "image_size": self.image_size}
        self.latent = LatentActionConfig(**{**self.latent.to_dict(), **shape})
        self.deterministic = DeterministicConfig(**{**self.deterministic.to_dict(), **shape,
                                                    "cond_dim": self.latent.latent_dim,
                                                    "motion_threshold": self.motion_threshold,
                                                    "num_cameras": len(self.cameras)})
        self.diffusion = DiffusionConfig(**{**self.diffusion.to_dict(), **shape, "cond_dim": self.latent.latent_dim})

    @property
    def in_channels(self) -> int:
        return (4 if self.depth else 3) * len(self.cameras)

    @property
    def embodiments(self) -> list[str]:
        return sorted(self.latent.embodiments)

    def to_dict(self) -> dict[str, Any]:
        return {"cameras": list(self.cameras), "depth": self.depth, "max_depth_m": self.max_depth_m,
                "image_size": self.image_size, "backend": self.backend, "latent": self.latent.to_dict(),
                "deterministic": self.deterministic.to_dict(), "diffusion": self.diffusion.to_dict(),
                "alignment": self.alignment, "recon_weight": self.recon_weight,
                "action_recon_weight": self.action_recon_weight, "align_weight": self.align_weight,
                "head_weight": self.head_weight, "motion_weight": self.motion_weight,
                "motion_threshold": self.motion_threshold, "rollout_context": self.rollout_context,
                "rollout_fraction": self.rollout_fraction}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldModelConfig:
        """A saved config (``to_dict``, e.g. a checkpoint's): its sub-configs are read as saved ones (see
        ``DeterministicConfig.from_dict``: one without ``gate`` is the ungated network)."""
        if isinstance(d.get("deterministic"), dict):
            d = {**d, "deterministic": DeterministicConfig.from_dict(d["deterministic"])}
        return cls(**d)


@dataclass
class TrainConfig:
    """The training loop (``world_model.train``)."""

    steps: int = 3000  # total optimizer steps (a resumed run continues up to this)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    labelled_batch_fraction: float | None = 0.25  # share of each batch drawn from labelled pairs (None: natural)
    source_weights: dict[str, float] | None = None  # batch mix of sources (None: in proportion to their pairs)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    seed: int = 0
    num_threads: int = 0  # torch intra-op threads; 0 = leave torch's default

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr!r}")
        for name in ("weight_decay", "warmup_steps", "grad_clip", "num_threads"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)!r}")
        if self.labelled_batch_fraction is not None and not 0 < self.labelled_batch_fraction < 1:
            raise ValueError(f"labelled_batch_fraction: expected 0 < fraction < 1 or None, "
                             f"got {self.labelled_batch_fraction!r}")
        if self.source_weights is not None and any(w < 0 for w in self.source_weights.values()):
            raise ValueError(f"source_weights: expected weights >= 0, got {self.source_weights}")

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
