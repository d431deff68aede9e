"""``wmsynth publish RUN --to TARGET``: a finished run's datasets, with dataset cards, on the Hub or in a directory.

    wmsynth publish runs/demo --to hf://datasets/ORG/NAME [--private] [--revision BRANCH]   (or hf://ORG/NAME)
    wmsynth publish runs/demo --to s3://bucket/datasets            (any fsspec URL: gs://..., memory://...)
    wmsynth publish runs/demo --to /data/published [--dry-run]

What is published, one dataset each, every one with a generated ``README.md`` card (``pipeline.dataset_card``):
    <NAME>[-k]   the run's LeRobot shards merged into one LeRobot v3 dataset per schema (``pipeline.merge``; several
                 schemas get merge's ``-0``, ``-1`` suffixes)
    <NAME>-qa    the spatial-QA webdataset set (``<run>/qa``), when the run made one
On the Hub each is a dataset repo ``ORG/<name>``; in a directory or bucket, a folder ``TARGET/<name>/``.

The run must be complete: every stage of ``config.resolved.yaml`` has its ``_SUCCESS`` marker, ``manifest.json`` is
written, every shard and the QA set have their ``_COMPLETE`` marker. Anything else is refused before any work.

Hub: huggingface_hub's own path, as lerobot's ``LeRobotDataset.push_to_hub`` takes it: ``create_repo(repo_type=
"dataset", exist_ok=True)``, ``create_branch`` for ``--revision``, ``upload_folder`` (one commit per dataset; the Hub
skips files whose content it already has, by sha256), then lerobot's ``CODEBASE_VERSION`` tag (``v3.0``) on the
LeRobot datasets. An interrupted upload made no commit; running the same command again commits everything once, and
content the Hub received before is not sent again (``upload_large_folder`` resumes through a cache kept inside the
folder it uploads, which this staged copy does not outlive; the Hub's content-addressed store gives the same). The token comes from huggingface_hub's usual sources (``HF_TOKEN``,
the file ``hf auth login`` writes) and is only handed to ``HfApi``: never printed, logged or written.

Directories and object storage (fsspec): ``pipeline.publish_files`` uploads only files whose size and sha256 differ
from ``TARGET/.wmsynth_publish.json`` (so publishing the same run twice uploads nothing) and writes ``_PUBLISHED``
last; an interrupted publication resumes where it stopped.

Exit codes: 0 published (or listed, ``--dry-run``), 1 the upload failed (run the command again), 2 bad input (the
message names the run, stage, repo id, licence or token problem and what to do).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from episodes import io as fileio
from pipeline import shards
from pipeline.dataset_card import RunFacts, license_problem, lerobot_card, qa_card
from pipeline.lerobot_shard import PROVENANCE_FILE
from pipeline.publish_files import SyncError, sync_files
from pipeline.store import SUCCESS, RunStore, describe_storage_error

logger = logging.getLogger(__name__)

HUB_SCHEME = "hf://"
QA_SUFFIX = "-qa"
CARD = "README.md"


class PublishError(ValueError):
    """Bad input (incomplete run, repo id, licence, token): nothing was uploaded; the message says what to do."""


class UploadError(RuntimeError):
    """The transfer itself failed; what arrived is kept and the same command resumes."""


@dataclass(frozen=True)
class Target:
    hub_repo_id: str | None  # ORG/NAME for hf:// targets
    url: str | None  # normalized local path or fsspec URL otherwise


@dataclass(frozen=True)
class Dataset:
    name: str  # folder name at a files target; the repo name on the Hub
    repo_id: str
    kind: str  # "lerobot" | "qa"
    local: Path  # staged: the files as published, README.md card included


def parse_target(text: str) -> Target:
    if text.startswith(HUB_SCHEME):
        parts = text[len(HUB_SCHEME):].strip("/").split("/")
        if parts and parts[0] in ("models", "spaces"):
            raise PublishError(f"--to {text}: wmsynth publishes datasets; use hf://datasets/ORG/NAME")
        if parts and parts[0] == "datasets":
            parts = parts[1:]
        repo_id = "/".join(parts)
        check_repo_id(repo_id, f"--to {text}")
        return Target(repo_id, None)
    if not text:
        raise PublishError("--to: give hf://datasets/ORG/NAME, an fsspec URL (s3://bucket/prefix) or a directory")
    return Target(None, fileio.normalize(text))


def check_repo_id(repo_id: str, where: str) -> None:
    """ORG/NAME as the Hub accepts it (huggingface_hub's own validator), else PublishError naming it."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"{where}: repo id {repo_id!r} must be ORG/NAME (e.g. my-org/tabletop-demo)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PublishError(f"{where}: the Hub would refuse repo id {repo_id!r}: {exc}") from None


# -- the run ---------------------------------------------------------------------------------------------------------


def check_run(run_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, resolved config) of a complete run, else PublishError naming what is missing."""
    store = RunStore(run_dir)
    resume = f"resume it with `wmsynth run <stages.yaml> --output {run_dir} --resume`, then publish again"
    try:
        if not fileio.is_dir(run_dir):
            raise PublishError(f"{run_dir}: no such run directory")
        config = yaml.safe_load(fileio.read_text(store.path("config.resolved.yaml")))
    except FileNotFoundError:
        raise PublishError(f"{run_dir}: not a run directory (no config.resolved.yaml)") from None
    except PublishError:
        raise
    except Exception as exc:  # storage problems: credentials, bucket, endpoint
        raise PublishError(describe_storage_error(run_dir, exc)) from None
    stages = config.get("stages") if isinstance(config, dict) else None
    if not isinstance(stages, list):
        raise PublishError(f"{store.path('config.resolved.yaml')}: no stages list")
    for i, stage in enumerate(stages):
        stage_dir = store.stage_dir(i, stage["name"])
        if not fileio.exists(fileio.join(stage_dir, SUCCESS)):
            raise PublishError(f"{run_dir}: stage {stage['name']} ({store.relative(stage_dir)}) has no {SUCCESS} "
                               f"marker, so the run is incomplete; {resume}")
    manifest = store.read_json(store.path("manifest.json"))
    if not isinstance(manifest, dict):
        raise PublishError(f"{run_dir}: no manifest.json (a run writes it last), so the run did not finish; {resume}")
    listing = shards.list_shards(store.path(shards.SHARDS_DIRNAME))
    if listing.incomplete:
        raise PublishError(f"{listing.incomplete[0]}: no {shards.COMPLETE} marker (its writer was interrupted); "
                           f"{resume}")
    qa_dir = _qa_dir(run_dir, config)
    if qa_dir and not fileio.exists(fileio.join(qa_dir, shards.COMPLETE)):
        raise PublishError(f"{qa_dir}: the QA set has no {shards.COMPLETE} marker; {resume}")
    if not listing.complete and not qa_dir:
        raise PublishError(f"{run_dir}: nothing to publish (no LeRobot shards, no QA set)")
    return manifest, config


def _qa_dir(run_dir: str, config: dict[str, Any]) -> str | None:
    for stage in config.get("stages", []):
        if stage.get("name") == "synthesize_qa":
            return fileio.join(run_dir, (stage.get("params") or {}).get("output_subdir") or "qa")
    return None


def _write_lerobot_params(config: dict[str, Any]) -> dict[str, Any]:
    return next(((s.get("params") or {}) for s in config.get("stages", []) if s.get("name") == "write_lerobot"), {})


# -- staging: what is published, as files ----------------------------------------------------------------------------


def stage_datasets(run_dir: str, staging: Path, repo_id: str, license_id: str, manifest: dict[str, Any],
                   config: dict[str, Any]) -> list[Dataset]:
    """The merged LeRobot dataset(s) and the QA set under ``staging``, each with its card."""
    from pipeline.merge import merge_run

    facts = RunFacts.read(run_dir, manifest, config)
    datasets: list[Dataset] = []
    if shards.list_shards(fileio.join(run_dir, shards.SHARDS_DIRNAME)).complete:
        report = merge_run(run_dir, staging / "merged", repo_id=repo_id)
        for merged in report["datasets"]:
            root = staging / "merged" / merged["name"]
            _canonical_stats(root)
            info = json.loads((root / "meta" / "info.json").read_text())
            provenance = json.loads((root / PROVENANCE_FILE).read_text())
            (root / CARD).write_text(lerobot_card(merged["repo_id"], license_id, info, provenance, facts))
            datasets.append(Dataset(merged["name"], merged["repo_id"], "lerobot", root))
    qa_dir = _qa_dir(run_dir, config)
    if qa_dir:
        name = repo_id.split("/")[-1] + QA_SUFFIX
        root = staging / "qa" / name
        _stage_qa(qa_dir, root)
        summary = json.loads((root / "summary.json").read_text())
        facts.qa_summary = summary
        files = sorted(p.name for p in root.iterdir())
        (root / CARD).write_text(qa_card(repo_id + QA_SUFFIX, license_id, summary, files, facts))
        datasets.append(Dataset(name, repo_id + QA_SUFFIX, "qa", root))
    return datasets


def _canonical_stats(root: Path) -> None:
    """meta/stats.json with sorted keys: lerobot's aggregation writes the same statistics in a key order that changes
    from process to process (set iteration), which would make every publication upload it again."""
    path = root / "meta" / "stats.json"
    if path.is_file():
        path.write_text(json.dumps(json.loads(path.read_text()), indent=4, ensure_ascii=False, sort_keys=True))


def _stage_qa(qa_dir: str, root: Path) -> None:
    """The QA set's files under ``root``: links to a local run's files (no copy), a download of a remote run's."""
    root.mkdir(parents=True)
    if fileio.is_local(qa_dir):
        for path in sorted(fileio.local_path(qa_dir).iterdir()):
            if path.is_file() and path.name != shards.COMPLETE:
                (root / path.name).symlink_to(path.resolve())
        return
    fileio.download_dir(qa_dir, root)
    (root / shards.COMPLETE).unlink(missing_ok=True)


def list_files(datasets: list[Dataset]) -> list[tuple[Dataset, str, Path, int]]:
    """(dataset, path inside it, local file, size) of every file to publish, in a stable order."""
    out = []
    for dataset in datasets:
        for path in sorted(p for p in dataset.local.rglob("*") if p.is_file()):
            out.append((dataset, path.relative_to(dataset.local).as_posix(), path, path.stat().st_size))
    return out


# -- publishing ------------------------------------------------------------------------------------------------------


def publish_run(run_dir: str | Path, to: str, *, dry_run: bool = False, private: bool = False,
                revision: str | None = None, repo_id: str | None = None, license_id: str | None = None) -> dict:
    """Publish a finished run to ``to`` (see the module doc); returns the report the CLI prints."""
    t0 = time.monotonic()
    target = parse_target(to)
    run_dir = fileio.normalize(run_dir)
    manifest, config = check_run(run_dir)
    license_id = license_id or _write_lerobot_params(config).get("license")
    if license_id is None:
        raise PublishError(f"{run_dir}: the run records no licence (write_lerobot.license, added after it ran); pass "
                           "--license ID (e.g. apache-2.0)")
    if problem := license_problem(license_id):
        raise PublishError(f"licence: {problem}")
    if target.hub_repo_id and repo_id and repo_id != target.hub_repo_id:
        raise PublishError(f"--repo-id {repo_id} differs from the target's {target.hub_repo_id}; give it once")
    repo_id = target.hub_repo_id or repo_id or _write_lerobot_params(config).get("repo_id") \
        or f"wmsynth/{fileio.name(run_dir)}"
    check_repo_id(repo_id, "--repo-id" if not target.hub_repo_id else f"--to {to}")
    token = None
    if target.hub_repo_id and not dry_run:
        token = _hub_token()
    with tempfile.TemporaryDirectory(prefix="wmsynth-publish-") as tmp:
        datasets = stage_datasets(run_dir, Path(tmp), repo_id, license_id, manifest, config)
        for dataset in datasets:
            check_repo_id(dataset.repo_id, "repo id")
        files = list_files(datasets)
        report: dict[str, Any] = {
            "run_dir": run_dir, "to": to, "license": license_id, "dry_run": dry_run,
            "datasets": [{"name": d.name, "repo_id": d.repo_id, "kind": d.kind, "to": _where(target, d, revision),
                          "files": sum(1 for f in files if f[0] is d),
                          "bytes": sum(f[3] for f in files if f[0] is d)} for d in datasets],
            "files": [{"path": f"{d.name}/{rel}", "to": _where(target, d, revision, rel), "size": size}
                      for d, rel, _, size in files],
            "bytes": sum(f[3] for f in files)}
        t_upload = time.monotonic()
        if not dry_run and target.hub_repo_id:
            report["hub"] = _publish_hub(datasets, token, True if private else None, revision, run_dir)
        elif not dry_run:
            try:
                report.update(sync_files({f"{d.name}/{rel}": (local, size) for d, rel, local, size in files},
                                         target.url, run_dir))
            except SyncError as exc:
                raise (UploadError if exc.uploaded else PublishError)(str(exc)) from exc
        report["upload_seconds"] = round(time.monotonic() - t_upload, 3)
    report["seconds"] = round(time.monotonic() - t0, 3)
    return report


def _where(target: Target, dataset: Dataset, revision: str | None, rel: str = "") -> str:
    if target.hub_repo_id:
        at = f"@{revision}" if revision else ""
        return f"{HUB_SCHEME}datasets/{dataset.repo_id}{at}" + (f"/{rel}" if rel else "")
    return fileio.join(target.url, dataset.name, *([rel] if rel else []))


def _hub_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PublishError("no Hugging Face token: run `hf auth login` (it stores a write token in huggingface_hub's "
                           "token file) or set HF_TOKEN, then publish again")
    return token


def _publish_hub(datasets: list[Dataset], token: str, private: bool | None, revision: str | None,
                 run_dir: str) -> list[dict[str, Any]]:
    """create_repo, create_branch, upload_folder and lerobot's version tag, per dataset (as lerobot's push_to_hub)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError
    from lerobot.datasets.dataset_metadata import CODEBASE_VERSION

    api = HfApi(token=token, endpoint=os.environ.get("HF_ENDPOINT") or None)
    out = []
    for dataset in datasets:
        try:
            api.create_repo(dataset.repo_id, repo_type="dataset", private=private, exist_ok=True)
            if revision:
                api.create_branch(dataset.repo_id, branch=revision, repo_type="dataset", exist_ok=True)
            commit = api.upload_folder(repo_id=dataset.repo_id, folder_path=dataset.local, repo_type="dataset",
                                       revision=revision, commit_message=f"wmsynth publish {fileio.name(run_dir)}")
            if dataset.kind == "lerobot":  # the version tag lerobot's reader resolves, as push_to_hub sets it
                with contextlib.suppress(RevisionNotFoundError):
                    api.delete_tag(dataset.repo_id, tag=CODEBASE_VERSION, repo_type="dataset")
                api.create_tag(dataset.repo_id, tag=CODEBASE_VERSION, revision=revision, repo_type="dataset")
        except HfHubHTTPError as exc:
            status = getattr(exc.response, "status_code", None)
            first = str(exc).splitlines()[0][:300]
            if status in (401, 403):
                raise PublishError(f"the Hub refused the token for {dataset.repo_id} ({first}); log in with a "
                                   "token that can write there (`hf auth login`, or HF_TOKEN)") from None
            raise UploadError(f"publishing {dataset.repo_id} to the Hub failed ({first}); run the same command "
                              "again: nothing was committed, and content the Hub already has is not sent "
                              "again") from exc
        except (OSError, RuntimeError, ValueError) as exc:  # connection drops, httpx errors, LFS upload failures
            raise UploadError(f"publishing {dataset.repo_id} to the Hub failed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); run the same command again: "
                              "nothing was committed, and content the Hub already has is not sent again") from exc
        logger.info("publish: %s -> %s", dataset.name, commit.commit_url)
        out.append({"repo_id": dataset.repo_id, "commit": commit.oid, "commit_url": commit.commit_url,
                    "tag": CODEBASE_VERSION if dataset.kind == "lerobot" else None})
    return out


# -- the CLI (wired as ``wmsynth publish`` by pipeline.cli) ----------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a finished run directory (local path or URL)")
    parser.add_argument("--to", required=True, metavar="TARGET",
                        help="hf://datasets/ORG/NAME (or hf://ORG/NAME), an fsspec URL (s3://bucket/prefix) or a "
                             "local directory")
    parser.add_argument("--dry-run", action="store_true", help="list every file, where it would go and its size; "
                                                               "upload nothing")
    parser.add_argument("--private", action="store_true", help="Hub: create private repos")
    parser.add_argument("--revision", metavar="BRANCH", default=None, help="Hub: publish to this branch (created "
                                                                           "from main if missing)")
    parser.add_argument("--repo-id", default=None, help="ORG/NAME of the published datasets (default: the hf:// "
                                                        "target's, else the run's write_lerobot.repo_id)")
    parser.add_argument("--license", default=None, help="Hub licence id of the data (default: the run's "
                                                        "write_lerobot.license)")


def command(args: argparse.Namespace) -> int:
    """Exit codes: 0 published or listed, 1 the upload failed (run again to resume), 2 bad input."""
    try:
        report = publish_run(args.run, args.to, dry_run=args.dry_run, private=args.private, revision=args.revision,
                             repo_id=args.repo_id, license_id=args.license)
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UploadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        for f in report["files"]:
            print(f"{f['size']:>12}  {f['path']}  ->  {f['to']}")
        print(f"publish (dry run): {len(report['files'])} files, {report['bytes']} bytes in "
              f"{len(report['datasets'])} datasets; nothing uploaded")
        return 0
    print(json.dumps({k: v for k, v in report.items() if k != "files"}, indent=2))
    for d in report["datasets"]:
        print(f"publish: {d['name']} ({d['kind']}, {d['files']} files, {d['bytes']} bytes) -> {d['to']}")
    if "uploaded_bytes" in report:
        print(f"publish: uploaded {report['uploaded_files']} files ({report['uploaded_bytes']} bytes), "
              f"{report['skipped_files']} already there")
    return 0
