"""Deterministic world-model backend: a small conditional U-Net that predicts the change s_t+1 - s_t from (s_t, z).

Built for CPU speed at 64x64: space-to-depth (2x2 pixels -> channels) at the input and depth-to-space at the output, so
the network runs at H/2 and below. z steers every residual block through FiLM (per-channel scale and shift) and is
also broadcast as extra channels at the lowest resolution, so the predicted motion can only come from z: the network
sees s_t alone (no path from s_t+1 but z). It predicts the frame *difference*, and its loss weights pixels that change
(see ``world_model.model.motion_weights``), so copying s_t is not a good solution.

The output is gated (``config.gate``; compositing as in Finn et al. 2016, CDNA): the head predicts a change delta and,
per camera, a change-mask logit m, and the prediction is s_t + sigmoid(m) * delta. Where the mask is closed the pixel is
an exact copy of s_t, so small errors are not smeared over the static background (which copying gets exactly right).
The mask learns from the squared error of the gated change and from a binary cross-entropy against the real change
mask (``change_mask``, weighted by ``gate_weight``). By default (``gate_loss="split"``) the gated change is scored
with weight 1 on every pixel and delta alone, before the gate, with the motion weight where the frame changes: a motion
weight on the gated change would make its optimum over-predict motion wherever it is uncertain (with weight 11 on
moving pixels, a pixel that moves one time in ten is predicted to move 0.55 of the way), which is the smear over static
pixels the gate is there to remove. The delta head starts at zero and the mask closed-ish (``gate_init_logit``), so an
untrained model copies s_t exactly. ``gate=False`` is the ungated network (s_t + delta),
which is what checkpoints saved before the gate existed hold.

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
        masks = config.num_cameras if config.gate else 0
        out = nn.Conv2d(chans[0], 4 * (c + masks), 3, padding=1)  # after the pixel shuffle: C deltas, then the masks
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        nn.init.constant_(out.bias[4 * c:], config.gate_init_logit)
        self.head = nn.Sequential(nn.GroupNorm(8, chans[0]), nn.GELU(), out, nn.PixelShuffle(2))

    def forward(self, s_t: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C, H, W), (B, D) -> the predicted change (B, C, H, W) and, gated, the mask logits (B, cameras, H, W)
        (None ungated)."""
        delta, logit = self.heads(s_t, z)
        return (delta, None) if logit is None else (self.gate(logit) * delta, logit)

    def heads(self, s_t: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head's outputs: the change delta (B, C, H, W) before the gate, and the mask logits (B, cameras, H, W)
        (None ungated)."""
        out = self.head(self.trunk(s_t, z))
        if not self.config.gate:
            return out, None
        delta, logit = out.split([self.config.in_channels, self.config.num_cameras], dim=1)
        return delta, logit

    def gate(self, logit: torch.Tensor) -> torch.Tensor:
        """Mask logits (B, cameras, H, W) -> the gate of every channel (B, C, H, W)."""
        return torch.sigmoid(logit)[:, camera_of_channel(self.config.in_channels, self.config.num_cameras)]

    def trunk(self, s_t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The U-Net up to the head: (B, C, H, W), (B, D) -> features (B, c0, H/2, W/2)."""
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
        return h

    def loss(self, s_t: torch.Tensor, z: torch.Tensor, s_next: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Motion-weighted squared error of the predicted change, plus (gated) ``gate_weight`` times the mask's binary
        cross-entropy against the real change mask, per sample: (B,).

        ``gate_loss="split"`` weighs the gated change's error 1 everywhere (its optimum is then the expected change,
        not one pushed towards moving wherever motion is uncertain) and adds the error of delta alone, before the gate,
        with the motion weight (``weight - 1``), so delta still learns the motion at full strength; ``"product"``
        weighs the gated change's error by ``weight``, as the ungated network's."""
        true = s_next - s_t
        delta, logit = self.heads(s_t, z)
        change = delta if logit is None else self.gate(logit) * delta
        err = (change - true).pow(2).mean(1, keepdim=True)  # (B, 1, H, W)
        if logit is not None and self.config.gate_loss == "split":
            err_delta = (delta - true).pow(2).mean(1, keepdim=True)  # (B, 1, H, W)
            loss = (err + (weight - 1) * err_delta).flatten(1).sum(1) / weight.flatten(1).sum(1)
        else:
            loss = (err * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)
        if logit is not None and self.config.gate_weight > 0:
            target = change_mask(s_t, s_next, self.config.motion_threshold, self.config.num_cameras)
            bce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")  # (B, cameras, H, W)
            loss = loss + self.config.gate_weight * bce.flatten(1).mean(1)
        return loss

    @torch.no_grad()
    def predict(self, s_t: torch.Tensor, z: torch.Tensor, **_: Any) -> torch.Tensor:
        return (s_t + self(s_t, z)[0]).clamp(-1.0, 1.0)


def camera_of_channel(in_channels: int, num_cameras: int) -> list[int]:
    """The camera of each state channel. States are every camera's RGB, then (with depth) every camera's depth map
    (``world_model.data.episode_state``), so a camera's channels are not one contiguous group when there is depth."""
    if in_channels in (3 * num_cameras, 4 * num_cameras):
        return [c // 3 if c < 3 * num_cameras else c - 3 * num_cameras for c in range(in_channels)]
    return [c // (in_channels // num_cameras) for c in range(in_channels)]  # equal contiguous groups


def change_mask(s_t: torch.Tensor, s_next: torch.Tensor, threshold: float, num_cameras: int) -> torch.Tensor:
    """(B, C, H, W) x 2 -> (B, cameras, H, W) float: 1 where any channel of that camera changes by more than
    ``threshold`` (see ``camera_of_channel``)."""
    moved = (s_next - s_t).abs() > threshold  # (B, C, H, W)
    owner = torch.tensor(camera_of_channel(s_t.shape[1], num_cameras), device=s_t.device)
    return torch.stack([moved[:, owner == cam].any(1) for cam in range(num_cameras)], dim=1).float()