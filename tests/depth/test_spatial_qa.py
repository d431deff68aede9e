"""Every question family on a hand-built scene with known answers; units and rounding; skips; scoring."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from depth.boxes import box_facts
from depth.qa_facts import SceneFacts
from depth.qa_families import COMPARISONS, FAMILIES
from depth.qa_scoring import score_record, summarize_scores
from depth.spatial_qa import FrameRef, QAConfig, format_length, generate_questions

RED, BLUE, GREEN, GREY = 1, 2, 3, 4
NAMES = {RED: "red cube", BLUE: "blue cylinder", GREEN: "green cube", GREY: "grey cube"}
CATEGORIES = {RED: "cube", BLUE: "cylinder", GREEN: "cube", GREY: "cube"}


def box(oid: int, centre, size) -> object:
    """True upright box facts from its 8 corners (viewer frame: x right, y forward, z up)."""
    signs = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])
    return box_facts(oid, NAMES[oid], CATEGORIES[oid], signs * np.asarray(size) + np.asarray(centre))


def scene(red_centre=(-0.10, 0.50, 0.025), problems=None, gripper=(0.0, 0.50, 0.20)) -> SceneFacts:
    objects = {RED: box(RED, red_centre, (0.05, 0.05, 0.05)),
               BLUE: box(BLUE, (0.10, 0.60, 0.04), (0.04, 0.04, 0.08)),
               GREEN: box(GREEN, (0.00, 0.40, 0.10), (0.03, 0.03, 0.03))}
    problems = dict(problems or {})
    for oid in problems:
        objects.pop(oid, None)
    names = {oid: NAMES[oid] for oid in (RED, BLUE, GREEN)}
    categories = {oid: CATEGORIES[oid] for oid in names}
    return SceneFacts(objects=objects, names=names, categories=categories, problems=problems,
                      camera_position_m=np.array([0.0, 0.0, 0.5]),
                      gripper_position_m=None if gripper is None else np.asarray(gripper, dtype=float),
                      counted={oid: True for oid in names}, world_from_frame=np.eye(4))


REF = FrameRef("ep-1", "front", 9, 0.9, start_frame=0)
ALL = QAConfig(max_per_family=100)


def records_by(records, family: str, ids=None):
    out = [r for r in records if r["family"] == family]
    if ids is not None:
        out = [r for r in out if sorted(r["asked_ids"]) == sorted(ids)]
    return out


@pytest.fixture(scope="module")
def generated():
    records, skips = generate_questions(scene(), REF, ALL, start=scene(red_centre=(-0.10, 0.40, 0.025)))
    return records, skips


def test_at_least_twelve_families_with_several_phrasings():
    assert len(FAMILIES) >= 12
    assert all(f.num_phrasings >= 4 for f in FAMILIES.values())
    required = {"distance_between", "distance_to_camera", "closer_to_camera", "left_right", "above_below",
                "front_behind", "taller_shorter", "wider_narrower", "bigger_smaller", "height", "width", "count",
                "gripper_displacement", "moved_object", "moved_distance"}
    assert required <= set(FAMILIES)


def test_every_family_is_asked_on_the_fixture(generated):
    records, _ = generated
    assert {r["family"] for r in records} == set(FAMILIES)


def test_record_fields(generated):
    records, _ = generated
    for r in records:
        assert r["question"].endswith(("?", ".")) and r["answer"]
        assert r["family"] in FAMILIES and r["kind"] == FAMILIES[r["family"]].kind
        assert r["answer_structured"]["type"] in ("quantity", "vector", "choice", "count")
        assert all(isinstance(o, int) for o in r["object_ids"])
        assert r["reasoning"] and r["frame_ref"]["episode_id"] == "ep-1" and r["frame_ref"]["frame"] == 9
        for name in r["object_names"]:
            assert name in r["question"] or r["family"] in ("count", "moved_object")


def test_distances(generated):
    records, _ = generated
    (d,) = records_by(records, "distance_between", [RED, BLUE])
    assert d["answer_structured"]["value_m"] == pytest.approx(math.dist((-0.1, 0.5, 0.025), (0.1, 0.6, 0.04)), abs=1e-4)
    assert (d["answer_structured"]["value"], d["answer_structured"]["unit"]) == (22.0, "cm") and "22 cm" in d["answer"]
    (c,) = records_by(records, "distance_to_camera", [RED])
    assert c["answer_structured"]["value_m"] == pytest.approx(math.dist((-0.1, 0.5, 0.025), (0, 0, 0.5)), abs=1e-4)
    assert "70 cm" in c["answer"]


def _winner(records, family, ids):
    (r,) = records_by(records, family, ids)
    return r["answer_structured"]["winner_id"], r


@pytest.mark.parametrize("family,ids,expected", [
    ("left_right", [RED, BLUE], RED),  # x -0.10 vs 0.10
    ("front_behind", [RED, BLUE], RED),  # y 0.50 vs 0.60: red is in front
    ("above_below", [GREEN, RED], GREEN),  # centre z 0.10 vs 0.025
    ("closer_to_camera", [RED, BLUE], RED),
    ("taller_shorter", [BLUE, RED], BLUE),  # 8 cm vs 5 cm
    ("wider_narrower", [RED, BLUE], RED),  # 5 cm vs 4 cm
    ("bigger_smaller", [RED, GREEN], RED),  # 125 cm^3 vs 27 cm^3
])
def test_comparisons(generated, family, ids, expected):
    winner, record = _winner(generated[0], family, ids)
    assert winner == expected
    a, b = record["asked_ids"]
    choice, phrasing = record["answer_structured"]["choice"], record["phrasing"]
    if phrasing < 2:
        assert choice == NAMES[expected]
    elif phrasing == 2:
        assert choice == ("yes" if expected == a else "no")
    elif phrasing == 3:
        assert choice == ("yes" if expected == b else "no")
    else:
        cmp = COMPARISONS[family]
        assert choice == (cmp.winner_rel if expected == a else cmp.loser_rel)
    assert choice.lower() in record["answer"].lower()


def test_close_comparisons_are_skipped_as_ambiguous(generated):
    records, skips = generated
    assert not records_by(records, "bigger_smaller", [RED, BLUE])  # 125 vs 128 cm^3: too close to call
    assert not records_by(records, "above_below", [RED, BLUE])  # centres 1.5 cm apart in height
    assert skips[("bigger_smaller", "ambiguous")] >= 1


def test_sizes(generated):
    records, _ = generated
    (h,) = records_by(records, "height", [BLUE])
    assert (h["answer_structured"]["value"], h["answer_structured"]["unit"]) == (8.0, "cm") and "8.0 cm" in h["answer"]
    (w,) = records_by(records, "width", [RED])
    assert w["answer_structured"]["value"] == 5.0 and "5.0 cm" in w["answer"]


def test_count(generated):
    records, _ = generated
    by_category = {r["category"]: r["answer_structured"]["value"] for r in records_by(records, "count")}
    assert by_category == {"cube": 2, "cylinder": 1}


def test_gripper_displacement(generated):
    (r,) = records_by(generated[0], "gripper_displacement", [RED])
    s = r["answer_structured"]
    assert s["components_m"] == pytest.approx([-0.10, 0.0, -0.175], abs=1e-6)
    assert s["components_cm"] == {"right": -10.0, "forward": 0.0, "up": -17.5}
    assert s["value"] == 20.0 and s["unit"] == "cm"
    assert "10 cm to the left" in r["answer"] and "18 cm down" in r["answer"] and "forward" not in r["answer"]


def test_trajectory(generated):
    records, _ = generated
    (m,) = records_by(records, "moved_object")
    assert m["answer_structured"]["choice"] == "red cube" and m["object_ids"] == [RED]
    (d,) = records_by(records, "moved_distance")
    assert d["asked_ids"] == [RED] and d["answer_structured"]["value"] == 10.0
    nothing, _ = generate_questions(scene(), REF, ALL, start=scene())
    (n,) = records_by(nothing, "moved_object")
    assert n["answer_structured"]["choice"] == "none" and not records_by(nothing, "moved_distance")


def test_unmeasurable_objects_are_skipped_and_counted():
    records, skips = generate_questions(scene(problems={BLUE: "occluded"}), REF, ALL,
                                        start=scene(red_centre=(-0.10, 0.40, 0.025)))
    assert all(BLUE not in r["asked_ids"] for r in records)
    assert skips[("distance_between", "occluded")] == 2  # (red, blue) and (blue, green)
    assert skips[("height", "occluded")] == 1
    no_gripper, skips = generate_questions(scene(gripper=None), REF, ALL)
    assert not records_by(no_gripper, "gripper_displacement")
    assert skips[("gripper_displacement", "no_gripper_pose")] == 3
    assert not records_by(no_gripper, "moved_object")  # not the last frame (no start): no trajectory questions


def test_count_is_skipped_when_an_object_of_the_category_is_hidden():
    records, skips = generate_questions(scene(problems={GREEN: "not_visible"}), REF, ALL)
    assert {r["category"] for r in records_by(records, "count")} == {"cylinder"}
    assert skips[("count", "not_visible")] == 1


@pytest.mark.parametrize("metres,text,value,unit", [
    (0.0449, "4.5 cm", 4.5, "cm"), (0.0996, "10 cm", 10.0, "cm"), (0.2349, "23 cm", 23.0, "cm"),
    (0.9951, "1.00 m", 1.0, "m"), (1.234, "1.23 m", 1.23, "m"), (0.004, "0.4 cm", 0.4, "cm"),
])
def test_units_and_rounding(metres, text, value, unit):
    assert format_length(metres) == (text, value, unit)


def test_phrasings_are_deterministic_and_varied():
    a, _ = generate_questions(scene(), REF, ALL)
    b, _ = generate_questions(scene(), REF, ALL)
    assert a == b
    other, _ = generate_questions(scene(), FrameRef("ep-2", "front", 9, 0.9), ALL)
    texts = {re.sub(r"the [a-z ]+?(?= or|\?| and| from| to| than| relative|,)", "X", r["question"])
             for r in a + other}
    assert len(texts) > 20


def test_scoring_against_truth():
    truth = scene()
    records, _ = generate_questions(truth, REF, ALL, start=scene(red_centre=(-0.10, 0.40, 0.025)))
    start = scene(red_centre=(-0.10, 0.40, 0.025))
    scores = [score_record(r, truth, start) for r in records]
    assert all(s.correct for s in scores)
    summary = summarize_scores(scores)
    assert summary["quantitative_within_25pct"] == 1.0 and summary["qualitative_correct"] == 1.0
    # a truth in which the red cube is right of and behind the blue cylinder, far from both: the answers about the
    # (red, blue) pair and every distance from the red cube must fail
    moved_truth = scene(red_centre=(0.30, 0.90, 0.025))
    wrong = [score_record(r, moved_truth, start) for r in records
             if (sorted(r["asked_ids"]) == [RED, BLUE] and r["family"] in ("left_right", "front_behind"))
             or (RED in r["asked_ids"] and r["family"] == "distance_between")]
    assert wrong and not any(s.correct for s in wrong)


def test_quantitative_tolerance_is_25_percent():
    truth = scene()
    (h,) = records_by(generate_questions(truth, REF, ALL)[0], "height", [BLUE])
    for true_height, ok in ((0.08 / 1.2, True), (0.08 / 1.3, False), (0.08 / 0.8, True), (0.08 / 0.7, False)):
        t = scene()
        t.objects[BLUE] = box(BLUE, (0.10, 0.60, true_height / 2), (0.04, 0.04, true_height))
        assert score_record(h, t).correct is ok
