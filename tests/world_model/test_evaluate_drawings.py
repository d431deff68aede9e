"""evaluate() keeps the drawn rollout windows (one per held-out episode first) with their episode ids in rollouts.npz,
for the run report to redraw with labels."""

from __future__ import annotations

import numpy as np
import torch

from world_model.data import PairData
from world_model.evaluate import drawing_windows, evaluate
from world_model.model import LatentWorldModel
from world_model.wrapper import ActionNormalizer, WorldModel
from tests.world_model.test_world_model_training import square_episode, tiny_model_config


def test_drawing_windows_take_one_per_episode_first():
    windows = np.array([[0, 0], [0, 4], [0, 8], [1, 0], [1, 4], [2, 0]])
    assert drawing_windows(windows).tolist() == [0, 1, 3, 5]
    assert drawing_windows(windows, count=2).tolist() == [0, 3]


def test_evaluate_saves_the_drawn_windows_with_episode_ids(tmp_path):
    torch.manual_seed(0)
    episodes = [square_episode(i, num_frames=14, seed=3) for i in range(3)]
    data = PairData.from_episodes(episodes, ("front",), 32)
    config = tiny_model_config()
    wm = WorldModel(LatentWorldModel(config), ActionNormalizer(config.latent.embodiments).fit(data))

    result = evaluate(wm, data, horizon=4, max_windows=16, out_dir=tmp_path, speed=False)

    saved = np.load(result["files"]["frames"])
    ids = saved["episode_ids"].tolist()
    assert len(ids) == 4 and set(ids) == {e.episode_id for e in episodes}  # every held-out episode drawn
    assert saved["real"].shape == (4, 5, 3, 32, 32) and saved["action"].shape == (4, 4, 3, 32, 32)
    assert saved["real"].dtype == np.uint8 and saved["cameras"].tolist() == ["front"]
    assert saved["start_frames"].shape == (4,)
