"""Closed-loop evaluation: a tiny ACT policy (lerobot's own classes, saved as lerobot-train saves a checkpoint) runs in
the tabletop simulator; features come from the same schema code that writes the shards."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.lerobot_schema import DEPTH_PREFIX, IMAGES_PREFIX, STATE_KEY, ShardSchema
from pipeline.policy_eval import (
    EVAL_FILE,
    EvalSetupError,
    evaluate_policy,
    observation_batch,
    sim_schema,
    wilson_interval,
)

SIZE = 32
MAX_STEPS = 6


@pytest.fixture(scope="module")
def demo():
    """A scripted episode recorded at the tiny size, and its shard schema (as write_lerobot would derive it)."""
    from pipeline.sim import TabletopConfig, generate_episode

    episode = generate_episode(3, "push", TabletopConfig(width=SIZE, height=SIZE, max_steps=12, segmentation=False))
    return episode, ShardSchema.of_episode(episode, None, "demo")


def policy_features(schema: ShardSchema):
    from lerobot.configs.types import FeatureType
    from lerobot.utils.feature_utils import dataset_to_policy_features

    features = dataset_to_policy_features(schema.features())
    return ({k: f for k, f in features.items() if f.type is not FeatureType.ACTION},
            {k: f for k, f in features.items() if f.type is FeatureType.ACTION})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, demo):
    """checkpoints/000001/pretrained_model of a tiny RGB + state ACT, written by lerobot's save_checkpoint."""
    import torch
    from lerobot.common.train_utils import save_checkpoint
    from lerobot.configs.default import DatasetConfig
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    episode, schema = demo
    rgb_schema = replace(schema, depth_cameras=())  # ACT's ResNet takes 3 channels
    inputs, outputs = policy_features(rgb_schema)
    cfg = ACTConfig(input_features=inputs, output_features=outputs, pretrained_backbone_weights=None, dim_model=32,
                    n_heads=2, dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1,
                    latent_dim=4, chunk_size=4, n_action_steps=4, device="cpu")
    torch.manual_seed(0)
    policy = ACTPolicy(cfg)
    images = episode.rgb["front"].astype(np.float32) / 255  # (T, H, W, 3)

    def stats(values: np.ndarray, axes) -> dict:
        return {"mean": values.mean(axes), "std": values.std(axes) + 1e-3}

    dataset_stats = {IMAGES_PREFIX + "front": {k: v.reshape(3, 1, 1) for k, v in stats(images, (0, 1, 2)).items()},
                     STATE_KEY: stats(episode.state, 0), "action": stats(episode.action, 0)}
    preprocessor, postprocessor = make_pre_post_processors(cfg, dataset_stats=dataset_stats)
    root = tmp_path_factory.mktemp("train")
    train_cfg = TrainPipelineConfig(dataset=DatasetConfig(repo_id="wmsynth/none", root=str(root / "no-dataset")),
                                    policy=cfg, output_dir=root)
    checkpoint_dir = root / "checkpoints" / "000001"
    save_checkpoint(checkpoint_dir, 1, train_cfg, policy, torch.optim.AdamW(policy.parameters()),
                    preprocessor=preprocessor, postprocessor=postprocessor)
    return checkpoint_dir / "pretrained_model"


def test_wilson_interval():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 50)[0] == 0.0 and 0.05 < wilson_interval(0, 50)[1] < 0.08
    assert wilson_interval(50, 50)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_sim_schema_is_the_shard_schema(demo):
    """The env the evaluator builds from a policy's features writes exactly the shards' schema, frame keys included."""
    episode, schema = demo
    inputs, outputs = policy_features(schema)
    assert sim_schema(inputs, outputs, schema.fps, schema.robot_type) == schema
    frame = schema.frame({"front": episode.rgb["front"][0]}, {"front": episode.depth_m["front"][0]}, episode.state[0])
    assert set(frame) == set(inputs)
    batch = observation_batch(frame, inputs, {DEPTH_PREFIX + "front": _depth_encoder()}, "mm", "cpu", "push", "x")
    assert tuple(batch[IMAGES_PREFIX + "front"].shape) == (1, 3, SIZE, SIZE)
    depth = batch[DEPTH_PREFIX + "front"]
    assert tuple(depth.shape) == (1, 1, SIZE, SIZE)
    hit = episode.depth_m["front"][0] > 0
    np.testing.assert_allclose(depth[0, 0].numpy()[hit], 1000 * episode.depth_m["front"][0][hit], rtol=0.01)


def _depth_encoder():
    from lerobot.configs.video import DepthEncoderConfig

    return DepthEncoderConfig()


def test_evaluate_policy(checkpoint, tmp_path):
    result = evaluate_policy(checkpoint, "push,reach", 2, 1000, tmp_path / "a", max_steps=MAX_STEPS, num_gifs=1,
                             progress=False)
    json.dumps(result)
    assert result["num_episodes"] == 2 and 0 <= result["success_rate"] <= 1
    lo, hi = result["ci95"]
    assert 0 <= lo <= result["success_rate"] <= hi <= 1
    assert set(result["per_family"]) == {"push", "reach"}
    assert [(e["seed"], e["task"]) for e in result["episodes"]] == [(1000, "push"), (1001, "reach")]
    assert all(1 <= e["steps"] <= MAX_STEPS - 1 for e in result["episodes"])
    assert result["eval_fps_per_core"] > 0
    assert len(result["gifs"]) == 1 and Path(result["gifs"][0]).stat().st_size > 0
    assert result["features"][IMAGES_PREFIX + "front"] == [SIZE, SIZE, 3]
    again = evaluate_policy(checkpoint, "push,reach", 2, 1000, tmp_path / "b", max_steps=MAX_STEPS, num_gifs=0,
                            progress=False)
    assert again["episodes"] == result["episodes"]


def test_wmsynth_eval_policy_writes_eval_json(checkpoint, tmp_path, capsys):
    from pipeline.cli import main

    options = ["--task", "stack", "--episodes", "1", "--max-steps", "3", "--gifs", "0", "--out", str(tmp_path)]
    assert main(["eval-policy", str(checkpoint), *options]) == 0
    assert json.loads((tmp_path / EVAL_FILE).read_text())["per_family"]["stack"]["num_episodes"] == 1
    assert re.search(r"success [01]/1 ", capsys.readouterr().out)
    assert main(["eval-policy", str(tmp_path / "missing"), *options]) == 2
    assert "missing" in capsys.readouterr().err


def test_features_the_sim_cannot_make(checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    config = json.loads((bad / "config.json").read_text())
    config["input_features"]["observation.images.ceiling"] = config["input_features"].pop(IMAGES_PREFIX + "front")
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(EvalSetupError, match="observation.images.ceiling"):
        evaluate_policy(bad, "push", 1, 0, tmp_path / "out", progress=False)


def test_dataset_that_does_not_match(checkpoint, demo, tmp_path):
    _, schema = demo
    features = replace(schema, state_names=tuple(f"s{i}" for i in range(12))).features()
    (tmp_path / "ds" / "meta").mkdir(parents=True)
    (tmp_path / "ds" / "meta" / "info.json").write_text(json.dumps({"fps": 10, "features": features}))
    with pytest.raises(EvalSetupError, match=STATE_KEY):
        evaluate_policy(checkpoint, "push", 1, 0, tmp_path / "out", dataset=tmp_path / "ds", progress=False)


def test_against_the_shard_it_was_trained_on(checkpoint, demo, tmp_path):
    """A real shard of the demo (write_shard): its info.json agrees with the sim's features; its provenance gives the
    demos' episode length and marks the demo's own scene seed as seen."""
    from pipeline.lerobot_shard import write_shard
    from pipeline.stages.write_lerobot import WriteLerobotParams
    from tests.shard_factories import save_episodes, shard_inputs

    episode, _ = demo
    shard = tmp_path / "shard"
    write_shard(shard_inputs(save_episodes(tmp_path, episode)), shard,
                WriteLerobotParams(repo_id="wmsynth/test").writer_settings())
    result = evaluate_policy(checkpoint, "push", 1, episode.meta["seed"], tmp_path / "out", dataset=shard,
                             num_gifs=0, progress=False)
    assert result["per_family"]["push"]["max_steps"] == 12 and result["seen_seeds"] == 1
    assert result["sim_config"]["num_objects"] == episode.meta["sim"]["config"]["num_objects"]
    shard_features = json.loads((shard / "meta" / "info.json").read_text())["features"]
    for key, shape in result["features"].items():
        assert shard_features[key]["shape"] == shape
