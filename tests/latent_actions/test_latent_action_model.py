"""Latent-action encoder, bottlenecks and per-embodiment action maps: shapes, gradients, config checks."""

from __future__ import annotations

import pytest
import torch

from latent_actions.model import LatentActionConfig, LatentActionModel

TINY = {"in_channels": 6, "image_size": 32, "latent_dim": 8, "encoder_channels": (8, 16, 16), "encoder_hidden_dim": 32,
        "embodiments": {"panda": 5, "aloha": 14}}


def _pair(batch: int = 4, channels: int = 6, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(batch, channels, size, size, generator=g) * 2 - 1,
            torch.rand(batch, channels, size, size, generator=g) * 2 - 1)


@pytest.mark.parametrize("bottleneck, extra", [
    ("continuous", {}),
    ("continuous", {"kl_weight": 0.1, "noise_std": 0.05}),
    ("fsq", {"fsq_levels": (5, 5, 4)}),
    ("vq", {"vq_codebook_size": 16}),
])
def test_bottleneck_shapes_and_gradients(bottleneck, extra):
    model = LatentActionModel(LatentActionConfig(**TINY, bottleneck=bottleneck, **extra)).train()
    s_t, s_next = _pair()
    out = model(s_t, s_next)
    assert out.z.shape == (4, 8) and out.z_clean.shape == (4, 8) and out.aux_loss.shape == ()
    if bottleneck == "continuous":
        assert out.indices is None
        assert (out.aux_loss > 0) == (extra.get("kl_weight", 0) > 0)
    else:
        assert out.indices.shape == (4,) and out.indices.dtype == torch.long
        assert int(out.indices.max()) < model.config.codebook_size
    # gradients reach the encoder through the bottleneck (straight-through for the quantisers)
    (out.z.pow(2).sum() + out.aux_loss).backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_action_maps_per_embodiment_share_the_latent_space():
    model = LatentActionModel(LatentActionConfig(**TINY, bottleneck="fsq", fsq_levels=(5, 5, 4))).eval()
    for name, dim in (("panda", 5), ("aloha", 14)):
        z_a = model.encode_action(torch.randn(3, dim), name)
        assert z_a.z.shape == (3, 8)
        # A(a) is quantised like E's latents: it lands on the FSQ grid (its code index is defined)
        assert z_a.indices.shape == (3,)
        assert model.decode_action(z_a.z, name).shape == (3, dim)
    with pytest.raises(KeyError, match="ur5"):
        model.decode_action(torch.zeros(1, 8), "ur5")


def test_continuous_eval_is_deterministic_and_noise_only_in_training():
    model = LatentActionModel(LatentActionConfig(**TINY, noise_std=0.5))
    s_t, s_next = _pair()
    model.eval()
    a, b = model(s_t, s_next).z, model(s_t, s_next).z
    assert torch.equal(a, b)
    model.train()
    assert not torch.allclose(model(s_t, s_next).z, a)


@pytest.mark.parametrize("bad, field", [
    ({"latent_dim": 0}, "latent_dim"),
    ({"bottleneck": "gumbel"}, "bottleneck"),
    ({"kl_weight": -1.0}, "kl_weight"),
    ({"noise_std": -0.1}, "noise_std"),
    ({"fsq_levels": (8, 1)}, "fsq_levels"),
    ({"image_size": 36}, "image_size"),
    ({"encoder_channels": ()}, "encoder_channels"),
    ({"embodiments": {}}, "embodiments"),
    ({"embodiments": {"panda": 0}}, "embodiments"),
    ({"in_channels": 2.5}, "in_channels"),
])
def test_bad_config_values_fail_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        LatentActionConfig(**{**TINY, **bad})


def test_config_round_trips_through_a_dict():
    config = LatentActionConfig(**TINY, bottleneck="vq")
    assert LatentActionConfig.from_dict(config.to_dict()) == config
