"""Data and pipeline helpers of ``benchmarks/own_data.py``: the cached datasets (the KUKA iiwa LeRobot datasets of
``_foreign_robot`` and our simulator's Panda episodes), ``wmsynth run`` in a subprocess with its CPU-seconds, and
reading back what a run wrote (episode files of a stage, QA documents of ``synthesize_qa``).

Everything is cached under ``<cache_dir>/<kind>-<hash of its spec>``; a dataset counts as made once its last file is
written (the foreign dataset's ``summary.json``, the Panda set's ``cost.json``), so a killed generation starts again.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _policy_value_jobs import Job, run_jobs  # noqa: E402
from policy_value import spec_hash  # noqa: E402
from synthesis import write_json  # noqa: E402

logger = logging.getLogger("benchmarks.own_data")

VENV_BIN = Path(sys.executable).parent
PANDA_TASKS = ("reach", "push", "pick_place")


@dataclass(frozen=True)
class ForeignSpec:
    """One KUKA iiwa dataset (``_foreign_robot.generate``)."""

    num_episodes: int
    seed: int
    height: int = 96
    width: int = 128
    frames: tuple[int, int] = (20, 40)

    def config(self):
        from _foreign_robot import ForeignConfig

        return ForeignConfig(height=self.height, width=self.width, frames=tuple(self.frames))


@dataclass(frozen=True)
class PandaSpec:
    """Scripted Panda episodes of the embedded simulator, one camera (``front``), tasks ``PANDA_TASKS`` in turn."""

    train: int = 96
    test: int = 24
    image_size: int = 64
    max_steps: int = 60
    seed: int = 12


def make_foreign(spec: ForeignSpec, cache_dir: Path) -> dict[str, Any]:
    """The dataset of ``spec`` (made now, or found in the cache): its root, truth path and generation summary."""
    from _foreign_robot import generate

    home = cache_dir / f"foreign-{spec_hash(asdict(spec))}"
    done = home / "summary.json"
    if not done.is_file():
        shutil.rmtree(home, ignore_errors=True)  # a killed generation: the writer refuses an existing root
        home.mkdir(parents=True)
        logger.info("generating %d KUKA iiwa episodes (seed %d) into %s", spec.num_episodes, spec.seed, home)
        summary = generate(home / "dataset", spec.num_episodes, spec.seed, spec.config(),
                           truth_path=home / "truth.json")
        write_json(done, {**summary, "spec": asdict(spec)})
    return json.loads(done.read_text())


def _panda_episode(job: tuple[int, str, str, PandaSpec]) -> float:
    """Generate and save one Panda episode (in a worker process); returns its CPU seconds."""
    from pipeline.sim.generate import generate_episode
    from pipeline.sim.tabletop import TabletopConfig

    seed, task, path, spec = job
    start = time.process_time()
    config = TabletopConfig(width=spec.image_size, height=spec.image_size, cameras=("front",), depth=False,
                            segmentation=False, max_steps=spec.max_steps)
    generate_episode(seed, task, config, episode_id=Path(path).stem).save(path)
    return time.process_time() - start


def make_panda(spec: PandaSpec, cache_dir: Path, workers: int) -> dict[str, Any]:
    """{train, test: episode paths, cpu_s: generation CPU-seconds (when it was made)}; missing episodes are made."""
    home = cache_dir / f"panda-{spec_hash(asdict(spec))}"
    home.mkdir(parents=True, exist_ok=True)
    base = 1_000_000 * spec.seed
    plan = {split: [(base + offset + i, PANDA_TASKS[i % len(PANDA_TASKS)]) for i in range(n)]
            for split, n, offset in (("train", spec.train, 0), ("test", spec.test, 500_000))}
    paths = {split: [str(home / f"{split}-{task}-{seed}.episode") for seed, task in items]
             for split, items in plan.items()}
    jobs = [(seed, task, path, spec) for split, items in plan.items()
            for (seed, task), path in zip(items, paths[split]) if not Path(path).is_file()]
    cost = home / "cost.json"
    if jobs or not cost.is_file():
        logger.info("generating %d Panda episodes into %s with %d processes", len(jobs), home, workers)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            cpu = sum(pool.map(_panda_episode, jobs, chunksize=2))
        write_json(cost, {"cpu_s": round(cpu, 1), "episodes_made": len(jobs)})
    return {**paths, "cpu_s": json.loads(cost.read_text())["cpu_s"], "dir": str(home)}


def run_pipeline(cache_dir: Path, name: str, config: dict) -> dict[str, Any]:
    """``wmsynth run`` of ``config`` (a subprocess, one torch/OpenMP thread) in a run directory named by its hash;
    a finished run is reused. Returns the run directory, the stages' reports and the CPU-seconds of the process
    tree (Ray's workers included) of the runs made now and before."""
    runs = cache_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    key = f"{name}-{spec_hash(config)}"
    run_dir, cost_file = runs / key, runs / f"{key}.cost.json"
    costs = json.loads(cost_file.read_text()) if cost_file.is_file() else []
    ran = not _finished(run_dir)
    if ran:
        cfg = runs / f"{key}.yaml"
        cfg.write_text(yaml.safe_dump({"output_dir": str(run_dir), **config}, sort_keys=False))
        logger.info("%s: wmsynth run %s (log %s)", name, cfg, runs / f"{key}.log")
        job = Job(f"wmsynth {name}", [str(VENV_BIN / "wmsynth"), "run", str(cfg), "--output", str(run_dir),
                                      "--resume"], runs / f"{key}.log")
        costs.append(run_jobs([job], 1, report_s=float("inf"))[0])
        write_json(cost_file, costs)
        if not _finished(run_dir):
            raise RuntimeError(f"{name}: wmsynth run did not finish in {run_dir}; see {costs[-1]['log']}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {"run_dir": str(run_dir), "counts": manifest["counts"],
            "reports": {s["stage"]: s.get("report") for s in manifest["stages"]},
            "cpu_s": round(sum(c["cpu_s"] for c in costs), 1), "wall_s": round(sum(c["wall_s"] for c in costs), 1),
            "reused": not ran}


def _finished(run_dir: Path) -> bool:
    manifest = run_dir / "manifest.json"
    if not manifest.is_file():
        return False
    m = json.loads(manifest.read_text())
    return bool(m.get("finished_at")) and not m.get("partial")


def stage_episodes(run_dir: str, index: int, stage: str) -> list[str]:
    """Episode files a stage of a run saved (``<run>/stages/NN_<stage>/episodes/``), sorted by name."""
    from episodes.format import SUFFIX

    found = sorted(str(p) for p in (Path(run_dir) / "stages" / f"{index:02d}_{stage}" / "episodes").glob(f"*{SUFFIX}"))
    if not found:
        raise RuntimeError(f"no episode files of stage {stage} in {run_dir}")
    return found


def estimate_quality(run_dir: str, camera: str, truth: dict[str, float]) -> dict[str, Any]:
    """How good an estimating ``depth`` stage (the run's stage 01) was: the focal length it put in each episode's
    ``meta.cameras`` against the true one, and its depth against the sensor's (``depth_metrics.json``)."""
    import numpy as np

    from episodes import read_meta
    from pipeline.stages.depth import METRICS_FILE

    metas = [read_meta(p) for p in stage_episodes(run_dir, 1, "depth")]
    fx = np.array([m["cameras"][camera]["intrinsics"]["fx"] for m in metas
                   if "intrinsics" in (m.get("cameras") or {}).get(camera, {})])
    error = np.abs(fx / truth["fx"] - 1)
    metrics = json.loads((Path(run_dir) / "stages" / "01_depth" / METRICS_FILE).read_text())
    return {"focal_px": {"true": round(truth["fx"], 3), "episodes": len(fx),
                         "estimated_median": round(float(np.median(fx)), 3) if len(fx) else None,
                         "relative_error_median": round(float(np.median(error)), 4) if len(fx) else None},
            "depth_metrics": metrics["overall"]}


def qa_documents(run_dir: str, subdir: str = "qa") -> list[dict[str, Any]]:
    """The JSON documents of every sample in a run's QA shards (``synthesize_qa``), in shard order."""
    from depth.qa_dataset import SHARD_PATTERN
    from pipeline.stages.synthesize_qa import read_part_samples

    shards = sorted((Path(run_dir) / subdir).glob(SHARD_PATTERN.replace("{:06d}", "*")))
    return [json.loads(sample["json"]) for shard in shards for sample in read_part_samples(str(shard))]


def panda_as(paths: list[str], camera: str) -> list:
    """Panda episodes loaded with their one camera renamed ``camera`` (in memory), so that they fill the same camera
    slot of the world model as the foreign robot's; their robot (``franka_panda``) keeps its own action head."""
    from episodes import Episode
    from world_model.data import episode_keys

    out = []
    for path in paths:
        ep = Episode.load(path, keys=episode_keys(("front",)))
        ep.rgb = {camera: ep.rgb["front"]}
        ep.meta = {**ep.meta, "robot_type": ep.meta.get("robot_type") or "franka_panda"}
        out.append(ep)
    return out
