"""label_actions on a tiny model trained here: labelled episodes untouched, action-less ones labelled with confidence."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pybullet")

from episodes import EpisodeError  # noqa: E402
from pipeline.stage import Filtered, StageContext  # noqa: E402
from pipeline.stages.label_actions import LabelActions, LabelActionsParams  # noqa: E402

CAMERAS = ("top",)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A world model trained for a few steps on 3 exploration episodes (32x32): real code, seconds on the CPU."""
    from latent_actions.config import LatentActionConfig
    from pipeline.sim.explore import explore_episode
    from pipeline.sim.tabletop import TabletopConfig
    from world_model.config import TrainConfig, WorldModelConfig
    from world_model.data import PairData
    from world_model.train import model_config_for, train

    sim = TabletopConfig(width=32, height=32, cameras=CAMERAS, depth=False, segmentation=False)
    episodes = [explore_episode(seed, sim, num_frames=10) for seed in range(4)]
    data = PairData.from_episodes(episodes[:3], CAMERAS, 32, labelled={e.episode_id for e in episodes[:3]})
    config = model_config_for(WorldModelConfig(cameras=CAMERAS, image_size=32,
                                               latent=LatentActionConfig(latent_dim=8, encoder_channels=(8, 16, 16),
                                                                         encoder_hidden_dim=32)), data)
    out = tmp_path_factory.mktemp("wm")
    result = train(config, TrainConfig(steps=20, batch_size=8, log_every=10, checkpoint_every=20,
                                       warmup_steps=2, num_threads=1), data, str(out))
    return result.checkpoint, episodes[3]


def _stage(checkpoint: str, tmp_path, **params) -> LabelActions:
    ctx = StageContext(run_dir=str(tmp_path), stage_dir=str(tmp_path / "stages" / "03_label_actions"),
                       stage="label_actions", seed=0, resume=False, index=3)
    return LabelActions(LabelActionsParams(checkpoint=checkpoint, **params), ctx)


def test_labelled_episodes_are_left_untouched(tiny_model, tmp_path):
    checkpoint, episode = tiny_model
    assert _stage(checkpoint, tmp_path)(episode) is episode


def test_action_less_episode_gets_actions_confidence_and_provenance(tiny_model, tmp_path):
    checkpoint, episode = tiny_model
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


def test_low_confidence_is_filtered_and_missing_cameras_named(tiny_model, tmp_path):
    checkpoint, episode = tiny_model
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
