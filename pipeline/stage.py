"""Stage registry, the row schema that flows through Ray Data, and the per-episode mapping helpers.

A stage is a typed params model plus a ``build(ds, params, ctx) -> ds`` function, registered by name:

    @register_stage("depth", kind="transform", params=DepthParams)
    def depth(ds, params, ctx): ...

Rows are small: ``{"episode_id", "path", "status", "reason", "stage", "shard"}``. The episode's arrays stay on disk
(``pipeline.episode``) under the run directory, which on a cluster must be a filesystem every node sees.
``status`` is one of ``ok`` (go on), ``filtered`` (dropped on purpose, with the reason), ``quarantined`` (bad input, with
the reason) or ``written`` (in a shard). Rows that are not ``ok`` pass through later stages untouched, so the manifest can
account for every input episode.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.episode import Episode, atomic_write_text

logger = logging.getLogger(__name__)

StageKind = Literal["source", "transform", "sink"]
OK, FILTERED, QUARANTINED, WRITTEN = "ok", "filtered", "quarantined", "written"


class StageParams(BaseModel):
    """Base of every stage's params: unknown keys are errors, so a typo in stages.yaml never passes silently."""

    model_config = ConfigDict(extra="forbid")


class Resources(StageParams):
    """Ray resources for one task or actor of a stage. Fractional CPUs keep a 2-core machine from stalling."""

    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    concurrency: int | None = Field(None, ge=1, description="actors in the pool (model stages) or max parallel tasks")


@dataclass(frozen=True)
class StageContext:
    run_dir: Path
    stage_dir: Path
    seed: int
    resume: bool
    index: int

    @property
    def episodes_dir(self) -> Path:
        return self.stage_dir / "episodes"

    def episode_path(self, episode_id: str) -> Path:
        return self.episodes_dir / f"{episode_id}.npz"

    @property
    def report_path(self) -> Path:
        """A stage's headline figures (JSON object); the runner copies them into ``manifest.json``."""
        return self.stage_dir / "report.json"

    def write_report(self, report: dict) -> None:
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.report_path, json.dumps(report, indent=1))


@dataclass(frozen=True)
class StageSpec:
    name: str
    kind: StageKind
    params_model: type[StageParams]
    build: Callable[..., Any]

    @property
    def doc(self) -> str:
        return (self.build.__doc__ or "").strip().splitlines()[0] if self.build.__doc__ else ""


REGISTRY: dict[str, StageSpec] = {}


def register_stage(name: str, kind: StageKind, params: type[StageParams]):
    def decorator(build):
        if name in REGISTRY:
            raise RuntimeError(f"stage {name!r} registered twice")
        REGISTRY[name] = StageSpec(name=name, kind=kind, params_model=params, build=build)
        return build

    return decorator


# -- rows ------------------------------------------------------------------------------------------------------------


def row(episode_id: str, path: str = "", status: str = OK, reason: str = "", stage: str = "", shard: str = "",
        source: str = "") -> dict[str, str]:
    return {"episode_id": episode_id, "path": path, "status": status, "reason": reason, "stage": stage,
            "shard": shard, "source": source}


def error_reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Filtered(Exception):
    """Raised by an episode function to drop an episode on purpose; the reason goes to the manifest."""


def run_episode_fn(fn: Callable[[Episode], Episode], in_row: dict, stage: str, ctx: StageContext) -> dict:
    """Apply ``fn`` to one row's episode: skip rows that are not ok, reuse finished output on resume, record failures.

    The output is written under the stage directory only when ``fn`` returns a different object; a stage that leaves an
    episode as it is forwards the input path (no copy).
    """
    if in_row["status"] != OK:
        return in_row
    out_path = ctx.episode_path(in_row["episode_id"])
    if ctx.resume and out_path.exists():
        return {**in_row, "path": str(out_path), "stage": stage}
    try:
        episode = Episode.load(in_row["path"])
        result = fn(episode)
        if result is episode:
            return {**in_row, "stage": stage}
        result.validate()
        result.save(out_path)
        return {**in_row, "path": str(out_path), "stage": stage}
    except Filtered as exc:
        return {**in_row, "status": FILTERED, "reason": str(exc), "stage": stage}
    except Exception as exc:  # a bad row is recorded, not fatal (see manifest); the traceback goes to the log
        logger.warning("stage %s quarantined %s: %s\n%s", stage, in_row["episode_id"], exc, traceback.format_exc())
        return {**in_row, "status": QUARANTINED, "reason": error_reason(exc), "stage": stage}


class EpisodeActor:
    """Actor-pool callable for model stages: builds its model once (``setup``), then maps batches of rows.

    Subclasses implement ``setup(params)`` and ``process(episode) -> Episode``.
    """

    stage_name = ""

    def __init__(self, params: StageParams, ctx: StageContext):
        self.params = params
        self.ctx = ctx
        self.setup(params)

    def setup(self, params: StageParams) -> None:
        pass

    def process(self, episode: Episode) -> Episode:
        raise NotImplementedError

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = [run_episode_fn(self.process, r, self.stage_name, self.ctx) for r in rows]
        return {key: [r[key] for r in out] for key in batch}
