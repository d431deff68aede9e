"""Measuring objects from their points: the upright box (minimum-area footprint rectangle + vertical extent), open3d's
axis-aligned and minimal oriented boxes, and ``ObjectFacts``, the measured (or true) geometry the questions read.

Step 4 of ``depth.pointcloud.perceive_frame``; ``pipeline.sim.truth`` builds true facts with ``box_facts`` too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


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
