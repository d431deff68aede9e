"""Writer throughput: lerobot's own writer in a plain loop vs the ``write_lerobot`` stage on Ray, same frames.

    from benchmarks._writer_bench import bench_writer
    bench_writer("/tmp/bench", num_episodes=8, num_frames=50, size=128)
    # {"write_lerobot_loop_fps": ..., "write_stage_fps": ..., "write_vs_lerobot_ratio": stage / loop, ...}

The episodes are built once in memory. The lerobot loop writes them from memory into one dataset
(``create -> add_frame -> save_episode -> finalize``) with the same features and the same encoder settings as our
stage, so the ratio measures our path (rows, episode loading, schema probing, shards on Ray, checks, provenance,
publication) and not a codec choice. A second lerobot loop with lerobot's *default* writer settings (PNG/TIFF staging,
default x265 preset) is reported alongside for context. Our input episode files are written before the clock starts
(they are the upstream stage's output). Both paths are warmed up once on one episode each (imports, Ray workers), so
the numbers are steady-state; ``seconds_stage_cold`` is the first, cold call of our stage (2 one-episode shards).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from episodes import SUFFIX, Episode
from pipeline.execute import run_aggregate
from pipeline.lerobot_schema import ShardSchema
from pipeline.lerobot_shard import encoder_configs
from pipeline.stage import REGISTRY, StageContext, row
from pipeline.stages.write_lerobot import STAGE, WriteLerobotParams

REPO_ID = "wmsynth/bench"


def synthetic_episode(index: int, num_frames: int, size: int, cameras: tuple[str, ...] = ("front",)) -> Episode:
    """Smooth, moving content (gradients, a sliding square, a depth ramp with sensor noise) with state and action."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    rgb, depth_m = {}, {}
    for k, cam in enumerate(cameras):
        base = np.stack([x / size * 150 + 50, y / size * 150 + 50, np.full_like(x, 60.0 + 20 * k)], -1)
        frames = np.repeat(base[None], num_frames, axis=0)  # (T, H, W, 3)
        ramps = np.empty((num_frames, size, size), np.float32)  # (T, H, W) metres
        for t in range(num_frames):
            top, left = (3 * t) % (size // 2), (5 * t + 7 * index) % (size // 2)
            frames[t, top:top + size // 4, left:left + size // 4] = (230, 200, 40)
            ramps[t] = 0.6 + 1.2 * (x + y + t) / (2 * size + num_frames) + rng.normal(0, 0.002, (size, size))
            ramps[t, top:top + size // 4, left:left + size // 4] -= 0.15
        rgb[cam] = frames.astype(np.uint8)
        depth_m[cam] = ramps
    state = rng.normal(size=(num_frames, 12)).astype(np.float32)
    action = rng.normal(size=(num_frames, 5)).astype(np.float32)
    return Episode(episode_id=f"bench-{index:04d}", fps=10.0, task="push the red cube to the left", rgb=rgb,
                   depth_m=depth_m, state=state, action=action,
                   meta={"source": "bench", "seed": index, "parent": None,
                         "state_names": [f"q{i}" for i in range(12)],
                         "action_names": ["dx", "dy", "dz", "dyaw", "gripper"]})


def _lerobot_loop(root: Path, episodes: list[Episode], params: WriteLerobotParams, same_settings: bool) -> float:
    """Seconds for lerobot's own writer to write ``episodes`` from memory into one dataset at ``root``."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    schema = ShardSchema.of_episode(episodes[0], None, "bench")
    writer_options: dict[str, Any] = {}
    if same_settings:
        rgb_encoder, depth_encoder = encoder_configs(params.writer_settings())
        writer_options = dict(rgb_encoder=rgb_encoder, depth_encoder=depth_encoder,
                              encoder_threads=params.encoder_threads, streaming_encoding=True,
                              encoder_queue_maxsize=0)
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    dataset = LeRobotDataset.create(REPO_ID, fps=schema.fps, features=schema.features(), root=root,
                                    robot_type=schema.robot_type, use_videos=True, **writer_options)
    try:
        for episode in episodes:
            for t in range(episode.num_frames):
                frame = {"task": episode.task, "observation.state": episode.state[t], "action": episode.action[t]}
                for cam in episode.cameras:
                    frame[f"observation.images.{cam}"] = episode.rgb[cam][t]
                    frame[f"observation.depth.{cam}"] = episode.depth_m[cam][t][..., None]
                dataset.add_frame(frame)
            dataset.save_episode()
    finally:
        dataset.finalize()
    return time.perf_counter() - start


def _ours(run_dir: Path, paths: list[Path], params: WriteLerobotParams) -> float:
    """Seconds for the write_lerobot stage, as the runner calls it: rows in, rows out."""
    run_dir = run_dir.absolute()  # Ray tasks run in another working directory
    shutil.rmtree(run_dir, ignore_errors=True)
    ctx = StageContext(run_dir=str(run_dir), stage_dir=str(run_dir / "stages" / STAGE), stage=STAGE, seed=0,
                       resume=False, index=1)
    rows = [row(Path(p).stem, path=str(p), stage="depth", source="bench") for p in paths]
    start = time.perf_counter()
    out = run_aggregate(REGISTRY[STAGE], rows, params, ctx)
    seconds = time.perf_counter() - start
    bad = [r for r in out if r["status"] != "written"]
    if bad:
        raise RuntimeError(f"benchmark episodes were not written: {bad[:2]}")
    return seconds


def bench_writer(tmp_dir: str | Path, num_episodes: int = 8, num_frames: int = 50, size: int = 128, *,
                 episodes_per_shard: int | None = None, repeats: int = 1) -> dict[str, Any]:
    """Frames/s of lerobot's plain loop and of our stage on the same frames; ``write_vs_lerobot_ratio`` = ours/theirs.

    ``episodes_per_shard`` defaults to spreading the episodes over the cluster's CPUs (one shard per CPU), which is how
    the stage gets its parallelism. With ``repeats`` > 1 the paths alternate and the fastest run of each counts.
    """
    import ray

    tmp_dir = Path(tmp_dir)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        num_cpus = int(ray.cluster_resources().get("CPU", 1))
        per_shard = episodes_per_shard or math.ceil(num_episodes / num_cpus)
        params = WriteLerobotParams(repo_id=REPO_ID, episodes_per_shard=per_shard)

        episodes = [synthetic_episode(i, num_frames, size) for i in range(num_episodes)]
        paths = [ep.save(tmp_dir / "episodes" / f"{ep.episode_id}{SUFFIX}") for ep in episodes]
        total_frames = sum(ep.num_frames for ep in episodes)

        warm = WriteLerobotParams(repo_id=REPO_ID, episodes_per_shard=1)
        ours_cold_s = _ours(tmp_dir / "warmup-ours", paths[:num_cpus], warm)  # imports lerobot in every worker
        _lerobot_loop(tmp_dir / "warmup-lerobot", episodes[:1], params, same_settings=True)
        _lerobot_loop(tmp_dir / "warmup-lerobot", episodes[:1], params, same_settings=False)

        lerobot_s, lerobot_default_s, ours_s = [], [], []
        for _ in range(repeats):
            lerobot_s.append(_lerobot_loop(tmp_dir / "lerobot", episodes, params, same_settings=True))
            ours_s.append(_ours(tmp_dir / "ours", paths, params))
            lerobot_default_s.append(_lerobot_loop(tmp_dir / "lerobot-defaults", episodes, params,
                                                   same_settings=False))
        lerobot_fps = total_frames / min(lerobot_s)
        ours_fps = total_frames / min(ours_s)
        lerobot_default_fps = total_frames / min(lerobot_default_s)
        return {
            "write_lerobot_loop_fps": round(lerobot_fps, 1),
            "write_stage_fps": round(ours_fps, 1),
            "write_vs_lerobot_ratio": round(ours_fps / lerobot_fps, 3),
            "write_lerobot_default_settings_fps": round(lerobot_default_fps, 1),
            "write_vs_lerobot_default_settings_ratio": round(ours_fps / lerobot_default_fps, 3),
            "write_details": {
                "frames": total_frames, "num_episodes": num_episodes, "num_frames": num_frames, "size": size,
                "num_cpus": num_cpus, "episodes_per_shard": per_shard,
                "num_shards": math.ceil(num_episodes / per_shard),
                "seconds_lerobot_loop": [round(s, 2) for s in lerobot_s],
                "seconds_stage": [round(s, 2) for s in ours_s],
                "seconds_lerobot_default_settings": [round(s, 2) for s in lerobot_default_s],
                "seconds_stage_cold": round(ours_cold_s, 2),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "settings": params.model_dump(exclude={"resources"}),
            },
        }
    finally:
        if started_ray:
            ray.shutdown()
