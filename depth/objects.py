"""Isolating objects in a lifted depth frame: per-object points from segmentation masks or from support-plane removal
and DBSCAN clusters (named by colour), outlier cleaning, silhouette depth for estimated depth, and what limits each
object's measurement (truncation, out of view, too few points, occlusion).

Step 3 of ``depth.pointcloud.perceive_frame``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from depth.geometry import LiftedDepth, SupportPlane

if TYPE_CHECKING:
    from depth.pointcloud import PerceptionConfig


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
