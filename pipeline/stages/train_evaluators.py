"""train_evaluators: the frame read-out the subgoal evaluators judge with, learned from real episodes (aggregate N:1).

One small CNN (``evaluators.readout``) reads from a single frame, in the world model's camera / size layout, the
end-effector position (from the robot state), the task's target-object position (simulator episodes) and the task
progress (scripted demonstrations that succeeded: frame t of T is progress t / (T - 1)). It is trained on the real
episodes the world model trained on (artifact ``world_model_split``; every real ok row when there is none) and measured
on the held-out ones:

    report.json   progress_value_order_corr (GVL's metric: rank correlation of the read progress with true frame
                  order, mean over held-out episodes), readout_ee_error_cm / readout_object_error_cm (median, held-out
                  real frames: the read-out's own floor for judging predicted frames), training seconds
    readout/      the model (safetensors + JSON), published as artifact ``readout``

Rows pass through unchanged. Runs in the driver process (a few thousand 64x64 frames, a few hundred steps).

    - name: train_evaluators
      params: {steps: 600}
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from pydantic import Field

from episodes import Episode
from episodes import io as fileio
from pipeline.stage import StageContext, StageError, StageParams, register_stage

logger = logging.getLogger(__name__)

STAGE = "train_evaluators"


class TrainEvaluatorsParams(StageParams):
    steps: int = Field(600, ge=1, description="training steps of the read-out")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    max_frames_per_episode: int = Field(64, ge=2, description="frames drawn per training episode (evenly spaced)")
    num_threads: int = Field(2, ge=1, description="torch threads on the driver")


def _real(row: dict[str, str]) -> bool:
    return row.get("source") != "rollout"


@register_stage(STAGE, kind="aggregate", params=TrainEvaluatorsParams, requires=("world_model",),
                provides=("readout",))
def train_evaluators(rows: list[dict[str, str]], params: TrainEvaluatorsParams, ctx: StageContext) -> None:
    """Frame read-out (end effector, target object, task progress) for the evaluators, trained on real episodes."""
    import torch

    from evaluators.progress import value_order_correlation
    from evaluators.readout import ReadoutConfig, readout_targets, train_readout
    from world_model.checkpoint import read_config

    torch.set_num_threads(params.num_threads)
    cfg = read_config(ctx.artifact("world_model"))["model"]
    cameras, size = tuple(cfg["cameras"]), int(cfg["image_size"])
    split = _split(ctx)
    real = sorted((r for r in rows if _real(r)), key=lambda r: r["episode_id"])
    train_rows = [r for r in real if split is None or r["episode_id"] in split["train"]]
    test_rows = [r for r in real if split is not None and r["episode_id"] in split["heldout"]]
    frames, targets, masks = _stack([_thin(readout_targets(Episode.load(r["path"]), cameras, size, cfg["depth"],
                                                           cfg["max_depth_m"]), params.max_frames_per_episode)
                                     for r in train_rows])
    if frames is None:
        raise StageError(f"{STAGE}: no training frames with cameras {list(cameras)} among the real ok rows")
    started = time.perf_counter()
    config = ReadoutConfig(in_channels=frames.shape[1], image_size=size, steps=params.steps, cameras=cameras,
                           batch_size=params.batch_size, lr=params.lr, seed=ctx.seed)
    readout = train_readout(frames, targets, masks, config)
    seconds = time.perf_counter() - started
    out_dir = ctx.path("readout")
    readout.save(out_dir)
    ctx.publish("readout", out_dir)
    report = {"readout": out_dir, "train_episodes": len(train_rows), "train_frames": int(len(frames)),
              "heldout_episodes": len(test_rows), "train_seconds": round(seconds, 1), "cameras": list(cameras)}
    held = [readout_targets(Episode.load(r["path"]), cameras, size, depth=cfg["depth"], max_depth_m=cfg["max_depth_m"])
            for r in test_rows]
    if held:
        report.update(_heldout_errors(readout, held))
        demos = [f for f, _, m in held if m["progress"].all()]
        if demos:
            report["progress_value_order_corr"] = round(float(value_order_correlation(readout, demos)), 4)
    ctx.write_report(report)
    logger.info("%s: read-out trained on %d frames in %.0f s; held out: ee error %s cm, progress order corr %s",
                STAGE, len(frames), seconds, report.get("readout_ee_error_cm"), report.get("progress_value_order_corr"))


def _split(ctx: StageContext) -> dict | None:
    try:
        return json.loads(fileio.read_text(ctx.artifact("world_model_split")))
    except KeyError:
        return None


def _thin(part: tuple[np.ndarray, dict, dict], most: int) -> tuple[np.ndarray, dict, dict]:
    """At most ``most`` evenly spaced frames of one episode's (frames, targets, masks)."""
    frames, targets, masks = part
    keep = np.unique(np.linspace(0, len(frames) - 1, min(most, len(frames))).round().astype(int))
    return frames[keep], {k: v[keep] for k, v in targets.items()}, {k: v[keep] for k, v in masks.items()}


def _stack(parts: list[tuple[np.ndarray, dict, dict]]):
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return None, None, None
    frames = np.concatenate([p[0] for p in parts])
    targets = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    masks = {k: np.concatenate([p[2][k] for p in parts]) for k in parts[0][2]}
    return frames, targets, masks


def _heldout_errors(readout, held) -> dict[str, float]:
    """Median read-out errors on held-out real frames, in cm."""
    frames, targets, masks = _stack(held)
    pred = readout.predict(frames)
    out = {}
    for key, name in (("ee_xyz", "readout_ee_error_cm"), ("object_xyz", "readout_object_error_cm")):
        rows = masks[key].astype(bool)
        if rows.any():
            err = np.linalg.norm(pred[key][rows] - targets[key][rows], axis=1)
            out[name] = round(float(np.median(err)) * 100, 2)
    return out
