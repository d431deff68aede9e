"""The frame read-out: labels from episodes, masks, learning ee xyz from tiny sim frames, save / load."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from evaluators.readout import Readout, ReadoutConfig, readout_targets, train_readout
from tests.evaluators.conftest import SIM_SIZE

TINY = dict(in_channels=3, image_size=SIM_SIZE, channels=(8, 16, 16), hidden_dim=64, batch_size=32, lr=2e-3)


def test_targets_from_a_sim_episode(sim_episodes):
    ep = sim_episodes[0]
    frames, targets, masks = readout_targets(ep, ("front",), SIM_SIZE)
    t_len = ep.num_frames
    assert frames.shape == (t_len, 3, SIM_SIZE, SIM_SIZE) and frames.dtype == np.uint8
    np.testing.assert_allclose(targets["ee_xyz"], ep.state[:, :3])
    np.testing.assert_allclose(targets["object_xyz"], ep.extras["object_poses"][:, ep.meta["target_object"], :3])
    np.testing.assert_allclose(targets["progress"], np.arange(t_len) / (t_len - 1))
    assert all(m.all() for m in masks.values())

    # a failed episode without object truth or state: ee from extras, no object, no progress
    bare = dataclasses.replace(ep, state=None, extras={"ee_pose": ep.extras["ee_pose"]},
                               meta={**ep.meta, "success": False})
    _, targets, masks = readout_targets(bare, ("front",), SIM_SIZE)
    np.testing.assert_allclose(targets["ee_xyz"], ep.extras["ee_pose"][:, :3])
    assert masks["ee_xyz"].all() and not masks["object_xyz"].any() and not masks["progress"].any()


def test_readout_learns_ee_from_sim_frames_and_round_trips(sim_episodes, tmp_path):
    torch.set_num_threads(1)
    parts = [readout_targets(ep, ("front",), SIM_SIZE) for ep in sim_episodes]
    frames = np.concatenate([p[0] for p in parts])
    targets = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    masks = {k: np.concatenate([p[2][k] for p in parts]) for k in parts[0][2]}
    masks["object_xyz"][: len(parts[0][0])] = False  # the first episode "has no object truth": its rows train ee only
    train = np.arange(len(frames)) % 2 == 0  # even frames train, odd frames (between them in time) test
    config = ReadoutConfig(**TINY, steps=300, cameras=("front",))
    readout = train_readout(frames[train], {k: v[train] for k, v in targets.items()},
                            {k: v[train] for k, v in masks.items()}, config)
    assert readout.labelled == {"ee_xyz": int(train.sum()), "object_xyz": int((masks["object_xyz"] & train).sum()),
                                "progress": int(train.sum())}

    out = readout.predict(frames[~train])
    assert out["ee_xyz"].shape == (int((~train).sum()), 3) and out["progress"].shape == (int((~train).sum()),)
    assert ((out["progress"] >= 0) & (out["progress"] <= 1)).all()
    error = np.linalg.norm(out["ee_xyz"] - targets["ee_xyz"][~train], axis=1).mean()
    baseline = np.linalg.norm(targets["ee_xyz"][~train] - targets["ee_xyz"][train].mean(0), axis=1).mean()
    assert error < 0.06 and error < 0.5 * baseline, (error, baseline)  # measured: ~4 cm against ~18 cm

    path = readout.save(tmp_path / "readout")
    assert sorted(p.name for p in (tmp_path / "readout").iterdir()) == ["config.json", "model.safetensors"]
    doc = json.loads((tmp_path / "readout" / "config.json").read_text())
    assert doc["config"]["cameras"] == ["front"] and len(doc["stats"]["ee_xyz"]["std"]) == 3
    loaded = Readout.load(path)
    again = loaded.predict(frames[~train])
    for key in out:
        np.testing.assert_allclose(again[key], out[key], atol=1e-6)
    assert loaded.labelled == readout.labelled and loaded.config == readout.config
    with pytest.raises(ValueError, match="cameras"):
        loaded.check_cameras(("front", "wrist"))


def test_heads_without_labels_stay_untrained():
    frames = np.random.default_rng(0).integers(0, 255, (8, 3, 16, 16), dtype=np.uint8)
    config = ReadoutConfig(in_channels=3, image_size=16, channels=(8, 8), hidden_dim=16, steps=2, batch_size=4)
    readout = train_readout(frames, {"ee_xyz": np.zeros((8, 3))}, None, config)
    assert readout.trained("ee_xyz") and not readout.trained("object_xyz") and not readout.trained("progress")
    with pytest.raises(ValueError, match="no labelled rows"):
        train_readout(frames, {"ee_xyz": np.zeros((8, 3))}, {"ee_xyz": np.zeros(8, bool)}, config)
    with pytest.raises(ValueError, match="unknown heads"):
        train_readout(frames, {"gripper": np.zeros(8)}, None, config)
    with pytest.raises(ValueError, match="shape"):
        readout.predict(frames[:, :, :8, :8])


@pytest.mark.parametrize("field, value", [("image_size", 18), ("channels", ()), ("lr", 0.0), ("steps", 0)])
def test_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        ReadoutConfig(**{"image_size": 32, "channels": (8, 16), field: value})
