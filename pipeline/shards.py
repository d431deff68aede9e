"""The shards directory, local or on object storage: shard names, the ``_COMPLETE`` commit marker, publication.

    <run_dir>/shards/shard-00000/            one complete dataset (a LeRobot v3 root)
    <run_dir>/shards/shard-00000/_COMPLETE   written LAST: {"shard", "episodes", "quarantined", "files": [{path, size}]}

A shard is a directory of many files, and object storage cannot rename a directory, so one rule holds on every
backend: **a shard without ``_COMPLETE`` is not a shard.** Writers build the shard in a local staging directory, then
publish it (local disk: ``os.rename`` into place, as atomic as it gets; object storage: upload file by file) and only
then write ``_COMPLETE`` (one PUT, or temp file + rename). A writer killed mid-upload leaves a directory without the
marker: resume removes and rewrites it, readers (``wmsynth verify``, a later merge) skip it. Removing a shard deletes
its marker first, so a half-deleted shard is never mistaken for a complete one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from episodes import io as fileio

logger = logging.getLogger(__name__)

SHARDS_DIRNAME = "shards"
COMPLETE = "_COMPLETE"
COMPLETE_VERSION = 1
SHARD_RE = re.compile(r"^shard-(\d{5,})$")
STAGING_PREFIX = ".tmp-"  # local staging directories next to the shards (same filesystem: rename is atomic)
LEGACY_PREFIXES = (STAGING_PREFIX, ".replaced-")  # left by interrupted runs of this or earlier versions


def shard_name(number: int) -> str:
    return f"shard-{number:05d}"


def shard_number(name: str) -> int | None:
    match = SHARD_RE.match(name)
    return int(match.group(1)) if match else None


@dataclass
class ShardListing:
    """What a shards directory holds: complete shards (name -> their ``_COMPLETE`` record) and everything else."""

    complete: dict[str, dict[str, Any]] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)  # shard-XXXXX paths without a readable marker

    def taken(self) -> set[int]:
        return {n for n in map(shard_number, self.complete) if n is not None}


def list_shards(shards_dir: str) -> ShardListing:
    """One LIST of ``shards_dir`` and one small read per shard (its marker)."""
    listing = ShardListing()
    for path in fileio.listdir(shards_dir):
        name = fileio.name(path)
        if SHARD_RE.match(name):
            record = read_complete(path)
            if record is None:
                listing.incomplete.append(path)
            else:
                listing.complete[name] = record
    return listing


def read_complete(shard: str) -> dict[str, Any] | None:
    """The shard's ``_COMPLETE`` record, or None when it has none (not complete) or it cannot be parsed."""
    try:
        record = json.loads(fileio.read_text(fileio.join(shard, COMPLETE)))
    except FileNotFoundError:
        return None
    except ValueError:  # a marker is one PUT or an atomic rename: a garbled one was not written by us
        logger.warning("%s: unreadable %s; treating the shard as incomplete", shard, COMPLETE)
        return None
    return record if isinstance(record, dict) else None


def remove_leftovers(shards_dir: str) -> list[str]:
    """Remove the staging directories interrupted writers left in ``shards_dir`` (local disk only); returns them."""
    leftovers = [p for p in fileio.listdir(shards_dir) if fileio.name(p).startswith(LEGACY_PREFIXES)]
    for path in leftovers:
        fileio.remove(path, recursive=True)
    return leftovers


def remove_shard(shard: str) -> None:
    """Delete a shard: its marker first, so readers stop trusting it before any of its files go."""
    fileio.remove(fileio.join(shard, COMPLETE))
    fileio.remove(shard, recursive=True)


@contextlib.contextmanager
def staging_dir(target: str) -> Iterator[Path]:
    """A local directory path (not yet created) to build the shard published at ``target`` in; removed afterwards.

    Next to the target for a local shards directory (so ``publish`` is a rename on the same filesystem), in the
    worker's temp directory for object storage.
    """
    if fileio.is_local(target):
        target_path = fileio.local_path(target)
        target_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = target_path.parent / f"{STAGING_PREFIX}{target_path.name}-{uuid.uuid4().hex[:12]}"
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="wmsynth-shard-") as tmp:
        yield Path(tmp) / fileio.name(target)


def publish(local_dir: Path, target: str, record: dict[str, Any]) -> dict[str, Any]:
    """Move the finished shard at ``local_dir`` to ``target`` and write its ``_COMPLETE`` marker last.

    ``record`` (episode ids, fates) goes into the marker with the file list and sizes. An existing ``target`` (an
    earlier attempt at this shard that died mid-publication) is removed first. Returns the marker's record.
    """
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    record = {"format_version": COMPLETE_VERSION, "shard": fileio.name(target), **record,
              "files": [{"path": p.relative_to(local_dir).as_posix(), "size": p.stat().st_size} for p in files],
              "published_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if fileio.exists(target):
        remove_shard(target)
    if fileio.is_local(target):
        os.rename(local_dir, fileio.local_path(target))
    else:
        fileio.upload_dir(local_dir, target)
    fileio.atomic_write_text(fileio.join(target, COMPLETE), json.dumps(record, indent=1))
    return record


@contextlib.contextmanager
def local_copy(shard: str, record: dict[str, Any]) -> Iterator[Path]:
    """A local directory holding the complete shard at ``shard``: the shard itself when it is on local disk, else a
    streamed download into a temp directory (removed afterwards), checked against the marker's file sizes."""
    if fileio.is_local(shard):
        yield fileio.local_path(shard)
        return
    with tempfile.TemporaryDirectory(prefix="wmsynth-shard-") as tmp:
        local = Path(tmp) / fileio.name(shard)
        fileio.download_dir(shard, local)
        for entry in record.get("files", []):
            path = local / entry["path"]
            size = path.stat().st_size if path.is_file() else None
            if size != entry["size"]:
                raise OSError(f"{shard}: {entry['path']} is {size} bytes, its {COMPLETE} marker says {entry['size']}")
        yield local
