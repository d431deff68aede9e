"""Reading one episode of a LeRobot v3 dataset with lerobot's own readers (used by ``pipeline.stages.ingest_lerobot``).

    features helpers           camera / depth keys and image shapes from ``meta/info.json`` features (no lerobot import)
    stage_remote_episode       a dataset on object storage: ``meta/`` and only this episode's data and video files,
                               copied in blocks to a local directory (the caller's temporary directory)
    hub_episode                a Hub dataset: lerobot downloads this episode's files (root, or its snapshot cache)
    check_episode_files        the episode's data and video files exist where the dataset says (else EpisodeError)
    read_episode               metadata + the episode's parquet rows + each mapped stream decoded once -> Episode

Units: lerobot stores depth as 12-bit log-quantised codes and returns **millimetres** by default (rounded to whole
mm); here lerobot's dequantiser is asked for **metres** directly, so there is no mm rounding and no x1000 to forget.
Code 0 (anything at or below the quantiser's ``depth_min``, including the 0/NaN "no measurement" that the writer
clips there) comes back as 0.0 m = no measurement, following ``episodes.format``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from episodes import Episode, EpisodeError
from episodes import io as fileio
from pipeline.inputs import fetch

VIDEO_BACKEND = "pyav"  # torchcodec needs system FFmpeg libraries; lerobot's pyav path decodes depth as well
FPS_REL_TOLERANCE = 0.01  # video stream rate vs dataset fps
SOURCE = "ingest_lerobot"


@dataclass(frozen=True)
class KeyMap:
    """Which dataset features become which episode streams."""

    cameras: dict[str, str]  # our camera name -> RGB feature key
    depth: dict[str, str]  # our camera name -> depth feature key
    state_key: str | None
    action_key: str | None

    @property
    def visual_keys(self) -> list[str]:
        return list(dict.fromkeys([*self.cameras.values(), *self.depth.values()]))


# -- info.json features ----------------------------------------------------------------------------------------------


def camera_keys(features: dict[str, dict]) -> list[str]:
    """Visual features, stored as videos or images (lerobot's ``camera_keys``)."""
    return [key for key, ft in features.items() if ft.get("dtype") in ("video", "image")]


def depth_keys(features: dict[str, dict]) -> list[str]:
    """Features flagged as depth maps (lerobot's ``depth_keys``, legacy flags included)."""

    def is_depth(ft: dict) -> bool:
        info, video_info = ft.get("info") or {}, ft.get("video_info") or {}
        return bool(info.get("is_depth_map") or info.get("video.is_depth_map")
                    or video_info.get("video.is_depth_map"))

    return [key for key, ft in features.items() if is_depth(ft)]


def depth_camera_name(key: str) -> str:
    name = key.removeprefix("observation.depth.").removeprefix("observation.images.").removeprefix("observation.")
    for suffix in ("_depth", ".depth", "-depth"):
        name = name.removesuffix(suffix)
    return name


def image_shape(feature: dict) -> tuple[int, int, int]:
    """(H, W, C) of an image/video feature, whether it is stored channels-last (v3 default) or channels-first."""
    shape = tuple(int(s) for s in feature["shape"])
    names = feature.get("names") or []
    if len(shape) == 3 and len(names) == 3 and names[0] in ("channel", "channels"):
        return shape[1], shape[2], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1], 1
    return shape  # type: ignore[return-value]


# -- getting the episode's files onto local disk ---------------------------------------------------------------------


def check_episode_files(meta, ep_idx: int, keys: KeyMap, base: str, where: str) -> list[str]:
    """Relative paths of the episode's data file and mapped video files, each checked to exist under ``base``."""
    length = int(meta.episodes[ep_idx]["length"])
    if length == 0:
        raise EpisodeError(where, "length", "zero-length episode (length 0 in meta/episodes)")
    data_file = str(meta.get_data_file_path(ep_idx))
    if not fileio.exists(fileio.join(base, data_file)):
        raise EpisodeError(where, "data", f"data file {fileio.join(base, data_file)} is missing")
    check_parquet(fileio.join(base, data_file), where)
    files = [data_file]
    for key in keys.visual_keys:
        if key in meta.video_keys:
            video = str(meta.get_video_file_path(ep_idx, key))
            if not fileio.exists(fileio.join(base, video)):
                raise EpisodeError(where, key, f"video file {fileio.join(base, video)} is missing")
            files.append(video)
    return list(dict.fromkeys(files))


def check_parquet(path: str, where: str) -> None:
    """The file's parquet footer reads (a corrupt or truncated file is named here, with pyarrow's reason, instead of
    failing later inside the datasets library with a message that names neither)."""
    import pyarrow.parquet as pq

    try:
        with fileio.open_file(path) as f:
            pq.read_metadata(f)
    except Exception as exc:  # noqa: BLE001 - any failure to read it is the file's problem, reported with its path
        raise EpisodeError(where, "data", f"data file {path} is not a readable parquet file "
                                          f"({type(exc).__name__}: {exc})") from exc


def local_metadata(repo_id: str, root: Path):
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

    return LeRobotDatasetMetadata(repo_id, root=root)


def stage_remote_episode(url: str, repo_id: str, ep_idx: int, keys: KeyMap, local_root: Path, where: str):
    """Copy ``meta/`` and this episode's own files of the dataset at ``url`` under ``local_root``; its metadata."""
    fileio.download_dir(fileio.join(url, "meta"), local_root / "meta")
    meta = local_metadata(repo_id, local_root)
    for rel in check_episode_files(meta, ep_idx, keys, url, where):
        fetch(fileio.join(url, rel), local_root / rel)
    return meta


def hub_episode(repo_id: str, root: str | None, revision: str | None, ep_idx: int, tolerance_s: float):
    """Let lerobot download the episode's files from the Hub; return (metadata, local root)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    lds = LeRobotDataset(repo_id, root=root, episodes=[ep_idx], revision=revision, video_backend=VIDEO_BACKEND,
                         tolerance_s=tolerance_s)
    return lds.meta, Path(lds.root)


# -- reading ---------------------------------------------------------------------------------------------------------


def _episode_rows(meta, root: Path, ep_idx: int, columns: list[str], cache_dir: Path) -> dict[str, Any]:
    """The episode's rows of its parquet data file as numpy columns (image columns decoded), read with HF datasets
    and lerobot's feature schema, cached under ``cache_dir``."""
    import datasets
    import pyarrow.dataset as pa_ds
    from lerobot.datasets.feature_utils import get_hf_features_from_features
    from lerobot.utils.utils import SuppressProgressBars

    data_file = root / meta.get_data_file_path(ep_idx)
    with SuppressProgressBars():
        hf = datasets.Dataset.from_parquet(str(data_file), features=get_hf_features_from_features(meta.features),
                                           filters=pa_ds.field("episode_index").isin([ep_idx]),
                                           cache_dir=str(cache_dir))
    if len(hf) == 0:
        return {}
    return hf.with_format("numpy", columns=columns)[:]


def read_episode(meta, root: Path, ep_idx: int, episode_id: str, keys: KeyMap, *, location: str, repo_id: str,
                 tolerance_s: float, cache_dir: Path) -> Episode:
    """One episode of the dataset at local ``root`` (``location`` names it in messages and provenance)."""
    where = f"{location}#episode={ep_idx}"
    fps = float(meta.fps)
    image_cols = [k for k in keys.visual_keys if k in meta.image_keys]
    numeric_cols = ["frame_index", "timestamp", "task_index"] + [
        k for k in (keys.state_key, keys.action_key) if k is not None]
    cols = _episode_rows(meta, root, ep_idx, numeric_cols + image_cols, cache_dir)
    if not cols:
        raise EpisodeError(where, "length", "zero-length episode (no rows in the data files)")
    num_frames = len(cols["frame_index"])
    order = np.argsort(cols["frame_index"], kind="stable")
    if not np.array_equal(cols["frame_index"][order], np.arange(num_frames)):
        raise EpisodeError(where, "frame_index", f"frames are not 0..{num_frames - 1} "
                           f"(got {cols['frame_index'][order][:5].tolist()}...)")
    cols = {k: np.asarray(v)[order] if not isinstance(v, list) else [v[i] for i in order] for k, v in cols.items()}
    for key in keys.visual_keys:
        if key in meta.video_keys:
            _check_stream_fps(root / meta.get_video_file_path(ep_idx, key), fps, key, where)
    timestamps = cols["timestamp"].astype(np.float64).reshape(num_frames)
    _check_timestamps(timestamps, fps, tolerance_s, where)

    rgb, depth_m = {}, {}
    ep_meta = meta.episodes[ep_idx]
    for cam, key in keys.cameras.items():
        frames = _read_visual(meta, root, key, ep_meta, ep_idx, timestamps, cols, tolerance_s, where, is_depth=False)
        _check_image_shape(frames, meta.features[key], f"rgb.{cam}", key, where)
        rgb[cam] = frames
    for cam, key in keys.depth.items():
        frames = _read_visual(meta, root, key, ep_meta, ep_idx, timestamps, cols, tolerance_s, where, is_depth=True)
        _check_image_shape(frames[..., None], meta.features[key], f"depth_m.{cam}", key, where)
        depth_m[cam] = frames

    def vector(key: str | None, field: str) -> np.ndarray | None:
        if key is None:
            return None
        arr = np.asarray(cols[key])
        if arr.dtype == object:
            raise EpisodeError(where, field, f"{key!r} has rows of different lengths")
        arr = arr.astype(np.float32).reshape(num_frames, -1)  # (T, D)
        bad = ~np.isfinite(arr)
        if bad.any():
            frame, dim = (int(i) for i in np.argwhere(bad)[0])
            raise EpisodeError(where, field, f"{key!r} has {int(bad.sum())} NaN/inf values "
                               f"(first at frame {frame}, dim {dim})")
        return arr

    state = vector(keys.state_key, "state")
    action = vector(keys.action_key, "action")
    task_indices = [int(i) for i in np.unique(cols["task_index"])]
    first_task = int(np.asarray(cols["task_index"]).reshape(-1)[0])
    tasks = [str(meta.tasks.iloc[i].name) for i in task_indices] if meta.tasks is not None else []
    task = str(meta.tasks.iloc[first_task].name) if meta.tasks is not None else ""

    episode_meta = {
        "source": SOURCE,
        "source_uri": where,
        "parent": None,
        "seed": None,
        "state_names": _names(meta.features, keys.state_key, state),
        "action_names": _names(meta.features, keys.action_key, action),
        "lerobot": {
            "repo_id": repo_id, "root": location, "episode_index": ep_idx,
            "robot_type": meta.robot_type, "codebase_version": meta.info.codebase_version,
            "camera_keys": dict(keys.cameras), "depth_keys": dict(keys.depth),
            "state_key": keys.state_key, "action_key": keys.action_key,
        },
    }
    if len(tasks) > 1:
        episode_meta["lerobot"]["tasks"] = tasks
    return Episode(episode_id=episode_id, fps=fps, task=task, rgb=rgb, depth_m=depth_m, state=state, action=action,
                   meta=episode_meta)


def _check_timestamps(timestamps: np.ndarray, fps: float, tolerance_s: float, where: str) -> None:
    if len(timestamps) < 2:
        return
    step = np.diff(timestamps)
    off = np.abs(step - 1.0 / fps)
    # timestamps are stored as float32: late in a long episode one float32 step alone can exceed 1e-4 s
    float32_step = float(np.spacing(np.float32(np.abs(timestamps).max())))
    if (off > max(tolerance_s, 2 * float32_step)).any():
        i = int(np.argmax(off))
        raise EpisodeError(where, "timestamp", f"frames are not 1/fps = {1.0 / fps:.6f} s apart: "
                           f"frame {i}->{i + 1} is {step[i]:.6f} s (tolerance {tolerance_s} s); "
                           "the data was not recorded at the dataset fps")


def _read_visual(meta, root: Path, key: str, ep_meta: dict, ep_idx: int, timestamps: np.ndarray, cols: dict,
                 tolerance_s: float, where: str, is_depth: bool) -> np.ndarray:
    """RGB (T, H, W, 3) uint8 or depth (T, H, W) float32 metres of one stream of one episode."""
    feature = meta.features[key]
    if key in meta.image_keys:  # stored as images inside the parquet files
        frames = np.stack([np.asarray(f) for f in cols[key]])
        if not is_depth:
            return frames.astype(np.uint8) if frames.dtype != np.uint8 else frames
        frames = frames.reshape(frames.shape[0], frames.shape[1], frames.shape[2])
        unit = (feature.get("info") or {}).get("depth_unit")
        if unit is None:
            unit = "m" if np.issubdtype(frames.dtype, np.floating) else "mm"
        depth = frames.astype(np.float32)
        return depth / 1000.0 if unit == "mm" else depth

    from lerobot.datasets.video_utils import FrameTimestampError, decode_video_frames

    video_path = root / meta.get_video_file_path(ep_idx, key)
    from_ts = float(ep_meta[f"videos/{key}/from_timestamp"])
    query = [from_ts + float(t) for t in timestamps]
    try:
        frames = decode_video_frames(video_path, query, tolerance_s, VIDEO_BACKEND, return_uint8=True,
                                     is_depth=is_depth)
    except FrameTimestampError as exc:
        first_line = str(exc).splitlines()[0]
        raise EpisodeError(where, key, f"{video_path.name}: frames do not line up with the timestamps: {first_line}")
    if not is_depth:
        return frames.permute(0, 2, 3, 1).contiguous().numpy()  # (T, 3, H, W) -> (T, H, W, 3) uint8
    return dequantize_metres(frames.numpy(), feature)


def dequantize_metres(codes: np.ndarray, feature: dict) -> np.ndarray:
    """12-bit depth codes (T, 1, H, W) -> (T, H, W) float32 metres, with lerobot's own quantiser parameters."""
    from lerobot.configs.video import (DEFAULT_DEPTH_MAX, DEFAULT_DEPTH_MIN, DEFAULT_DEPTH_SHIFT,
                                       DEFAULT_DEPTH_USE_LOG)
    from lerobot.datasets.depth_utils import dequantize_depth

    info = feature.get("info") or {}

    def param(name: str, default):
        value = info.get(f"video.{name}")
        return default if value is None else value

    depth = dequantize_depth(codes, depth_min=float(param("depth_min", DEFAULT_DEPTH_MIN)),
                             depth_max=float(param("depth_max", DEFAULT_DEPTH_MAX)),
                             shift=float(param("shift", DEFAULT_DEPTH_SHIFT)),
                             use_log=bool(param("use_log", DEFAULT_DEPTH_USE_LOG)), output_unit="m",
                             output_tensor=False)  # (T, 1, H, W) float32 metres
    depth = np.ascontiguousarray(depth[:, 0], dtype=np.float32)
    depth[codes[:, 0] == 0] = 0.0  # clipped to depth_min by the writer: no measurement
    return depth


def _check_stream_fps(video_path: Path, fps: float, key: str, where: str) -> None:
    import av

    try:
        with av.open(str(video_path)) as container:
            if not container.streams.video:
                raise EpisodeError(where, key, f"{video_path.name} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    except av.error.FFmpegError as exc:
        raise EpisodeError(where, key, f"cannot open {video_path.name}: {exc}") from exc
    if rate is None:
        return
    video_fps = float(rate)
    if not math.isfinite(video_fps) or abs(video_fps - fps) > FPS_REL_TOLERANCE * fps:
        raise EpisodeError(where, "fps", f"video stream {key!r} ({video_path.name}) runs at {video_fps:g} fps "
                           f"but the dataset declares {fps:g} fps")


def _check_image_shape(frames: np.ndarray, feature: dict, field: str, key: str, where: str) -> None:
    expected = image_shape(feature)
    got = tuple(frames.shape[1:])
    if got != tuple(expected):
        raise EpisodeError(where, field, f"{key!r} decodes to frames of shape {got} (H, W, C) but the dataset "
                           f"declares {tuple(expected)}")


def _names(features: dict, key: str | None, arr: np.ndarray | None) -> list[str] | None:
    """Flat per-dimension names of a vector feature (lists, or dicts of lists as in older datasets), if they fit."""
    if key is None or arr is None:
        return None
    names = features[key].get("names")
    if isinstance(names, dict):
        names = [n for part in names.values() if isinstance(part, list) for n in part]
    if not isinstance(names, list) or len(names) != arr.shape[1]:
        return None
    return [str(n) for n in names]
