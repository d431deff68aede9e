"""Helpers of the evaluator tests: a readout with known answers, trajectory and state builders."""

from __future__ import annotations

import numpy as np

from evaluators.base import Trajectory


class KnownReadout:
    """A readout whose answers are set by the test (the input of the judge under test, not a stand-in for a model the
    test could run): every frame reads as the same ee / object position and progress, unless ``per_frame`` is set."""

    def __init__(self, ee_xyz=(0.5, 0.0, 0.1), object_xyz=(0.5, 0.0, 0.02), progress=0.5, object_trained=True,
                 per_frame=None):
        self.ee_xyz, self.object_xyz, self.progress = ee_xyz, object_xyz, progress
        self.object_trained, self.per_frame = object_trained, per_frame

    def predict(self, frames):
        n = len(frames)
        if self.per_frame is not None:
            return {"ee_xyz": np.zeros((n, 3), np.float32), "object_xyz": np.zeros((n, 3), np.float32),
                    "progress": np.asarray(self.per_frame(n), np.float32)}
        return {"ee_xyz": np.tile(np.asarray(self.ee_xyz, np.float32), (n, 1)),
                "object_xyz": np.tile(np.asarray(self.object_xyz, np.float32), (n, 1)),
                "progress": np.full(n, self.progress, np.float32)}

    def trained(self, head: str) -> bool:
        return head != "object_xyz" or self.object_trained

    def check_cameras(self, cameras) -> None:
        pass


def make_trajectory(actions=None, start_state=None, subgoal=None, frames=None, fps: float = 10.0,
                    **meta) -> Trajectory:
    """A synthetic trajectory with the rollout stage's meta (sim action bounds at 10 fps by default)."""
    actions = np.zeros((4, 5), np.float32) if actions is None else np.asarray(actions, np.float32)
    if frames is None:
        frames = np.zeros((len(actions) + 1, 3, 16, 16), np.uint8)
    base = {"fps": fps, "start_frame": 0,
            "action_space": {"low": [-0.05, -0.05, -0.05, -0.3, 0.0], "high": [0.05, 0.05, 0.05, 0.3, 1.0]},
            "state_names": ["ee_x", "ee_y", "ee_z", "ee_yaw", "gripper_width", *(f"joint_{i}" for i in range(1, 8))],
            "action_names": ["dx", "dy", "dz", "dyaw", "gripper"],
            "subgoal": subgoal or {"name": "approach", "goal_frame": 10, "progress": 0.5, "ee_xyz": [0.5, 0.0, 0.1],
                                   "objects_xyz": None, "target_object": None}}
    return Trajectory(frames=frames, actions=actions, start_state=start_state, meta={**base, **meta},
                      cameras=("front",))


def sim_state(ee_xyz) -> np.ndarray:
    """A 12-dim sim state vector with the ee at ``ee_xyz``."""
    state = np.zeros(12, np.float32)
    state[:3] = ee_xyz
    return state
