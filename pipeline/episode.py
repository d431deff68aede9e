"""The episode: the unit that every stage reads and writes.

An episode is one recorded trajectory: per-camera RGB (and optionally metric depth and segmentation), optional robot
state and action, per-frame extras (end-effector pose, object poses, ...) and a JSON-serialisable ``meta`` dict with
provenance, camera calibration, objects, subgoals and success.

Between stages an episode lives on disk as one ``.npz`` file (lossless; written atomically; read with
``allow_pickle=False`` so a file from anywhere cannot run code). Ray Data rows only carry the episode's id, path and fate
(see ``pipeline.rows``), so the object store never holds video frames.

Array conventions (names carry units, shapes are in comments):
    rgb[camera]           (T, H, W, 3) uint8
    depth_m[camera]       (T, H, W)    float32, metres; 0 or NaN = no measurement
    segmentation[camera]  (T, H, W)    int32, simulator body/link ids (-1 = background)
    state                 (T, D)       float32
    action                (T, A)       float32; row t is the command applied between frame t and t+1
    extras[name]          (T, ...)     any numeric per-frame array

Standard ``meta`` keys: ``source`` (generator or ingester name), ``source_uri``, ``seed``, ``parent`` (episode this one
derives from, or null), ``state_names``, ``action_names``, ``cameras`` ({name: {"intrinsics": {fx, fy, cx, cy, width,
height}, "cam_to_world": 4x4 list}}), ``objects``, ``subgoals``, ``success``.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_META_KEY = "__meta__"
_HEADER_KEY = "__header__"
FORMAT_VERSION = 1


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a unique temp file and a rename: readers see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def safe_id(text: str, fallback: str) -> str:
    """A file-name-safe episode id fragment from free text (a file stem, a dataset name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or fallback


class EpisodeError(ValueError):
    """One episode's input is bad. Names where it came from and which field; the runner quarantines the episode."""

    def __init__(self, source: str, field_name: str, message: str):
        self.source = source
        self.field_name = field_name
        self.message = message
        super().__init__(f"{source}: field '{field_name}': {message}")


@dataclass
class Episode:
    episode_id: str
    fps: float
    task: str
    rgb: dict[str, np.ndarray]
    depth_m: dict[str, np.ndarray] = field(default_factory=dict)
    segmentation: dict[str, np.ndarray] = field(default_factory=dict)
    state: np.ndarray | None = None
    action: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        first = next(iter(self.rgb.values()), None)
        return 0 if first is None else int(first.shape[0])

    @property
    def cameras(self) -> list[str]:
        return list(self.rgb)

    @property
    def has_actions(self) -> bool:
        return self.action is not None

    def validate(self, source: str | None = None) -> None:
        """Raise EpisodeError naming the field for anything a later stage could not use."""
        where = source or self.meta.get("source_uri") or self.episode_id
        if not self.episode_id or "/" in self.episode_id:
            raise EpisodeError(where, "episode_id", f"must be a non-empty name without '/', got {self.episode_id!r}")
        if not np.isfinite(self.fps) or self.fps <= 0:
            raise EpisodeError(where, "fps", f"must be a positive number, got {self.fps!r}")
        if not self.rgb:
            raise EpisodeError(where, "rgb", "no camera stream")
        num_frames = self.num_frames
        if num_frames == 0:
            raise EpisodeError(where, "rgb", "zero-length episode (no frames)")
        for cam, frames in self.rgb.items():
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise EpisodeError(where, f"rgb.{cam}", f"expected shape (T, H, W, 3), got {tuple(frames.shape)}")
            if frames.dtype != np.uint8:
                raise EpisodeError(where, f"rgb.{cam}", f"expected uint8, got {frames.dtype}")
            if frames.shape[0] != num_frames:
                raise EpisodeError(where, f"rgb.{cam}", f"has {frames.shape[0]} frames, other cameras {num_frames}")
        for name, per_cam in (("depth_m", self.depth_m), ("segmentation", self.segmentation)):
            for cam, arr in per_cam.items():
                if cam not in self.rgb:
                    raise EpisodeError(where, f"{name}.{cam}", f"no rgb stream for camera {cam!r}")
                expected = self.rgb[cam].shape[:3]
                if arr.shape != expected:
                    raise EpisodeError(where, f"{name}.{cam}", f"expected shape {expected}, got {tuple(arr.shape)}")
        for cam, depth in self.depth_m.items():
            if depth.dtype != np.float32:
                raise EpisodeError(where, f"depth_m.{cam}", f"expected float32 metres, got {depth.dtype}")
            if np.isinf(depth).any() or (depth < 0).any():
                raise EpisodeError(where, f"depth_m.{cam}", "has negative or infinite values (use 0 or NaN for none)")
        for name in ("state", "action"):
            arr = getattr(self, name)
            if arr is None:
                continue
            if arr.ndim != 2 or arr.shape[0] != num_frames:
                raise EpisodeError(where, name, f"expected shape ({num_frames}, D), got {tuple(arr.shape)}")
            bad = ~np.isfinite(arr)
            if bad.any():
                frame, dim = (int(i) for i in np.argwhere(bad)[0])
                raise EpisodeError(where, name, f"{int(bad.sum())} non-finite values (first at frame {frame}, dim {dim})")
        for name, arr in self.extras.items():
            if arr.shape[:1] != (num_frames,):
                raise EpisodeError(where, f"extras.{name}", f"expected {num_frames} frames, got {tuple(arr.shape)}")

    # -- persistence -------------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file in the same directory, then rename): a reader never sees a partial file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        for prefix, per_key in (("rgb", self.rgb), ("depth_m", self.depth_m), ("segmentation", self.segmentation),
                                ("extras", self.extras)):
            for key, arr in per_key.items():
                arrays[f"{prefix}.{key}"] = np.ascontiguousarray(arr)
        if self.state is not None:
            arrays["state"] = self.state
        if self.action is not None:
            arrays["action"] = self.action
        header = {"format_version": FORMAT_VERSION, "episode_id": self.episode_id, "fps": float(self.fps),
                  "task": self.task}
        arrays[_HEADER_KEY] = np.array(json.dumps(header))
        arrays[_META_KEY] = np.array(json.dumps(self.meta))
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Episode:
        with open(path, "rb") as f:
            data = io.BytesIO(f.read())
        with np.load(data, allow_pickle=False) as npz:
            header = json.loads(str(npz[_HEADER_KEY]))
            if header.get("format_version") != FORMAT_VERSION:
                raise EpisodeError(str(path), "format_version", f"unsupported {header.get('format_version')!r}")
            episode = cls(episode_id=header["episode_id"], fps=header["fps"], task=header["task"], rgb={},
                          meta=json.loads(str(npz[_META_KEY])))
            for key in npz.files:
                if key in (_HEADER_KEY, _META_KEY):
                    continue
                prefix, _, name = key.partition(".")
                if prefix in ("state", "action"):
                    setattr(episode, prefix, npz[key])
                else:
                    getattr(episode, prefix)[name] = npz[key]
        return episode
