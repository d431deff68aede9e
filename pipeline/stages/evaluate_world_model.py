"""evaluate_world_model: measure a trained latent-action world model on held-out episodes (aggregate N:1 report).

Reads the checkpoint an earlier ``train_world_model`` published (artifact ``world_model``), or ``checkpoint`` (a
checkpoint directory, local or URL, e.g. trained elsewhere), loads the episodes that training held out (artifact
``world_model_split``, or the split named in the checkpoint; ``episodes: all`` measures on every ok row instead) and
writes to ``<stage_dir>`` (local or object storage, each file in one atomic write):

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
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from episodes import io as fileio
from pipeline.stage import CheckContext, Problem, StageContext, StageError, StageParams, register_stage

logger = logging.getLogger(__name__)

STAGE = "evaluate_world_model"


class EvaluateWorldModelParams(StageParams):
    checkpoint: str = Field("", description="a checkpoint directory (path or URL); empty: the one an earlier "
                                            "train_world_model published")
    episodes: Literal["heldout", "all"] = Field("heldout", description="which ok rows to measure on")
    horizon: int = Field(8, ge=1, le=64, description="open-loop rollout steps")
    max_windows: int = Field(256, ge=1, description="most rollout windows measured")
    seed: int = 0


def checkpoint_problem(path: str) -> str | None:
    """Why ``path`` is not a usable checkpoint (what to set instead), or None."""
    from world_model.checkpoint import is_complete, latest_checkpoint, read_config

    if not fileio.exists(path):
        return f"{path} does not exist; set it to a checkpoint directory (.../checkpoints/step-XXXXXXXX)"
    if is_complete(path):
        try:
            read_config(path)
        except ValueError as exc:
            return str(exc)
        return None
    newest = latest_checkpoint(path)
    if newest is not None:
        return f"{path} is a directory of checkpoints; set checkpoint to one of them, e.g. {newest}"
    return (f"{path} is not a complete checkpoint (no commit marker: the training that wrote it stopped while "
            f"writing it, or it is not a world-model checkpoint); use an earlier step-XXXXXXXX")


def check(params: EvaluateWorldModelParams, cctx: CheckContext) -> list[Problem]:
    """A set checkpoint exists and is complete; held-out episodes are known (a split in it, or a training before)."""
    if not params.checkpoint:
        return []  # the runner checks that an earlier stage provides ``world_model``
    problem = checkpoint_problem(params.checkpoint)
    if problem:
        return [("checkpoint", problem)]
    from world_model.checkpoint import read_config

    split = read_config(params.checkpoint).get("split")
    if params.episodes == "heldout" and not (split and fileio.exists(split)):
        return [("episodes", f"heldout: {params.checkpoint} names no readable split.json (which episodes it never "
                             f"saw is unknown); set episodes: all to measure on every row")]
    return []


def _required(params: EvaluateWorldModelParams) -> tuple[str, ...]:
    return () if params.checkpoint else ("world_model",)


@register_stage(STAGE, kind="aggregate", params=EvaluateWorldModelParams, check=check, requires=_required)
def evaluate_world_model(rows: list[dict[str, str]], params: EvaluateWorldModelParams, ctx: StageContext) -> None:
    """Held-out probe R2, rollout PSNR/SSIM vs copy-last-frame, action sensitivity, codebook use; PNG/GIF panels."""
    from world_model.checkpoint import load_world_model, read_config
    from world_model.data import PairData, episode_info
    from world_model.evaluate import evaluate

    checkpoint = params.checkpoint or ctx.artifact("world_model")
    problem = checkpoint_problem(checkpoint)
    if problem:
        raise StageError(f"{STAGE}: {problem}")
    ids = {r["episode_id"] for r in rows}
    if params.episodes == "heldout":
        split_file = read_config(checkpoint).get("split") if params.checkpoint else ctx.artifact("world_model_split")
        if not split_file or not fileio.exists(split_file):
            raise StageError(f"{STAGE}: no split.json for {checkpoint} (which episodes were held out is unknown); "
                             f"set params.episodes: all to measure on every row")
        ids &= set(json.loads(fileio.read_text(split_file))["heldout"])
    wm = load_world_model(checkpoint)
    cfg = wm.config
    chosen = [r["path"] for r in sorted(rows, key=lambda r: r["episode_id"]) if r["episode_id"] in ids
              and not episode_info(r["path"]).missing(cfg.cameras, cfg.depth)]
    if not chosen:
        raise StageError(f"{STAGE}: no {params.episodes} episodes with cameras {list(cfg.cameras)} among the ok rows "
                         f"to evaluate on")
    data = PairData.from_episodes(chosen, cfg.cameras, cfg.image_size, cfg.depth, cfg.max_depth_m,
                                  embodiment_names=cfg.embodiments)
    with tempfile.TemporaryDirectory(prefix="wmsynth-eval-") as tmp:
        result = evaluate(wm, data, horizon=params.horizon, max_windows=params.max_windows, seed=params.seed,
                          out_dir=tmp)
        result["files"] = publish_files(result.get("files", {}), ctx)
    result.update(checkpoint=checkpoint, episodes=params.episodes, num_episodes=len(chosen))
    fileio.atomic_write_text(ctx.path("eval.json"), json.dumps(result, indent=1))
    summary = result.get("rollout", {}).get("summary", {})
    latent = result["latent"]
    ctx.write_report({"checkpoint": checkpoint, "episodes": params.episodes, "num_episodes": len(chosen),
                      "probe_r2": latent.get("probe_action", {}).get("r2"),
                      "probe_mse": latent.get("probe_action", {}).get("mse"),
                      "head_r2": latent.get("head", {}).get("r2"), "codebook": latent.get("codebook"), **summary,
                      "rollout_fps_per_core": result.get("speed", {}).get("rollout_fps_per_core"),
                      "files": {"eval": ctx.path("eval.json"), **result["files"]}})
    logger.info("%s: probe R2 %s, 1-step masked PSNR gain %s dB, action sensitivity %s dB", STAGE,
                latent.get("probe_action", {}).get("r2"), summary.get("psnr_gain_1step_db"),
                summary.get("action_sensitivity_db"))


def publish_files(files: dict[str, Any], ctx: StageContext) -> dict[str, str]:
    """Copy the locally drawn panels into the stage directory (one atomic write each); their new paths."""
    out = {}
    for key, local in files.items():
        target = ctx.path(Path(local).name)
        fileio.atomic_write_bytes(target, Path(local).read_bytes())
        out[key] = target
    return out
