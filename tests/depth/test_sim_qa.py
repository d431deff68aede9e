"""Spatial QA on a real simulator episode, scored against the simulator's poses and sizes; input errors."""

from __future__ import annotations

import pytest

from depth.qa_families import FAMILIES
from depth.qa_scoring import score_record, summarize_scores
from depth.synthesis import QAInputError, SynthesisConfig, sample_frames, sample_key, synthesize_episode
from pipeline.sim.truth import truth_scene
from tests.factories import make_episode


@pytest.fixture(scope="module")
def sim_episode():
    from pipeline.sim.generate import generate_episode
    from pipeline.sim.tabletop import TabletopConfig

    return generate_episode(11, "push", config=TabletopConfig(width=112, height=112, cameras=("front", "oblique"),
                                                              max_steps=30), num_objects=4)


def test_sim_answers_agree_with_simulator_truth(sim_episode):
    result = synthesize_episode(sim_episode, SynthesisConfig(frames_per_episode=3))
    assert result.num_qa > 50 and len(result.samples) == 2 * 3
    scores = []
    for sample in result.samples:
        ref = sample.document["frame_ref"]
        truth = truth_scene(sim_episode, ref["camera"], ref["frame"])
        start = truth_scene(sim_episode, ref["camera"], ref["start_frame"]) if "start_frame" in ref else None
        scores += [score_record(r, truth, start) for r in sample.records]
    summary = summarize_scores(scores)
    assert summary["quantitative_within_25pct"] >= 0.9 and summary["qualitative_correct"] >= 0.9
    assert len({s.family for s in scores}) >= 10


def test_truth_comes_from_poses_and_sizes(sim_episode):
    truth = truth_scene(sim_episode, "front", 0)
    for i, obj in enumerate(sim_episode.meta["objects"]):
        facts = truth.objects[obj["body_id"]]
        if obj["shape"] in ("cube", "cylinder", "sphere"):
            assert facts.height_m == pytest.approx(obj["size_m"][2], rel=0.02)  # resting upright
            assert facts.width_m == pytest.approx(max(obj["size_m"][:2]), rel=1e-3)  # settled: a hair of tilt


def test_sample_documents_and_keys(sim_episode):
    result = synthesize_episode(sim_episode, SynthesisConfig(cameras=("front",), frames_per_episode=2))
    first, last = result.samples
    assert first.key == sample_key(sim_episode.episode_id, "front", 0)
    assert last.document["frame_ref"]["start_frame"] == 0 and "start_frame" not in first.document["frame_ref"]
    assert {r["family"] for r in first.records} <= set(FAMILIES)
    assert first.document["depth"]["unit"] == "mm" and first.document["objects"]
    assert sample_key("ep.v2/x", "front", 3) == "ep_v2_x__front__000003"
    assert sample_frames(10, 4) == [0, 3, 6, 9] and sample_frames(2, 4) == [0, 1]


def test_episode_without_depth_gets_a_clear_error():
    episode = make_episode("no-depth", with_depth=False)
    with pytest.raises(QAInputError, match=r"no depth for camera\(s\) \['front'\].*`depth` stage"):
        synthesize_episode(episode, SynthesisConfig())


def test_episode_without_intrinsics_gets_a_clear_error():
    episode = make_episode("no-calib")
    with pytest.raises(QAInputError, match="no intrinsics"):
        synthesize_episode(episode, SynthesisConfig())
