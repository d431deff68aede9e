"""Episodes with diverse actions from the embedded simulator, for training and measuring latent actions.

The scripted task policies (``pipeline.sim.generate``) move along a few straight segments per episode, with the gripper
yaw and opening changing only at phase boundaries: a latent-action model trained on them alone sees few distinct
actions, and a probe measured on them mostly measures those few. ``explore_episode`` drives the same env with a random
exploration policy instead: piecewise-constant random end-effector velocities on every axis, random turns of the
gripper (0.12-0.3 rad per step: smaller turns move a 64 px image by well under a pixel) and random gripper toggles, reflected so the commanded target stays inside a safe box (no command is silently clipped by the
env's target bounds, so the command and the actual end-effector motion agree away from contacts).

    episode = explore_episode(seed=3, config=TabletopConfig(width=64, height=64, cameras=("oblique", "top")))

Recorded like a scripted episode (same array names; ``meta["source"] = "explore_tabletop"``, ``meta["policy"]``), so the
pipeline, the world-model stages and the benchmark treat both alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from episodes import Episode
from pipeline.sim.spec import ROBOT_TYPE

SOURCE = "explore_tabletop"
EMBODIMENT = ROBOT_TYPE  # the simulator's robot


@dataclass(frozen=True)
class ExplorePolicyConfig:
    """Random exploration in the env's action space ``[dx, dy, dz, dyaw, gripper]`` (metres / radians per step)."""

    max_step_m: float = 0.05  # |dx|, |dy|, |dz| drawn uniformly up to this
    min_dyaw_rad: float = 0.12  # a turning segment turns by min..max per step (smaller turns hardly show at 64 px)
    max_dyaw_rad: float = 0.30
    p_yaw: float = 0.5  # probability that a new segment turns the gripper at all
    p_resample: float = 0.4  # per step: draw a new velocity (otherwise keep the last one)
    p_toggle_gripper: float = 0.08  # per step
    box_xyz_m: tuple[tuple[float, float], ...] = ((0.32, 0.68), (-0.28, 0.28), (0.04, 0.34))
    box_yaw_rad: tuple[float, float] = (-1.2, 1.2)

    def __post_init__(self):
        for name in ("max_step_m", "min_dyaw_rad", "max_dyaw_rad"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.min_dyaw_rad > self.max_dyaw_rad:
            raise ValueError(f"min_dyaw_rad: expected <= max_dyaw_rad ({self.max_dyaw_rad}), got {self.min_dyaw_rad}")
        for name in ("p_yaw", "p_resample", "p_toggle_gripper"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {getattr(self, name)}")


class ExplorePolicy:
    """Stateful random policy; call with the env's observation (reads ``ee_target``)."""

    def __init__(self, config: ExplorePolicyConfig, rng: np.random.Generator):
        self.config = config
        self.rng = rng
        self.velocity = np.zeros(4)
        self.gripper = 1.0

    def _draw(self) -> np.ndarray:
        cfg, rng = self.config, self.rng
        xyz = rng.uniform(-cfg.max_step_m, cfg.max_step_m, 3)
        yaw = 0.0
        if rng.random() < cfg.p_yaw:
            yaw = rng.choice([-1.0, 1.0]) * rng.uniform(cfg.min_dyaw_rad, cfg.max_dyaw_rad)
        return np.array([*xyz, yaw])

    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        cfg, rng = self.config, self.rng
        if rng.random() < cfg.p_resample or not self.velocity.any():
            self.velocity = self._draw()
        if rng.random() < cfg.p_toggle_gripper:
            self.gripper = 1.0 - self.gripper
        target = np.asarray(obs["ee_target"], dtype=np.float64)  # (4,) x, y, z, yaw
        bounds = [*cfg.box_xyz_m, cfg.box_yaw_rad]
        for i, (lo, hi) in enumerate(bounds):  # reflect off the walls of the safe box (and head back into it)
            if target[i] + self.velocity[i] > hi:
                self.velocity[i] = -abs(self.velocity[i])
            elif target[i] + self.velocity[i] < lo:
                self.velocity[i] = abs(self.velocity[i])
        return np.array([*self.velocity, self.gripper], dtype=np.float32)


def explore_episode(seed: int, config=None, num_frames: int = 48, policy: ExplorePolicyConfig | None = None,
                    episode_id: str | None = None, task: str | None = None) -> Episode:
    """Record ``num_frames`` frames of the random exploration policy in a scene sampled from ``seed``."""
    from pipeline.sim.spec import ACTION_NAMES, STATE_NAMES
    from pipeline.sim.tabletop import TabletopConfig, TabletopEnv

    config = config or TabletopConfig(width=64, height=64)
    policy_config = policy or ExplorePolicyConfig()
    env = TabletopEnv(config)
    try:
        obs, info = env.reset(seed=int(seed), options={"task": task} if task else None)
        pi = ExplorePolicy(policy_config, np.random.default_rng([int(seed), 2]))
        frames, actions = [obs], []
        for _ in range(num_frames - 1):
            action = pi(obs)
            obs, _, _, _, info = env.step(action)
            frames.append(obs)
            actions.append(action)
        scene = env.scene
    finally:
        env.close()
    actions.append(np.array([0, 0, 0, 0, actions[-1][4]], dtype=np.float32))  # the last row holds
    cams = list(config.cameras)
    rgb = {c: np.stack([f["rgb"][c] for f in frames]) for c in cams}  # (T, H, W, 3)
    depth = {c: np.stack([f["depth_m"][c] for f in frames]) for c in cams} if config.depth else {}
    seg = {c: np.stack([f["segmentation"][c] for f in frames]) for c in cams} if config.segmentation else {}
    extras = {k: np.stack([np.asarray(f[k]) for f in frames]).astype(np.float32)
              for k in ("ee_pose", "ee_target", "gripper_width", "joint_pos")}
    meta = {"source": SOURCE, "source_uri": f"sim://tabletop/explore/seed-{seed}", "seed": int(seed), "parent": None,
            "robot_type": EMBODIMENT, "task_family": scene.task.family, "state_names": list(STATE_NAMES),
            "action_names": list(ACTION_NAMES), "policy": {"name": "explore", **asdict(policy_config)},
            "sim": {"config": config.to_dict(), "scene": scene.to_dict()}, "success": bool(info["success"])}
    return Episode(episode_id=episode_id or f"explore-seed{seed}", fps=float(config.fps), task="explore the table",
                   rgb=rgb, depth_m=depth, segmentation=seg,
                   state=np.stack([f["state"] for f in frames]).astype(np.float32),
                   action=np.stack(actions).astype(np.float32), extras=extras, meta=meta)
