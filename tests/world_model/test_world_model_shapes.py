"""Shapes of both world-model backends with both kinds of bottleneck, the joint loss, the wrapper, config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_actions.model import LatentActionConfig
from world_model.deterministic import DeterministicConfig
from world_model.diffusion import DiffusionConfig
from world_model.model import LatentWorldModel, WorldModelConfig, motion_weights
from world_model.train import TrainConfig
from world_model.wrapper import ActionNormalizer, WorldModel


def tiny_config(backend: str = "deterministic", bottleneck: str = "continuous", **overrides) -> WorldModelConfig:
    latent = LatentActionConfig(latent_dim=6, bottleneck=bottleneck, fsq_levels=(5, 5, 4), vq_codebook_size=16,
                                encoder_channels=(8, 16, 16), encoder_hidden_dim=32,
                                embodiments={"panda": 5, "aloha": 3})
    return WorldModelConfig(cameras=("front", "wrist"), image_size=32, backend=backend, latent=latent,
                            deterministic=DeterministicConfig(channels=(16, 16, 32)),
                            diffusion=DiffusionConfig(block_out_channels=(16, 32), patch_size=2,
                                                      num_inference_steps=2),
                            **overrides)


def tiny_batch(config: WorldModelConfig, batch: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    c, s = config.in_channels, config.image_size
    s_t = torch.rand(batch, c, s, s, generator=g) * 2 - 1
    s_next = s_t.clone()
    s_next[:, :, 4:12, 4:12] += 0.5  # a patch that changes
    return {"s_t": s_t, "s_next": s_next.clamp(-1, 1), "action": torch.randn(batch, 5, generator=g),
            "labelled": torch.tensor([True, True, False, True, False, True])[:batch],
            "embodiment": torch.tensor([0, 1, 0, 1, 1, 1])[:batch]}


@pytest.mark.parametrize("backend", ["deterministic", "diffusion"])
@pytest.mark.parametrize("bottleneck", ["continuous", "fsq", "vq"])
def test_joint_loss_and_rollout_shapes(backend, bottleneck):
    config = tiny_config(backend, bottleneck)
    assert config.in_channels == 6 and config.latent.in_channels == 6 and config.deterministic.cond_dim == 6
    model = LatentWorldModel(config).train()
    loss, parts = model.compute_loss(tiny_batch(config))
    assert loss.shape == () and torch.isfinite(loss)
    assert {"recon", "align", "head", "recon_action", "loss"} <= set(parts)
    loss.backward()
    assert all(p.grad is not None for p in model.latent.actions.encoders["panda"].parameters())
    assert all(p.grad is not None for p in model.latent.actions.encoders["aloha"].parameters())

    wm = WorldModel(model, ActionNormalizer({"aloha": 3, "panda": 5}))
    s0 = np.random.default_rng(0).integers(0, 255, (2, 6, 32, 32), dtype=np.uint8)
    video = wm.rollout(s0, actions=np.zeros((2, 3, 5), np.float32), embodiment="panda")
    assert video.shape == (2, 3, 6, 32, 32) and video.dtype == np.uint8
    z = wm.infer_latents(s0, s0)
    assert z.shape == (2, 6)
    assert wm.rollout(s0[0], latents=z).shape == (2, 6, 32, 32)  # one start state, two latent steps
    assert wm.decode_actions(z, "aloha").shape == (2, 3)
    codes = wm.infer_codes(s0, s0)
    assert (codes is None) == (bottleneck == "continuous")


def test_unlabelled_batch_has_reconstruction_only():
    config = tiny_config()
    batch = tiny_batch(config)
    batch["labelled"][:] = False
    _, parts = LatentWorldModel(config).compute_loss(batch)
    assert "align" not in parts and parts["recon"] > 0


def test_alignment_off_never_shapes_the_encoder():
    config = tiny_config(alignment=False, recon_weight=0.0)  # only the action terms remain
    model = LatentWorldModel(config)
    loss, parts = model.compute_loss(tiny_batch(config))
    loss.backward()
    assert parts["recon_action"] == 0.0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.latent.encoder.parameters())
    assert any(p.grad is not None for p in model.latent.actions.heads["panda"].parameters())


def test_motion_weights_mark_changing_pixels():
    s_t = torch.zeros(1, 3, 8, 8)
    s_next = s_t.clone()
    s_next[0, 1, 3, 3] = 0.5
    w = motion_weights(s_t, s_next, motion_weight=9.0, threshold=0.1)
    assert w.shape == (1, 1, 8, 8)
    assert w[0, 0, 3, 3] == 10.0 and w[0, 0, 2, 4] == 10.0 and w[0, 0, 0, 0] == 1.0


def test_wrapper_rollout_needs_exactly_one_conditioning():
    wm = WorldModel(LatentWorldModel(tiny_config()), ActionNormalizer({"panda": 5, "aloha": 3}))
    s0 = np.zeros((6, 32, 32), np.uint8)
    with pytest.raises(ValueError, match="exactly one"):
        wm.rollout(s0)
    with pytest.raises(ValueError, match="embodiment"):
        wm.rollout(s0, actions=np.zeros((2, 5), np.float32))  # two robots: must say which


@pytest.mark.parametrize("make, field", [
    (lambda: WorldModelConfig(cameras=()), "cameras"),
    (lambda: WorldModelConfig(cameras=("top", "top")), "cameras"),
    (lambda: WorldModelConfig(cameras=("cam_high", "")), "cameras"),
    (lambda: WorldModelConfig(backend="gan"), "backend"),
    (lambda: WorldModelConfig(motion_weight=-1.0), "motion_weight"),
    (lambda: WorldModelConfig(align_weight=-0.5), "align_weight"),
    (lambda: WorldModelConfig(motion_threshold=0.0), "motion_threshold"),
    (lambda: WorldModelConfig(image_size=4), "image_size"),
    (lambda: WorldModelConfig(image_size=40), "image_size"),  # not a multiple of the encoder's 16
    (lambda: DeterministicConfig(channels=(12, 16)), "channels"),
    (lambda: DiffusionConfig(prediction_type="x0"), "prediction_type"),
    (lambda: DiffusionConfig(num_inference_steps=0), "num_inference_steps"),
    (lambda: TrainConfig(steps=0), "steps"),
    (lambda: TrainConfig(lr=0.0), "lr"),
    (lambda: TrainConfig(labelled_batch_fraction=1.5), "labelled_batch_fraction"),
    (lambda: TrainConfig(source_weights={"sim": -1.0}), "source_weights"),
])
def test_bad_config_values_fail_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_world_model_config_round_trips():
    config = tiny_config("diffusion", "fsq", alignment=False)
    again = WorldModelConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()


def test_any_camera_name_the_data_has_is_accepted():
    """Camera names are the data's (a LeRobot dataset's cam_high), not only the simulator's; the run's data check
    compares them with what the sources produce."""
    config = WorldModelConfig(cameras=("cam_high", "cam_left_wrist"), image_size=32)
    assert config.cameras == ("cam_high", "cam_left_wrist") and config.in_channels == 6
    assert WorldModelConfig.from_dict(config.to_dict()).cameras == config.cameras
