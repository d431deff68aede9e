"""Embedded pybullet tabletop: a Franka Panda, a table, 2-6 objects (+ a tray), rendered by pybullet's TinyRenderer.

World: z up, table top at z = 0, the Panda's base at the origin facing +x (see ``pipeline.sim.spec``). pybullet runs in
DIRECT mode (no GUI, no GPU), physics at ``physics_hz`` (240 Hz), control and recording at ``fps`` (10 Hz): one action
is held for ``physics_hz / fps`` physics substeps and frames are rendered only at control steps.

This module holds the env (``TabletopConfig``, ``TabletopEnv``: spaces, reset/step, observations, restoring); the
pybullet client it drives (building, control, state, rendering) is ``TabletopSim`` in ``pipeline.sim.simulator``.

Action space, ``a = [dx, dy, dz, dyaw, gripper]`` (float32, one per control step, ``ACTION_NAMES``):
    dx, dy, dz   change of the commanded end-effector position, world frame, metres per control step,
                 clipped to +-MAX_EE_SPEED_MPS / fps (0.05 m at 10 fps)
    dyaw         change of the commanded gripper yaw about world z, radians per control step, clipped to
                 +-MAX_YAW_RATE_RPS / fps (0.3 rad at 10 fps)
    gripper      commanded finger opening in [0, 1]: 1 = open (0.08 m between the fingers), 0 = closed; absolute,
                 not a delta. Scripted policies emit exactly 0 or 1.
The env keeps a commanded end-effector target (``ee_target`` = x, y, z, yaw): each action adds its deltas to it (then
the target is clipped to ``EE_TARGET_BOUNDS``), inverse kinematics on the Panda's grasp-target link (11, between the
finger pads) with the gripper pointing down and null-space rest poses turns it into arm joint targets, and position
control drives the joints. Accumulating the target (instead of adding deltas to the measured pose) keeps a zero action
a true "hold" with no drift under gravity. Because ``ee_target`` is controller state, it is recorded per frame.

Recorded arrays (episode row t is frame t; action row t is applied between frame t and t + 1; the last action row,
which has no next frame, is a hold: zero deltas and the previous gripper command):
    rgb[cam]            (T, H, W, 3) uint8
    depth_m[cam]        (T, H, W)    float32 metres along the optical axis (z-buffer: far*near/(far-(far-near)*zbuf));
                                     0 where nothing was hit within the far plane
    segmentation[cam]   (T, H, W)    int32 pybullet body unique ids (plane 0, table 1, robot 2, objects as in
                                     meta["objects"][i]["body_id"]); -1 = background
    state               (T, 12)      float32 ``STATE_NAMES``: ee x, y, z (m), ee yaw (rad), gripper width (m),
                                     7 arm joint angles (rad)
    action              (T, 5)       float32 ``ACTION_NAMES``
    extras  ee_pose (T, 7) xyz + quaternion xyzw of link 11; joint_pos / joint_vel (T, 9) arm joints 1-7 + the two
            finger joints; gripper_width (T,); object_poses (T, K, 7) and object_vel (T, K, 6) in meta["objects"] order;
            ee_target (T, 4) the commanded target after the step that produced the frame; wrist_cam_to_world (T, 4, 4)
            when the wrist camera is on.

Cameras: ``cam_to_world`` is a 4x4 matrix in the OpenCV convention (camera x right, y down, z forward), so a pixel
(u, v) (column, row) with depth d is the camera-frame point ((u - cx) d / fx, (v - cy) d / fy, d). TinyRenderer puts
the principal point at (W / 2, H / 2 - 1) (see ``CameraSpec.intrinsics``). Static cameras are fixed for an episode
(with a small per-episode jitter); the wrist camera moves with the hand and its pose per frame is in
``extras["wrist_cam_to_world"]`` (``meta["cameras"]["wrist"]["cam_to_world"]`` is its pose at frame 0).

Restoring: ``TabletopSim.set_state`` puts joints (positions and velocities), object poses and velocities and the
commanded target back; ``TabletopEnv.restore(meta, extras, frame)`` rebuilds the scene from ``meta["sim"]["scene"]``
and does that for a recorded frame, so recorded actions can be replayed from any frame. Bullet's contact caches are
not restored, so a replay matches the recording closely, not bit for bit: the arm to < 0.1 mm, objects mostly to
< 3 mm, up to 1-2 cm when restored in the middle of a sliding push or a closing grasp. Rebuilding the scene with
``reset(options={"scene": meta["sim"]["scene"]})`` and replaying all actions from frame 0 is exact.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from pipeline.sim.simulator import BODY_PLANE, BODY_ROBOT, BODY_TABLE, SimState, TabletopSim
from pipeline.sim.spec import (
    ACTION_NAMES,
    CAMERA_NAMES,
    STATE_NAMES,
    TASK_FAMILIES,
    SceneSpec,
    action_limits,
    yaw_of_quat,
)
from pipeline.sim.tasks import ScriptedPolicy, TaskState, check_success, make_policy, sample_scene

logger = logging.getLogger(__name__)

OBS_DTYPE = np.float32
MAX_DEPTH_M = 3.0  # the cameras' far plane


@dataclass
class TabletopConfig:
    """Everything about an env that is not sampled per episode."""

    width: int = 128
    height: int = 128
    cameras: tuple[str, ...] = ("front",)
    fps: float = 10.0
    physics_hz: int = 240
    max_steps: int = 80  # frames per episode, frame 0 included
    tasks: tuple[str, ...] = TASK_FAMILIES
    num_objects: tuple[int, int] = (2, 6)  # inclusive range, not counting the tray
    depth: bool = True
    segmentation: bool = True
    shadows: bool = False  # TinyRenderer shadows halve the frame rate
    camera_jitter_m: float = 0.02

    def __post_init__(self):
        self.cameras = tuple(self.cameras)
        self.tasks = tuple(self.tasks)
        self.num_objects = tuple(int(n) for n in self.num_objects)
        for name in ("width", "height"):
            value = getattr(self, name)
            if not 16 <= value <= 512:
                raise ValueError(f"{name}: expected 16..512 pixels, got {value}")
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras: expected distinct names, got {list(self.cameras)}")
        for cam in self.cameras:
            if cam not in CAMERA_NAMES:
                raise ValueError(f"cameras: unknown {cam!r} (known: {', '.join(CAMERA_NAMES)})")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: expected one or more distinct task families, got {list(self.tasks)}")
        for task in self.tasks:
            if task not in TASK_FAMILIES:
                raise ValueError(f"tasks: unknown {task!r} (known: {', '.join(TASK_FAMILIES)})")
        lo, hi = self.num_objects if len(self.num_objects) == 2 else (0, -1)
        if not 2 <= lo <= hi <= 6:
            raise ValueError(f"num_objects: expected (min, max) with 2 <= min <= max <= 6, got {self.num_objects}")
        if not 0 < self.fps <= 30:
            raise ValueError(f"fps: expected 0 < fps <= 30, got {self.fps}")
        if not 60 <= self.physics_hz <= 2000:
            raise ValueError(f"physics_hz: expected 60..2000, got {self.physics_hz}")
        ratio = self.physics_hz / self.fps
        if abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(f"physics_hz: expected a whole multiple of fps ({self.fps:g}), e.g. "
                             f"{round(ratio) * self.fps:g}, got {self.physics_hz}")
        if not 2 <= self.max_steps <= 2000:
            raise ValueError(f"max_steps: expected 2..2000 frames, got {self.max_steps}")
        if not 0 <= self.camera_jitter_m <= 0.1:
            raise ValueError(f"camera_jitter_m: expected 0..0.1 m, got {self.camera_jitter_m}")

    @property
    def substeps(self) -> int:
        return round(self.physics_hz / self.fps)

    @property
    def max_objects(self) -> int:
        """Rows of the padded object arrays in env observations: the most objects plus the tray."""
        return self.num_objects[1] + 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TabletopConfig:
        return cls(**d)


# -- the gymnasium env -----------------------------------------------------------------------------------------------


class TabletopEnv(gym.Env):
    """Gymnasium env over ``TabletopSim``. Observations have the keys of a recorded episode:

        obs = {"rgb": {cam: (H, W, 3) uint8}, "depth_m": {cam: (H, W) float32}, "segmentation": {cam: (H, W) int32},
               "state": (12,), "ee_pose": (7,), "joint_pos": (9,), "joint_vel": (9,), "gripper_width": (),
               "object_poses": (max_objects, 7), "object_vel": (max_objects, 6), "ee_target": (4,),
               ["wrist_cam_to_world": (4, 4)]}

    Object arrays are padded with zero rows to ``config.max_objects`` so the space is fixed; the first
    ``info["num_objects"]`` rows are the scene's objects in ``info["objects"]`` order (recorded episodes keep only
    those).
    ``reset(seed, options)`` options: ``task`` (family name), ``num_objects``, or ``scene`` (a ``SceneSpec`` dict, e.g.
    ``meta["sim"]["scene"]``, to rebuild a recorded scene). ``reward`` is 1.0 on success; episodes never terminate on
    their own and are truncated at ``max_steps`` frames. ``info["success"]`` is the task's success check.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, config: TabletopConfig | None = None, render_mode: str | None = None):
        self.config = config or TabletopConfig()
        self.render_mode = render_mode
        self.sim: TabletopSim | None = None
        self.scene: SceneSpec | None = None
        self.steps = 0
        self.cam_to_world: dict[str, np.ndarray] = {}  # camera poses of the last observation
        self._last_obs: dict | None = None
        cfg = self.config
        low, high = action_limits(cfg.fps)
        self.action_space = spaces.Box(low, high, dtype=np.float32)
        image = {cam: spaces.Box(0, 255, (cfg.height, cfg.width, 3), np.uint8) for cam in cfg.cameras}
        obs_spaces: dict[str, spaces.Space] = {"rgb": spaces.Dict(image)}
        if cfg.depth:
            obs_spaces["depth_m"] = spaces.Dict(
                {cam: spaces.Box(0.0, MAX_DEPTH_M, (cfg.height, cfg.width), np.float32) for cam in cfg.cameras})
        if cfg.segmentation:
            obs_spaces["segmentation"] = spaces.Dict(
                {cam: spaces.Box(-1, 2**31 - 1, (cfg.height, cfg.width), np.int32) for cam in cfg.cameras})

        def box(bound: float, *shape: int) -> spaces.Box:
            return spaces.Box(-bound, bound, shape, np.float32)

        # Generous finite bounds: positions in metres (the world is a few metres across), angles, velocities.
        obs_spaces.update(state=box(2 * math.pi, len(STATE_NAMES)), ee_pose=box(2.0, 7), joint_pos=box(4.0, 9),
                          joint_vel=box(100.0, 9), gripper_width=spaces.Box(0.0, 0.1, (), np.float32),
                          object_poses=box(5.0, cfg.max_objects, 7), object_vel=box(100.0, cfg.max_objects, 6),
                          ee_target=box(2.0, 4))
        if "wrist" in cfg.cameras:
            obs_spaces["wrist_cam_to_world"] = box(5.0, 4, 4)
        self.observation_space = spaces.Dict(obs_spaces)

    @classmethod
    def from_episode_meta(cls, meta: dict[str, Any]) -> TabletopEnv:
        """An env configured like the one that recorded an episode (``meta["sim"]["config"]``)."""
        return cls(TabletopConfig.from_dict(meta["sim"]["config"]))

    # -- gym API ---------------------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        cfg = self.config
        if "scene" in options:
            scene = options["scene"]
            scene = scene if isinstance(scene, SceneSpec) else SceneSpec.from_dict(scene)
        else:
            family = options.get("task") or str(self.np_random.choice(cfg.tasks))
            if family not in TASK_FAMILIES:
                raise ValueError(f"options.task: unknown {family!r} (known: {', '.join(TASK_FAMILIES)})")
            lo, hi = cfg.num_objects
            num_objects = int(options.get("num_objects") or self.np_random.integers(lo, hi + 1))
            scene = sample_scene(seed=-1 if seed is None else int(seed), family=family, num_objects=num_objects,
                                 cameras=list(cfg.cameras), width=cfg.width, height=cfg.height, fps=cfg.fps,
                                 physics_hz=cfg.physics_hz, camera_jitter_m=cfg.camera_jitter_m, shadow=cfg.shadows,
                                 rng=self.np_random)
        self._load(scene)
        return self._observe(), self._info()

    def step(self, action):
        if self.sim is None:
            raise RuntimeError("call reset() before step()")
        self.sim.apply_action(action)
        self.steps += 1
        obs = self._observe()
        info = self._info()
        truncated = self.steps >= self.config.max_steps - 1
        return obs, float(info["success"]), False, truncated, info

    def render(self):
        if self._last_obs is None:
            return None
        return self._last_obs["rgb"][self.config.cameras[0]]

    def close(self):
        if self.sim is not None:
            self.sim.close()
            self.sim = None

    # -- beyond gym ------------------------------------------------------------------------------------------------

    def scripted_policy(self, rng: np.random.Generator | None = None) -> ScriptedPolicy:
        """The scripted expert for the current scene's task."""
        return make_policy(self.scene, self.config.fps, rng)

    def restore(self, meta: dict[str, Any], extras: dict[str, np.ndarray], frame: int):
        """Put the simulator back at ``frame`` of a recorded episode; returns (obs, info) of that frame.

        The scene is rebuilt from ``meta["sim"]["scene"]`` (skipped if it is already loaded), then joint, object and
        controller state are set from ``extras`` (``joint_pos``, ``joint_vel``, ``object_poses``, ``object_vel``,
        ``ee_target``). Stepping on with the recorded actions ``action[frame:]`` replays the episode: the arm to within
        a fraction of a millimetre, objects typically to a few millimetres (Bullet's contact caches are not restored,
        and sliding or grasping contacts amplify small differences; pybullet's own ``saveBullet``/``restoreState`` is
        exact only inside the client that saved the state, so it cannot help an episode replayed elsewhere).
        """
        num_frames = int(extras["joint_pos"].shape[0])
        if not 0 <= frame < num_frames:
            raise ValueError(f"frame: expected 0..{num_frames - 1}, got {frame}")
        scene = SceneSpec.from_dict(meta["sim"]["scene"])
        if self.scene is None or self.sim is None or self.scene.to_dict() != scene.to_dict():
            self._load(scene)
        state = SimState(*(np.asarray(extras[k][frame], dtype=np.float64)
                           for k in ("joint_pos", "joint_vel", "object_poses", "object_vel", "ee_target")))
        self.sim.set_state(state)
        self.steps = frame
        return self._observe(), self._info()

    def render_fps(self, num_frames: int = 50, wall_clock: bool = False) -> float:
        """Frames per second of rendering the loaded scene (all cameras, arrays converted).

        By default from this process's CPU time, i.e. per core and independent of other load on the machine (the
        renderer is single-threaded); ``wall_clock=True`` measures elapsed time instead.
        """
        import time

        clock = time.perf_counter if wall_clock else time.process_time
        start = clock()
        for _ in range(num_frames):
            self.sim.render()
        return num_frames / (clock() - start)

    # -- internals -------------------------------------------------------------------------------------------------

    def _load(self, scene: SceneSpec) -> None:
        if self.sim is None:
            self.sim = TabletopSim(scene, depth=self.config.depth, segmentation=self.config.segmentation)
        else:
            self.sim.load(scene)
        self.scene = scene
        self.steps = 0
        self.metadata = {**self.metadata, "render_fps": scene.fps}

    def _observe(self) -> dict[str, Any]:
        sim, cfg = self.sim, self.config
        frames = sim.render()
        ee_pose = sim.ee_pose()
        joint_pos, joint_vel = sim.joint_state()
        poses, vels = sim.object_state()
        gripper_width = float(joint_pos[7] + joint_pos[8])
        state = np.array([*ee_pose[:3], yaw_of_quat(ee_pose[3:]), gripper_width, *joint_pos[:7]], dtype=np.float32)
        padded_poses = np.zeros((cfg.max_objects, 7), dtype=OBS_DTYPE)
        padded_vels = np.zeros((cfg.max_objects, 6), dtype=OBS_DTYPE)
        padded_poses[: len(poses)] = poses
        padded_vels[: len(vels)] = vels
        obs: dict[str, Any] = {"rgb": {name: f.rgb for name, f in frames.items()}}
        if cfg.depth:
            obs["depth_m"] = {name: f.depth_m for name, f in frames.items()}
        if cfg.segmentation:
            obs["segmentation"] = {name: f.segmentation for name, f in frames.items()}
        obs.update(state=state, ee_pose=ee_pose.astype(np.float32), joint_pos=joint_pos.astype(OBS_DTYPE),
                   joint_vel=joint_vel.astype(OBS_DTYPE), gripper_width=np.array(gripper_width, dtype=np.float32),
                   object_poses=padded_poses, object_vel=padded_vels, ee_target=sim.ee_target.astype(OBS_DTYPE))
        if "wrist" in frames:
            obs["wrist_cam_to_world"] = frames["wrist"].cam_to_world.astype(np.float32)
        self.cam_to_world = {name: f.cam_to_world for name, f in frames.items()}  # (4, 4) each, OpenCV
        self._last_obs = obs
        return obs

    def _info(self) -> dict[str, Any]:
        scene, sim = self.scene, self.sim
        poses, _ = sim.object_state()
        task_state = TaskState(object_poses=poses, ee_position=sim.ee_pose()[:3],
                               gripper_touches_target=sim.touching(scene.task.target))
        return {"success": check_success(scene, task_state), "task": scene.task.family,
                "instruction": scene.task.instruction, "num_objects": len(scene.objects),
                "objects": [o.name for o in scene.objects], "step": self.steps}


# BODY_*: defined with the simulator that builds the bodies; kept importable here for code that reads segmentation ids.
__all__ = ["ACTION_NAMES", "BODY_PLANE", "BODY_ROBOT", "BODY_TABLE", "STATE_NAMES", "TabletopConfig", "TabletopEnv"]
