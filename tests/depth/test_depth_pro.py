"""Depth Pro through the same loading code as real checkpoints, on a tiny random DepthProConfig saved like one
(no download): metric depth, focal length from the FoV head for uncalibrated cameras, known intrinsics kept and the
depth scaled to them, and the depth stage's backend check (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest

from depth.estimator import AlignmentConfig, DepthAnythingEstimator, EstimatorConfig, estimate_episode_depth
from depth.synthesis import SynthesisConfig, synthesize_episode
from pipeline.calibration import CameraCalibration, apply
from pipeline.stage import StageContext
from pipeline.stages.depth import Depth, DepthParams
from tests.depth.test_estimator import save_tiny_depth_anything
from tests.factories import make_episode


def save_tiny_depth_pro(path, fov_head: bool = True, seed: int = 0) -> str:
    """A ~90k-parameter random Depth Pro (patch + image encoders and, optionally, the FoV encoder and head) and its
    image processor, saved with ``save_pretrained`` (config, safetensors, preprocessor_config.json)."""
    import torch
    from transformers import DepthProConfig, DepthProForDepthEstimation, DepthProImageProcessor, Dinov2Config

    torch.manual_seed(seed)
    small = dict(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=32)
    config = DepthProConfig(patch_size=32, scaled_images_ratios=[0.5, 1.0], scaled_images_overlap_ratios=[0.0, 0.25],
                            scaled_images_feature_dims=[16, 16], intermediate_hook_ids=[1, 0],
                            intermediate_feature_dims=[16, 16], fusion_hidden_size=16, use_fov_model=fov_head,
                            num_fov_head_layers=1, image_model_config=Dinov2Config(**small),
                            patch_model_config=Dinov2Config(**small),
                            fov_model_config=Dinov2Config(**small))
    model = DepthProForDepthEstimation(config)
    if fov_head:  # random weights predict any angle, negative ones too: centre the head near a 60 degree camera
        with torch.no_grad():
            model.fov_model.head.layers[2].weight.mul_(0.01)
            model.fov_model.head.layers[2].bias.fill_(60.0)
    model.save_pretrained(path)
    DepthProImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def depth_pro(tmp_path_factory):
    return save_tiny_depth_pro(tmp_path_factory.mktemp("depth-pro"))


def uncalibrated(episode_id: str, num_frames: int = 3, **kwargs):
    episode = make_episode(episode_id, num_frames=num_frames, height=24, width=40, **kwargs)
    episode.meta.pop("cameras", None)
    return episode


def calibrated(episode_id: str, num_frames: int = 3, **kwargs):
    """An episode whose camera has intrinsics given as ingest params would give them (a 50 degree vertical FoV)."""
    episode = uncalibrated(episode_id, num_frames, **kwargs)
    apply(episode.meta, {"front": (24, 40)}, {"front": CameraCalibration(intrinsics={"fov_deg": 50})})
    return episode


def test_metric_depth_and_a_focal_length_per_frame(depth_pro):
    est = DepthAnythingEstimator(EstimatorConfig(model=depth_pro, local_files_only=True))
    assert est.backend == "depth_pro" and est.kind == "metric"
    frames = uncalibrated("ep").rgb["front"]
    depth, focal = est.predict_with_focal(frames)
    assert depth.shape == (3, 24, 40) and depth.dtype == np.float32 and np.isfinite(depth).all() and (depth > 0).all()
    assert focal.shape == (3,) and np.isfinite(focal).all() and (focal > 0).all()
    # depth is proportional to the focal length it assumes: a known focal rescales it, frame by frame
    known, _ = est.predict_with_focal(frames, focal_px=30.0)
    np.testing.assert_allclose(known, depth * (30.0 / focal)[:, None, None], rtol=1e-5)


def test_uncalibrated_camera_gets_estimated_intrinsics_and_qa_says_so(depth_pro):
    est = DepthAnythingEstimator(EstimatorConfig(model=depth_pro))
    episode, _ = estimate_episode_depth(uncalibrated("ep-u", with_depth=False), est, AlignmentConfig())
    front = episode.meta["cameras"]["front"]
    assert front["calibration"] == {"intrinsics": "estimated", "extrinsics": None}
    k = front["intrinsics"]
    assert k["fx"] == k["fy"] == pytest.approx(front["focal_estimate"]["median_px"], abs=1e-3)
    assert k["fx"] == pytest.approx(20 / np.tan(np.radians(30)), rel=0.05)  # the head was set near 60 degrees
    assert (k["cx"], k["cy"], k["width"], k["height"]) == (19.5, 11.5, 40, 24)
    assert episode.meta["depth"]["backend"] == "depth_pro"
    episode.validate()
    qa = synthesize_episode(episode, SynthesisConfig(frames_per_episode=2))
    assert qa.samples and all(s.document["calibration"] == {"intrinsics": "estimated", "extrinsics": None}
                              for s in qa.samples)

    episode = calibrated("ep-c", with_depth=False)
    given = episode.meta["cameras"]["front"]["intrinsics"]
    out, _ = estimate_episode_depth(episode, est, AlignmentConfig())
    assert out.meta["cameras"]["front"]["intrinsics"] == given  # known intrinsics are never overwritten
    assert "focal_estimate" not in out.meta["cameras"]["front"]


def test_depth_pro_without_fov_head_needs_intrinsics(tmp_path):
    est = DepthAnythingEstimator(EstimatorConfig(model=save_tiny_depth_pro(tmp_path / "nofov", fov_head=False)))
    with pytest.raises(ValueError, match="without its FoV head.*intrinsics"):
        estimate_episode_depth(uncalibrated("ep-n", with_depth=False), est, AlignmentConfig())
    episode = calibrated("ep-k", num_frames=2, with_depth=False)
    out, _ = estimate_episode_depth(episode, est, AlignmentConfig())
    assert out.depth_m["front"].shape == (2, 24, 40)


def test_depth_stage_backend_must_match_the_checkpoint(depth_pro, tmp_path):
    ctx = StageContext(run_dir=str(tmp_path), stage_dir=str(tmp_path / "d"), stage="depth", seed=0, resume=False,
                       index=0)
    stage = Depth(DepthParams(backend="depth_pro", model=depth_pro), ctx)
    out = stage(uncalibrated("ep-s", with_depth=False))
    assert out.meta["cameras"]["front"]["calibration"]["intrinsics"] == "estimated"
    with pytest.raises(ValueError, match="backend depth_anything but .* is a depth_pro checkpoint"):
        Depth(DepthParams(backend="depth_anything", model=depth_pro), ctx)
    with pytest.raises(ValueError, match="backend depth_pro but .* is a depth_anything checkpoint"):
        Depth(DepthParams(backend="depth_pro", model=save_tiny_depth_anything(tmp_path / "da")), ctx)
    with pytest.raises(ValueError, match="apple/DepthPro-hf"):
        DepthParams(backend="depth_pro")
