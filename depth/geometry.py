"""Camera geometry for RGB-D perception: pinhole intrinsics, lifting a depth map to one 3D point per pixel (open3d),
the gravity-aligned viewer frame (from extrinsics or a RANSAC support plane) and the support plane itself.

Steps 1 and 2 of ``depth.pointcloud.perceive_frame``; see that module's docstring for the conventions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from depth.pointcloud import PerceptionConfig

logger = logging.getLogger(__name__)

UP = np.array([0.0, 0.0, 1.0])


# -- camera ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics, OpenCV convention: pixel (u, v) = (column, row); camera x right, y down, z forward."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_meta(cls, d: dict[str, Any]) -> Intrinsics:
        return cls(fx=float(d["fx"]), fy=float(d["fy"]), cx=float(d["cx"]), cy=float(d["cy"]), width=int(d["width"]),
                   height=int(d["height"]))

    def to_open3d(self):
        import open3d as o3d

        return o3d.camera.PinholeCameraIntrinsic(self.width, self.height, self.fx, self.fy, self.cx, self.cy)

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """(N, 3) camera-frame points -> (N, 2) pixel (u, v); NaN for points not in front of the camera."""
        points_cam = np.atleast_2d(points_cam)
        z = points_cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * points_cam[:, 0] / z + self.cx, self.fy * points_cam[:, 1] / z + self.cy], -1)
        uv[z <= 0] = np.nan
        return uv

    def contains(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) pixels -> (N,) inside the image (pixel centres sit at integer coordinates)."""
        uv = np.atleast_2d(uv)
        with np.errstate(invalid="ignore"):
            return ((uv[:, 0] >= -0.5) & (uv[:, 0] < self.width - 0.5) & (uv[:, 1] >= -0.5)
                    & (uv[:, 1] < self.height - 0.5))


# -- lifting ---------------------------------------------------------------------------------------------------------


@dataclass
class LiftedDepth:
    points: np.ndarray  # (H * W, 3) float64 in the requested frame, row-major; NaN where no point
    valid: np.ndarray  # (H, W) bool: a point exists
    depth_m: np.ndarray  # (H, W) float32 metres, 0 = no measurement
    depth_trunc_m: float  # the depth_trunc passed to open3d
    num_truncated: int  # measured pixels at or beyond depth_trunc (cut, and counted)
    truncated: np.ndarray  # (H, W) bool


def lift_depth(depth: np.ndarray, intrinsics: Intrinsics, cam_to_frame: np.ndarray | None = None,
               depth_scale: float = 1.0, depth_trunc_m: float | None = None) -> LiftedDepth:
    """One 3D point per pixel through open3d.

    depth         (H, W) float32 metres (``depth_scale`` 1.0) or uint16 millimetres (``depth_scale`` 1000.0);
                  0 or NaN = no measurement
    cam_to_frame  (4, 4) pose of the camera (OpenCV convention, which is open3d's) in the output frame; identity gives
                  camera-frame points
    depth_trunc_m None: just beyond the farthest measured pixel, so nothing is cut
    """
    import open3d as o3d

    if depth.ndim != 2 or depth.shape != (intrinsics.height, intrinsics.width):
        raise ValueError(f"depth: expected shape ({intrinsics.height}, {intrinsics.width}) to match the intrinsics, "
                         f"got {tuple(depth.shape)}")
    if not depth_scale > 0:
        raise ValueError(f"depth_scale: expected depth units per metre > 0, got {depth_scale}")
    if depth.dtype == np.uint16:
        raw = np.ascontiguousarray(depth)
        depth_m = raw.astype(np.float32) / depth_scale
    else:
        depth_m = np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0) / depth_scale
        depth_m[depth_m < 0] = 0.0
        raw = np.ascontiguousarray(depth_m * depth_scale, dtype=np.float32)
    measured = depth_m > 0
    farthest = float(depth_m[measured].max()) if measured.any() else 0.0
    trunc = float(depth_trunc_m) if depth_trunc_m is not None else farthest + 1.0
    truncated = measured & (depth_m >= trunc)  # open3d keeps 0 < d < depth_trunc
    cam_to_frame = np.eye(4) if cam_to_frame is None else np.asarray(cam_to_frame, dtype=np.float64)
    pcd = o3d.geometry.PointCloud.create_from_depth_image(
        o3d.geometry.Image(raw), intrinsics.to_open3d(), extrinsic=np.linalg.inv(cam_to_frame),
        depth_scale=float(depth_scale), depth_trunc=trunc, project_valid_depth_only=False)
    points = np.asarray(pcd.points)  # (H * W, 3)
    valid = np.isfinite(points).all(axis=1).reshape(depth_m.shape)
    if truncated.any():
        logger.debug("lift_depth: %d pixels at or beyond depth_trunc %.3f m were cut", int(truncated.sum()), trunc)
    return LiftedDepth(points=points, valid=valid, depth_m=depth_m, depth_trunc_m=trunc,
                       num_truncated=int(truncated.sum()), truncated=truncated)


# -- gravity-aligned viewer frame ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GravityFrame:
    """The viewer frame: x right, y forward (horizontal), z up, metres. ``cam_to_frame`` maps camera points into it."""

    cam_to_frame: np.ndarray  # (4, 4)
    method: str  # "extrinsics" | "ransac"
    plane_inlier_fraction: float | None = None  # RANSAC only

    @property
    def camera_position(self) -> np.ndarray:
        return self.cam_to_frame[:3, 3].copy()

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) viewer-frame points -> camera frame."""
        inv = np.linalg.inv(self.cam_to_frame)
        return np.atleast_2d(points) @ inv[:3, :3].T + inv[:3, 3]


def _horizontal(v: np.ndarray, up: np.ndarray) -> np.ndarray:
    return v - np.dot(v, up) * up


def _viewer_rotation(cam_rot: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Rows (right, forward, up) in the source frame, from the camera's axes (columns of ``cam_rot``) and up."""
    forward = _horizontal(cam_rot[:, 2] - cam_rot[:, 1], up)  # optical axis minus image-down axis
    norm = np.linalg.norm(forward)
    if norm < 1e-6:  # camera rolled by 90 degrees and looking straight down: fall back to the image's right axis
        forward = np.cross(up, _horizontal(cam_rot[:, 0], up))
        norm = np.linalg.norm(forward)
    forward = forward / norm
    right = np.cross(forward, up)
    return np.stack([right, forward, up])


def gravity_from_extrinsics(cam_to_world: np.ndarray, floor_z_m: float = 0.0) -> GravityFrame:
    """Viewer frame from a known camera pose in a z-up world; origin at (camera x, camera y, ``floor_z_m``)."""
    cam_to_world = np.asarray(cam_to_world, dtype=np.float64)
    rot = _viewer_rotation(cam_to_world[:3, :3], UP)
    origin = np.array([cam_to_world[0, 3], cam_to_world[1, 3], floor_z_m])
    frame_from_world = np.eye(4)
    frame_from_world[:3, :3] = rot
    frame_from_world[:3, 3] = -rot @ origin
    return GravityFrame(cam_to_frame=frame_from_world @ cam_to_world, method="extrinsics")


def fit_support_plane(points: np.ndarray, config: PerceptionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Largest plane by RANSAC over (N, 3) finite points: ((4,) plane a, b, c, d with unit normal, (N,) inlier mask)."""
    import open3d as o3d

    if len(points) < 3:
        raise ValueError(f"support plane: need at least 3 points with depth, got {len(points)}")
    o3d.utility.random.seed(config.seed)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    plane, inliers = pcd.segment_plane(distance_threshold=config.plane_distance_m, ransac_n=3,
                                       num_iterations=config.plane_iterations)
    plane = np.asarray(plane, dtype=np.float64)
    plane = plane / np.linalg.norm(plane[:3])
    mask = np.zeros(len(points), dtype=bool)
    mask[np.asarray(inliers, dtype=np.int64)] = True
    return plane, mask


def gravity_from_plane(plane_cam: np.ndarray, inlier_fraction: float | None = None) -> GravityFrame:
    """Viewer frame from a support plane in camera coordinates; up is its normal turned toward the camera."""
    normal, offset = np.asarray(plane_cam[:3], dtype=np.float64), float(plane_cam[3])
    if offset < 0:  # the camera (origin) must be on the positive side: n . 0 + d > 0
        normal, offset = -normal, -offset
    rot = _viewer_rotation(np.eye(3), normal)
    origin = -offset * normal  # the camera's foot on the plane
    cam_to_frame = np.eye(4)
    cam_to_frame[:3, :3] = rot
    cam_to_frame[:3, 3] = -rot @ origin
    return GravityFrame(cam_to_frame=cam_to_frame, method="ransac", plane_inlier_fraction=inlier_fraction)



# -- support plane ---------------------------------------------------------------------------------------------------


@dataclass
class SupportPlane:
    plane: np.ndarray  # (4,) a, b, c, d with unit normal, in the frame of the points it was fitted to
    inliers: np.ndarray  # (H * W,) bool
    inlier_fraction: float

    def height_at(self, xy: np.ndarray) -> np.ndarray:
        """z of the plane under (N, 2) points (viewer frame, nearly level plane)."""
        a, b, c, d = self.plane
        xy = np.nan_to_num(np.atleast_2d(xy))
        return -(a * xy[:, 0] + b * xy[:, 1] + d) / c


def find_support_plane(points: np.ndarray, valid: np.ndarray, config: PerceptionConfig,
                       require_level: bool) -> SupportPlane | None:
    """The largest RANSAC plane of the frame; with ``require_level``, None unless it is level (normal near +z)."""
    flat_valid = valid.ravel()
    if flat_valid.sum() < 3:
        return None
    plane, inliers = fit_support_plane(points[flat_valid], config)
    if require_level:
        if plane[2] < 0:
            plane = -plane
        if plane[2] < np.cos(np.radians(config.max_support_tilt_deg)):
            return None
    mask = np.zeros(len(points), dtype=bool)
    mask[np.flatnonzero(flat_valid)[inliers]] = True
    return SupportPlane(plane, mask, float(inliers.mean()))
