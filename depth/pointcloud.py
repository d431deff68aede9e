"""RGB-D -> gravity-aligned point clouds -> per-object points -> measured boxes, with open3d.

The steps live in ``depth.geometry`` (1-2: intrinsics, lifting, the viewer frame, the support plane),
``depth.objects`` (3) and ``depth.boxes`` (4: boxes, ``ObjectFacts``); this module holds the config, the bottom test (5)
and ``perceive_frame``, which chains them.

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

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from depth.boxes import ObjectFacts, box_facts
from depth.geometry import (
    GravityFrame, Intrinsics, SupportPlane, find_support_plane, gravity_from_extrinsics, gravity_from_plane, lift_depth,
)
from depth.objects import ObjectPoints, objects_from_clusters, objects_from_segmentation


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


# -- bottom ----------------------------------------------------------------------------------------------------------


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
        support = find_support_plane(points, lifted.valid, config, require_level=True)
    else:
        lifted = lift_depth(depth, intrinsics, None, depth_scale, config.depth_trunc_m)
        cam_support = find_support_plane(lifted.points, lifted.valid, config, require_level=False)
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
