"""Source stage ``ingest_lerobot``: a LeRobot v3 dataset (local ``root``, or ``repo_id`` on the Hub) -> episodes.

    - name: ingest_lerobot
      params:
        root: data/koch_pick_place          # local dataset directory (meta/info.json inside)
        episodes: [0, 1, 2]                 # default: all
        cameras: {front: observation.images.front}     # default: every observation.images.* stream
        depth: {front: observation.depth.front}         # default: every is_depth_map stream, paired by name
        state_key: observation.state        # null = ignore; the default may be absent from the dataset
        action_key: action                  # null = ignore; the default may be absent (action-less data)

Fan-out 1:1: the driver reads the metadata, checks the key mapping against the dataset's features (config errors
raise here, before any task starts) and lists the episodes; then one Ray task per episode opens the dataset with
lerobot's own ``LeRobotDataset(repo_id, root, episodes=[i])`` (parquet columns), decodes each of that episode's video
streams once with lerobot's pyav decoder, converts to an ``Episode`` and saves it. A bad episode becomes a
quarantined row naming the episode and field; the others go on.

Units: lerobot stores depth as 12-bit log-quantised codes and returns **millimetres** by default (rounded to whole
mm); this stage asks lerobot's dequantiser for **metres** directly, so there is no mm rounding and no x1000 to forget.
Code 0 (anything at or below the quantiser's ``depth_min``, including the 0/NaN "no measurement" that the writer
clips there) comes back as 0.0 m = no measurement, following ``pipeline.episode``.
"""

from __future__ import annotations

import logging
import math
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from episodes import Episode, EpisodeError, safe_id
from pipeline.stage import QUARANTINED, Resources, StageContext, StageParams, error_reason, register_stage, row

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

STAGE = "ingest_lerobot"
DEFAULT_STATE_KEY = "observation.state"
DEFAULT_ACTION_KEY = "action"
VIDEO_BACKEND = "pyav"  # torchcodec needs system FFmpeg libraries; lerobot's pyav path decodes depth as well
FPS_REL_TOLERANCE = 0.01  # video stream rate vs dataset fps


class IngestLeRobotParams(StageParams):
    repo_id: str | None = Field(None, description="Hub dataset id, e.g. lerobot/pusht; used when root does not exist")
    root: str | None = Field(None, description="local LeRobot v3 dataset directory (or download target for repo_id)")
    revision: str | None = Field(None, description="Hub revision (branch, tag, commit); default: lerobot's tag")
    episodes: list[int] | None = Field(None, description="episode indices to ingest; default: all")
    cameras: dict[str, str] | None = Field(None, description="our camera name -> dataset key; default: auto-detect")
    depth: dict[str, str] | None = Field(None, description="our camera name -> depth key; default: auto-detect")
    state_key: str | None = DEFAULT_STATE_KEY
    action_key: str | None = DEFAULT_ACTION_KEY
    tolerance_s: float = Field(1e-4, gt=0, description="timestamp tolerance for frame lookup and fps checks")
    resources: Resources = Resources(num_cpus=1)

    @field_validator("root")
    @classmethod
    def _root_is_a_local_dataset(cls, root: str | None, info: ValidationInfo) -> str | None:
        if root is None:
            return None
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", root):
            raise ValueError(f"root must be a local directory, got the URL {root!r}; use repo_id for the Hub")
        if info.data.get("repo_id") is None:  # nothing to download: the dataset must be here
            path = Path(root).expanduser()
            if not path.is_dir():
                raise ValueError(f"{path} does not exist or is not a directory (set repo_id to download it there)")
            if not (path / "meta" / "info.json").is_file():
                raise ValueError(f"{path} is not a LeRobot dataset (no meta/info.json)")
        return root

    @field_validator("episodes")
    @classmethod
    def _episodes_valid(cls, episodes: list[int] | None) -> list[int] | None:
        if episodes is None:
            return None
        if not episodes:
            raise ValueError("empty list; leave episodes out (null) to ingest every episode")
        negative = [e for e in episodes if e < 0]
        if negative:
            raise ValueError(f"episode indices must be >= 0, got {negative}")
        if len(set(episodes)) != len(episodes):
            raise ValueError(f"duplicate episode indices in {episodes}")
        return episodes

    @field_validator("cameras", "depth")
    @classmethod
    def _mapping_valid(cls, mapping: dict[str, str] | None) -> dict[str, str] | None:
        if mapping is None:
            return None
        for name, key in mapping.items():
            if not name or "/" in name:
                raise ValueError(f"camera name must be non-empty without '/', got {name!r}")
            if not key:
                raise ValueError(f"camera {name!r}: empty dataset key")
        return mapping

    @model_validator(mode="after")
    def _source_given(self) -> IngestLeRobotParams:
        if self.root is None and self.repo_id is None:
            raise ValueError("give root (a local LeRobot dataset directory) or repo_id (a Hub dataset)")
        if self.cameras is not None and self.depth is not None:
            unknown = sorted(set(self.depth) - set(self.cameras))
            if unknown:
                raise ValueError(f"depth names cameras {unknown} that are not in cameras {sorted(self.cameras)}")
        return self


@dataclass(frozen=True)
class _Plan:
    """Everything a task needs, resolved once on the driver (small and picklable)."""

    dataset_name: str
    repo_id: str
    root_arg: str | None  # what LeRobotDataset gets as root (None = Hub snapshot cache)
    location: str  # for source_uri: the local root or hf://datasets/<repo_id>
    local: bool  # True = never download; missing files quarantine the episode
    revision: str | None
    cameras: dict[str, str]
    depth: dict[str, str]
    state_key: str | None
    action_key: str | None
    tolerance_s: float


@register_stage(STAGE, kind="source", params=IngestLeRobotParams)
def ingest_lerobot(ds: ray.data.Dataset | None, params: IngestLeRobotParams, ctx: StageContext) -> ray.data.Dataset:
    """Read a LeRobot v3 dataset (local or Hub) into episodes: RGB, metric depth, state, action, task."""
    import ray.data

    meta, plan = _plan(params)
    episodes = params.episodes if params.episodes is not None else list(range(meta.total_episodes))
    missing = [e for e in episodes if e >= meta.total_episodes]
    if missing:
        raise ValueError(f"{STAGE}: episodes {missing} do not exist in {plan.location} "
                         f"({meta.total_episodes} episodes, indices 0..{meta.total_episodes - 1})")
    if not episodes:
        raise ValueError(f"{STAGE}: {plan.location} has no episodes")
    logger.info("%s: %d episodes from %s, cameras %s, depth %s, state %s, action %s", STAGE, len(episodes),
                plan.location, plan.cameras, plan.depth, plan.state_key, plan.action_key)

    items = [{"episode_index": int(e)} for e in episodes]
    res = params.resources
    compute = ray.data.TaskPoolStrategy(size=res.concurrency) if res.concurrency else None
    return ray.data.from_items(items, override_num_blocks=len(items)).map(
        _ingest_row, fn_kwargs={"plan": plan, "ctx": ctx}, num_cpus=res.num_cpus, num_gpus=res.num_gpus or None,
        compute=compute)


# -- driver side: metadata and key mapping ----------------------------------------------------------------------------


def _plan(params: IngestLeRobotParams):
    """Load the dataset's metadata and resolve the key mapping; raise ValueError for any config problem."""
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

    root = Path(params.root).expanduser().resolve() if params.root else None
    local = root is not None and root.is_dir()
    if root is not None and not local and params.repo_id is None:
        raise FileNotFoundError(f"{STAGE}: root {root} does not exist (set repo_id to download the dataset there)")
    name = safe_id(params.repo_id.split("/")[-1] if params.repo_id else root.name, "lerobot")
    repo_id = params.repo_id or f"local/{name}"
    location = str(root) if local else f"hf://datasets/{repo_id}"
    if local and not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"{STAGE}: {root} is not a LeRobot dataset (no meta/info.json)")
    meta = LeRobotDatasetMetadata(repo_id, root=root, revision=params.revision)

    features = meta.features
    label = f"LeRobot dataset {location}"
    depth_keys = set(meta.depth_keys)
    rgb_keys = [k for k in meta.camera_keys if k not in depth_keys]

    def check_key(key: str, what: str) -> None:
        if key not in features:
            raise ValueError(f"{STAGE}: {what} {key!r} is not a feature of {label}; "
                             f"its features are {sorted(features)}")

    if params.cameras is None:
        cameras = {}
        for key in rgb_keys:
            cam = key.removeprefix("observation.images.").removeprefix("observation.")
            if cam in cameras:
                raise ValueError(f"{STAGE}: {label}: keys {cameras[cam]!r} and {key!r} both map to camera {cam!r}; "
                                 "set cameras explicitly")
            cameras[cam] = key
        if not cameras:
            raise ValueError(f"{STAGE}: {label} has no RGB camera stream (camera keys: {meta.camera_keys}); "
                             "set cameras: {name: key}")
    else:
        cameras = dict(params.cameras)
        for cam, key in cameras.items():
            check_key(key, f"cameras.{cam}")
            if key not in meta.camera_keys or key in depth_keys:
                raise ValueError(f"{STAGE}: cameras.{cam}: {key!r} in {label} is not an RGB image/video stream "
                                 f"(dtype {features[key]['dtype']!r}); RGB streams: {rgb_keys}")

    if params.depth is None:
        depth = {}
        for key in sorted(depth_keys):
            cam = _depth_camera_name(key)
            if cam in cameras and cam not in depth:
                depth[cam] = key
            else:
                logger.warning("%s: %s: depth stream %r has no matching RGB camera (cameras %s); skipped, "
                               "map it with depth: {camera: key}", STAGE, label, key, sorted(cameras))
    else:
        depth = dict(params.depth)
        for cam, key in depth.items():
            check_key(key, f"depth.{cam}")
            if key not in depth_keys:
                raise ValueError(f"{STAGE}: depth.{cam}: {key!r} in {label} is not a depth map (its info has no "
                                 f"is_depth_map); depth streams: {sorted(depth_keys)}")
            if cam not in cameras:
                raise ValueError(f"{STAGE}: depth.{cam}: no RGB camera {cam!r} (cameras: {sorted(cameras)})")
    for cam, key in depth.items():
        rgb_hw = _image_shape(features[cameras[cam]])[:2]
        depth_hw = _image_shape(features[key])[:2]
        if rgb_hw != depth_hw:
            raise ValueError(f"{STAGE}: {label}: depth {key!r} is {depth_hw[0]}x{depth_hw[1]} but camera "
                             f"{cameras[cam]!r} is {rgb_hw[0]}x{rgb_hw[1]}; they must match")

    def vector_key(value: str | None, field: str, default: str) -> str | None:
        if value is None:
            return None
        if value not in features:
            if field not in params.model_fields_set and value == default:
                logger.info("%s: %s has no %r; episodes get %s=None", STAGE, label, value, field.removesuffix("_key"))
                return None
            check_key(value, field)
        if features[value]["dtype"] in ("image", "video", "string", "language"):
            raise ValueError(f"{STAGE}: {field} {value!r} in {label} is a {features[value]['dtype']} feature, "
                             "not a numeric vector")
        return value

    plan = _Plan(dataset_name=name, repo_id=repo_id, root_arg=str(root) if root else None, location=location,
                 local=local, revision=params.revision, cameras=cameras, depth=depth,
                 state_key=vector_key(params.state_key, "state_key", DEFAULT_STATE_KEY),
                 action_key=vector_key(params.action_key, "action_key", DEFAULT_ACTION_KEY),
                 tolerance_s=params.tolerance_s)
    return meta, plan


def _depth_camera_name(key: str) -> str:
    name = key.removeprefix("observation.depth.").removeprefix("observation.images.").removeprefix("observation.")
    for suffix in ("_depth", ".depth", "-depth"):
        name = name.removesuffix(suffix)
    return name


def _image_shape(feature: dict) -> tuple[int, int, int]:
    """(H, W, C) of an image/video feature, whether it is stored channels-last (v3 default) or channels-first."""
    shape = tuple(int(s) for s in feature["shape"])
    names = feature.get("names") or []
    if len(shape) == 3 and len(names) == 3 and names[0] in ("channel", "channels"):
        return shape[1], shape[2], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1], 1
    return shape  # type: ignore[return-value]


# -- task side: one episode --------------------------------------------------------------------------------------------


def _ingest_row(item: dict[str, Any], plan: _Plan, ctx: StageContext) -> dict[str, str]:
    ep_idx = int(item["episode_index"])
    episode_id = f"{plan.dataset_name}-ep{ep_idx:06d}"
    out_path = ctx.episode_path(episode_id)
    if ctx.resume and out_path.exists():
        return row(episode_id, path=str(out_path), stage=STAGE, source=STAGE)
    try:
        episode = _read_episode(plan, ep_idx, episode_id)
        episode.validate()
        episode.save(out_path)
        return row(episode_id, path=str(out_path), stage=STAGE, source=STAGE)
    except EpisodeError as exc:
        logger.warning("%s quarantined %s: %s", STAGE, episode_id, exc)
        return row(episode_id, status=QUARANTINED, reason=error_reason(exc), stage=STAGE, source=STAGE)
    except Exception as exc:  # a bad episode is recorded, not fatal; the traceback goes to the log
        logger.warning("%s quarantined %s: %s\n%s", STAGE, episode_id, exc, traceback.format_exc())
        reason = f"{plan.location} episode {ep_idx}: {error_reason(exc)}"
        return row(episode_id, status=QUARANTINED, reason=reason, stage=STAGE, source=STAGE)


def _read_episode(plan: _Plan, ep_idx: int, episode_id: str) -> Episode:
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    where = f"{plan.location}#episode={ep_idx}"
    if plan.local:
        # Check before LeRobotDataset: for files it cannot find it falls back to downloading from the Hub.
        meta = LeRobotDatasetMetadata(plan.repo_id, root=plan.root_arg, revision=plan.revision)
        _check_local_files(meta, ep_idx, plan, where)
    lds = LeRobotDataset(plan.repo_id, root=plan.root_arg, episodes=[ep_idx], revision=plan.revision,
                         video_backend=VIDEO_BACKEND, tolerance_s=plan.tolerance_s, return_uint8=True,
                         depth_output_unit="m")
    meta = lds.meta
    fps = float(meta.fps)
    hf = lds.hf_dataset
    num_frames = len(hf)
    if num_frames == 0:
        raise EpisodeError(where, "length", "zero-length episode (no rows in the data files)")

    image_cols = [k for k in {*plan.cameras.values(), *plan.depth.values()} if k in meta.image_keys]
    numeric_cols = ["frame_index", "timestamp", "task_index"] + [
        k for k in (plan.state_key, plan.action_key) if k is not None]
    cols = hf.with_format("numpy", columns=numeric_cols + image_cols)[:]
    order = np.argsort(cols["frame_index"], kind="stable")
    if not np.array_equal(cols["frame_index"][order], np.arange(num_frames)):
        raise EpisodeError(where, "frame_index", f"frames are not 0..{num_frames - 1} "
                           f"(got {cols['frame_index'][order][:5].tolist()}...)")
    cols = {k: np.asarray(v)[order] if not isinstance(v, list) else [v[i] for i in order] for k, v in cols.items()}
    for key in dict.fromkeys([*plan.cameras.values(), *plan.depth.values()]):
        if key in meta.video_keys:
            _check_stream_fps(Path(lds.root) / meta.get_video_file_path(ep_idx, key), fps, key, where)
    timestamps = cols["timestamp"].astype(np.float64).reshape(num_frames)
    _check_timestamps(timestamps, fps, plan.tolerance_s, where)

    rgb, depth_m = {}, {}
    ep_meta = meta.episodes[ep_idx]
    for cam, key in plan.cameras.items():
        frames = _read_visual(lds, key, ep_meta, ep_idx, timestamps, cols, plan, where, is_depth=False)
        _check_image_shape(frames, meta.features[key], f"rgb.{cam}", key, where)
        rgb[cam] = frames
    for cam, key in plan.depth.items():
        frames = _read_visual(lds, key, ep_meta, ep_idx, timestamps, cols, plan, where, is_depth=True)
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

    state = vector(plan.state_key, "state")
    action = vector(plan.action_key, "action")
    task_indices = [int(i) for i in np.unique(cols["task_index"])]
    first_task = int(np.asarray(cols["task_index"]).reshape(-1)[0])
    tasks = [str(meta.tasks.iloc[i].name) for i in task_indices] if meta.tasks is not None else []
    task = str(meta.tasks.iloc[first_task].name) if meta.tasks is not None else ""

    episode_meta = {
        "source": STAGE,
        "source_uri": where,
        "parent": None,
        "seed": None,
        "state_names": _names(meta.features, plan.state_key, state),
        "action_names": _names(meta.features, plan.action_key, action),
        "lerobot": {
            "repo_id": plan.repo_id, "root": plan.location, "episode_index": ep_idx,
            "robot_type": meta.robot_type, "codebase_version": meta.info.codebase_version,
            "camera_keys": dict(plan.cameras), "depth_keys": dict(plan.depth),
            "state_key": plan.state_key, "action_key": plan.action_key,
        },
    }
    if len(tasks) > 1:
        episode_meta["lerobot"]["tasks"] = tasks
    return Episode(episode_id=episode_id, fps=fps, task=task, rgb=rgb, depth_m=depth_m, state=state, action=action,
                   meta=episode_meta)


def _check_local_files(meta, ep_idx: int, plan: _Plan, where: str) -> None:
    root = Path(plan.root_arg)
    length = int(meta.episodes[ep_idx]["length"])
    if length == 0:
        raise EpisodeError(where, "length", "zero-length episode (length 0 in meta/episodes)")
    data_file = root / meta.get_data_file_path(ep_idx)
    if not data_file.is_file():
        raise EpisodeError(where, "data", f"data file {data_file} is missing")
    for key in {*plan.cameras.values(), *plan.depth.values()}:
        if key in meta.video_keys:
            video = root / meta.get_video_file_path(ep_idx, key)
            if not video.is_file():
                raise EpisodeError(where, key, f"video file {video} is missing")


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


def _read_visual(lds, key: str, ep_meta: dict, ep_idx: int, timestamps: np.ndarray, cols: dict, plan: _Plan,
                 where: str, is_depth: bool) -> np.ndarray:
    """RGB (T, H, W, 3) uint8 or depth (T, H, W) float32 metres of one stream of one episode."""
    meta = lds.meta
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

    video_path = Path(lds.root) / meta.get_video_file_path(ep_idx, key)
    from_ts = float(ep_meta[f"videos/{key}/from_timestamp"])
    query = [from_ts + float(t) for t in timestamps]
    try:
        frames = decode_video_frames(video_path, query, plan.tolerance_s, VIDEO_BACKEND, return_uint8=True,
                                     is_depth=is_depth)
    except FrameTimestampError as exc:
        first_line = str(exc).splitlines()[0]
        raise EpisodeError(where, key, f"{video_path.name}: frames do not line up with the timestamps: {first_line}")
    if not is_depth:
        return frames.permute(0, 2, 3, 1).contiguous().numpy()  # (T, 3, H, W) -> (T, H, W, 3) uint8
    return _dequantize_metres(frames.numpy(), feature)


def _dequantize_metres(codes: np.ndarray, feature: dict) -> np.ndarray:
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
        raise EpisodeError(where, key, f"cannot open {video_path}: {exc}") from exc
    if rate is None:
        return
    video_fps = float(rate)
    if not math.isfinite(video_fps) or abs(video_fps - fps) > FPS_REL_TOLERANCE * fps:
        raise EpisodeError(where, "fps", f"video stream {key!r} ({video_path.name}) runs at {video_fps:g} fps "
                           f"but the dataset declares {fps:g} fps")


def _check_image_shape(frames: np.ndarray, feature: dict, field: str, key: str, where: str) -> None:
    expected = _image_shape(feature)
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
