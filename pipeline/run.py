"""One run: the stages of stages.yaml in order, each through its kind's execution path (``pipeline.execute``).

    for each stage (source 1:N, map 1:1 or 1:N, aggregate N:1):
        key = hash(name, params, key of the stage before)          -> reuse it on --resume when unchanged
        rows = execute(stage, rows)                                 -> episodes saved, bad ones quarantined
        rows.jsonl, then _SUCCESS (hashes, artifacts, counts)       -> what later stages and --resume read
    manifest.json: every input episode's fate, per-stage timings and reports, versions, the command line
    report.html: the run's report (``pipeline.report``; a failure to build it is a warning, not a failed run)

Rows are materialised between stages (a few hundred bytes each; frames stay in episode files), so each stage is timed
on its own, can be re-run alone with ``only=`` and is skipped on ``resume=True`` once complete. The run directory may
be local or on object storage (``pipeline.store``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import yaml

from episodes import io as fileio
from pipeline.checks import check_run
from pipeline.config import ConfigError, RunConfig
from pipeline.execute import StageError, run_aggregate, run_map, run_source
from pipeline.stage import OK, REGISTRY, WRITTEN, StageContext
from pipeline.store import RunStore, params_hash, stage_key

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOG_FILE = "run.log"


class RunError(RuntimeError):
    """The run cannot go on (not a per-episode problem): says what to do instead."""


# Ray Train's placement-group cleaner polls the State API, which a local Ray started without its dashboard does not
# serve: it would log a warning every few seconds for the whole training. Quietened in each worker process.
NOISY_WITHOUT_DASHBOARD = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_worker_logs() -> None:
    """Ray ``worker_process_setup_hook`` of a local run (see ``init_ray``)."""
    for name in NOISY_WITHOUT_DASHBOARD:
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


class RunLog:
    """Mirror the run's log into ``<run_dir>/run.log``: on a remote run directory it is written locally and published
    after each stage and every ``publish_every_s`` (so a killed run leaves its log up to that point)."""

    def __init__(self, store: RunStore, publish_every_s: float = 30.0):
        self.store = store
        self.local = (fileio.local_path(store.path(LOG_FILE)) if fileio.is_local(store.run_dir)
                      else tempfile.NamedTemporaryFile(prefix="wmsynth-run-", suffix=".log", delete=False).name)
        if not fileio.is_local(store.run_dir) and fileio.exists(store.path(LOG_FILE)):
            with open(self.local, "wb") as f:  # a resumed run appends to the earlier log
                f.write(fileio.read_bytes(store.path(LOG_FILE)))
        self.handler = logging.FileHandler(self.local, mode="a")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        logging.getLogger().addHandler(self.handler)
        # The run's own INFO lines reach run.log even when the caller's logging is quieter (a library user, pytest).
        self.logger = logging.getLogger("pipeline")
        self.level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.stop = threading.Event()
        self.thread = None
        if not fileio.is_local(store.run_dir):
            self.thread = threading.Thread(target=self._publish_periodically, args=(publish_every_s,), daemon=True)
            self.thread.start()

    def _publish_periodically(self, every_s: float) -> None:
        while not self.stop.wait(every_s):
            try:
                self.publish()
            except Exception:  # a failed upload of the log must not stop the run; the next attempt retries
                pass

    def publish(self) -> None:
        self.handler.flush()
        if not fileio.is_local(self.store.run_dir):
            with open(self.local, "rb") as f:
                fileio.atomic_write_bytes(self.store.path(LOG_FILE), f.read())

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        self.publish()
        logging.getLogger().removeHandler(self.handler)
        self.logger.setLevel(self.level)
        self.handler.close()
        if not fileio.is_local(self.store.run_dir):
            os.unlink(self.local)


def run(config: RunConfig, only: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Run the stages in order and write manifest.json. Returns the manifest."""
    store = RunStore(config.output_dir)
    names = [s.name for s in config.stages]
    if only is not None and only not in names:
        raise RunError(f"--only {only!r}: no such stage in {config.source_file} (stages: {', '.join(names)})")
    problems = check_run(config)  # the checks of `wmsynth validate` (storage writable, data), before any work
    if problems:
        raise ConfigError(problems, config.source_file or "stages.yaml")
    fileio.atomic_write_text(store.path("config.resolved.yaml"), yaml.safe_dump(config.to_dict(), sort_keys=False))
    log = RunLog(store)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    started_ray = init_ray(config.ray_address)
    timings: list[dict[str, Any]] = []
    rows: list[dict[str, str]] = []
    artifacts: dict[str, Any] = {}
    plan = _plan(config, store, resume and only is None)
    try:
        for index, stage in enumerate(config.stages):
            spec = REGISTRY[stage.name]
            stage_dir, p_hash, input_key, key, success = plan[index]
            if only is not None and stage.name != only:
                if names.index(only) < index:
                    break  # stages after --only do not run
                if not success:
                    raise RunError(f"--only {only}: earlier stage {stage.name!r} has not completed in "
                                   f"{store.run_dir}; run the whole pipeline (or --resume) first")
                rows = store.read_rows(stage_dir)
                artifacts.update(store.load_artifacts(success.get("artifacts", {})))
                continue
            if success is not None and success.get("reuse"):
                rows = store.read_rows(stage_dir)
                artifacts.update(store.load_artifacts(success.get("artifacts", {})))
                logger.info("stage %s: complete in an earlier run with the same params and inputs, %s", stage.name,
                            _counts(rows))
                timings.append(_stage_entry(store, stage.name, 0.0, True, rows, stage_dir))
                continue
            started = store.started(stage_dir)
            keep_episodes = (resume and only is None and started is not None and success is None
                             and started.get("params_hash") == p_hash and started.get("input_key") == input_key)
            store.start_stage(stage_dir, stage.name, p_hash, input_key, fresh=not keep_episodes)
            ctx = StageContext(run_dir=store.run_dir, stage_dir=stage_dir, stage=stage.name, seed=config.seed,
                               resume=keep_episodes, index=index, artifacts=dict(artifacts))
            t0 = time.perf_counter()
            logger.info("stage %s (%s) ...", stage.name, spec.kind)
            try:
                rows = _execute(spec, rows, stage.params, ctx, store)
            except StageError as exc:
                raise RunError(str(exc)) from None
            rows = sorted(rows, key=lambda r: r["episode_id"])
            store.write_rows(stage_dir, rows)
            seconds = time.perf_counter() - t0
            artifacts.update(ctx.artifacts)
            store.finish_stage(stage_dir, {"stage": stage.name, "key": key, "params_hash": p_hash,
                                           "input_key": input_key, "seconds": round(seconds, 3),
                                           "counts": _counts(rows),
                                           "artifacts": store.store_artifacts(
                                               {k: v for k, v in ctx.artifacts.items() if k in spec.provides})})
            logger.info("stage %s done in %.1f s: %s", stage.name, seconds, _counts(rows))
            timings.append(_stage_entry(store, stage.name, seconds, False, rows, stage_dir))
            log.publish()
        removed = None
        if not config.keep_intermediates and only is None and not any(r["status"] == OK for r in rows):
            removed = remove_intermediates(store, plan)
        manifest = build_manifest(config, store, rows, timings, partial=only is not None, started_at=started_at)
        if removed is not None:
            manifest["intermediates_removed_bytes"] = removed
        fileio.atomic_write_text(store.path(MANIFEST), _json(manifest))
        write_run_report(store.run_dir)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
        log.close()
    return manifest


def write_run_report(run_dir: str) -> str | None:
    """``<run_dir>/report.html`` (``pipeline.report``); a failure is logged as a warning, never fails the run."""
    try:
        from pipeline.report import write_report

        path = write_report(run_dir)
    except Exception as exc:  # the run's results stand without their report
        logger.warning("the run report could not be written (%s: %s); the run's results are complete; retry with "
                       "`wmsynth report %s`", type(exc).__name__, exc, run_dir)
        return None
    logger.info("report: %s", path)
    return path


def _plan(config: RunConfig, store: RunStore, resume: bool) -> list[tuple[str, str, str, str, dict | None]]:
    """Per stage: (dir, params hash, input key, key, _SUCCESS marker with ``reuse`` set when --resume may skip it).

    A finished stage is reused when its key matches and every stage before it is reused. When a stage must run
    again and an earlier stage's episode files were deleted (``keep_intermediates: false``), the runner goes back
    to that earlier stage: its outputs are the re-run's inputs.
    """
    plan, key = [], ""
    for index, stage in enumerate(config.stages):
        stage_dir = store.stage_dir(index, stage.name)
        p_hash = params_hash(stage.params)
        input_key, key = key, stage_key(stage.name, p_hash, key, config.seed)
        plan.append((stage_dir, p_hash, input_key, key, store.success(stage_dir)))
    first_rerun = len(plan)
    for index, (_, p_hash, _, key, success) in enumerate(plan):
        if not (resume and success and success.get("key") == key):
            first_rerun = index
            if resume and success:
                logger.info("stage %s: %s changed since it last ran: re-running it and every stage after it",
                            config.stages[index].name,
                            "its params" if success.get("params_hash") != p_hash else "its input")
            break
    if first_rerun < len(plan):
        removed = [i for i in range(first_rerun) if (plan[i][4] or {}).get("intermediates_removed")]
        if removed:
            logger.info("stage %s: its episode files were removed (keep_intermediates: false): re-running from it",
                        config.stages[removed[0]].name)
            first_rerun = removed[0]
    for index in range(first_rerun):
        plan[index][4]["reuse"] = True
    return plan


def remove_intermediates(store: RunStore, plan) -> int:
    """Delete every stage's episode files (the shards hold the episodes now); returns the bytes freed."""
    freed = 0
    for stage_dir, *_, success in plan:
        episodes_dir = fileio.join(stage_dir, "episodes")
        for path in fileio.listdir(episodes_dir):
            fs, inner = fileio.filesystem(path)
            freed += int(fs.size(inner) or 0)
        fileio.remove(episodes_dir, recursive=True)
        marker = store.success(stage_dir)
        if marker is not None:
            store.finish_stage(stage_dir, {**marker, "intermediates_removed": True})
    logger.info("removed intermediate episode files: %.1f MB", freed / 1e6)
    return freed


def _execute(spec, rows, params, ctx, store) -> list[dict[str, str]]:
    if spec.kind == "source":
        # Sources fan out 1:N (files, dataset episodes or simulator seeds -> episodes); their rows join any rows from
        # sources before them.
        new = run_source(spec, params, ctx, store)
        _check_unique_ids(rows + new, spec.name)
        return rows + new
    if not any(r["status"] == OK for r in rows):
        return rows
    if spec.kind == "map":
        out = run_map(spec, rows, params, ctx, store)
        _check_unique_ids(out, spec.name)
        if spec.finish is not None:
            spec.finish(out, params, ctx)
        return out
    return run_aggregate(spec, rows, params, ctx)


def _counts(rows: list[dict[str, str]]) -> dict[str, int]:
    return dict(Counter(r["status"] for r in rows))


def _json(payload: Any) -> str:
    return json.dumps(payload, indent=2, default=str)


def _stage_entry(store: RunStore, name: str, seconds: float, resumed: bool, rows: list[dict[str, str]],
                 stage_dir: str) -> dict[str, Any]:
    """A stage's line in the manifest: timing, row counts and its report.json (headline figures), if it wrote one."""
    entry: dict[str, Any] = {"stage": name, "seconds": round(seconds, 3), "resumed": resumed, "counts": _counts(rows),
                             "dir": store.relative(stage_dir)}
    report = store.report(stage_dir)
    if report is not None:
        entry["report"] = report
    return entry


def _check_unique_ids(rows: list[dict[str, str]], stage: str) -> None:
    dupes = sorted(eid for eid, n in Counter(r["episode_id"] for r in rows).items() if n > 1)
    if dupes:
        raise RunError(f"stage {stage}: episode ids {dupes[:5]} ({len(dupes)} in all) are already in the run; "
                       f"episode ids must be unique across sources and stages (rename the input files or datasets)")


def build_manifest(config: RunConfig, store: RunStore, rows: list[dict[str, str]], timings: list[dict[str, Any]],
                   partial: bool = False, started_at: str = "") -> dict[str, Any]:
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
        "run_dir": store.run_dir,
        "config": config.source_file,
        "seed": config.seed,
        "partial": partial,
        "keep_intermediates": config.keep_intermediates,
        "command": redact(" ".join(["wmsynth", *sys.argv[1:]])) if sys.argv and "wmsynth" in sys.argv[0] else "",
        "started_at": started_at,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "ray_nodes": _ray_nodes(),
        "counts": Counter(e["fate"] for e in episodes) | {"total": len(episodes)},
        "shards_dir": "shards",
        "shards": [{"name": name, "episodes": n} for name, n in sorted(shards.items())],
        "stages": timings,
        "episodes": episodes,
    }


def redact(text: str) -> str:
    """Drop credentials embedded in URLs (``s3://KEY:SECRET@bucket``) and ``token=...`` style arguments."""
    text = re.sub(r"(://)[^/@\s]+:[^/@\s]+@", r"\1***@", text)
    return re.sub(r"((?:token|secret|password|key)[^=\s]*=)\S+", r"\1***", text, flags=re.I)


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("wmsynth", "torch", "ray", "lerobot", "transformers", "diffusers", "fsspec", "s3fs"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["git_commit"] = git_commit()
    return out


def git_commit() -> str | None:
    """The source tree's commit (``WMSYNTH_GIT_COMMIT`` wins, e.g. in a container), or None outside a checkout."""
    import subprocess
    from pathlib import Path

    if os.environ.get("WMSYNTH_GIT_COMMIT"):
        return os.environ["WMSYNTH_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _ray_nodes() -> int | None:
    try:
        import ray

        return sum(1 for n in ray.nodes() if n.get("Alive")) if ray.is_initialized() else None
    except Exception:  # the manifest does not depend on it
        return None
