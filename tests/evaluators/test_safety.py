"""The safety judge on hand-made commanded paths with known answers, and on windows of real scripted demonstrations."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.base import build_evaluator
from evaluators.safety import Safety
from tests.evaluators.helpers import make_trajectory, sim_state

START = (0.5, 0.0, 0.2)  # inside the sim workspace, 20 cm above the table


def judge(actions, start=START, **options):
    return Safety(options)(make_trajectory(actions, None if start is None else sim_state(start)))


def steps(*deltas):
    """Actions from (dx, dy, dz) rows, yaw 0, gripper open."""
    return np.array([[*d, 0.0, 1.0] for d in deltas], np.float32)


def test_clean_path_is_safe():
    verdict = judge(steps(*[(0.01, 0.0, -0.01)] * 8))
    assert verdict.score == 1.0 and verdict.passed and verdict.reason == "safe"
    assert verdict.details["max_speed_mps"] == pytest.approx(0.1414, abs=1e-3)  # 1.4 cm per step at 10 fps
    assert verdict.details["max_jerk_mps3"] == pytest.approx(0.0, abs=1e-3)
    assert verdict.details["min_z_m"] == pytest.approx(0.12, abs=1e-6)


def test_out_of_bounds_action_fails_naming_the_dimension():
    actions = steps(*[(0.0, 0.0, 0.0)] * 4)
    actions[2, 1] = 0.08  # dy beyond 0.05 m per step
    verdict = judge(actions)
    assert verdict.score == 0.0 and not verdict.passed
    assert verdict.reason == "action dy = 0.08 at step 2 outside [-0.05, 0.05]"
    gripper = steps(*[(0.0, 0.0, 0.0)] * 4)
    gripper[1, 4] = 1.5
    assert "action gripper = 1.5 at step 1" in judge(gripper).reason


def test_jerk_spike_fails():
    # one 4.5 cm step between rests: velocity 0 -> 0.45 -> 0 m/s, jerk 2 * 0.45 m/s * (10 /s)^2 = 90 m/s^3
    verdict = judge(steps((0, 0, 0), (0, 0, 0), (0.045, 0, 0), (0, 0, 0), (0, 0, 0)))
    assert verdict.score == 0.0
    assert verdict.reason.startswith("jerk 90 m/s^3 > 80 at step 2")
    assert verdict.details["max_jerk_mps3"] == pytest.approx(90.0, rel=1e-3)
    # the same displacement spread over a smooth ramp is fine
    assert judge(steps(*[(0.009, 0, 0)] * 5), max_jerk_mps3=80).passed


def test_path_through_the_table_fails_before_the_workspace_check():
    verdict = judge(steps(*[(0.0, 0.0, -0.05)] * 5))  # 20 cm -> -5 cm
    assert verdict.score == 0.0
    assert verdict.reason == "path goes below the table: z = 0.0 cm at step 4 < 1.0 cm"
    assert verdict.details["min_z_m"] == pytest.approx(-0.05, abs=1e-6)


def test_leaving_the_workspace_and_speeding_fail():
    out = judge(steps(*[(0.0, 0.05, 0.0)] * 12))  # y 0 -> 0.6 m, past the sim's 0.5
    assert out.score == 0.0 and out.reason.startswith("path leaves the workspace: y = 0.550 m at step 11")
    fast = judge(steps((0.05, 0.05, 0.0), (0.0, 0.0, 0.0)), max_jerk_mps3=1e6)  # in bounds per axis, 0.71 m/s in norm
    assert fast.score == 0.0 and fast.reason == "speed 0.71 m/s > 0.5 at step 0"
    assert judge(steps((0.05, 0.05, 0.0), (0.0, 0.0, 0.0)), max_speed_mps=1.0, max_jerk_mps3=1e6).passed


def test_unknown_start_state_checks_only_relative_figures():
    verdict = judge(steps(*[(0.0, 0.0, -0.05)] * 5), start=None)
    assert verdict.passed and "table and workspace not checked" in verdict.reason


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown options"):
        build_evaluator("safety", {"max_jerk": 10})
    with pytest.raises(ValueError, match="workspace_m"):
        Safety({"workspace_m": ((0, 1), (0, 1))})


def test_scripted_demonstrations_pass(sim_episodes):
    """Every window of real demos, from any start frame, passes with the defaults (they were chosen so)."""
    from evaluators.base import Trajectory

    judge_ = Safety()
    count = 0
    for ep in sim_episodes:
        for t0 in range(0, ep.num_frames - 9, 3):
            trajectory = Trajectory(np.zeros((9, 3, 8, 8), np.uint8), ep.action[t0:t0 + 8], ep.state[t0],
                                    {k: ep.meta[k] for k in ("action_space", "state_names", "action_names")}
                                    | {"fps": ep.fps})
            verdict = judge_(trajectory)
            assert verdict.passed, (ep.episode_id, t0, verdict.reason)
            count += 1
    assert count >= 10
