"""Ground-truth scene facts of a simulator episode, from object poses and true sizes (never from depth).

For camera ``cam`` and frame ``t`` of an episode made by ``pipeline.sim``:
    objects   ``meta["objects"][i]`` (shape, ``size_m`` in the object's frame, ``body_id``) posed by
              ``extras["object_poses"][t, i]`` (xyz + quaternion xyzw): the corners of the true box (a sphere's box is
              its axis-aligned cube, whatever its rotation; the tray's base frame is the underside of its floor) are
              moved into the viewer frame of the camera (``depth.geometry.gravity_from_extrinsics``) and measured
              with the same upright-box code as point clouds, so width, height and centre mean the same thing.
    gripper   ``extras["ee_pose"][t, :3]`` (the point between the finger pads)
    in view   an object is counted when its true centre projects inside the image in front of the camera
"""

from __future__ import annotations

from typing import Any

import numpy as np

from depth.boxes import box_facts
from depth.geometry import Intrinsics, gravity_from_extrinsics
from depth.qa_facts import SceneFacts
from depth.synthesis import camera_pose, is_static_camera
from episodes import Episode
from pipeline.sim.spec import quat_to_matrix


def true_corners(obj: dict[str, Any], pose: np.ndarray) -> np.ndarray:
    """(8, 3) world corners of an object's true box."""
    sx, sy, sz = (float(v) for v in obj["size_m"])
    signs = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])
    local = signs * np.array([sx, sy, sz])
    if obj["shape"] == "tray":
        local[:, 2] += sz / 2  # base frame at the underside of the floor
    rot = np.eye(3) if obj["shape"] == "sphere" else quat_to_matrix(pose[3:7])
    return local @ rot.T + np.asarray(pose[:3], dtype=np.float64)


def truth_scene(episode: Episode, camera: str, frame: int) -> SceneFacts:
    """True facts of ``camera``'s view at ``frame``: every object of ``meta["objects"]``, measurable."""
    if "object_poses" not in episode.extras or not episode.meta.get("objects"):
        raise ValueError(f"{episode.episode_id}: no simulator truth (needs meta.objects and extras.object_poses)")
    cam_to_world = camera_pose(episode, camera, frame)
    if cam_to_world is None:
        raise ValueError(f"{episode.episode_id}: camera {camera!r} has no cam_to_world")
    intrinsics = Intrinsics.from_meta(episode.meta["cameras"][camera]["intrinsics"])
    gravity = gravity_from_extrinsics(cam_to_world)
    frame_from_world = gravity.cam_to_frame @ np.linalg.inv(cam_to_world)
    world_to_cam = np.linalg.inv(cam_to_world)
    objects, names, categories, counted = {}, {}, {}, {}
    poses = episode.extras["object_poses"][frame]
    for i, obj in enumerate(episode.meta["objects"]):
        oid = int(obj["body_id"])
        corners = true_corners(obj, poses[i]) @ frame_from_world[:3, :3].T + frame_from_world[:3, 3]
        objects[oid] = box_facts(oid, obj["name"], obj["category"], corners, num_points=0)
        names[oid], categories[oid] = obj["name"], obj["category"]
        centre_world = np.linalg.inv(frame_from_world) @ np.append(objects[oid].centre_m, 1.0)
        centre_cam = world_to_cam[:3, :3] @ centre_world[:3] + world_to_cam[:3, 3]
        counted[oid] = bool(intrinsics.contains(intrinsics.project(centre_cam[None]))[0])
    gripper = None
    if "ee_pose" in episode.extras:
        ee = np.asarray(episode.extras["ee_pose"][frame][:3], dtype=np.float64)
        gripper = frame_from_world[:3, :3] @ ee + frame_from_world[:3, 3]
    return SceneFacts(objects=objects, names=names, categories=categories, problems={},
                      camera_position_m=gravity.camera_position, gripper_position_m=gripper, counted=counted,
                      world_from_frame=np.linalg.inv(frame_from_world), static_camera=is_static_camera(episode, camera))
