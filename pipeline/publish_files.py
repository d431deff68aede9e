"""An idempotent, resumable copy of local files to a directory or object store (fsspec), for ``wmsynth publish``.

    TARGET/<path> ...             the files
    TARGET/.wmsynth_publish.json  what was uploaded: size and sha256 per path (saved every few seconds and at the end)
    TARGET/_PUBLISHED             written last; removed before the first change

A file is uploaded only when the manifest or the target's listing says it differs, so the same files published twice
upload nothing, and a copy interrupted half-way continues with the files that are missing. Files a previous copy
put there and this one does not have are removed. Each file appears whole: temp file + rename on disk, one
(multipart) PUT on object storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import time
from pathlib import Path
from typing import Any

from episodes import io as fileio
from pipeline.store import describe_storage_error

PUBLISH_MANIFEST = ".wmsynth_publish.json"
PUBLISHED_MARKER = "_PUBLISHED"
_MANIFEST_FLUSH_S = 2.0  # how often the manifest is saved during a copy (resume granularity)


class SyncError(RuntimeError):
    """Storage failed; ``uploaded`` says whether anything had been changed at the target (resume by running again)."""

    def __init__(self, message: str, uploaded: bool):
        super().__init__(message)
        self.uploaded = uploaded


def sync_files(wanted: dict[str, tuple[Path, int]], target: str, run_dir: str) -> dict[str, Any]:
    """Upload the files of ``wanted`` (path under ``target`` -> (local file, size)) that differ from what the
    manifest and listing at ``target`` say is there; remove stale ones; marker last. Returns the file and byte counts."""
    fs, root = fileio.filesystem(target)
    manifest_path = fileio.join(target, PUBLISH_MANIFEST)
    try:
        old = json.loads(fileio.read_text(manifest_path)).get("files", {})
    except FileNotFoundError:
        old = {}
    except ValueError:  # written as one PUT or rename: garbled means not ours; start over
        old = {}
    except Exception as exc:
        raise SyncError(describe_storage_error(target, exc), uploaded=False) from None
    present = _sizes(fs, root)
    done: dict[str, dict[str, Any]] = {}
    todo: list[tuple[str, Path, int, str]] = []
    for rel, (local, size) in wanted.items():
        sha = _sha256(local)
        if old.get(rel) == {"size": size, "sha256": sha} and present.get(rel) == size:
            done[rel] = old[rel]
        else:
            todo.append((rel, local, size, sha))
    stale = sorted(set(old) - set(wanted))
    skipped_bytes = sum(e["size"] for e in done.values())
    if not todo and not stale and PUBLISHED_MARKER in present:
        return {"uploaded_files": 0, "uploaded_bytes": 0, "skipped_files": len(done), "skipped_bytes": skipped_bytes,
                "removed_files": 0}
    uploaded_files, uploaded_bytes, last_flush = 0, 0, time.monotonic()
    try:
        fileio.remove(fileio.join(target, PUBLISHED_MARKER))  # readers stop trusting the target until it is whole
        for rel, local, size, sha in todo:
            _put(fs, local, posixpath.join(root, rel), fileio.is_local(target))
            done[rel] = {"size": size, "sha256": sha}
            uploaded_files, uploaded_bytes = uploaded_files + 1, uploaded_bytes + size
            if time.monotonic() - last_flush > _MANIFEST_FLUSH_S:
                _save_manifest(manifest_path, {**{r: old[r] for r in stale}, **done}, run_dir)
                last_flush = time.monotonic()
        for rel in stale:
            fileio.remove(fileio.join(target, rel))
        _save_manifest(manifest_path, done, run_dir)
        fileio.atomic_write_text(fileio.join(target, PUBLISHED_MARKER), json.dumps(
            {"run_dir": run_dir, "files": len(done), "bytes": sum(e["size"] for e in done.values())}, indent=1))
    except Exception as exc:
        with contextlib.suppress(Exception):  # keep what arrived, so the retry resumes
            _save_manifest(manifest_path, {**{r: old[r] for r in stale if r in old}, **done}, run_dir)
        raise SyncError(f"{describe_storage_error(target, exc)}; {uploaded_files} of {len(todo)} files were "
                        "uploaded; run the same command again to upload the rest", uploaded=True) from exc
    return {"uploaded_files": len(todo), "uploaded_bytes": uploaded_bytes, "skipped_files": len(wanted) - len(todo),
            "skipped_bytes": skipped_bytes, "removed_files": len(stale)}


def _sizes(fs, root: str) -> dict[str, int]:
    """Relative path -> size of every file under ``root`` (one recursive listing)."""
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    prefix = root.rstrip("/") + "/"
    return {path[len(prefix):]: int(info.get("size") or 0) for path, info in found.items()
            if path.startswith(prefix) and info.get("type") != "directory"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _put(fs, local: Path, dest: str, local_target: bool) -> None:
    """One file: temp file + rename on disk, one (multipart) PUT on object storage: never half a file at ``dest``."""
    if local_target:
        dest_path = Path(dest)
        dest_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest_path.with_name(f".{dest_path.name}.publishing")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dest_path)
        return
    if "memory" in fs.protocol:
        fs.makedirs(posixpath.dirname(dest), exist_ok=True)
    fs.put_file(str(local), dest)


def _save_manifest(path: str, files: dict[str, dict[str, Any]], run_dir: str) -> None:
    fileio.atomic_write_text(path, json.dumps({"format_version": 1, "writer": "wmsynth publish", "run_dir": run_dir,
                                               "files": dict(sorted(files.items()))}, indent=1))
