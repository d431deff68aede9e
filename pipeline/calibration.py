"""Camera calibration of ingested episodes: given as ingest params, read from the source, or left for estimation.

Both ingest stages take the same ``calibration`` param, keyed by camera name (the names the episodes will have)::

    calibration:
      cam_high:
        intrinsics: {fx: 525.0, fy: 525.0, cx: 319.5, cy: 239.5, width: 640, height: 480}   # pixels, OpenCV
        cam_to_world: [[1, 0, 0, 0.4], [0, -1, 0, 0], [0, 0, -1, 1.2], [0, 0, 0, 1]]        # optional, metres
      wrist:
        intrinsics: {fov_deg: 58}          # vertical field of view; square pixels, centred principal point

``width``/``height`` say which image size fx..cy were measured at (default: the source's own frames); they are scaled
to the episode's frames when those differ (e.g. ``ingest_videos`` resizing). ``cam_to_world`` is the camera pose in a
z-up world frame (OpenCV camera axes: x right, y down, z forward); with it, spatial QA takes gravity from the pose,
without it from the support plane.

What an episode carries, in ``meta["cameras"][cam]``: ``intrinsics`` {fx, fy, cx, cy, width, height}, optionally
``cam_to_world``, and ``calibration`` {"intrinsics": origin, "extrinsics": origin or None}, where origin is ``given``
(these params), ``dataset`` (the source carried it: a wmsynth shard's provenance, a clip's ``<stem>.json``),
``simulator`` (generated) or ``estimated`` (a depth backend that predicts focal length, see ``depth.estimator``).
QA records and shards carry the same record, so every answer says where its geometry came from.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.stage import Problem, StageParams

GIVEN, DATASET = "given", "dataset"


class IntrinsicsParams(StageParams):
    """Pinhole intrinsics in pixels (fx, fy, optionally cx, cy), or a vertical field of view."""

    fx: float | None = Field(None, gt=0, description="focal length in pixels along x")
    fy: float | None = Field(None, gt=0, description="focal length in pixels along y")
    cx: float | None = Field(None, description="principal point column; default: the image centre")
    cy: float | None = Field(None, description="principal point row; default: the image centre")
    fov_deg: float | None = Field(None, gt=0, lt=180, description="vertical field of view (instead of fx, fy)")
    width: int | None = Field(None, ge=1, description="image width fx..cy refer to; default: the source's frames")
    height: int | None = Field(None, ge=1, description="image height fx..cy refer to (set both or neither)")

    @model_validator(mode="after")
    def _one_form(self) -> IntrinsicsParams:
        focal = (self.fx is not None, self.fy is not None)
        if self.fov_deg is not None and any(focal):
            raise ValueError("give either fx and fy, or fov_deg, not both")
        if self.fov_deg is None and not all(focal):
            raise ValueError("give fx and fy (pixels), or fov_deg (vertical field of view)")
        if (self.width is None) != (self.height is None):
            raise ValueError("set both width and height (the image size the intrinsics refer to), or neither")
        return self

    def resolve(self, width: int, height: int) -> dict[str, float | int]:
        """{fx, fy, cx, cy, width, height} for frames of ``width`` x ``height`` pixels."""
        if self.fov_deg is not None:
            f = 0.5 * height / math.tan(math.radians(self.fov_deg) / 2)
            return {"fx": f, "fy": f, "cx": (width - 1) / 2, "cy": (height - 1) / 2, "width": width, "height": height}
        ref_w, ref_h = (self.width, self.height) if self.width is not None else (width, height)
        cx = self.cx if self.cx is not None else (ref_w - 1) / 2
        cy = self.cy if self.cy is not None else (ref_h - 1) / 2
        sx, sy = width / ref_w, height / ref_h  # pixel centres at integers: u' = (u + 0.5) * s - 0.5
        return {"fx": self.fx * sx, "fy": self.fy * sy, "cx": (cx + 0.5) * sx - 0.5, "cy": (cy + 0.5) * sy - 0.5,
                "width": width, "height": height}


class CameraCalibration(StageParams):
    intrinsics: IntrinsicsParams | None = None
    cam_to_world: list[list[float]] | None = Field(None, description="4x4 camera pose (OpenCV axes), metres")

    @field_validator("cam_to_world")
    @classmethod
    def _rigid(cls, pose: list[list[float]] | None) -> list[list[float]] | None:
        if pose is None:
            return None
        return rigid_pose(pose)

    @model_validator(mode="after")
    def _something(self) -> CameraCalibration:
        if self.intrinsics is None and self.cam_to_world is None:
            raise ValueError("give intrinsics and/or cam_to_world")
        return self


def rigid_pose(pose: Any) -> list[list[float]]:
    """A 4x4 rigid transform as nested lists; ValueError saying what is wrong otherwise."""
    arr = np.asarray(pose, dtype=np.float64)
    if arr.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix (rows of 4 numbers), got shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError("has NaN or inf entries")
    if not np.allclose(arr[3], [0, 0, 0, 1], atol=1e-6):
        raise ValueError(f"last row must be [0, 0, 0, 1], got {arr[3].tolist()}")
    rot = arr[:3, :3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-3) or np.linalg.det(rot) < 0:
        raise ValueError("the upper-left 3x3 block is not a rotation (orthonormal, determinant +1)")
    return arr.tolist()


def camera_problems(calibration: dict[str, CameraCalibration] | None, cameras: list[str] | None,
                    where: str) -> list[Problem]:
    """A calibrated camera the source does not have (``cameras`` None: not known yet, nothing to say)."""
    if not calibration or cameras is None:
        return []
    return [(f"calibration.{cam}", f"{where} has no camera {cam!r} (its cameras: {sorted(cameras)})")
            for cam in calibration if cam not in cameras]


def apply(meta: dict[str, Any], frame_sizes: dict[str, tuple[int, int]],
          given: dict[str, CameraCalibration] | None, carried: dict[str, dict[str, Any]] | None = None) -> None:
    """Fill ``meta["cameras"]`` for cameras of ``frame_sizes`` ({cam: (height, width)}): the params win over what
    the source carried (``carried``: {cam: {"intrinsics": {...}, "cam_to_world": ...}}, already at frame size)."""
    cameras = meta.setdefault("cameras", {})
    for cam, (height, width) in frame_sizes.items():
        entry = dict(cameras.get(cam) or {})
        origin = dict(entry.get("calibration") or {"intrinsics": None, "extrinsics": None})
        from_source = (carried or {}).get(cam) or {}
        if from_source.get("intrinsics"):
            entry["intrinsics"] = scaled(from_source["intrinsics"], width, height)
            origin["intrinsics"] = DATASET
        if from_source.get("cam_to_world") is not None:
            entry["cam_to_world"] = rigid_pose(from_source["cam_to_world"])
            origin["extrinsics"] = DATASET
        params = (given or {}).get(cam)
        if params is not None and params.intrinsics is not None:
            entry["intrinsics"] = params.intrinsics.resolve(width, height)
            origin["intrinsics"] = GIVEN
        if params is not None and params.cam_to_world is not None:
            entry["cam_to_world"] = params.cam_to_world
            origin["extrinsics"] = GIVEN
        if entry or any(origin.values()):
            entry["calibration"] = origin
            cameras[cam] = entry
    if not cameras:
        meta.pop("cameras")


def scaled(intrinsics: dict[str, Any], width: int, height: int) -> dict[str, float | int]:
    """Intrinsics {fx, fy, cx, cy[, width, height]} carried by a source, scaled to ``width`` x ``height`` frames."""
    try:
        params = IntrinsicsParams(**{k: intrinsics[k] for k in ("fx", "fy", "cx", "cy", "width", "height")
                                     if intrinsics.get(k) is not None})
    except ValidationError as exc:
        why = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'intrinsics'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"intrinsics {intrinsics}: {why}") from None
    return params.resolve(width, height)

