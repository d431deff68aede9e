"""The reach judge: where the commanded end-effector path ends, against the subgoal; and against replay truth."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.base import build_evaluator
from tests.evaluators.helpers import make_trajectory, sim_state

START = (0.5, 0.0, 0.2)
GOAL = [0.54, 0.0, 0.16]  # 4 cm forward and 4 cm down from START


def judge(actions, start=START, goal=GOAL, **options):
    subgoal = {"name": "approach", "goal_frame": 8, "ee_xyz": goal, "objects_xyz": None, "target_object": None}
    trajectory = make_trajectory(actions, None if start is None else sim_state(start), subgoal=subgoal)
    return build_evaluator("reach", options)(trajectory)


def steps(n, delta):
    return np.array([[*delta, 0.0, 1.0]] * n, np.float32)


def test_a_path_that_ends_on_the_subgoal_passes_and_one_that_stops_short_fails():
    on = judge(steps(4, (0.01, 0.0, -0.01)))
    assert on.passed and on.score == pytest.approx(1.0, abs=1e-6) and on.details["ee_error_cm"] == pytest.approx(0.0,
                                                                                                              abs=1e-4)
    short = judge(steps(2, (0.01, 0.0, -0.01)))  # half way: 2.83 cm off
    assert not short.passed and short.reason == "commanded ee ends 2.8 cm from the subgoal"


def test_the_score_is_one_half_at_the_tolerance():
    verdict = judge(steps(4, (0.01, 0.0, -0.01)), goal=[0.54, 0.03, 0.16], ee_tol_m=0.03)
    assert verdict.score == pytest.approx(0.5, abs=1e-6)


def test_without_a_start_state_or_ee_actions_it_cannot_judge():
    assert judge(steps(4, (0.01, 0.0, -0.01)), start=None).reason.startswith("cannot judge: the start state")
    joints = make_trajectory(np.zeros((4, 7), np.float32), sim_state(START), action_names=[f"q{i}" for i in range(7)])
    assert build_evaluator("reach")(joints).reason.startswith("cannot judge: actions")


def test_bad_tolerance_fails_naming_the_option():
    with pytest.raises(ValueError, match="ee_tol_m"):
        build_evaluator("reach", {"ee_tol_m": 0})


def test_reach_agrees_with_replay_on_perturbed_demonstration_windows():
    """In the simulator the commanded end point predicts the replayed one: on windows of a scripted demonstration
    with noisy actions, reach's verdict matches replay's ee check (3 cm) on nearly every window."""
    from pipeline.sim.generate import generate_episode
    from pipeline.sim.replay import Replayer, parent_subgoal, replay_meta, subgoal_reached
    from pipeline.sim.tabletop import TabletopConfig
    from evaluators.base import Trajectory

    parent = generate_episode(3, task="push", config=TabletopConfig(width=32, height=32, cameras=("front",)))
    rng, replayer, agree, total = np.random.default_rng(0), Replayer(), 0, 0
    try:
        for t0 in range(0, parent.num_frames - 9, 4):
            actions = parent.action[t0:t0 + 8] + rng.normal(0, 0.006, (8, 5)).astype(np.float32) * [1, 1, 1, 0, 0]
            meta = {**parent.meta, "subgoal": parent_subgoal(parent, t0 + 8), "fps": parent.fps}
            result = replayer(meta, replay_meta(parent.extras, t0)["state"], actions)
            _, truth = subgoal_reached(result, meta["subgoal"])
            trajectory = Trajectory(frames=np.zeros((9, 3, 4, 4), np.uint8), actions=actions,
                                    start_state=parent.state[t0], meta=meta)
            verdict = build_evaluator("reach", {"ee_tol_m": 0.03})(trajectory)
            agree += (verdict.details["ee_error_cm"] <= 3.0) == truth["ee_ok"]
            total += 1
    finally:
        replayer.close()
    assert total >= 5 and agree / total >= 0.8
