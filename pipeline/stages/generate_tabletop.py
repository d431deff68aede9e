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
from typing import Any

import numpy as np
from pydantic import Field

from episodes import Episode
from pipeline.params import ConfigFields, params_from
from pipeline.sim.spec import CAMERA_NAMES, TASK_FAMILIES
from pipeline.sim.tabletop import TabletopConfig
from pipeline.stage import Filtered, Resources, StageContext, register_stage

logger = logging.getLogger(__name__)

STAGE = "generate_tabletop"

# The simulator's fields, their types, defaults and limits from ``TabletopConfig`` (one square image size).
SIM = ConfigFields(TabletopConfig, {
    "image_size": "square image side in pixels",
    "fps": "control and recording rate",
    "physics_hz": "physics rate; a whole multiple of fps",
    "max_steps": "most frames per episode (the scripted policy ends sooner)",
    "tasks": f"task families, drawn uniformly per episode (of {', '.join(TASK_FAMILIES)})",
    "cameras": f"cameras to render (of {', '.join(CAMERA_NAMES)})",
    "num_objects": "(min, max) objects per scene, not counting the tray",
    "depth": "",
    "segmentation": "",
    "shadows": "TinyRenderer shadows: nicer, about half the frame rate",
    "camera_jitter_m": "per-episode jitter of static camera eyes",
}, renamed={"image_size": "width"})


class GenerateTabletopParams(params_from(SIM)):
    num_episodes: int = Field(24, ge=1, description="episodes to generate")
    keep_failures: bool = Field(True, description="keep episodes whose scripted policy failed (meta.success false)")
    hide_actions_fraction: float = Field(
        0.0, ge=0, le=1, description="share of episodes recorded without actions (the truth kept in "
                                     "extras.hidden_action), to stand for action-less video and measure pseudo-labels")
    resources: Resources = Resources(num_cpus=1)

    def library_configs(self) -> list[Any]:
        return [self.sim_config()]

    def sim_config(self) -> TabletopConfig:
        return TabletopConfig(**SIM.values(self), height=self.image_size)


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
    if hides_actions(seed, params.hide_actions_fraction):
        episode.extras["hidden_action"], episode.action = episode.action, None
        episode.meta["actions_hidden"] = True
    return episode


def hides_actions(seed: int, fraction: float) -> bool:
    """Whether the episode of ``seed`` is recorded action-less (a draw of its own, independent of the scene)."""
    return fraction > 0 and np.random.default_rng([seed, 7]).random() < fraction
