"""label_actions on a tiny model trained here: labelled episodes untouched, action-less ones labelled with confidence."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pybullet")

from episodes import EpisodeError  # noqa: E402
from pipeline.stage import Filtered, StageContext  # noqa: E402
from pipeline.stages.label_actions import LabelActions, LabelActionsParams  # noqa: E402
from tests.factories import train_tiny_world_model  # noqa: E402

CAMERAS = ("top",)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return train_tiny_world_model(tmp_path_factory.mktemp("wm"), CAMERAS)


@pytest.fixture
def model_and_episode(tiny_model):
    """The checkpoint and a fresh copy of the held-out episode (tests change it)."""
    import copy

    return tiny_model[0], copy.deepcopy(tiny_model[1])


def _stage(checkpoint: str, tmp_path, **params) -> LabelActions:
    ctx = StageContext(run_dir=str(tmp_path), stage_dir=str(tmp_path / "stages" / "03_label_actions"),
                       stage="label_actions", seed=0, resume=False, index=3)
    return LabelActions(LabelActionsParams(checkpoint=checkpoint, **params), ctx)


def test_labelled_episodes_are_left_untouched(model_and_episode, tmp_path):
    checkpoint, episode = model_and_episode
    assert _stage(checkpoint, tmp_path)(episode) is episode


def test_action_less_episode_gets_actions_confidence_and_provenance(model_and_episode, tmp_path):
    checkpoint, episode = model_and_episode
    true_actions = episode.action
    episode.action = None
    labelled = _stage(checkpoint, tmp_path, action_names=["dx", "dy", "dz", "dyaw", "gripper"])(episode)
    labelled.validate()
    assert labelled.action.shape == true_actions.shape and labelled.action.dtype == np.float32
    np.testing.assert_array_equal(labelled.action[-1], labelled.action[-2])  # the last row is a hold
    confidence = labelled.extras["action_confidence"]
    assert confidence.shape == (episode.num_frames,) and ((confidence >= 0) & (confidence <= 1)).all()
    meta = labelled.meta
    assert meta["action_source"] == "pseudo_labelled" and meta["robot_type"] == "franka_panda"
    assert meta["pseudo_label"]["checkpoint"] == checkpoint and meta["action_names"][0] == "dx"
    assert meta["pseudo_label"]["confidence_mean"] == pytest.approx(float(confidence[:-1].mean()), abs=1e-4)
    assert episode.action is None and "action_source" not in episode.meta  # the input episode is not changed


def test_low_confidence_is_filtered_and_missing_cameras_named(model_and_episode, tmp_path):
    checkpoint, episode = model_and_episode
    episode.action = None
    with pytest.raises(Filtered, match="confidence .* < min_confidence 1"):
        _stage(checkpoint, tmp_path, min_confidence=1.0)(episode)
    episode.rgb = {"front": episode.rgb["top"]}
    with pytest.raises(EpisodeError, match="rgb.top"):
        _stage(checkpoint, tmp_path)(episode)


def test_validation_needs_a_trained_model(tmp_path):
    from pipeline.checks import check_run
    from pipeline.config import parse_config

    raw = {"output_dir": str(tmp_path / "run"),
           "stages": [{"name": "generate_tabletop"}, {"name": "label_actions"}]}
    errors = check_run(parse_config(raw))
    assert any(e.startswith("stages[1]: label_actions needs 'world_model'") for e in errors), errors
    raw["stages"][1]["params"] = {"checkpoint": str(tmp_path / "nope")}
    errors = check_run(parse_config(raw))
    assert any(e.startswith("stages[1].params.checkpoint:") for e in errors), errors


def test_report_measures_pseudo_labels_against_hidden_actions(model_and_episode, tmp_path):
    from pipeline.stage import row
    from pipeline.stages.label_actions import finish

    checkpoint, episode = model_and_episode
    stage = _stage(checkpoint, tmp_path)
    episode.extras["hidden_action"], episode.action = episode.action, None
    labelled = stage(episode)
    path = labelled.save(tmp_path / "stages" / "03_label_actions" / "episodes" / "e.episode")
    params = LabelActionsParams(checkpoint=checkpoint)
    ctx = StageContext(run_dir=str(tmp_path), stage_dir=str(tmp_path / "stages" / "03_label_actions"),
                       stage="label_actions", seed=0, resume=False, index=3)
    finish([row(episode.episode_id, path=path, stage="label_actions")], params, ctx)
    import json

    report = json.loads((tmp_path / "stages" / "03_label_actions" / "report.json").read_text())
    truth, pred = episode.extras["hidden_action"][:-1], labelled.action[:-1]
    dx = 1 - ((pred[:, 0] - truth[:, 0]) ** 2).sum() / ((truth[:, 0] - truth[:, 0].mean()) ** 2).sum()
    assert report["episodes_labelled"] == 1 and report["episodes_with_hidden_truth"] == 1
    assert report["pseudo_label_r2_per_dim"][0] == pytest.approx(dx, abs=1e-3)
    assert len(report["pseudo_label_r2_per_dim"]) == 5


def test_simulator_can_hide_actions(tmp_path):
    from pipeline.execute import produce_one
    from pipeline.stages.generate_tabletop import GenerateTabletopParams, generate_tabletop, hides_actions
    from pipeline.store import RunStore

    draws = [hides_actions(seed, 0.25) for seed in range(400)]
    assert 0.18 < np.mean(draws) < 0.32 and draws == [hides_actions(seed, 0.25) for seed in range(400)]
    assert not any(hides_actions(seed, 0.0) for seed in range(50))
    params = GenerateTabletopParams(num_episodes=1, image_size=32, max_steps=6, tasks=["reach"],
                                    num_objects=(2, 2), hide_actions_fraction=1.0)
    ctx = StageContext(run_dir=str(tmp_path), stage_dir=str(tmp_path / "s"), stage="generate_tabletop", seed=0,
                       resume=False, index=0)
    out = produce_one({"episode_id": "tabletop-000000", "index": 0}, generate_tabletop, params, ctx,
                      RunStore(str(tmp_path)))
    from episodes import Episode

    episode = Episode.load(out["path"])
    assert episode.action is None and episode.extras["hidden_action"].shape == (episode.num_frames, 5)
    assert episode.meta["actions_hidden"] is True


def test_each_robot_is_decoded_with_its_own_head(tmp_path_factory, tmp_path):
    """A model of two robots labels each episode into its own robot's action space; a robot it has no head for is
    an error naming the heads, unless params.embodiment says whose space to use (issue 12)."""
    import copy

    checkpoint, held_out = train_tiny_world_model(tmp_path_factory.mktemp("wm2"), CAMERAS, second_robot=True)
    panda = copy.deepcopy(held_out)
    panda.action, panda.meta["action_names"] = None, None
    kuka = copy.deepcopy(panda)
    kuka.meta["robot_type"] = "kuka_iiwa"
    stage = _stage(checkpoint, tmp_path)  # two heads and no embodiment param: each episode uses its own
    assert stage(kuka).action.shape[1] == 3 and stage(kuka).meta["pseudo_label"]["embodiment"] == "kuka_iiwa"
    assert stage(panda).action.shape[1] == 5 and stage(panda).meta["robot_type"] == "franka_panda"
    other = copy.deepcopy(panda)
    other.meta["robot_type"] = "unknown"
    with pytest.raises(EpisodeError, match="robot 'unknown' has no action head.*'franka_panda', 'kuka_iiwa'"):
        stage(other)
    decoded = _stage(checkpoint, tmp_path, embodiment="kuka_iiwa")(other)
    assert decoded.action.shape[1] == 3 and decoded.meta["robot_type"] == "kuka_iiwa"
