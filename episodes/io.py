"""Paths that may be local or fsspec URLs (``s3://``, ``gs://``, ``file://``, ``memory://``): open, list, atomic writes.

Every run directory and input path in wmsynth goes through these helpers, so a stage never cares where its files live.

Atomic publication:
    local disk      write a unique temp file next to the target, fsync, ``os.replace``: readers see old or new.
    object storage  one PUT per object: S3 and GCS make an object visible only once its upload completed, so a
                    reader never sees half of it (a multi-object artifact such as a LeRobot shard adds a commit marker
                    written last: see ``pipeline.store``).

Credentials come from each backend's usual sources (``AWS_*`` environment variables, ``~/.aws``, instance metadata,
``GOOGLE_APPLICATION_CREDENTIALS``; ``AWS_ENDPOINT_URL`` for an S3-compatible server). wmsynth never reads, logs or
stores them: URLs are logged as given, and storage options are not part of any file it writes.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

PathLike = str | Path


def is_url(path: PathLike) -> bool:
    """True for ``scheme://...`` paths (``file://`` included); plain local paths are not URLs."""
    return "://" in str(path)


def is_local(path: PathLike) -> bool:
    return not is_url(path) or str(path).startswith("file://")


def local_path(path: PathLike) -> Path:
    """A local filesystem path for a plain path or a ``file://`` URL (raises for remote URLs)."""
    text = str(path)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if is_url(text):
        raise ValueError(f"{text}: not a local path")
    return Path(text)


def normalize(path: PathLike) -> str:
    """Absolute local paths (Ray workers do not share the driver's working directory) or URLs without trailing '/'."""
    text = str(path)
    if is_local(text):
        return str(local_path(text).expanduser().absolute())
    return text.rstrip("/")


def join(base: PathLike, *parts: str) -> str:
    base = str(base)
    if is_url(base) and not base.startswith("file://"):
        return posixpath.join(base, *parts)
    return str(local_path(base).joinpath(*parts))


def parent(path: PathLike) -> str:
    text = str(path).rstrip("/")
    return posixpath.dirname(text) if is_url(text) and not text.startswith("file://") else str(local_path(text).parent)


def name(path: PathLike) -> str:
    return posixpath.basename(str(path).rstrip("/"))


def filesystem(path: PathLike) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a local path or URL."""
    return url_to_fs(str(path))


def open_file(path: PathLike, mode: str = "rb", **kwargs) -> IO:
    """Open for streaming reads (remote objects are read in blocks as needed, never whole)."""
    if is_local(path):
        return open(local_path(path), mode, **kwargs)
    return fsspec.open(str(path), mode, **kwargs).open()


def read_bytes(path: PathLike) -> bytes:
    if is_local(path):
        return local_path(path).read_bytes()
    fs, inner = filesystem(path)
    return fs.cat_file(inner)


def read_text(path: PathLike) -> str:
    return read_bytes(path).decode()


def exists(path: PathLike) -> bool:
    if is_local(path):
        return local_path(path).exists()
    fs, inner = filesystem(path)
    return fs.exists(inner)


def is_dir(path: PathLike) -> bool:
    if is_local(path):
        return local_path(path).is_dir()
    fs, inner = filesystem(path)
    return fs.isdir(inner)


def listdir(path: PathLike) -> list[str]:
    """Full paths (URLs stay URLs) of the entries directly under ``path``; [] when it does not exist."""
    if is_local(path):
        p = local_path(path)
        return sorted(str(c) for c in p.iterdir()) if p.is_dir() else []
    fs, inner = filesystem(path)
    try:
        entries = fs.ls(inner, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    protocol = str(path).split("://", 1)[0]
    return sorted(f"{protocol}://{e.lstrip('/')}" if protocol not in ("memory", "local") else f"{protocol}://{e}"
                  for e in entries if e.rstrip("/") != inner.rstrip("/"))


def makedirs(path: PathLike) -> None:
    if is_local(path):
        local_path(path).mkdir(parents=True, exist_ok=True)
    else:  # object stores have no directories; memory:// needs the parents for ls
        fs, inner = filesystem(path)
        fs.makedirs(inner, exist_ok=True)


def remove(path: PathLike, recursive: bool = False) -> None:
    """Remove a file (or a directory tree with ``recursive``); a missing path is not an error."""
    if is_local(path):
        p = local_path(path)
        if p.is_dir() and recursive:
            import shutil

            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() and not p.is_dir():
            p.unlink(missing_ok=True)
        return
    fs, inner = filesystem(path)
    try:
        fs.rm(inner, recursive=recursive)
    except FileNotFoundError:
        pass


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Publish ``data`` at ``path`` whole or not at all (see the module doc)."""
    if is_local(path):
        p = local_path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
        return
    fs, inner = filesystem(path)
    if "local" in fs.protocol or "file" in fs.protocol:  # local:// seen through fsspec: directories exist
        fs.makedirs(posixpath.dirname(inner), exist_ok=True)
    fs.pipe_file(inner, data)  # a single PUT: the object appears complete or not at all


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def upload_dir(local_dir: PathLike, target: PathLike) -> None:
    """Copy a local directory tree to ``target`` (a local path or URL), file by file."""
    local_dir = Path(local_dir)
    if is_local(target):
        import shutil

        shutil.copytree(local_dir, local_path(target), dirs_exist_ok=True)
        return
    fs, inner = filesystem(target)
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        dest = posixpath.join(inner, file.relative_to(local_dir).as_posix())
        if "local" in fs.protocol or "file" in fs.protocol:  # local:// seen through fsspec: directories exist
            fs.makedirs(posixpath.dirname(dest), exist_ok=True)
        fs.put_file(str(file), dest)


def download_dir(source: PathLike, local_dir: PathLike) -> None:
    """Copy a directory tree at ``source`` (local path or URL) into ``local_dir``."""
    if is_local(source):
        import shutil

        shutil.copytree(local_path(source), Path(local_dir), dirs_exist_ok=True)
        return
    fs, inner = filesystem(source)
    fs.get(inner.rstrip("/") + "/", str(local_dir).rstrip("/") + "/", recursive=True)
