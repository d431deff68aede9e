"""The stage contract: three kinds of stage, a registry, the rows that flow between stages and the run context.

A stage is one file: a params model, one function (or callable class) and a registration. The runner
(``pipeline.run``) owns everything else: execution on Ray, resume, saving episodes, validating what a stage produced,
quarantine and the manifest.

    source     (1:N)  ``plan(params, ctx) -> [item, ...]`` lists the work (each item a small dict with an
                      ``episode_id``); ``fn(item, params, ctx) -> Episode`` makes one episode, in a Ray task.
    map        (1:1)  ``fn(episode, params, ctx) -> Episode`` in Ray Data tasks, or a class
                      ``cls(params, ctx)`` whose ``__call__(episode) -> Episode`` runs in an actor pool (a model loads
                      once per actor). Returning the input episode itself means "unchanged": nothing is written.
               (1:N)  returning a list fans out: the input (changed or not) and new episodes with ids of their own
                      (e.g. rollouts of it); each new episode gets its own row, ``source`` = this stage.
                      An optional ``finish(rows, params, ctx)`` runs on the driver afterwards (e.g. assemble per-episode
                      side outputs into one dataset).
    aggregate  (N:1)  ``fn(rows, params, ctx) -> rows | None`` on the driver with every ok row (training, evaluation,
                      writing shards); it may use Ray itself. ``None`` means the rows pass through.

Any stage function raises ``Filtered(reason)`` to drop an episode on purpose; any other exception for one episode
quarantines it with the reason. Stages hand artifacts to later stages through the context (``ctx.publish(name,
value)`` on the driver, ``ctx.artifact(name)`` later), never by looking into another stage's directory. A stage
declares what it ``requires`` and ``provides`` so ``wmsynth validate`` can tell a missing predecessor before Ray starts,
and an optional ``check(params, check_ctx) -> [(field, message)]`` runs cheap data checks (inputs exist, keys are in the
dataset, cameras exist) at validation time.

Rows are small: ``{"episode_id", "path", "status", "reason", "stage", "shard", "source"}``. ``status`` is ``ok`` (go
on), ``filtered`` (dropped on purpose), ``quarantined`` (bad input) or ``written`` (in a shard); rows that are not ok
pass through later stages untouched, so the manifest accounts for every input episode. ``path`` is a local path or a
URL (``episodes.io``); episodes stay in the run directory, never in Ray's object store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from episodes import SUFFIX
from episodes import io as fileio

StageKind = Literal["source", "map", "aggregate"]
OK, FILTERED, QUARANTINED, WRITTEN = "ok", "filtered", "quarantined", "written"


class StageParams(BaseModel):
    """Base of every stage's params: unknown keys are errors, so a typo in stages.yaml never passes silently."""

    model_config = ConfigDict(extra="forbid")


class Resources(StageParams):
    """Ray resources for one task or actor of a stage. Fractional CPUs keep a 2-core machine from stalling."""

    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    concurrency: int | None = Field(None, ge=1, description="actors in the pool (model stages) or max parallel tasks")


class Filtered(Exception):
    """Raised by a stage function to drop an episode on purpose; the reason goes to the manifest."""


class StageError(RuntimeError):
    """A stage broke its contract or failed as a whole (not one episode): the run stops with this message."""


@dataclass
class StageContext:
    """What a stage knows about its run. Picklable: map and source functions receive it in their Ray tasks."""

    run_dir: str
    stage_dir: str
    stage: str
    seed: int
    resume: bool
    index: int
    artifacts: dict[str, Any] = field(default_factory=dict)  # published by earlier stages (and this one)

    def path(self, *parts: str) -> str:
        """A path (or URL) under this stage's directory."""
        return fileio.join(self.stage_dir, *parts)

    def run_path(self, *parts: str) -> str:
        return fileio.join(self.run_dir, *parts)

    def episode_path(self, episode_id: str) -> str:
        return self.path("episodes", episode_id + SUFFIX)

    def artifact(self, name: str) -> Any:
        if name not in self.artifacts:
            raise KeyError(f"stage {self.stage}: no earlier stage published {name!r} (have: {sorted(self.artifacts)})")
        return self.artifacts[name]

    def publish(self, name: str, value: Any) -> None:
        """Hand an artifact (a path, a small JSON value) to later stages. Driver side only (aggregate / finish)."""
        self.artifacts[name] = value

    def write_report(self, report: dict[str, Any]) -> None:
        """A stage's headline figures; the runner copies them into ``manifest.json``."""
        fileio.atomic_write_text(self.path("report.json"), json.dumps(report, indent=1, default=str))


@dataclass
class CheckContext:
    """What ``check`` sees at validation time: the run's location and what earlier stages will produce."""

    run_dir: str
    index: int
    earlier: list[tuple[str, StageParams]]  # (stage name, params) of the stages before this one
    outputs: dict[str, Any] = field(default_factory=dict)  # merged ``describe`` of earlier sources, e.g. cameras


Problem = tuple[str, str]  # (field path inside params, or "" for the stage; message)


@dataclass(frozen=True)
class StageSpec:
    name: str
    kind: StageKind
    params_model: type[StageParams]
    fn: Callable[..., Any]
    plan: Callable[..., list[dict[str, Any]]] | None = None  # sources
    finish: Callable[..., Any] | None = None  # maps: driver-side step after every episode is done
    check: Callable[..., list[Problem]] | None = None
    describe: Callable[..., dict[str, Any]] | None = None  # sources: {"cameras": [...], "depth": bool, ...}
    requires: Callable[..., tuple[str, ...]] | tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    resources: Callable[[Any], Resources] = lambda params: getattr(params, "resources", Resources())

    @property
    def doc(self) -> str:
        doc = (self.fn.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @property
    def is_actor(self) -> bool:
        return isinstance(self.fn, type)

    def required(self, params: StageParams) -> tuple[str, ...]:
        return tuple(self.requires(params)) if callable(self.requires) else tuple(self.requires)


REGISTRY: dict[str, StageSpec] = {}


def register_stage(name: str, kind: StageKind, params: type[StageParams], **options: Any):
    """Decorator: ``@register_stage("depth", kind="map", params=DepthParams, check=..., provides=(...))``."""

    def decorator(fn):
        if name in REGISTRY:
            raise RuntimeError(f"stage {name!r} registered twice")
        if kind == "source" and options.get("plan") is None:
            raise TypeError(f"source stage {name!r} needs plan=")
        REGISTRY[name] = StageSpec(name=name, kind=kind, params_model=params, fn=fn, **options)
        return fn

    return decorator


def row(episode_id: str, path: str = "", status: str = OK, reason: str = "", stage: str = "", shard: str = "",
        source: str = "") -> dict[str, str]:
    return {"episode_id": episode_id, "path": path, "status": status, "reason": reason, "stage": stage,
            "shard": shard, "source": source}


def error_reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
