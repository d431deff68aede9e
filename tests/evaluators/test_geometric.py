"""The geometric judge on read-outs with known positions: ee and target object against the subgoal, object in the
table."""

from __future__ import annotations

import math

import pytest

from evaluators.base import build_evaluator
from tests.evaluators.helpers import KnownReadout, make_trajectory

GOAL_EE = [0.50, 0.10, 0.12]
GOAL_OBJECTS = [[0.45, 0.05, 0.02], [0.60, -0.10, 0.02]]  # the target (1) is to be pushed to (0.60, -0.10)


def judge(readout: KnownReadout, target: int | None = 1, objects=GOAL_OBJECTS, **options):
    subgoal = {"name": "push", "goal_frame": 30, "progress": 0.8, "ee_xyz": GOAL_EE, "objects_xyz": objects,
               "target_object": target}
    return build_evaluator("geometric", options, {"readout": readout})(make_trajectory(subgoal=subgoal))


def test_object_moved_to_its_subgoal_passes_and_one_left_behind_fails():
    moved = judge(KnownReadout(ee_xyz=[0.50, 0.11, 0.12], object_xyz=[0.605, -0.10, 0.02]))
    assert moved.passed and moved.score > 0.9
    assert moved.details["ee_error_cm"] == pytest.approx(1.0, abs=1e-3)
    assert moved.details["object_error_cm"] == pytest.approx(0.5, abs=1e-3)
    stayed = judge(KnownReadout(ee_xyz=[0.50, 0.11, 0.12], object_xyz=[0.60, 0.0, 0.02]))  # still 10 cm away
    assert not stayed.passed and stayed.score < 0.01
    assert stayed.reason == "object 10.0 cm from its subgoal position"


def test_a_term_at_its_tolerance_scores_one_half():
    verdict = judge(KnownReadout(ee_xyz=[0.53, 0.10, 0.12], object_xyz=[0.60, -0.10, 0.05]))
    assert verdict.details["ee_term"] == pytest.approx(0.5, abs=1e-4)
    assert verdict.details["object_term"] == pytest.approx(0.5, abs=1e-4)
    assert verdict.score == pytest.approx(0.25 * verdict.details["table_term"], abs=1e-4)
    assert not verdict.passed  # two terms at their tolerance: 0.25 < 0.5


def test_object_sunk_into_the_table_fails():
    sunk = judge(KnownReadout(ee_xyz=GOAL_EE, object_xyz=[0.60, -0.10, -0.025]), object_tol_m=0.1)
    assert not sunk.passed and sunk.reason.startswith("object at z = -2.5 cm, below the table")
    assert sunk.details["table_term"] == pytest.approx(1 / (1 + math.exp(3.0)), abs=1e-6)


def test_ee_only_subgoals_and_untrained_object_head():
    reach = judge(KnownReadout(ee_xyz=[0.50, 0.10, 0.16]), target=None, objects=None)
    assert set(reach.details) == {"ee_error_cm", "ee_term"} and reach.reason == "ee 4.0 cm from the subgoal"
    unread = judge(KnownReadout(ee_xyz=GOAL_EE, object_trained=False))
    assert unread.passed and "object not checked" in unread.reason


def test_needs_a_readout():
    with pytest.raises(ValueError, match="readout"):
        build_evaluator("geometric", {}, {})


def test_check_picks_the_terms():
    far_arm = KnownReadout(ee_xyz=[0.50, 0.30, 0.12], object_xyz=[0.605, -0.10, 0.02])  # arm 20 cm off, object there
    assert not judge(far_arm).passed
    objects_only = judge(far_arm, check=["object", "table"])
    assert objects_only.passed and "ee_term" not in objects_only.details and "ee_error_cm" not in objects_only.details
    nothing = judge(far_arm, target=None, objects=None, check=["object"])
    assert nothing.score == 0.0 and nothing.reason.startswith("cannot judge")


@pytest.mark.parametrize("check", [[], "object", ["object", "gripper"]])
def test_bad_check_fails_naming_the_option(check):
    with pytest.raises(ValueError, match="check"):
        build_evaluator("geometric", {"check": check}, {"readout": KnownReadout()})
