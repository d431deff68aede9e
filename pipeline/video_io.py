"""Reading one video clip and its sidecars (used by ``pipeline.stages.ingest_videos``).

    decode(path, ...)          kept frames of a local video file with decord, in chunks, resized if asked
    Sidecars.find(uri)         ``<stem>.actions.npy`` / ``<stem>.actions.csv`` / ``<stem>.json`` next to a video
    read_json_sidecar(...)     {"task", "fps", "action_names", "robot_type"}, each checked
    read_actions(...)          (T, A) float32 from .npy (never unpickled) or .csv (optional header of names)

Sidecars are read through ``episodes.io`` (local paths or fsspec URLs; they are small). Videos are decoded from a local
file: a remote one is first copied to a temporary file in blocks (``pipeline.inputs.local_copy``). Every problem with
the input raises ``EpisodeError`` naming the clip's URI and the field.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from episodes import EpisodeError
from episodes import io as fileio

logger = logging.getLogger(__name__)

DECODE_CHUNK_FRAMES = 64  # frames decoded (and resized) at a time


@dataclass(frozen=True)
class Sidecars:
    actions: str | None
    json: str | None

    @classmethod
    def find(cls, uri: str) -> Sidecars:
        stem = posixpath.splitext(uri)[0]  # works on URLs and local paths alike
        npy, csv_path, json_path = f"{stem}.actions.npy", f"{stem}.actions.csv", f"{stem}.json"
        has_npy, has_csv = fileio.exists(npy), fileio.exists(csv_path)
        if has_npy and has_csv:
            raise EpisodeError(uri, "action", f"both {name(npy)} and {name(csv_path)} exist; keep one")
        actions = npy if has_npy else csv_path if has_csv else None
        return cls(actions=actions, json=json_path if fileio.exists(json_path) else None)


def name(path: str | None) -> str:
    return fileio.name(path) if path else ""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


# -- video -----------------------------------------------------------------------------------------------------------


def decode(path: Path, uri: str, frame_stride: int, max_frames: int | None, size: tuple[int, int] | None,
           num_threads: int) -> tuple[np.ndarray, float, int, tuple[int, int]]:
    """Decode the kept frames of the local file ``path`` (``uri`` names it in messages).

    Returns (T, H, W, 3) uint8 frames, the video's fps, its frame count and its native (H, W). Frames are decoded (and
    resized to ``size`` = (height, width)) in chunks, so a long clip at full resolution never sits in memory whole.
    """
    import decord

    clip = name(uri)
    if path.stat().st_size == 0:
        raise EpisodeError(uri, "video", "empty file (0 bytes)")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
        num_video_frames = len(reader)
        video_fps = float(reader.get_avg_fps())
    except Exception as exc:  # decord raises RuntimeError/DECORDError for anything it cannot open
        raise EpisodeError(uri, "video", f"cannot open {clip}: {_diagnose(path, exc)}") from exc
    if num_video_frames == 0:
        raise EpisodeError(uri, "video", f"zero-length video {clip} (no frames)")
    declared = _declared_frame_count(path)
    if declared is not None and num_video_frames < declared:  # decord silently drops the frames past the cut
        raise EpisodeError(uri, "video", f"truncated: {clip} declares {declared} frames but only "
                           f"{num_video_frames} are in the file")
    indices = list(range(0, num_video_frames, frame_stride))[:max_frames]
    chunks, native_hw = [], None
    try:
        for start in range(0, len(indices), DECODE_CHUNK_FRAMES):
            batch = indices[start:start + DECODE_CHUNK_FRAMES]
            chunk = reader.get_batch(batch).asnumpy()  # (t, H, W, 3) uint8
            if chunk.ndim != 4 or chunk.shape[0] != len(batch) or chunk.shape[-1] != 3:
                raise EpisodeError(uri, "video", f"decoded {tuple(chunk.shape)} for {len(batch)} frames of "
                                   f"{clip}; expected (T, H, W, 3)")
            native_hw = native_hw or (int(chunk.shape[1]), int(chunk.shape[2]))
            if size is not None and size != native_hw:
                chunk = resize(chunk, *size)
            chunks.append(chunk)
    except EpisodeError:
        raise
    except Exception as exc:  # truncated or corrupt data: decord fails on the frames it cannot read
        raise EpisodeError(uri, "video", f"cannot decode {clip} (truncated or corrupt?): {first_line(exc)}") from exc
    finally:
        del reader
    return np.concatenate(chunks), video_fps, num_video_frames, native_hw


def _declared_frame_count(path: Path) -> int | None:
    """The frame count in an mp4/mov sample table, or None for other containers (whose counts can be estimates or
    include dropped frames)."""
    import av

    try:
        with av.open(str(path)) as container:
            if "mov" not in container.format.name.split(","):
                return None
            streams = container.streams.video
            return int(streams[0].frames) if streams and streams[0].frames > 0 else None
    except Exception:  # noqa: BLE001 - decord opened it; the count is only a cross-check
        return None


def resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of (T, H, W, 3) uint8 frames.

    Done here rather than by decord's own ``width``/``height`` options, which fail for some target sizes
    (decord 0.6.0 on this machine: widths <= 24, 48 and 72 give 'DECORDArrayCopyFromTo: The size must exactly match').
    """
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BILINEAR))
                     for f in frames])


def _diagnose(path: Path, exc: BaseException) -> str:
    """A readable reason for a file decord will not open (its own messages are mostly 'Error reading <name>')."""
    try:
        import av

        with av.open(str(path)) as container:
            if not container.streams.video:  # also how FFmpeg sees an mp4 whose track has no samples
                return "no video stream (zero-length video, or no video in the file)"
            num_frames = sum(1 for _ in container.decode(video=0))
            if num_frames == 0:
                return "zero-length video (no frames)"
    except Exception as probe_exc:  # noqa: BLE001 - only used to word the message
        return f"not a readable video ({getattr(probe_exc, 'strerror', None) or first_line(probe_exc)})"
    return first_line(exc)


# -- sidecars --------------------------------------------------------------------------------------------------------


def read_json_sidecar(path: str, uri: str) -> dict[str, Any]:
    try:
        info = json.loads(fileio.read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EpisodeError(uri, "sidecar", f"{name(path)} is not valid JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise EpisodeError(uri, "sidecar", f"{name(path)} must hold a JSON object, got {type(info).__name__}")
    for key in ("task", "robot_type"):
        if key in info and not (isinstance(info[key], str) and (key == "task" or info[key].strip())):
            raise EpisodeError(uri, key, f"{name(path)}: {key} must be a{' non-empty' if key != 'task' else ''} "
                                         f"string, got {info[key]!r}")
    if "fps" in info:
        fps = info["fps"]
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise EpisodeError(uri, "fps", f"{name(path)}: fps must be a positive number, got {fps!r}")
        info["fps"] = float(fps)
    names = info.get("action_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise EpisodeError(uri, "action_names", f"{name(path)}: action_names must be a list of strings")
    unknown = sorted(set(info) - {"task", "fps", "action_names", "robot_type", "intrinsics", "cam_to_world"})
    if unknown:
        logger.info("%s: ignoring unknown keys %s", name(path), unknown)
    return info


def read_actions(path: str, uri: str) -> tuple[np.ndarray, list[str] | None]:
    """(T, A) float32 actions from a .npy (never unpickled) or .csv sidecar, and the CSV header names if any."""
    file = name(path)
    data = fileio.read_bytes(path)
    names = None
    if path.endswith(".npy"):
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:  # object arrays (pickles) are refused here, as are malformed files
            raise EpisodeError(uri, "action", f"{file}: cannot load without pickle: {first_line(exc)}") from exc
        if not isinstance(arr, np.ndarray) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise EpisodeError(uri, "action", f"{file}: expected a numeric array, got dtype "
                               f"{getattr(arr, 'dtype', type(arr).__name__)}")
    else:
        try:
            lines = [r for r in csv.reader(io.StringIO(data.decode("utf-8"))) if r and any(c.strip() for c in r)]
        except UnicodeDecodeError as exc:
            raise EpisodeError(uri, "action", f"{file}: not UTF-8 text") from exc
        if lines and not _is_numeric_row(lines[0]):
            names, lines = [c.strip() for c in lines[0]], lines[1:]
        widths = {len(r) for r in lines}
        if len(widths) > 1:
            raise EpisodeError(uri, "action", f"{file}: rows have different numbers of columns {sorted(widths)}")
        try:
            arr = np.array([[float(c) for c in r] for r in lines], dtype=np.float64).reshape(len(lines), -1)
        except ValueError as exc:
            raise EpisodeError(uri, "action", f"{file}: non-numeric value: {exc}") from exc
    if arr.ndim == 1:
        arr = arr[:, None]  # one action dimension
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise EpisodeError(uri, "action", f"{file}: expected shape (T, A), got {arr.shape}")
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        frame, dim = (int(i) for i in np.argwhere(bad)[0])
        raise EpisodeError(uri, "action", f"{file} has {int(bad.sum())} NaN/inf values (first at row {frame}, "
                           f"column {dim})")
    if names is not None and len(names) != arr.shape[1]:
        raise EpisodeError(uri, "action_names", f"{file}: header has {len(names)} names for {arr.shape[1]} columns")
    return arr, names


def _is_numeric_row(cells: list[str]) -> bool:
    try:
        [float(c) for c in cells]
    except ValueError:
        return False
    return True
