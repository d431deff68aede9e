"""synthesize_qa: spatial question-answer pairs from RGB-D episodes, written as webdataset shards (a side output).

    - name: synthesize_qa
      params:
        frames_per_episode: 4        # evenly spaced, always the first and the last (trajectory questions)
        max_per_family: 3            # questions per family and frame
        samples_per_shard: 256
        resources: {num_cpus: 1}

A map stage that returns every episode unchanged (status stays ``ok``, no episode copy): episodes flow on to the next
stage (e.g. ``write_lerobot``) and the QA goes to ``<run_dir>/<output_subdir>/`` (``qa/`` by default), in the format of
``depth.qa_dataset``: ``qa-000000.tar`` shards (RGB, 16-bit depth PNG in mm, JSON with the QA records),
``index.parquet``, ``summary.json`` and a ``_COMPLETE`` marker written last. The directory is published to later
stages as the artifact ``qa_dataset``.

Fan-out 1:1 per episode, then N:1 into shards. The runner maps the episodes in Ray Data tasks
(``resources.num_cpus``; open3d's RANSAC and clustering are the cost): each lifts the chosen frames to point clouds,
measures the objects, asks the questions (``depth.synthesis``) and writes its samples as part files
``<stage_dir>/parts/<episode_id>.tar`` plus ``<episode_id>.json`` (the sample keys and skip counts), each in one atomic
write (``episodes.io``, so the stage directory may be on object storage). The runner's completion records make a
resumed stage skip finished episodes; their parts are reused. The ``finish`` hook then concatenates the parts, in
episode-id order, into shards of ``samples_per_shard`` samples with webdataset's ``TarWriter``, writes the index
(pyarrow) and the summary into a local temporary directory and publishes it: on local disk by swapping it in for the
output directory with two renames, on object storage by removing the old dataset, uploading the files and writing the
commit marker last. Either way a reader that sees ``_COMPLETE`` sees a whole dataset.

Episodes without depth (or without intrinsics) give no samples; the reason (what stage to add) is in
``summary.json["episode_errors"]`` and logged once per distinct reason with a count, and the row stays ``ok``: the
episode is still good data for other sinks. Questions the geometry cannot support are not emitted; ``summary.json``
counts them per reason and family. Depth from an estimator (``meta["depth"]["backend"]`` other than ``sensor``) is read
with silhouette depth borrowed from object interiors and 2%-trimmed extents (``estimated_depth: auto``), which resists
the edge blur of monocular depth.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from depth.pointcloud import PerceptionConfig
from depth.spatial_qa import QAConfig
from depth.synthesis import SynthesisConfig
from episodes import Episode
from episodes import io as fileio
from pipeline.params import ConfigFields, params_from
from pipeline.stage import OK, CheckContext, Problem, Resources, StageContext, error_reason, register_stage

logger = logging.getLogger(__name__)

STAGE = "synthesize_qa"
PARTS_DIRNAME = "parts"
COMPLETE = "_COMPLETE"  # written last into the QA directory: the dataset is whole


# The synthesis fields, their types, defaults and limits from ``depth.synthesis``'s configs.
SYNTHESIS = ConfigFields(SynthesisConfig, {
    "cameras": "cameras to use; default: every camera with depth",
    "frames_per_episode": "evenly spaced frames per camera, first and last included",
})
QA = ConfigFields(QAConfig, {
    "families": "question families; default: all",
    "max_per_family": "questions per family and frame",
})
PERCEPTION = ConfigFields(PerceptionConfig, {
    "min_points": "fewer points on an object: its questions are skipped",
    "max_occluded_fraction": "more of the outline hidden: skipped",
    "gravity": "auto: extrinsics when calibrated",
    "objects": "auto: segmentation if present",
    "depth_trunc_m": "None: no cut; else cut pixels are counted",
})


class SynthesizeQAParams(params_from(SYNTHESIS, QA, PERCEPTION)):
    output_subdir: str = Field("qa", min_length=1, description="QA dataset directory, relative to the run directory")
    estimated_depth: Literal["auto", "yes", "no"] = Field("auto", description="read depth as estimated (robust "
                                                                               "outlines and extents)")
    rgb_format: Literal["png", "jpg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)
    samples_per_shard: int = Field(256, ge=1)
    include_synthetic: bool = Field(False, description="also world-model rollouts (their depth is predicted, so "
                                                       "the answers are not measured truth)")
    seed: int | None = Field(None, description="phrasing and sampling seed; default: the run seed")
    resources: Resources = Resources(num_cpus=1)

    @field_validator("output_subdir")
    @classmethod
    def _inside_run_dir(cls, value: str) -> str:
        if Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError(f"expected a directory name inside the run directory (e.g. qa), got {value!r}")
        return value

    def library_configs(self) -> list[Any]:
        return [self.synthesis_config(run_seed=0, estimated=False)]

    def synthesis_config(self, run_seed: int, estimated: bool) -> SynthesisConfig:
        robust = {"yes": True, "no": False, "auto": estimated}[self.estimated_depth]
        perception = PerceptionConfig(**PERCEPTION.values(self), silhouette_depth="interior" if robust else "measured",
                                      extent_trim=0.02 if robust else 0.0)
        qa = QAConfig(**QA.values(self), seed=run_seed if self.seed is None else self.seed)
        return SynthesisConfig(**SYNTHESIS.values(self), perception=perception, qa=qa)


# -- per episode (Ray Data task) -------------------------------------------------------------------------------------


def part_paths(ctx: StageContext, episode_id: str) -> tuple[str, str]:
    """(samples tar, part JSON) of one episode under ``<stage_dir>/parts/`` (paths or URLs)."""
    return ctx.path(PARTS_DIRNAME, f"{episode_id}.tar"), ctx.path(PARTS_DIRNAME, f"{episode_id}.json")


def samples_tar(samples, params: SynthesizeQAParams) -> bytes:
    """One episode's samples as an uncompressed webdataset tar, in memory (a few frames: a few MB at most)."""
    import webdataset as wds

    from depth.qa_dataset import encode_sample

    buf = io.BytesIO()
    writer = wds.TarWriter(buf, mtime=0)
    try:
        for sample in samples:
            writer.write(encode_sample(sample.key, sample.rgb, sample.depth_m, sample.document, params.rgb_format,
                                       params.jpeg_quality))
    finally:
        writer.close()  # leaves ``buf`` open: the TarWriter did not open it
    return buf.getvalue()


def synthesize_part(episode: Episode, params: SynthesizeQAParams, ctx: StageContext) -> dict[str, Any]:
    """QA for one episode -> its part files (tar first, then the JSON that vouches for it); the part JSON."""
    from depth.synthesis import synthesize_episode

    eid = episode.episode_id
    tar_path, json_path = part_paths(ctx, eid)
    if episode.meta.get("source") == "synthetic" and not params.include_synthetic:
        part = {"episode_id": eid, "error": None, "samples": [], "num_qa": 0,
                "skips": [["*", "synthetic episode (predicted depth; include_synthetic: false)", 1]]}
        fileio.atomic_write_text(json_path, json.dumps(part))
        return part
    try:
        estimated = (episode.meta.get("depth") or {}).get("backend", "sensor") != "sensor"
        result = synthesize_episode(episode, params.synthesis_config(ctx.seed, estimated))
        data = samples_tar(result.samples, params)
    except Exception as exc:  # the episode gives no QA; its row stays ok (see the module docstring)
        logger.debug("%s: no QA for %s", STAGE, eid, exc_info=True)  # finish logs each reason once
        fileio.remove(tar_path)
        part = {"episode_id": eid, "error": error_reason(exc), "samples": [], "num_qa": 0, "skips": []}
    else:
        fileio.atomic_write_bytes(tar_path, data)
        part = {"episode_id": eid, "error": None, "samples": [s.key for s in result.samples],
                "num_qa": result.num_qa, "skips": [[f, r, n] for (f, r), n in sorted(result.skips.items())]}
    fileio.atomic_write_text(json_path, json.dumps(part))
    return part


def check(params: SynthesizeQAParams, cctx: CheckContext) -> list[Problem]:
    """Chosen cameras exist in what the sources produce."""
    produced = cctx.outputs.get("cameras")
    if params.cameras is None or produced is None:
        return []
    missing = [cam for cam in params.cameras if cam not in produced]
    if missing:
        return [("cameras", f"{missing} not produced by the sources (they produce {produced}); use some of those, "
                            f"or leave cameras out for every camera with depth")]
    return []


# -- shards (driver, finish hook) ------------------------------------------------------------------------------------


def read_part_samples(path: str) -> Iterator[dict[str, Any]]:
    """The samples of a part tar (path or URL, streamed), grouped by key as webdataset groups them."""
    with fileio.open_file(path) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        sample: dict[str, Any] = {}
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            sample.setdefault("__key__", key)
            sample[ext] = tar.extractfile(member).read()
        if sample:
            yield sample


def build(rows: list[dict], params: SynthesizeQAParams, ctx: StageContext, out_dir: Path) -> dict[str, Any]:
    """Parts of the ok rows -> shards, index.parquet, summary.json and the marker in the (new, local) ``out_dir``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    from depth.qa_dataset import INDEX_FILE, SHARD_PATTERN, SUMMARY_FILE, index_rows, index_schema
    from depth.spatial_qa import QA_SCHEMA_VERSION

    out_dir.mkdir(parents=True)
    index: list[dict[str, Any]] = []
    skips: Counter = Counter()
    errors: dict[str, str] = {}
    per_family: Counter = Counter()
    per_origin: dict[str, Counter] = {"calibration": Counter(), "depth": Counter()}  # QA pairs by where geometry came from
    shards: list[dict[str, Any]] = []
    writer, count, num_samples = None, 0, 0
    try:
        for r in sorted((r for r in rows if r["status"] == OK), key=lambda r: r["episode_id"]):
            tar_path, json_path = part_paths(ctx, r["episode_id"])
            try:
                part = json.loads(fileio.read_text(json_path))
            except FileNotFoundError:
                errors[r["episode_id"]] = "no part file (the episode's task did not finish)"
                continue
            skips.update({(f, reason): n for f, reason, n in part["skips"]})
            if part["error"]:
                errors[r["episode_id"]] = part["error"]
                continue
            if not part["samples"]:
                continue
            for sample in read_part_samples(tar_path):
                if writer is None or count >= params.samples_per_shard:
                    if writer is not None:
                        writer.close()
                    name = SHARD_PATTERN.format(len(shards))
                    writer = wds.TarWriter(str(out_dir / name), mtime=0)
                    shards.append({"name": name, "samples": 0, "qa_pairs": 0})
                    count = 0
                key = sample["__key__"]
                writer.write(sample)
                document = json.loads(sample["json"])
                rows_here = index_rows(document, key, shards[-1]["name"])
                if rows_here:
                    calibration = (document.get("calibration") or {}).get("intrinsics", "unrecorded")
                    per_origin["calibration"][calibration] += len(rows_here)
                    per_origin["depth"][document["depth"]["source"]] += len(rows_here)
                index.extend(rows_here)
                per_family.update(row["family"] for row in rows_here)
                shards[-1]["samples"] += 1
                shards[-1]["qa_pairs"] += len(rows_here)
                count += 1
                num_samples += 1
    finally:
        if writer is not None:
            writer.close()
    pq.write_table(pa.Table.from_pylist(index, schema=index_schema()), out_dir / INDEX_FILE)
    skipped_by_family: dict[str, dict[str, int]] = {}
    reasons: Counter = Counter()  # skipped per reason, summed over families
    for (family, reason), n in sorted(skips.items()):
        skipped_by_family.setdefault(family, {})[reason] = n
        reasons[reason] += n
    summary = {
        "schema_version": QA_SCHEMA_VERSION, "num_samples": num_samples, "num_qa": len(index),
        "families": sorted(per_family), "qa_per_family": dict(sorted(per_family.items())),
        "qa_by_calibration": dict(sorted(per_origin["calibration"].items())),
        "qa_by_depth_source": dict(sorted(per_origin["depth"].items())),
        "skipped": dict(sorted(reasons.items())), "skipped_total": sum(skips.values()),
        "skipped_by_family": skipped_by_family, "episodes_with_qa": len({row["episode_id"] for row in index}),
        "episode_errors": errors, "shards": shards, "params": params.model_dump(mode="json"),
    }
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    (out_dir / COMPLETE).write_text(json.dumps({"num_samples": num_samples, "num_qa": len(index),
                                                "files": sorted(p.name for p in out_dir.iterdir())}))
    return summary


def publish(local_dir: Path, target: str) -> None:
    """Make ``local_dir`` the dataset at ``target``: a rename swap on local disk; on object storage the old dataset
    goes (its marker first), the files are uploaded, and the marker is uploaded last."""
    if fileio.is_local(target):
        _swap_in(local_dir, fileio.local_path(target))
        return
    fileio.remove(fileio.join(target, COMPLETE))
    fileio.remove(target, recursive=True)
    marker = (local_dir / COMPLETE).read_bytes()
    (local_dir / COMPLETE).unlink()
    fileio.upload_dir(local_dir, target)
    fileio.atomic_write_bytes(fileio.join(target, COMPLETE), marker)


def _swap_in(tmp_dir: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``tmp_dir`` with two renames (the old copy is removed afterwards)."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}-old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_dir(target: str) -> tuple[Path, Path]:
    """(parent to remove afterwards, directory to build in): next to a local target (same filesystem, so the swap is
    a rename), else in the local temporary directory."""
    if fileio.is_local(target):
        local = fileio.local_path(target)
        local.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{local.name}-tmp-", dir=local.parent))
    else:
        scratch = Path(tempfile.mkdtemp(prefix="wmsynth-qa-"))
    return scratch, scratch / "dataset"


def errors_by_reason(errors: dict[str, str]) -> dict[str, list[str]]:
    """Episode ids per distinct reason (the episode's own id, where it stands as a whole word, replaced by
    ``<episode>``)."""
    by_reason: dict[str, list[str]] = {}
    for eid, reason in sorted(errors.items()):
        generic = re.sub(rf"(?<![\w.-]){re.escape(eid)}(?![\w.-])", "<episode>", reason)
        by_reason.setdefault(generic, []).append(eid)
    return by_reason


def stage_report(summary: dict[str, Any]) -> dict[str, Any]:
    """report.json (copied into the manifest): the counts, episodes without QA per reason, and a warning the run
    summary prints when the stage made no QA pair at all."""
    reasons = {reason: len(eids) for reason, eids in errors_by_reason(summary["episode_errors"]).items()}
    report = {"num_qa": summary["num_qa"], "num_samples": summary["num_samples"], "shards": len(summary["shards"]),
              "questions_skipped": summary["skipped"], "episodes_without_qa": reasons,
              "qa_by_calibration": summary.get("qa_by_calibration", {}),
              "qa_by_depth_source": summary.get("qa_by_depth_source", {})}
    if summary["num_qa"] == 0:
        why = "; ".join(f"{n} episode(s): {reason}" for reason, n in reasons.items())
        report["warnings"] = [f"no QA pairs{': ' + why if why else ''}"
                              + (f" (questions skipped: {summary['skipped']})" if summary["skipped"] else "")]
    return report


def log_errors(errors: dict[str, str]) -> None:
    """One line per distinct reason (episode ids replaced), with how many episodes and a few of them."""
    for reason, eids in errors_by_reason(errors).items():
        logger.warning("%s: %d episode(s) gave no QA (%s%s): %s", STAGE, len(eids), ", ".join(eids[:3]),
                       ", ..." if len(eids) > 3 else "", reason)


def finish(rows: list[dict], params: SynthesizeQAParams, ctx: StageContext) -> None:
    """N:1 on the driver: concatenate the parts into shards (I/O only), then publish the dataset whole."""
    target = ctx.run_path(params.output_subdir)
    scratch, local = build_dir(target)
    try:
        summary = build(rows, params, ctx, local)
        publish(local, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ctx.publish("qa_dataset", target)
    ctx.write_report(stage_report(summary))
    log_errors(summary["episode_errors"])
    logger.info("%s: %d QA pairs in %d samples, %d shards in %s; %d questions skipped %s; %d episodes without QA",
                STAGE, summary["num_qa"], summary["num_samples"], len(summary["shards"]), target,
                summary["skipped_total"], summary["skipped"], len(summary["episode_errors"]))


@register_stage(STAGE, kind="map", params=SynthesizeQAParams, finish=finish, check=check, provides=("qa_dataset",))
def synthesize_qa(episode: Episode, params: SynthesizeQAParams, ctx: StageContext) -> Episode:
    """Spatial QA (15 families, checked geometry) from RGB-D episodes -> webdataset shards; episodes unchanged."""
    synthesize_part(episode, params, ctx)
    return episode
