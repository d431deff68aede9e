"""Depth Anything wrapper on a tiny random DepthAnythingConfig (the real transformers code, no download) and the
relative -> metric alignment."""

from __future__ import annotations

import numpy as np
import pytest

from depth.estimator import (
    AlignmentConfig, DepthAnythingEstimator, EstimatorConfig, apply_alignment, estimate_episode_depth, fit_alignment,
    plane_depth,
)
from episodes import EpisodeError
from tests.factories import make_episode


def save_tiny_depth_anything(path, kind: str = "metric", seed: int = 0) -> str:
    """A ~8k-parameter random Depth Anything + its processor, saved like a real checkpoint (config, safetensors,
    preprocessor_config.json). Relative heads end in a ReLU: the last bias is raised so the output is not all 0."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(seed)
    backbone = Dinov2Config(image_size=32, patch_size=16, hidden_size=4, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=8, out_features=["stage1", "stage2"], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=4, patch_size=16,
                                 neck_hidden_sizes=[2, 2], fusion_hidden_size=6, depth_estimation_type=kind,
                                 max_depth=20)
    model = DepthAnythingForDepthEstimation(config)
    if kind == "relative":
        with torch.no_grad():
            model.head.conv3.bias.fill_(1.0)
    model.save_pretrained(path)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=True, ensure_multiple_of=16,
                      do_pad=False).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def metric_model(tmp_path_factory):
    return save_tiny_depth_anything(tmp_path_factory.mktemp("da-metric"), "metric")


@pytest.fixture(scope="module")
def relative_model(tmp_path_factory):
    return save_tiny_depth_anything(tmp_path_factory.mktemp("da-relative"), "relative")


def test_loads_by_path_and_predicts_frame_sized_maps(metric_model):
    est = DepthAnythingEstimator(EstimatorConfig(model=metric_model, device="cpu", batch_size=2, local_files_only=True))
    assert est.kind == "metric" and est.device == "cpu"
    frames = np.random.default_rng(0).integers(0, 255, (5, 24, 40, 3), dtype=np.uint8)
    out = est.predict(frames)
    assert out.shape == (5, 24, 40) and out.dtype == np.float32
    assert np.isfinite(out).all() and (out > 0).all() and (out < 20).all()  # sigmoid * max_depth
    batched = DepthAnythingEstimator(EstimatorConfig(model=metric_model, batch_size=8)).predict(frames)
    assert np.allclose(out, batched, atol=1e-5)  # batching does not change the result
    resized = DepthAnythingEstimator(EstimatorConfig(model=metric_model, input_size=48)).predict(frames[:1])
    assert resized.shape == (1, 24, 40)


def test_missing_model_says_what_to_pass(tmp_path):
    with pytest.raises(RuntimeError, match="could not be loaded"):
        DepthAnythingEstimator(EstimatorConfig(model=str(tmp_path / "nope"), local_files_only=True))


def test_config_validation():
    with pytest.raises(ValueError, match="batch_size"):
        EstimatorConfig(model="x", batch_size=0)
    with pytest.raises(ValueError, match="cues"):
        AlignmentConfig(cues=("lidar",))


def test_alignment_recovers_scale_and_shift_in_disparity():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.4, 2.0, 300)
    scale, shift = 0.8, 0.15
    pred = (1.0 / depth - shift) / scale  # affine-invariant disparity, as relative models give
    fit = fit_alignment(pred, depth, "disparity")
    assert (fit.scale, fit.shift) == pytest.approx((scale, shift), rel=1e-6)
    assert fit.residual_rmse_m < 1e-6 and fit.num_cues == 300 and not fit.degenerate  # float32 output
    assert apply_alignment(pred, fit.scale, fit.shift, "disparity") == pytest.approx(depth, rel=1e-6)
    noisy = fit_alignment(pred * (1 + rng.normal(0, 0.05, 300)), depth, "disparity")
    assert 0.005 < noisy.residual_rmse_m < 0.5 and 0.005 < noisy.residual_absrel < 0.2  # the residual is reported
    linear = fit_alignment(2.0 * depth - 0.3, depth, "depth")
    assert (linear.scale, linear.shift) == pytest.approx((0.5, 0.15), rel=1e-6)


def test_degenerate_and_missing_cues():
    flat = fit_alignment(np.full(10, 3.0), np.linspace(0.5, 1.5, 10), "disparity")
    assert flat.degenerate and flat.scale == 0.0 and flat.residual_rmse_m > 0
    none = fit_alignment(np.zeros(0), np.zeros(0), "disparity")
    assert none.degenerate and none.num_cues == 0 and none.residual_rmse_m is None
    metric = fit_alignment(np.array([1.0, 2.0]), np.array([1.1, 1.8]), "none")
    assert (metric.scale, metric.shift) == (1.0, 0.0) and metric.residual_rmse_m == pytest.approx(np.sqrt(0.025))


def test_plane_depth_matches_a_ray_cast_plane():
    pose = np.eye(4)  # camera 1 m above the plane z = 0, looking straight down (OpenCV: z forward = world -z)
    pose[:3, :3] = np.diag([1.0, -1.0, -1.0])
    pose[2, 3] = 1.0
    K = {"fx": 20.0, "fy": 20.0, "cx": 8.0, "cy": 8.0}
    depth = plane_depth(K, pose, 0.0, 16, 16)
    assert depth == pytest.approx(np.ones((16, 16)))  # depth along the optical axis is the height everywhere
    assert plane_depth(K, pose, 2.0, 16, 16).max() == 0.0  # a plane above the camera is never hit


def test_metric_episode_estimate_with_metrics(metric_model):
    est = DepthAnythingEstimator(EstimatorConfig(model=metric_model))
    episode = make_episode("ep-m", num_frames=3, height=24, width=24)
    sensor = episode.depth_m["front"].copy()
    episode, report = estimate_episode_depth(episode, est, AlignmentConfig(estimate_for="all"))
    assert not np.allclose(episode.depth_m["front"], sensor)
    assert episode.depth_m["front"].dtype == np.float32 and episode.depth_m["front"].shape == sensor.shape
    metrics = report.cameras["front"].metrics.to_json()
    assert metrics["num_pixels"] == sensor.size and metrics["absrel"] > 0 and metrics["rmse_m"] > 0
    meta = episode.meta["depth"]
    assert meta["kind"] == "metric" and meta["cameras"]["front"]["alignment_space"] == "none"
    assert meta["cameras"]["front"]["residual_rmse_m"] is not None  # residual against the sensor cues, reported
    assert episode.extras["depth_alignment_front"].shape == (3, 4)
    episode.validate()


def test_relative_episode_is_aligned_to_sensor_cues(relative_model):
    est = DepthAnythingEstimator(EstimatorConfig(model=relative_model))
    assert est.kind == "relative"
    episode = make_episode("ep-r", num_frames=2, height=24, width=24)
    episode, report = estimate_episode_depth(episode, est, AlignmentConfig(estimate_for="all", num_cue_pixels=50))
    cam = report.cameras["front"]
    assert cam.cues == ["sensor"] and all(a.space == "disparity" and a.num_cues == 50 for a in cam.alignments)
    assert (episode.depth_m["front"] >= 0).all() and episode.depth_m["front"].max() > 0.2
    per_frame = episode.extras["depth_alignment_front"]
    assert np.isfinite(per_frame[:, 2]).all() and (per_frame[:, 3] == 50).all()


def test_relative_model_without_cues_is_a_clear_error(relative_model):
    est = DepthAnythingEstimator(EstimatorConfig(model=relative_model))
    episode = make_episode("ep-n", num_frames=2, height=24, width=24, with_depth=False)
    with pytest.raises(EpisodeError, match="needs metric cues"):
        estimate_episode_depth(episode, est, AlignmentConfig())


def test_missing_mode_leaves_sensor_cameras_alone(metric_model):
    est = DepthAnythingEstimator(EstimatorConfig(model=metric_model))
    episode = make_episode("ep-s", num_frames=2, height=24, width=24, cameras=("front", "wrist"))
    del episode.depth_m["wrist"]
    sensor = episode.depth_m["front"].copy()
    episode, report = estimate_episode_depth(episode, est, AlignmentConfig(estimate_for="missing"))
    assert set(report.cameras) == {"wrist"} and np.array_equal(episode.depth_m["front"], sensor)
    assert report.cameras["wrist"].metrics is None  # no ground truth for that camera
    assert episode.depth_m["wrist"].shape == (2, 24, 24)
