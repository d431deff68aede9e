"""The latent-action model's config: what ``latent_actions.model`` builds, checked on construction.

Pure Python (no torch), so the pipeline can validate a stage's params against it (``pipeline.params``) without
importing torch in every process that reads a config.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

BottleneckKind = Literal["continuous", "fsq", "vq"]
_BOTTLENECKS = ("continuous", "fsq", "vq")


@dataclass
class LatentActionConfig:
    in_channels: int = 6  # channels of one state: 3 per RGB camera (+1 per depth map)
    image_size: int = 64  # square side in pixels
    latent_dim: int = 16
    bottleneck: BottleneckKind = "continuous"
    kl_weight: float = 0.0  # continuous: > 0 makes z a Gaussian posterior with this KL weight (to N(0, I))
    noise_std: float = 0.0  # continuous: Gaussian noise added to z while training
    fsq_levels: tuple[int, ...] = (8, 8, 8, 6, 5)  # fsq: levels per code dim (codebook = their product)
    vq_codebook_size: int = 512  # vq
    vq_commitment_weight: float = 0.25  # vq
    vq_dead_code_threshold: float = 1.0  # vq: EMA cluster size under which a code is re-initialised from the batch
    encoder_channels: tuple[int, ...] = (32, 64, 96, 128)  # first at H/2 (after space-to-depth), then stride 2 each
    encoder_hidden_dim: int = 256
    embodiments: dict[str, int] = field(default_factory=lambda: {"franka_panda": 5})  # name -> action dim
    head_hidden_dim: int = 0  # hidden width of H and A; 0 = linear maps (keeps z linearly related to a)

    def __post_init__(self):
        self.fsq_levels = tuple(int(v) for v in self.fsq_levels)
        self.encoder_channels = tuple(int(v) for v in self.encoder_channels)
        self.embodiments = {str(k): int(v) for k, v in dict(self.embodiments).items()}
        _positive(self, "in_channels", "latent_dim", "encoder_hidden_dim", "vq_codebook_size")
        if self.latent_dim > 512:
            raise ValueError(f"latent_dim: expected at most 512, got {self.latent_dim}")
        if self.vq_codebook_size < 2:
            raise ValueError(f"vq_codebook_size: expected at least 2 codes, got {self.vq_codebook_size}")
        if self.bottleneck not in _BOTTLENECKS:
            raise ValueError(f"bottleneck: expected one of {', '.join(_BOTTLENECKS)}, got {self.bottleneck!r}")
        for name in ("kl_weight", "noise_std", "vq_commitment_weight", "vq_dead_code_threshold", "head_hidden_dim"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)!r}")
        if not self.fsq_levels or any(v < 2 for v in self.fsq_levels):
            raise ValueError(f"fsq_levels: expected one or more levels >= 2, got {list(self.fsq_levels)}")
        if not self.encoder_channels or any(c <= 0 for c in self.encoder_channels):
            raise ValueError(f"encoder_channels: expected positive widths, got {list(self.encoder_channels)}")
        down = 2 ** len(self.encoder_channels)  # space-to-depth (2) and len - 1 stride-2 convs
        if self.image_size < down or self.image_size % down:
            raise ValueError(f"image_size: expected a multiple of {down} (2 ** len(encoder_channels)), "
                             f"got {self.image_size}")
        if not self.embodiments:
            raise ValueError("embodiments: expected at least one {name: action_dim}")
        for name, dim in self.embodiments.items():
            if not name or dim <= 0:
                raise ValueError(f"embodiments: expected {{name: action_dim > 0}}, got {name!r}: {dim}")

    @property
    def codebook_size(self) -> int | None:
        if self.bottleneck == "fsq":
            return math.prod(self.fsq_levels)
        if self.bottleneck == "vq":
            return self.vq_codebook_size
        return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatentActionConfig:
        return cls(**d)


def _positive(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
