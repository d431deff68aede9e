"""``wmsynth merge``: a run's LeRobot shards -> one LeRobot v3 dataset per schema, to train on.

    <out_dir>/<name>/                one dataset (lerobot's ``aggregate_datasets`` of the shards of one schema)
    <out_dir>/<name>/meta/wmsynth_provenance.json   merged episode_index -> the shard entry it came from
    <out_dir>/merge_report.json      what was merged (written last)

Shards (``<run>/shards/shard-NNNNN`` with a ``_COMPLETE`` marker; local paths or URLs, several runs allowed) are
grouped by their ``ShardSchema`` (features, fps, robot_type: what LeRobot stores once per dataset). One schema gives
``<name>``; several give ``<name>-<k>`` in the order of their first shard (the report lists each one's schema). lerobot's
aggregation drops our provenance file, so it is rebuilt: each entry keeps the shard's (episode_id, ``provenance``:
real | pseudo_labelled | synthetic, parent, recipe, evaluation, ...) plus where it came from (run, shard, the shard's
episode_index). The provenance kind is also a column of lerobot's episode table, ``SOURCE_COLUMN``, so training can
select episodes by it (``LeRobotDataset(..., episodes=[...])`` or ``lerobot-train --dataset.episodes=[...]``)::

    real = [e["episode_index"] for e in LeRobotDatasetMetadata(repo_id, root=root).episodes
            if e["wmsynth/source"] == "real"]

The output is built in a staging directory and renamed into place (local) or uploaded with the report last (URL); the
merged dataset is reopened with lerobot's reader and the first and last frame of every episode decoded before that.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import shutil
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from episodes import io as fileio
from pipeline import shards
from pipeline.lerobot_schema import ShardSchema
from pipeline.lerobot_shard import (
    PROVENANCE_FILE, PROVENANCE_VERSION, ShardWriteError, check_shard, read_provenance,
)

logger = logging.getLogger(__name__)

MERGED_DIRNAME = "merged"
REPORT_FILE = "merge_report.json"
SOURCE_COLUMN = "wmsynth/source"  # real | pseudo_labelled | synthetic, one per episode in meta/episodes
EPISODE_ID_COLUMN = "wmsynth/episode_id"
SOURCES = ("real", "pseudo_labelled", "synthetic")


class MergeError(ValueError):
    """Input that cannot be merged (no shards, a shard whose files disagree); the message names the file."""


@dataclass(frozen=True)
class SourceShard:
    run_dir: str
    path: str  # local path or URL
    record: dict[str, Any]  # its _COMPLETE marker


def merge_run(run_dir: str | Path, out_dir: str | Path | None = None, repo_id: str | None = None) -> dict[str, Any]:
    """Merge the complete shards of one run; ``out_dir`` defaults to ``<run_dir>/merged``."""
    return merge_runs([run_dir], out_dir, repo_id)


def merge_runs(run_dirs: list[str | Path], out_dir: str | Path | None = None,
               repo_id: str | None = None) -> dict[str, Any]:
    """Merge the complete shards of every run into one dataset per schema; returns the report (also written to
    ``<out_dir>/merge_report.json``). ``repo_id`` defaults to the first shard's; ``out_dir`` to the first run's
    ``merged``. An existing ``out_dir`` is replaced."""
    if not run_dirs:
        raise MergeError("merge: no run directory given")
    run_dirs = [fileio.normalize(run) for run in run_dirs]
    out_dir = fileio.normalize(out_dir or fileio.join(run_dirs[0], MERGED_DIRNAME))
    for run in run_dirs:  # out_dir is replaced whole: it must not hold the shards being merged
        if f"{run}/".startswith(f"{out_dir}/"):
            raise MergeError(f"--out {out_dir} contains the run {run}, which merging would replace; choose another "
                             f"directory (default: {fileio.join(run, MERGED_DIRNAME)})")
    found = [s for run in run_dirs for s in find_shards(run)]
    with contextlib.ExitStack() as stack:
        local = [stack.enter_context(shards.local_copy(s.path, s.record)) for s in found]
        provenances = [_read_provenance(s, root) for s, root in zip(found, local, strict=True)]
        repo_id = repo_id or provenances[0]["repo_id"]
        groups: dict[ShardSchema, list[int]] = {}
        for i, provenance in enumerate(provenances):
            groups.setdefault(_schema(provenance, found[i]), []).append(i)
        with _staging(out_dir) as staging:
            datasets = []
            for k, (schema, members) in enumerate(groups.items()):
                suffix = f"-{k}" if len(groups) > 1 else ""  # several schemas: in the order of their first shard
                datasets.append(_merge_group(staging / f"{repo_id.split('/')[-1]}{suffix}", repo_id + suffix, schema,
                                             [(found[i], local[i], provenances[i]) for i in members]))
            report = {"out_dir": out_dir, "runs": run_dirs,
                      "datasets": [_with_root(d, fileio.join(out_dir, d["name"])) for d in datasets]}
            text = json.dumps(report, indent=1)
            (staging / REPORT_FILE).write_text(text)
    logger.info("merge: %d shards -> %d datasets in %s", len(found), len(datasets), out_dir)
    return json.loads(text)  # as written (lists, not tuples)


def find_shards(run_dir: str) -> list[SourceShard]:
    """The complete shards of ``run_dir``, by name; shards without ``_COMPLETE`` are skipped with a warning."""
    shards_dir = fileio.join(run_dir, shards.SHARDS_DIRNAME)
    if not fileio.is_dir(shards_dir):
        raise MergeError(f"{shards_dir}: no shards directory; run the write_lerobot stage on {run_dir} first")
    listing = shards.list_shards(shards_dir)
    for path in listing.incomplete:
        logger.warning("merge: skipping %s: no %s marker (its writer was interrupted)", path, shards.COMPLETE)
    if not listing.complete:
        raise MergeError(f"{shards_dir}: no complete shard (shard-NNNNN with a {shards.COMPLETE} marker) to merge")
    return [SourceShard(run_dir, fileio.join(shards_dir, name), record)
            for name, record in sorted(listing.complete.items())]


def _read_provenance(shard: SourceShard, root: Path) -> dict[str, Any]:
    where = fileio.join(shard.path, PROVENANCE_FILE)
    try:
        provenance = read_provenance(root)
    except (OSError, ValueError) as exc:
        raise MergeError(f"{where}: unreadable provenance file ({type(exc).__name__}: {exc})") from None
    for key in ("repo_id", "schema", "episodes"):
        if key not in provenance:
            raise MergeError(f"{where}: field {key!r} is missing (written by wmsynth < provenance format "
                             f"{PROVENANCE_VERSION}?); rewrite the shard with write_lerobot")
    info = json.loads((root / "meta" / "info.json").read_text())
    if len(provenance["episodes"]) != info.get("total_episodes"):
        raise MergeError(f"{where}: field 'episodes' lists {len(provenance['episodes'])} episodes, "
                         f"{fileio.join(shard.path, 'meta/info.json')} says total_episodes={info.get('total_episodes')}")
    return provenance


def _schema(provenance: dict[str, Any], shard: SourceShard) -> ShardSchema:
    fields = provenance["schema"]
    try:
        return ShardSchema(fps=int(fields["fps"]), robot_type=str(fields["robot_type"]),
                           cameras=tuple(tuple(c) for c in fields["cameras"]),
                           depth_cameras=tuple(fields["depth_cameras"]),
                           state_names=None if fields["state_names"] is None else tuple(fields["state_names"]),
                           action_names=None if fields["action_names"] is None else tuple(fields["action_names"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise MergeError(f"{fileio.join(shard.path, PROVENANCE_FILE)}: field 'schema' is malformed "
                         f"({type(exc).__name__}: {exc})") from None


def _merge_group(root: Path, repo_id: str, schema: ShardSchema,
                 members: list[tuple[SourceShard, Path, dict[str, Any]]]) -> dict[str, Any]:
    """lerobot's aggregation of one schema's shards at ``root``, then provenance, source column and a read-back."""
    import datasets
    from lerobot.datasets.aggregate import aggregate_datasets

    bars_were_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        aggregate_datasets([repo_id] * len(members), repo_id, roots=[local for _, local, _ in members], aggr_root=root)
    except ValueError as exc:  # lerobot found the shards incompatible after all
        raise MergeError(f"lerobot cannot aggregate {[s.path for s, _, _ in members]}: {exc}") from exc
    finally:
        if not bars_were_disabled:
            datasets.enable_progress_bars()
    entries: list[dict[str, Any]] = []
    for shard, _, provenance in members:
        for entry in sorted(provenance["episodes"], key=lambda e: e["episode_index"]):
            entries.append({**entry, "episode_index": len(entries),
                            "from": {"run": fileio.name(shard.run_dir), "shard": fileio.name(shard.path),
                                     "episode_index": entry["episode_index"]}})
    _add_source_columns(root, entries)
    try:
        check_shard(root, repo_id, schema, entries)
    except ShardWriteError as exc:  # e.g. a video that does not decode across a shard boundary
        raise MergeError(f"the merge of {[s.path for s, _, _ in members]} does not read back: {exc}") from exc
    by_source = {kind: [e["episode_index"] for e in entries if e["provenance"] == kind] for kind in SOURCES}
    (root / PROVENANCE_FILE).write_text(json.dumps({
        "format_version": PROVENANCE_VERSION, "writer": "wmsynth merge", "repo_id": repo_id,
        "schema": schema.to_json(), "source_column": SOURCE_COLUMN, "episodes_by_source": by_source,
        "shards": [{"run": fileio.name(s.run_dir), "shard": fileio.name(s.path), "episodes": len(p["episodes"]),
                    "quarantined": p.get("quarantined", [])} for s, _, p in members],
        "episodes": entries}, indent=1, default=str))
    return {"name": root.name, "repo_id": repo_id, "episodes": len(entries),
            "frames": sum(int(e["num_frames"]) for e in entries), "shards": len(members),
            "episodes_by_provenance": dict(sorted(Counter(e["provenance"] for e in entries).items())),
            "schema": schema.to_json()}


def _with_root(dataset: dict[str, Any], root: str) -> dict[str, Any]:
    return {**dataset, "root": root,
            "lerobot_train_args": [f"--dataset.repo_id={dataset['repo_id']}", f"--dataset.root={root}",
                                   policy_input_features_arg(dataset["schema"])]}


def policy_input_features_arg(schema: dict[str, Any]) -> str:
    """``--policy.input_features=...`` for lerobot-train: RGB cameras and state, no depth stream.

    lerobot makes every video feature a VISUAL input, and its image policies (ACT, diffusion: ResNet backbones) take
    3 channels, so a depth stream (H, W, 1) fails in the backbone's first convolution; this names the inputs instead.
    """
    features = {f"observation.images.{cam}": {"type": "VISUAL", "shape": [3, height, width]}
                for cam, height, width in schema["cameras"]}
    if schema["state_names"] is not None:
        features["observation.state"] = {"type": "STATE", "shape": [len(schema["state_names"])]}
    return f"--policy.input_features={json.dumps(features)}"


def _add_source_columns(root: Path, entries: list[dict[str, Any]]) -> None:
    """``SOURCE_COLUMN`` and ``EPISODE_ID_COLUMN`` in every meta/episodes parquet file (lerobot keeps extra columns)."""
    import pandas as pd

    source = {e["episode_index"]: e["provenance"] for e in entries}
    episode_id = {e["episode_index"]: e["episode_id"] for e in entries}
    length = {e["episode_index"]: int(e["num_frames"]) for e in entries}
    for path in sorted((root / "meta" / "episodes").glob("*/*.parquet")):
        table = pd.read_parquet(path)
        for index, frames in zip(table["episode_index"], table["length"], strict=True):
            if length.get(int(index)) != int(frames):  # the provenance mapping would name the wrong episode
                raise MergeError(f"{path}: episode_index {index} has length {frames}, its provenance entry "
                                 f"{length.get(int(index))}")
        table[SOURCE_COLUMN] = table["episode_index"].map(source)
        table[EPISODE_ID_COLUMN] = table["episode_index"].map(episode_id)
        table.to_parquet(path)  # as lerobot's aggregate writes it


@contextlib.contextmanager
def _staging(out_dir: str):
    """A fresh local directory that becomes ``out_dir`` when the block succeeds (rename, or upload + report last)."""
    if fileio.is_local(out_dir):
        target = fileio.local_path(out_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f"{shards.STAGING_PREFIX}{target.name}-{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        try:
            yield staging
            old = target.parent / f".replaced-{target.name}-{uuid.uuid4().hex[:12]}"
            if target.exists():
                target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="wmsynth-merge-") as tmp:
        staging = Path(tmp) / "out"
        staging.mkdir()
        yield staging
        fileio.remove(fileio.join(out_dir, REPORT_FILE))  # readers trust the report: it goes first, comes back last
        fileio.remove(out_dir, recursive=True)
        report = (staging / REPORT_FILE).read_text()
        (staging / REPORT_FILE).unlink()
        fileio.upload_dir(staging, out_dir)
        fileio.atomic_write_text(fileio.join(out_dir, REPORT_FILE), report)


# -- the CLI (wired as ``wmsynth merge`` by pipeline.cli) ------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories (local paths or URLs) whose shards "
                                                               "to merge")
    parser.add_argument("--out", default=None, help=f"output directory (default: <first RUN>/{MERGED_DIRNAME}); "
                                                    "replaced if it exists")
    parser.add_argument("--repo-id", default=None, help="repo_id of the merged dataset (default: the shards')")


def command(args: argparse.Namespace) -> int:
    """Exit codes: 0 merged, 2 the input cannot be merged (the message names the file)."""
    import sys

    try:
        report = merge_runs(args.runs, args.out, args.repo_id)
    except MergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    print(f"merge: {sum(d['shards'] for d in report['datasets'])} shards -> "
          + "; ".join(f"{d['root']} ({d['episodes']} episodes, {d['frames']} frames, "
                      f"{json.dumps(d['episodes_by_provenance'])})" for d in report["datasets"]))
    for d in report["datasets"]:
        print("train: lerobot-train " + " ".join(shlex.quote(a) for a in d["lerobot_train_args"])
              + " --policy.type=act --policy.device=cpu --policy.push_to_hub=false "
                "--policy.pretrained_backbone_weights=null --output_dir=outputs/train/" + d["name"])
    return 0
