"""Tiny test objects built in code (no downloads, no simulator)."""

from __future__ import annotations

import numpy as np


def make_episode(episode_id: str = "ep-000", num_frames: int = 6, height: int = 32, width: int = 32,
                 cameras: tuple[str, ...] = ("front",), with_depth: bool = True, with_action: bool = True,
                 seed: int = 0, fps: float = 10.0, task: str = "push the red cube to the left"):
    """A small, valid episode of per-pixel noise drifting over time (not the simulator: fast, independent of it).

    Noise does not survive lossy video codecs; tests that compare decoded RGB use smooth frames of their own.
    """
    from episodes import Episode

    rng = np.random.default_rng(seed)
    rgb, depth = {}, {}
    for cam in cameras:
        base = rng.integers(0, 255, size=(1, height, width, 3), dtype=np.uint8)
        drift = np.arange(num_frames, dtype=np.int16)[:, None, None, None] * 3
        rgb[cam] = ((base.astype(np.int16) + drift) % 256).astype(np.uint8)
        if with_depth:
            depth[cam] = rng.uniform(0.4, 2.0, size=(num_frames, height, width)).astype(np.float32)
    state = rng.normal(size=(num_frames, 8)).astype(np.float32)
    action = rng.normal(size=(num_frames, 5)).astype(np.float32) if with_action else None
    return Episode(episode_id=episode_id, fps=fps, task=task, rgb=rgb, depth_m=depth, state=state, action=action,
                   meta={"source": "test", "seed": seed, "parent": None,
                         "state_names": [f"s{i}" for i in range(8)],
                         "action_names": ["dx", "dy", "dz", "dyaw", "gripper"] if with_action else None})


def train_tiny_world_model(out_dir, cameras: tuple[str, ...] = ("top",), depth: bool = False, steps: int = 20,
                           second_robot: bool = False):
    """A world model trained for a few steps on 3 exploration episodes (32x32): real code, seconds on the CPU.
    ``second_robot``: one of them becomes a ``kuka_iiwa`` with a 3-d action (its first three dims), so the model has
    two action heads. Returns (checkpoint, a held-out exploration episode)."""
    from latent_actions.config import LatentActionConfig
    from pipeline.sim.explore import explore_episode
    from pipeline.sim.tabletop import TabletopConfig
    from world_model.config import TrainConfig, WorldModelConfig
    from world_model.data import PairData
    from world_model.train import model_config_for, train

    sim = TabletopConfig(width=32, height=32, cameras=cameras, depth=depth, segmentation=False)
    episodes = [explore_episode(seed, sim, num_frames=10) for seed in range(4)]
    if second_robot:
        kuka = episodes[1]
        kuka.action = kuka.action[:, :3].copy()
        kuka.meta.update(robot_type="kuka_iiwa", action_names=["ee_dx", "ee_dy", "ee_dz"])
    data = PairData.from_episodes(episodes[:3], cameras, 32, depth=depth,
                                  labelled={e.episode_id for e in episodes[:3]})
    config = model_config_for(WorldModelConfig(cameras=cameras, image_size=32, depth=depth,
                                               latent=LatentActionConfig(latent_dim=8, encoder_channels=(8, 16, 16),
                                                                         encoder_hidden_dim=32)), data)
    result = train(config, TrainConfig(steps=steps, batch_size=8, log_every=10, checkpoint_every=steps,
                                       warmup_steps=2, num_threads=1), data, str(out_dir))
    return result.checkpoint, episodes[3]
