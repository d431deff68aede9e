"""Foundation benchmarks (issue 2), side by side in one process; the last line printed is one JSON object.

    .venv/bin/python benchmarks/foundation.py [--quick]

- ``sim_fps_per_core``: simulated frames per CPU-second at 128x128 with RGB + depth + segmentation, whole episodes
  (physics substeps, IK, scripted policy and rendering; target >= 25). ``render_fps_per_core`` is rendering alone.
- ``write_vs_lerobot_ratio``: frames/s of the ``write_lerobot`` stage (as the pipeline runs it, on Ray) over frames/s
  of lerobot's own writer in a plain loop, on the same frames (target >= 0.85).
- ``generate_scaling_2v1``: episodes/s of ``generate_tabletop`` with 2 parallel workers over 1 worker, same Ray
  instance, same episodes: the demo's workload (24 episodes, 128x128, up to 80 frames, depth + segmentation; best of
  interleaved repeats; target >= 1.7).

Issue 8 (``benchmarks/_store_bench.py`` says how each is measured):
- ``s3_vs_local_ratio``: generate + write episodes/s, run directory on a local S3 server over local disk (>= 0.8).
- ``cluster_2node_vs_1node``: generate episodes/s on a real 2-node Ray cluster over 1 node, 1 CPU each (>= 1.7).
- ``intermediate_bytes_per_shard_byte``: intermediate episode bytes per shard byte for the demo workload (<= 3), and
  ``intermediates_left_with_keep_false`` (0).
- ``peak_rss_ratio_4x``: peak resident memory of the whole run at 4x the demo's episodes over 1x (<= 1.3).
- ``resume_rerun_fraction``: share of the run's stage time redone after changing the last stage's params and resuming.

Each part's figures are saved to ``benchmarks/out/foundation.json`` as they finish; ``--resume`` skips the parts
already there, so a long run killed half way loses nothing. ``--only PART`` runs one part.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

logger = logging.getLogger("benchmarks.foundation")


def bench_sim(num_episodes: int) -> dict:
    from pipeline.sim.generate import measure_render_fps, time_episode
    from pipeline.sim.tabletop import TabletopConfig

    config = TabletopConfig(width=128, height=128, depth=True, segmentation=True)
    frames = cpu = wall = 0.0
    for seed in range(num_episodes):
        t = time_episode(seed=seed, config=config)
        frames, cpu, wall = frames + t["num_frames"], cpu + t["cpu_s"], wall + t["wall_s"]
    return {
        "sim_fps_per_core": round(frames / cpu, 1),
        "sim_fps_wall": round(frames / wall, 1),
        "sim_frames_measured": int(frames),
        "render_fps_per_core": round(measure_render_fps(128, 128, num_frames=100), 1),
    }


def bench_scaling(tmp: Path, num_episodes: int, repeats: int, max_steps: int) -> dict:
    import ray

    from pipeline.execute import run_source
    from pipeline.stage import REGISTRY, Resources, StageContext
    from pipeline.stages.generate_tabletop import GenerateTabletopParams
    from pipeline.store import RunStore

    def once(workers: int, tag: str) -> float:
        params = GenerateTabletopParams(num_episodes=num_episodes, image_size=128, max_steps=max_steps,
                                        resources=Resources(num_cpus=1, concurrency=workers))
        stage_dir = tmp / f"scaling-{tag}"
        ctx = StageContext(run_dir=str(tmp), stage_dir=str(stage_dir), stage="generate_tabletop", seed=0,
                           resume=False, index=0)
        start = time.perf_counter()
        rows = run_source(REGISTRY["generate_tabletop"], params, ctx, RunStore(str(tmp)))  # as the runner runs it
        seconds = time.perf_counter() - start
        assert all(r["status"] == "ok" for r in rows), rows
        shutil.rmtree(stage_dir)
        return seconds

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        once(2, "warmup")  # start and warm both worker processes (imports, pybullet) before timing
        times: dict[int, list[float]] = {1: [], 2: []}
        for r in range(repeats):  # interleaved, so drift on a noisy machine hits both
            for workers in (1, 2):
                times[workers].append(once(workers, f"{workers}-{r}"))
    finally:
        ray.shutdown()
    best = {w: min(ts) for w, ts in times.items()}
    return {
        "generate_scaling_2v1": round(best[1] / best[2], 3),
        "generate_seconds_1_worker": [round(t, 2) for t in times[1]],
        "generate_seconds_2_workers": [round(t, 2) for t in times[2]],
        "generate_episodes": num_episodes,
    }


def bench_write(tmp: Path, num_episodes: int) -> dict:
    from _writer_bench import bench_writer

    return bench_writer(tmp, num_episodes=num_episodes, num_frames=50, size=128)


PARTS = ("sim", "scaling", "write", "s3", "cluster", "footprint")
TARGETS = {"sim_fps_per_core": (">=", 25), "write_vs_lerobot_ratio": (">=", 0.85), "generate_scaling_2v1": (">=", 1.7),
           "s3_vs_local_ratio": (">=", 0.8), "cluster_2node_vs_1node": (">=", 1.7),
           "intermediate_bytes_per_shard_byte": ("<=", 3.0), "intermediates_left_with_keep_false": ("<=", 0),
           "peak_rss_ratio_4x": ("<=", 1.3)}


def run_part(part: str, tmp: Path, quick: bool) -> dict:
    import _store_bench as store

    if part == "sim":
        return bench_sim(num_episodes=2 if quick else 6)
    if part == "scaling":
        return bench_scaling(tmp, num_episodes=4 if quick else 24, repeats=1 if quick else 2,
                             max_steps=40 if quick else 80)
    if part == "write":
        return bench_write(tmp, num_episodes=4 if quick else 8)
    s3 = store.with_s3(tmp)
    try:
        if part == "s3":
            return store.bench_s3_vs_local(tmp, s3, num_episodes=4 if quick else 12, repeats=1 if quick else 2)
        if part == "cluster":
            return store.bench_cluster(tmp, s3, num_episodes=4 if quick else 12, repeats=1 if quick else 2)
        return store.bench_run_footprint(tmp, num_episodes=4 if quick else 24)
    finally:
        s3.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer episodes (a smoke run, noisier figures)")
    parser.add_argument("--resume", action="store_true", help="keep the parts already in the results file")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "foundation.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out if not args.quick else str(args.out).replace(".json", "-quick.json"))
    saved = json.loads(out.read_text()) if args.resume and out.exists() else {"parts": {}}
    for part in args.only or PARTS:
        if part in saved["parts"]:
            logger.info("%s: kept from %s", part, out)
            continue
        with tempfile.TemporaryDirectory(prefix="wmsynth-bench-") as tmp_name:
            saved["parts"][part] = run_part(part, Path(tmp_name), args.quick)
        logger.info("%s: %s", part, saved["parts"][part])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(saved, indent=1))
    result: dict = {"cpu_count": os.cpu_count()}
    for part in PARTS:
        result.update(saved["parts"].get(part, {}))
    result["targets"] = {k: f"{op} {v}" for k, (op, v) in TARGETS.items()}
    result["meets_targets"] = {k: (result[k] >= v if op == ">=" else result[k] <= v)
                               for k, (op, v) in TARGETS.items() if k in result}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
