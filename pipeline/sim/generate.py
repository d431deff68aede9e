"""Record one scripted tabletop episode as a ``episodes.Episode`` (plain function, no Ray), and measure speed.

    episode = generate_episode(seed=7, task="stack", config=TabletopConfig(width=64, height=64))

Deterministic: the same seed, task and config give bitwise identical arrays. The scene comes from ``seed``; the scripted
policy's small per-episode variations (speed, approach height) from an independent stream of the same seed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from episodes import Episode
from pipeline.sim.spec import ACTION_NAMES, ROBOT_TYPE, STATE_NAMES
from pipeline.sim.simulator import BODY_PLANE, BODY_ROBOT, BODY_TABLE
from pipeline.sim.tabletop import TabletopConfig, TabletopEnv

logger = logging.getLogger(__name__)

SOURCE = "generate_tabletop"
RESTORE_EXTRAS = ("joint_pos", "joint_vel", "object_poses", "object_vel", "ee_target")
_PER_FRAME_EXTRAS = ("ee_pose", "joint_pos", "joint_vel", "gripper_width", "object_poses", "object_vel", "ee_target",
                     "wrist_cam_to_world")


def generate_episode(seed: int, task: str | None = None, config: TabletopConfig | None = None,
                     episode_id: str | None = None, num_objects: int | None = None) -> Episode:
    """Sample a scene for ``task`` (or a family from ``config.tasks``), run its scripted policy and record it.

    The episode ends when the policy has finished or at ``config.max_steps`` frames; ``meta["success"]`` is the task's
    success check on the last frame.
    """
    config = config or TabletopConfig()
    seed = int(seed)
    env = TabletopEnv(config)
    try:
        options: dict[str, Any] = {"task": task, "num_objects": num_objects}
        obs, info = env.reset(seed=seed, options={k: v for k, v in options.items() if v is not None})
        policy = env.scripted_policy(np.random.default_rng([seed, 1]))
        cam_to_world = {name: pose.tolist() for name, pose in env.cam_to_world.items()}  # frame 0
        num_objects_total = info["num_objects"]
        frames: list[dict[str, Any]] = [obs]
        actions: list[np.ndarray] = []
        subgoals: list[str | None] = []
        while len(frames) < config.max_steps:
            action = policy(obs)
            if policy.done:
                break
            obs, _, _, _, info = env.step(action)
            frames.append(obs)
            actions.append(action)
            subgoals.append(policy.subgoal)
        scene = env.scene
    finally:
        env.close()

    num_frames = len(frames)
    hold = np.array([0, 0, 0, 0, actions[-1][4] if actions else 1.0], dtype=np.float32)
    action = np.stack(actions + [hold]).astype(np.float32)  # (T, 5); the last row holds
    cameras = list(config.cameras)
    rgb = {cam: np.stack([f["rgb"][cam] for f in frames]) for cam in cameras}  # (T, H, W, 3)
    depth = {cam: np.stack([f["depth_m"][cam] for f in frames]) for cam in cameras} if config.depth else {}
    seg = {cam: np.stack([f["segmentation"][cam] for f in frames]) for cam in cameras} if config.segmentation else {}
    extras = {}
    for key in _PER_FRAME_EXTRAS:
        if key in frames[0]:
            arr = np.stack([np.asarray(f[key]) for f in frames])
            if key in ("object_poses", "object_vel"):
                arr = arr[:, :num_objects_total]  # (T, K, 7|6): drop the env's padding
            extras[key] = arr.astype(np.float32)
    state = np.stack([f["state"] for f in frames]).astype(np.float32)  # (T, 12)

    camera_meta = {}
    for cam in scene.cameras:
        entry = {"intrinsics": cam.intrinsics(), "cam_to_world": cam_to_world[cam.name],
                 "near": cam.near, "far": cam.far, "fov_deg": cam.fov_deg, "mount": cam.mount,
                 "convention": "opencv", "calibration": {"intrinsics": "simulator", "extrinsics": "simulator"}}
        if cam.mount != "world":
            entry["per_frame_cam_to_world"] = f"extras.{cam.name}_cam_to_world"
        camera_meta[cam.name] = entry
    objects_meta = [{"name": o.name, "body_id": 3 + i, "shape": o.shape, "color": o.color, "rgba": o.rgba,
                     "size_m": o.size_m, "category": o.category, "mass_kg": o.mass_kg}
                    for i, o in enumerate(scene.objects)]
    meta = {
        "source": SOURCE,
        "source_uri": f"sim://tabletop/{scene.task.family}/seed-{seed}",
        "seed": seed,
        "parent": None,
        "robot_type": ROBOT_TYPE,
        "task_family": scene.task.family,
        "instruction": scene.task.instruction,
        "target_object": scene.task.target,
        "reference_object": scene.task.reference,
        "state_names": list(STATE_NAMES),
        "action_names": list(ACTION_NAMES),
        "action_space": {"frame": "world", "units": ["m", "m", "m", "rad", "fraction open"],
                         "low": env.action_space.low.tolist(), "high": env.action_space.high.tolist(),
                         "gripper": "1 = open, 0 = closed (absolute)", "last_row": "hold"},
        "cameras": camera_meta,
        "objects": objects_meta,
        "subgoals": _segments(subgoals),
        "success": bool(info["success"]),
        "scripted_policy_finished": bool(policy.done),
        "sim": {
            "engine": "pybullet",
            "renderer": "ER_TINY_RENDERER",
            "config": config.to_dict(),
            "scene": scene.to_dict(),
            "physics_hz": scene.physics_hz,
            "substeps_per_frame": config.substeps,
            "body_ids": {"plane": BODY_PLANE, "table": BODY_TABLE, "robot": BODY_ROBOT},
            "restore_extras": list(RESTORE_EXTRAS),
        },
    }
    episode = Episode(episode_id=episode_id or f"tabletop-seed{seed}", fps=float(config.fps),
                      task=scene.task.instruction, rgb=rgb, depth_m=depth, segmentation=seg, state=state,
                      action=action, extras=extras, meta=meta)
    logger.debug("generated %s: %s, %d frames, success=%s", episode.episode_id, scene.task.family, num_frames,
                 meta["success"])
    return episode


def _segments(labels: list[str | None]) -> list[dict[str, Any]]:
    """Runs of action labels as subgoals: ``{"name", "start", "end"}`` in frames, inclusive; the actions of a segment
    are rows start..end-1 (consecutive segments share their boundary frame)."""
    segments: list[dict[str, Any]] = []
    for t, label in enumerate(labels):
        if label is None:
            continue
        if segments and segments[-1]["name"] == label and segments[-1]["end"] == t:
            segments[-1]["end"] = t + 1
        else:
            segments.append({"name": label, "start": t, "end": t + 1})
    return segments


def measure_render_fps(width: int = 128, height: int = 128, cameras: tuple[str, ...] = ("front",),
                       num_frames: int = 60, seed: int = 0, depth: bool = True, segmentation: bool = True,
                       wall_clock: bool = False) -> float:
    """Rendered frames per second per core (all cameras of a frame count as one frame), RGB + depth + segmentation
    converted to arrays, in a 4-object pick_place scene. CPU time unless ``wall_clock`` (``TabletopEnv.render_fps``).
    """
    env = TabletopEnv(TabletopConfig(width=width, height=height, cameras=cameras, depth=depth,
                                     segmentation=segmentation))
    try:
        env.reset(seed=seed, options={"task": "pick_place", "num_objects": 4})
        env.render_fps(3)  # warm up caches
        return env.render_fps(num_frames, wall_clock=wall_clock)
    finally:
        env.close()


def time_episode(seed: int = 0, task: str | None = None, config: TabletopConfig | None = None) -> dict[str, float]:
    """Cost of one ``generate_episode`` call: wall and CPU seconds and the number of frames."""
    wall, cpu = time.perf_counter(), time.process_time()
    episode = generate_episode(seed, task, config)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "num_frames": float(episode.num_frames)}
