"""Metrics for latent actions and world-model rollouts (numpy / torch, no model code).

    psnr / ssim           images in [0, 1]; with a mask, averaged over the masked pixels only
    motion_mask           pixels that change between two real frames (any channel by more than a threshold)
    r2_per_dim            coefficient of determination per output dim; ``mean_r2`` averages the dims that vary
    linear_probe          a fresh ridge regression from frozen features to targets, cross-validated by episode
    codebook_usage        perplexity, used and dead codes of a quantised bottleneck
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def motion_mask(real_prev: torch.Tensor, real_next: torch.Tensor, threshold: float = 8.0 / 255.0) -> torch.Tensor:
    """(B, 1, H, W) bool: pixels of the real frames that change by more than ``threshold`` (images in [0, 1])."""
    return (real_next - real_prev).abs().amax(1, keepdim=True) > threshold


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample PSNR in dB of images in [0, 1], (B, C, H, W) -> (B,); NaN where a mask is empty."""
    err = (pred.float() - target.float()).pow(2).mean(1, keepdim=True)  # (B, 1, H, W)
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        m = mask.float()
        count = m.flatten(1).sum(1)
        mse = (err * m).flatten(1).sum(1) / count.clamp(min=1)
        mse = torch.where(count > 0, mse, torch.full_like(mse, float("nan")))
    return 10.0 * torch.log10(1.0 / mse.clamp(min=1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample SSIM (Gaussian window 11, sigma 1.5, per channel) of images in [0, 1], (B, C, H, W) -> (B,); with a
    mask, the SSIM map is averaged over the masked pixels (NaN where a mask is empty)."""
    c = pred.shape[1]
    win = _gaussian_window().to(pred.device)[None, None].repeat(c, 1, 1, 1)  # (C, 1, 11, 11)
    x, y = pred.float(), target.float()

    def filt(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(v, (5, 5, 5, 5), mode="reflect"), win, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    smap = smap.mean(1, keepdim=True)  # (B, 1, H, W)
    if mask is None:
        return smap.flatten(1).mean(1)
    m = mask.float()
    count = m.flatten(1).sum(1)
    out = (smap * m).flatten(1).sum(1) / count.clamp(min=1)
    return torch.where(count > 0, out, torch.full_like(out, float("nan")))


def r2_per_dim(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N, K), (N, K) -> (K,) R2; NaN for dims whose target does not vary."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    var = target.var(0)
    sse = ((pred - target) ** 2).mean(0)
    varies = var > 1e-12
    return np.where(varies, 1.0 - sse / np.where(varies, var, 1.0), np.nan)


def mean_r2(pred: np.ndarray, target: np.ndarray) -> float:
    """R2 averaged over the target dims that vary."""
    r2 = r2_per_dim(pred, target)
    return float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan")


def _ridge_fit(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mu, sd = x.mean(0), x.std(0) + 1e-8
    xs = (x - mu) / sd
    xb = np.concatenate([xs, np.ones((len(xs), 1))], axis=1)
    reg = l2 * np.eye(xb.shape[1])
    reg[-1, -1] = 0.0
    w = np.linalg.solve(xb.T @ xb + reg, xb.T @ y)
    return mu, sd, w[:-1], w[-1]


def linear_probe(features: np.ndarray, targets: np.ndarray, groups: np.ndarray, folds: int = 4,
                 l2: float = 1e-3) -> dict[str, object]:
    """A fresh linear (ridge) probe from frozen features (N, D) to targets (N, K), k-fold cross-validated by group
    (episode): every prediction is for an episode the probe was not fitted on. Returns R2 per dim, R2 averaged over the
    dims that vary, and the MSE of standardised targets (so dims weigh equally); NaN when there is only one group."""
    features = np.asarray(features, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    unique = np.unique(groups)
    if len(unique) < 2:  # nothing to cross-validate against: no figure rather than one fitted on its own test data
        return {"r2": float("nan"), "r2_per_dim": [None] * targets.shape[1], "mse": float("nan"),
                "predictions": np.full_like(targets, np.nan)}
    folds = max(2, min(folds, len(unique)))
    fold_of = {g: i % folds for i, g in enumerate(np.random.default_rng(0).permutation(unique))}
    fold = np.array([fold_of[g] for g in groups])
    pred = np.zeros_like(targets)
    for k in range(folds):
        train, test = fold != k, fold == k
        mu, sd, w, b = _ridge_fit(features[train], targets[train], l2 * train.sum())
        pred[test] = ((features[test] - mu) / sd) @ w + b
    r2 = r2_per_dim(pred, targets)
    varies = np.isfinite(r2)
    scale = targets.std(0)
    mse = float(np.mean(((pred - targets)[:, varies] / scale[varies]) ** 2)) if varies.any() else float("nan")
    return {"r2": float(np.nanmean(r2)) if varies.any() else float("nan"),
            "r2_per_dim": [None if not np.isfinite(v) else round(float(v), 4) for v in r2],
            "mse": mse, "predictions": pred}


def codebook_usage(indices: np.ndarray, codebook_size: int) -> dict[str, float]:
    """Perplexity (exp of the entropy of code usage), codes used, and dead codes (never used) out of the codebook."""
    indices = np.asarray(indices).reshape(-1)
    counts = np.bincount(indices, minlength=codebook_size).astype(np.float64)
    p = counts / max(1.0, counts.sum())
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    used = int((counts > 0).sum())
    return {"perplexity": math.exp(entropy), "codes_used": used, "dead_codes": int(codebook_size - used),
            "dead_fraction": float(1.0 - used / codebook_size), "codebook_size": int(codebook_size),
            "num_latents": int(len(indices))}
