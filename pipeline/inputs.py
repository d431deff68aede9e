"""Input locations of source stages: a local path or an fsspec URL (``s3://``, ``gs://``, ``file://``, ``memory://``).

    scheme_problem(path)       an unknown URL scheme, said before anything is opened
    read_problem(path, exc)    a one-line reason why an input cannot be read, with what to do
    local_copy(path)           a real local file for libraries that need one (decord, PyAV, parquet readers): the file
                               itself when it is local, else a temporary copy streamed in blocks and deleted afterwards
    fetch(path, local_file)    copy one remote object to a local file in blocks (never whole in memory)

Used by the source stages' ``check`` (``wmsynth validate``) and by their per-episode tasks.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from episodes import io as fileio


def scheme_problem(path: str) -> str | None:
    """None for a local path or a URL whose scheme fsspec knows, else what to write instead."""
    if not fileio.is_url(path):
        return None
    import fsspec

    scheme = path.split("://", 1)[0]
    if scheme not in fsspec.available_protocols():
        return (f"unknown URL scheme {scheme!r} in {path!r} (use s3://, gs://, file://, memory:// or a local "
                "path)")
    return None


def read_problem(path: str, exc: BaseException) -> str:
    """Why ``path`` cannot be read, in one credential-free line that says what to check."""
    text = (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0][:300]
    lowered = text.lower()
    if isinstance(exc, FileNotFoundError):
        return f"{path} does not exist"
    if isinstance(exc, ImportError):
        hint = "the filesystem package for this URL scheme is not installed"
    elif "nosuchbucket" in lowered or "bucket does not exist" in lowered or "specified bucket" in lowered:
        hint = "the bucket does not exist (check its name)"
    elif "credentials" in lowered or "invalidaccesskeyid" in lowered or "signaturedoesnotmatch" in lowered:
        hint = ("no valid credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile; for GCS "
                "GOOGLE_APPLICATION_CREDENTIALS)")
    elif (isinstance(exc, PermissionError) or "accessdenied" in lowered or "forbidden" in lowered
          or "403" in lowered):
        hint = "permission denied (the credentials or file permissions do not allow reading it)"
    elif "connect" in lowered or "endpoint" in lowered or "timeout" in lowered or "name or service" in lowered:
        hint = "cannot reach the storage endpoint (check AWS_ENDPOINT_URL / network)"
    else:
        hint = "cannot be read"
    return f"{path}: {hint} ({text})"


def fetch(path: str, local_file: str | Path) -> None:
    """Copy the object at ``path`` (a URL) to ``local_file``, streamed in blocks by the backend."""
    Path(local_file).parent.mkdir(parents=True, exist_ok=True)
    fs, inner = fileio.filesystem(path)
    fs.get_file(inner, str(local_file))


@contextmanager
def local_copy(path: str, suffix: str = "") -> Iterator[Path]:
    """A local file holding ``path``: the file itself when local, else a temporary copy removed on exit."""
    if fileio.is_local(path):
        yield fileio.local_path(path)
        return
    fd, tmp = tempfile.mkstemp(prefix="wmsynth-input-", suffix=suffix)
    os.close(fd)
    try:
        fetch(path, tmp)
        yield Path(tmp)
    finally:
        os.unlink(tmp)
