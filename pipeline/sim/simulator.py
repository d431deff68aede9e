"""The pybullet side of the tabletop: one DIRECT client holding one scene (``TabletopSim``). It builds the world (plane,
table, Panda, objects), drives the arm (the commanded end-effector target, inverse kinematics, position control), reads
and restores state (``SimState``) and renders every camera with TinyRenderer (``Frame``).

``pipeline.sim.tabletop`` wraps it in the gymnasium env; its docstring gives the action space, the recorded arrays and
the camera conventions implemented here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.sim.spec import (
    EE_TARGET_BOUNDS,
    FLOOR_Z_M,
    PANDA_FINGER_OPEN_M,
    PANDA_REST_Q,
    TABLE_CENTER_M,
    TABLE_HALF_EXTENTS_M,
    TRAY_WALL_THICKNESS_M,
    CameraSpec,
    ObjectSpec,
    SceneSpec,
    action_limits,
    quat_to_matrix,
    yaw_of_quat,
)

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
_CV_FROM_GL = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL camera (y up, z backward) -> OpenCV camera (y down, z forward)


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
