"""The question families: two-object comparisons (``COMPARISONS``), the phrasings of every family, ``FAMILIES`` (kind,
arity, answer type, number of phrasings), and the answers a family gives from facts (``winner``,
``comparison_choice``, ``quantity``). See ``depth.spatial_qa`` for the list of families and what each asks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from depth.qa_facts import SceneFacts, displacements

Kind = Literal["quantitative", "qualitative"]


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
QUANTITY_PHRASINGS: dict[str, tuple[tuple[str, str], ...]] = {
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

GRIPPER_PHRASINGS = (
    ("How far and which way must the gripper move to reach the {a}?", "Move about {value}: {directions}."),
    ("Where is the {a} relative to the gripper, and how far?", "About {value} away: {directions}."),
    ("In which direction and how far should the robot move its gripper to get to the {a}?",
     "About {value}: {directions}."),
    ("Give the displacement from the gripper to the {a}.", "{value}: {directions}."),
)

COUNT_PHRASINGS = (
    ("How many {plural} are there?", "There {are} {n} {noun}."),
    ("Count the {plural} in the image.", "{n}."),
    ("How many {plural} can you see?", "I can see {n} {noun}."),
    ("What is the number of {plural} in view?", "{n}."),
)

MOVED_PHRASINGS = (
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
                           len(QUANTITY_PHRASINGS[name]))
    for name in COMPARISONS:
        out[name] = Family(name, "qualitative", 2, "choice", 5)
    for name in ("height", "width"):
        out[name] = Family(name, "quantitative", 1, "length", len(QUANTITY_PHRASINGS[name]))
    out["count"] = Family("count", "qualitative", 0, "count", len(COUNT_PHRASINGS))
    out["gripper_displacement"] = Family("gripper_displacement", "quantitative", 1, "vector", len(GRIPPER_PHRASINGS))
    out["moved_object"] = Family("moved_object", "qualitative", 0, "choice", len(MOVED_PHRASINGS), needs_start=True)
    out["moved_distance"] = Family("moved_distance", "quantitative", 1, "length",
                                   len(QUANTITY_PHRASINGS["moved_distance"]), needs_start=True)
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

