"""Latent actions: an encoder E(s_t, s_t+1) -> z with a selectable bottleneck, and per-embodiment action maps.

    z_t = E(s_t, s_t+1)            inverse dynamics over a frame pair, into a small latent space
    a_t ~ H_e(z_t)                 action head of embodiment e (decodes latents to that robot's actions)
    A_e(a_t) -> z-space            action encoder of embodiment e (puts real actions where latents live)

A state ``s`` is a stack of camera images (and optionally depth maps) as channels, ``(B, C, H, W)`` in [-1, 1]
(``world_model.data`` builds it). Bottlenecks (``LatentActionConfig.bottleneck``):

    continuous  z in R^latent_dim; optionally a Gaussian posterior with a KL term (``kl_weight``) and/or fixed
                training noise (``noise_std``), which limit how much of s_t+1 the latent can carry
    fsq         finite scalar quantisation (``vector_quantize_pytorch.FSQ``): ``fsq_levels`` levels per code dim,
                projected in from and out to latent_dim
    vq          a learned codebook (``vector_quantize_pytorch.VectorQuantize``, EMA updates, dead-code revival)

Every bottleneck maps a pre-bottleneck vector (B, latent_dim) to the z that the world model consumes (B, latent_dim).
The action encoder A outputs a pre-bottleneck vector too, so A(a) goes through the same bottleneck and lands in the
same space as E's latents (quantised alike). Actions are normalised by the caller (``world_model.wrapper``).
The config, ``LatentActionConfig``, is in ``latent_actions.config`` (no torch there).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from latent_actions.config import LatentActionConfig


# -- encoder ---------------------------------------------------------------------------------------------------------


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


class LatentActionEncoder(nn.Module):
    """E(s_t, s_t+1) -> pre-bottleneck vector. Sees both frames and their difference; flattens (does not pool) the
    last feature map, so where in the image something moved stays available (the same pixel motion means a different
    action at a different place)."""

    def __init__(self, config: LatentActionConfig, out_dim: int):
        super().__init__()
        chans = config.encoder_channels
        layers: list[nn.Module] = [nn.PixelUnshuffle(2), nn.Conv2d(12 * config.in_channels, chans[0], 3, padding=1),
                                   nn.GroupNorm(_groups(chans[0]), chans[0]), nn.GELU()]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.GroupNorm(_groups(c_out), c_out), nn.GELU(),
                       nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(_groups(c_out), c_out), nn.GELU()]
        self.features = nn.Sequential(*layers)
        side = config.image_size // 2 ** len(chans)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * side * side, config.encoder_hidden_dim),
                                 nn.GELU(), nn.Linear(config.encoder_hidden_dim, out_dim))

    def forward(self, s_t: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
        x = torch.cat([s_t, s_next, s_next - s_t], dim=1)  # (B, 3C, H, W)
        return self.mlp(self.features(x))  # (B, out_dim)


# -- bottlenecks -----------------------------------------------------------------------------------------------------


class BottleneckOutput(NamedTuple):
    z: torch.Tensor  # (B, D) what the world model consumes (noisy / sampled while training)
    z_clean: torch.Tensor  # (B, D) the deterministic latent (posterior mean, quantised code): probes, alignment
    aux_loss: torch.Tensor  # () KL or commitment loss, already weighted
    indices: torch.Tensor | None  # (B,) code index for quantised bottlenecks


class ContinuousBottleneck(nn.Module):
    """Identity on the mean; with ``kl_weight > 0`` the encoder emits (mean, log-variance) and z is sampled."""

    def __init__(self, config: LatentActionConfig):
        super().__init__()
        self.latent_dim = config.latent_dim
        self.kl_weight = config.kl_weight
        self.noise_std = config.noise_std

    @property
    def in_dim(self) -> int:
        return 2 * self.latent_dim if self.kl_weight > 0 else self.latent_dim

    def forward(self, h: torch.Tensor, from_action: bool = False) -> BottleneckOutput:
        zero = h.new_zeros(())
        if self.kl_weight > 0 and not from_action:
            mean, logvar = h.chunk(2, dim=-1)  # (B, D) each
            logvar = logvar.clamp(-10.0, 4.0)
            z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1).mean()
            aux = self.kl_weight * kl
        else:  # an action encoder's output (or kl off): a point estimate
            mean = h
            z, aux = mean, zero
        if self.training and self.noise_std > 0 and not from_action:
            z = z + self.noise_std * torch.randn_like(z)
        return BottleneckOutput(z=z, z_clean=mean, aux_loss=aux, indices=None)


class FSQBottleneck(nn.Module):
    """Finite scalar quantisation (no codebook to learn, so no dead codes by collapse); straight-through gradients."""

    def __init__(self, config: LatentActionConfig):
        super().__init__()
        from vector_quantize_pytorch import FSQ

        self.latent_dim = config.latent_dim
        self.fsq = FSQ(levels=list(config.fsq_levels), dim=config.latent_dim)

    @property
    def in_dim(self) -> int:
        return self.latent_dim

    def forward(self, h: torch.Tensor, from_action: bool = False) -> BottleneckOutput:
        z, indices = self.fsq(h[:, None, :])  # (B, 1, D), (B, 1)
        z = z[:, 0]
        return BottleneckOutput(z=z, z_clean=z, aux_loss=h.new_zeros(()), indices=indices[:, 0].long())


class VQBottleneck(nn.Module):
    """A learned codebook with EMA updates; codes whose usage falls under the threshold are re-seeded from the batch."""

    def __init__(self, config: LatentActionConfig):
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.latent_dim = config.latent_dim
        self.vq = VectorQuantize(dim=config.latent_dim, codebook_size=config.vq_codebook_size, decay=0.95,
                                 commitment_weight=config.vq_commitment_weight, kmeans_init=False,
                                 threshold_ema_dead_code=config.vq_dead_code_threshold)

    @property
    def in_dim(self) -> int:
        return self.latent_dim

    def forward(self, h: torch.Tensor, from_action: bool = False) -> BottleneckOutput:
        # Action encodings are quantised against the codebook without moving it (no EMA update, no dead-code
        # re-seeding from them), but keep the straight-through gradient to A.
        z, indices, commit = self.vq(h[:, None, :], freeze_codebook=from_action)  # (B, 1, D), (B, 1), ()
        z = z[:, 0]
        return BottleneckOutput(z=z, z_clean=z, aux_loss=commit.reshape(()), indices=indices[:, 0].long())


def make_bottleneck(config: LatentActionConfig) -> nn.Module:
    return {"continuous": ContinuousBottleneck, "fsq": FSQBottleneck, "vq": VQBottleneck}[config.bottleneck](config)


# -- per-embodiment action maps --------------------------------------------------------------------------------------


def _mlp(in_dim: int, out_dim: int, hidden: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, out_dim))


class ActionMaps(nn.Module):
    """H_e: z -> a and A_e: a -> pre-bottleneck z, one pair per embodiment (action dims differ across robots)."""

    def __init__(self, config: LatentActionConfig, pre_dim: int):
        super().__init__()
        self.action_dims = dict(config.embodiments)
        self.heads = nn.ModuleDict({name: _mlp(config.latent_dim, dim, config.head_hidden_dim)
                                    for name, dim in self.action_dims.items()})
        self.encoders = nn.ModuleDict({name: _mlp(dim, pre_dim, config.head_hidden_dim)
                                       for name, dim in self.action_dims.items()})

    def _check(self, embodiment: str) -> None:
        if embodiment not in self.action_dims:
            raise KeyError(f"embodiment {embodiment!r} has no action head (known: {', '.join(self.action_dims)}); "
                           f"add it to LatentActionConfig.embodiments and train")

    def decode(self, z: torch.Tensor, embodiment: str) -> torch.Tensor:
        self._check(embodiment)
        return self.heads[embodiment](z)  # (B, D) -> (B, A_e)

    def encode(self, action: torch.Tensor, embodiment: str) -> torch.Tensor:
        self._check(embodiment)
        return self.encoders[embodiment](action)  # (B, A_e) -> (B, pre_dim)


class LatentActionModel(nn.Module):
    """E, the bottleneck and the per-embodiment H / A together: everything about z except the world model."""

    def __init__(self, config: LatentActionConfig):
        super().__init__()
        self.config = config
        self.bottleneck = make_bottleneck(config)
        self.encoder = LatentActionEncoder(config, self.bottleneck.in_dim)
        self.actions = ActionMaps(config, config.latent_dim)

    def forward(self, s_t: torch.Tensor, s_next: torch.Tensor) -> BottleneckOutput:
        return self.bottleneck(self.encoder(s_t, s_next))  # z: (B, D)

    def encode_action(self, action: torch.Tensor, embodiment: str) -> BottleneckOutput:
        """A(a) through the same bottleneck (no sampling or training noise: an action is a point in z-space)."""
        return self.bottleneck(self.actions.encode(action, embodiment), from_action=True)

    def decode_action(self, z: torch.Tensor, embodiment: str) -> torch.Tensor:
        return self.actions.decode(z, embodiment)
