"""Reach judge: does the commanded end-effector path end where the subgoal has the end effector?

From the actions and the start state only, like ``safety``: the commanded path (``safety.commanded_path``: the start
ee position plus the summed dx, dy, dz) ends at p_K, and the subgoal (``meta["subgoal"]["ee_xyz"]``) is where the parent
demonstration had its end effector at the goal frame. With end-effector delta actions and a controller that tracks
them, p_K is where the arm will be, far more precisely than a read-out of predicted frames can say (in the embedded
simulator p_K is within 0.4 cm of the replayed ee in the median, 1.4 cm at the 90th percentile; the frame read-out
errs by about 2 cm on *real* frames). So reach judges the arm, and the frame-based judges (``geometric`` with
``check: [object, table]``, ``progress``, ``consistency``) judge what the world model is needed for: the objects.

    score = exp(-ln2 (|p_K - subgoal ee| / ee_tol_m)^2)        1 on the subgoal, 0.5 at the tolerance

Default ``ee_tol_m`` 0.025: replay's subgoal tolerance (3 cm) less the controller's tracking lag. Without a start
state or without dx, dy, dz actions (e.g. joint-space robots) the path is not known and the verdict says it cannot
judge (score 0): leave reach out of the filter for such data.
"""

from __future__ import annotations

import numpy as np

from evaluators.base import Evaluator, Trajectory, Verdict, register_evaluator
from evaluators.geometric import distance_term
from evaluators.safety import commanded_path


@register_evaluator("reach")
class Reach(Evaluator):
    """Options: threshold (0.5), ee_tol_m (0.025). No resources."""

    defaults = {"threshold": 0.5, "ee_tol_m": 0.025}

    def __init__(self, options=None, resources=None):
        super().__init__(options, resources)
        if not float(self.options["ee_tol_m"]) > 0:
            raise ValueError(f"evaluator reach: ee_tol_m must be > 0, got {self.options['ee_tol_m']!r}")

    def __call__(self, trajectory: Trajectory) -> Verdict:
        goal = (trajectory.meta.get("subgoal") or {}).get("ee_xyz")
        if goal is None:
            return self.verdict(0.0, "cannot judge: meta['subgoal'] has no ee_xyz")
        path, absolute = commanded_path(trajectory)
        if path is None:
            return self.verdict(0.0, f"cannot judge: actions {trajectory.meta.get('action_names')} have no dx, dy, dz")
        if not absolute:
            return self.verdict(0.0, "cannot judge: the start state has no ee_x, ee_y, ee_z")
        error_m = float(np.linalg.norm(path[-1] - np.asarray(goal, dtype=float)))
        score = distance_term(error_m, float(self.options["ee_tol_m"]))
        return self.verdict(score, f"commanded ee ends {100 * error_m:.1f} cm from the subgoal",
                            ee_error_cm=100 * error_m)
