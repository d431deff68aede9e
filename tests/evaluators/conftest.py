"""Fixtures of the evaluator tests: two tiny simulator episodes."""

from __future__ import annotations

import pytest

SIM_SIZE = 32  # pixels: tiny frames keep generation and readout training to seconds


@pytest.fixture(scope="session")
def sim_episodes():
    """A pick-place and a push demonstration at 32x32, front camera only (about 4 s)."""
    pytest.importorskip("pybullet")
    from pipeline.sim import TabletopConfig, generate_episode

    config = TabletopConfig(width=SIM_SIZE, height=SIM_SIZE, depth=False, segmentation=False)
    return [generate_episode(0, "pick_place", config), generate_episode(1, "push", config)]
