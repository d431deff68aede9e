"""synthesize_qa: spatial question-answer pairs from RGB-D episodes, written as webdataset shards (a side output).

    - name: synthesize_qa
      params:
        frames_per_episode: 4        # evenly spaced, always the first and the last (trajectory questions)
        max_per_family: 3            # questions per family and frame
        samples_per_shard: 256
        resources: {num_cpus: 1}

A transform that leaves its rows as they are (status stays ``ok``, no episode copy): episodes flow on to the next stage
(e.g. ``write_lerobot``) and the QA goes to ``<run_dir>/<output_subdir>/`` (``qa/`` by default), in the format of
``depth.qa_dataset``: ``qa-000000.tar`` shards (RGB, 16-bit depth PNG in mm, JSON with the QA records),
``index.parquet`` and ``summary.json``.

Fan-out 1:1 per episode, then N:1 into shards. Each episode is one Ray task (``resources.num_cpus``; open3d's RANSAC
and clustering are the cost): it lifts the chosen frames to point clouds, measures the objects, asks the questions
(``depth.synthesis``) and writes its samples as a part file ``<stage_dir>/parts/<episode_id>.tar`` plus a JSON with
the index rows and skip counts, both atomically. The driver then concatenates the parts, in episode-id order, into
shards of ``samples_per_shard`` samples with webdataset's ``TarWriter``, writes the index (pyarrow) and the summary
into a temporary directory, and swaps it in for the output directory: readers never see a partial dataset. With
``--resume``, episodes whose parts exist are not redone and the shards are rebuilt from the parts.

Episodes without depth (or without intrinsics) give no samples; the reason (what stage to add) is in
``summary.json["episode_errors"]`` and the log, and the row stays ``ok``: the episode is still good data for other
sinks. Questions the geometry cannot support are not emitted; ``summary.json`` counts them per reason and family.
Depth from an estimator (``meta["depth"]["backend"] == "depth_anything"``) is read with silhouette depth borrowed from
object interiors and 2%-trimmed extents (``estimated_depth: auto``), which resists the edge blur of monocular depth.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import traceback
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from episodes.io import atomic_write_text
from pipeline.stage import OK, Resources, StageContext, StageParams, error_reason, register_stage

logger = logging.getLogger(__name__)

STAGE = "synthesize_qa"
PARTS_DIRNAME = "parts"


class SynthesizeQAParams(StageParams):
    output_subdir: str = Field("qa", min_length=1, description="QA dataset directory, relative to the run directory")
    cameras: list[str] | None = Field(None, description="cameras to use; default: every camera with depth")
    frames_per_episode: int = Field(4, ge=1, description="evenly spaced frames per camera, first and last included")
    families: list[str] | None = Field(None, description="question families; default: all")
    max_per_family: int = Field(3, ge=1, description="questions per family and frame")
    min_points: int = Field(30, ge=4, description="fewer points on an object: its questions are skipped")
    max_occluded_fraction: float = Field(0.25, ge=0, le=1, description="more of the outline hidden: skipped")
    gravity: Literal["auto", "extrinsics", "ransac"] = Field("auto", description="auto: extrinsics when calibrated")
    objects: Literal["auto", "segmentation", "clusters"] = Field("auto", description="auto: segmentation if present")
    depth_trunc_m: float | None = Field(None, gt=0, description="None: no cut; else cut pixels are counted")
    estimated_depth: Literal["auto", "yes", "no"] = Field("auto", description="read depth as estimated (robust "
                                                                               "outlines and extents)")
    rgb_format: Literal["png", "jpg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)
    samples_per_shard: int = Field(256, ge=1)
    seed: int | None = Field(None, description="phrasing and sampling seed; default: the run seed")
    resources: Resources = Resources(num_cpus=1)

    @field_validator("output_subdir")
    @classmethod
    def _inside_run_dir(cls, value: str) -> str:
        if Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError(f"expected a directory name inside the run directory (e.g. qa), got {value!r}")
        return value

    @field_validator("families")
    @classmethod
    def _known_families(cls, value: list[str] | None) -> list[str] | None:
        from depth.spatial_qa import FAMILIES

        if value is None:
            return value
        unknown = [f for f in value if f not in FAMILIES]
        if unknown or not value:
            raise ValueError(f"unknown families {unknown} (known: {', '.join(FAMILIES)})" if unknown
                             else "expected at least one family (or leave it out for all)")
        return value

    def synthesis_config(self, run_seed: int, estimated: bool):
        from depth.pointcloud import PerceptionConfig
        from depth.spatial_qa import QAConfig
        from depth.synthesis import SynthesisConfig

        robust = {"yes": True, "no": False, "auto": estimated}[self.estimated_depth]
        perception = PerceptionConfig(gravity=self.gravity, objects=self.objects, depth_trunc_m=self.depth_trunc_m,
                                      min_points=self.min_points, max_occluded_fraction=self.max_occluded_fraction,
                                      silhouette_depth="interior" if robust else "measured",
                                      extent_trim=0.02 if robust else 0.0)
        qa = QAConfig(families=tuple(self.families) if self.families else None, max_per_family=self.max_per_family,
                      seed=run_seed if self.seed is None else self.seed)
        return SynthesisConfig(perception=perception, qa=qa,
                               cameras=tuple(self.cameras) if self.cameras else None,
                               frames_per_episode=self.frames_per_episode)


# -- per episode (Ray task) ------------------------------------------------------------------------------------------



def part_paths(parts_dir: Path, episode_id: str) -> tuple[Path, Path]:
    return parts_dir / f"{episode_id}.tar", parts_dir / f"{episode_id}.json"


def synthesize_one(in_row: dict, params: SynthesizeQAParams, ctx: StageContext, parts_dir: Path) -> dict:
    """QA for one episode -> its part files; the row is returned unchanged (a bad episode is recorded, not fatal)."""
    if in_row["status"] != OK:
        return in_row
    eid = in_row["episode_id"]
    tar_path, json_path = part_paths(parts_dir, eid)
    if ctx.resume and tar_path.exists() and json_path.exists():
        return in_row
    parts_dir.mkdir(parents=True, exist_ok=True)
    try:
        import webdataset as wds

        from depth.qa_dataset import encode_sample
        from depth.synthesis import synthesize_episode
        from episodes import Episode

        episode = Episode.load(in_row["path"])
        estimated = (episode.meta.get("depth") or {}).get("backend", "sensor") != "sensor"
        result = synthesize_episode(episode, params.synthesis_config(ctx.seed, estimated))
        tmp = tar_path.with_name(f".{tar_path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                writer = wds.TarWriter(f, mtime=0)
                try:
                    for sample in result.samples:
                        writer.write(encode_sample(sample.key, sample.rgb, sample.depth_m, sample.document,
                                                   params.rgb_format, params.jpeg_quality))
                finally:
                    writer.close()
            os.replace(tmp, tar_path)
        finally:
            tmp.unlink(missing_ok=True)
        summary = {"episode_id": eid, "error": None, "samples": [s.key for s in result.samples],
                   "num_qa": result.num_qa, "skips": [[f, r, n] for (f, r), n in sorted(result.skips.items())]}
    except Exception as exc:  # the episode gives no QA; the row itself stays ok (see module docstring)
        logger.warning("%s: no QA for %s: %s\n%s", STAGE, eid, exc, traceback.format_exc())
        tar_path.unlink(missing_ok=True)
        summary = {"episode_id": eid, "error": error_reason(exc), "samples": [], "num_qa": 0, "skips": []}
    atomic_write_text(json_path, json.dumps(summary))
    return in_row


# -- shards (driver) -------------------------------------------------------------------------------------------------


def assemble(rows: list[dict], parts_dir: Path, out_dir: Path, params: SynthesizeQAParams) -> dict[str, Any]:
    """Parts of the ok rows -> shards, index.parquet and summary.json in a temp dir, swapped in for ``out_dir``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    from depth.qa_dataset import INDEX_FILE, SHARD_PATTERN, SUMMARY_FILE, index_rows, index_schema
    from depth.spatial_qa import QA_SCHEMA_VERSION

    tmp_dir = out_dir.with_name(f".{out_dir.name}-tmp-{uuid.uuid4().hex[:8]}")
    tmp_dir.mkdir(parents=True)
    index: list[dict[str, Any]] = []
    skips: Counter = Counter()
    errors: dict[str, str] = {}
    per_family: Counter = Counter()
    shards: list[dict[str, Any]] = []
    writer, count, num_samples = None, 0, 0
    try:
        for r in sorted((r for r in rows if r["status"] == OK), key=lambda r: r["episode_id"]):
            tar_path, json_path = part_paths(parts_dir, r["episode_id"])
            if not json_path.exists():
                errors[r["episode_id"]] = "no part file (the episode's task did not finish)"
                continue
            part = json.loads(json_path.read_text())
            skips.update({(f, reason): n for f, reason, n in part["skips"]})
            if part["error"]:
                errors[r["episode_id"]] = part["error"]
                continue
            for sample in wds.WebDataset(str(tar_path), shardshuffle=False, empty_check=False):
                if writer is None or count >= params.samples_per_shard:
                    if writer is not None:
                        writer.close()
                    name = SHARD_PATTERN.format(len(shards))
                    writer = wds.TarWriter(str(tmp_dir / name), mtime=0)
                    shards.append({"name": name, "samples": 0, "qa_pairs": 0})
                    count = 0
                key = sample["__key__"]
                writer.write({k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"})
                rows_here = index_rows(json.loads(sample["json"]), key, shards[-1]["name"])
                index.extend(rows_here)
                per_family.update(row["family"] for row in rows_here)
                shards[-1]["samples"] += 1
                shards[-1]["qa_pairs"] += len(rows_here)
                count += 1
                num_samples += 1
    finally:
        if writer is not None:
            writer.close()
    try:
        pq.write_table(pa.Table.from_pylist(index, schema=index_schema()), tmp_dir / INDEX_FILE)
        skipped_by_family: dict[str, dict[str, int]] = {}
        for (family, reason), n in sorted(skips.items()):
            skipped_by_family.setdefault(family, {})[reason] = n
        summary = {
            "schema_version": QA_SCHEMA_VERSION, "num_samples": num_samples, "num_qa": len(index),
            "families": sorted(per_family), "qa_per_family": dict(sorted(per_family.items())),
            "skipped": {}, "skipped_total": sum(skips.values()), "skipped_by_family": skipped_by_family,
            "episodes_with_qa": len({row["episode_id"] for row in index}), "episode_errors": errors,
            "shards": shards, "params": params.model_dump(mode="json"),
        }
        reasons: Counter = Counter()  # skipped per reason, summed over families
        for (_, reason), n in skips.items():
            reasons[reason] += n
        summary["skipped"] = dict(sorted(reasons.items()))
        (tmp_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        _swap_in(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return summary


def _swap_in(tmp_dir: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``tmp_dir`` with two renames (the old copy is removed afterwards)."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}-old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@register_stage(STAGE, kind="transform", params=SynthesizeQAParams)
def synthesize_qa(ds, params: SynthesizeQAParams, ctx: StageContext):
    """Spatial QA (15 families, checked geometry) from RGB-D episodes -> webdataset shards; rows pass through."""
    import functools

    import ray

    parts_dir = (ctx.stage_dir / PARTS_DIRNAME).absolute()  # tasks may run with another working directory
    out_dir = (ctx.run_dir / params.output_subdir).absolute()
    # 1:1 per episode: point clouds and questions, one Ray task each (CPU-bound open3d/numpy work).
    fn = functools.partial(synthesize_one, params=params, ctx=ctx, parts_dir=parts_dir)
    extra = {}
    if params.resources.concurrency is not None:
        extra["compute"] = ray.data.TaskPoolStrategy(size=params.resources.concurrency)
    rows = [dict(r) for r in ds.map(fn, num_cpus=params.resources.num_cpus, **extra).take_all()]
    # N:1 on the driver: concatenate the parts into shards (I/O only), then swap the dataset in.
    summary = assemble(rows, parts_dir, out_dir, params)
    logger.info("%s: %d QA pairs in %d samples, %d shards in %s; %d questions skipped %s; %d episodes without QA",
                STAGE, summary["num_qa"], summary["num_samples"], len(summary["shards"]), out_dir,
                summary["skipped_total"], summary["skipped"], len(summary["episode_errors"]))
    return ray.data.from_items(rows) if rows else ds
