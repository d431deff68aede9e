"""Source stage: scripted Franka Panda tabletop episodes from the embedded pybullet simulator (``pipeline.sim``).

Fan-out 0:N. The runner runs one Ray task per episode (at most ``resources.concurrency`` at a time), each reserving
``resources.num_cpus`` (default 1: the simulator and TinyRenderer are single-threaded, so one task per core is the
most a node can use).
Episode ``i`` is seeded from ``(run seed, i)`` through ``numpy.random.SeedSequence``, so a run is reproducible and an
episode can be regenerated alone from ``meta["seed"]`` and ``meta["sim"]["config"]``. The runner validates and saves
each episode (``<stage_dir>/episodes/tabletop-000007.episode``); an episode whose generation raises becomes a
quarantined row, and with ``keep_failures: false`` an episode whose scripted policy failed becomes a filtered row.

    - name: generate_tabletop
      params: {num_episodes: 24, image_size: 128, cameras: [front, oblique], tasks: [pick_place, stack]}
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from episodes import Episode
from pipeline.stage import Filtered, Resources, StageContext, StageParams, register_stage

logger = logging.getLogger(__name__)

STAGE = "generate_tabletop"
TaskName = Literal["pick_place", "push", "stack", "reach"]
CameraName = Literal["front", "side", "top", "oblique", "wrist"]


class GenerateTabletopParams(StageParams):
    num_episodes: int = Field(24, ge=1, description="episodes to generate")
    image_size: int = Field(128, ge=16, le=512, description="square image side in pixels")
    fps: float = Field(10.0, gt=0, le=30, description="control and recording rate")
    physics_hz: int = Field(240, ge=60, le=2000, description="physics rate; a multiple of fps")
    max_steps: int = Field(80, ge=2, le=2000, description="most frames per episode (the scripted policy ends sooner)")
    tasks: list[TaskName] = Field(default_factory=lambda: ["pick_place", "push", "stack", "reach"],
                                  description="task families, drawn uniformly per episode")
    cameras: list[CameraName] = Field(default_factory=lambda: ["front"])
    num_objects: tuple[int, int] = Field((2, 6), description="(min, max) objects per scene, not counting the tray")
    depth: bool = True
    segmentation: bool = True
    shadows: bool = Field(False, description="TinyRenderer shadows: nicer, about half the frame rate")
    camera_jitter_m: float = Field(0.02, ge=0.0, le=0.1, description="per-episode jitter of static camera eyes")
    keep_failures: bool = Field(True, description="keep episodes whose scripted policy failed (meta.success false)")
    resources: Resources = Resources(num_cpus=1)

    @field_validator("tasks", "cameras")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("expected at least one entry")
        if len(set(value)) != len(value):
            raise ValueError(f"entries must be distinct, got {value}")
        return value

    @field_validator("num_objects")
    @classmethod
    def _object_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        lo, hi = value
        if not 2 <= lo <= hi <= 6:
            raise ValueError(f"expected (min, max) with 2 <= min <= max <= 6, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _physics_multiple_of_fps(self) -> GenerateTabletopParams:
        ratio = self.physics_hz / self.fps
        if abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(f"physics_hz ({self.physics_hz}) must be a whole multiple of fps ({self.fps}), "
                             f"e.g. physics_hz: {round(ratio) * self.fps:g}")
        return self

    def sim_config(self):
        from pipeline.sim.tabletop import TabletopConfig

        return TabletopConfig(width=self.image_size, height=self.image_size, cameras=tuple(self.cameras), fps=self.fps,
                              physics_hz=self.physics_hz, max_steps=self.max_steps, tasks=tuple(self.tasks),
                              num_objects=self.num_objects, depth=self.depth, segmentation=self.segmentation,
                              shadows=self.shadows, camera_jitter_m=self.camera_jitter_m)


def episode_id(index: int) -> str:
    return f"tabletop-{index:06d}"


def episode_seed(run_seed: int, index: int) -> int:
    """A 32-bit seed for episode ``index`` of a run, independent across indices and runs."""
    return int(np.random.SeedSequence([int(run_seed), int(index)]).generate_state(1)[0])


def plan(params: GenerateTabletopParams, ctx: StageContext) -> list[dict]:
    return [{"episode_id": episode_id(i), "index": i} for i in range(params.num_episodes)]


def describe(params: GenerateTabletopParams) -> dict:
    """What later stages' checks may rely on."""
    return {"cameras": list(params.cameras), "depth": params.depth, "actions": True}


@register_stage(STAGE, kind="source", params=GenerateTabletopParams, plan=plan, describe=describe)
def generate_tabletop(item: dict, params: GenerateTabletopParams, ctx: StageContext) -> Episode:
    """Scripted Franka Panda tabletop episodes (pick_place, push, stack, reach) from pybullet, one Ray task each."""
    from pipeline.sim.generate import generate_episode

    seed = episode_seed(ctx.seed, item["index"])
    episode = generate_episode(seed, task=None, config=params.sim_config(), episode_id=item["episode_id"])
    episode.meta["episode_index"] = item["index"]
    if not params.keep_failures and not episode.meta["success"]:
        raise Filtered(f"scripted {episode.meta['task_family']} policy failed (seed {seed})")
    return episode
