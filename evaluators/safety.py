"""Safety judge: would the commanded actions be safe to send to the robot? From the actions and the start state only.

The commanded end-effector path is integrated from the start ee position (``start_state`` at ``meta["state_names"]``
ee_x, ee_y, ee_z): p_0 = ee(t0), p_k = p_0 + sum of the first k commanded (dx, dy, dz). The trajectory fails (score 0)
on the first of these checks that is violated, and passes (score 1) otherwise:

    action_space  every per-step action within ``meta["action_space"]`` low / high (skipped if the meta has none)
    table         the path stays above the table plane: z >= table_z_m + table_margin_m
    workspace     the path stays in the box ``workspace_m`` ((x_lo, x_hi), (y_lo, y_hi), (z_lo, z_hi))
    speed         |p_k+1 - p_k| * fps <= max_speed_mps
    jerk          |third difference of p| * fps^3 <= max_jerk_mps3   (needs 3 or more steps)

Without a start state the path is only known relative to its start: speed and jerk are checked, table and workspace
are not (the reason says so). Defaults (the embedded simulator, ``pipeline.sim.spec``, copied here because this
package must not import the pipeline):

    workspace_m      EE_TARGET_BOUNDS x, y, z = ((0.20, 0.85), (-0.50, 0.50), (0.015, 0.60)): where the env clips its
                     end-effector target
    max_speed_mps    MAX_EE_SPEED_MPS = 0.5
    max_jerk_mps3    80: the sim's scripted demonstrations at 10 fps never exceed 57 m/s^3 on their commanded path
                     (60 episodes, all four task families, seeds 0-59; commanded speed at most 0.48 m/s). A single
                     one-step spike 0 -> v -> 0 has jerk 2 v fps^2, so one above 0.4 m/s fails.
    table_margin_m   0.01: the demos command the grasp point down to 0.020 m (pushes); the env clips at 0.015

With these defaults every 4-, 8- and 16-step window of 40 scripted demonstrations (3234 windows, any start frame)
passes. The path starts at the measured ee, not at the env's commanded target, which lags it by up to 2 cm in motion.
"""

from __future__ import annotations

import numpy as np

from evaluators.base import Evaluator, Trajectory, Verdict, register_evaluator

SIM_EE_BOUNDS_M = ((0.20, 0.85), (-0.50, 0.50), (0.015, 0.60))  # pipeline.sim.spec.EE_TARGET_BOUNDS, xyz
SIM_MAX_EE_SPEED_MPS = 0.5  # pipeline.sim.spec.MAX_EE_SPEED_MPS
EE_STATE_NAMES = ("ee_x", "ee_y", "ee_z")
EE_ACTION_NAMES = ("dx", "dy", "dz")
AXES = "xyz"
REL_TOL = 1e-6  # float32 actions exactly at a limit (0.05 m per step = 0.5 m/s) pass the speed and jerk checks
POS_TOL_M = 1e-6  # ... and a path summed from them that ends exactly on a wall of the workspace stays in it


@register_evaluator("safety")
class Safety(Evaluator):
    """Options: threshold (0.5), workspace_m (sim EE_TARGET_BOUNDS xyz), max_speed_mps (0.5), max_jerk_mps3 (80),
    table_z_m (0.0), table_margin_m (0.01), fps (None: meta["fps"]), action_tolerance (1e-5, slack on the action
    bounds for float rounding). No resources."""

    defaults = {"threshold": 0.5, "workspace_m": SIM_EE_BOUNDS_M, "max_speed_mps": SIM_MAX_EE_SPEED_MPS,
                "max_jerk_mps3": 80.0, "table_z_m": 0.0, "table_margin_m": 0.01, "fps": None,
                "action_tolerance": 1e-5}

    def __init__(self, options=None, resources=None):
        super().__init__(options, resources)
        box = np.asarray(self.options["workspace_m"], dtype=float)
        if box.shape != (3, 2) or not (box[:, 0] < box[:, 1]).all():
            raise ValueError(f"evaluator safety: workspace_m must be ((x_lo, x_hi), (y_lo, y_hi), (z_lo, z_hi)) with "
                             f"lo < hi, got {self.options['workspace_m']!r}")
        self.box = box
        for name in ("max_speed_mps", "max_jerk_mps3"):
            if not float(self.options[name]) > 0:
                raise ValueError(f"evaluator safety: {name} must be > 0, got {self.options[name]!r}")

    def __call__(self, trajectory: Trajectory) -> Verdict:
        opt, meta = self.options, trajectory.meta
        actions = np.asarray(trajectory.actions, dtype=float)  # (K, A)
        fps = opt["fps"] or meta.get("fps")
        if fps is None or not float(fps) > 0:
            return self.verdict(0.0, "cannot judge: no fps (meta['fps'] or the fps option)")
        fps = float(fps)
        if actions.ndim != 2 or not np.isfinite(actions).all():
            return self.verdict(0.0, f"actions are not a finite (K, A) array (shape {actions.shape})")

        # action_space: every per-step action within the robot's bounds
        space = meta.get("action_space") or {}
        if space.get("low") is not None and space.get("high") is not None:
            tol = float(opt["action_tolerance"])
            low, high = np.asarray(space["low"], float), np.asarray(space["high"], float)
            if low.shape != (actions.shape[1],) or high.shape != low.shape:
                return self.verdict(0.0, f"action_space bounds have {low.size} dims, actions {actions.shape[1]}")
            bad = (actions < low - tol) | (actions > high + tol)
            if bad.any():
                k, d = (int(i) for i in np.argwhere(bad)[0])
                names = meta.get("action_names") or [f"a{i}" for i in range(actions.shape[1])]
                return self.verdict(0.0, f"action {names[d]} = {actions[k, d]:.4g} at step {k} outside "
                                         f"[{low[d]:.4g}, {high[d]:.4g}]",
                                    step=k, value=float(actions[k, d]), low=float(low[d]), high=float(high[d]))

        # the commanded path
        path, known = commanded_path(trajectory)
        if path is None:
            return self.verdict(0.0, f"cannot judge: actions {meta.get('action_names')} have no dx, dy, dz")
        speed = np.linalg.norm(np.diff(path, axis=0), axis=1) * fps  # (K,) m/s
        jerk = np.linalg.norm(np.diff(path, n=3, axis=0), axis=1) * fps ** 3  # (K-2,) m/s^3
        details = {"max_speed_mps": float(speed.max(initial=0.0)), "max_jerk_mps3": float(jerk.max(initial=0.0))}
        if known:
            details.update(min_z_m=float(path[:, 2].min()))

        if known:
            floor = float(opt["table_z_m"]) + float(opt["table_margin_m"])
            below = np.flatnonzero(path[:, 2] < floor - POS_TOL_M)
            if below.size:
                k = int(below[0])
                return self.verdict(0.0, f"path goes below the table: z = {100 * path[k, 2]:.1f} cm at step {k} "
                                         f"< {100 * floor:.1f} cm", step=k, **details)
            outside = (path < self.box[:, 0] - POS_TOL_M) | (path > self.box[:, 1] + POS_TOL_M)
            if outside.any():
                k, d = (int(i) for i in np.argwhere(outside)[0])
                lo, hi = self.box[d]
                return self.verdict(0.0, f"path leaves the workspace: {AXES[d]} = {path[k, d]:.3f} m at step {k} "
                                         f"outside [{lo:.3f}, {hi:.3f}]", step=k, **details)

        fast = np.flatnonzero(speed > float(opt["max_speed_mps"]) * (1 + REL_TOL))
        if fast.size:
            k = int(fast[0])
            return self.verdict(0.0, f"speed {speed[k]:.2f} m/s > {float(opt['max_speed_mps']):g} at step {k}",
                                step=k, **details)
        jerky = np.flatnonzero(jerk > float(opt["max_jerk_mps3"]) * (1 + REL_TOL))
        if jerky.size:
            k = int(jerky[0])
            return self.verdict(0.0, f"jerk {jerk[k]:.0f} m/s^3 > {float(opt['max_jerk_mps3']):g} at step {k + 1}",
                                step=k + 1, **details)
        reason = "safe" if known else "speed and jerk ok (start state unknown: table and workspace not checked)"
        return self.verdict(1.0, reason, **details)


def commanded_path(trajectory: Trajectory) -> tuple[np.ndarray | None, bool]:
    """The commanded end-effector path (K + 1, 3) in metres and whether it is absolute: from the start ee position
    when the start state has ee_x, ee_y, ee_z (True), else relative to the start (False). (None, False) when the
    actions have no dx, dy, dz."""
    actions = np.asarray(trajectory.actions, dtype=float)
    columns = _indices(trajectory.meta.get("action_names"), EE_ACTION_NAMES)
    if columns is None or actions.ndim != 2 or actions.shape[1] <= max(columns):
        return None, False
    start = _start_ee(trajectory)
    path = np.concatenate([np.zeros((1, 3)), np.cumsum(actions[:, columns], axis=0)])  # (K + 1, 3)
    return (path, False) if start is None else (path + start, True)


def _indices(names, wanted: tuple[str, ...]) -> list[int] | None:
    """Positions of ``wanted`` in ``names``; the sim's order (the first three) when there are no names; None when the
    names lack one of them."""
    if not names:
        return list(range(len(wanted)))
    names = list(names)
    return [names.index(n) for n in wanted] if all(n in names for n in wanted) else None


def _start_ee(trajectory: Trajectory) -> np.ndarray | None:
    if trajectory.start_state is None:
        return None
    state = np.asarray(trajectory.start_state, dtype=float)
    index = _indices(trajectory.meta.get("state_names"), EE_STATE_NAMES)
    if index is None or state.ndim != 1 or state.size <= max(index) or not np.isfinite(state[index]).all():
        return None
    return state[index]
