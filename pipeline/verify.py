"""Check a finished run's shards through lerobot's own reader against the episodes that went into them.

    wmsynth verify runs/demo [--frames-per-episode 6]

For every shard: ``LeRobotDataset(repo_id, root=shard)`` must load; each episode's length must equal the source
episode's; on sampled frames (evenly spaced, first and last included) RGB is compared as PSNR, depth (read back in
metres) as the median relative error over pixels with a measurement, state and action as the largest absolute
difference. The figures go to ``<run>/verify.json`` and to stdout; the check fails when depth is off by more than
``max_depth_rel_err`` (1 %) or lengths differ.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from episodes import Episode

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "meta/wmsynth_provenance.json"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def verify_shard(shard_dir: Path, frames_per_episode: int) -> dict[str, Any]:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    info = json.loads((shard_dir / "meta" / "info.json").read_text())
    provenance = json.loads((shard_dir / PROVENANCE_FILE).read_text())
    repo_id = provenance.get("repo_id", "wmsynth/verify")
    dataset = LeRobotDataset(repo_id, root=shard_dir, video_backend="pyav", depth_output_unit="m")
    starts = dataset.meta.episodes["dataset_from_index"]
    lengths = dataset.meta.episodes["length"]
    rel_errs, psnrs, state_err, action_err, length_mismatch = [], [], 0.0, 0.0, []
    for entry in provenance["episodes"]:
        index, episode_id = int(entry["episode_index"]), entry["episode_id"]
        source = Episode.load(entry["input_path"])
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
        "rgb_psnr_db": psnrs,
        "depth_rel_errs": all_rel,
        "state_max_abs_err": state_err,
        "action_max_abs_err": action_err,
    }


def verify_run(run_dir: str | Path, frames_per_episode: int = 6, max_depth_rel_err: float = 0.01) -> dict[str, Any]:
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    shards = [verify_shard(run_dir / "shards" / s["name"], frames_per_episode) for s in manifest["shards"]]
    rel = np.concatenate([s.pop("depth_rel_errs") for s in shards]) if shards else np.zeros(0)
    psnr = [p for s in shards for p in s.pop("rgb_psnr_db")]
    report = {
        "run_dir": str(run_dir),
        "shards": len(shards),
        "episodes": sum(s["episodes"] for s in shards),
        "frames": sum(s["frames"] for s in shards),
        "length_mismatch": [e for s in shards for e in s["length_mismatch"]],
        "depth_median_rel_err": float(np.median(rel)) if rel.size else None,
        "depth_p99_rel_err": float(np.percentile(rel, 99)) if rel.size else None,
        "rgb_psnr_db_mean": float(np.mean([p for p in psnr if np.isfinite(p)] or [float("inf")])),
        "state_max_abs_err": max((s["state_max_abs_err"] for s in shards), default=0.0),
        "action_max_abs_err": max((s["action_max_abs_err"] for s in shards), default=0.0),
    }
    report["ok"] = (not report["length_mismatch"] and report["episodes"] > 0
                    and (report["depth_median_rel_err"] is None or report["depth_median_rel_err"] <= max_depth_rel_err))
    (run_dir / "verify.json").write_text(json.dumps(report, indent=2))
    return report
