"""Tiny episodes for the LeRobot shard tests: smooth, moving content that a lossy video codec can be judged on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from episodes import SUFFIX
from pipeline.lerobot_shard import ShardInput
from pipeline.stage import row
from tests.factories import make_episode

REPO_ID = "wmsynth/test"


def smooth_rgb(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """(T, H, W, 3) uint8 gradients with a moving bright square (make_episode's per-pixel noise survives no codec)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 150 + 50, y / height * 150 + 50, np.full_like(x, rng.uniform(60, 120))], -1)
    frames = np.repeat(base[None], num_frames, axis=0)
    for t in range(num_frames):
        top, left = 4 + t % (height // 2), 4 + (2 * t) % (width // 2)
        frames[t, top:top + height // 4, left:left + width // 4] = (230, 200, 40)
    return frames.astype(np.uint8)


def shard_episode(episode_id: str, seed: int = 0, size: int = 32, cameras=("front",), depth_cameras=("front",),
                  with_action: bool = True, num_frames: int = 6, task: str = "push the red cube to the left",
                  fps: float = 10.0):
    episode = make_episode(episode_id, num_frames=num_frames, height=size, width=size, cameras=cameras,
                           with_action=with_action, seed=seed, task=task, fps=fps)
    episode.rgb = {cam: smooth_rgb(num_frames, size, size, seed * 10 + k) for k, cam in enumerate(cameras)}
    episode.depth_m = {cam: d for cam, d in episode.depth_m.items() if cam in depth_cameras}
    episode.meta.update({
        "source_uri": f"test://{episode_id}",
        "cameras": {cam: {"intrinsics": {"fx": 30.0, "fy": 30.0, "cx": size / 2, "cy": size / 2, "width": size,
                                         "height": size},
                          "cam_to_world": np.eye(4).tolist()} for cam in cameras},
        "subgoals": [{"label": "approach", "start": 0, "end": num_frames}],
        "success": True,
    })
    episode.validate()
    return episode


def save_episodes(directory: Path, *episodes) -> list[str]:
    return [ep.save(Path(directory) / f"{ep.episode_id}{SUFFIX}") for ep in episodes]


def shard_inputs(paths: list[str]) -> list[ShardInput]:
    return [ShardInput(Path(p).name.removesuffix(SUFFIX), str(p), f"episodes/{Path(p).name}") for p in paths]


def ok_rows(paths: list[str]) -> list[dict]:
    return [row(Path(p).name.removesuffix(SUFFIX), path=str(p), stage="depth", source="test") for p in paths]


def read_shard(shard_dir, **kwargs):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(REPO_ID, root=shard_dir, **kwargs)
