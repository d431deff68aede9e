"""Progress judge: does the last predicted frame look as far along the task as the subgoal the trajectory was made for?

The readout (``evaluators.readout``) reads task progress in [0, 1] from one frame; the subgoal's progress is the
parent's goal frame / (T - 1) (``meta["subgoal"]["progress"]``). Score = clip(1 - |p_last - p_subgoal| / tolerance,
0, 1): 1 on the spot, 0.5 at half the tolerance (the default threshold), 0 at the tolerance or further.

``value_order_correlation`` is GVL's value-order correlation (Ma et al. 2024, "Vision language models are in-context
value learners"): the mean Spearman rank correlation between predicted progress and true frame order over held-out
episodes, the check that the progress head means anything before the judge is trusted.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from evaluators.base import Evaluator, Trajectory, Verdict, register_evaluator


@register_evaluator("progress")
class Progress(Evaluator):
    """Options: threshold (0.5), tolerance (0.15, in progress units). Resources: ``"readout"`` (a ``Readout``)."""

    defaults = {"threshold": 0.5, "tolerance": 0.15}

    def __init__(self, options=None, resources=None):
        super().__init__(options, resources)
        self.tolerance = float(self.options["tolerance"])
        if not self.tolerance > 0:
            raise ValueError(f"evaluator progress: tolerance must be > 0, got {self.options['tolerance']!r}")
        self.readout = self.resources.get("readout")
        if self.readout is None:
            raise ValueError("evaluator progress: needs resources['readout'] (an evaluators.readout.Readout)")

    def __call__(self, trajectory: Trajectory) -> Verdict:
        subgoal = trajectory.meta.get("subgoal") or {}
        goal = subgoal.get("progress")
        if goal is None:
            return self.verdict(0.0, "cannot judge: meta['subgoal'] has no 'progress'")
        self.readout.check_cameras(trajectory.cameras)
        p_start, p_last = (float(p) for p in self.readout.predict(trajectory.frames[[0, -1]])["progress"])
        error = abs(p_last - float(goal))
        score = 1.0 - error / self.tolerance
        return self.verdict(score, f"progress {p_last:.2f}, subgoal at {float(goal):.2f}", progress=p_last,
                            subgoal_progress=float(goal), start_progress=p_start, progress_error=error)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); 0 when either side is constant."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(x), float)
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x), dtype=float)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]  # tied values share their mean rank


def value_order_correlation(readout, episodes_frames: Iterable[np.ndarray]) -> float:
    """Mean over episodes of Spearman(predicted progress of each frame, frame index); episodes_frames: per episode
    (T, C, H, W) uint8 (held-out, successful demonstrations). Episodes with fewer than 2 frames are skipped; a constant
    prediction counts as 0."""
    scores = []
    for frames in episodes_frames:
        if len(frames) < 2:
            continue
        progress = readout.predict(frames)["progress"]
        scores.append(spearman(progress, np.arange(len(frames))))
    if not scores:
        raise ValueError("value_order_correlation: no episode with 2 or more frames")
    return float(np.mean(scores))
