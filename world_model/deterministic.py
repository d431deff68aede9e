"""Deterministic world-model backend: a small conditional U-Net that predicts the change s_t+1 - s_t from (s_t, z).

Built for CPU speed at 64x64: space-to-depth (2x2 pixels -> channels) at the input and depth-to-space at the output, so
the network runs at H/2 and below. z steers every residual block through FiLM (per-channel scale and shift) and is
also broadcast as extra channels at the lowest resolution, so the predicted motion can only come from z: the network
sees s_t alone (no path from s_t+1 but z). It predicts the frame *difference*, and its loss weights pixels that change
(see ``world_model.model.motion_weights``), so copying s_t is not a good solution.

    predictor = DeterministicPredictor(DeterministicConfig(in_channels=6, image_size=64, cond_dim=16))
    s_next = predictor.predict(s_t, z)  # (B, C, H, W) in [-1, 1]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from world_model.config import DeterministicConfig


class FiLMResBlock(nn.Module):
    """GroupNorm -> FiLM(cond) -> GELU -> conv, twice, plus the input."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(cond_dim, 4 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s1, b1, s2, b2 = self.film(cond)[:, :, None, None].chunk(4, dim=1)  # (B, C, 1, 1) each
        h = self.conv1(F.gelu(self.norm1(x) * (1 + s1) + b1))
        h = self.conv2(F.gelu(self.norm2(h) * (1 + s2) + b2))
        return x + h


class DeterministicPredictor(nn.Module):
    """Conditional U-Net over (s_t, z) -> predicted s_t+1 - s_t."""

    def __init__(self, config: DeterministicConfig):
        super().__init__()
        self.config = config
        c, chans, cond = config.in_channels, config.channels, config.cond_dim
        self.cond_mlp = nn.Sequential(nn.Linear(cond, 128), nn.GELU(), nn.Linear(128, 128))
        self.stem = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(4 * c, chans[0], 3, padding=1))
        self.down_blocks = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, ch in enumerate(chans[:-1]):
            self.down_blocks.append(nn.ModuleList([FiLMResBlock(ch, 128) for _ in range(config.blocks_per_level)]))
            self.downsample.append(nn.Conv2d(ch, chans[i + 1], 4, stride=2, padding=1))
        self.cond_to_map = nn.Linear(128, 16)  # z broadcast as channels at the lowest level
        self.mid_in = nn.Conv2d(chans[-1] + 16, chans[-1], 1)
        self.mid_blocks = nn.ModuleList([FiLMResBlock(chans[-1], 128) for _ in range(config.bottleneck_blocks)])
        self.upsample = nn.ModuleList()
        self.merge = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(len(chans) - 1)):
            self.upsample.append(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2))
            self.merge.append(nn.Conv2d(2 * chans[i], chans[i], 1))
            self.up_blocks.append(nn.ModuleList([FiLMResBlock(chans[i], 128) for _ in range(config.blocks_per_level)]))
        self.head = nn.Sequential(nn.GroupNorm(8, chans[0]), nn.GELU(), nn.Conv2d(chans[0], 4 * c, 3, padding=1),
                                  nn.PixelShuffle(2))
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)

    def forward(self, s_t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), (B, D) -> predicted change (B, C, H, W)."""
        cond = self.cond_mlp(z)  # (B, 128)
        h = self.stem(s_t)  # (B, c0, H/2, W/2)
        skips = []
        for blocks, down in zip(self.down_blocks, self.downsample):
            for block in blocks:
                h = block(h, cond)
            skips.append(h)
            h = down(h)
        zmap = self.cond_to_map(cond)[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
        h = self.mid_in(torch.cat([h, zmap], dim=1))
        for block in self.mid_blocks:
            h = block(h, cond)
        for up, merge, blocks in zip(self.upsample, self.merge, self.up_blocks):
            h = up(h)
            h = merge(torch.cat([h, skips.pop()], dim=1))
            for block in blocks:
                h = block(h, cond)
        return self.head(h)  # (B, C, H, W)

    def loss(self, s_t: torch.Tensor, z: torch.Tensor, s_next: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Motion-weighted squared error of the predicted change, per sample: (B,)."""
        err = (self(s_t, z) - (s_next - s_t)).pow(2).mean(1, keepdim=True)  # (B, 1, H, W)
        return (err * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)

    @torch.no_grad()
    def predict(self, s_t: torch.Tensor, z: torch.Tensor, **_: Any) -> torch.Tensor:
        return (s_t + self(s_t, z)).clamp(-1.0, 1.0)

