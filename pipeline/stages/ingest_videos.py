"""Source stage ``ingest_videos``: a folder or glob of video files (local or any fsspec URL) -> episodes.

    - name: ingest_videos
      params:
        path: data/clips                    # a directory, a glob (data/**/*.mp4, s3://bucket/clips/*.mp4) or one file
        height: 128                         # optional resize (both or neither)
        width: 128
        frame_stride: 2                     # keep every 2nd frame (episode fps = video fps / 2)
        max_frames: 300                     # keep at most this many frames (after the stride)
        task: "pick up the cup"             # default task text; <stem>.json may override it

Sidecars next to ``<stem>.<ext>``, all optional:

    <stem>.actions.npy   (T, A) numeric, loaded with allow_pickle=False; or
    <stem>.actions.csv   T rows of A numbers, optionally after one header row of action names
    <stem>.json          {"task": str, "fps": number, "action_names": [str, ...]}

T is the number of frames kept by ``frame_stride`` (every stride-th frame of the video), before ``max_frames``; row t
is the action between kept frames t and t+1. A clip without an actions sidecar becomes an action-less episode
(``action`` None), which is normal input.

Fan-out 1:1: the driver lists the files (an empty match is a config error), then one Ray task per file decodes it
with decord, reads its sidecars and saves the episode. Bad input (unreadable, truncated or empty video, sidecar with
NaN/inf, wrong length, fps contradicting the video) quarantines that clip with a reason naming the file and field.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import math
import re
import traceback
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from episodes import Episode, EpisodeError, safe_id
from pipeline.stage import QUARANTINED, Resources, StageContext, StageParams, error_reason, register_stage, row

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

STAGE = "ingest_videos"
FPS_REL_TOLERANCE = 0.01  # video frame rate vs the sidecar's declared fps
DECODE_CHUNK_FRAMES = 64  # frames decoded (and resized) at a time
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class IngestVideosParams(StageParams):
    path: str = Field(description="directory, glob or single video file; local path or fsspec URL (s3://, gs://...)")
    extensions: list[str] = Field(["mp4", "avi", "mkv", "webm", "mov"], min_length=1)
    recursive: bool = Field(True, description="for a directory: also look in subdirectories")
    height: int | None = Field(None, ge=1, description="resize to this height (set width too)")
    width: int | None = Field(None, ge=1, description="resize to this width (set height too)")
    max_frames: int | None = Field(None, ge=1, description="keep at most this many frames (after frame_stride)")
    frame_stride: int = Field(1, ge=1, description="keep every n-th frame; the episode fps is divided by n")
    camera: str = Field("front", min_length=1)
    task: str = Field("", description="task text for clips whose <stem>.json gives none")
    resources: Resources = Resources(num_cpus=1)

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, extensions: list[str]) -> list[str]:
        out = [e.strip().lower().lstrip(".") for e in extensions]
        if not all(out):
            raise ValueError(f"empty extension in {extensions}")
        return out

    @field_validator("camera")
    @classmethod
    def _camera_name(cls, camera: str) -> str:
        if "/" in camera:
            raise ValueError(f"camera name must not contain '/', got {camera!r}")
        return camera

    @field_validator("path")
    @classmethod
    def _local_path_exists(cls, path: str) -> str:
        if _URL.match(path):
            return path  # remote: listed (and checked) when the stage is built
        local = path.removeprefix("file://")
        base = Path(_static_prefix(local)).expanduser()
        if not base.exists():
            what = "the directory of the glob" if glob.has_magic(local) else "path"
            raise ValueError(f"{what} {str(base)!r} does not exist")
        return path

    @model_validator(mode="after")
    def _resize_needs_both(self) -> IngestVideosParams:
        if (self.height is None) != (self.width is None):
            raise ValueError(f"set both height and width to resize, or neither (got height={self.height}, "
                             f"width={self.width})")
        return self


@dataclass(frozen=True)
class _Clip:
    """One input video as the task receives it."""

    episode_id: str
    uri: str  # what to open (a local path, or a protocol-qualified URL)
    name: str  # file name, for messages


@register_stage(STAGE, kind="source", params=IngestVideosParams)
def ingest_videos(ds: ray.data.Dataset | None, params: IngestVideosParams, ctx: StageContext) -> ray.data.Dataset:
    """Decode a folder/glob of videos (with optional action sidecars) into episodes; clips without actions stay."""
    import ray.data

    clips = list_clips(params)
    logger.info("%s: %d videos under %s", STAGE, len(clips), params.path)
    items = [{"episode_id": c.episode_id, "uri": c.uri, "name": c.name} for c in clips]
    res = params.resources
    compute = ray.data.TaskPoolStrategy(size=res.concurrency) if res.concurrency else None
    return ray.data.from_items(items, override_num_blocks=len(items)).map(
        _ingest_row, fn_kwargs={"params": params, "ctx": ctx}, num_cpus=res.num_cpus,
        num_gpus=res.num_gpus or None, compute=compute)


# -- driver side: listing ---------------------------------------------------------------------------------------------


def list_clips(params: IngestVideosParams) -> list[_Clip]:
    """The video files under ``params.path``, sorted, each with a unique sanitised episode id (``video-<stem>``)."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, fs_path = fsspec.core.url_to_fs(params.path)
    if glob.has_magic(fs_path):
        paths = fs.glob(fs_path)
    elif fs.isdir(fs_path):
        paths = fs.find(fs_path) if params.recursive else fs.ls(fs_path, detail=False)
    elif fs.isfile(fs_path):
        paths = [fs_path]
    else:
        raise FileNotFoundError(f"{STAGE}: path {params.path!r} does not exist")
    extensions = set(params.extensions)
    paths = sorted(p for p in paths if PurePosixPath(p).suffix.lower().lstrip(".") in extensions)
    if not paths:
        raise FileNotFoundError(f"{STAGE}: no video files with extensions {sorted(extensions)} match "
                                f"{params.path!r}")
    local = isinstance(fs, LocalFileSystem)
    clips, used = [], set()
    for p in paths:
        base = "video-" + safe_id(PurePosixPath(p).stem, "clip")
        episode_id, n = base, 1
        while episode_id in used:
            n += 1
            episode_id = f"{base}-{n}"
        used.add(episode_id)
        clips.append(_Clip(episode_id=episode_id, uri=p if local else fs.unstrip_protocol(p),
                           name=PurePosixPath(p).name))
    return clips


def _static_prefix(path: str) -> str:
    """The directory part of a glob before its first wildcard (the path itself when there is none)."""
    if not glob.has_magic(path):
        return path
    parts = []
    for part in Path(path).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."


# -- task side: one clip -----------------------------------------------------------------------------------------------


def _ingest_row(item: dict[str, Any], params: IngestVideosParams, ctx: StageContext) -> dict[str, str]:
    clip = _Clip(**item)
    out_path = ctx.episode_path(clip.episode_id)
    if ctx.resume and out_path.exists():
        return row(clip.episode_id, path=str(out_path), stage=STAGE, source=STAGE)
    try:
        episode = read_clip(clip, params)
        episode.validate()
        episode.save(out_path)
        return row(clip.episode_id, path=str(out_path), stage=STAGE, source=STAGE)
    except EpisodeError as exc:
        logger.warning("%s quarantined %s: %s", STAGE, clip.episode_id, exc)
        return row(clip.episode_id, status=QUARANTINED, reason=error_reason(exc), stage=STAGE, source=STAGE)
    except Exception as exc:  # a bad clip is recorded, not fatal; the traceback goes to the log
        logger.warning("%s quarantined %s: %s\n%s", STAGE, clip.episode_id, exc, traceback.format_exc())
        return row(clip.episode_id, status=QUARANTINED, reason=f"{clip.uri}: {error_reason(exc)}", stage=STAGE,
                   source=STAGE)


def read_clip(clip: _Clip, params: IngestVideosParams) -> Episode:
    """Decode one video and its sidecars into an Episode (not yet validated or saved)."""
    import fsspec

    fs, fs_path = fsspec.core.url_to_fs(clip.uri)
    sidecar = _Sidecars.find(fs, fs_path, clip.uri)
    info = _read_json_sidecar(fs, sidecar.json, clip) if sidecar.json else {}
    action, csv_names = _read_actions(fs, sidecar.actions, clip) if sidecar.actions else (None, None)

    frames, video_fps, num_video_frames, native_hw = _decode(fs, fs_path, clip, params)  # (T, H, W, 3) uint8
    declared_fps = info.get("fps")
    if declared_fps is not None and (not math.isfinite(video_fps) or video_fps <= 0):
        video_fps = float(declared_fps)  # the container has no usable rate: trust the sidecar
    elif declared_fps is not None and abs(video_fps - declared_fps) > FPS_REL_TOLERANCE * declared_fps:
        raise EpisodeError(clip.uri, "fps", f"the video runs at {video_fps:g} fps but {_name(sidecar.json)} "
                           f"declares {declared_fps:g} fps")
    if not math.isfinite(video_fps) or video_fps <= 0:
        raise EpisodeError(clip.uri, "fps", f"the video reports no frame rate ({video_fps!r}); give one as "
                           f"\"fps\" in {PurePosixPath(fs_path).stem}.json")

    num_kept = len(range(0, num_video_frames, params.frame_stride))
    action_names = info.get("action_names")
    if action is not None:
        action_names = action_names or csv_names
        if action.shape[0] != num_kept:
            hint = ""
            if params.frame_stride > 1 and action.shape[0] == num_video_frames:
                hint = (f"; it has one row per video frame, but with frame_stride={params.frame_stride} it needs one "
                        "row per kept frame")
            raise EpisodeError(clip.uri, "action", f"{_name(sidecar.actions)} has {action.shape[0]} rows but the "
                               f"video has {num_kept} frames (of {num_video_frames}, "
                               f"frame_stride={params.frame_stride}){hint}")
        action = action[: frames.shape[0]]  # max_frames
        if action_names is not None and len(action_names) != action.shape[1]:
            raise EpisodeError(clip.uri, "action_names", f"{len(action_names)} names for {action.shape[1]} action "
                               "dimensions")
    elif action_names is not None:
        logger.info("%s: %s has action_names but no actions sidecar; ignored", STAGE, clip.uri)
        action_names = None

    meta = {
        "source": STAGE,
        "source_uri": clip.uri,
        "parent": None,
        "seed": None,
        "state_names": None,
        "action_names": list(action_names) if action_names is not None else None,
        "video": {"fps": video_fps, "num_frames": num_video_frames, "height": native_hw[0], "width": native_hw[1],
                  "frame_stride": params.frame_stride,
                  "sidecars": [_name(p) for p in (sidecar.actions, sidecar.json) if p]},
    }
    return Episode(episode_id=clip.episode_id, fps=video_fps / params.frame_stride,
                   task=str(info.get("task", params.task)), rgb={params.camera: frames}, action=action, meta=meta)


@dataclass(frozen=True)
class _Sidecars:
    actions: str | None
    json: str | None

    @classmethod
    def find(cls, fs, video_path: str, uri: str) -> _Sidecars:
        stem = str(PurePosixPath(video_path).with_suffix(""))
        npy, csv_path, json_path = f"{stem}.actions.npy", f"{stem}.actions.csv", f"{stem}.json"
        has_npy, has_csv = fs.exists(npy), fs.exists(csv_path)
        if has_npy and has_csv:
            raise EpisodeError(uri, "action", f"both {_name(npy)} and {_name(csv_path)} exist; keep one")
        actions = npy if has_npy else csv_path if has_csv else None
        return cls(actions=actions, json=json_path if fs.exists(json_path) else None)


def _name(path: str | None) -> str:
    return PurePosixPath(path).name if path else ""


def _decode(fs, fs_path: str, clip: _Clip, params: IngestVideosParams):
    """Decode the kept frames: (T, H, W, 3) uint8, the video's fps, its frame count and its native (H, W).

    Frames are decoded (and resized) in chunks, so a long clip at full resolution never sits in memory whole.
    """
    import decord
    from fsspec.implementations.local import LocalFileSystem

    size = fs.size(fs_path)
    if not size:
        raise EpisodeError(clip.uri, "video", "empty file (0 bytes)")
    if isinstance(fs, LocalFileSystem):
        source: Any = fs_path
    else:
        source = io.BytesIO(fs.cat_file(fs_path))  # decord reads a file object whole into memory anyway
    num_threads = max(1, int(params.resources.num_cpus))  # decode on the CPUs Ray gave this task, not all of them
    try:
        reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=num_threads)
        num_video_frames = len(reader)
        video_fps = float(reader.get_avg_fps())
    except Exception as exc:  # decord raises RuntimeError/DECORDError for anything it cannot open
        raise EpisodeError(clip.uri, "video", f"cannot open {clip.name}: {_diagnose(fs, fs_path, exc)}") from exc
    if num_video_frames == 0:
        raise EpisodeError(clip.uri, "video", f"zero-length video {clip.name} (no frames)")
    declared = _declared_frame_count(source)
    if declared is not None and num_video_frames < declared:  # decord silently drops the frames past the cut
        raise EpisodeError(clip.uri, "video", f"truncated: {clip.name} declares {declared} frames but only "
                           f"{num_video_frames} are in the file")
    indices = list(range(0, num_video_frames, params.frame_stride))[: params.max_frames]
    chunks, native_hw = [], None
    try:
        for start in range(0, len(indices), DECODE_CHUNK_FRAMES):
            batch = indices[start:start + DECODE_CHUNK_FRAMES]
            chunk = reader.get_batch(batch).asnumpy()  # (t, H, W, 3) uint8
            if chunk.ndim != 4 or chunk.shape[0] != len(batch) or chunk.shape[-1] != 3:
                raise EpisodeError(clip.uri, "video", f"decoded {tuple(chunk.shape)} for {len(batch)} frames of "
                                   f"{clip.name}; expected (T, H, W, 3)")
            native_hw = native_hw or (int(chunk.shape[1]), int(chunk.shape[2]))
            if params.height is not None and (params.height, params.width) != native_hw:
                chunk = _resize(chunk, params.height, params.width)
            chunks.append(chunk)
    except EpisodeError:
        raise
    except Exception as exc:  # truncated or corrupt data: decord fails on the frames it cannot read
        raise EpisodeError(clip.uri, "video", f"cannot decode {clip.name} (truncated or corrupt?): "
                           f"{_first_line(exc)}") from exc
    finally:
        del reader
    return np.concatenate(chunks), video_fps, num_video_frames, native_hw


def _declared_frame_count(source: Any) -> int | None:
    """The frame count in an mp4/mov sample table, or None for other containers (whose counts can be estimates or
    include dropped frames)."""
    import av

    try:
        if hasattr(source, "seek"):
            source.seek(0)
        with av.open(source) as container:
            if "mov" not in container.format.name.split(","):
                return None
            streams = container.streams.video
            return int(streams[0].frames) if streams and streams[0].frames > 0 else None
    except Exception:  # noqa: BLE001 - decord opened it; the count is only a cross-check
        return None


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of (T, H, W, 3) uint8 frames.

    Done here rather than by decord's own ``width``/``height`` options, which fail for some target sizes
    (decord 0.6.0 on this machine: widths <= 24, 48 and 72 give 'DECORDArrayCopyFromTo: The size must exactly match').
    """
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BILINEAR))
                     for f in frames])


def _diagnose(fs, fs_path: str, exc: BaseException) -> str:
    """A readable reason for a file decord will not open (its own messages are mostly 'Error reading <name>')."""
    try:
        import av

        with fs.open(fs_path, "rb") as f, av.open(f) as container:
            if not container.streams.video:  # also how FFmpeg sees an mp4 whose track has no samples
                return "no video stream (zero-length video, or no video in the file)"
            num_frames = sum(1 for _ in container.decode(video=0))
            if num_frames == 0:
                return "zero-length video (no frames)"
    except Exception as probe_exc:  # noqa: BLE001 - only used to word the message
        return f"not a readable video ({getattr(probe_exc, 'strerror', None) or _first_line(probe_exc)})"
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def _read_json_sidecar(fs, path: str, clip: _Clip) -> dict[str, Any]:
    try:
        info = json.loads(fs.cat_file(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EpisodeError(clip.uri, "sidecar", f"{_name(path)} is not valid JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise EpisodeError(clip.uri, "sidecar", f"{_name(path)} must hold a JSON object, got {type(info).__name__}")
    if "task" in info and not isinstance(info["task"], str):
        raise EpisodeError(clip.uri, "task", f"{_name(path)}: task must be a string, got {info['task']!r}")
    if "fps" in info:
        fps = info["fps"]
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise EpisodeError(clip.uri, "fps", f"{_name(path)}: fps must be a positive number, got {fps!r}")
        info["fps"] = float(fps)
    names = info.get("action_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise EpisodeError(clip.uri, "action_names", f"{_name(path)}: action_names must be a list of strings")
    unknown = sorted(set(info) - {"task", "fps", "action_names"})
    if unknown:
        logger.info("%s: %s: ignoring unknown keys %s", STAGE, _name(path), unknown)
    return info


def _read_actions(fs, path: str, clip: _Clip) -> tuple[np.ndarray, list[str] | None]:
    """(T, A) float32 actions from a .npy (never unpickled) or .csv sidecar, and the CSV header names if any."""
    name = _name(path)
    data = fs.cat_file(path)
    names = None
    if path.endswith(".npy"):
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:  # object arrays (pickles) are refused here, as are malformed files
            raise EpisodeError(clip.uri, "action", f"{name}: cannot load without pickle: {_first_line(exc)}") from exc
        if not isinstance(arr, np.ndarray) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise EpisodeError(clip.uri, "action", f"{name}: expected a numeric array, got dtype "
                               f"{getattr(arr, 'dtype', type(arr).__name__)}")
    else:
        try:
            lines = [r for r in csv.reader(io.StringIO(data.decode("utf-8"))) if r and any(c.strip() for c in r)]
        except UnicodeDecodeError as exc:
            raise EpisodeError(clip.uri, "action", f"{name}: not UTF-8 text") from exc
        if lines and not _is_numeric_row(lines[0]):
            names, lines = [c.strip() for c in lines[0]], lines[1:]
        widths = {len(r) for r in lines}
        if len(widths) > 1:
            raise EpisodeError(clip.uri, "action", f"{name}: rows have different numbers of columns {sorted(widths)}")
        try:
            arr = np.array([[float(c) for c in r] for r in lines], dtype=np.float64).reshape(len(lines), -1)
        except ValueError as exc:
            raise EpisodeError(clip.uri, "action", f"{name}: non-numeric value: {exc}") from exc
    if arr.ndim == 1:
        arr = arr[:, None]  # one action dimension
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise EpisodeError(clip.uri, "action", f"{name}: expected shape (T, A), got {arr.shape}")
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        frame, dim = (int(i) for i in np.argwhere(bad)[0])
        raise EpisodeError(clip.uri, "action", f"{name} has {int(bad.sum())} NaN/inf values (first at row {frame}, "
                           f"column {dim})")
    if names is not None and len(names) != arr.shape[1]:
        raise EpisodeError(clip.uri, "action_names", f"{name}: header has {len(names)} names for {arr.shape[1]} "
                           "columns")
    return arr, names


def _is_numeric_row(cells: list[str]) -> bool:
    try:
        [float(c) for c in cells]
    except ValueError:
        return False
    return True
