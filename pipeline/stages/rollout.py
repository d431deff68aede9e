"""rollout: new trajectories from real start frames, imagined by the world model (1:N per episode).

For every episode with actions (recorded or pseudo-labelled) and the model's cameras, ``rollouts_per_episode`` recipes
are drawn (``pipeline.synthesis``): a start frame, an action proposal (the demonstration perturbed, a scripted move
toward a named object, uniform actions) and a seed. The world model rolls all of an episode's recipes forward in one
batch, from the real start frame, ``horizon`` steps. Each rollout becomes an episode of its own,
``<parent>-syn<k>``, with the parent's cameras, image size (predicted frames are upsampled), state and action names,
and its provenance in meta: ``source: synthetic``, ``parent``, ``start_frame``, ``recipe`` (proposal, scale or object,
seed), the instruction, the ``subgoal`` it was made for, the checkpoint, and (simulator parents) the state to replay it
from. Parents pass through untouched; the ``filter`` stage judges the rollouts.

Runs in an actor pool: the model loads once per actor, on the GPU when the actor has one. Episode ids are
deterministic, so a killed run resumes without duplicates.

    - name: rollout
      params: {rollouts_per_episode: 8, horizon: 8, proposals: {demo_perturbed: 0.5, scripted: 0.25, uniform: 0.25}}
"""

from __future__ import annotations

import logging

import numpy as np
from pydantic import Field, field_validator

from episodes import Episode
from pipeline.models import stage_world_model
from pipeline.stage import CheckContext, Problem, Resources, StageContext, StageParams, register_stage
from pipeline.store import RunStore
from pipeline.synthesis import PROPOSALS, plan_rollouts, propose, synthetic_episode

logger = logging.getLogger(__name__)

STAGE = "rollout"


class RolloutParams(StageParams):
    checkpoint: str = Field("", description="a checkpoint directory; empty: the run's train_world_model")
    embodiment: str | None = Field(None, description="only parents of this robot; None: every robot the model has an "
                                   "action head for (each rolled out with its own)")
    rollouts_per_episode: int = Field(4, ge=1, le=1000)
    horizon: int = Field(8, ge=1, le=256, description="predicted steps per rollout")
    proposals: dict[str, float] = Field(
        {"demo_perturbed": 0.5, "scripted": 0.25, "uniform": 0.25},
        description=f"mixture weights of the action proposals (of {', '.join(PROPOSALS)})")
    perturb_scales: list[float] = Field(
        [0.0, 0.05, 0.15, 0.4], description="demo_perturbed: noise std as a fraction of each action dim's half-range, "
                                            "one drawn per rollout")
    include_pseudo_labelled: bool = Field(True, description="also start from episodes whose actions were inferred")
    batch_size: int = Field(64, ge=1, description="rollouts predicted together")
    resources: Resources = Resources(num_cpus=1)

    @field_validator("proposals")
    @classmethod
    def _known(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(PROPOSALS))
        if unknown:
            raise ValueError(f"unknown proposals {unknown} (known: {', '.join(PROPOSALS)})")
        if not any(w > 0 for w in value.values()) or any(w < 0 for w in value.values()):
            raise ValueError("weights must be >= 0 with at least one > 0")
        return value


def check(params: RolloutParams, cctx: CheckContext) -> list[Problem]:
    from world_model.checkpoint import is_complete

    if params.checkpoint and not is_complete(params.checkpoint):
        return [("checkpoint", f"{params.checkpoint} is not a complete checkpoint (no _COMPLETE marker)")]
    return []


def rollout_seed(run_seed: int, episode_id: str) -> int:
    return int(np.random.SeedSequence([int(run_seed), *episode_id.encode()]).generate_state(1)[0])


@register_stage(STAGE, kind="map", params=RolloutParams, check=check,
                requires=lambda p: () if p.checkpoint else ("world_model",))
class Rollout:
    """World-model rollouts from real start frames under sampled action proposals (1:N)."""

    def __init__(self, params: RolloutParams, ctx: StageContext):
        self.params, self.seed = params, ctx.seed
        self.wm, self.checkpoint, self.embodiment = stage_world_model(STAGE, params.checkpoint, ctx,
                                                                      params.resources.num_gpus, params.embodiment,
                                                                      need_embodiment=False)
        self.provenance = {"checkpoint": RunStore(ctx.run_dir).relative(self.checkpoint), "rollout_model": {
            "backend": self.wm.config.backend, "image_size": self.wm.config.image_size,
            "cameras": list(self.wm.config.cameras), "depth": self.wm.config.depth}}

    @staticmethod
    def robot(episode: Episode) -> str:
        """The parent's robot: its actions, and so the rollout's, are in that robot's action space."""
        from world_model.data import embodiment_of

        return embodiment_of(episode.meta)

    def usable(self, episode: Episode) -> bool:
        cfg = self.wm.config
        return (episode.action is not None and episode.meta.get("source") != "synthetic"
                and (self.params.include_pseudo_labelled or episode.meta.get("action_source") != "pseudo_labelled")
                and episode.num_frames > self.params.horizon
                and self.robot(episode) in (self.wm.config.embodiments if self.embodiment is None
                                            else [self.embodiment])
                and all(cam in episode.rgb and (not cfg.depth or cam in episode.depth_m) for cam in cfg.cameras))

    def __call__(self, episode: Episode) -> list[Episode]:
        p = self.params
        if not self.usable(episode):
            return [episode]
        recipes = plan_rollouts(episode, p.rollouts_per_episode, p.horizon, p.proposals,
                                rollout_seed(self.seed, episode.episode_id), p.perturb_scales)
        actions = np.stack([propose(episode, r, p.horizon) for r in recipes])  # (N, K, A)
        states = self.wm.states(episode)  # (T, C, h, w)
        starts = states[[r["start_frame"] for r in recipes]]
        frames = np.concatenate([self.wm.rollout(starts[i:i + p.batch_size], actions=actions[i:i + p.batch_size],
                                                 embodiment=self.robot(episode))
                                 for i in range(0, len(recipes), p.batch_size)])  # (N, K, C, h, w)
        out = [episode]
        for recipe, acts, pred in zip(recipes, actions, frames):
            rgb, depth = self.to_streams(pred, episode)
            out.append(synthetic_episode(episode, recipe, acts, rgb, depth, self.provenance, p.horizon))
        return out

    def to_streams(self, pred: np.ndarray, parent: Episode) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(K, C, h, w) model states -> per-camera RGB (K, H, W, 3) uint8 and depth (K, H, W) metres at the parent's
        size (bilinear upsampling)."""
        import torch
        import torch.nn.functional as F

        cfg = self.wm.config
        rgb, depth = {}, {}
        for i, cam in enumerate(cfg.cameras):
            height, width = parent.rgb[cam].shape[1:3]
            x = torch.from_numpy(pred[:, 3 * i:3 * i + 3]).float()
            if x.shape[-2:] != (height, width):
                x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
            rgb[cam] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            if cfg.depth:
                channel = 3 * len(cfg.cameras) + i
                d = torch.from_numpy(pred[:, channel:channel + 1]).float() / 255.0 * cfg.max_depth_m
                if d.shape[-2:] != (height, width):
                    d = F.interpolate(d, size=(height, width), mode="bilinear", align_corners=False)
                depth[cam] = d[:, 0].numpy().astype(np.float32)
        return rgb, depth
