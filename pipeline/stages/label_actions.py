"""label_actions: pseudo-actions for action-less episodes from the trained latent-action model (1:1 per episode).

For an episode without actions, the encoder infers a latent action for every frame pair, the alignment head decodes it
into the robot's action space, and the world model checks the label: one step from s_t with the decoded action is
compared with the real s_t+1 on the moving pixels (``WorldModel.label_confidence``). The episode gets

    action                      (T, A) float32, the decoded actions (the last row repeats the one before: a hold)
    extras["action_confidence"] (T,) float32 in [0, 1], per step
    meta["action_source"]       "pseudo_labelled"
    meta["pseudo_label"]        checkpoint, embodiment, confidence mean / min, method

Episodes that already have actions pass through untouched (nothing is written). With ``min_confidence`` an episode
whose mean confidence is lower is filtered, with the figure in the reason. Runs in an actor pool: the model loads once
per actor, on the GPU when the actor has one.

    - name: label_actions
      params: {min_confidence: 0.2}          # checkpoint: "" = the run's train_world_model
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from pydantic import Field

from episodes import Episode, EpisodeError
from pipeline.models import episode_embodiment, stage_world_model
from pipeline.stage import CheckContext, Filtered, Problem, Resources, StageContext, StageParams, register_stage
from pipeline.store import RunStore

logger = logging.getLogger(__name__)

STAGE = "label_actions"
METHOD = "latent action -> alignment head; confidence = 1 - WM error / copy error on moving pixels"


class LabelActionsParams(StageParams):
    checkpoint: str = Field("", description="a checkpoint directory; empty: the run's train_world_model")
    embodiment: str | None = Field(None, description="whose action space to decode into when the episode's own robot "
                                   "has no head in the model; None: the model's only one")
    action_names: list[str] | None = Field(None, description="names of the decoded action dims (meta.action_names)")
    min_confidence: float = Field(0.0, ge=0, le=1, description="filter episodes whose mean confidence is lower")
    resources: Resources = Resources(num_cpus=1)


def check(params: LabelActionsParams, cctx: CheckContext) -> list[Problem]:
    from world_model.checkpoint import is_complete

    if params.checkpoint and not is_complete(params.checkpoint):
        return [("checkpoint", f"{params.checkpoint} is not a complete checkpoint (no _COMPLETE marker)")]
    return []


def finish(rows: list[dict], params: LabelActionsParams, ctx: StageContext) -> None:
    """report.json: how many episodes were labelled, their confidence, and, where the true actions were hidden (the
    simulator's ``hide_actions_fraction``), R2 of the pseudo-labels against them, overall and per action dim."""
    labelled, confidences, pred, true = [], [], [], []
    for r in rows:
        if r["status"] != "ok" or r.get("stage") != STAGE or not r["path"].startswith(ctx.stage_dir):
            continue  # untouched (already labelled) or not ok
        episode = Episode.load(r["path"], keys={"action", "extras.hidden_action"})  # one read per episode
        if episode.meta.get("action_source") != "pseudo_labelled":
            continue
        labelled.append(r["episode_id"])
        confidences.append(episode.meta["pseudo_label"]["confidence_mean"])
        hidden = episode.extras.get("hidden_action")
        if hidden is not None:
            pred.append(episode.action[:-1])  # the last row is a hold, not a decoded pair
            true.append(hidden[:-1])
    report = {"episodes_labelled": len(labelled), "confidence_mean": _mean(confidences), "method": METHOD}
    if pred:
        p, t = np.concatenate(pred), np.concatenate(true)
        per_dim = [1 - float(((p[:, d] - t[:, d]) ** 2).sum() / max(((t[:, d] - t[:, d].mean()) ** 2).sum(), 1e-12))
                   for d in range(t.shape[1])]
        report.update(pseudo_label_r2=round(float(np.mean(per_dim)), 4),
                      pseudo_label_r2_per_dim=[round(v, 4) for v in per_dim], episodes_with_hidden_truth=len(pred))
    ctx.write_report(report)
    logger.info("%s: %d episodes pseudo-labelled, mean confidence %s, R2 vs hidden actions %s", STAGE,
                len(labelled), report["confidence_mean"], report.get("pseudo_label_r2"))


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


@register_stage(STAGE, kind="map", params=LabelActionsParams, check=check, finish=finish,
                requires=lambda p: () if p.checkpoint else ("world_model",))
class LabelActions:
    """Pseudo-actions (and per-step confidence) for action-less episodes from the latent-action model."""

    def __init__(self, params: LabelActionsParams, ctx: StageContext):
        self.params = params
        self.wm, self.checkpoint, self.embodiment = stage_world_model(STAGE, params.checkpoint, ctx,
                                                                      params.resources.num_gpus, params.embodiment,
                                                                      need_embodiment=False)
        self.store = RunStore(ctx.run_dir)

    def __call__(self, episode: Episode) -> Episode:
        if episode.action is not None:
            return episode  # labelled episodes are left as they are
        cfg = self.wm.config
        missing = [cam for cam in cfg.cameras if cam not in episode.rgb]
        missing += [cam for cam in cfg.cameras if cfg.depth and cam not in episode.depth_m]
        if missing:
            raise EpisodeError(episode.episode_id, f"rgb.{missing[0]}",
                               f"the world model reads cameras {list(cfg.cameras)}; this episode lacks {missing}")
        if episode.num_frames < 2:
            raise EpisodeError(episode.episode_id, "rgb", "fewer than 2 frames: no frame pair to label")
        try:
            embodiment = episode_embodiment(STAGE, self.wm, episode.meta, self.embodiment)
        except ValueError as exc:
            raise EpisodeError(episode.episode_id, "robot_type", str(exc)) from None
        states = self.wm.states(episode)
        actions = self.wm.decode_actions(self.wm.infer_latents(states[:-1], states[1:]), embodiment)
        actions = actions.cpu().numpy().astype(np.float32)  # (T-1, A)
        confidence = self.wm.label_confidence(states, actions, embodiment)  # (T-1,)
        names = self.params.action_names or episode.meta.get("action_names")
        if names is not None and len(names) != actions.shape[1]:
            raise EpisodeError(episode.episode_id, "action_names",
                               f"{len(names)} names for {actions.shape[1]} decoded action dims")
        summary = {"checkpoint": self.store.relative(self.checkpoint), "embodiment": embodiment,
                   "confidence_mean": round(float(confidence.mean()), 4),
                   "confidence_min": round(float(confidence.min()), 4), "method": METHOD}
        if summary["confidence_mean"] < self.params.min_confidence:
            raise Filtered(f"pseudo-label confidence {summary['confidence_mean']:.2f} < min_confidence "
                           f"{self.params.min_confidence:g}")
        meta = {**episode.meta, "action_source": "pseudo_labelled", "pseudo_label": summary,
                "robot_type": embodiment, "action_names": list(names) if names is not None else None}
        return dataclasses.replace(
            episode, action=np.concatenate([actions, actions[-1:]]),
            extras={**episode.extras, "action_confidence": np.concatenate([confidence, confidence[-1:]])},
            meta=meta)

