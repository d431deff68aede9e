"""Spatial question-answer synthesis from RGB-D frames, and scoring of the answers against ground truth.

Every answer is computed from 3D facts about objects in the *viewer frame* (x right, y forward, z up, metres; see
``depth.pointcloud``): the centre and the upright box (width = longer side of the horizontal footprint, height =
vertical extent) of each object, the camera position and, when the robot state has it, the gripper position. The same
answer functions run on two kinds of facts: *measured* ones (``SceneFacts.from_perception``, from the point cloud) to
generate questions, and *true* ones (``depth.sim_truth``, from the simulator's object poses and true sizes) to score
them. Nothing about the truth is used to generate or to select a question.

Families (``FAMILIES``; each has four or more phrasings):

    distance_between      quantitative  centre-to-centre distance of two objects
    distance_to_camera    quantitative  camera centre to object centre
    closer_to_camera      qualitative   which of two objects is nearer to the camera (Euclidean, centres)
    left_right            qualitative   x of the centres (viewer's left/right)
    front_behind          qualitative   y of the centres (nearer along the horizontal viewing direction = in front)
    above_below           qualitative   z of the centres
    taller_shorter        qualitative   heights (vertical extents)
    wider_narrower        qualitative   widths (longer footprint sides)
    bigger_smaller        qualitative   upright-box volumes (footprint x height)
    height                quantitative  vertical extent
    width                 quantitative  longer side of the horizontal footprint
    count                 qualitative   objects of a category whose centre is in the image (exact count)
    gripper_displacement  quantitative  vector from the gripper point to the object centre, in cm, viewer frame
    moved_object          qualitative   which object moved between the first and last frame of the episode
                                        (the largest centre displacement if >= 3 cm, else "none")
    moved_distance        quantitative  how far an object's centre moved between the first and last frame

A question is not emitted (and counted as skipped, per family and reason) when an object it refers to cannot be
measured (``not_visible``, ``too_few_points``, ``out_of_view``, ``occluded``, ``beyond_depth_trunc``), when a metric
height or width spans fewer than ``min_pixels_across`` pixel footprints (``too_small_in_image``: sampling alone could
be off by two footprints, i.e. 25% at 8 pixels), when the measured facts do not decide it (``ambiguous``: a
comparison closer than its margin, or whose two sizes' sampling intervals overlap (``ObjectFacts.size_interval``); a
displacement too small to give a direction), or when the data lacks what it needs (``no_gripper_pose``,
``no_object_identity``, ``single_frame``, ``moving_camera``). Skips are counted per *candidate* question (object or
pair), before sampling ``max_per_family`` of the eligible ones.

The gripper position comes from the robot state (``extras["ee_pose"]``, the point between the finger pads) mapped
into the viewer frame with the camera extrinsics; only the object end of a displacement is measured from depth.

Scoring (``score_record``): quantitative answers are correct within 25% of the truth (``abs(est - true) <= 0.25 *
true``; for the displacement vector, ``|est - true| <= 0.25 * |true|``), and the 0.5x-2x rate (``0.5 <= est / true <=
2``, on lengths) is reported too; qualitative answers must match exactly.

Units and rounding of answers (``format_length``): below 10 cm, centimetres with one decimal ("4.5 cm"); from 10 cm to
1 m, whole centimetres ("23 cm"); from 1 m, metres with two decimals ("1.23 m"). The structured answer carries the
same rounded value and unit, plus the unrounded ``value_m``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from depth.pointcloud import ObjectFacts, PerceivedFrame

logger = logging.getLogger(__name__)

QA_SCHEMA_VERSION = 1
Kind = Literal["quantitative", "qualitative"]


# -- config ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QAConfig:
    """Which questions to ask and the margins below which a measured comparison is too close to call."""

    families: tuple[str, ...] | None = None  # None: all of FAMILIES
    max_per_family: int = 3  # questions per family and frame, sampled from the eligible candidates
    position_margin_m: float = 0.03  # left/right, front/behind, above/below, closer: centre gap at least this
    relative_position_margin: float = 0.05  # closer_to_camera: and at least this fraction of the mean distance
    size_margin: float = 0.15  # taller/wider: larger / smaller - 1 at least this
    size_margin_m: float = 0.008  # and the difference at least this
    volume_margin: float = 0.5  # bigger/smaller: larger / smaller - 1 at least this
    min_displacement_m: float = 0.03  # gripper_displacement: shorter vectors have no direction worth asking about
    min_pixels_across: float = 8.0  # metric height/width answers: the extent spans at least this many pixel footprints
    moved_threshold_m: float = 0.03  # an object "moved" if its centre moved at least this
    min_moved_distance_m: float = 0.05  # moved_distance: only objects measured to move at least this
    seed: int = 0

    def __post_init__(self):
        if self.families is not None:
            unknown = [f for f in self.families if f not in FAMILIES]
            if unknown or not self.families:
                raise ValueError(f"families: unknown {unknown} (known: {', '.join(FAMILIES)})" if unknown
                                 else "families: expected at least one family (or None for all)")
        if self.max_per_family < 1:
            raise ValueError(f"max_per_family: expected >= 1, got {self.max_per_family}")
        for name in ("position_margin_m", "relative_position_margin", "size_margin", "size_margin_m",
                     "volume_margin", "min_pixels_across", "min_displacement_m", "moved_threshold_m",
                     "min_moved_distance_m"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")

    @property
    def family_names(self) -> tuple[str, ...]:
        return tuple(self.families) if self.families is not None else tuple(FAMILIES)


# -- facts -----------------------------------------------------------------------------------------------------------


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


# -- units -----------------------------------------------------------------------------------------------------------


def format_length(value_m: float) -> tuple[str, float, str]:
    """(text, rounded value, unit): < 10 cm -> "4.5 cm"; < 1 m -> "23 cm"; else "1.23 m"."""
    value_m = float(value_m)
    cm = value_m * 100
    if round(cm, 1) < 10:
        value, unit, text = round(cm, 1), "cm", f"{round(cm, 1):.1f} cm"
    elif round(cm) < 100:
        value, unit, text = float(round(cm)), "cm", f"{round(cm):d} cm"
    else:
        value, unit, text = round(value_m, 2), "m", f"{round(value_m, 2):.2f} m"
    return text, value, unit


def to_metres(value: float, unit: str) -> float:
    return {"m": 1.0, "cm": 0.01, "mm": 0.001}[unit] * float(value)


def _xyz(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(c):.3f}" for c in v) + ") m"


def _plural(category: str) -> str:
    return category + ("es" if category.endswith(("s", "x", "ch", "sh")) else "s")


# -- families --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """A two-object comparison: the *winner* is the object with the larger (or, ``smaller_wins``, smaller) key."""

    key: Callable[[SceneFacts, int], float]
    smaller_wins: bool
    which: tuple[str, ...]  # "Which ..., the {a} or the {b}?" heads
    winner_rel: str  # "to the left of"
    loser_rel: str  # "to the right of"
    relative: bool  # margin relative (sizes) or absolute (positions)
    describe: str  # what the key is, for the reasoning trace


COMPARISONS: dict[str, Comparison] = {
    "closer_to_camera": Comparison(
        key=lambda s, o: s.distance_to_camera(o), smaller_wins=True,
        which=("Which is closer to the camera", "Which is nearer to the viewer"),
        winner_rel="closer to the camera than", loser_rel="farther from the camera than", relative=False,
        describe="distance from the camera to the centre"),
    "left_right": Comparison(
        key=lambda s, o: float(s.centre(o)[0]), smaller_wins=True,
        which=("Which is further to the left", "From the camera's point of view, which is more to the left"),
        winner_rel="to the left of", loser_rel="to the right of", relative=False, describe="x (right) of the centre"),
    "front_behind": Comparison(
        key=lambda s, o: float(s.centre(o)[1]), smaller_wins=True,
        which=("Which is in front", "Which is further forward, toward the camera"),
        winner_rel="in front of", loser_rel="behind", relative=False,
        describe="y (forward, away from the camera) of the centre"),
    "above_below": Comparison(
        key=lambda s, o: float(s.centre(o)[2]), smaller_wins=False,
        which=("Which is higher up", "Which sits higher"),
        winner_rel="above", loser_rel="below", relative=False, describe="z (up) of the centre"),
    "taller_shorter": Comparison(
        key=lambda s, o: s.objects[o].height_m, smaller_wins=False,
        which=("Which is taller", "Which one is taller"),
        winner_rel="taller than", loser_rel="shorter than", relative=True, describe="height (vertical extent)"),
    "wider_narrower": Comparison(
        key=lambda s, o: s.objects[o].width_m, smaller_wins=False,
        which=("Which is wider", "Which one is wider"),
        winner_rel="wider than", loser_rel="narrower than", relative=True,
        describe="width (longer side of the footprint)"),
    "bigger_smaller": Comparison(
        key=lambda s, o: s.objects[o].volume_m3, smaller_wins=False,
        which=("Which is bigger", "Which takes up more space"),
        winner_rel="bigger than", loser_rel="smaller than", relative=True,
        describe="upright-box volume (footprint x height)"),
}

# Quantity families: question templates and answer templates ({a}, {b}, {value}).
_QUANTITY_PHRASINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "distance_between": (
        ("How far apart are the {a} and the {b}?", "The {a} and the {b} are about {value} apart."),
        ("What is the distance between the {a} and the {b}?", "About {value}."),
        ("How far is the {a} from the {b}?", "The {a} is about {value} from the {b}."),
        ("Measure the distance from the {a} to the {b}, centre to centre.", "{value} centre to centre."),
    ),
    "distance_to_camera": (
        ("How far is the {a} from the camera?", "The {a} is about {value} from the camera."),
        ("What is the distance between the camera and the {a}?", "About {value}."),
        ("How far away from the viewer is the {a}?", "Roughly {value} away."),
        ("Estimate the distance from the camera to the {a}.", "{value}."),
    ),
    "height": (
        ("How tall is the {a}?", "The {a} is about {value} tall."),
        ("What is the height of the {a}?", "Its height is about {value}."),
        ("How tall is the {a} from bottom to top?", "About {value}."),
        ("Measure the height of the {a}.", "{value}."),
    ),
    "width": (
        ("How wide is the {a}?", "The {a} is about {value} wide."),
        ("What is the width of the {a}?", "Its width is about {value}."),
        ("How wide is the {a} across?", "About {value} across."),
        ("Measure the width of the {a}.", "{value}."),
    ),
    "moved_distance": (
        ("How far did the robot move the {a}?", "It moved the {a} about {value}."),
        ("How far is the {a} from where it started?", "About {value} from its starting point."),
        ("What distance was the {a} moved between the first and the last frame?", "About {value}."),
        ("By how much did the {a}'s position change during the episode?", "By about {value}."),
    ),
}

_GRIPPER_PHRASINGS = (
    ("How far and which way must the gripper move to reach the {a}?", "Move about {value}: {directions}."),
    ("Where is the {a} relative to the gripper, and how far?", "About {value} away: {directions}."),
    ("In which direction and how far should the robot move its gripper to get to the {a}?",
     "About {value}: {directions}."),
    ("Give the displacement from the gripper to the {a}.", "{value}: {directions}."),
)

_COUNT_PHRASINGS = (
    ("How many {plural} are there?", "There {are} {n} {noun}."),
    ("Count the {plural} in the image.", "{n}."),
    ("How many {plural} can you see?", "I can see {n} {noun}."),
    ("What is the number of {plural} in view?", "{n}."),
)

_MOVED_PHRASINGS = (
    ("Which object did the robot move?", "The robot moved the {x}.", "The robot did not move any object."),
    ("Which object changed position during the episode?", "The {x}.", "None of them."),
    ("What did the robot move between the first and the last frame?", "The {x}.", "Nothing; no object moved."),
    ("Did the robot move an object, and if so which one?", "Yes, the {x}.", "No, no object moved."),
)


@dataclass(frozen=True)
class Family:
    name: str
    kind: Kind
    arity: int  # objects per question (0: a category)
    answer_type: str  # "length" | "vector" | "choice" | "count"
    num_phrasings: int
    needs_start: bool = False  # trajectory: needs the episode's first frame too


def _families() -> dict[str, Family]:
    out: dict[str, Family] = {}
    for name in ("distance_between", "distance_to_camera"):
        out[name] = Family(name, "quantitative", 2 if name == "distance_between" else 1, "length",
                           len(_QUANTITY_PHRASINGS[name]))
    for name in COMPARISONS:
        out[name] = Family(name, "qualitative", 2, "choice", 5)
    for name in ("height", "width"):
        out[name] = Family(name, "quantitative", 1, "length", len(_QUANTITY_PHRASINGS[name]))
    out["count"] = Family("count", "qualitative", 0, "count", len(_COUNT_PHRASINGS))
    out["gripper_displacement"] = Family("gripper_displacement", "quantitative", 1, "vector", len(_GRIPPER_PHRASINGS))
    out["moved_object"] = Family("moved_object", "qualitative", 0, "choice", len(_MOVED_PHRASINGS), needs_start=True)
    out["moved_distance"] = Family("moved_distance", "quantitative", 1, "length",
                                   len(_QUANTITY_PHRASINGS["moved_distance"]), needs_start=True)
    return out


FAMILIES: dict[str, Family] = _families()


# -- answers from facts (shared by generation and scoring) -----------------------------------------------------------


def winner(family: str, scene: SceneFacts, a: int, b: int) -> int:
    cmp = COMPARISONS[family]
    ka, kb = cmp.key(scene, a), cmp.key(scene, b)
    a_wins = ka < kb if cmp.smaller_wins else ka > kb
    return a if a_wins else b


def comparison_choice(family: str, phrasing: int, winner_id: int, a: int, b: int, names: dict[int, str]) -> str:
    """The choice a phrasing's answer states, given the winner: an object name, yes/no, or a relation."""
    cmp = COMPARISONS[family]
    if phrasing < 2:  # "Which ...?"
        return names[winner_id]
    if phrasing == 2:  # "Is the {a} <winner_rel> the {b}?"
        return "yes" if winner_id == a else "no"
    if phrasing == 3:  # "Is the {a} <loser_rel> the {b}?"
        return "yes" if winner_id == b else "no"
    return cmp.winner_rel if winner_id == a else cmp.loser_rel  # "Is the {a} <winner_rel> or <loser_rel> the {b}?"


def quantity(family: str, scene: SceneFacts, ids: list[int], start: SceneFacts | None = None) -> float:
    if family == "distance_between":
        return float(np.linalg.norm(scene.centre(ids[0]) - scene.centre(ids[1])))
    if family == "distance_to_camera":
        return scene.distance_to_camera(ids[0])
    if family == "height":
        return scene.objects[ids[0]].height_m
    if family == "width":
        return scene.objects[ids[0]].width_m
    if family == "moved_distance":
        return float(np.linalg.norm(displacements(start, scene)[ids[0]]))
    raise KeyError(family)


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


# -- generation ------------------------------------------------------------------------------------------------------


@dataclass
class FrameRef:
    episode_id: str
    camera: str
    frame: int
    timestamp_s: float
    start_frame: int | None = None  # trajectory questions: the first frame they compare with

    def to_json(self) -> dict[str, Any]:
        out = {"episode_id": self.episode_id, "camera": self.camera, "frame": self.frame,
               "timestamp_s": round(self.timestamp_s, 4)}
        if self.start_frame is not None:
            out["start_frame"] = self.start_frame
        return out


@dataclass
class Candidate:
    family: str
    ids: list[int]
    category: str | None = None


def _rng(config: QAConfig, ref: FrameRef, family: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{config.seed}/{ref.episode_id}/{ref.camera}/{ref.frame}/{family}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _candidates(family: Family, scene: SceneFacts) -> list[Candidate]:
    ids = sorted(scene.names)
    if family.name == "count":
        categories = sorted({c for c in scene.categories.values() if c})
        return [Candidate(family.name, [], category=c) for c in categories]
    if family.name == "moved_object":
        return [Candidate(family.name, ids)]
    if family.arity == 1:
        return [Candidate(family.name, [i]) for i in ids]
    return [Candidate(family.name, [a, b]) for k, a in enumerate(ids) for b in ids[k + 1:]]


# The extent a metric size answer reads must span config.min_pixels_across pixel footprints. (Size comparisons are
# guarded by their sampling intervals instead, see _ambiguous.)
_SIZES_USED = {"height": ("height",), "width": ("width",)}


def _blocked(candidate: Candidate, family: Family, scene: SceneFacts, start: SceneFacts | None,
             config: QAConfig) -> str | None:
    """Why the data cannot support this candidate (a skip reason), or None."""
    if family.needs_start:
        if start is None:
            return "single_frame"
        if not (scene.has_identity and start.has_identity):
            return "no_object_identity"
        if centres_in(start, scene) is None:
            return "moving_camera"
    if family.name == "count":
        same = [oid for oid, c in scene.categories.items() if c == candidate.category]
        if any(oid in scene.count_uncertain for oid in same):
            return "out_of_view"  # partly in view: is it in the image or not?
        if any(scene.problems.get(oid) == "not_visible" for oid in same):
            return "not_visible"  # a known object of this category is hidden or out of frame: cannot count it
        return None
    if family.name == "gripper_displacement" and scene.gripper_position_m is None:
        return "no_gripper_pose"
    for oid in candidate.ids:
        for frame in (scene, start) if family.needs_start else (scene,):
            if oid in frame.problems:
                return frame.problems[oid]
            if oid not in frame.objects:
                return "not_visible"
        sizes = _SIZES_USED.get(family.name, ())
        if any(scene.objects[oid].pixels_across(size) < config.min_pixels_across for size in sizes):
            return "too_small_in_image"
    return None


def _ambiguous(candidate: Candidate, family: Family, scene: SceneFacts, start: SceneFacts | None,
               config: QAConfig) -> bool:
    """The measured facts are too close to call (judged on measurements only, never on the truth)."""
    name, ids = family.name, candidate.ids
    if name in COMPARISONS:
        cmp = COMPARISONS[name]
        ka, kb = cmp.key(scene, ids[0]), cmp.key(scene, ids[1])
        gap = abs(ka - kb)
        if cmp.relative:
            lo, hi = sorted((ka, kb))
            margin = config.volume_margin if name == "bigger_smaller" else config.size_margin
            too_small = name != "bigger_smaller" and gap < config.size_margin_m
            if lo <= 0 or hi / lo - 1 < margin or too_small:
                return True
            # The sizes' sampling intervals (ObjectFacts.size_interval) must not overlap.
            size = {"taller_shorter": "height", "wider_narrower": "width", "bigger_smaller": "volume"}[name]
            big, small = (ids[0], ids[1]) if ka > kb else (ids[1], ids[0])
            return scene.objects[big].size_interval(size)[0] <= scene.objects[small].size_interval(size)[1]
        if name == "closer_to_camera":
            return gap < max(config.position_margin_m, config.relative_position_margin * (ka + kb) / 2)
        return gap < config.position_margin_m
    if name == "gripper_displacement":
        return float(np.linalg.norm(gripper_vector(scene, ids[0]))) < config.min_displacement_m
    if name == "moved_distance":
        return float(np.linalg.norm(displacements(start, scene)[ids[0]])) < config.min_moved_distance_m
    if name == "moved_object":
        moves = sorted((float(np.linalg.norm(v)) for v in displacements(start, scene).values()), reverse=True)
        if not moves:
            return True
        thr = config.moved_threshold_m
        if thr / 2 <= moves[0] < 1.5 * thr:  # too close to the "moved" threshold to call
            return True
        return moves[0] >= 1.5 * thr and len(moves) > 1 and moves[1] >= thr / 2  # two objects moved
    return False


def _directions(vector_m: np.ndarray) -> str:
    parts = []
    for value, (pos, neg) in zip(vector_m, (("to the right", "to the left"),
                                            ("forward (away from the camera)", "back (toward the camera)"),
                                            ("up", "down"))):
        cm = round(abs(float(value)) * 100)
        if cm >= 1:
            parts.append(f"{cm} cm {pos if value > 0 else neg}")
    if not parts:
        return "it is already there"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _record(family: Family, candidate: Candidate, phrasing: int, scene: SceneFacts, start: SceneFacts | None,
            ref: FrameRef, config: QAConfig, index: int) -> dict[str, Any]:
    """One QA record from measured facts."""
    name, ids = family.name, candidate.ids
    names = scene.names
    a = names[ids[0]] if ids else ""
    b = names[ids[1]] if len(ids) > 1 else ""
    objects_ids = list(ids)
    if name in COMPARISONS:
        cmp = COMPARISONS[name]
        win = winner(name, scene, ids[0], ids[1])
        lose = ids[1] if win == ids[0] else ids[0]
        choice = comparison_choice(name, phrasing, win, ids[0], ids[1], names)
        if phrasing < 2:
            question = f"{cmp.which[phrasing]}, the {a} or the {b}?"
            answer = f"The {names[win]} is {cmp.winner_rel} the {names[lose]}."
            options = [a, b]
        elif phrasing in (2, 3):
            rel = cmp.winner_rel if phrasing == 2 else cmp.loser_rel
            question = f"Is the {a} {rel} the {b}?"
            true_rel = cmp.winner_rel if win == ids[0] else cmp.loser_rel
            answer = f"{choice.capitalize()}, the {a} is {true_rel} the {b}."
            options = ["yes", "no"]
        else:
            question = f"Is the {a} {cmp.winner_rel} or {cmp.loser_rel} the {b}?"
            answer = f"The {a} is {choice} the {b}."
            options = [cmp.winner_rel, cmp.loser_rel]
        ka, kb = cmp.key(scene, ids[0]), cmp.key(scene, ids[1])
        unit = "m^3" if name == "bigger_smaller" else "m"
        fmt = (lambda v: f"{v * 1e6:.0f} cm^3") if name == "bigger_smaller" else (lambda v: f"{v:.3f} m")
        reasoning = (f"{cmp.describe}: {a} {fmt(ka)}, {b} {fmt(kb)}; "
                     f"so the {names[win]} is {cmp.winner_rel} the {names[lose]}.")
        structured = {"type": "choice", "choice": choice, "options": options, "winner_id": win,
                      "key_values": [round(ka, 6), round(kb, 6)], "key_unit": unit}
    elif family.answer_type == "length":
        value_m = quantity(name, scene, ids, start)
        text, value, unit = format_length(value_m)
        question, answer = _QUANTITY_PHRASINGS[name][phrasing]
        question, answer = question.format(a=a, b=b), answer.format(a=a, b=b, value=text)
        answer = answer[0].upper() + answer[1:]
        reasoning = _quantity_reasoning(name, scene, ids, start, value_m)
        structured = {"type": "quantity", "value": value, "unit": unit, "value_m": round(value_m, 5)}
    elif name == "gripper_displacement":
        vector = gripper_vector(scene, ids[0])
        length = float(np.linalg.norm(vector))
        text, value, unit = format_length(length)
        question, answer = _GRIPPER_PHRASINGS[phrasing]
        question = question.format(a=a)
        answer = answer.format(value=text, directions=_directions(vector))
        answer = answer[0].upper() + answer[1:]
        reasoning = (f"gripper point at {_xyz(scene.gripper_position_m)}, {a} centre at {_xyz(scene.centre(ids[0]))} "
                     f"(x right, y forward, z up); displacement {_xyz(vector)}, length {length:.3f} m.")
        structured = {"type": "vector", "value": value, "unit": unit, "value_m": round(length, 5),
                      "components_cm": {"right": round(float(vector[0]) * 100, 1),
                                        "forward": round(float(vector[1]) * 100, 1),
                                        "up": round(float(vector[2]) * 100, 1)},
                      "components_m": [round(float(v), 5) for v in vector],
                      "frame": "viewer (x right, y forward, z up)"}
    elif name == "count":
        category = candidate.category
        n = count_of(scene, category)
        question, answer = _COUNT_PHRASINGS[phrasing]
        noun = category if n == 1 else _plural(category)
        question = question.format(plural=_plural(category))
        answer = answer.format(n=n, noun=noun, are="is" if n == 1 else "are")
        seen = [scene.names[oid] for oid, c in scene.categories.items() if c == category and scene.counted.get(oid)]
        reasoning = f"objects of category '{category}' in the image: {', '.join(seen) if seen else 'none'} ({n})."
        structured = {"type": "count", "value": n, "unit": _plural(category), "category": category}
        objects_ids = [oid for oid, c in scene.categories.items() if c == category and scene.counted.get(oid)]
    elif name == "moved_object":
        best = moved(start, scene, config.moved_threshold_m)
        question, yes, no = _MOVED_PHRASINGS[phrasing]
        answer = yes.format(x=names[best]) if best is not None else no
        moves = displacements(start, scene)
        listing = ", ".join(f"{names[o]} {np.linalg.norm(v):.3f} m" for o, v in sorted(moves.items()))
        reasoning = (f"centre displacements from frame {ref.start_frame} to frame {ref.frame}: {listing}; "
                     + (f"the largest is the {names[best]}." if best is not None
                        else f"none reaches {config.moved_threshold_m:.2f} m."))
        choice = names[best] if best is not None else "none"
        structured = {"type": "choice", "choice": choice, "options": [names[o] for o in sorted(moves)] + ["none"],
                      "winner_id": best}
        objects_ids = [best] if best is not None else []
    else:
        raise KeyError(name)
    return {"qa_id": f"{ref.episode_id}/{ref.camera}/{ref.frame:06d}/{name}/{index}", "family": name,
            "kind": family.kind, "question": question, "answer": answer, "answer_structured": structured,
            "object_ids": [int(o) for o in objects_ids], "object_names": [names[o] for o in objects_ids],
            "reasoning": reasoning, "frame_ref": ref.to_json(), "phrasing": phrasing,
            "asked_ids": [int(o) for o in ids], "category": candidate.category}


def _quantity_reasoning(name: str, scene: SceneFacts, ids: list[int], start: SceneFacts | None,
                        value_m: float) -> str:
    n = scene.names
    if name == "distance_between":
        ca, cb = scene.centre(ids[0]), scene.centre(ids[1])
        return (f"{n[ids[0]]} centre at {_xyz(ca)}, {n[ids[1]]} centre at {_xyz(cb)} (x right, y forward, z up); "
                f"difference {_xyz(cb - ca)}, length {value_m:.3f} m.")
    if name == "distance_to_camera":
        return (f"camera at {_xyz(scene.camera_position_m)}, {n[ids[0]]} centre at {_xyz(scene.centre(ids[0]))}; "
                f"distance {value_m:.3f} m.")
    f = scene.objects[ids[0]]
    if name == "height":
        return (f"{n[ids[0]]} spans z = {f.bottom_z_m:.3f} .. {f.top_z_m:.3f} m in the gravity-aligned frame "
                f"({f.num_points} points); height {value_m:.3f} m.")
    if name == "width":
        return (f"{n[ids[0]]} horizontal footprint {f.width_m:.3f} x {f.length_m:.3f} m (upright box, yaw "
                f"{math.degrees(f.yaw_rad):.0f} deg); width = longer side {value_m:.3f} m.")
    if name == "moved_distance":
        before = centres_in(start, scene)[ids[0]]
        return (f"{n[ids[0]]} centre at {_xyz(before)} in the first frame and {_xyz(scene.centre(ids[0]))} in this "
                f"one; displacement length {value_m:.3f} m.")
    raise KeyError(name)


def generate_questions(scene: SceneFacts, ref: FrameRef, config: QAConfig,
                       start: SceneFacts | None = None) -> tuple[list[dict[str, Any]], Counter]:
    """QA records for one frame and the skipped candidates, counted by (family, reason)."""
    records: list[dict[str, Any]] = []
    skips: Counter = Counter()
    for family_name in config.family_names:
        family = FAMILIES[family_name]
        if family.needs_start and ref.start_frame is None:
            continue  # trajectory questions are asked on the episode's last frame only
        eligible = []
        for candidate in _candidates(family, scene):
            reason = _blocked(candidate, family, scene, start, config)
            if reason is None and _ambiguous(candidate, family, scene, start, config):
                reason = "ambiguous"
            if reason is not None:
                skips[(family_name, reason)] += 1
            else:
                eligible.append(candidate)
        if not eligible:
            continue
        rng = _rng(config, ref, family_name)
        picks = rng.permutation(len(eligible))[: config.max_per_family]
        for index, pick in enumerate(sorted(int(p) for p in picks)):
            candidate = eligible[pick]
            if family.arity == 2 and rng.random() < 0.5:
                candidate = Candidate(candidate.family, candidate.ids[::-1], candidate.category)
            phrasing = int(rng.integers(family.num_phrasings))
            records.append(_record(family, candidate, phrasing, scene, start, ref, config, index))
    return records, skips


# -- scoring ---------------------------------------------------------------------------------------------------------


@dataclass
class Score:
    family: str
    kind: Kind
    correct: bool  # qualitative: exact; quantitative: within 25%
    ratio: float | None = None  # quantitative: estimate / truth (lengths)
    relative_error: float | None = None


def score_record(record: dict[str, Any], truth: SceneFacts, truth_start: SceneFacts | None = None,
                 config: QAConfig | None = None) -> Score:
    """Score one record against true facts of the same frame (and of the start frame for trajectory questions)."""
    config = config or QAConfig()
    family, structured, ids = record["family"], record["answer_structured"], record["asked_ids"]
    kind = FAMILIES[family].kind
    if family in COMPARISONS:
        win = winner(family, truth, ids[0], ids[1])
        expected = comparison_choice(family, record["phrasing"], win, ids[0], ids[1], truth.names)
        return Score(family, kind, structured["choice"] == expected)
    if family == "count":
        return Score(family, kind, structured["value"] == count_of(truth, record["category"]))
    if family == "moved_object":
        best = moved(truth_start, truth, config.moved_threshold_m)
        return Score(family, kind, structured["winner_id"] == best)
    if family == "gripper_displacement":
        true_vec = gripper_vector(truth, ids[0])
        est_vec = np.asarray(structured["components_m"])
        true_len = float(np.linalg.norm(true_vec))
        if true_len <= 0:
            return Score(family, kind, False, ratio=math.inf, relative_error=math.inf)
        err = float(np.linalg.norm(est_vec - true_vec)) / true_len
        return Score(family, kind, err <= 0.25, ratio=float(np.linalg.norm(est_vec)) / true_len, relative_error=err)
    true_value = quantity(family, truth, ids, truth_start)
    est_value = to_metres(structured["value"], structured["unit"])
    if true_value <= 0:  # e.g. a distance moved by an object that did not move: any positive answer is wrong
        return Score(family, kind, est_value == true_value, ratio=math.inf, relative_error=math.inf)
    err = abs(est_value - true_value) / true_value
    return Score(family, kind, err <= 0.25, ratio=est_value / true_value, relative_error=err)


def summarize_scores(scores: list[Score]) -> dict[str, Any]:
    """Overall and per-family accuracy: quantitative within 25% and within 0.5x-2x, qualitative exact."""
    def rate(items: list[Score], pred) -> float | None:
        return round(sum(1 for s in items if pred(s)) / len(items), 4) if items else None

    quant = [s for s in scores if s.kind == "quantitative"]
    qual = [s for s in scores if s.kind == "qualitative"]
    per_family: dict[str, dict[str, Any]] = {}
    for name in sorted({s.family for s in scores}):
        items = [s for s in scores if s.family == name]
        entry: dict[str, Any] = {"kind": items[0].kind, "n": len(items)}
        if items[0].kind == "quantitative":
            entry["within_25pct"] = rate(items, lambda s: s.correct)
            entry["within_0_5x_2x"] = rate(items, lambda s: 0.5 <= s.ratio <= 2.0)
            entry["median_relative_error"] = round(float(np.median([s.relative_error for s in items])), 4)
        else:
            entry["correct"] = rate(items, lambda s: s.correct)
        per_family[name] = entry
    return {"quantitative_within_25pct": rate(quant, lambda s: s.correct),
            "quantitative_within_0_5x_2x": rate(quant, lambda s: 0.5 <= s.ratio <= 2.0),
            "qualitative_correct": rate(qual, lambda s: s.correct),
            "num_quantitative": len(quant), "num_qualitative": len(qual), "per_family": per_family}
