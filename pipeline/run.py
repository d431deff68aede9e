"""One run: the stages of stages.yaml chained over Ray Data, each stage's rows persisted so a run can resume.

Run directory layout:
    config.resolved.yaml             the config after --set overrides
    stages/NN_<stage>/episodes/*.npz episodes a stage produced or changed (lossless; see pipeline.episode)
    stages/NN_<stage>/rows.jsonl     the stage's output rows (episode id, path, status, reason, shard)
    stages/NN_<stage>/_SUCCESS       written last: the stage is complete (--resume skips it)
    shards/shard-XXXXX/              LeRobot v3 datasets written by write_lerobot
    manifest.json                    every input episode's fate, per-stage timings and counts

Rows are materialised between stages (they are a few hundred bytes each; the frames stay on disk), so each stage is
timed on its own, can be re-run alone with ``only=`` and is skipped on ``resume=True`` once complete. Inside a stage,
work is per episode (or per shard) with its own completion marker, so a stage killed half way redoes only what is
missing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import RunConfig
from pipeline.episode import atomic_write_text
from pipeline.stage import OK, REGISTRY, WRITTEN, StageContext

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class RunError(RuntimeError):
    """The run cannot go on (not a per-episode problem): says what to do instead."""


# Ray Train's placement-group cleaner polls the State API, which a local Ray started without its dashboard does not
# serve: it would log a warning every few seconds for the whole training. Quietened in each worker process.
_NOISY_WITHOUT_DASHBOARD = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_worker_logs() -> None:
    """Ray ``worker_process_setup_hook`` of a local run (see ``init_ray``)."""
    for name in _NOISY_WITHOUT_DASHBOARD:
        logging.getLogger(name).setLevel(logging.ERROR)


def init_ray(ray_address: str) -> bool:
    """Connect to the configured cluster (RAY_ADDRESS wins) or start a local Ray. Returns True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or ray_address or None
    if address:
        logger.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, log_to_driver=True,
                 runtime_env={"worker_process_setup_hook": "pipeline.run.quiet_worker_logs"})
    return True


def _stage_dir(run_dir: Path, index: int, name: str) -> Path:
    return run_dir / "stages" / f"{index:02d}_{name}"


def _read_rows(stage_dir: Path) -> list[dict[str, str]]:
    with open(stage_dir / "rows.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_rows(stage_dir: Path, rows: list[dict[str, str]]) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stage_dir / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(stage_dir / "_SUCCESS", "")


def _rows_dataset(rows: list[dict[str, str]]):
    import ray

    # One block per episode (capped): per-episode work then spreads over every CPU of the cluster.
    return ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 256)))


def _counts(rows: list[dict[str, str]]) -> dict[str, int]:
    return dict(Counter(r["status"] for r in rows))


def run(config: RunConfig, only: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Run the stages in order and write manifest.json. Returns the manifest."""
    run_dir = config.output_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.resolved.yaml", yaml.safe_dump(_config_dict(config), sort_keys=False))
    except OSError as exc:
        raise RunError(f"output_dir {run_dir}: cannot write ({exc.strerror}); choose a writable directory with "
                       f"--output or output_dir") from None
    names = [s.name for s in config.stages]
    if only is not None and only not in names:
        raise RunError(f"--only {only!r}: no such stage in {config.source_file} (stages: {', '.join(names)})")
    started_ray = init_ray(config.ray_address)
    timings: list[dict[str, Any]] = []
    rows: list[dict[str, str]] = []
    try:
        for index, stage in enumerate(config.stages):
            spec = REGISTRY[stage.name]
            stage_dir = _stage_dir(run_dir, index, stage.name)
            done = (stage_dir / "_SUCCESS").exists()
            if only is not None and stage.name != only:
                if names.index(only) < index:
                    break  # stages after --only do not run
                if not done:
                    raise RunError(f"--only {only}: earlier stage {stage.name!r} has not completed in {run_dir}; "
                                   f"run the whole pipeline (or --resume) first")
                rows = _read_rows(stage_dir)
                continue
            if resume and done and only is None:
                rows = _read_rows(stage_dir)
                logger.info("stage %s: complete in an earlier run, %s", stage.name, _counts(rows))
                timings.append(_stage_entry(stage.name, 0.0, True, rows, stage_dir))
                continue
            ctx = StageContext(run_dir=run_dir, stage_dir=stage_dir, seed=config.seed, resume=resume, index=index)
            stage_dir.mkdir(parents=True, exist_ok=True)
            (stage_dir / "_SUCCESS").unlink(missing_ok=True)
            ctx.report_path.unlink(missing_ok=True)  # a report belongs to the run of the stage that wrote it
            t0 = time.perf_counter()
            logger.info("stage %s (%s) ...", stage.name, spec.kind)
            if spec.kind == "source":
                # Sources fan out 1:N (files, dataset episodes or simulator seeds -> episodes); their rows join any
                # rows from sources before them.
                rows = rows + spec.build(None, stage.params, ctx).take_all()
                _check_unique_ids(rows, stage.name)
            elif any(r["status"] == OK for r in rows):
                rows = spec.build(_rows_dataset(rows), stage.params, ctx).take_all()
            rows = sorted(rows, key=lambda r: r["episode_id"])
            _write_rows(stage_dir, rows)
            seconds = time.perf_counter() - t0
            counts = _counts(rows)
            logger.info("stage %s done in %.1f s: %s", stage.name, seconds, counts)
            timings.append(_stage_entry(stage.name, seconds, False, rows, stage_dir))
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    manifest = build_manifest(config, rows, timings, partial=only is not None)
    atomic_write_text(run_dir / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def _stage_entry(name: str, seconds: float, resumed: bool, rows: list[dict[str, str]],
                 stage_dir: Path) -> dict[str, Any]:
    """A stage's line in the manifest: timing, row counts and its report.json (headline figures), if it wrote one."""
    entry: dict[str, Any] = {"stage": name, "seconds": round(seconds, 3), "resumed": resumed, "counts": _counts(rows)}
    report = stage_dir / "report.json"
    if report.is_file():
        entry["report"] = json.loads(report.read_text())
    return entry


def _check_unique_ids(rows: list[dict[str, str]], stage: str) -> None:
    dupes = sorted(eid for eid, n in Counter(r["episode_id"] for r in rows).items() if n > 1)
    if dupes:
        raise RunError(f"stage {stage}: episode ids {dupes[:5]} ({len(dupes)} in all) also come from an earlier source; "
                       f"episode ids must be unique across sources (rename the input files or datasets)")


def build_manifest(config: RunConfig, rows: list[dict[str, str]], timings: list[dict[str, Any]],
                   partial: bool = False) -> dict[str, Any]:
    episodes = []
    for r in rows:
        fate = {OK: "unwritten"}.get(r["status"], r["status"])
        entry = {"episode_id": r["episode_id"], "source": r.get("source", ""), "fate": fate, "stage": r["stage"]}
        if r["status"] == WRITTEN:
            entry["shard"] = r["shard"]
        if r["reason"]:
            entry["reason"] = r["reason"]
        episodes.append(entry)
    shards = Counter(r["shard"] for r in rows if r["status"] == WRITTEN)
    return {
        "run_dir": str(config.output_dir),
        "config": config.source_file,
        "seed": config.seed,
        "partial": partial,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "counts": Counter(e["fate"] for e in episodes) | {"total": len(episodes)},
        "shards_dir": str(config.output_dir / "shards"),
        "shards": [{"name": name, "episodes": n} for name, n in sorted(shards.items())],
        "stages": timings,
        "episodes": episodes,
    }


def _config_dict(config: RunConfig) -> dict[str, Any]:
    return {
        "output_dir": str(config.output_dir),
        "ray_address": config.ray_address,
        "seed": config.seed,
        "stages": [{"name": s.name, "params": s.params.model_dump(mode="json")} for s in config.stages],
    }
