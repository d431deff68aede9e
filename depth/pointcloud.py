"""RGB-D -> gravity-aligned point clouds -> per-object points -> measured boxes, with open3d.

Pipeline for one camera frame (``perceive_frame``):

1. **Lift** the depth map with ``open3d.geometry.PointCloud.create_from_depth_image`` and an explicit
   ``PinholeCameraIntrinsic``, ``depth_scale`` (depth units per metre: 1.0 for ``Episode.depth_m``, 1000.0 for 16-bit
   millimetre PNGs) and ``depth_trunc``. ``project_valid_depth_only=False`` keeps one point per pixel (row-major, NaN
   where there is no measurement), so masks index points directly. ``depth_trunc`` defaults to just beyond the
   farthest measured pixel, i.e. nothing is cut; a smaller value is allowed, and then every cut pixel is counted
   (``LiftedDepth.num_truncated``, per object ``ObjectPoints.truncated_count``) and objects that lost pixels to it are
   not measured. No point is ever dropped silently.
2. **Gravity-align** into the *viewer frame* (metres): x to the viewer's right, y forward (horizontal, away from the
   camera), z up; origin on the support plane (or the world's z = 0) below the camera. With known extrinsics
   (``cam_to_world``, world z up) the frame follows from the camera pose alone; without them the largest RANSAC plane
   (``segment_plane``) is taken as the support, its normal, turned toward the camera, as up. Forward is the
   horizontal part of (optical axis - image down axis): the optical axis for a level camera, the image's up direction
   for one looking straight down, a blend in between, so the frame is defined for every camera pose.
3. **Isolate objects**: from segmentation masks when the data has them (simulator body ids), else by removing the
   support plane (RANSAC inliers and everything below it) and clustering the rest with DBSCAN (``cluster_dbscan``;
   clusters are named by colour). Each object's points are cleaned with ``remove_statistical_outlier`` (a loose
   threshold: isolated flying points go, the sparse outline samples of round objects stay). For estimated depth,
   ``silhouette_depth="interior"`` re-lifts an object's outline pixels with depth borrowed from its interior (a
   network blurs depth across outlines) and ``extent_trim`` trims the extreme points. Per object we also record what
   limits its measurement: pixels with and without depth, whether the mask touches the image border (partly out of
   view), and the fraction of its outline that borders something nearer to the camera (occluded).
4. **Measure**: an axis-aligned box in the viewer frame (``get_axis_aligned_bounding_box``), a 3D oriented box
   (``get_minimal_oriented_bounding_box``) and an *upright* box (yaw only: the minimum-area rectangle of the points'
   horizontal footprint, preferring among near-ties the rectangle whose sides carry the points, and their vertical
   extent). Heights are vertical extents in the gravity-aligned frame, never an image-plane width; widths are the
   longer side of the horizontal footprint. No scale factor or padding is applied (on the simulator's renderer the
   raw extents of cubes and cylinders are unbiased to about 2%); instead each object carries its pixel footprint
   (``resolution_m``) and the interval its sizes may lie in (``ObjectFacts.size_interval``), which the questions use
   to abstain.
5. **Bottom**: a camera above the table rarely sees an object's lowest part (a sphere's lower half, every side of a
   cube seen from straight above, the foot of an object behind another). If the lowest measured point is above the
   support under the object (the support plane, or the highest points of another object under its footprint:
   stacking, a tray's floor), the space in between is tested against the depth map (*free-space test*): points
   sampled on the middle of the object's footprint between the support and the lowest measured point are projected
   into the image; where the camera sees *through* them (the measured depth is beyond them) that space is empty. If at least half of the samples are seen through, the object
   is lifted and its bottom is its lowest point; otherwise the object is taken to rest on the support and its box is
   extended down to it (``ObjectFacts.bottom`` says which: "measured", "support" or "lifted").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

UP = np.array([0.0, 0.0, 1.0])


# -- config ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerceptionConfig:
    """How a frame becomes measured objects. Lengths in metres."""

    gravity: Literal["auto", "extrinsics", "ransac"] = "auto"  # auto: extrinsics when cam_to_world is known
    objects: Literal["auto", "segmentation", "clusters"] = "auto"  # auto: segmentation when the data has it
    depth_trunc_m: float | None = None  # None: just beyond the farthest measured pixel (nothing cut)
    silhouette_depth: Literal["measured", "interior"] = "measured"  # "interior" for estimated depth (interior_depth)
    extent_trim: float = 0.0  # fraction of points trimmed at each end of each axis before boxing (noisy depth)
    min_points: int = 30  # fewer cleaned points than this: the object is not measured
    max_occluded_fraction: float = 0.25  # more of the silhouette bordering something nearer: not measured
    occluder_gap_m: float = 0.01  # a neighbour this much nearer than the object's edge pixel occludes it
    outlier_neighbors: int = 12  # remove_statistical_outlier(nb_neighbors, std_ratio)
    outlier_std_ratio: float = 5.0  # loose: drops isolated (flying) points, keeps the sparse outline of round objects
    plane_distance_m: float = 0.006  # RANSAC inlier distance of the support plane
    plane_iterations: int = 500
    cluster_eps_m: float = 0.012  # DBSCAN neighbourhood radius
    cluster_min_points: int = 8
    min_height_above_plane_m: float = 0.006  # clustering ignores points closer to the plane than this
    max_support_tilt_deg: float = 10.0  # extrinsics path: a fitted plane steeper than this is no support
    free_space_margin_m: float = 0.005  # free-space test: seen through a sample if the depth is this much beyond it
    seed: int = 0

    def __post_init__(self):
        for name in ("gravity", "objects", "silhouette_depth"):
            allowed = {"gravity": ("auto", "extrinsics", "ransac"), "objects": ("auto", "segmentation", "clusters"),
                       "silhouette_depth": ("measured", "interior")}[name]
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if self.depth_trunc_m is not None and not self.depth_trunc_m > 0:
            raise ValueError(f"depth_trunc_m: expected a positive distance or None, got {self.depth_trunc_m}")
        if self.min_points < 4:
            raise ValueError(f"min_points: expected >= 4 (a box needs 4 points), got {self.min_points}")
        if not 0.0 <= self.extent_trim < 0.25:
            raise ValueError(f"extent_trim: expected 0 <= fraction < 0.25, got {self.extent_trim}")
        if not 0.0 <= self.max_occluded_fraction <= 1.0:
            raise ValueError(f"max_occluded_fraction: expected 0..1, got {self.max_occluded_fraction}")
        for name in ("occluder_gap_m", "outlier_std_ratio", "plane_distance_m", "cluster_eps_m"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected > 0, got {getattr(self, name)}")
        for name in ("outlier_neighbors", "plane_iterations", "cluster_min_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")


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


# -- objects ---------------------------------------------------------------------------------------------------------


@dataclass
class ObjectPoints:
    """One object's points in the viewer frame and what limits measuring it."""

    object_id: int
    name: str
    category: str | None
    points: np.ndarray  # (N, 3) after outlier removal
    pixel_count: int  # pixels of the mask
    valid_count: int  # mask pixels with a 3D point
    truncated_count: int  # mask pixels cut by depth_trunc
    touches_border: bool  # the mask reaches the image border: partly out of view
    occluded_fraction: float  # silhouette pixels next to something nearer / all silhouette pixels
    median_depth_m: float
    mean_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def problem(self, config: PerceptionConfig) -> str | None:
        """Why this object cannot be measured, or None. Reasons: the skip counts of the QA output."""
        if self.truncated_count > 0:
            return "beyond_depth_trunc"
        if self.touches_border:
            return "out_of_view"
        if len(self.points) < config.min_points:
            return "too_few_points"
        if self.occluded_fraction > config.max_occluded_fraction:
            return "occluded"
        return None


def occlusion_stats(mask: np.ndarray, depth_m: np.ndarray, gap_m: float) -> tuple[bool, float]:
    """(mask touches the image border, fraction of silhouette pixels with a 4-neighbour outside the mask whose depth is
    at least ``gap_m`` smaller, i.e. something in front hides part of the object)."""
    if not mask.any():
        return False, 0.0
    touches = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    padded = np.pad(mask, 1, constant_values=False)
    depth = np.pad(depth_m, 1, constant_values=0.0)
    centre = (slice(1, -1), slice(1, -1))
    silhouette = np.zeros_like(mask)
    occluded = np.zeros_like(mask)
    for dv, du in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        nb = (slice(1 + dv, padded.shape[0] - 1 + dv), slice(1 + du, padded.shape[1] - 1 + du))
        outside = mask & ~padded[nb]
        silhouette |= outside
        nearer = (depth[nb] > 0) & (depth[nb] < depth[centre] - gap_m)
        occluded |= outside & nearer
    n = int(silhouette.sum())
    return touches, (float(occluded.sum()) / n if n else 0.0)


def _clean(points: np.ndarray, config: PerceptionConfig) -> np.ndarray:
    import open3d as o3d

    if len(points) <= config.outlier_neighbors:
        return points
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    _, kept = pcd.remove_statistical_outlier(nb_neighbors=config.outlier_neighbors, std_ratio=config.outlier_std_ratio)
    return points[np.asarray(kept, dtype=np.int64)]


Relift = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (rows, cols, depth_m) -> (N, 3) frame points


def interior_depth(mask: np.ndarray, depth_m: np.ndarray, radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Depth for a mask's silhouette pixels taken from the object's interior: (rows, cols) of the silhouette pixels
    and their new depth (median of the interior pixels with depth within ``radius``; 0 where there are none).

    Estimated depth blurs across an object's outline, so its outline pixels sit part way to the background ("flying
    pixels"). The mask (segmentation, or clusters) still gives the outline; its depth is borrowed from inside.
    """
    valid = mask & (depth_m > 0)
    padded = np.pad(valid, 1, constant_values=False)
    interior = valid.copy()
    for dv, du in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        interior &= padded[1 + dv:padded.shape[0] - 1 + dv, 1 + du:padded.shape[1] - 1 + du]
    rows, cols = np.nonzero(mask & ~interior)
    new = np.zeros(len(rows), dtype=np.float32)
    height, width = mask.shape
    for k, (r, c) in enumerate(zip(rows, cols)):
        window = (slice(max(r - radius, 0), min(r + radius + 1, height)),
                  slice(max(c - radius, 0), min(c + radius + 1, width)))
        inside = depth_m[window][interior[window]]
        if len(inside):
            new[k] = float(np.median(inside))
    return (rows, cols), new


def _object_points(object_id: int, name: str, category: str | None, mask: np.ndarray, lifted: LiftedDepth,
                   frame_points: np.ndarray, relift: Relift, rgb: np.ndarray | None,
                   config: PerceptionConfig) -> ObjectPoints:
    flat = mask.ravel()
    has_point = flat & lifted.valid.ravel()
    touches, occluded = occlusion_stats(mask, lifted.depth_m, config.occluder_gap_m)
    depths = lifted.depth_m[mask & lifted.valid]
    mean_rgb = tuple(float(c) for c in rgb[mask].mean(axis=0)) if rgb is not None and mask.any() else (0.0, 0.0, 0.0)
    points = frame_points[has_point]
    if config.silhouette_depth == "interior" and has_point.any():
        (rows, cols), new_depth = interior_depth(mask & lifted.valid, lifted.depth_m)
        outline = np.zeros_like(flat)
        outline[rows * mask.shape[1] + cols] = True
        keep = new_depth > 0
        points = np.concatenate([frame_points[has_point & ~outline], relift(rows[keep], cols[keep], new_depth[keep])])
    return ObjectPoints(object_id=object_id, name=name, category=category,
                        points=_clean(points, config), pixel_count=int(mask.sum()),
                        valid_count=int(has_point.sum()), truncated_count=int((mask & lifted.truncated).sum()),
                        touches_border=touches, occluded_fraction=occluded,
                        median_depth_m=float(np.median(depths)) if len(depths) else 0.0, mean_rgb=mean_rgb)


def objects_from_segmentation(segmentation: np.ndarray, labels: dict[int, tuple[str, str | None]],
                              lifted: LiftedDepth, frame_points: np.ndarray, relift: Relift, rgb: np.ndarray | None,
                              config: PerceptionConfig) -> list[ObjectPoints]:
    """One ObjectPoints per labelled id present in the (H, W) segmentation; ``labels``: id -> (name, category)."""
    present = set(np.unique(segmentation).tolist())
    return [_object_points(oid, name, category, segmentation == oid, lifted, frame_points, relift, rgb, config)
            for oid, (name, category) in labels.items() if oid in present]


def objects_from_clusters(lifted: LiftedDepth, frame_points: np.ndarray, support: SupportPlane, relift: Relift,
                          rgb: np.ndarray | None, config: PerceptionConfig, focal_px: float) -> list[ObjectPoints]:
    """Plane removal + DBSCAN: points off the support plane and above it, clustered; named by colour. The DBSCAN
    radius is ``cluster_eps_m`` or three pixel footprints at the points' median depth, whichever is larger."""
    import open3d as o3d

    height, width = lifted.valid.shape
    flat_valid = lifted.valid.ravel()
    above = flat_valid & ~support.inliers
    rel = frame_points[flat_valid, 2] - support.height_at(frame_points[flat_valid, :2])
    above[flat_valid] &= rel > config.min_height_above_plane_m
    idx = np.flatnonzero(above)
    if len(idx) < config.cluster_min_points:
        return []
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(frame_points[idx]))
    # Neighbouring depth samples are a few pixel footprints apart on surfaces seen at a grazing angle.
    footprint = float(np.median(lifted.depth_m.ravel()[idx])) / focal_px
    eps = max(config.cluster_eps_m, 3.0 * footprint)
    labels = np.asarray(pcd.cluster_dbscan(eps=eps, min_points=config.cluster_min_points))
    out: list[ObjectPoints] = []
    for k in range(int(labels.max()) + 1 if len(labels) else 0):
        mask = np.zeros(height * width, dtype=bool)
        mask[idx[labels == k]] = True
        obj = _object_points(k, "", None, mask.reshape(height, width), lifted, frame_points, relift, rgb, config)
        out.append(obj)
    names = [colour_name(o.mean_rgb) for o in out]
    for obj, base in zip(out, names):
        same = [o for o, n in zip(out, names) if n == base]
        obj.name = f"{base} object" if len(same) == 1 else f"{base} object {same.index(obj) + 1}"
    return out


_PALETTE = {"red": (200, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 220), "yellow": (235, 215, 30),
            "orange": (250, 125, 15), "purple": (140, 40, 190), "cyan": (30, 200, 215), "white": (230, 230, 230),
            "grey": (110, 110, 115), "black": (20, 20, 20)}


def colour_name(rgb: tuple[float, float, float]) -> str:
    """Nearest basic colour name of a mean RGB (0-255), used to name clusters ("the red object")."""
    colour = np.asarray(rgb, dtype=np.float64)
    return min(_PALETTE, key=lambda name: float(np.sum((np.asarray(_PALETTE[name]) - colour) ** 2)))


# -- measuring -------------------------------------------------------------------------------------------------------


def _cross2(a: np.ndarray, b: np.ndarray) -> float:
    return float(a[0] * b[1] - a[1] * b[0])


def _convex_hull_2d(points: np.ndarray) -> np.ndarray:
    """Monotone chain; (N, 2) -> (M, 2) hull vertices counter-clockwise."""
    pts = np.unique(np.round(points, 9), axis=0)
    if len(pts) <= 2:
        return pts

    def half(seq):
        hull: list[np.ndarray] = []
        for p in seq:
            while len(hull) >= 2 and _cross2(hull[-1] - hull[-2], p - hull[-2]) <= 0:
                hull.pop()
            hull.append(p)
        return hull

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def min_area_rectangle(xy: np.ndarray, tolerance_m: float | None = None) -> tuple[np.ndarray, float, float, float]:
    """Upright footprint rectangle around (N, 2) points: (centre (2,), long side, short side, yaw of the long side).

    Orientations come from the convex hull's edges (rotating calipers). The smallest-area rectangle wins, except among
    near-ties (within 15% of the smallest area) the one whose sides carry the most points (within ``tolerance_m``,
    default 2% of the smallest rectangle's size) wins. That matters when a box is seen without its top: its footprint
    points form an "L" of two faces, whose hull is a right triangle; the rectangle along the hypotenuse has about the
    same area as the true one but a diagonal for a side, while the true rectangle has both faces on its sides.
    """
    xy = np.asarray(xy, dtype=np.float64)
    hull = _convex_hull_2d(xy)
    if len(hull) == 1:
        return hull[0], 0.0, 0.0, 0.0
    candidates = []
    edges = np.roll(hull, -1, axis=0) - hull
    for edge in edges:
        norm = np.linalg.norm(edge)
        if norm < 1e-12:
            continue
        axis = edge / norm
        rot = np.array([axis, [-axis[1], axis[0]]])  # rows: along, across
        local = hull @ rot.T
        lo, hi = local.min(axis=0), local.max(axis=0)
        candidates.append((float(np.prod(hi - lo)), rot, lo, hi))
    smallest = min(c[0] for c in candidates)
    tol = tolerance_m if tolerance_m is not None else 0.02 * np.sqrt(max(smallest, 1e-12))

    def support(candidate) -> float:
        _, rot, lo, hi = candidate
        local = xy @ rot.T
        gap = np.minimum(np.abs(local - lo), np.abs(local - hi)).min(axis=1)
        return float(np.mean(gap <= tol))

    near = [c for c in candidates if c[0] <= smallest * 1.15 + 1e-15]
    _, rot, lo, hi = max(near, key=lambda c: (round(support(c), 6), -c[0]))
    centre = ((lo + hi) / 2) @ rot
    sides = hi - lo
    if sides[0] >= sides[1]:
        long_side, short_side, long_axis = sides[0], sides[1], rot[0]
    else:
        long_side, short_side, long_axis = sides[1], sides[0], rot[1]
    yaw = float(np.arctan2(long_axis[1], long_axis[0]))
    yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2  # a rectangle's long axis is a line: yaw in [-90, 90) degrees
    return centre, float(long_side), float(short_side), yaw


@dataclass(frozen=True)
class ObjectFacts:
    """Measured (or true) geometry of one object in the viewer frame. Lengths in metres."""

    object_id: int
    name: str
    category: str | None
    centre_m: np.ndarray  # (3,) centre of the upright box
    width_m: float  # longer side of the horizontal footprint
    length_m: float  # shorter side of the horizontal footprint
    height_m: float  # vertical extent
    yaw_rad: float  # of the footprint's long side, about up
    num_points: int = 0
    aabb_m: tuple[list[float], list[float]] | None = None  # viewer-frame axis-aligned box (min, max)
    obb_m: dict[str, list] | None = None  # open3d minimal oriented box: centre, extent, R
    bottom: str = "measured"  # "measured" (lowest point), "support" (extended to what it rests on), "lifted"
    resolution_m: float = 0.0  # pixel footprint at the object's depth (0 for true facts); see size_interval

    def pixels_across(self, size: str) -> float:
        """How many pixel footprints an extent spans (inf for true facts)."""
        value = {"width": self.width_m, "length": self.length_m, "height": self.height_m}[size]
        return value / self.resolution_m if self.resolution_m > 0 else float("inf")

    def size_interval(self, size: str) -> tuple[float, float]:
        """(low, high) bounds of ``width``, ``length``, ``height`` or ``volume`` that the sampling allows.

        A depth image samples a surface at pixel centres, so each end of an extent falls short of the true edge by up
        to one pixel footprint ``p`` (the footprint at the object's depth), and where a renderer or sensor puts the
        outline adds up to half a footprint more (seen on rounded outlines in the simulator): an extent e is taken to
        lie in [e, e + 3p]. The footprint's side along the viewing direction can also hide behind the object (a
        sphere's back half): its upper bound is the larger of itself and the width (+ 3p), i.e. the hidden part is
        assumed no longer than the object is wide. These bounds only decide whether a comparison is answerable; the
        measured values are reported as they are.
        """
        p2 = 3 * self.resolution_m
        w, l, h = self.width_m, self.length_m, self.height_m
        if size == "width":
            return w, w + p2
        if size == "height":
            return h, h + p2
        if size == "length":
            return l, max(l, w) + p2 if self.resolution_m > 0 else l
        if size == "volume":
            return w * l * h, (w + p2) * self.size_interval("length")[1] * (h + p2)
        raise KeyError(size)

    @property
    def volume_m3(self) -> float:
        """Volume of the upright box (footprint x height), the size measure behind bigger/smaller."""
        return self.width_m * self.length_m * self.height_m

    @property
    def bottom_z_m(self) -> float:
        return float(self.centre_m[2] - self.height_m / 2)

    @property
    def top_z_m(self) -> float:
        return float(self.centre_m[2] + self.height_m / 2)

    def to_json(self) -> dict[str, Any]:
        out = {"object_id": self.object_id, "name": self.name, "category": self.category,
               "centre_m": [round(float(v), 4) for v in self.centre_m], "width_m": round(self.width_m, 4),
               "length_m": round(self.length_m, 4), "height_m": round(self.height_m, 4),
               "yaw_rad": round(self.yaw_rad, 4), "num_points": self.num_points, "bottom": self.bottom,
               "resolution_m": round(self.resolution_m, 5)}
        if self.aabb_m is not None:
            out["aabb_m"] = self.aabb_m
        if self.obb_m is not None:
            out["obb_m"] = self.obb_m
        return out


def box_facts(object_id: int, name: str, category: str | None, points: np.ndarray, num_points: int | None = None,
              with_open3d_boxes: bool = False, bottom_z_m: float | None = None, bottom: str = "measured",
              resolution_m: float = 0.0, trim: float = 0.0) -> ObjectFacts:
    """Upright box of (N, 3) viewer-frame points (corners of a true box, or measured surface points); ``bottom_z_m``
    overrides the lowest point (an inferred support, see ``infer_bottom``); ``trim`` drops that fraction of the points
    at each end of every axis first (robust extents for noisy depth)."""
    if trim > 0 and len(points) >= 10:
        points = _trimmed(points, trim)
    centre_xy, long_side, short_side, yaw = min_area_rectangle(points[:, :2], resolution_m or None)
    z_lo, z_hi = float(points[:, 2].min()), float(points[:, 2].max())
    if bottom_z_m is not None:
        z_lo = min(z_lo, float(bottom_z_m))
    aabb = obb = None
    if with_open3d_boxes:
        aabb, obb = open3d_boxes(points)
    return ObjectFacts(object_id=object_id, name=name, category=category,
                       centre_m=np.array([centre_xy[0], centre_xy[1], (z_lo + z_hi) / 2]),
                       width_m=long_side, length_m=short_side, height_m=z_hi - z_lo, yaw_rad=yaw,
                       num_points=len(points) if num_points is None else num_points, aabb_m=aabb, obb_m=obb,
                       bottom=bottom, resolution_m=resolution_m)


def _trimmed(points: np.ndarray, trim: float) -> np.ndarray:
    """Points inside the [trim, 1 - trim] quantiles of x, y and z."""
    lo, hi = np.quantile(points, [trim, 1 - trim], axis=0)
    keep = np.all((points >= lo) & (points <= hi), axis=1)
    return points[keep]


def open3d_boxes(points: np.ndarray) -> tuple[tuple[list[float], list[float]], dict[str, list] | None]:
    """open3d's axis-aligned box (in the viewer frame, i.e. gravity-aligned) and minimal oriented box of the points."""
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    aabb = pcd.get_axis_aligned_bounding_box()
    aabb_json = ([round(float(v), 4) for v in aabb.min_bound], [round(float(v), 4) for v in aabb.max_bound])
    try:
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            obb = pcd.get_minimal_oriented_bounding_box()
    except RuntimeError:  # degenerate (coplanar) points
        return aabb_json, None
    return aabb_json, {"centre": [round(float(v), 4) for v in obb.center],
                       "extent": [round(float(v), 4) for v in obb.extent],
                       "R": [[round(float(v), 5) for v in row] for row in np.asarray(obb.R)]}


# -- support and bottom ------------------------------------------------------------------------------------------


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


def _support_plane(points: np.ndarray, valid: np.ndarray, config: PerceptionConfig,
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


def infer_bottom(facts: ObjectFacts, others: list[ObjectPoints], support: SupportPlane | None,
                 depth_m: np.ndarray, intrinsics: Intrinsics, frame: GravityFrame,
                 config: PerceptionConfig) -> tuple[float | None, str]:
    """(bottom z or None to keep the lowest point, how it was decided) by the free-space test (module docstring).

    The support under the object is the higher of the support plane and the points of any other object (measurable
    or not: a half-hidden cube below still carries the one on top) that lie inside the object's footprint, grown by
    ``occluder_gap_m``, and not above its lowest measured point.
    """
    z_lo = facts.bottom_z_m
    below = [support.height_at(facts.centre_m[None, :2])[0]] if support is not None else []
    c, s = np.cos(facts.yaw_rad), np.sin(facts.yaw_rad)
    along, across = np.array([c, s]), np.array([-s, c])
    for other in others:
        if other.object_id == facts.object_id or not len(other.points):
            continue
        rel = other.points[:, :2] - facts.centre_m[:2]
        inside = ((np.abs(rel @ along) <= facts.width_m / 2 + config.occluder_gap_m)
                  & (np.abs(rel @ across) <= facts.length_m / 2 + config.occluder_gap_m)
                  & (other.points[:, 2] <= z_lo + config.free_space_margin_m))
        if inside.sum() >= 3:
            below.append(float(other.points[inside, 2].max()))
    if not below:
        return None, "measured"
    support_z = min(max(below), z_lo)
    if z_lo - support_z <= 0.001:
        return None, "measured"
    # Samples on the footprint's middle at heights between the support and the lowest measured point.
    grid = np.linspace(-0.3, 0.3, 4)  # the footprint's inner part: rounded objects are narrower near their base
    xy = np.array([facts.centre_m[:2] + i * facts.width_m * along + j * facts.length_m * across
                   for i in grid for j in grid])
    heights = support_z + (z_lo - support_z) * np.linspace(0.1, 0.9, 4)
    samples = np.array([[x, y, z] for x, y in xy for z in heights])
    cam = frame.to_camera(samples)
    uv = np.round(intrinsics.project(cam)).astype(np.float64)
    inside = intrinsics.contains(uv)
    if not inside.any():
        return None, "measured"
    u, v = uv[inside, 0].astype(int), uv[inside, 1].astype(int)
    seen = depth_m[v, u]
    through = (seen > 0) & (seen > cam[inside, 2] + config.free_space_margin_m)
    if through.mean() >= 0.5:
        return None, "lifted"
    return float(support_z), "support"


# -- one frame -------------------------------------------------------------------------------------------------------


@dataclass
class PerceivedFrame:
    """Everything measured in one camera frame."""

    frame: GravityFrame
    intrinsics: Intrinsics
    facts: dict[int, ObjectFacts]  # measurable objects by id
    problems: dict[int, str]  # object id -> why it is not measured (see ObjectPoints.problem)
    names: dict[int, str]  # every object seen (measured or not)
    categories: dict[int, str | None]
    objects_method: str  # "segmentation" | "clusters"
    num_truncated: int  # measured pixels cut by depth_trunc_m
    depth_trunc_m: float
    points_in_view: int
    diagnostics: dict[int, dict[str, float]] = field(default_factory=dict)
    support_plane: list[float] | None = None  # (a, b, c, d) in the viewer frame


def perceive_frame(depth: np.ndarray, intrinsics: Intrinsics, config: PerceptionConfig,
                   cam_to_world: np.ndarray | None = None, segmentation: np.ndarray | None = None,
                   labels: dict[int, tuple[str, str | None]] | None = None, rgb: np.ndarray | None = None,
                   depth_scale: float = 1.0) -> PerceivedFrame:
    """Lift, gravity-align, isolate and measure the objects of one frame (see the module docstring)."""
    gravity = config.gravity
    if gravity == "auto":
        gravity = "extrinsics" if cam_to_world is not None else "ransac"
    if gravity == "extrinsics" and cam_to_world is None:
        raise ValueError("gravity 'extrinsics' needs the camera pose (meta cameras.<cam>.cam_to_world); use 'ransac'")
    method = config.objects
    if method == "auto":
        method = "segmentation" if segmentation is not None and labels else "clusters"
    if method == "segmentation" and (segmentation is None or not labels):
        raise ValueError("objects 'segmentation' needs a segmentation stream and object labels; use 'clusters'")

    if gravity == "extrinsics":
        frame = gravity_from_extrinsics(cam_to_world)
        lifted = lift_depth(depth, intrinsics, frame.cam_to_frame, depth_scale, config.depth_trunc_m)
        points = lifted.points
        support = _support_plane(points, lifted.valid, config, require_level=True)
    else:
        lifted = lift_depth(depth, intrinsics, None, depth_scale, config.depth_trunc_m)
        cam_support = _support_plane(lifted.points, lifted.valid, config, require_level=False)
        if cam_support is None:
            raise ValueError("gravity 'ransac': no support plane found (too few points with depth)")
        frame = gravity_from_plane(cam_support.plane, cam_support.inlier_fraction)
        points = lifted.points @ frame.cam_to_frame[:3, :3].T + frame.cam_to_frame[:3, 3]
        support = SupportPlane(np.array([0.0, 0.0, 1.0, 0.0]), cam_support.inliers, cam_support.inlier_fraction)

    def relift(rows: np.ndarray, cols: np.ndarray, depth_m: np.ndarray) -> np.ndarray:
        cam = np.stack([(cols - intrinsics.cx) / intrinsics.fx * depth_m,
                        (rows - intrinsics.cy) / intrinsics.fy * depth_m, depth_m], axis=-1)
        return cam @ frame.cam_to_frame[:3, :3].T + frame.cam_to_frame[:3, 3]

    if method == "segmentation":
        objects = objects_from_segmentation(segmentation, labels, lifted, points, relift, rgb, config)
    else:
        if support is None:
            raise ValueError("objects 'clusters': no level support plane to remove; check the camera pose or use "
                             "gravity 'ransac'")
        objects = objects_from_clusters(lifted, points, support, relift, rgb, config,
                                        min(intrinsics.fx, intrinsics.fy))

    measurable, problems, diagnostics = [], {}, {}
    for obj in objects:
        diagnostics[obj.object_id] = {"pixels": obj.pixel_count, "points": len(obj.points),
                                      "occluded_fraction": round(obj.occluded_fraction, 3),
                                      "touches_border": obj.touches_border}
        problem = obj.problem(config)
        if problem is None:
            measurable.append(obj)
        else:
            problems[obj.object_id] = problem
    raw = {obj.object_id: box_facts(obj.object_id, obj.name, obj.category, obj.points, trim=config.extent_trim)
           for obj in measurable}
    facts = {}
    for obj in measurable:
        bottom_z, bottom = infer_bottom(raw[obj.object_id], objects, support, lifted.depth_m, intrinsics, frame,
                                        config)
        facts[obj.object_id] = box_facts(obj.object_id, obj.name, obj.category, obj.points, with_open3d_boxes=True,
                                         bottom_z_m=bottom_z, bottom=bottom,
                                         resolution_m=obj.median_depth_m / min(intrinsics.fx, intrinsics.fy),
                                         trim=config.extent_trim)
    return PerceivedFrame(frame=frame, intrinsics=intrinsics, facts=facts, problems=problems,
                          names={o.object_id: o.name for o in objects},
                          categories={o.object_id: o.category for o in objects}, objects_method=method,
                          num_truncated=lifted.num_truncated, depth_trunc_m=lifted.depth_trunc_m,
                          points_in_view=int(lifted.valid.sum()), diagnostics=diagnostics,
                          support_plane=None if support is None else [round(float(v), 6) for v in support.plane])
