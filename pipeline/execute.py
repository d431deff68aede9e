"""The one execution path of each stage kind (see ``pipeline.stage``), owned by the runner.

    source     plan on the driver; one Ray task per item (at most ``resources.concurrency`` in flight), a progress
               bar with ETA on the driver. Plain tasks, not a Ray Data map: an episode is seconds of work and Ray
               Data's streaming executor left ~0.15 s between such tasks (benchmarks/foundation.py).
    map        Ray Data over the rows: ``flat_map`` in tasks for a function, ``map_batches`` in an
               ``ActorPoolStrategy`` pool for a class (the model loads once per actor; GPUs via
               ``resources.num_gpus``). Ray Data draws its own progress bars. A map may fan out (1:N): it returns
               a list of episodes that holds its input (changed or not) and new ones (e.g. rollouts of it).
    aggregate  the stage function on the driver with every ok row.

Per episode the runner loads the input, calls the stage, validates and saves a changed episode, turns ``Filtered``
and exceptions into filtered / quarantined rows (one log line each; the traceback only at debug level), and writes a
completion record, so a killed stage redoes only the episodes without one.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections import Counter
from typing import Any

from episodes import Episode, EpisodeError
from pipeline.stage import (
    FILTERED, OK, QUARANTINED, Filtered, StageContext, StageError, StageParams, StageSpec, error_reason, row,
)
from pipeline.store import DONE_DIR, RunStore

logger = logging.getLogger(__name__)


def _finish_episode(store: RunStore, ctx: StageContext, out_row: dict[str, str]) -> dict[str, str]:
    store.write_json(ctx.path(DONE_DIR, out_row["episode_id"] + ".json"), store.stored_row(out_row))
    return out_row


def _finish_fan_out(store: RunStore, ctx: StageContext, in_id: str, out_rows: list[dict[str, str]]) -> list[dict]:
    """One completion record for an input and every row it produced: a killed stage redoes the input whole (its
    children are rewritten under the same ids, so nothing is duplicated)."""
    if len(out_rows) == 1 and out_rows[0]["episode_id"] == in_id:
        _finish_episode(store, ctx, out_rows[0])
    else:
        store.write_json(ctx.path(DONE_DIR, in_id + ".json"),
                         {"episode_id": in_id, "rows": [store.stored_row(r) for r in out_rows]})
    return out_rows


def _failure(in_row: dict[str, str], ctx: StageContext, exc: BaseException) -> dict[str, str]:
    if isinstance(exc, Filtered):
        return {**in_row, "status": FILTERED, "reason": str(exc), "stage": ctx.stage}
    if isinstance(exc, EpisodeError):  # expected bad input: one line
        logger.warning("%s: quarantined %s: %s", ctx.stage, in_row["episode_id"], exc)
    else:
        logger.warning("%s: quarantined %s: %s (traceback at -v)", ctx.stage, in_row["episode_id"],
                       error_reason(exc))
        logger.debug("%s", traceback.format_exc())
    return {**in_row, "status": QUARANTINED, "reason": error_reason(exc), "stage": ctx.stage}


def _save(episode: Episode, in_row: dict[str, str], ctx: StageContext) -> dict[str, str]:
    if episode.episode_id != in_row["episode_id"]:
        raise StageError(f"stage {ctx.stage} returned episode {episode.episode_id!r} for {in_row['episode_id']!r}")
    episode.validate()
    path = ctx.episode_path(episode.episode_id)
    episode.save(path)
    return {**in_row, "path": path, "stage": ctx.stage}


def _fan_out(result: Episode | list[Episode], episode: Episode, in_row: dict[str, str],
             ctx: StageContext) -> list[dict[str, str]]:
    """Rows for what a map returned: its input (unchanged: the same row; changed: saved) and any new episodes, which
    get rows of their own (``source`` = this stage). A list must hold the input: an episode is never lost."""
    results = result if isinstance(result, list) else [result]
    ids = [ep.episode_id for ep in results]
    if isinstance(result, list) and (in_row["episode_id"] not in ids or len(set(ids)) != len(ids)):
        raise StageError(f"stage {ctx.stage} must return its input {in_row['episode_id']!r} among distinct episodes, "
                         f"got {ids[:5]}")
    out = []
    for ep in results:
        if ep is episode:
            out.append({**in_row, "stage": ctx.stage})
        elif ep.episode_id == in_row["episode_id"]:
            out.append(_save(ep, in_row, ctx))
        else:
            out.append(_save(ep, row(ep.episode_id, source=ctx.stage), ctx))
    return out


# -- source ----------------------------------------------------------------------------------------------------------


def produce_one(item: dict[str, Any], fn, params: StageParams, ctx: StageContext, store: RunStore) -> dict[str, str]:
    base = row(item["episode_id"], stage=ctx.stage, source=ctx.stage)
    try:
        out = _save(fn(item, params, ctx), base, ctx)
    except StageError:
        raise
    except Exception as exc:  # a bad episode is recorded, not fatal
        out = _failure(base, ctx, exc)
    return _finish_episode(store, ctx, out)


def run_source(spec: StageSpec, params: StageParams, ctx: StageContext, store: RunStore) -> list[dict[str, str]]:
    import ray
    from tqdm import tqdm

    try:
        items = spec.plan(params, ctx)
    except Exception as exc:  # checks should have caught it; still a message, not a traceback
        raise StageError(f"stage {ctx.stage}: cannot list its work: {error_reason(exc)}") from exc
    ids = [item["episode_id"] for item in items]
    dupes = [eid for eid, n in Counter(ids).items() if n > 1]
    if dupes:
        raise StageError(f"stage {ctx.stage}: plan lists episode ids more than once: {dupes[:5]}")
    done = store.done_rows(ctx.stage_dir) if ctx.resume else {}
    rows = [done[i["episode_id"]] for i in items if i["episode_id"] in done]
    todo = [i for i in items if i["episode_id"] not in done]
    if done:
        logger.info("%s: %d of %d episodes finished in an earlier run", ctx.stage, len(rows), len(items))
    resources = spec.resources(params)
    task = ray.remote(produce_one).options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus or 0)
    limit = resources.concurrency or max(1, len(todo))
    params_ref, ctx_ref = ray.put(params), ray.put(ctx)
    pending: list = []
    with tqdm(total=len(todo), desc=ctx.stage, unit="ep", mininterval=2.0, dynamic_ncols=True) as bar:
        for item in todo:
            if len(pending) >= limit:
                ready, pending = ray.wait(pending, num_returns=1)
                rows.extend(ray.get(ready))
                bar.update(len(ready))
            pending.append(task.remote(item, spec.fn, params_ref, ctx_ref, store))
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            rows.extend(ray.get(ready))
            bar.update(len(ready))
    return rows


# -- map -------------------------------------------------------------------------------------------------------------


def map_one(in_row: dict[str, str], call, ctx: StageContext, store: RunStore) -> list[dict[str, str]]:
    """Rows for one input: itself (passed, changed, filtered or quarantined) and any episodes it fanned out to."""
    try:
        episode = Episode.load(in_row["path"])
        out = _fan_out(call(episode), episode, in_row, ctx)
    except StageError:
        raise
    except Exception as exc:
        out = [_failure(in_row, ctx, exc)]
    return _finish_fan_out(store, ctx, in_row["episode_id"], out)


class _ActorAdapter:
    """Ray Data actor: builds the stage's class once, then maps batches of rows."""

    def __init__(self, cls, params: StageParams, ctx: StageContext, store: RunStore):
        self.call = cls(params, ctx)
        self.ctx, self.store = ctx, store

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = [r for in_row in rows for r in map_one(in_row, self.call, self.ctx, self.store)]
        return {key: [r[key] for r in out] for key in batch}


def _map_row(in_row: dict[str, str], fn, params: StageParams, ctx: StageContext,
             store: RunStore) -> list[dict[str, str]]:
    return map_one(in_row, functools.partial(fn, params=params, ctx=ctx), ctx, store)


def run_map(spec: StageSpec, rows: list[dict[str, str]], params: StageParams, ctx: StageContext,
            store: RunStore) -> list[dict[str, str]]:
    import ray

    done = store.done_row_lists(ctx.stage_dir) if ctx.resume else {}
    todo = [r for r in rows if r["status"] == OK and r["episode_id"] not in done]
    kept = [out for r in rows if r["status"] != OK or r["episode_id"] in done for out in done.get(r["episode_id"], [r])]
    if done:
        logger.info("%s: %d episodes finished in an earlier run", ctx.stage, len(done))
    if not todo:
        return kept
    resources = spec.resources(params)
    # One block per episode (capped): per-episode work spreads over every CPU of the cluster.
    ds = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo), 256)))
    if spec.is_actor:
        out = ds.map_batches(_ActorAdapter, fn_constructor_args=(spec.fn, params, ctx, store), batch_size=1,
                             compute=ray.data.ActorPoolStrategy(size=resources.concurrency or 1),
                             num_cpus=resources.num_cpus, num_gpus=resources.num_gpus or None)
    else:
        extra = {}
        if resources.concurrency is not None:
            extra["compute"] = ray.data.TaskPoolStrategy(size=resources.concurrency)
        out = ds.flat_map(functools.partial(_map_row, fn=spec.fn, params=params, ctx=ctx, store=store),
                     num_cpus=resources.num_cpus, num_gpus=resources.num_gpus or None, **extra)
    return kept + [dict(r) for r in out.take_all()]


# -- aggregate -------------------------------------------------------------------------------------------------------


def run_aggregate(spec: StageSpec, rows: list[dict[str, str]], params: StageParams,
                  ctx: StageContext) -> list[dict[str, str]]:
    ok = [r for r in rows if r["status"] == OK]
    if not ok:
        return rows
    out = spec.fn(ok, params, ctx)
    if out is None:
        return rows
    out = [dict(r) for r in out]
    got = Counter(r["episode_id"] for r in out)
    want = {r["episode_id"] for r in ok}
    missing, extra = sorted(want - set(got)), sorted(set(got) - want)
    twice = sorted(e for e, n in got.items() if n > 1)
    if missing or extra or twice:
        raise StageError(f"stage {ctx.stage} must return one row per ok input row: missing {missing[:3]}, "
                         f"unknown {extra[:3]}, repeated {twice[:3]}")
    return [r for r in rows if r["status"] != OK] + out

