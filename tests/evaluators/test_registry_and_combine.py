"""``import evaluators`` fills the registry without the pipeline; combine() turns the judges' verdicts into one
decision in each mode."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from evaluators import EVALUATORS, build_evaluator, combine
from tests.evaluators.helpers import KnownReadout, make_trajectory, sim_state


def test_import_registers_the_judges_and_never_the_pipeline():
    assert {"progress", "geometric", "consistency", "safety"} <= set(EVALUATORS)
    code = "import sys, evaluators; assert not [m for m in sys.modules if m.split('.')[0] == 'pipeline']"
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(ValueError, match="unknown 'oracle'"):
        build_evaluator("oracle")


def verdicts():
    """safety passes (1.0), progress fails (0.0: read 0.41 for a subgoal at 0.62), geometric passes (~0.93)."""
    readout = KnownReadout(ee_xyz=[0.5, 0.0, 0.11], progress=0.41)
    trajectory = make_trajectory(np.zeros((4, 5)), sim_state([0.5, 0.0, 0.1]),
                                 {"name": "grasp", "goal_frame": 20, "progress": 0.62, "ee_xyz": [0.5, 0.0, 0.1],
                                  "objects_xyz": None, "target_object": None})
    return {name: build_evaluator(name, {}, {"readout": readout})(trajectory)
            for name in ("safety", "progress", "geometric")}


def test_combine_modes():
    v = verdicts()
    assert [v[n].passed for n in ("safety", "progress", "geometric")] == [True, False, True]
    every = combine(v, "all")
    assert not every.accepted and every.reason == "progress: progress 0.41, subgoal at 0.62" and every.score == 0.0
    assert combine(v, "any").accepted and combine(v, "any").score == 1.0
    mean = combine(v, "weighted", threshold=0.6)
    assert mean.accepted and mean.score == pytest.approx((1.0 + 0.0 + v["geometric"].score) / 3)
    heavy = combine(v, "weighted", weights={"progress": 10.0})
    assert not heavy.accepted and heavy.reason.startswith("weighted score 0.16 < 0.5; progress: progress 0.41")
    record = every.to_dict()
    assert record["evaluators"]["progress"]["passed"] is False and "ee_error_cm" in record["evaluators"]["geometric"]
