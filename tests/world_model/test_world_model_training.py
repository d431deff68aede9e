"""Training the joint model on tiny data: losses go down, alignment makes z predictive of actions, checkpoints
round-trip through safetensors + JSON, and a resumed run continues its step count."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from episodes import Episode
from episodes import io as fileio
from latent_actions.model import LatentActionConfig
from world_model.checkpoint import (
    COMPLETE, is_complete, latest_checkpoint, list_checkpoints, load_model, load_optimizer, load_world_model,
    prune_checkpoints, save_checkpoint,
)
from world_model.data import PairData, choose_labelled
from world_model.deterministic import DeterministicConfig
from world_model.evaluate import latent_metrics
from world_model.model import LatentWorldModel, WorldModelConfig
from world_model.train import TrainConfig, model_config_for, train
from world_model.wrapper import ActionNormalizer


def square_episode(index: int, num_frames: int = 24, size: int = 32, seed: int = 0) -> Episode:
    """A white square moved by the action (dx, dy in pixels) over a fixed random background, plus a grey distractor
    square that wanders on its own: the action is fully visible, but not the only thing that moves."""
    rng = np.random.default_rng([seed, index])
    background = (rng.integers(0, 90, (size // 4, size // 4, 3))).repeat(4, 0).repeat(4, 1).astype(np.uint8)
    pos = rng.integers(6, size - 12, 2).astype(int)
    other = rng.integers(6, size - 12, 2).astype(int)
    frames, actions = [], []
    for _ in range(num_frames):
        frame = background.copy()
        frame[other[1]:other[1] + 5, other[0]:other[0] + 5] = 150
        frame[pos[1]:pos[1] + 6, pos[0]:pos[0] + 6] = 255
        frames.append(frame)
        action = rng.integers(-3, 4, 2)
        action = np.clip(pos + action, 1, size - 7) - pos
        pos = pos + action
        other = np.clip(other + rng.integers(-2, 3, 2), 1, size - 6)
        actions.append(action.astype(np.float32))
    return Episode(episode_id=f"square-{seed}-{index:03d}", fps=10.0, task="move the square", rgb={"front": np.stack(frames)},
                   action=np.stack(actions), meta={"source": "squares", "robot_type": "square"})


def tiny_model_config(**overrides) -> WorldModelConfig:
    latent = LatentActionConfig(latent_dim=8, encoder_channels=(16, 32, 32), encoder_hidden_dim=64,
                                embodiments={"square": 2})
    return WorldModelConfig(cameras=("front",), image_size=32, latent=latent,
                            deterministic=DeterministicConfig(channels=(16, 32, 32)), **overrides)


@pytest.fixture(scope="module")
def squares():
    train_eps = [square_episode(i) for i in range(16)]
    test_eps = [square_episode(i, seed=1) for i in range(6)]
    return train_eps, test_eps


def _data(episodes, labelled_fraction=1.0):
    ids = [e.episode_id for e in episodes]
    labelled = choose_labelled(ids, [True] * len(ids), ["squares"] * len(ids), labelled_fraction)
    return PairData.from_episodes(episodes, ("front",), 32, labelled=labelled)


def test_alignment_makes_latents_predict_actions(squares, tmp_path):
    train_eps, test_eps = squares
    test = _data(test_eps)
    probes = {}
    for alignment in (True, False):
        data = _data(train_eps)
        result = train(tiny_model_config(alignment=alignment), TrainConfig(steps=240, batch_size=32, lr=2e-3,
                                                                           warmup_steps=20, log_every=40,
                                                                           checkpoint_every=1000, num_threads=1),
                       data, tmp_path / str(alignment), resume=False)
        probes[alignment] = latent_metrics(result.world_model, test)["probe_action"]
    on, off = probes[True], probes[False]
    # the expected direction, with margin: aligned latents are linearly predictive of the action, unaligned less so
    assert on["r2"] > 0.8, probes
    assert on["r2"] > off["r2"] + 0.1, probes
    assert off["mse"] > 2.0 * on["mse"], probes


def test_losses_decrease_on_a_tiny_sim_dataset(tmp_path):
    pytest.importorskip("pybullet")
    from pipeline.sim.tabletop import TabletopConfig
    from pipeline.sim.explore import explore_episode

    sim = TabletopConfig(width=32, height=32, cameras=("top", "wrist"), depth=False, segmentation=False)
    episodes = [explore_episode(seed, sim, num_frames=12) for seed in range(3)]
    assert all(e.action.shape == (12, 5) and e.meta["robot_type"] == "franka_panda" for e in episodes)
    data = PairData.from_episodes(episodes, ("top", "wrist"), 32, labelled={episodes[0].episode_id})
    config = model_config_for(WorldModelConfig(cameras=("top", "wrist"), image_size=32,
                                               latent=LatentActionConfig(latent_dim=8, encoder_channels=(16, 32, 32),
                                                                         encoder_hidden_dim=64),
                                               deterministic=DeterministicConfig(channels=(16, 32, 32))), data)
    assert config.latent.embodiments == {"franka_panda": 5}
    result = train(config, TrainConfig(steps=120, batch_size=16, lr=2e-3, warmup_steps=10, log_every=20,
                                       checkpoint_every=1000, num_threads=1), data, tmp_path, resume=False)
    first, last = result.history[0], result.history[-1]
    for key in ("recon", "align", "head"):
        assert last[key] < 0.8 * first[key], (key, first, last)
    curve = [json.loads(line) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve] == [20, 40, 60, 80, 100, 120]


@pytest.mark.parametrize("backend, bottleneck", [("deterministic", "vq"), ("diffusion", "fsq")])
def test_checkpoint_round_trip_is_safetensors_and_json(squares, tmp_path, backend, bottleneck):
    train_eps, _ = squares
    config = tiny_model_config(backend=backend)
    config.latent.bottleneck = bottleneck
    config = WorldModelConfig.from_dict(config.to_dict())
    torch.manual_seed(0)
    model = LatentWorldModel(config)
    data = _data(train_eps[:4])
    normalizer = ActionNormalizer({"square": 2}).fit(data)
    model.train()
    model.compute_loss(data.batch(np.arange(16), normalizer))  # move VQ EMA buffers off their initial values
    model.eval()
    path = Path(save_checkpoint(tmp_path / "step-00000007", model, normalizer, step=7))
    assert sorted(p.name for p in path.iterdir()) == [COMPLETE, "config.json", "model.safetensors"]
    assert is_complete(path) and not list(tmp_path.glob(".tmp-*"))
    loaded, loaded_norm, saved = load_model(path)
    assert saved["step"] == 7 and loaded.config.to_dict() == config.to_dict()
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert torch.equal(loaded_norm.std_square, normalizer.std_square)
    batch = data.batch(np.arange(8), normalizer)
    wm_a, wm_b = load_world_model(path), load_world_model(path)
    g = torch.Generator
    a = wm_a.rollout(batch["s_t"][:2], actions=np.ones((2, 2, 2), np.float32), generator=g().manual_seed(0))
    b = wm_b.rollout(batch["s_t"][:2], actions=np.ones((2, 2, 2), np.float32), generator=g().manual_seed(0))
    assert np.array_equal(a, b)
    # a config that does not match the weights is refused with a message, not silently half-loaded
    broken = json.loads((path / "config.json").read_text())
    broken["model"]["latent"]["latent_dim"] = 4
    (path / "config.json").write_text(json.dumps(broken))
    with pytest.raises((ValueError, RuntimeError), match="model.safetensors|size mismatch"):
        load_model(path)


def test_resume_continues_the_step_count(squares, tmp_path):
    train_eps, _ = squares
    data = _data(train_eps[:6])
    config = tiny_model_config()
    tc = TrainConfig(steps=20, batch_size=8, checkpoint_every=10, log_every=5, num_threads=1)
    first = train(config, tc, data, tmp_path)
    assert first.start_step == 0 and first.step == 20
    assert fileio.name(latest_checkpoint(tmp_path / "checkpoints")) == "step-00000020"
    weights = {k: v.clone() for k, v in first.world_model.model.state_dict().items()}
    tc.steps = 30
    second = train(config, tc, _data(train_eps[:6]), tmp_path)
    assert second.start_step == 20 and second.step == 30
    assert [h["step"] for h in second.history] == [5, 10, 15, 20, 25, 30]
    assert fileio.name(latest_checkpoint(tmp_path / "checkpoints")) == "step-00000030"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000020", "step-00000030"]
    _, _, saved = load_model(tmp_path / "checkpoints" / "step-00000030")
    adam_steps = {v["step"] for v in saved["optimizer"]["scalars"].values()}
    assert adam_steps == {30.0}  # the optimizer state came back too (its step count continued from 20)
    assert any(not torch.equal(weights[k], v) for k, v in second.world_model.model.state_dict().items())
    # asking for fewer steps than the checkpoint has is a no-op that returns the checkpoint
    tc.steps = 25
    third = train(config, tc, _data(train_eps[:6]), tmp_path)
    assert third.start_step == 30 and third.step == 30


@pytest.fixture
def memory_root():
    root = f"memory://wmsynth-test-{uuid.uuid4().hex[:8]}"
    yield root
    fileio.remove(root, recursive=True)


def test_checkpoints_on_object_storage_commit_last_and_prune(squares, memory_root):
    """memory:// stands for S3/GCS (no renames): files first, the marker last; incomplete ones never count."""
    data = _data(squares[0][:2])
    torch.manual_seed(0)
    model = LatentWorldModel(tiny_model_config())
    normalizer = ActionNormalizer({"square": 2}).fit(data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.compute_loss(data.batch(np.arange(8), normalizer))[0].backward()
    optimizer.step()
    ckpts = fileio.join(memory_root, "run", "checkpoints")
    for step in (2, 4, 6):
        save_checkpoint(fileio.join(ckpts, f"step-{step:08d}"), model, normalizer, step=step, optimizer=optimizer)
    assert [fileio.name(p) for p in list_checkpoints(ckpts)] == ["step-00000002", "step-00000004", "step-00000006"]
    newest = latest_checkpoint(ckpts)
    marker = json.loads(fileio.read_text(fileio.join(newest, COMPLETE)))
    assert marker["step"] == 6 and set(marker["files"]) == {"config.json", "model.safetensors", "optimizer.safetensors"}
    loaded, _, saved = load_model(newest)
    assert saved["step"] == 6
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    fresh = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    load_optimizer(newest, fresh)
    assert fresh.state_dict()["state"][0]["step"] == 1.0

    # an upload cut short before its marker: the files are there, the checkpoint does not count
    fileio.remove(fileio.join(newest, COMPLETE))
    assert fileio.exists(fileio.join(newest, "model.safetensors")) and not is_complete(newest)
    assert fileio.name(latest_checkpoint(ckpts)) == "step-00000004"
    prune_checkpoints(ckpts, keep=1)  # keeps the newest complete one, removes the rest (the incomplete one too)
    assert [fileio.name(p) for p in fileio.listdir(ckpts)] == ["step-00000004"]
    assert latest_checkpoint(fileio.join(memory_root, "nowhere")) is None


def test_training_on_a_url_resumes_from_the_newest_complete_checkpoint(squares, memory_root):
    train_eps, _ = squares
    config = tiny_model_config()
    tc = TrainConfig(steps=8, batch_size=8, checkpoint_every=4, log_every=2, num_threads=1)
    out_dir = fileio.join(memory_root, "train")
    first = train(config, tc, _data(train_eps[:4]), out_dir)
    assert first.checkpoint == fileio.join(out_dir, "checkpoints", "step-00000008")
    fileio.remove(fileio.join(first.checkpoint, COMPLETE))  # killed while writing step 8
    tc.steps = 10
    second = train(config, tc, _data(train_eps[:4]), out_dir)
    assert second.start_step == 4 and second.step == 10
    steps = [json.loads(line)["step"] for line in fileio.read_text(fileio.join(out_dir, "losses.jsonl")).splitlines()]
    assert steps == [2, 4, 6, 8, 10]  # the log is the history of the run that reached step 10: nothing twice
    assert [fileio.name(p) for p in list_checkpoints(fileio.join(out_dir, "checkpoints"))] == [
        "step-00000008", "step-00000010"]
