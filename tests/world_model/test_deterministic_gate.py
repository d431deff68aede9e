"""The deterministic backend's gated output (s_t + sigmoid(m) * delta): an untrained model copies s_t exactly, the
loss trains delta and the mask, the mask is per camera, and configs / checkpoints saved before the gate existed load
as the ungated network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latent_actions.config import LatentActionConfig
from world_model.checkpoint import load_model, save_checkpoint
from world_model.config import DeterministicConfig, WorldModelConfig
from world_model.deterministic import DeterministicPredictor, change_mask
from world_model.model import LatentWorldModel, motion_weights
from world_model.wrapper import ActionNormalizer, WorldModel


def tiny_config(cameras: tuple[str, ...] = ("front", "wrist"), **deterministic) -> WorldModelConfig:
    latent = LatentActionConfig(latent_dim=4, encoder_channels=(8, 16, 16), encoder_hidden_dim=32,
                                embodiments={"panda": 5})
    return WorldModelConfig(cameras=cameras, image_size=16, latent=latent,
                            deterministic=DeterministicConfig(channels=(8, 16), **deterministic))


def moving_patch_pair(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 6, 16, 16) x 2: a random static scene in which a patch of the first camera brightens."""
    g = torch.Generator().manual_seed(0)
    s_t = torch.rand(batch, 6, 16, 16, generator=g) * 1.6 - 0.8
    s_next = s_t.clone()
    s_next[:, :3, 4:8, 4:8] += 0.2 * torch.arange(1, batch + 1).view(batch, 1, 1, 1)
    return s_t, s_next


def test_new_configs_are_gated_and_fill_in_the_threshold_and_cameras():
    config = tiny_config()
    det = config.deterministic
    assert det.gate and det.num_cameras == 2 and det.motion_threshold == config.motion_threshold
    assert WorldModelConfig.from_dict(config.to_dict()).deterministic == det


def test_untrained_gated_model_copies_s_t_exactly():
    config = tiny_config()
    torch.manual_seed(0)
    model = LatentWorldModel(config).eval()
    s_t, _ = moving_patch_pair()
    assert torch.equal(model.predictor.predict(s_t, torch.randn(4, 4)), s_t)
    wm = WorldModel(model, ActionNormalizer({"panda": 5}))
    s0 = np.random.default_rng(0).integers(0, 256, (2, 6, 16, 16), dtype=np.uint8)
    video = wm.rollout(s0, actions=np.random.default_rng(1).normal(size=(2, 3, 5)).astype(np.float32))
    assert np.array_equal(video, np.repeat(s0[:, None], 3, axis=1))


@pytest.mark.parametrize("gate_loss", ["product", "split"])
def test_gated_loss_is_finite_and_decreases_and_closes_the_mask_on_static_pixels(gate_loss):
    det = tiny_config(gate_loss=gate_loss).deterministic
    torch.manual_seed(0)
    predictor = DeterministicPredictor(det)
    s_t, s_next = moving_patch_pair()
    z = torch.randn(4, det.cond_dim, generator=torch.Generator().manual_seed(1))
    weight = motion_weights(s_t, s_next, 10.0, det.motion_threshold)
    optimizer = torch.optim.Adam(predictor.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = predictor.loss(s_t, z, s_next, weight)
        assert loss.shape == (4,) and torch.isfinite(loss).all()
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
        losses.append(loss.mean().item())
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        gate = torch.sigmoid(predictor(s_t, z)[1])  # (B, cameras, H, W)
    target = change_mask(s_t, s_next, det.motion_threshold, det.num_cameras).bool()
    assert gate[target].mean() > 0.5 > gate[~target].mean()


def test_change_mask_is_per_camera():
    s_t, s_next = moving_patch_pair(batch=1)
    mask = change_mask(s_t, s_next, threshold=0.03, num_cameras=2)
    assert mask.shape == (1, 2, 16, 16)
    assert mask[0, 0, 4:8, 4:8].all() and mask[0, 0].sum() == 16  # the first camera's patch, nothing else
    assert mask[0, 1].sum() == 0  # the second camera did not change: its mask stays closed


@pytest.mark.parametrize("field, value", [("gate", 1), ("gate_weight", -1.0), ("gate_init_logit", 50.0),
                                          ("gate_loss", "l1"), ("motion_threshold", 0.0), ("num_cameras", 4)])
def test_bad_gate_config_values_fail_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DeterministicConfig(**{field: value})


@pytest.mark.parametrize("cameras", [("front",), ("front", "wrist"), ("oblique", "top", "wrist")])
def test_a_config_saved_before_the_gate_loads_ungated(cameras):
    saved = tiny_config(cameras).to_dict()
    for key in ("gate", "gate_weight", "gate_init_logit", "gate_loss", "motion_threshold", "num_cameras"):
        del saved["deterministic"][key]
    config = WorldModelConfig.from_dict(saved)
    assert not config.deterministic.gate
    assert config.deterministic.num_cameras == len(cameras)  # filled in from the model config, as the shapes are
    assert not DeterministicConfig.from_dict({"channels": [8, 16]}).gate
    assert DeterministicConfig(channels=(8, 16)).gate  # built in code: gated by default


def test_a_checkpoint_saved_before_the_gate_loads_with_its_weights(tmp_path):
    torch.manual_seed(0)
    model = LatentWorldModel(tiny_config(gate=False)).eval()
    with torch.no_grad():
        for p in model.predictor.head.parameters():
            p.normal_(0, 0.1)  # a trained-looking head, so the ungated prediction is not a copy
    path = save_checkpoint(tmp_path / "step-00000001", model, ActionNormalizer({"panda": 5}), step=1)
    config_file = tmp_path / "step-00000001" / "config.json"
    saved = json.loads(config_file.read_text())
    for key in ("gate", "gate_weight", "gate_init_logit", "gate_loss", "motion_threshold", "num_cameras"):
        del saved["model"]["deterministic"][key]  # as written before the gate existed
    config_file.write_text(json.dumps(saved))
    loaded, _, _ = load_model(path)
    assert not loaded.config.deterministic.gate
    s_t, _ = moving_patch_pair()
    z = torch.randn(4, 4)
    expected = model.predictor.predict(s_t, z)
    assert not torch.equal(expected, s_t) and torch.equal(loaded.predictor.predict(s_t, z), expected)


def test_each_camera_gates_its_own_rgb_and_depth_channels():
    """Two cameras with depth: channels are [rgb0, rgb1, depth0, depth1]; motion in camera 1 only opens mask 1."""
    import torch

    from world_model.deterministic import camera_of_channel, change_mask

    assert camera_of_channel(8, 2) == [0, 0, 0, 1, 1, 1, 0, 1]
    assert camera_of_channel(6, 2) == [0, 0, 0, 1, 1, 1]
    s_t = torch.zeros(1, 8, 4, 4)
    s_next = s_t.clone()
    s_next[0, 7, 1, 1] = 1.0  # camera 1's depth changes at one pixel
    mask = change_mask(s_t, s_next, 0.03, 2)
    assert mask[0, 1, 1, 1] == 1 and mask[0, 0].sum() == 0 and mask.sum() == 1
