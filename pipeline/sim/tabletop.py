"""Embedded pybullet tabletop: a Franka Panda, a table, 2-6 objects (+ a tray), rendered by pybullet's TinyRenderer.

World: z up, table top at z = 0, the Panda's base at the origin facing +x (see ``pipeline.sim.spec``). pybullet runs in
DIRECT mode (no GUI, no GPU), physics at ``physics_hz`` (240 Hz), control and recording at ``fps`` (10 Hz): one action
is held for ``physics_hz / fps`` physics substeps and frames are rendered only at control steps.

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

from pipeline.sim.spec import (
    ACTION_NAMES,
    CAMERA_NAMES,
    EE_TARGET_BOUNDS,
    FLOOR_Z_M,
    PANDA_FINGER_OPEN_M,
    PANDA_REST_Q,
    STATE_NAMES,
    TABLE_CENTER_M,
    TABLE_HALF_EXTENTS_M,
    TASK_FAMILIES,
    TRAY_WALL_THICKNESS_M,
    CameraSpec,
    ObjectSpec,
    SceneSpec,
    action_limits,
    quat_to_matrix,
    yaw_of_quat,
)
from pipeline.sim.tasks import ScriptedPolicy, TaskState, check_success, make_policy, sample_scene

logger = logging.getLogger(__name__)

ARM_JOINTS = (0, 1, 2, 3, 4, 5, 6)
FINGER_JOINTS = (9, 10)
EE_LINK = 11  # panda_grasptarget: between the finger pads
HAND_LINK = 8  # panda_hand: the wrist camera's mount
ARM_FORCES_N = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
FINGER_FORCE_N = 40.0
JOINT_LOWER = (-2.9671, -1.8326, -2.9671, -3.1416, -2.9671, -0.0873, -2.9671, 0.0, 0.0)
JOINT_UPPER = (2.9671, 1.8326, 2.9671, 0.0, 2.9671, 3.8223, 2.9671, 0.04, 0.04)
SETTLE_S = 0.25  # physics time before frame 0 so that objects rest
BODY_PLANE, BODY_TABLE, BODY_ROBOT = 0, 1, 2  # pybullet unique ids, in build order
OBS_DTYPE = np.float32
MAX_DEPTH_M = 3.0  # the cameras' far plane
_CV_FROM_GL = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL camera (y up, z backward) -> OpenCV camera (y down, z forward)


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
            if not 8 <= value <= 1024:
                raise ValueError(f"{name}: expected 8..1024 pixels, got {value}")
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras: expected distinct names, got {list(self.cameras)}")
        for cam in self.cameras:
            if cam not in CAMERA_NAMES:
                raise ValueError(f"cameras: unknown {cam!r} (known: {', '.join(CAMERA_NAMES)})")
        if not self.tasks:
            raise ValueError("tasks: expected at least one task family")
        for task in self.tasks:
            if task not in TASK_FAMILIES:
                raise ValueError(f"tasks: unknown {task!r} (known: {', '.join(TASK_FAMILIES)})")
        lo, hi = self.num_objects if len(self.num_objects) == 2 else (0, -1)
        if not 2 <= lo <= hi <= 6:
            raise ValueError(f"num_objects: expected (min, max) with 2 <= min <= max <= 6, got {self.num_objects}")
        if not 0 < self.fps <= 60:
            raise ValueError(f"fps: expected 0 < fps <= 60, got {self.fps}")
        if self.physics_hz < self.fps or abs(self.physics_hz / self.fps - round(self.physics_hz / self.fps)) > 1e-6:
            raise ValueError(f"physics_hz: expected a multiple of fps ({self.fps}), got {self.physics_hz}")
        if self.max_steps < 2:
            raise ValueError(f"max_steps: expected at least 2 frames, got {self.max_steps}")
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


@dataclass
class SimState:
    """The simulator state at one frame, enough to continue from it (all in meta["objects"] order)."""

    joint_pos: np.ndarray  # (9,) arm joints 1-7, finger joints
    joint_vel: np.ndarray  # (9,)
    object_poses: np.ndarray  # (K, 7)
    object_vel: np.ndarray  # (K, 6) linear, angular
    ee_target: np.ndarray  # (4,) commanded x, y, z, yaw


@dataclass
class Frame:
    """One camera's rendering."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth_m: np.ndarray | None  # (H, W) float32
    segmentation: np.ndarray | None  # (H, W) int32
    cam_to_world: np.ndarray  # (4, 4) OpenCV convention


class TabletopSim:
    """One pybullet DIRECT client holding one scene. Not thread-safe; one per process or env."""

    def __init__(self, scene: SceneSpec, depth: bool = True, segmentation: bool = True):
        import pybullet
        import pybullet_data

        self.p = pybullet
        self.depth = depth
        self.segmentation = segmentation
        self.client = pybullet.connect(pybullet.DIRECT)
        self._data_path = pybullet_data.getDataPath()
        self.scene: SceneSpec | None = None
        self.object_ids: list[int] = []
        self.ee_target = np.zeros(4)
        self.load(scene)

    # -- building --------------------------------------------------------------------------------------------------

    def _call(self, fn, *args, **kwargs):
        return fn(*args, physicsClientId=self.client, **kwargs)

    def load(self, scene: SceneSpec) -> None:
        """(Re)build the world from ``scene`` in this client and let it settle; body ids are the same every time."""
        p, c = self.p, self._call
        self.scene = scene
        c(p.resetSimulation)
        c(p.setAdditionalSearchPath, self._data_path)
        c(p.setGravity, 0, 0, -9.81)
        c(p.setPhysicsEngineParameter, fixedTimeStep=1.0 / scene.physics_hz, numSolverIterations=50,
          deterministicOverlappingPairs=1)
        plane = c(p.loadURDF, "plane.urdf", [0, 0, FLOOR_Z_M], useFixedBase=True)
        table = c(p.createMultiBody, 0.0,
                  c(p.createCollisionShape, p.GEOM_BOX, halfExtents=TABLE_HALF_EXTENTS_M),
                  c(p.createVisualShape, p.GEOM_BOX, halfExtents=TABLE_HALF_EXTENTS_M, rgbaColor=scene.table_rgba),
                  TABLE_CENTER_M)
        robot = c(p.loadURDF, "franka_panda/panda.urdf", [0, 0, 0], useFixedBase=True)
        if (plane, table, robot) != (BODY_PLANE, BODY_TABLE, BODY_ROBOT):
            raise RuntimeError(f"unexpected pybullet body ids {(plane, table, robot)}")
        self.robot = robot
        self.object_ids = [self._create_object(obj) for obj in scene.objects]
        for joint in FINGER_JOINTS:
            c(p.changeDynamics, robot, joint, lateralFriction=1.5, spinningFriction=0.003, frictionAnchor=1)
        joint_pos = np.array([*scene.robot_q, PANDA_FINGER_OPEN_M, PANDA_FINGER_OPEN_M])
        for joint, q in zip(ARM_JOINTS + FINGER_JOINTS, joint_pos):
            c(p.resetJointState, robot, joint, float(q), 0.0)
        self._drive(joint_pos[:7], 1.0)
        for _ in range(round(SETTLE_S * scene.physics_hz)):
            c(p.stepSimulation)
        pose = self.ee_pose()
        self.ee_target = np.array([*pose[:3], yaw_of_quat(pose[3:])])
        self._static_views = {cam.name: self._view_matrix(cam.eye, cam.target, cam.up)
                              for cam in scene.cameras if cam.mount == "world"}
        self._projections = {cam.name: c(p.computeProjectionMatrixFOV, cam.fov_deg, cam.width / cam.height, cam.near,
                                         cam.far) for cam in scene.cameras}

    def _create_object(self, obj: ObjectSpec) -> int:
        p, c = self.p, self._call
        size = obj.size_m
        if obj.shape == "cube":
            half = [s / 2 for s in size]
            col = c(p.createCollisionShape, p.GEOM_BOX, halfExtents=half)
            vis = c(p.createVisualShape, p.GEOM_BOX, halfExtents=half, rgbaColor=obj.rgba)
        elif obj.shape == "cylinder":
            col = c(p.createCollisionShape, p.GEOM_CYLINDER, radius=size[0] / 2, height=size[2])
            vis = c(p.createVisualShape, p.GEOM_CYLINDER, radius=size[0] / 2, length=size[2], rgbaColor=obj.rgba)
        elif obj.shape == "sphere":
            col = c(p.createCollisionShape, p.GEOM_SPHERE, radius=size[0] / 2)
            vis = c(p.createVisualShape, p.GEOM_SPHERE, radius=size[0] / 2, rgbaColor=obj.rgba)
        elif obj.shape == "tray":
            # A floor and four walls; the base frame is the centre of the floor's underside (on the table).
            side, height, wall = size[0], size[2], TRAY_WALL_THICKNESS_M
            half_extents = [[side / 2, side / 2, wall / 2], [wall / 2, side / 2, height / 2],
                            [wall / 2, side / 2, height / 2], [side / 2, wall / 2, height / 2],
                            [side / 2, wall / 2, height / 2]]
            offset = side / 2 - wall / 2
            positions = [[0, 0, wall / 2], [offset, 0, height / 2], [-offset, 0, height / 2],
                         [0, offset, height / 2], [0, -offset, height / 2]]
            col = c(p.createCollisionShapeArray, [p.GEOM_BOX] * 5, halfExtents=half_extents,
                    collisionFramePositions=positions)
            vis = c(p.createVisualShapeArray, [p.GEOM_BOX] * 5, halfExtents=half_extents,
                    visualFramePositions=positions, rgbaColors=[obj.rgba] * 5)
        else:
            raise ValueError(f"object shape: unknown {obj.shape!r}")
        body = c(p.createMultiBody, obj.mass_kg, col, vis, obj.position, obj.orientation)
        c(p.changeDynamics, body, -1, lateralFriction=obj.lateral_friction, spinningFriction=0.001,
          rollingFriction=0.0002 if obj.shape == "sphere" else 0.0)
        return body

    def close(self) -> None:
        if self.client is not None and self.p.isConnected(self.client):
            self.p.disconnect(self.client)
        self.client = None

    # -- control ---------------------------------------------------------------------------------------------------

    def _drive(self, arm_q: np.ndarray, gripper: float) -> None:
        p, c = self.p, self._call
        c(p.setJointMotorControlArray, self.robot, list(ARM_JOINTS), p.POSITION_CONTROL,
          targetPositions=[float(q) for q in arm_q], forces=list(ARM_FORCES_N))
        finger = float(np.clip(gripper, 0.0, 1.0)) * PANDA_FINGER_OPEN_M
        c(p.setJointMotorControlArray, self.robot, list(FINGER_JOINTS), p.POSITION_CONTROL,
          targetPositions=[finger, finger], forces=[FINGER_FORCE_N] * 2)

    def apply_action(self, action: np.ndarray) -> np.ndarray:
        """Clip ``action``, move the commanded target, solve IK, run one control step of physics. Returns the clipped
        action that was applied."""
        p, c = self.p, self._call
        low, high = action_limits(self.scene.fps)
        action = np.clip(np.asarray(action, dtype=np.float32), low, high)
        target = self.ee_target + action[:4].astype(np.float64)
        for i, (lo, hi) in enumerate(EE_TARGET_BOUNDS):
            target[i] = min(max(target[i], lo), hi)
        self.ee_target = target
        quat = c(p.getQuaternionFromEuler, [math.pi, 0.0, float(target[3])])
        rest = [*PANDA_REST_Q, PANDA_FINGER_OPEN_M, PANDA_FINGER_OPEN_M]
        joint_q = c(p.calculateInverseKinematics, self.robot, EE_LINK, [float(v) for v in target[:3]], quat,
                    lowerLimits=list(JOINT_LOWER), upperLimits=list(JOINT_UPPER),
                    jointRanges=[u - lo for u, lo in zip(JOINT_UPPER, JOINT_LOWER)], restPoses=rest,
                    maxNumIterations=50, residualThreshold=1e-5)
        self._drive(np.asarray(joint_q[:7]), float(action[4]))
        for _ in range(round(self.scene.physics_hz / self.scene.fps)):
            c(p.stepSimulation)
        return action

    # -- reading ---------------------------------------------------------------------------------------------------

    def ee_pose(self) -> np.ndarray:
        """(7,) position + quaternion xyzw of the grasp-target link."""
        state = self._call(self.p.getLinkState, self.robot, EE_LINK, computeForwardKinematics=True)
        return np.array([*state[4], *state[5]])

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        states = self._call(self.p.getJointStates, self.robot, list(ARM_JOINTS + FINGER_JOINTS))
        return np.array([s[0] for s in states]), np.array([s[1] for s in states])

    def object_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(K, 7) poses and (K, 6) velocities of the scene objects, in scene order."""
        poses, vels = [], []
        for body in self.object_ids:
            pos, quat = self._call(self.p.getBasePositionAndOrientation, body)
            lin, ang = self._call(self.p.getBaseVelocity, body)
            poses.append([*pos, *quat])
            vels.append([*lin, *ang])
        return np.array(poses).reshape(-1, 7), np.array(vels).reshape(-1, 6)

    def touching(self, object_index: int) -> bool:
        """Does any part of the robot touch the object?"""
        contacts = self._call(self.p.getContactPoints, bodyA=self.robot, bodyB=self.object_ids[object_index])
        return len(contacts) > 0

    def get_state(self) -> SimState:
        joint_pos, joint_vel = self.joint_state()
        poses, vels = self.object_state()
        return SimState(joint_pos, joint_vel, poses, vels, self.ee_target.copy())

    def set_state(self, state: SimState) -> None:
        p, c = self.p, self._call
        for joint, q, qd in zip(ARM_JOINTS + FINGER_JOINTS, state.joint_pos, state.joint_vel):
            c(p.resetJointState, self.robot, joint, float(q), float(qd))
        for body, obj, pose, vel in zip(self.object_ids, self.scene.objects, state.object_poses, state.object_vel):
            c(p.resetBasePositionAndOrientation, body, [float(v) for v in pose[:3]], [float(v) for v in pose[3:]])
            if obj.mass_kg > 0:
                c(p.resetBaseVelocity, body, [float(v) for v in vel[:3]], [float(v) for v in vel[3:]])
        self.ee_target = np.asarray(state.ee_target, dtype=np.float64).copy()
        fingers = state.joint_pos[7:]
        self._drive(state.joint_pos[:7], float(np.mean(fingers)) / PANDA_FINGER_OPEN_M)

    # -- rendering -------------------------------------------------------------------------------------------------

    def _view_matrix(self, eye, target, up) -> tuple[float, ...]:
        return self._call(self.p.computeViewMatrix, [float(v) for v in eye], [float(v) for v in target],
                          [float(v) for v in up])

    def _wrist_view(self, cam: CameraSpec) -> tuple[float, ...]:
        state = self._call(self.p.getLinkState, self.robot, HAND_LINK, computeForwardKinematics=True)
        pos, rot = np.asarray(state[4]), quat_to_matrix(state[5])
        return self._view_matrix(pos + rot @ np.asarray(cam.eye), pos + rot @ np.asarray(cam.target),
                                 rot @ np.asarray(cam.up))

    def render(self) -> dict[str, Frame]:
        p = self.p
        light = self.scene.light
        flags = 0 if self.segmentation else p.ER_NO_SEGMENTATION_MASK
        frames = {}
        for cam in self.scene.cameras:
            view = self._static_views[cam.name] if cam.mount == "world" else self._wrist_view(cam)
            _, _, rgba, zbuf, seg = self._call(
                p.getCameraImage, cam.width, cam.height, view, self._projections[cam.name],
                lightDirection=light.direction, lightColor=light.color, lightDistance=2.0, shadow=int(light.shadow),
                lightAmbientCoeff=light.ambient, lightDiffuseCoeff=light.diffuse, lightSpecularCoeff=light.specular,
                renderer=p.ER_TINY_RENDERER, flags=flags)
            shape = (cam.height, cam.width)
            rgb = np.asarray(rgba, dtype=np.uint8).reshape(*shape, 4)[..., :3]
            depth = None
            if self.depth:
                zbuf = np.asarray(zbuf, dtype=np.float64).reshape(shape)
                depth = (cam.far * cam.near / (cam.far - (cam.far - cam.near) * zbuf)).astype(np.float32)
                depth[zbuf >= 1.0 - 1e-7] = 0.0  # nothing within the far plane
            segmentation = np.asarray(seg, dtype=np.int32).reshape(shape) if self.segmentation else None
            cam_to_world = np.linalg.inv(np.asarray(view, dtype=np.float64).reshape(4, 4, order="F")) @ _CV_FROM_GL
            frames[cam.name] = Frame(rgb=np.ascontiguousarray(rgb), depth_m=depth, segmentation=segmentation,
                                     cam_to_world=cam_to_world)
        return frames


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


__all__ = ["ACTION_NAMES", "STATE_NAMES", "SimState", "TabletopConfig", "TabletopEnv", "TabletopSim"]
