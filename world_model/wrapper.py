"""The inference-side wrapper around a trained ``LatentWorldModel``: normalisation, sampling, rollouts, pseudo-labels.

    wm = WorldModel(model, normalizer)                      # or world_model.checkpoint.load_world_model(path)
    z = wm.infer_latents(frames[:-1], frames[1:])           # (T-1, D) latent actions of an episode's frame pairs
    actions = wm.decode_actions(z, "franka_panda")          # (T-1, 5) pseudo-labels in the robot's units
    video = wm.rollout(frames[0], actions=actions)          # (T-1, C, H, W) open loop from real (or decoded) actions
    video = wm.rollout(frames[0], latents=z)                # ... or from latents

Frames are uint8 states ``(C, H, W)`` (see ``world_model.data.episode_state``) or model-space float tensors in [-1, 1];
rollouts return uint8. The wrapper owns the action normalisation statistics and, for the diffusion backend, the sampling
scheduler; the network does the maths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from world_model.data import PairData, episode_state, to_model, to_uint8
from world_model.model import LatentWorldModel


class ActionNormalizer(nn.Module):
    """Per-embodiment mean / std of actions (buffers, so they are saved with the weights). Dims that never change
    keep std 1 (a constant gripper command stays a constant)."""

    def __init__(self, action_dims: dict[str, int]):
        super().__init__()
        self.action_dims = dict(action_dims)
        for name, dim in self.action_dims.items():
            self.register_buffer(f"mean_{name}", torch.zeros(dim))
            self.register_buffer(f"std_{name}", torch.ones(dim))

    def fit(self, data: PairData) -> ActionNormalizer:
        """Statistics from the labelled pairs of ``data`` (only the labels the model is allowed to see)."""
        index = np.flatnonzero(data.pair_is_labelled())
        actions, _ = data.pair_actions(index)
        emb = np.array([data.embodiments[e] for e in data.pairs[index, 0]])
        for name, dim in self.action_dims.items():
            rows = actions[emb == name, :dim]
            if len(rows) < 2:
                continue
            self.set_stats(name, rows.mean(0), rows.std(0))
        return self

    def set_stats(self, name: str, mean, std) -> None:
        std = np.asarray(std, dtype=np.float32)
        getattr(self, f"mean_{name}").copy_(torch.as_tensor(np.asarray(mean, dtype=np.float32)))
        getattr(self, f"std_{name}").copy_(torch.as_tensor(np.where(std > 1e-6, std, 1.0).astype(np.float32)))

    def to_stats(self) -> dict[str, dict[str, list[float]]]:
        return {name: {"mean": self.stats(name)[0].tolist(), "std": self.stats(name)[1].tolist()}
                for name in self.action_dims}

    def stats(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self.action_dims:
            raise KeyError(f"embodiment {name!r}: no action statistics (known: {', '.join(self.action_dims)})")
        return getattr(self, f"mean_{name}"), getattr(self, f"std_{name}")

    def normalize(self, action: torch.Tensor, name: str) -> torch.Tensor:
        mean, std = self.stats(name)
        return (action - mean) / std

    def unnormalize(self, action: torch.Tensor, name: str) -> torch.Tensor:
        mean, std = self.stats(name)
        return action * std + mean

    def normalize_padded(self, action: torch.Tensor, embodiment: torch.Tensor | np.ndarray,
                         names: Sequence[str]) -> torch.Tensor:
        """(B, A_max) zero-padded actions of mixed embodiments (index into ``names``; -1 = unknown, left as is)."""
        out = action.clone()
        embodiment = torch.as_tensor(embodiment)
        for index, name in enumerate(names):
            rows = embodiment == index
            if rows.any() and name in self.action_dims:
                dim = self.action_dims[name]
                out[rows, :dim] = self.normalize(action[rows, :dim], name)
        return out


class WorldModel:
    """Inference helpers over a trained model; every method runs without gradients in eval mode."""

    def __init__(self, model: LatentWorldModel, normalizer: ActionNormalizer, scheduler=None,
                 device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.normalizer = normalizer.to(device)
        self.config = model.config
        self.device = torch.device(device)
        self.scheduler = scheduler
        if scheduler is None and self.config.backend == "diffusion":
            from world_model.diffusion import make_scheduler

            self.scheduler = make_scheduler(self.config.diffusion)

    # -- states ------------------------------------------------------------------------------------------------------

    def states(self, episode) -> np.ndarray:
        """(T, C, H, W) uint8 states of an episode, in this model's camera / size / depth layout."""
        cfg = self.config
        return episode_state(episode, cfg.cameras, cfg.image_size, cfg.depth, cfg.max_depth_m)

    def _x(self, frames) -> torch.Tensor:
        x = torch.as_tensor(frames)
        x = to_model(x) if x.dtype == torch.uint8 else x.float()
        return x.to(self.device)

    # -- latents and actions -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def infer_latents(self, s_t, s_next, batch_size: int = 256) -> torch.Tensor:
        """Latent actions of frame pairs: (N, C, H, W) x 2 -> (N, D) (the deterministic latent, no training noise)."""
        x_t, x_n = self._x(s_t), self._x(s_next)
        out = [self.model.latent(x_t[i:i + batch_size], x_n[i:i + batch_size]).z_clean
               for i in range(0, len(x_t), batch_size)]
        return torch.cat(out) if out else x_t.new_zeros((0, self.config.latent.latent_dim))

    @torch.no_grad()
    def infer_codes(self, s_t, s_next, batch_size: int = 256) -> torch.Tensor | None:
        """Code indices (N,) for quantised bottlenecks, None for the continuous one."""
        if self.config.latent.bottleneck == "continuous":
            return None
        x_t, x_n = self._x(s_t), self._x(s_next)
        return torch.cat([self.model.latent(x_t[i:i + batch_size], x_n[i:i + batch_size]).indices
                          for i in range(0, len(x_t), batch_size)])

    @torch.no_grad()
    def decode_actions(self, z: torch.Tensor, embodiment: str) -> torch.Tensor:
        """Latents (N, D) -> actions (N, A_e) in the robot's units (pseudo-labels)."""
        return self.normalizer.unnormalize(self.model.latent.decode_action(z.to(self.device), embodiment), embodiment)

    @torch.no_grad()
    def encode_actions(self, actions, embodiment: str) -> torch.Tensor:
        """Real actions (N, A_e) in the robot's units -> latents (N, D) in the space E's latents live in."""
        a = torch.as_tensor(np.asarray(actions), dtype=torch.float32, device=self.device)
        return self.model.latent.encode_action(self.normalizer.normalize(a, embodiment), embodiment).z

    @torch.no_grad()
    def pseudo_label(self, episode, embodiment: str) -> np.ndarray:
        """(T, A_e) actions decoded from an episode's frames (the last row repeats the one before, as a hold)."""
        states = self.states(episode)
        actions = self.decode_actions(self.infer_latents(states[:-1], states[1:]), embodiment).cpu().numpy()
        return np.concatenate([actions, actions[-1:]], axis=0).astype(np.float32)

    @torch.no_grad()
    def label_confidence(self, states, actions, embodiment: str, batch_size: int = 128) -> np.ndarray:
        """Per-step confidence in [0, 1] that actions (T-1, A) explain the observed change between states (T, ...).

        One world-model step from s_t with the action, compared with the real s_t+1 on the pixels that move (in the
        real pair or in the prediction): 1 - error(prediction) / error(copying s_t), clipped to [0, 1]. A label that
        reproduces the motion scores near 1; one that predicts no motion, or the wrong one, near 0. A pair without
        motion in either scores 1 (holding still is explained by any action that predicts no motion).
        """
        from world_model.metrics import motion_mask

        x = self._x(states)
        out = []
        for i in range(0, len(x) - 1, batch_size):
            s_t, s_next = x[i:i + batch_size + 1][:-1], x[i + 1:i + batch_size + 1]
            pred = self.step(s_t, self.encode_actions(np.asarray(actions)[i:i + len(s_t)], embodiment))
            unit = [(v + 1) / 2 for v in (s_t, s_next, pred)]  # model space [-1, 1] -> [0, 1]
            mask = (motion_mask(unit[0], unit[1]) | motion_mask(unit[0], unit[2])).float()
            pixels = mask.sum((1, 2, 3)) * x.shape[1]
            err_pred = (((unit[2] - unit[1]) ** 2) * mask).sum((1, 2, 3)) / pixels.clamp(min=1)
            err_copy = (((unit[0] - unit[1]) ** 2) * mask).sum((1, 2, 3)) / pixels.clamp(min=1)
            conf = (1 - err_pred / err_copy.clamp(min=1e-8)).clamp(0, 1)
            out.append(torch.where(pixels > 0, conf, torch.ones_like(conf)))
        return torch.cat(out).cpu().numpy().astype(np.float32) if out else np.zeros(0, np.float32)

    # -- the world model ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, s_t, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One prediction: (B, C, H, W), (B, D) -> model-space s_t+1 (B, C, H, W)."""
        x = self._x(s_t)
        if self.config.backend == "diffusion":
            return self.model.predictor.predict(x, z.to(self.device), scheduler=self.scheduler, generator=generator)
        return self.model.predictor.predict(x, z.to(self.device))

    @torch.no_grad()
    def rollout(self, s0, actions=None, latents=None, embodiment: str | None = None,
                generator: torch.Generator | None = None) -> np.ndarray:
        """Open loop from s0 (C, H, W) or a batch (B, C, H, W), with K real actions (K, A) / (B, K, A) or K latents
        (K, D) / (B, K, D). Returns the K predicted states, uint8 (K, C, H, W) or (B, K, C, H, W)."""
        if (actions is None) == (latents is None):
            raise ValueError("rollout: give exactly one of actions or latents")
        x = self._x(s0)
        single = x.dim() == 3
        if single:
            x = x[None]
        if actions is not None:
            name = embodiment or self._only_embodiment()
            a = torch.as_tensor(np.asarray(actions), dtype=torch.float32)
            a = a[None] if a.dim() == 2 else a  # (B, K, A)
            z = self.encode_actions(a.reshape(-1, a.shape[-1]), name).reshape(a.shape[0], a.shape[1], -1)
        else:
            z = torch.as_tensor(latents, dtype=torch.float32, device=self.device)
            z = z[None] if z.dim() == 2 else z  # (B, K, D)
        frames = []
        for k in range(z.shape[1]):
            x = self.step(x, z[:, k], generator=generator)
            frames.append(to_uint8(x))
        out = np.stack(frames, axis=1)  # (B, K, C, H, W)
        return out[0] if single else out

    def _only_embodiment(self) -> str:
        names = self.config.embodiments
        if len(names) != 1:
            raise ValueError(f"rollout with actions: name the embodiment (model has {', '.join(names)})")
        return names[0]
