"""evaluate_world_model: measure a trained latent-action world model on held-out episodes (N:1 report, rows 1:1).

Reads the newest checkpoint of the run's ``train_world_model`` stage (or ``checkpoint``), loads the episodes that
stage held out (its ``split.json``; ``episodes: all`` measures on every ok row instead, e.g. for a checkpoint trained
elsewhere) and writes to ``<stage_dir>``:

    report.json     the headline figures (copied into the run's manifest.json)
    eval.json       probe R2 / MSE (frozen z -> commanded action, and -> actual end-effector motion), head R2, codebook
                    usage, 1..horizon-step open-loop rollout PSNR / SSIM (full frame and motion-masked) from true
                    actions, inferred latents and shuffled actions against the copy-last-frame baseline, rollout
                    frames/s per core (see ``world_model.evaluate``)
    rollouts.png    real vs predicted rollouts side by side;  rollouts.gif  the same as an animation

The rows pass through unchanged. Runs in the driver process (one model, a few hundred frame pairs).

    - name: evaluate_world_model
      params: {horizon: 8}
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import Field

from pipeline.stage import OK, StageContext, StageParams, register_stage

logger = logging.getLogger(__name__)

STAGE = "evaluate_world_model"


class EvaluateWorldModelParams(StageParams):
    checkpoint: str = Field("", description="a checkpoint directory; empty: newest of this run's train_world_model")
    episodes: Literal["heldout", "all"] = Field("heldout", description="which ok rows to measure on")
    horizon: int = Field(8, ge=1, le=64, description="open-loop rollout steps")
    max_windows: int = Field(256, ge=1, description="most rollout windows measured")
    seed: int = 0


def find_training(run_dir: Path) -> Path:
    """The (last) train_world_model stage directory of a run."""
    found = sorted((run_dir / "stages").glob("*_train_world_model"))
    if not found:
        raise ValueError(f"{STAGE}: no train_world_model stage in {run_dir}; put one before this stage or set "
                         f"params.checkpoint")
    return found[-1]


@register_stage(STAGE, kind="transform", params=EvaluateWorldModelParams)
def evaluate_world_model(ds, params: EvaluateWorldModelParams, ctx: StageContext):
    """Held-out probe R2, rollout PSNR/SSIM vs copy-last-frame, action sensitivity, codebook use; PNG/GIF panels."""
    from world_model.checkpoint import latest_checkpoint, load_world_model, read_config
    from world_model.data import PairData, episode_info
    from world_model.evaluate import evaluate

    rows = [r for r in ds.take_all() if r["status"] == OK]
    if params.checkpoint:
        checkpoint = Path(params.checkpoint)
        train_dir = None
    else:
        train_dir = find_training(ctx.run_dir)
        checkpoint = latest_checkpoint(train_dir / "checkpoints")
        if checkpoint is None:
            raise ValueError(f"{STAGE}: no complete checkpoint under {train_dir / 'checkpoints'}; "
                             f"run train_world_model first")
    ids = {r["episode_id"] for r in rows}
    if params.episodes == "heldout":
        split_file = Path(read_config(checkpoint).get("split") or (train_dir / "split.json" if train_dir else ""))
        if not split_file.is_file():
            raise ValueError(f"{STAGE}: no split.json for {checkpoint} (which episodes were held out is unknown); "
                             f"set params.episodes: all to measure on every row")
        ids &= set(json.loads(split_file.read_text())["heldout"])
    wm = load_world_model(checkpoint)
    cfg = wm.config
    chosen = [r["path"] for r in sorted(rows, key=lambda r: r["episode_id"]) if r["episode_id"] in ids
              and not episode_info(r["path"]).missing(cfg.cameras, cfg.depth)]
    if not chosen:
        raise ValueError(f"{STAGE}: no {params.episodes} episodes with cameras {list(cfg.cameras)} among the ok rows "
                         f"to evaluate on")
    data = PairData.from_episodes(chosen, cfg.cameras, cfg.image_size, cfg.depth, cfg.max_depth_m,
                                  embodiment_names=cfg.embodiments)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    result = evaluate(wm, data, horizon=params.horizon, max_windows=params.max_windows, seed=params.seed,
                      out_dir=ctx.stage_dir)
    result.update(checkpoint=str(checkpoint), episodes=params.episodes, num_episodes=len(chosen))
    (ctx.stage_dir / "eval.json").write_text(json.dumps(result, indent=1))
    summary = result.get("rollout", {}).get("summary", {})
    latent = result["latent"]
    ctx.write_report({"checkpoint": str(checkpoint), "episodes": params.episodes, "num_episodes": len(chosen),
                      "probe_r2": latent.get("probe_action", {}).get("r2"),
                      "probe_mse": latent.get("probe_action", {}).get("mse"),
                      "head_r2": latent.get("head", {}).get("r2"), "codebook": latent.get("codebook"), **summary,
                      "rollout_fps_per_core": result.get("speed", {}).get("rollout_fps_per_core"),
                      "files": {"eval": str(ctx.stage_dir / "eval.json"), **result.get("files", {})}})
    logger.info("%s: probe R2 %s, 1-step masked PSNR gain %s dB, action sensitivity %s dB", STAGE,
                result["latent"].get("probe_action", {}).get("r2"), summary.get("psnr_gain_1step_db"),
                summary.get("action_sensitivity_db"))
    return ds
