"""Training on the model's own predictions (``rollout_context``): the history batch, the rolled input, the config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_actions.config import LatentActionConfig
from world_model.config import DeterministicConfig, WorldModelConfig
from world_model.data import PairData
from world_model.model import LatentWorldModel


def tiny_config(**fields) -> WorldModelConfig:
    latent = LatentActionConfig(latent_dim=4, encoder_channels=(8, 16, 16), encoder_hidden_dim=32,
                                embodiments={"panda": 2})
    return WorldModelConfig(cameras=("front",), image_size=16, latent=latent,
                            deterministic=DeterministicConfig(channels=(8, 16)), **fields)


def counting_data() -> PairData:
    """One episode of 6 frames whose every pixel holds the frame index (so states name their time step)."""
    states = np.stack([np.full((3, 16, 16), 10 * t, np.uint8) for t in range(6)])
    return PairData(states=[states], episode_ids=["ep"], sources=["sim"], embodiments=["panda"],
                    actions=[np.zeros((6, 2), np.float32)], ee_deltas=[None])


def frame_index(x: torch.Tensor) -> np.ndarray:
    return np.rint((x.flatten(-3)[..., 0].numpy() + 1.0) * 127.5 / 10).astype(int)


def test_the_history_holds_the_k_frames_before_s_t_and_marks_those_before_the_start():
    data = counting_data()
    index = np.array([0, 1, 4])  # pairs (t, t+1) for t = 0, 1, 4
    batch = data.batch(index, context=3)
    assert batch["s_hist"].shape == (3, 3, 3, 16, 16)
    assert frame_index(batch["s_hist"]).tolist() == [[0, 0, 0], [0, 0, 0], [1, 2, 3]]
    assert batch["hist_valid"].tolist() == [[False, False, False], [False, False, True], [True, True, True]]
    assert frame_index(batch["s_t"]).tolist() == [0, 1, 4]
    assert "s_hist" not in data.batch(index)


def test_own_prediction_rolls_only_the_chosen_rows_and_keeps_real_frames_where_there_is_no_history():
    torch.manual_seed(0)
    model = LatentWorldModel(tiny_config(rollout_context=2, rollout_fraction=0.5))
    with torch.no_grad():  # a model that does not copy: its head predicts a change
        model.predictor.head[2].bias.normal_(0, 0.5)
    batch = counting_data().batch(np.array([0, 3, 3, 3]), context=2)
    rolled, rows = model.own_prediction(batch)
    assert rows == 2
    assert torch.equal(rolled[0], batch["s_t"][0])  # t = 0: nothing to roll from
    assert not torch.allclose(rolled[1], batch["s_t"][1])  # rolled two steps from frame 1
    assert torch.equal(rolled[2:], batch["s_t"][2:])  # beyond rollout_fraction: real
    # the roll is W's open loop: two predict steps from the real frame t - 2 with E's latents of the real pairs
    frames = torch.cat([batch["s_hist"][1], batch["s_t"][1:2]])
    x = frames[:1]
    with torch.no_grad():
        for j in range(2):
            x = model.predictor.predict(x, model.latent(frames[j:j + 1], frames[j + 1:j + 2]).z_clean)
    torch.testing.assert_close(rolled[1:2], x)


def test_the_encoder_learns_nothing_from_rolled_rows():
    """Only W is asked to fix its drift: the reconstruction loss of the rolled rows sends no gradient into E."""
    torch.manual_seed(0)
    model = LatentWorldModel(tiny_config(rollout_context=2, rollout_fraction=1.0, recon_weight=1.0))
    batch = counting_data().batch(np.array([3, 4]), context=2)
    batch["labelled"] = torch.zeros(2, dtype=torch.bool)  # reconstruction only
    loss, _ = model.compute_loss(batch)
    loss.backward()
    encoder_grads = [p.grad for name, p in model.latent.named_parameters() if "encoder" in name]
    assert encoder_grads and all(g is None or float(g.abs().sum()) == 0.0 for g in encoder_grads)
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.predictor.parameters())


def test_training_on_own_predictions_runs_and_learns(tmp_path):
    from world_model.config import TrainConfig
    from world_model.train import train

    g = np.random.default_rng(0)
    states = [np.clip(g.normal(128, 30, (1, 3, 16, 16)) + 12 * np.arange(8)[:, None, None, None], 0, 255)
              .astype(np.uint8) for _ in range(3)]
    data = PairData(states=states, episode_ids=["a", "b", "c"], sources=["sim"] * 3, embodiments=["panda"] * 3,
                    actions=[np.zeros((8, 2), np.float32)] * 3, ee_deltas=[None] * 3, labelled={"a"})
    result = train(tiny_config(rollout_context=3), TrainConfig(steps=30, batch_size=8, log_every=10,
                                                              checkpoint_every=30, warmup_steps=2, num_threads=1),
                   data, tmp_path)
    recon = [h["recon"] for h in result.history]
    assert all(np.isfinite(recon)) and recon[-1] < recon[0]
    assert result.world_model.model.config.rollout_context == 3  # saved with the checkpoint


@pytest.mark.parametrize("field,value", [("rollout_context", -1), ("rollout_context", 1.5), ("rollout_context", 99),
                                         ("rollout_fraction", 0.0), ("rollout_fraction", 1.5)])
def test_bad_rollout_config_values_fail_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


def test_own_predictions_need_the_deterministic_backend():
    with pytest.raises(ValueError, match="rollout_context.*deterministic"):
        tiny_config(rollout_context=2, backend="diffusion")
