"""Check a finished run's shards through lerobot's own reader against the episodes that went into them.

    wmsynth verify runs/demo [--frames-per-episode 6]
    wmsynth verify s3://bucket/runs/demo

For every shard of the manifest: it must be complete (``_COMPLETE`` marker, ``pipeline.shards``); on object storage
it is downloaded (streamed) into a temp directory, one shard at a time; ``LeRobotDataset(repo_id, root=shard)`` must
load; each episode's length must equal the source episode's (read from the input path in the shard's provenance,
relative to the run directory); on sampled frames (evenly spaced, first and last included) RGB is compared as PSNR,
depth (read back in metres) as the median relative error over pixels with a measurement, state and action as the
largest absolute difference. When the run deleted its episode files (``keep_intermediates: false``) only lengths are
compared (against the provenance). Shard directories without ``_COMPLETE`` (an interrupted writer) are skipped and
listed. The figures go to ``<run>/verify.json`` and to stdout; the check fails when depth is off by more than
``max_depth_rel_err`` (1 %), lengths differ, a source episode is missing although the run kept its episode files, or
a shard of the manifest is missing or incomplete.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from episodes import Episode
from episodes import io as fileio
from pipeline import shards
from pipeline.lerobot_shard import PROVENANCE_FILE
from pipeline.store import RunStore

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REPORT = "verify.json"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def verify_shard(shard_dir: Path, frames_per_episode: int, store: RunStore) -> dict[str, Any]:
    """Compare one local shard directory with its source episodes (paths resolved against ``store``'s run dir)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    info = json.loads((shard_dir / "meta" / "info.json").read_text())
    provenance = json.loads((shard_dir / PROVENANCE_FILE).read_text())
    repo_id = provenance.get("repo_id", "wmsynth/verify")
    dataset = LeRobotDataset(repo_id, root=shard_dir, video_backend="pyav", depth_output_unit="m")
    starts = dataset.meta.episodes["dataset_from_index"]
    lengths = dataset.meta.episodes["length"]
    rel_errs, psnrs, state_err, action_err, length_mismatch, source_missing = [], [], 0.0, 0.0, [], []
    for entry in provenance["episodes"]:
        index, episode_id = int(entry["episode_index"]), entry["episode_id"]
        path = store.absolute(entry["input_path"])
        if not fileio.exists(path):  # deleted (keep_intermediates: false): only the length can be checked
            source_missing.append(episode_id)
            if int(lengths[index]) != int(entry["num_frames"]):
                length_mismatch.append(episode_id)
            continue
        source = Episode.load(path)
        if int(lengths[index]) != source.num_frames:
            length_mismatch.append(episode_id)
            continue
        picks = np.unique(np.linspace(0, source.num_frames - 1, frames_per_episode).round().astype(int))
        for t in picks:
            item = dataset[int(starts[index]) + int(t)]
            for cam, frames in source.rgb.items():
                rgb = (item[f"observation.images.{cam}"].permute(1, 2, 0).numpy() * 255).round()
                psnrs.append(_psnr(rgb, frames[t]))
            for cam, depth in source.depth_m.items():
                back = item[f"observation.depth.{cam}"].numpy().reshape(depth.shape[1:])
                valid = np.isfinite(depth[t]) & (depth[t] > 0.01) & (depth[t] < 10.0)
                rel_errs.append(np.abs(back[valid] - depth[t][valid]) / depth[t][valid])
            if source.state is not None:
                state_err = max(state_err, float(np.abs(item["observation.state"].numpy() - source.state[t]).max()))
            if source.action is not None:
                action_err = max(action_err, float(np.abs(item["action"].numpy() - source.action[t]).max()))
    all_rel = np.concatenate(rel_errs) if rel_errs else np.zeros(0)
    return {
        "shard": shard_dir.name,
        "episodes": len(provenance["episodes"]),
        "frames": int(info["total_frames"]),
        "length_mismatch": length_mismatch,
        "source_missing": source_missing,
        "rgb_psnr_db": psnrs,
        "depth_rel_errs": all_rel,
        "state_max_abs_err": state_err,
        "action_max_abs_err": action_err,
    }


def verify_run(run_dir: str | Path, frames_per_episode: int = 6, max_depth_rel_err: float = 0.01) -> dict[str, Any]:
    """Verify every shard the run's manifest lists; writes and returns the report (``ok`` says whether it passed)."""
    store = RunStore(str(run_dir))
    manifest = store.read_json(store.path(MANIFEST))
    if manifest is None:
        raise FileNotFoundError(f"{store.path(MANIFEST)} not found: verify a finished run (wmsynth run ...)")
    shards_dir = store.absolute(manifest.get("shards_dir", shards.SHARDS_DIRNAME))
    listing = shards.list_shards(shards_dir)
    for path in listing.incomplete:
        logger.warning("verify: skipping %s: no %s marker (an interrupted writer left it)", path, shards.COMPLETE)
    wanted = [s["name"] for s in manifest["shards"]]
    missing = [name for name in wanted if name not in listing.complete]
    results = []
    for name in wanted:
        if name in listing.complete:
            with shards.local_copy(fileio.join(shards_dir, name), listing.complete[name]) as local:
                results.append(verify_shard(local, frames_per_episode, store))
    rel = np.concatenate([s.pop("depth_rel_errs") for s in results]) if results else np.zeros(0)
    psnr = [p for s in results for p in s.pop("rgb_psnr_db")]
    report = {
        "run_dir": store.run_dir,
        "shards": len(results),
        "episodes": sum(s["episodes"] for s in results),
        "frames": sum(s["frames"] for s in results),
        "length_mismatch": [e for s in results for e in s["length_mismatch"]],
        "source_missing": [e for s in results for e in s["source_missing"]],
        "missing_shards": missing,  # in the manifest, but absent or without _COMPLETE
        "skipped_incomplete": [fileio.name(p) for p in listing.incomplete],
        "depth_median_rel_err": float(np.median(rel)) if rel.size else None,
        "depth_p99_rel_err": float(np.percentile(rel, 99)) if rel.size else None,
        "rgb_psnr_db_mean": float(np.mean([p for p in psnr if np.isfinite(p)] or [float("inf")])),
        "state_max_abs_err": max((s["state_max_abs_err"] for s in results), default=0.0),
        "action_max_abs_err": max((s["action_max_abs_err"] for s in results), default=0.0),
    }
    # Source episodes may be gone only when the run removed them itself (keep_intermediates: false).
    sources_ok = not report["source_missing"] or "intermediates_removed_bytes" in manifest
    report["ok"] = (not report["length_mismatch"] and not missing and sources_ok and report["episodes"] > 0
                    and (report["depth_median_rel_err"] is None or report["depth_median_rel_err"] <= max_depth_rel_err))
    fileio.atomic_write_text(store.path(REPORT), json.dumps(report, indent=2))
    return report
