"""The joint latent-action world model: z = E(s_t, s_t+1), s_t+1 = W(s_t, z), tied to real actions where there are any.

Objective (``LatentWorldModel.compute_loss``), per batch of frame pairs:

    all pairs        recon_weight        * L_W(s_t, z, s_t+1)            z = bottleneck(E(s_t, s_t+1))
                     + the bottleneck's own term (KL, VQ commitment)
    labelled pairs   align_weight        * |z - zA|^2                    zA = bottleneck(A_e(a))
                     head_weight         * |H_e(z) - a|^2
                     action_recon_weight * L_W(s_t, zA, s_t+1)           W must also work from real actions

L_W is the backend's motion-weighted loss on the frame change (deterministic: squared error of the predicted change;
diffusion: the denoising loss), with pixel weights ``1 + motion_weight`` where the frame changes (``motion_weights``).
``alignment=False`` is the ablation: H and A are still trained, but on a stop-gradient z and without the action
reconstruction term, so they read the latent space without shaping it.

States are camera images (and optionally depth) stacked as channels (see ``world_model.data``); actions arrive
normalised (``world_model.wrapper.ActionNormalizer``). The configs (``WorldModelConfig`` and its backends' configs)
are in ``world_model.config``, which imports no torch, so the pipeline checks them without loading torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latent_actions.model import LatentActionModel
from world_model.config import WorldModelConfig
from world_model.deterministic import DeterministicPredictor
from world_model.diffusion import DiffusionPredictor


def motion_weights(s_t: torch.Tensor, s_next: torch.Tensor, motion_weight: float, threshold: float) -> torch.Tensor:
    """Per-pixel loss weights (B, 1, H, W): 1 everywhere, 1 + motion_weight where the frame changes (dilated by one
    pixel, so the edges of a moving part count too)."""
    moving = ((s_next - s_t).abs().amax(1, keepdim=True) > threshold).float()  # (B, 1, H, W)
    moving = F.max_pool2d(moving, 3, stride=1, padding=1)
    return 1.0 + motion_weight * moving


class LatentWorldModel(nn.Module):
    """E, bottleneck, H / A per embodiment, and the world model W (one backend). ``forward`` = ``compute_loss``."""

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        self.config = config
        self.latent = LatentActionModel(config.latent)
        if config.backend == "deterministic":
            self.predictor: nn.Module = DeterministicPredictor(config.deterministic)
        else:
            self.predictor = DiffusionPredictor(config.diffusion)
        self.embodiments = config.embodiments  # batch["embodiment"] indexes this list

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.compute_loss(batch)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: s_t, s_next (B, C, H, W) in [-1, 1]; action (B, A_max) normalised, zero-padded; labelled (B,) bool;
        embodiment (B,) long. Returns the total loss and its parts as floats."""
        cfg = self.config
        s_t, s_next = batch["s_t"], batch["s_next"]
        out = self.latent(s_t, s_next)  # z: (B, D), from the real pair
        z_w = out.z  # the latent W reads
        if cfg.rollout_context and "s_hist" in batch:
            s_t, rolled = self.own_prediction(batch)  # W's input; E above saw the real s_t
            # E learns nothing from the rolled rows: fixing W's drift is W's job, and a z that helped would carry the
            # real s_t (not the action) into the latent, which is what label_actions and the probes read
            z_w = torch.cat([out.z[:rolled].detach(), out.z[rolled:]])
        weight = motion_weights(s_t, s_next, cfg.motion_weight, cfg.motion_threshold)  # (B, 1, H, W)
        recon = self.predictor.loss(s_t, z_w, s_next, weight).mean()
        loss = cfg.recon_weight * recon + out.aux_loss
        parts = {"recon": recon.detach(), "bottleneck": out.aux_loss.detach()}
        labelled = batch["labelled"].bool()
        if labelled.any():
            align, head, recon_a, n = s_t.new_zeros(()), s_t.new_zeros(()), s_t.new_zeros(()), 0
            for index, name in enumerate(self.embodiments):
                rows = labelled & (batch["embodiment"] == index)
                if not rows.any():
                    continue
                k = int(rows.sum())
                action = batch["action"][rows, : cfg.latent.embodiments[name]]  # (k, A_e)
                z = out.z_clean[rows] if cfg.alignment else out.z_clean[rows].detach()  # (k, D)
                z_a = self.latent.encode_action(action, name).z  # (k, D)
                align = align + k * (z - z_a).pow(2).mean()
                head = head + k * (self.latent.decode_action(z, name) - action).pow(2).mean()
                if cfg.alignment and cfg.action_recon_weight > 0:
                    recon_a = recon_a + k * self.predictor.loss(s_t[rows], z_a, s_next[rows], weight[rows]).mean()
                n += k
            align, head, recon_a = align / n, head / n, recon_a / n
            loss = loss + cfg.align_weight * align + cfg.head_weight * head + cfg.action_recon_weight * recon_a
            parts.update(align=align.detach(), head=head.detach(), recon_action=recon_a.detach())
        parts["loss"] = loss.detach()
        return loss, {k: float(v) for k, v in parts.items()}

    @torch.no_grad()
    def own_prediction(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """s_t (B, C, H, W) with its first ``rollout_fraction`` of rows (their count is returned too) replaced by W's
        open-loop prediction of s_t:
        rolled from the real frame ``rollout_context`` steps back with the latents E infers from the real pairs
        (rows near an episode's start roll fewer steps; a row at t = 0 stays real). No gradient flows through the
        roll: the loss then asks W to predict s_t+1 from the drifted frame it will meet in a rollout."""
        s_t, hist, valid = batch["s_t"], batch["s_hist"], batch["hist_valid"]  # (B, k, C, H, W), (B, k)
        rows = max(1, int(round(self.config.rollout_fraction * s_t.shape[0])))
        hist, valid = hist[:rows], valid[:rows]
        frames = torch.cat([hist, s_t[:rows, None]], dim=1)  # (rows, k + 1, C, H, W): real frames t-k .. t
        x = frames[:, 0]
        for j in range(hist.shape[1]):
            z = self.latent(frames[:, j], frames[:, j + 1]).z_clean  # (rows, D)
            step = self.predictor.predict(x, z)
            x = torch.where(valid[:, j, None, None, None], step, frames[:, j + 1])
        return torch.cat([x, s_t[rows:]], dim=0), rows
