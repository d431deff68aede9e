"""The inverse-dynamics baseline (DreamGen's IDM): a -> from a frame pair, supervised on labelled pairs only.

    idm = train_idm(s_t, s_next, actions, IDMConfig(steps=2000))   # uint8 (N, C, H, W) x2, (N, A) robot units
    actions_hat = idm.predict(s_t, s_next)                          # (N, A) robot units
    idm.evaluate(s_t, s_next, actions)                              # {"r2", "r2_per_dim", "mse"}

The network is the latent-action model's encoder (``latent_actions.model.LatentActionEncoder``: both frames and their
difference, no pooling) with its output widened to the action dims, trained with MSE on actions normalised by the mean
and std of the labelled training pairs. It is what latent actions are compared against: the same encoder, but it learns
only from labels, so it cannot use action-free video.

States are uint8 camera stacks (``(C, H, W)``, 3 channels per RGB camera) scaled here to [-1, 1] as the world model
does; this package imports neither ``world_model`` nor ``pipeline``. The ``IDM`` wrapper owns the normalisation
statistics and inference; ``InverseDynamicsModel`` does the maths and owns its loss.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latent_actions.config import LatentActionConfig
from latent_actions.model import LatentActionEncoder

logger = logging.getLogger(__name__)


@dataclass
class IDMConfig:
    """Encoder architecture (as ``LatentActionConfig``) and the training loop of the inverse-dynamics model."""

    encoder_channels: tuple[int, ...] = (32, 64, 96, 128)  # as LatentActionConfig.encoder_channels
    encoder_hidden_dim: int = 256
    in_channels: int | None = None  # None: from the training data
    image_size: int | None = None  # square side in pixels; None: from the training data
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100  # linear warmup, then cosine decay to min_lr_fraction * lr
    min_lr_fraction: float = 0.1
    grad_clip: float = 1.0  # 0 = off
    seed: int = 0
    log_every: int = 100

    def __post_init__(self):
        self.encoder_channels = tuple(int(c) for c in self.encoder_channels)
        for name in ("encoder_hidden_dim", "steps", "batch_size", "log_every"):
            _check_positive_int(name, getattr(self, name))
        for name in ("in_channels", "image_size"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr!r}")
        for name in ("weight_decay", "warmup_steps", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.min_lr_fraction <= 1:
            raise ValueError(f"min_lr_fraction: expected 0..1, got {self.min_lr_fraction!r}")
        if not self.encoder_channels or any(c <= 0 for c in self.encoder_channels):
            raise ValueError(f"encoder_channels: expected positive widths, got {list(self.encoder_channels)}")
        if self.image_size is not None:  # must suit the encoder's downsampling; LatentActionConfig says how
            LatentActionConfig(image_size=self.image_size, encoder_channels=self.encoder_channels)

    @classmethod
    def like(cls, latent: LatentActionConfig, **overrides: Any) -> IDMConfig:
        """The encoder of a latent-action model's config (for a like-for-like baseline), plus training options."""
        encoder = {"encoder_channels": latent.encoder_channels, "encoder_hidden_dim": latent.encoder_hidden_dim,
                   "in_channels": latent.in_channels, "image_size": latent.image_size}
        return cls(**{**encoder, **overrides})

    def encoder_config(self) -> LatentActionConfig:
        """The ``LatentActionConfig`` that builds this model's encoder (only its encoder fields matter)."""
        if self.in_channels is None or self.image_size is None:
            raise ValueError("in_channels / image_size: unset; train_idm fills them from the data, or set them")
        return LatentActionConfig(in_channels=self.in_channels, image_size=self.image_size,
                                  encoder_channels=self.encoder_channels, encoder_hidden_dim=self.encoder_hidden_dim)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.min_lr_fraction + (1 - self.min_lr_fraction) * cosine)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IDMConfig:
        return cls(**d)


# -- the network -----------------------------------------------------------------------------------------------------


class InverseDynamicsModel(nn.Module):
    """(s_t, s_t+1) -> normalised action. States in [-1, 1], ``(B, C, H, W)``."""

    def __init__(self, config: IDMConfig, action_dim: int):
        super().__init__()
        _check_positive_int("action_dim", action_dim)
        self.config = config
        self.action_dim = int(action_dim)
        self.encoder = LatentActionEncoder(config.encoder_config(), self.action_dim)

    def forward(self, s_t: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
        return self.encoder(s_t, s_next)  # (B, A) normalised

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """``batch``: ``s_t``, ``s_next`` (B, C, H, W) in [-1, 1]; ``action`` (B, A) normalised by the wrapper."""
        pred = self(batch["s_t"], batch["s_next"])  # (B, A)
        loss = F.mse_loss(pred, batch["action"])
        return loss, {"mse": float(loss.detach())}


# -- the wrapper -----------------------------------------------------------------------------------------------------


class IDM:
    """A trained ``InverseDynamicsModel`` with its action statistics: predicts actions in the robot's units."""

    def __init__(self, model: InverseDynamicsModel, action_mean: np.ndarray, action_std: np.ndarray,
                 history: list[dict[str, float]] | None = None):
        self.model = model.eval()
        self.config = model.config
        self.action_mean = np.asarray(action_mean, dtype=np.float32)  # (A,)
        self.action_std = np.asarray(action_std, dtype=np.float32)  # (A,), 0 where the action never changed
        if self.action_mean.shape != (model.action_dim,) or self.action_std.shape != (model.action_dim,):
            raise ValueError(f"action_mean / action_std: expected shape ({model.action_dim},), got "
                             f"{self.action_mean.shape} / {self.action_std.shape}")
        self.history = list(history or [])  # one entry per log_every steps: step, lr, mse, cpu_s

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        scale = np.where(self.action_std > 1e-6, self.action_std, 1.0)
        return (np.asarray(actions, dtype=np.float32) - self.action_mean) / scale

    def unnormalize(self, actions: np.ndarray) -> np.ndarray:
        """Normalised -> robot units. A dim that never changed in training comes out as exactly that constant."""
        return np.asarray(actions, dtype=np.float32) * self.action_std + self.action_mean

    @torch.no_grad()
    def predict(self, s_t: np.ndarray, s_next: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Actions (N, A) in the robot's units for uint8 frame pairs (N, C, H, W)."""
        _check_pairs(s_t, s_next, self.config)
        out = []
        for i in range(0, len(s_t), batch_size):
            chunk = slice(i, i + batch_size)
            pred = self.model(to_model(s_t[chunk], self.device), to_model(s_next[chunk], self.device))  # (B, A)
            out.append(pred.cpu().numpy())
        pred = np.concatenate(out) if out else np.zeros((0, self.model.action_dim), np.float32)
        return self.unnormalize(pred)

    def evaluate(self, s_t: np.ndarray, s_next: np.ndarray, actions: np.ndarray) -> dict[str, Any]:
        """R2 (mean over dims that vary, and per dim: None where the true action is constant) and MSE in robot
        units."""
        pred = self.predict(s_t, s_next)
        return r2_report(pred, np.asarray(actions, dtype=np.float32))

    def save(self, path: str | Path) -> None:
        torch.save({"config": self.config.to_dict(), "action_dim": self.model.action_dim,
                    "action_mean": self.action_mean.tolist(), "action_std": self.action_std.tolist(),
                    "history": self.history, "state_dict": self.model.state_dict()}, str(path))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> IDM:
        saved = torch.load(str(path), map_location=device, weights_only=True)
        model = InverseDynamicsModel(IDMConfig.from_dict(saved["config"]), saved["action_dim"])
        model.load_state_dict(saved["state_dict"])
        return cls(model.to(device), np.array(saved["action_mean"]), np.array(saved["action_std"]), saved["history"])


# -- training --------------------------------------------------------------------------------------------------------


def train_idm(s_t: np.ndarray, s_next: np.ndarray, actions: np.ndarray, config: IDMConfig | None = None,
              device: str | torch.device = "cpu") -> IDM:
    """Train on labelled frame pairs: ``s_t`` / ``s_next`` uint8 (N, C, H, W), ``actions`` (N, A) in the robot's
    units. Normalisation statistics come from these pairs; ``config.in_channels`` / ``image_size`` from the frames when
    unset. Batches are drawn with replacement (seeded), so ``steps`` does not depend on N."""
    config = config or IDMConfig()
    s_t, s_next = np.asarray(s_t), np.asarray(s_next)
    actions = np.asarray(actions, dtype=np.float32)
    if s_t.ndim != 4 or s_t.shape[2] != s_t.shape[3]:
        raise ValueError(f"s_t: expected uint8 (N, C, H, W) with H == W, got {s_t.shape}")
    config = replace(config, in_channels=config.in_channels or int(s_t.shape[1]),
                     image_size=config.image_size or int(s_t.shape[2]))
    _check_pairs(s_t, s_next, config)
    if actions.ndim != 2 or len(actions) != len(s_t):
        raise ValueError(f"actions: expected ({len(s_t)}, A), one row per frame pair, got {actions.shape}")
    if len(actions) < 2:
        raise ValueError(f"train_idm: expected at least 2 labelled pairs, got {len(actions)}")
    if not np.isfinite(actions).all():
        raise ValueError("actions: contain NaN or inf (drop unlabelled pairs before training)")

    mean, std = actions.mean(0), actions.std(0)  # a constant dim (a gripper always open) gets std 0: see IDM
    std = np.where(std > 1e-6, std, 0.0)
    torch.manual_seed(config.seed)
    device = torch.device(device)
    model = InverseDynamicsModel(config, actions.shape[1]).to(device)
    idm = IDM(model, mean, std)
    target = torch.as_tensor(idm.normalize(actions))  # (N, A)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    window: list[float] = []
    model.train()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        index = torch.randint(len(s_t), (config.batch_size,), generator=generator).numpy()
        batch = {"s_t": to_model(s_t[index], device), "s_next": to_model(s_next[index], device),
                 "action": target[index].to(device)}
        loss, parts = model.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        window.append(parts["mse"])
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            entry = {"step": done, "lr": config.lr_at(step), "mse": float(np.mean(window)),
                     "cpu_s": round(time.process_time() - cpu0, 2)}
            window = []
            idm.history.append(entry)
            eta_s = (time.perf_counter() - wall0) / done * (config.steps - done)
            logger.info("idm step %d/%d (ETA %.0f s): mse %.4f", done, config.steps, eta_s, entry["mse"])
    model.eval()
    return idm


# -- helpers ---------------------------------------------------------------------------------------------------------


def to_model(frames: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (..., C, H, W) -> float32 in [-1, 1] (the world model's scaling, ``world_model.data.to_model``)."""
    return torch.as_tensor(np.asarray(frames)).to(device).float().div(127.5).sub(1.0)


def r2_report(pred: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """Coefficient of determination per action dim (None where the truth is constant) and their mean, plus MSE."""
    if pred.shape != true.shape or pred.ndim != 2:
        raise ValueError(f"r2_report: expected two (N, A) arrays of one shape, got {pred.shape} and {true.shape}")
    residual = ((pred - true) ** 2).sum(0)
    total = ((true - true.mean(0)) ** 2).sum(0)
    per_dim = [float(1 - r / t) if t > 1e-12 else None for r, t in zip(residual, total)]
    varying = [v for v in per_dim if v is not None]
    return {"r2": float(np.mean(varying)) if varying else None, "r2_per_dim": per_dim,
            "mse": float(((pred - true) ** 2).mean())}


def _check_pairs(s_t: np.ndarray, s_next: np.ndarray, config: IDMConfig) -> None:
    expected = (config.in_channels, config.image_size, config.image_size)
    for name, frames in (("s_t", s_t), ("s_next", s_next)):
        if frames.dtype != np.uint8:
            raise ValueError(f"{name}: expected uint8 frames, got {frames.dtype}")
        if frames.ndim != 4 or tuple(frames.shape[1:]) != expected:
            raise ValueError(f"{name}: expected (N, {', '.join(map(str, expected))}), got {frames.shape}")
    if len(s_t) != len(s_next):
        raise ValueError(f"s_t / s_next: expected as many frames, got {len(s_t)} and {len(s_next)}")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
