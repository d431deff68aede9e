"""Source stage ``ingest_videos``: a folder or glob of video files (local or any fsspec URL) -> episodes.

    - name: ingest_videos
      params:
        path: data/clips                    # a directory, a glob (data/**/*.mp4, s3://bucket/clips/*.mp4) or one file
        height: 128                         # optional resize (both or neither)
        width: 128
        frame_stride: 2                     # keep every 2nd frame (episode fps = video fps / 2)
        max_frames: 300                     # keep at most this many frames (after the stride)
        task: "pick up the cup"             # default task text; <stem>.json may override it
        robot_type: so100                   # the robot in the clips (default: unknown, never the simulator's arm)
        calibration:                        # optional, for the camera (see pipeline.calibration)
          front: {intrinsics: {fx: 410.0, fy: 410.0, cx: 319.5, cy: 239.5}}   # at the video's own size

Sidecars next to ``<stem>.<ext>``, all optional (``pipeline.video_io``):

    <stem>.actions.npy   (T, A) numeric, loaded with allow_pickle=False; or
    <stem>.actions.csv   T rows of A numbers, optionally after one header row of action names
    <stem>.json          {"task": str, "fps": number, "action_names": [str, ...], "robot_type": str,
                          "intrinsics": {fx, fy, cx, cy}, "cam_to_world": 4x4}   (calibration at the video's size)

T is the number of frames kept by ``frame_stride`` (every stride-th frame of the video), before ``max_frames``; row t
is the action between kept frames t and t+1. A clip without an actions sidecar becomes an action-less episode
(``action`` None), which is normal input. Intrinsics (param or sidecar) refer to the video's own frame size unless
they give ``width`` and ``height``, and are scaled with the resize; the param wins over the sidecar.

Fan-out 1:N: ``check`` (``wmsynth validate``, before any work) reports a path that does not exist or cannot be read,
an unknown URL scheme and a path matching no video; ``plan`` lists the files on the driver; the runner then runs one
Ray task per file, which decodes it with decord and reads its sidecars. A remote video is copied to a local temporary
file in blocks first (decord needs a file; the clip is never held whole in memory as bytes) and deleted afterwards.
Bad input (unreadable, truncated or empty video, sidecar with NaN/inf, wrong length, fps contradicting the video)
raises ``EpisodeError`` naming the file and field, and the runner quarantines that clip.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import posixpath
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from episodes import Episode, EpisodeError, safe_id
from episodes import io as fileio
from pipeline import calibration, video_io
from pipeline.calibration import CameraCalibration
from pipeline.inputs import local_copy, read_problem, scheme_problem
from pipeline.stage import CheckContext, Problem, Resources, StageContext, StageParams, error_reason, register_stage

logger = logging.getLogger(__name__)

STAGE = "ingest_videos"
FPS_REL_TOLERANCE = 0.01  # video frame rate vs the sidecar's declared fps


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
    action_names: list[str] | None = Field(None, min_length=1, description="names of the action dims for clips whose "
                                           "sidecars give none")
    robot_type: str = Field("unknown", min_length=1, description="the robot in the clips (the shards' robot_type, "
                            "the world model's embodiment); <stem>.json may give its own; unknown stays unknown")
    calibration: dict[str, CameraCalibration] | None = Field(None, description="{camera: intrinsics and/or "
                                                             "cam_to_world}; default: <stem>.json's, if any")
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

    @field_validator("calibration")
    @classmethod
    def _calibrates_the_camera(cls, calibration: dict | None, info: ValidationInfo) -> dict | None:
        camera = info.data.get("camera", "front")
        other = sorted(set(calibration or {}) - {camera})
        if other:
            raise ValueError(f"names cameras {other}, but the clips' camera is {camera!r} (the camera param)")
        return calibration

    @model_validator(mode="after")
    def _resize_needs_both(self) -> IngestVideosParams:
        if (self.height is None) != (self.width is None):
            raise ValueError(f"set both height and width to resize, or neither (got height={self.height}, "
                             f"width={self.width})")
        return self


# -- driver side: listing, checks, plan ------------------------------------------------------------------------------


def find_videos(params: IngestVideosParams) -> list[str]:
    """The video files under ``params.path`` (local paths or URLs), sorted; FileNotFoundError saying what is wrong
    when the path does not exist or nothing matches."""
    from fsspec.implementations.local import LocalFileSystem

    fs, fs_path = fileio.filesystem(params.path)
    local = isinstance(fs, LocalFileSystem)
    if glob.has_magic(fs_path):
        base = _static_prefix(fs_path)
        if local and not Path(base).exists():
            raise FileNotFoundError(f"the directory of the glob {base!r} does not exist")
        paths = fs.glob(fs_path)
    elif fs.isdir(fs_path):
        paths = fs.find(fs_path) if params.recursive else fs.ls(fs_path, detail=False)
    elif fs.isfile(fs_path):
        paths = [fs_path]
    else:
        raise FileNotFoundError(f"path {params.path!r} does not exist")
    extensions = set(params.extensions)
    paths = sorted(p for p in paths if PurePosixPath(p).suffix.lower().lstrip(".") in extensions)
    if not paths:
        raise FileNotFoundError(f"no video files with extensions {sorted(extensions)} match {params.path!r}")
    return [p if local else fs.unstrip_protocol(p) for p in paths]


def _static_prefix(path: str) -> str:
    """The directory part of a glob before its first wildcard (the path itself when there is none)."""
    parts = []
    for part in PurePosixPath(path).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return str(PurePosixPath(*parts)) if parts else "."


def check(params: IngestVideosParams, cctx: CheckContext) -> list[Problem]:
    """The path's scheme is known, it exists and can be read, and it matches at least one video."""
    problem = scheme_problem(params.path)
    if problem:
        return [("path", problem)]
    try:
        uris = find_videos(params)
    except FileNotFoundError as exc:
        return [("path", str(exc))]
    except Exception as exc:  # storage errors: no bucket, no credentials, no network
        return [("path", read_problem(params.path, exc))]
    try:
        with fileio.open_file(uris[0]) as f:
            f.read(1)
    except Exception as exc:
        return [("path", f"{len(uris)} videos match, but the first cannot be read: {read_problem(uris[0], exc)}")]
    return robot_problems(params, uris)


def robot_problems(params: IngestVideosParams, uris: list[str]) -> list[Problem]:
    """One source, one robot: clips whose ``<stem>.json`` names another robot than the rest are an error (the world
    model keys action heads and normalisation on the robot, and shards are per robot); split such a folder into one
    stage per robot. Unreadable sidecars are left to the clip's own task (it quarantines that clip)."""
    robots: dict[str, list[str]] = {}
    for uri in uris:
        sidecar = posixpath.splitext(uri)[0] + ".json"  # as video_io.Sidecars.find names it
        try:
            info = json.loads(fileio.read_bytes(sidecar)) if fileio.exists(sidecar) else {}
        except Exception:  # noqa: BLE001 - reported per clip when it is read
            continue
        robot = info.get("robot_type") if isinstance(info, dict) and info.get("robot_type") else params.robot_type
        robots.setdefault(str(robot), []).append(fileio.name(uri))
    if len(robots) <= 1:
        return []
    listed = "; ".join(f"{robot}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} ({len(names)} clips)"
                       for robot, names in sorted(robots.items()))
    return [("robot_type", f"the clips under {params.path!r} are of {len(robots)} robots ({listed}); one source is one "
                           "robot: give each robot's clips their own ingest_videos stage (path) and robot_type")]


def describe(params: IngestVideosParams) -> dict:
    """One RGB camera, no depth; actions only where a clip has a sidecar, so none are promised."""
    return {"cameras": [params.camera], "depth": False, "actions": False}


def plan(params: IngestVideosParams, ctx: StageContext) -> list[dict]:
    """One item per video file, each with a unique sanitised episode id (``video-<stem>``)."""
    items, used = [], set()
    for uri in find_videos(params):  # a problem here was reported by check; raised only as a last resort
        base = "video-" + safe_id(PurePosixPath(uri).stem, "clip")
        episode_id, n = base, 1
        while episode_id in used:
            n += 1
            episode_id = f"{base}-{n}"
        used.add(episode_id)
        items.append({"episode_id": episode_id, "uri": uri, "name": fileio.name(uri)})
    logger.info("%s: %d videos under %s", STAGE, len(items), params.path)
    return items


# -- task side: one clip ---------------------------------------------------------------------------------------------


@register_stage(STAGE, kind="source", params=IngestVideosParams, plan=plan, check=check, describe=describe)
def ingest_videos(item: dict, params: IngestVideosParams, ctx: StageContext) -> Episode:
    """Decode a folder/glob of videos (with optional action sidecars) into episodes; clips without actions stay."""
    try:
        return read_clip(item, params)
    except EpisodeError:
        raise
    except Exception as exc:  # storage or library failure: still this clip's problem, named by its file
        logger.debug("%s: %s failed", STAGE, item["uri"], exc_info=True)
        raise EpisodeError(item["uri"], "file", error_reason(exc)) from exc


def read_clip(item: dict[str, Any], params: IngestVideosParams) -> Episode:
    """Decode one video and its sidecars into an Episode (the runner validates and saves it)."""
    uri = item["uri"]
    sidecar = video_io.Sidecars.find(uri)
    info = video_io.read_json_sidecar(sidecar.json, uri) if sidecar.json else {}
    action, csv_names = video_io.read_actions(sidecar.actions, uri) if sidecar.actions else (None, None)

    size = (params.height, params.width) if params.height is not None else None
    num_threads = max(1, int(params.resources.num_cpus))  # decode on the CPUs Ray gave this task, not all of them
    with local_copy(uri, suffix=PurePosixPath(uri).suffix) as path:
        frames, video_fps, num_video_frames, native_hw = video_io.decode(
            path, uri, params.frame_stride, params.max_frames, size, num_threads)  # (T, H, W, 3) uint8
    declared_fps = info.get("fps")
    if declared_fps is not None and (not math.isfinite(video_fps) or video_fps <= 0):
        video_fps = float(declared_fps)  # the container has no usable rate: trust the sidecar
    elif declared_fps is not None and abs(video_fps - declared_fps) > FPS_REL_TOLERANCE * declared_fps:
        raise EpisodeError(uri, "fps", f"the video runs at {video_fps:g} fps but {video_io.name(sidecar.json)} "
                           f"declares {declared_fps:g} fps")
    if not math.isfinite(video_fps) or video_fps <= 0:
        raise EpisodeError(uri, "fps", f"the video reports no frame rate ({video_fps!r}); give one as "
                           f"\"fps\" in {PurePosixPath(uri).stem}.json")

    num_kept = len(range(0, num_video_frames, params.frame_stride))
    action_names = info.get("action_names")
    if action is not None:
        action_names = action_names or csv_names or params.action_names
        if action.shape[0] != num_kept:
            hint = ""
            if params.frame_stride > 1 and action.shape[0] == num_video_frames:
                hint = (f"; it has one row per video frame, but with frame_stride={params.frame_stride} it needs one "
                        "row per kept frame")
            raise EpisodeError(uri, "action", f"{video_io.name(sidecar.actions)} has {action.shape[0]} rows but the "
                               f"video has {num_kept} frames (of {num_video_frames}, "
                               f"frame_stride={params.frame_stride}){hint}")
        action = action[: frames.shape[0]]  # max_frames
        if action_names is not None and len(action_names) != action.shape[1]:
            raise EpisodeError(uri, "action_names", f"{len(action_names)} names for {action.shape[1]} action "
                               "dimensions")
    elif action_names is not None:
        logger.info("%s: %s has action_names but no actions sidecar; ignored", STAGE, uri)
        action_names = None

    meta = {
        "source": STAGE,
        "source_uri": uri,
        "parent": None,
        "seed": None,
        "state_names": None,
        "action_names": list(action_names) if action_names is not None else None,
        "robot_type": str(info.get("robot_type", params.robot_type)),
        "video": {"fps": video_fps, "num_frames": num_video_frames, "height": native_hw[0], "width": native_hw[1],
                  "frame_stride": params.frame_stride,
                  "sidecars": [video_io.name(p) for p in (sidecar.actions, sidecar.json) if p]},
    }
    apply_calibration(meta, params, info, native_hw, frames.shape[1:3], uri, sidecar.json)
    return Episode(episode_id=item["episode_id"], fps=video_fps / params.frame_stride,
                   task=str(info.get("task", params.task)), rgb={params.camera: frames}, action=action, meta=meta)


def apply_calibration(meta: dict[str, Any], params: IngestVideosParams, info: dict[str, Any], native_hw, kept_hw,
                      uri: str, sidecar_json: str | None) -> None:
    """``meta["cameras"]`` from the param, else the sidecar, both at the video's own size unless they say theirs."""
    native = {"height": int(native_hw[0]), "width": int(native_hw[1])}
    given = dict(params.calibration or {})
    cam = params.camera
    if cam in given and given[cam].intrinsics is not None and given[cam].intrinsics.width is None \
            and given[cam].intrinsics.fov_deg is None:
        given[cam] = given[cam].model_copy(update={"intrinsics": given[cam].intrinsics.model_copy(update=native)})
    carried = {}
    if info.get("intrinsics") is not None or info.get("cam_to_world") is not None:
        intrinsics = info.get("intrinsics")
        carried[cam] = {"intrinsics": {**native, **intrinsics} if isinstance(intrinsics, dict) else intrinsics,
                        "cam_to_world": info.get("cam_to_world")}
    try:
        calibration.apply(meta, {cam: tuple(kept_hw)}, given, carried)
    except (ValueError, TypeError) as exc:
        raise EpisodeError(uri, "calibration", f"{video_io.name(sidecar_json)}: {exc}") from exc
