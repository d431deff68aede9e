"""Spatial question-answer synthesis from RGB-D frames: the QA config, answer units, and generating the QA records of
a frame (candidates, skips, sampling, question/answer/reasoning text).

The rest of the design lives in ``depth.qa_facts`` (the facts answers are read from), ``depth.qa_families`` (the
families, their phrasings and answers) and ``depth.qa_scoring`` (scoring against ground truth).

Every answer is computed from 3D facts about objects in the *viewer frame* (x right, y forward, z up, metres; see
``depth.pointcloud``): the centre and the upright box (width = longer side of the horizontal footprint, height =
vertical extent) of each object, the camera position and, when the robot state has it, the gripper position. The same
answer functions run on two kinds of facts: *measured* ones (``SceneFacts.from_perception``, from the point cloud) to
generate questions, and *true* ones (``pipeline.sim.truth``, from the simulator's object poses and true sizes) to score
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

Scoring (``depth.qa_scoring.score_record``): quantitative answers are correct within 25% of the truth
(``abs(est - true) <= 0.25 * true``; for the displacement vector, ``|est - true| <= 0.25 * |true|``), and the 0.5x-2x
rate (``0.5 <= est / true <= 2``, on lengths) is reported too; qualitative answers must match exactly.

Units and rounding of answers (``format_length``): below 10 cm, centimetres with one decimal ("4.5 cm"); from 10 cm to
1 m, whole centimetres ("23 cm"); from 1 m, metres with two decimals ("1.23 m"). The structured answer carries the
same rounded value and unit, plus the unrounded ``value_m``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from depth.qa_facts import SceneFacts, centres_in, count_of, displacements, gripper_vector, moved
from depth.qa_families import (
    COMPARISONS, COUNT_PHRASINGS, FAMILIES, GRIPPER_PHRASINGS, MOVED_PHRASINGS, QUANTITY_PHRASINGS, Family,
    comparison_choice, quantity, winner,
)

logger = logging.getLogger(__name__)

QA_SCHEMA_VERSION = 1


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
                raise ValueError(f"families: unknown families {unknown} (known: {', '.join(FAMILIES)})" if unknown
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
        question, answer = QUANTITY_PHRASINGS[name][phrasing]
        question, answer = question.format(a=a, b=b), answer.format(a=a, b=b, value=text)
        answer = answer[0].upper() + answer[1:]
        reasoning = _quantity_reasoning(name, scene, ids, start, value_m)
        structured = {"type": "quantity", "value": value, "unit": unit, "value_m": round(value_m, 5)}
    elif name == "gripper_displacement":
        vector = gripper_vector(scene, ids[0])
        length = float(np.linalg.norm(vector))
        text, value, unit = format_length(length)
        question, answer = GRIPPER_PHRASINGS[phrasing]
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
        question, answer = COUNT_PHRASINGS[phrasing]
        noun = category if n == 1 else _plural(category)
        question = question.format(plural=_plural(category))
        answer = answer.format(n=n, noun=noun, are="is" if n == 1 else "are")
        seen = [scene.names[oid] for oid, c in scene.categories.items() if c == category and scene.counted.get(oid)]
        reasoning = f"objects of category '{category}' in the image: {', '.join(seen) if seen else 'none'} ({n})."
        structured = {"type": "count", "value": n, "unit": _plural(category), "category": category}
        objects_ids = [oid for oid, c in scene.categories.items() if c == category and scene.counted.get(oid)]
    elif name == "moved_object":
        best = moved(start, scene, config.moved_threshold_m)
        question, yes, no = MOVED_PHRASINGS[phrasing]
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

