"""Depth accuracy against ground truth: AbsRel, RMSE and delta < 1.25, accumulated as sums so that per-episode figures
combine exactly into overall ones (pixel-weighted).

    AbsRel   mean |pred - gt| / gt
    RMSE     sqrt(mean (pred - gt)^2), metres
    delta1   fraction of pixels with max(pred / gt, gt / pred) < 1.25

Pixels count where the ground truth is a measurement (finite, > 0). Where the prediction has no value (0 or NaN) at such
a pixel, the pixel is left out of the three metrics and counted as missing (``coverage`` = predicted / measured).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class DepthErrorSums:
    num_gt: int = 0  # ground-truth pixels
    num_pixels: int = 0  # ground-truth pixels with a prediction
    sum_absrel: float = 0.0
    sum_sq_m2: float = 0.0
    num_delta1: int = 0

    def __add__(self, other: DepthErrorSums) -> DepthErrorSums:
        return DepthErrorSums(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    def to_json(self) -> dict[str, float | int | None]:
        """The metrics (None when there was nothing to compare)."""
        n = self.num_pixels
        return {"absrel": round(self.sum_absrel / n, 5) if n else None,
                "rmse_m": round(float(np.sqrt(self.sum_sq_m2 / n)), 5) if n else None,
                "delta1": round(self.num_delta1 / n, 5) if n else None,
                "coverage": round(n / self.num_gt, 5) if self.num_gt else None,
                "num_pixels": n}

    @classmethod
    def from_json(cls, d: dict) -> DepthErrorSums:
        return cls(**{k: d[k] for k in ("num_gt", "num_pixels", "sum_absrel", "sum_sq_m2", "num_delta1")})

    def sums_json(self) -> dict[str, float | int]:
        return asdict(self)


def depth_error_sums(pred_m: np.ndarray, gt_m: np.ndarray) -> DepthErrorSums:
    """Sums over all pixels of (..., H, W) arrays in metres (any leading shape, e.g. (T, H, W))."""
    if pred_m.shape != gt_m.shape:
        raise ValueError(f"pred_m and gt_m must have the same shape, got {pred_m.shape} and {gt_m.shape}")
    gt = np.asarray(gt_m, dtype=np.float64)
    pred = np.asarray(pred_m, dtype=np.float64)
    has_gt = np.isfinite(gt) & (gt > 0)
    both = has_gt & np.isfinite(pred) & (pred > 0)
    g, p = gt[both], pred[both]
    ratio = np.maximum(p / g, g / p)
    return DepthErrorSums(num_gt=int(has_gt.sum()), num_pixels=int(both.sum()),
                          sum_absrel=float(np.sum(np.abs(p - g) / g)), sum_sq_m2=float(np.sum((p - g) ** 2)),
                          num_delta1=int(np.sum(ratio < 1.25)))


def depth_metrics(pred_m: np.ndarray, gt_m: np.ndarray) -> dict[str, float | int | None]:
    """AbsRel, RMSE (m), delta1, coverage and pixel count of a prediction against ground truth."""
    return depth_error_sums(pred_m, gt_m).to_json()
