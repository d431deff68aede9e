"""Simulator replay as ground truth: reproducing a recording from a mid-episode frame, subgoal checks, the sim_replay
evaluator. One 32x32 pick_place episode without depth or segmentation (about 2 s); each replay is 8 steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pybullet")

from evaluators.base import Trajectory, build_evaluator  # noqa: E402
from pipeline.sim import TabletopConfig, generate_episode  # noqa: E402
from pipeline.sim.replay import (  # noqa: E402
    Replayer,
    SimReplay,
    parent_subgoal,
    replay,
    replay_meta,
    restore_rows,
    subgoal_reached,
)
from pipeline.sim.simulator import TabletopSim  # noqa: E402

TINY = TabletopConfig(width=32, height=32, cameras=("front",), depth=False, segmentation=False, max_steps=70)
K = 8


@pytest.fixture(scope="module")
def episode():
    ep = generate_episode(0, "pick_place", TINY)
    assert ep.meta["success"]
    return ep


@pytest.fixture(scope="module")
def starts(episode) -> dict[str, int]:
    """Start frames: mid-approach (free arm) and just after the grasp closes (object in the hand)."""
    segments = {s["name"]: s for s in episode.meta["subgoals"]}
    return {"approach": 3, "lift": segments["lift"]["start"]}


def _pushed_off(actions: np.ndarray) -> np.ndarray:
    off = actions.copy()
    off[:, 0] += 0.05  # +5 cm in x every step
    return off


def test_replay_reproduces_the_recording(episode, starts, monkeypatch):
    monkeypatch.setattr(TabletopSim, "render", lambda self: pytest.fail("replay must not render"))
    num_objects = len(episode.meta["objects"])
    with_replayer = Replayer()
    try:
        for name, t0 in starts.items():
            result = replay(episode.meta, restore_rows(episode.extras, t0), episode.action[t0:t0 + K],
                            replayer=with_replayer)
            assert result.ee_xyz.shape == (K + 1, 3) and result.object_xyz.shape == (K + 1, num_objects, 3)
            assert result.state.shape == (K + 1, 12) and result.success_per_step.shape == (K + 1,)
            assert result.num_steps == K and result.clipped_steps == 0  # the demo stays within the limits
            ee_err = np.linalg.norm(result.ee_xyz - episode.extras["ee_pose"][t0:t0 + K + 1, :3], axis=-1)
            obj_err = np.linalg.norm(result.object_xyz - episode.extras["object_poses"][t0:t0 + K + 1, :, :3], axis=-1)
            assert ee_err.max() < 1e-3, (name, ee_err.max())
            assert obj_err.max() < 5e-3, (name, obj_err.max())
            np.testing.assert_allclose(result.state[1:], episode.state[t0 + 1:t0 + K + 1], atol=2e-3)
    finally:
        with_replayer.close()


def test_cached_replay_equals_a_fresh_one_whatever_came_before(episode, starts):
    """The Replayer rewinds to the freshly built scene, so evaluation order never changes a result."""
    t0, t1 = starts["lift"], starts["approach"]
    fresh = replay(episode.meta, restore_rows(episode.extras, t0), episode.action[t0:t0 + K])
    replayer = Replayer()
    try:
        replayer(episode.meta, restore_rows(episode.extras, t1), _pushed_off(episode.action[t1:t1 + K]))
        cached = replayer(episode.meta, restore_rows(episode.extras, t0), episode.action[t0:t0 + K])
    finally:
        replayer.close()
    np.testing.assert_array_equal(cached.object_poses, fresh.object_poses)
    np.testing.assert_array_equal(cached.ee_pose, fresh.ee_pose)


def test_subgoal_reached_for_the_demo_not_for_actions_pushed_off(episode, starts):
    t0 = starts["lift"]
    subgoal = parent_subgoal(episode, t0 + K, "lift")
    demo = replay(episode.meta, restore_rows(episode.extras, t0), episode.action[t0:t0 + K])
    reached, details = subgoal_reached(demo, subgoal)
    assert reached and details["ee_error_m"] < 1e-3 and details["object_error_m"] < 5e-3
    assert details["target_error_m"] <= details["object_error_m"]

    off = replay(episode.meta, restore_rows(episode.extras, t0), _pushed_off(episode.action[t0:t0 + K]))
    reached, details = subgoal_reached(off, subgoal)
    assert not reached and not details["ee_ok"] and details["ee_error_m"] > 0.1
    # the lifted cube travels with the hand, so it is the object furthest from its subgoal position
    assert not details["objects_ok"] and details["worst_object"] == episode.meta["target_object"]
    # without object positions only the end effector counts
    reached, details = subgoal_reached(demo, {**subgoal, "objects_xyz": None})
    assert reached and details["object_error_m"] is None


def test_replay_from_frame_zero_reproduces_task_success(episode):
    result = replay(episode.meta, restore_rows(episode.extras, 0), episode.action[:-1])  # the last row is a hold
    assert result.success == episode.meta["success"] and not result.success_per_step[0]
    np.testing.assert_allclose(result.ee_xyz[-1], episode.extras["ee_pose"][-1, :3], atol=1e-3)


def _trajectory(episode, t0: int, actions: np.ndarray, meta_extra: dict | None = None) -> Trajectory:
    meta = {"parent": episode.episode_id, "start_frame": t0, "sim": episode.meta["sim"],
            "replay": replay_meta(episode.extras, t0), "subgoal": parent_subgoal(episode, t0 + len(actions), "lift"),
            **(meta_extra or {})}
    meta = json.loads(json.dumps(meta))  # what a manifest row holds: plain JSON
    frames = np.zeros((len(actions) + 1, 3, 16, 16), dtype=np.uint8)
    return Trajectory(frames=frames, actions=actions, start_state=episode.state[t0], meta=meta, cameras=("front",))


def test_sim_replay_evaluator_verdicts(episode, starts):
    t0 = starts["lift"]
    judge = build_evaluator("sim_replay", {"ee_tol_m": 0.03})
    assert isinstance(judge, SimReplay) and judge.options["object_tol_m"] == 0.02
    try:
        good = judge(_trajectory(episode, t0, episode.action[t0:t0 + K]))
        assert good.passed and good.score == 1.0
        assert good.reason.startswith("replay: ee 0.0 cm, objects <= ") and good.reason.endswith("from the subgoal")
        assert good.details["ee_error_m"] < 1e-3 and good.details["object_error_m"] < 5e-3
        json.dumps(good.to_dict())

        bad = judge(_trajectory(episode, t0, _pushed_off(episode.action[t0:t0 + K])))
        assert not bad.passed and bad.score == 0.0
        assert "ee " in bad.reason and "cm from the subgoal (> 3 cm)" in bad.reason
        assert "(> 2 cm)" in bad.reason  # the carried cube moved too
        assert bad.details["ee_error_m"] > 0.1

        no_sim = _trajectory(episode, t0, episode.action[t0:t0 + K])
        no_sim.meta.pop("sim")
        with pytest.raises(ValueError, match="did not come from the embedded simulator"):
            judge(no_sim)
    finally:
        judge.close()


def test_bad_inputs_name_what_is_wrong(episode):
    rows = restore_rows(episode.extras, 5)
    with pytest.raises(ValueError, match=r"restore.object_poses: expected one frame's row"):
        replay(episode.meta, {**rows, "object_poses": episode.extras["object_poses"][5:7]}, episode.action[5:6])
    with pytest.raises(ValueError, match="restore: missing"):
        replay(episode.meta, {k: v for k, v in rows.items() if k != "ee_target"}, episode.action[5:6])
    fast = replay(episode.meta, rows, np.array([[0.2, 0, 0, 0, 1], [0.01, 0, 0, 0, 1]]))  # limit: 5 cm per step
    assert fast.clipped.tolist() == [True, False] and fast.applied_action[0, 0] == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"actions: expected \(K, 5\)"):
        replay(episode.meta, rows, episode.action[5])
    with pytest.raises(ValueError, match="no sim.scene"):
        replay({"parent": "x"}, rows, episode.action[5:6])
    with pytest.raises(ValueError, match="unknown options"):
        build_evaluator("sim_replay", {"ee_tol_cm": 3})
    with pytest.raises(ValueError, match="ee_tol_m must be > 0"):
        build_evaluator("sim_replay", {"ee_tol_m": 0})
