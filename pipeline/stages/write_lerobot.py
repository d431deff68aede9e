"""Aggregate stage ``write_lerobot``: ok episodes -> LeRobot v3 datasets, one per shard, written in parallel.

    - name: write_lerobot
      params:
        repo_id: wmsynth/tabletop
        episodes_per_shard: 8
        resources: {num_cpus: 1}

Fan-in N:1 per shard. On the driver the stage reads each episode file's header and meta (shapes, fps, names; no
frames: ``pipeline.lerobot_schema``) to learn its *schema*. LeRobot stores one feature schema per dataset, so episodes
are grouped by schema, sorted by ``episode_id`` inside a group and cut into shards of ``episodes_per_shard``; shards
are numbered in the order of their first episode id. Mixed inputs (say 64x64 and 128x128 cameras, or action-less
videos next to teleop data) end up in different shards instead of being rejected.

Each shard is one Ray task (``ray.remote``, ``resources.num_cpus`` each, at most ``resources.concurrency`` at once):
shards are few, coarse and all-or-nothing, so plain tasks cost less than a Ray Data operator (about 0.8 s less per
call on 2 cores) and a failed task maps cleanly onto its own episodes. Inside a task, lerobot's streaming encoder runs
one encoder thread per video stream (PyAV releases the GIL) next to the thread that loads episodes and writes parquet.
Parallelism therefore comes from the number of shards: 8 episodes as 2 shards on 2 cores write ~1.45x faster than
lerobot's own single-process loop (benchmarks/_writer_bench.py). The task writes its shard with lerobot's own writer
in a local directory, reopens it with lerobot's reader, adds provenance (``pipeline.lerobot_shard``) and publishes it
to ``<run_dir>/shards/shard-XXXXX`` (local path or URL) with a ``_COMPLETE`` marker written last
(``pipeline.shards``). The shards directory is published to later stages as the artifact ``lerobot_shards``.

Resume: episodes settled in a complete shard (one with ``_COMPLETE``) keep their fate; the others are planned into
the lowest free shard numbers; shard directories without ``_COMPLETE`` (a writer killed mid-upload) and staging
leftovers are removed first. Without resume (a fresh run, changed params, ``--only write_lerobot``), the shards of an
earlier run in the same run directory are replaced.

Fates: every ok row ends ``written`` (with its shard) or ``quarantined`` with the reason: a bad episode (unreadable,
fails ``Episode.validate``, a schema LeRobot cannot store, fewer than 2 frames) alone, or all of a shard's episodes when
the writer, its check or the publication failed (the reason names the shard).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from tqdm import tqdm

from episodes import io as fileio
from pipeline import shards
from pipeline.dataset_card import license_problem
from pipeline.lerobot_schema import DEFAULT_ROBOT_TYPE, ShardSchema
from pipeline.lerobot_shard import (
    MAX_CRF, X26X_PRESETS, ShardInput, WriterSettings, fate, read_provenance, write_and_publish,
)
from pipeline.stage import (
    QUARANTINED, WRITTEN, CheckContext, Problem, Resources, StageContext, StageError, StageParams, error_reason,
    register_stage,
)
from pipeline.store import RunStore, describe_storage_error

logger = logging.getLogger(__name__)

STAGE = "write_lerobot"
ARTIFACT = "lerobot_shards"
# Hugging Face hub repo ids, which LeRobot uses: namespace/name, at most 96 characters, no '--' or '..'.
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class WriteLerobotParams(StageParams):
    repo_id: str = Field("wmsynth/tabletop", min_length=1, description="repo_id recorded in every shard")
    license: str = Field("unknown", description="Hub licence id of the data (apache-2.0, cc-by-4.0, ...): in every "
                                                "shard's provenance and README.md card, and in `wmsynth publish` cards")
    episodes_per_shard: int = Field(8, ge=1)
    robot_type: str | None = Field(None, description="default: meta['robot_type'] of the episodes, else "
                                                      f"{DEFAULT_ROBOT_TYPE!r}")
    video_codec: Literal["libsvtav1", "h264", "hevc"] = "libsvtav1"
    video_crf: int = Field(30, ge=0, description="RGB quality: lower = better and bigger")
    video_preset: int | str | None = Field(None, description="encoder speed preset; default: 12 for libsvtav1, "
                                                             "'veryfast' for h264/hevc")
    video_gop: int = Field(2, ge=1, description="keyframe interval in frames (2 = cheap random access in training)")
    depth_preset: Literal[X26X_PRESETS] = Field("ultrafast", description="x265 preset of the lossless depth "
                                                                        "stream: speed and file size only")
    depth_min_m: float = Field(0.01, gt=0, description="depth quantiser range, metres")
    depth_max_m: float = Field(10.0, gt=0)
    encoder_threads: int | None = Field(1, ge=1, description="threads per video encoder; None = codec decides")
    merge: bool = Field(False, description="also merge the run's shards into one LeRobot dataset per schema under "
                                           "<run>/merged (pipeline.merge), to train on")
    resources: Resources = Resources(num_cpus=1)

    @field_validator("license")
    @classmethod
    def _hub_license(cls, value: str) -> str:
        if problem := license_problem(value):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _check(self) -> WriteLerobotParams:
        if self.depth_max_m <= self.depth_min_m:
            raise ValueError(f"depth_max_m ({self.depth_max_m}) must be greater than depth_min_m ({self.depth_min_m})")
        if self.video_crf > MAX_CRF[self.video_codec]:
            raise ValueError(f"video_crf {self.video_crf} is out of range for {self.video_codec} "
                             f"(0..{MAX_CRF[self.video_codec]})")
        preset = self.video_preset
        if preset is not None:
            if self.video_codec == "libsvtav1" and not (isinstance(preset, int) and 0 <= preset <= 13):
                raise ValueError(f"video_preset {preset!r}: libsvtav1 takes an integer 0 (slow) .. 13 (fast)")
            if self.video_codec != "libsvtav1" and preset not in X26X_PRESETS:
                raise ValueError(f"video_preset {preset!r}: {self.video_codec} takes one of {list(X26X_PRESETS)}")
        return self

    def writer_settings(self) -> WriterSettings:
        return WriterSettings(**self.model_dump(exclude={"episodes_per_shard", "resources", "merge"}))


# -- validation-time checks ------------------------------------------------------------------------------------------


def check(params: WriteLerobotParams, cctx: CheckContext) -> list[Problem]:
    """repo_id format, encoders present in this PyAV build, camera names LeRobot accepts, a usable shards location."""
    problems: list[Problem] = []
    repo_id = params.repo_id
    if not REPO_ID_RE.match(repo_id) or len(repo_id) > 96 or "--" in repo_id or ".." in repo_id:
        problems.append(("repo_id", f"{repo_id!r} is not a LeRobot repo id: use 'namespace/name' (letters, digits, "
                                    "'-', '_', '.'; at most 96 characters), e.g. wmsynth/tabletop"))
    codecs = [("video_codec", params.video_codec)]
    if cctx.outputs.get("depth", True) or any(name == "depth" for name, _ in cctx.earlier):
        codecs.append(("", "hevc"))  # the lossless depth stream
    for field_name, codec in codecs:
        if not _has_encoder(codec):
            what = "video_codec" if field_name else "the depth stream"
            problems.append((field_name, f"this FFmpeg/PyAV build has no {codec} encoder for {what}; "
                                         "choose another video_codec or install an FFmpeg with it"))
    for cam in cctx.outputs.get("cameras", []):
        if "/" in cam:
            problems.append(("", f"camera {cam!r} contains '/', which LeRobot feature names cannot hold"))
    if any(name == STAGE for name, _ in cctx.earlier):
        problems.append(("", f"{STAGE} appears twice: the first one writes every episode, so the second would get "
                             "none; keep one"))
    shards_dir = fileio.join(cctx.run_dir, shards.SHARDS_DIRNAME)
    if fileio.exists(shards_dir) and not fileio.is_dir(shards_dir):
        problems.append(("", f"{shards_dir} is a file, not a directory of shards; move it away or change "
                             "output_dir"))
    return problems


def _has_encoder(codec: str) -> bool:
    import av

    try:
        return av.codec.Codec(codec, "w").type == "video"
    except Exception:  # av raises UnknownCodecError (a ValueError) and, for some names, others
        return False


# -- the stage -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardPlan:
    name: str
    schema: ShardSchema
    members: tuple[int, ...]  # indices into the planned episodes, in episode_id order


@register_stage(STAGE, kind="aggregate", params=WriteLerobotParams, check=check, provides=(ARTIFACT,))
def write_lerobot(rows: list[dict], params: WriteLerobotParams, ctx: StageContext) -> list[dict]:
    """LeRobot v3 shards through lerobot's writer (grouped by schema, one Ray task per shard); rows become written."""
    shards_dir = ctx.run_path(shards.SHARDS_DIRNAME)
    kept = prepare_shards_dir(shards_dir, ctx.resume)  # complete shards of an earlier attempt (resume only)
    settled = _settled(kept)
    out = {r["episode_id"]: _with_fate(r, *settled[r["episode_id"]], ctx.stage)
           for r in rows if r["episode_id"] in settled}
    if unknown := sorted(set(settled) - {r["episode_id"] for r in rows}):
        logger.warning("%s: %d episodes in existing shards are not among this run's ok rows (e.g. %s); they stay "
                       "in their shards", ctx.stage, len(unknown), unknown[0])
    new = _write_new_shards([r for r in rows if r["episode_id"] not in settled], params, ctx, shards_dir,
                            kept.taken())
    out.update(new)
    shards.remove_leftovers(shards_dir)  # staging dirs of a worker that died and was retried

    ctx.publish(ARTIFACT, shards_dir)
    logger.info("%s: %d shards written, %d kept from an earlier attempt", ctx.stage,
                len({r["shard"] for r in new.values() if r["status"] == WRITTEN}), len(kept.complete))
    report = {"shards_dir": shards.SHARDS_DIRNAME, **written_by_provenance(shards_dir)}  # run-relative
    if params.merge and report["shards"]:
        report["merged"] = _merge(ctx.run_dir)  # roots relative to the run, like shards_dir
    ctx.write_report(report)
    return [out[r["episode_id"]] for r in rows]


def _merge(run_dir: str) -> list[dict[str, Any]]:
    """``merge: true``: the run's shards as one dataset per schema in ``<run>/merged``; their roots for the report."""
    from pipeline.merge import merge_run

    try:
        merged = merge_run(run_dir)
    except Exception as exc:  # the shards are written and stay valid: the merge can be redone with `wmsynth merge`
        raise StageError(f"{STAGE}: the shards are written, but merging them failed: {error_reason(exc)}; "
                         f"retry with `wmsynth merge {run_dir}`") from exc
    store = RunStore(run_dir)
    return [{"root": store.relative(d["root"]), **{key: d[key] for key in ("repo_id", "episodes", "frames",
                                                                            "episodes_by_provenance")}}
            for d in merged["datasets"]]


def written_by_provenance(shards_dir: str) -> dict[str, Any]:
    """Episodes in the complete shards per provenance (real, pseudo_labelled, synthetic), from their provenance files."""
    listing = shards.list_shards(shards_dir)
    counts = Counter(e["provenance"] for name in listing.complete
                     for e in read_provenance(fileio.join(shards_dir, name))["episodes"])
    return {"shards": len(listing.complete), "episodes_by_provenance": dict(sorted(counts.items()))}


def _write_new_shards(todo: list[dict], params: WriteLerobotParams, ctx: StageContext, shards_dir: str,
                      taken: set[int]) -> dict[str, dict]:
    """Probe headers (driver, threads), group by schema into shards numbered around ``taken``, one task per shard.
    Returns each episode's row with its fate."""
    out: dict[str, dict] = {}
    probed: list[tuple[dict, ShardSchema]] = []
    for r, schema in zip(todo, _probe_all([r["path"] for r in todo], params.robot_type), strict=True):
        if isinstance(schema, ShardSchema):
            probed.append((r, schema))
        else:
            out[r["episode_id"]] = _with_fate(r, "", QUARANTINED, error_reason(schema), ctx.stage)
    plans = plan_shards([(r["episode_id"], schema) for r, schema in probed], params.episodes_per_shard, taken)
    logger.info("%s: %d episodes -> %d new shards", ctx.stage, len(probed), len(plans))
    store = RunStore(ctx.run_dir)  # provenance records input paths relative to the run directory
    tasks = [(plan, [ShardInput(r["episode_id"], r["path"], store.relative(r["path"]))
                     for r, _ in (probed[j] for j in plan.members)]) for plan in plans]
    by_id = {r["episode_id"]: r for r in todo}
    for f in _run_shards(tasks, shards_dir, params):
        out[f["episode_id"]] = _with_fate(by_id[f["episode_id"]], f["shard"], f["status"], f["reason"], ctx.stage)
    return out


def _with_fate(r: dict, shard: str, status: str, reason: str, stage: str) -> dict:
    return {**r, "status": status, "reason": reason, "stage": stage, "shard": shard if status == WRITTEN else ""}


def _settled(listing: shards.ShardListing) -> dict[str, tuple[str, str, str]]:
    """episode_id -> (shard, status, reason) of every episode settled in a complete shard (written or quarantined)."""
    done: dict[str, tuple[str, str, str]] = {}
    for name, record in sorted(listing.complete.items()):
        for eid in record.get("episodes", []):
            done[eid] = (name, WRITTEN, "")
        for entry in record.get("quarantined", []):
            done.setdefault(entry["episode_id"], ("", QUARANTINED, entry["reason"]))
    return done


def prepare_shards_dir(shards_dir: str, resume: bool) -> shards.ShardListing:
    """Fail early on an unusable shards location; remove staging leftovers and shards without ``_COMPLETE``; without
    resume, remove the complete shards of an earlier run too (replaced, not mixed in). Returns what is kept."""
    try:
        fileio.makedirs(shards_dir)
        listing = shards.list_shards(shards_dir)
    except Exception as exc:  # not a per-episode problem: the whole stage cannot run
        raise StageError(f"{STAGE}: cannot write shards: {describe_storage_error(shards_dir, exc)}; set output_dir "
                         "to a writable location") from exc
    for path in shards.remove_leftovers(shards_dir):
        logger.info("%s: removed %s, left by an interrupted run", STAGE, path)
    for path in listing.incomplete:
        logger.warning("%s: %s has no %s marker (its writer was interrupted): removing it, its episodes are "
                       "written again", STAGE, path, shards.COMPLETE)
        shards.remove_shard(path)
    if listing.complete and not resume:
        logger.warning("%s: not resuming, so the %d shards of an earlier run in %s are replaced", STAGE,
                       len(listing.complete), shards_dir)
        for name in listing.complete:
            shards.remove_shard(fileio.join(shards_dir, name))
        listing.complete = {}
    listing.incomplete = []
    return listing


def plan_shards(episodes: Sequence[tuple[str, ShardSchema]], episodes_per_shard: int,
                taken: Iterable[int] = ()) -> list[ShardPlan]:
    """Group (episode_id, schema) pairs by schema, sort by id, cut into shards; number them by first id.

    ``members`` index into ``episodes``. Shard numbers skip ``taken`` (complete shards already there), lowest first,
    so a resumed run fills exactly the gaps a fresh run would have filled when its inputs are unchanged.
    """
    groups: dict[ShardSchema, list[int]] = {}
    for j, (_, schema) in enumerate(episodes):
        groups.setdefault(schema, []).append(j)
    chunks: list[tuple[ShardSchema, list[int]]] = []
    for schema, members in groups.items():
        members.sort(key=lambda j: episodes[j][0])
        chunks += [(schema, members[k:k + episodes_per_shard]) for k in range(0, len(members), episodes_per_shard)]
    chunks.sort(key=lambda chunk: episodes[chunk[1][0]][0])
    taken, numbers, k = set(taken), [], 0
    while len(numbers) < len(chunks):
        if k not in taken:
            numbers.append(k)
        k += 1
    return [ShardPlan(shards.shard_name(k), schema, tuple(members))
            for k, (schema, members) in zip(numbers, chunks, strict=True)]


def _run_shards(tasks: list[tuple[ShardPlan, list[ShardInput]]], shards_dir: str,
                params: WriteLerobotParams) -> list[dict[str, str]]:
    """One ``ray.remote`` task per shard, at most ``resources.concurrency`` at once; the fate of every episode."""
    import ray

    task = ray.remote(write_and_publish).options(num_cpus=params.resources.num_cpus,
                                                 num_gpus=params.resources.num_gpus,
                                                 max_retries=1)  # a crashed worker retries; publish starts over
    settings = params.writer_settings()
    limit = params.resources.concurrency or max(1, len(tasks))
    pending, in_flight, fates = list(tasks), {}, []
    bar = tqdm(total=len(tasks), desc=STAGE, unit="shard", mininterval=2.0, dynamic_ncols=True)
    while pending or in_flight:
        while pending and len(in_flight) < limit:
            plan, inputs = pending.pop(0)
            target = fileio.join(shards_dir, plan.name)
            in_flight[task.remote(inputs, target, settings, plan.schema)] = (plan, inputs)
        [ref], _ = ray.wait(list(in_flight), num_returns=1)
        plan, inputs = in_flight.pop(ref)
        try:
            fates.extend(ray.get(ref))
        except Exception as exc:  # the task itself died (e.g. out of memory twice): its episodes say so
            logger.error("%s: %s task failed: %s", STAGE, plan.name, error_reason(exc))
            reason = f"shard {plan.name} task failed: {error_reason(exc)}"
            fates.extend(fate(i.episode_id, QUARANTINED, reason) for i in inputs)
        logger.info("%s: %s done (%d to go)", STAGE, plan.name, len(pending) + len(in_flight))
        bar.update(1)
    bar.close()
    return fates


def _probe_all(paths: Sequence[str], robot_type: str | None) -> list[ShardSchema | Exception]:
    """Schemas from the episode headers, a few files at a time (I/O bound); an exception in place of a bad file's."""

    def probe(path: str) -> ShardSchema | Exception:
        try:
            return ShardSchema.probe(path, robot_type)
        except Exception as exc:  # recorded per episode by the caller
            logger.warning("%s: quarantined %s: %s", STAGE, path, exc)
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(probe, paths))
