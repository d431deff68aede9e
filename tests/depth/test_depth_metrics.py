"""AbsRel / RMSE / delta1 and the monocular noise model."""

from __future__ import annotations

import numpy as np
import pytest

from depth.metrics import DepthErrorSums, depth_error_sums, depth_metrics
from depth.noise import MonocularNoiseModel


def test_metrics_on_known_values():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]], dtype=np.float32)  # 0 = no ground truth
    pred = np.array([[1.1, 2.0], [2.0, 3.0]], dtype=np.float32)
    m = depth_metrics(pred, gt)
    assert m["num_pixels"] == 3 and m["coverage"] == 1.0
    assert m["absrel"] == pytest.approx((0.1 + 0.0 + 0.5) / 3, abs=1e-5)
    assert m["rmse_m"] == pytest.approx(np.sqrt((0.01 + 0 + 4) / 3), abs=1e-5)
    assert m["delta1"] == pytest.approx(2 / 3, abs=1e-5)  # 4 vs 2 is off by 2x


def test_missing_predictions_lower_coverage_not_accuracy():
    gt = np.ones((4, 4), dtype=np.float32)
    pred = gt.copy()
    pred[0] = np.nan
    m = depth_metrics(pred, gt)
    assert m["coverage"] == 0.75 and m["absrel"] == 0.0 and m["delta1"] == 1.0


def test_sums_combine_exactly():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 2, (2, 8, 8)).astype(np.float32)
    pred = (gt * rng.uniform(0.8, 1.2, gt.shape)).astype(np.float32)
    whole = depth_error_sums(pred, gt).to_json()
    parts = depth_error_sums(pred[:1], gt[:1]) + depth_error_sums(pred[1:], gt[1:])
    assert parts.to_json() == whole
    assert DepthErrorSums.from_json(parts.sums_json()) == parts
    with pytest.raises(ValueError, match="same shape"):
        depth_error_sums(pred[0], gt)


def test_noise_model_is_deterministic_keeps_holes_and_has_the_documented_size():
    rng = np.random.default_rng(0)
    depth = np.full((3, 32, 32), 0.8, dtype=np.float32)
    depth[:, 10:20, 10:20] = 0.7  # an object in front of a wall: edges get smoothed
    depth[:, 0, :] = 0.0  # no measurement
    model = MonocularNoiseModel()
    a = model.apply(depth, np.random.default_rng(1))
    b = model.apply(depth, np.random.default_rng(1))
    assert np.array_equal(a, b) and a.shape == depth.shape and a.dtype == np.float32
    assert (a[:, 0, :] == 0).all() and (a[:, 1:] > 0).all()
    m = depth_metrics(a, depth)
    assert 0.01 < m["absrel"] < 0.15 and m["delta1"] > 0.9
    clean = MonocularNoiseModel(scale_sigma=0, tilt_sigma=0, edge_px=0, pixel_sigma=0).apply(depth, rng)
    assert np.allclose(clean, depth)
    with pytest.raises(ValueError, match="scale_sigma"):
        MonocularNoiseModel(scale_sigma=-0.1)
