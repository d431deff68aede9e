"""The progress judge's score on read-outs with known answers, and GVL's value-order correlation."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.base import build_evaluator
from evaluators.progress import spearman, value_order_correlation
from tests.evaluators.helpers import KnownReadout, make_trajectory


def judge(read: float, goal: float, **options):
    trajectory = make_trajectory(subgoal={"name": "grasp", "goal_frame": 20, "progress": goal, "ee_xyz": [0.5, 0, 0.1],
                                          "objects_xyz": None, "target_object": None})
    return build_evaluator("progress", options, {"readout": KnownReadout(progress=read)})(trajectory)


def test_score_falls_linearly_to_zero_at_the_tolerance():
    assert judge(0.62, 0.62).score == pytest.approx(1.0)
    near = judge(0.55, 0.62)
    assert near.score == pytest.approx(1 - 0.07 / 0.15, abs=1e-5) and near.passed
    far = judge(0.41, 0.62)
    assert far.score == 0.0 and not far.passed
    assert far.reason == "progress 0.41, subgoal at 0.62"
    assert far.details["progress_error"] == pytest.approx(0.21, abs=1e-5)
    assert judge(0.41, 0.62, tolerance=0.42).score == pytest.approx(0.5, abs=1e-5)


def test_missing_readout_or_subgoal():
    with pytest.raises(ValueError, match="readout"):
        build_evaluator("progress", {}, {})
    trajectory = make_trajectory()
    trajectory.meta["subgoal"] = {"name": "grasp"}
    verdict = build_evaluator("progress", {}, {"readout": KnownReadout()})(trajectory)
    assert verdict.score == 0.0 and "no 'progress'" in verdict.reason


def test_spearman_with_ties_and_constants():
    assert spearman(np.arange(5), np.arange(5) ** 2) == pytest.approx(1.0)
    assert spearman(np.arange(5), -np.arange(5)) == pytest.approx(-1.0)
    assert spearman(np.ones(5), np.arange(5)) == 0.0
    # ties share their mean rank: ranks (0.5, 0.5, 2, 3) against (0, 1, 2, 3)
    expected = np.corrcoef([0.5, 0.5, 2, 3], [0, 1, 2, 3])[0, 1]
    assert spearman(np.array([1.0, 1.0, 2.0, 3.0]), np.arange(4)) == pytest.approx(expected)


def test_value_order_correlation_is_the_mean_over_episodes():
    episodes = [np.zeros((6, 3, 8, 8), np.uint8), np.zeros((4, 3, 8, 8), np.uint8)]
    rising = KnownReadout(per_frame=lambda n: np.linspace(0, 1, n))
    assert value_order_correlation(rising, episodes) == pytest.approx(1.0)
    falling = KnownReadout(per_frame=lambda n: np.linspace(1, 0, n))
    assert value_order_correlation(falling, episodes) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="no episode"):
        value_order_correlation(rising, [np.zeros((1, 3, 8, 8), np.uint8)])
