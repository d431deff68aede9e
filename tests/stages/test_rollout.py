"""rollout on a tiny model trained here: N synthetic episodes per parent, in the parent's schema, with provenance."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pybullet")

from pipeline.stage import StageContext  # noqa: E402
from pipeline.stages.rollout import Rollout, RolloutParams  # noqa: E402
from pipeline.synthesis import propose, subgoal  # noqa: E402
from tests.factories import train_tiny_world_model  # noqa: E402

CAMERAS = ("top",)


@pytest.fixture(scope="module")
def model_and_parent(tmp_path_factory):
    """A tiny model and a scripted simulator episode (objects, subgoals, restorable state) at 48x48."""
    from pipeline.sim.generate import generate_episode
    from pipeline.sim.tabletop import TabletopConfig

    checkpoint, _ = train_tiny_world_model(tmp_path_factory.mktemp("wm"), CAMERAS)
    parent = generate_episode(3, "pick_place", TabletopConfig(width=48, height=48, cameras=CAMERAS, depth=False,
                                                              segmentation=False, max_steps=30))
    return checkpoint, parent


def _stage(checkpoint, tmp_path, **params) -> Rollout:
    ctx = StageContext(run_dir=str(tmp_path), stage_dir=str(tmp_path / "stages" / "05_rollout"), stage="rollout",
                       seed=0, resume=False, index=5)
    return Rollout(RolloutParams(checkpoint=checkpoint, **params), ctx)


def test_rollouts_share_the_parent_schema_and_carry_provenance(model_and_parent, tmp_path):
    checkpoint, parent = model_and_parent
    out = _stage(checkpoint, tmp_path, rollouts_per_episode=6, horizon=5)(parent)
    assert out[0] is parent and len(out) == 7
    for child in out[1:]:
        child.validate()
        meta = child.meta
        assert child.episode_id.startswith(parent.episode_id + "-syn")
        assert meta["source"] == "synthetic" and meta["parent"] == parent.episode_id
        assert set(child.rgb) == set(parent.rgb) and child.rgb["top"].shape[1:] == parent.rgb["top"].shape[1:]
        assert child.num_frames == 6 and child.action.shape == (6, parent.action.shape[1])
        assert child.state.shape == (6, parent.state.shape[1])
        t0 = meta["start_frame"]
        assert np.array_equal(child.rgb["top"][0], parent.rgb["top"][t0])  # frame 0 is the real start frame
        assert meta["recipe"]["proposal"] in ("demo_perturbed", "scripted", "uniform")
        assert meta["subgoal"]["goal_frame"] == t0 + 5 and len(meta["subgoal"]["objects_xyz"]) == len(meta["objects"])
        assert meta["replay"]["frame"] == t0 and "joint_pos" in meta["replay"]["state"]
        assert meta["checkpoint"] and meta["action_names"] == parent.meta["action_names"]


def test_rollouts_are_deterministic(model_and_parent, tmp_path):
    checkpoint, parent = model_and_parent
    a = _stage(checkpoint, tmp_path, rollouts_per_episode=3, horizon=4)(parent)
    b = _stage(checkpoint, tmp_path, rollouts_per_episode=3, horizon=4)(parent)
    for x, y in zip(a[1:], b[1:]):
        assert x.episode_id == y.episode_id and np.array_equal(x.action, y.action)
        assert np.array_equal(x.rgb["top"], y.rgb["top"])


def test_proposals_stay_in_bounds_and_scale_zero_replays_the_demo(model_and_parent):
    _, parent = model_and_parent
    low, high = np.array(parent.meta["action_space"]["low"]), np.array(parent.meta["action_space"]["high"])
    for proposal in ("demo_perturbed", "scripted", "uniform"):
        recipe = {"proposal": proposal, "start_frame": 2, "seed": 1, "index": 0, "scale": 0.4, "object": 0}
        actions = propose(parent, recipe, 6)
        assert actions.shape == (6, 5) and (actions >= low - 1e-6).all() and (actions <= high + 1e-6).all()
    demo = propose(parent, {"proposal": "demo_perturbed", "start_frame": 2, "seed": 1, "scale": 0.0}, 6)
    assert np.allclose(demo, parent.action[2:8])
    goal = subgoal(parent, 2, 6)
    assert goal["ee_xyz"] == pytest.approx(parent.state[8, :3].tolist(), abs=1e-4)


def test_episodes_without_actions_or_frames_pass_through(model_and_parent, tmp_path):
    import dataclasses

    checkpoint, parent = model_and_parent
    stage = _stage(checkpoint, tmp_path, horizon=4)
    unlabelled = dataclasses.replace(parent, action=None)
    assert stage(unlabelled)[0] is unlabelled and len(stage(unlabelled)) == 1
    short = dataclasses.replace(parent, rgb={"top": parent.rgb["top"][:3]}, state=parent.state[:3],
                                action=parent.action[:3], extras={})
    assert len(stage(short)) == 1


def test_filter_judges_rollouts_and_keep_rejected_lets_them_through(model_and_parent, tmp_path):
    """The filter stage on real rollouts: safety + reach decide, replay records the truth; with keep_rejected every
    trajectory goes on, marked accepted or not, and the decisions are the same."""
    from pipeline.stage import Filtered
    from pipeline.stages.filter_trajectories import Filter, FilterParams

    checkpoint, parent = model_and_parent
    children = _stage(checkpoint, tmp_path, rollouts_per_episode=6, horizon=5)(parent)[1:]

    def judge(keep: bool, name: str) -> list:
        ctx = StageContext(run_dir=str(tmp_path), stage_dir=str(tmp_path / name), stage="filter", seed=0,
                           resume=False, index=6)
        stage = Filter(FilterParams(checkpoint=checkpoint, evaluators={"safety": {}, "reach": {}},
                                    keep_rejected=keep), ctx)
        out = []
        for child in children:
            try:
                out.append(stage(child).meta["evaluation"])
            except Filtered as exc:
                out.append(str(exc))
        return out

    strict, kept = judge(False, "strict"), judge(True, "kept")
    assert all(isinstance(k, dict) for k in kept) and all("truth" in k for k in kept)
    assert [isinstance(s, dict) for s in strict] == [k["accepted"] for k in kept]
    for s, k in zip(strict, kept):
        if isinstance(s, str):  # rejected: the reason names the failing judge
            assert s.startswith("rejected: ") and k["reason"] in s
    assert set(kept[0]["evaluators"]) == {"safety", "reach"}
    assert 0 < sum(k["accepted"] for k in kept) < len(kept)  # both kinds, so the comparison means something
