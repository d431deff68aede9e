"""The inverse-dynamics baseline: learns a tiny synthetic problem, predicts in robot units, saves and loads, checks
its inputs, and stays free of world_model / pipeline imports. One 200-step training on 32x32 frames (a few seconds)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from latent_actions.config import LatentActionConfig
from latent_actions.idm import IDM, IDMConfig, InverseDynamicsModel, r2_report, to_model, train_idm

TINY = {"encoder_channels": (8, 16, 16), "encoder_hidden_dim": 32, "batch_size": 32, "lr": 2e-3, "warmup_steps": 20}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def moved_blobs(n: int, rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A soft orange blob at a random place, moved by (dx, dy) in [-3, 3] px; action = (0.01 m/px * (dx, dy),
    gripper 1 always). Returns uint8 (n, 3, size, size) twice and (n, 3) float32 actions."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = rng.uniform(8, size - 8, (n, 2)).astype(np.float32)
    move = rng.uniform(-3, 3, (n, 2)).astype(np.float32)

    def draw(c: np.ndarray) -> np.ndarray:
        dist2 = (xx[None] - c[:, 0, None, None]) ** 2 + (yy[None] - c[:, 1, None, None]) ** 2
        img = (255 * np.exp(-dist2 / (2 * 1.5**2))).astype(np.uint8)  # (n, H, W)
        return np.stack([img, img // 2, np.zeros_like(img)], axis=1)  # (n, 3, H, W)

    actions = np.concatenate([0.01 * move, np.ones((n, 1), np.float32)], axis=1)
    return draw(centre), draw(centre + move), actions


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return {"train": moved_blobs(512, rng), "test": moved_blobs(256, rng)}


@pytest.fixture(scope="module")
def idm(data) -> IDM:
    torch.set_num_threads(1)
    return train_idm(*data["train"], IDMConfig(**TINY, steps=200))


def test_idm_learns_the_moved_blob(idm, data):
    report = idm.evaluate(*data["test"])
    assert report["r2"] > 0.8, report
    assert report["r2_per_dim"][2] is None  # the gripper never changes: no R2 for it ...
    pred = idm.predict(*data["test"][:2])
    assert pred.shape == (256, 3) and pred.dtype == np.float32
    np.testing.assert_array_equal(pred[:, 2], 1.0)  # ... and it is predicted as exactly the constant it was
    assert np.abs(pred[:, :2]).max() < 0.06  # robot units (metres), not normalised
    assert idm.config.in_channels == 3 and idm.config.image_size == 32  # filled from the data
    assert idm.history[-1]["step"] == 200 and idm.history[-1]["mse"] < idm.history[0]["mse"]


def test_save_and_load_give_the_same_predictions(idm, data, tmp_path):
    path = tmp_path / "idm.pt"
    idm.save(path)
    loaded = IDM.load(path)
    s_t, s_next, _ = data["test"]
    np.testing.assert_array_equal(loaded.predict(s_t[:16], s_next[:16]), idm.predict(s_t[:16], s_next[:16]))
    np.testing.assert_array_equal(loaded.action_std, idm.action_std)
    assert loaded.config == idm.config and loaded.history == idm.history


def test_network_loss_and_gradients():
    config = IDMConfig(**TINY, in_channels=6, image_size=32)
    model = InverseDynamicsModel(config, action_dim=5)
    frames = np.random.default_rng(1).integers(0, 256, (4, 6, 32, 32), dtype=np.uint8)
    batch = {"s_t": to_model(frames), "s_next": to_model(frames[::-1].copy()), "action": torch.randn(4, 5)}
    assert batch["s_t"].min() >= -1 and batch["s_t"].max() <= 1
    loss, parts = model.compute_loss(batch)
    assert loss.shape == () and parts["mse"] == pytest.approx(loss.item())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_config_like_a_latent_action_model_and_validation():
    latent = LatentActionConfig(in_channels=6, image_size=64, encoder_channels=(16, 32, 32), encoder_hidden_dim=64)
    config = IDMConfig.like(latent, steps=10)
    assert (config.in_channels, config.image_size, config.encoder_channels, config.encoder_hidden_dim, config.steps) \
        == (6, 64, (16, 32, 32), 64, 10)
    assert IDMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="image_size: expected a multiple of 8"):
        IDMConfig(encoder_channels=(8, 16, 16), image_size=36)
    with pytest.raises(ValueError, match="lr: expected > 0"):
        IDMConfig(lr=0)
    with pytest.raises(ValueError, match="steps: expected a positive integer"):
        IDMConfig(steps=0)
    with pytest.raises(ValueError, match="in_channels / image_size: unset"):
        InverseDynamicsModel(IDMConfig(), action_dim=5)


def test_bad_inputs_name_what_is_wrong(data):
    s_t, s_next, actions = data["train"]
    config = IDMConfig(**TINY, steps=1)
    with pytest.raises(ValueError, match="s_t: expected uint8"):
        train_idm(s_t.astype(np.float32), s_next, actions, config)
    with pytest.raises(ValueError, match="actions: expected \\(512, A\\)"):
        train_idm(s_t, s_next, actions[:10], config)
    with pytest.raises(ValueError, match="s_next: expected \\(N, 3, 32, 32\\)"):
        train_idm(s_t, s_next[:, :1], actions, config)
    bad = actions.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train_idm(s_t, s_next, bad, config)
    with pytest.raises(ValueError, match="r2_report"):
        r2_report(actions[:3], actions[:4])


def test_library_imports_neither_world_model_nor_pipeline():
    code = ("import sys, latent_actions.idm; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('world_model', 'pipeline')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
