"""Issue-8 figures for ``benchmarks/foundation.py``: object storage, a 2-node cluster, intermediate bytes, memory, resume.

Each function runs the real pipeline (``pipeline.run.run`` in this process, or ``wmsynth run`` on a real cluster) on
the demo's generate workload and returns a dict of figures:

- ``bench_s3_vs_local``: episodes/s of generate_tabletop + write_lerobot with the run directory on a local
  S3-compatible server (moto, 127.0.0.1) over the same on local disk; same episodes, interleaved repeats.
- ``bench_cluster``: episodes/s of the generate stage on a real Ray cluster of 2 nodes (1 CPU each) over 1 node
  with 1 CPU; the run directory on the S3 server, submitted with ``RAY_ADDRESS`` to ``wmsynth run``.
- ``bench_run_footprint``: for the demo workload (generate + depth + write), bytes of intermediate episode files per
  byte of shards, what ``keep_intermediates: false`` leaves behind, peak resident memory of the whole run (driver and
  every Ray process, sampled) at 4x the episodes over 1x, and the share of work redone after changing the last
  stage's params and resuming.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEMO_GENERATE = {"image_size": 128, "max_steps": 80, "tasks": ["pick_place", "push", "stack", "reach"]}


def demo_config(run_dir: str, num_episodes: int, *, depth: bool = True, shard: int = 8, **generate: Any) -> dict:
    stages = [{"name": "generate_tabletop", "params": {**DEMO_GENERATE, "num_episodes": num_episodes, **generate}}]
    if depth:
        stages.append({"name": "depth", "params": {"backend": "sensor"}})
    stages.append({"name": "write_lerobot", "params": {"episodes_per_shard": shard, "repo_id": "wmsynth/bench"}})
    return {"output_dir": run_dir, "seed": 0, "stages": stages}


def run_config(raw: dict, resume: bool = False) -> dict:
    from pipeline.config import parse_config
    from pipeline.run import run

    manifest = run(parse_config(raw), resume=resume)
    assert manifest["counts"].get("written") == manifest["counts"]["total"], manifest["counts"]
    return manifest


def stage_seconds(manifest: dict, *names: str) -> float:
    return sum(t["seconds"] for t in manifest["stages"] if t["stage"] in names)


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


# -- S3 vs local -----------------------------------------------------------------------------------------------------


def bench_s3_vs_local(tmp: Path, s3, num_episodes: int, repeats: int) -> dict:
    """``s3``: a running S3 server whose variables are in os.environ before Ray starts (tests.servers)."""
    import ray

    bucket = s3.bucket("wmsynth-bench")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_config(demo_config(str(tmp / "warm"), 2, depth=False, shard=2))  # warm both workers (imports)
        seconds: dict[str, list[float]] = {"local": [], "s3": []}
        per_stage: dict[str, list[dict[str, float]]] = {"local": [], "s3": []}
        for r in range(repeats):  # interleaved: drift on a noisy machine hits both
            for where in ("local", "s3"):
                run_dir = str(tmp / f"local-{r}") if where == "local" else f"{bucket}/run-{r}"
                t0 = time.perf_counter()
                manifest = run_config(demo_config(run_dir, num_episodes, depth=False))
                wall = time.perf_counter() - t0
                seconds[where].append(stage_seconds(manifest, "generate_tabletop", "write_lerobot"))
                per_stage[where].append({**{t["stage"]: round(t["seconds"], 2) for t in manifest["stages"]},
                                         "run_wall": round(wall, 2)})
    finally:
        ray.shutdown()
    best = {k: min(v) for k, v in seconds.items()}
    return {"s3_vs_local_ratio": round(best["local"] / best["s3"], 3),
            "s3_seconds": [round(s, 2) for s in seconds["s3"]],
            "local_seconds": [round(s, 2) for s in seconds["local"]], "s3_episodes": num_episodes,
            "s3_per_stage": per_stage}


# -- cluster ---------------------------------------------------------------------------------------------------------


def _cluster_run(cluster, config_path: Path, run_dir: str) -> dict:
    env = {**cluster.env, "RAY_ADDRESS": cluster.address, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    out = subprocess.run([str(Path(sys.executable).parent / "wmsynth"), "-q", "run", str(config_path),
                          "--output", run_dir], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"wmsynth run on the cluster failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    from episodes import io as fileio

    return json.loads(fileio.read_text(f"{run_dir}/manifest.json"))


def bench_cluster(tmp: Path, s3, num_episodes: int, repeats: int) -> dict:
    import yaml

    from tests.servers import start_ray_cluster

    bucket = s3.bucket("wmsynth-cluster")
    config_path = tmp / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(demo_config("unused", num_episodes, depth=False)))
    seconds: dict[int, list[float]] = {1: [], 2: []}
    nodes_seen: dict[int, int] = {}
    for nodes in (1, 2):
        cluster = start_ray_cluster(extra_env=s3.env, num_cpus_per_node=1, num_nodes=nodes)
        try:
            _cluster_run(cluster, config_path, f"{bucket}/warm-{nodes}")  # start and warm the workers
            for r in range(repeats):
                manifest = _cluster_run(cluster, config_path, f"{bucket}/n{nodes}-{r}")
                seconds[nodes].append(stage_seconds(manifest, "generate_tabletop"))
                nodes_seen[nodes] = manifest["ray_nodes"]
        finally:
            cluster.stop()
    best = {n: min(v) for n, v in seconds.items()}
    return {"cluster_2node_vs_1node": round(best[1] / best[2], 3),
            "cluster_seconds_1node": [round(s, 2) for s in seconds[1]],
            "cluster_seconds_2node": [round(s, 2) for s in seconds[2]],
            "cluster_ray_nodes": nodes_seen, "cluster_episodes": num_episodes}


# -- footprint: bytes, memory, resume --------------------------------------------------------------------------------


class PeakRSS:
    """Sample the resident memory of this process and all its descendants (Ray's GCS, raylet, workers)."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()

    def _sample(self) -> int:
        import psutil

        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _measured_run(raw: dict, resume: bool = False) -> tuple[dict, int]:
    """A whole run with its own local Ray (started and stopped inside, so its processes are our descendants)."""
    with PeakRSS() as rss:
        manifest = run_config(raw, resume=resume)
    return manifest, rss.peak


def bench_run_footprint(tmp: Path, num_episodes: int) -> dict:
    base_dir = tmp / "demo-1x"
    manifest, rss_1x = _measured_run(demo_config(str(base_dir), num_episodes))
    intermediates = tree_bytes(base_dir / "stages")
    episode_bytes = sum(tree_bytes(d / "episodes") for d in (base_dir / "stages").iterdir())
    shards = tree_bytes(base_dir / "shards")
    first_seconds = sum(t["seconds"] for t in manifest["stages"])

    changed = demo_config(str(base_dir), num_episodes, shard=num_episodes)  # only the last stage's params differ
    t0 = time.perf_counter()
    resumed, _ = _measured_run(changed, resume=True)
    resume_wall = time.perf_counter() - t0
    rerun = [t["stage"] for t in resumed["stages"] if not t["resumed"]]
    redone_seconds = sum(t["seconds"] for t in resumed["stages"] if not t["resumed"])
    rows_redone = sum(sum(t["counts"].values()) for t in resumed["stages"] if not t["resumed"])
    rows_total = sum(sum(t["counts"].values()) for t in resumed["stages"])

    dropped = {**changed, "keep_intermediates": False}
    final, _ = _measured_run(dropped, resume=True)
    left = sum(tree_bytes(d / "episodes") for d in (base_dir / "stages").iterdir())

    big_dir = tmp / "demo-4x"
    _, rss_4x = _measured_run(demo_config(str(big_dir), 4 * num_episodes))
    return {
        "intermediate_bytes_per_shard_byte": round(episode_bytes / shards, 3),
        "intermediate_episode_mb": round(episode_bytes / 1e6, 2), "stage_dirs_mb": round(intermediates / 1e6, 2),
        "shards_mb": round(shards / 1e6, 2),
        "intermediates_left_with_keep_false": left,
        "intermediates_removed_mb": round(final.get("intermediates_removed_bytes", 0) / 1e6, 2),
        "peak_rss_ratio_4x": round(rss_4x / rss_1x, 3),
        "peak_rss_mb_1x": round(rss_1x / 2**20), "peak_rss_mb_4x": round(rss_4x / 2**20),
        "footprint_episodes": num_episodes,
        "resume_rerun_fraction": round(redone_seconds / first_seconds, 3),
        "resume_rerun_stages": rerun, "resume_rerun_row_fraction": round(rows_redone / rows_total, 3),
        "resume_wall_s": round(resume_wall, 1),
    }


def with_s3(tmp: Path):
    """Start the moto server and export its variables (before any Ray starts)."""
    from tests.servers import start_moto_server

    server = start_moto_server(tmp)
    os.environ.update(server.env)
    return server
