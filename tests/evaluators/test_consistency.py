"""The consistency judge with a tiny untrained world model: it runs, scores in [0, 1], is seeded, and prefers
commanded actions that match what the model itself reads from the frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluators.base import build_evaluator
from latent_actions.config import LatentActionConfig
from tests.evaluators.helpers import make_trajectory
from world_model.config import DeterministicConfig, WorldModelConfig
from world_model.model import LatentWorldModel
from world_model.wrapper import ActionNormalizer, WorldModel

STD = [0.02, 0.02, 0.02, 0.1, 0.5]


def tiny_world_model(embodiments=None) -> WorldModel:
    torch.manual_seed(0)
    embodiments = embodiments or {"franka_panda": 5}
    latent = LatentActionConfig(latent_dim=6, encoder_channels=(8, 16, 16), encoder_hidden_dim=32,
                                embodiments=embodiments)
    config = WorldModelConfig(cameras=("front",), image_size=32, latent=latent,
                              deterministic=DeterministicConfig(channels=(16, 16, 32)))
    normalizer = ActionNormalizer(embodiments)
    for name, dim in embodiments.items():
        normalizer.set_stats(name, np.zeros(dim), STD[:dim])
    return WorldModel(LatentWorldModel(config), normalizer)


@pytest.fixture(scope="module")
def world():
    """The model, a start frame with a bright square and a 4-step rollout of it."""
    torch.set_num_threads(1)
    wm = tiny_world_model()
    start = np.full((3, 32, 32), 60, np.uint8)
    start[:, 8:16, 8:16] = 220
    commanded = np.random.default_rng(1).normal(0, 1, (4, 5)).astype(np.float32) * np.float32(STD)
    frames = np.concatenate([start[None], wm.rollout(start, actions=commanded)])  # (5, 3, 32, 32)
    return wm, frames


def test_runs_and_scores_in_unit_range(world):
    wm, frames = world
    judge = build_evaluator("consistency", {"n_samples": 3}, {"world_model": wm})
    trajectory = make_trajectory(np.zeros((4, 5), np.float32), frames=frames)
    verdict = judge(trajectory)
    assert 0.0 <= verdict.score <= 1.0
    assert {"action_error_std", "spread", "moving_fraction", "action_term", "disagreement_term",
            "action_error_dx", "action_error_gripper"} <= set(verdict.details)
    assert verdict.details["spread"] >= 0 and "jittered rollouts" in verdict.reason
    expected = verdict.details["action_term"] ** 0.5 * verdict.details["disagreement_term"] ** 0.5
    assert verdict.score == pytest.approx(expected, abs=1e-6)
    assert judge(trajectory).score == verdict.score  # seeded: the same jitter every time


def test_actions_the_model_reads_from_the_frames_score_higher_than_random_ones(world):
    wm, frames = world
    own = wm.decode_actions(wm.infer_latents(frames[:-1], frames[1:]), "franka_panda").numpy()
    rand = np.random.default_rng(2).normal(0, 3, own.shape).astype(np.float32) * np.float32(STD)
    judge = build_evaluator("consistency", {"n_samples": 0}, {"world_model": wm})
    matching = judge(make_trajectory(own, frames=frames))
    random = judge(make_trajectory(rand, frames=frames))
    assert matching.details["action_error_std"] == pytest.approx(0.0, abs=1e-4) and matching.score > 0.99
    assert random.score < matching.score and random.details["action_error_std"] > 1.0


def test_embodiment_and_shape_checks(world):
    wm, frames = world
    two = tiny_world_model({"franka_panda": 5, "aloha": 3})
    with pytest.raises(ValueError, match="name one in options.embodiment"):
        build_evaluator("consistency", {}, {"world_model": two})
    assert build_evaluator("consistency", {"embodiment": "aloha"}, {"world_model": two}).embodiment == "aloha"
    with pytest.raises(ValueError, match="world_model"):
        build_evaluator("consistency", {}, {})
    judge = build_evaluator("consistency", {"n_samples": 0}, {"world_model": wm})
    with pytest.raises(ValueError, match="world model's states"):
        judge(make_trajectory(np.zeros((4, 5)), frames=frames[:, :, :16, :16]))
    verdict = judge(make_trajectory(np.zeros((3, 5)), frames=frames))
    assert verdict.score == 0.0 and verdict.reason.startswith("cannot judge")


def test_spread_grows_with_the_jitter_on_a_model_that_moves_pixels():
    """Random predictor weights make every pixel move; identical rollouts (no jitter) agree exactly."""
    wm = tiny_world_model()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in wm.model.predictor.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    start = np.full((3, 32, 32), 60, np.uint8)
    commanded = np.random.default_rng(1).normal(0, 1, (4, 5)).astype(np.float32) * np.float32(STD)
    trajectory = make_trajectory(commanded, frames=np.concatenate([start[None], wm.rollout(start, actions=commanded)]))
    spread = {jitter: build_evaluator("consistency", {"n_samples": 3, "jitter": jitter},
                                      {"world_model": wm})(trajectory).details for jitter in (0.0, 0.1, 1.0)}
    assert spread[0.0]["moving_fraction"] > 0.5 and spread[0.0]["spread"] == 0.0
    assert 0.0 < spread[0.1]["spread"] < spread[1.0]["spread"]
    assert spread[0.1]["disagreement_term"] > spread[1.0]["disagreement_term"]
