"""One episode -> spatial QA samples: per camera and chosen frame, perceive (``depth.pointcloud``) and ask
(``depth.spatial_qa``). Pure Python, no Ray; the ``synthesize_qa`` stage and ``benchmarks/spatial_qa.py`` call it.

A sample is one (camera, frame): its RGB, its metric depth and a JSON document with the frame reference, the camera
calibration, the measured objects, the objects that could not be measured (with the reason) and the QA records.
Frames are ``frames_per_episode`` evenly spaced indices that always include the first and the last frame; trajectory
questions (``moved_object``, ``moved_distance``) are asked on the last frame, relative to the first.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from depth.geometry import Intrinsics
from depth.pointcloud import PerceptionConfig, perceive_frame
from depth.qa_facts import SceneFacts
from depth.spatial_qa import QA_SCHEMA_VERSION, FrameRef, QAConfig, generate_questions
from episodes import Episode

logger = logging.getLogger(__name__)


class QAInputError(ValueError):
    """The episode lacks something spatial QA needs (depth, intrinsics); the message says what to add."""


@dataclass(frozen=True)
class SynthesisConfig:
    perception: PerceptionConfig = field(default_factory=PerceptionConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    cameras: tuple[str, ...] | None = None  # None: every camera with depth
    frames_per_episode: int = 4

    def __post_init__(self):
        if self.frames_per_episode < 1:
            raise ValueError(f"frames_per_episode: expected >= 1, got {self.frames_per_episode}")
        if self.cameras is not None and not self.cameras:
            raise ValueError("cameras: expected at least one camera name (or None for all with depth)")


@dataclass
class FrameSample:
    key: str  # webdataset __key__
    rgb: np.ndarray  # (H, W, 3) uint8
    depth_m: np.ndarray  # (H, W) float32
    document: dict[str, Any]  # the sample's JSON (frame_ref, calibration, objects, qa)
    scene: SceneFacts  # measured facts (for scoring; not serialised)

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.document["qa"]


@dataclass
class EpisodeQA:
    episode_id: str
    samples: list[FrameSample]
    skips: Counter  # (family, reason) -> candidate questions not emitted

    @property
    def num_qa(self) -> int:
        return sum(len(s.records) for s in self.samples)


def camera_pose(episode: Episode, camera: str, frame: int) -> np.ndarray | None:
    """(4, 4) cam_to_world of ``camera`` at ``frame`` (per frame for moving cameras), or None if not calibrated."""
    cam_meta = (episode.meta.get("cameras") or {}).get(camera) or {}
    per_frame = cam_meta.get("per_frame_cam_to_world")
    if per_frame:
        key = per_frame.removeprefix("extras.")
        return np.asarray(episode.extras[key][frame], dtype=np.float64) if key in episode.extras else None
    pose = cam_meta.get("cam_to_world")
    return None if pose is None else np.asarray(pose, dtype=np.float64)


def is_static_camera(episode: Episode, camera: str) -> bool:
    return ((episode.meta.get("cameras") or {}).get(camera) or {}).get("mount", "world") == "world"


def sample_frames(num_frames: int, count: int) -> list[int]:
    """``count`` evenly spaced frame indices including the first and the last."""
    return sorted({int(round(v)) for v in np.linspace(0, num_frames - 1, min(count, num_frames))})


def sample_key(episode_id: str, camera: str, frame: int) -> str:
    """webdataset key: no dots (webdataset splits keys from extensions at the first dot) and no slashes."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', episode_id)}__{camera}__{frame:06d}"


def qa_cameras(episode: Episode, cameras: tuple[str, ...] | None) -> list[str]:
    """The cameras to use; raises QAInputError naming what is missing and which stage provides it."""
    wanted = list(cameras) if cameras is not None else episode.cameras
    unknown = [c for c in wanted if c not in episode.rgb]
    if unknown:
        raise QAInputError(f"episode {episode.episode_id}: no camera {unknown} (has {episode.cameras})")
    no_depth = [c for c in wanted if c not in episode.depth_m]
    usable = [c for c in wanted if c in episode.depth_m]
    if not usable or (cameras is not None and no_depth):
        raise QAInputError(
            f"episode {episode.episode_id}: no depth for camera(s) {no_depth}; spatial QA needs metric depth. Add a "
            f"`depth` stage before synthesize_qa (backend: sensor for RGB-D data, depth_anything to estimate depth "
            f"for RGB-only video)")
    for cam in usable:
        if "intrinsics" not in ((episode.meta.get("cameras") or {}).get(cam) or {}):
            raise QAInputError(f"episode {episode.episode_id}: camera {cam!r} has no intrinsics "
                               f"(meta.cameras.{cam}.intrinsics: fx, fy, cx, cy, width, height); lifting depth to 3D "
                               f"needs them")
    if no_depth:
        logger.info("%s: cameras %s have no depth and are left out of spatial QA", episode.episode_id, no_depth)
    return usable


def calibration_origin(cam_meta: dict[str, Any], cam_to_world: np.ndarray | None) -> dict[str, str | None]:
    """Where a camera's geometry came from: ``meta.cameras.<cam>.calibration`` (given, dataset, simulator,
    estimated), or ``unrecorded`` for calibration an older episode carries without saying whose it is."""
    origin = dict(cam_meta.get("calibration") or {})
    return {"intrinsics": origin.get("intrinsics") or "unrecorded",
            "extrinsics": (origin.get("extrinsics") or "unrecorded") if cam_to_world is not None else None}


def _labels(episode: Episode) -> dict[int, tuple[str, str | None]]:
    return {int(o["body_id"]): (str(o["name"]), o.get("category")) for o in episode.meta.get("objects") or []
            if "body_id" in o and "name" in o}


def synthesize_episode(episode: Episode, config: SynthesisConfig) -> EpisodeQA:
    """QA samples of one episode (see the module docstring). Raises QAInputError if the episode cannot be used."""
    cameras = qa_cameras(episode, config.cameras)
    labels = _labels(episode)
    frames = sample_frames(episode.num_frames, config.frames_per_episode)
    ee = episode.extras.get("ee_pose")
    samples: list[FrameSample] = []
    skips: Counter = Counter()
    for cam in cameras:
        cam_meta = episode.meta["cameras"][cam]
        intrinsics = Intrinsics.from_meta(cam_meta["intrinsics"])
        seg = episode.segmentation.get(cam) if labels else None
        static = is_static_camera(episode, cam)
        start: SceneFacts | None = None
        for frame in frames:
            cam_to_world = camera_pose(episode, cam, frame)
            perceived = perceive_frame(
                episode.depth_m[cam][frame], intrinsics, config.perception, cam_to_world=cam_to_world,
                segmentation=None if seg is None else seg[frame], labels=labels or None,
                rgb=episode.rgb[cam][frame])
            scene = SceneFacts.from_perception(perceived, labels if seg is not None else None,
                                               None if ee is None else ee[frame][:3], cam_to_world, static)
            is_last = frame == frames[-1] and len(frames) > 1
            ref = FrameRef(episode.episode_id, cam, frame, frame / episode.fps,
                           start_frame=frames[0] if is_last else None)
            records, frame_skips = generate_questions(scene, ref, config.qa, start if is_last else None)
            skips.update(frame_skips)
            if start is None:
                start = scene
            document = {
                "schema_version": QA_SCHEMA_VERSION,
                "frame_ref": ref.to_json(),
                "task": episode.task,
                "source_uri": episode.meta.get("source_uri"),
                "intrinsics": cam_meta["intrinsics"],
                "calibration": calibration_origin(cam_meta, cam_to_world),
                "cam_to_world": None if cam_to_world is None else cam_to_world.round(6).tolist(),
                "depth": {"file": "depth.png", "unit": "mm", "depth_scale": 1000, "zero": "no measurement",
                          "source": (episode.meta.get("depth") or {}).get("backend", "sensor")},
                "viewer_frame": {"axes": "x right, y forward (horizontal), z up; metres",
                                 "gravity": perceived.frame.method,
                                 "cam_to_frame": perceived.frame.cam_to_frame.round(6).tolist()},
                "objects_method": perceived.objects_method,
                "objects": [f.to_json() for f in perceived.facts.values()],
                "unmeasured": [{"object_id": int(oid), "name": scene.names.get(oid, ""), "reason": reason}
                               for oid, reason in sorted(scene.problems.items())],
                "depth_trunc_m": round(perceived.depth_trunc_m, 4),
                "pixels_cut_by_depth_trunc": perceived.num_truncated,
                "qa": records,
            }
            samples.append(FrameSample(key=sample_key(episode.episode_id, cam, frame), rgb=episode.rgb[cam][frame],
                                       depth_m=episode.depth_m[cam][frame], document=document, scene=scene))
    return EpisodeQA(episode_id=episode.episode_id, samples=samples, skips=skips)
