"""Embedded pybullet tabletop simulator: Franka Panda, scripted task families, a gymnasium env and an episode recorder.

    from pipeline.sim import generate_episode, TabletopConfig, TabletopEnv
    episode = generate_episode(seed=0, task="pick_place", config=TabletopConfig(width=64, height=64))

Importing this package is cheap: pybullet and gymnasium load when a name below is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipeline.sim.spec import ACTION_NAMES, CAMERA_NAMES, STATE_NAMES, TASK_FAMILIES

_LAZY = {
    "TabletopConfig": "pipeline.sim.tabletop",
    "TabletopEnv": "pipeline.sim.tabletop",
    "TabletopSim": "pipeline.sim.simulator",
    "SimState": "pipeline.sim.simulator",
    "generate_episode": "pipeline.sim.generate",
    "measure_render_fps": "pipeline.sim.generate",
    "time_episode": "pipeline.sim.generate",
    "SceneSpec": "pipeline.sim.spec",
    "sample_scene": "pipeline.sim.tasks",
    "make_policy": "pipeline.sim.tasks",
    "check_success": "pipeline.sim.tasks",
}

__all__ = ["ACTION_NAMES", "CAMERA_NAMES", "STATE_NAMES", "TASK_FAMILIES", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline.sim' has no attribute {name!r}")
