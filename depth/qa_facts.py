"""What the question families read about one frame: ``SceneFacts`` (measured from the point cloud, or true from the
simulator), relating two frames' viewer frames, and the answers read straight off facts (gripper vectors, counts, what
moved and by how much). Shared by generation (``depth.spatial_qa``) and scoring (``depth.qa_scoring``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from depth.boxes import ObjectFacts
from depth.pointcloud import PerceivedFrame


@dataclass
class SceneFacts:
    """What the answer functions read about one frame (measured or true), viewer frame, metres."""

    objects: dict[int, ObjectFacts]  # measurable objects
    names: dict[int, str]  # every known object of the frame (measured, unmeasurable, or not visible)
    categories: dict[int, str | None]
    problems: dict[int, str]  # id -> reason it cannot be measured (absent = measurable)
    camera_position_m: np.ndarray  # (3,)
    gripper_position_m: np.ndarray | None  # (3,) or None
    counted: dict[int, bool]  # counting: is the object in the image
    count_uncertain: set[int] = field(default_factory=set)  # counting: cannot tell (partly out of view)
    world_from_frame: np.ndarray | None = None  # (4, 4) viewer frame -> world, when extrinsics are known
    static_camera: bool = True
    has_identity: bool = True  # object ids mean the same object in every frame (segmentation ids, simulator)

    @classmethod
    def from_perception(cls, perceived: PerceivedFrame, all_labels: dict[int, tuple[str, str | None]] | None,
                        gripper_world_m: np.ndarray | None, cam_to_world: np.ndarray | None,
                        static_camera: bool) -> SceneFacts:
        """Measured facts of a frame. ``all_labels`` (id -> (name, category)) lists the objects the data knows about
        (segmentation labels); those not seen at all are ``not_visible``."""
        names, categories = dict(perceived.names), dict(perceived.categories)
        problems = dict(perceived.problems)
        if all_labels:
            for oid, (name, category) in all_labels.items():
                if oid not in names:
                    names[oid], categories[oid], problems[oid] = name, category, "not_visible"
        world_from_frame = gripper = None
        if cam_to_world is not None:
            world_from_frame = np.asarray(cam_to_world) @ np.linalg.inv(perceived.frame.cam_to_frame)
            if gripper_world_m is not None:
                frame_from_world = np.linalg.inv(world_from_frame)
                gripper = frame_from_world[:3, :3] @ np.asarray(gripper_world_m, dtype=np.float64) \
                    + frame_from_world[:3, 3]
        diag = perceived.diagnostics
        counted = {oid: True for oid in perceived.names if not diag[oid]["touches_border"]}
        uncertain = {oid for oid in perceived.names if diag[oid]["touches_border"]}
        return cls(objects=dict(perceived.facts), names=names, categories=categories, problems=problems,
                   camera_position_m=perceived.frame.camera_position, gripper_position_m=gripper, counted=counted,
                   count_uncertain=uncertain, world_from_frame=world_from_frame, static_camera=static_camera,
                   has_identity=perceived.objects_method == "segmentation")

    def centre(self, oid: int) -> np.ndarray:
        return self.objects[oid].centre_m

    def distance_to_camera(self, oid: int) -> float:
        return float(np.linalg.norm(self.centre(oid) - self.camera_position_m))


def centres_in(scene: SceneFacts, reference: SceneFacts) -> dict[int, np.ndarray] | None:
    """``scene``'s object centres expressed in ``reference``'s viewer frame (None if that cannot be done)."""
    if scene.world_from_frame is not None and reference.world_from_frame is not None:
        to_ref = np.linalg.inv(reference.world_from_frame) @ scene.world_from_frame
        return {oid: to_ref[:3, :3] @ f.centre_m + to_ref[:3, 3] for oid, f in scene.objects.items()}
    if scene.static_camera and reference.static_camera:
        return {oid: f.centre_m for oid, f in scene.objects.items()}
    return None


def gripper_vector(scene: SceneFacts, oid: int) -> np.ndarray:
    return scene.centre(oid) - scene.gripper_position_m


def count_of(scene: SceneFacts, category: str) -> int:
    return sum(1 for oid, c in scene.categories.items() if c == category and scene.counted.get(oid, False))


def displacements(start: SceneFacts, end: SceneFacts) -> dict[int, np.ndarray]:
    """Centre displacement of every object measured in both frames, in the end frame's viewer frame."""
    before = centres_in(start, end)
    if before is None:
        raise ValueError("cannot relate the two frames (moving camera without extrinsics)")
    return {oid: end.centre(oid) - before[oid] for oid in end.objects if oid in before}


def moved(start: SceneFacts, end: SceneFacts, threshold_m: float) -> int | None:
    """The object with the largest displacement if it moved at least ``threshold_m``, else None."""
    moves = {oid: float(np.linalg.norm(v)) for oid, v in displacements(start, end).items()}
    if not moves:
        return None
    best = max(moves, key=moves.get)
    return best if moves[best] >= threshold_m else None
