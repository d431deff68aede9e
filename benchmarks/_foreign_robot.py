"""A second embodiment, as a user would bring it (issue 12): a KUKA iiwa at a table, written with lerobot's own writer
under its own feature names, with no camera calibration in the dataset. Benchmark-side only: nothing in the pipeline's
defaults knows this robot, camera or these keys (the embedded simulator, ``pipeline.sim``, stays Panda-only).

    generate(root, num_episodes, seed)    pybullet (DIRECT, TinyRenderer) episodes -> LeRobot v3 dataset at ``root``;
                                          the generator's truth goes to ``<root>.truth.json`` (outside the dataset)
    write_clips(directory, num_clips, seed)   action-less mp4 clips of the same robot + ``<stem>.json`` sidecars
    camera_calibration()                  the intrinsics a user passes as ingest params: {fx, fy, cx, cy}
    truth_facts / match_objects / score_samples   wmsynth QA records of this data scored against the truth

The dataset (``robot_type`` "kuka_iiwa", ``fps`` 12, one static camera ``cam_high``, H x W = 96 x 128 by default):
    observation.images.cam_high          video (H, W, 3)  RGB (lerobot's default AV1)
    observation.images.cam_high_depth    video (H, W, 1)  ``info.is_depth_map``; fed uint16 millimetres, as lerobot's
                                         RealSense camera reads depth and names it (``<camera>_depth``); lerobot
                                         stores 12-bit log-quantised metres, HEVC lossless, its default encoders
    observation.state                    float32 (7,)  joint angles, rad: iiwa_joint_1..iiwa_joint_7
    action                               float32 (3,)  end-effector target delta per step, m: ee_dx, ee_dy, ee_dz
    task                                 "reach the red block", "push the green block to the left", ...

World (metres, z up): the table top is z = 0, the iiwa's base sits at the origin facing +x. The end effector is the
origin of ``lbr_iiwa_link_7`` (the flange, pointing down); action ``a_t`` (recorded with frame ``t``) moves its
commanded target, which inverse kinematics and position control follow during ``physics_hz / fps`` physics steps.
Truth per episode: objects (name, colour, category "block", true box size, pybullet body id), per frame their poses
(xyz + quaternion xyzw) and the end effector's position; the camera's intrinsics and cam_to_world (OpenCV: x right,
y down, z forward).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ROBOT_TYPE = "kuka_iiwa"
CAMERA = "cam_high"
RGB_KEY = f"observation.images.{CAMERA}"
DEPTH_KEY = f"observation.images.{CAMERA}_depth"  # lerobot's name for a depth camera's stream (hw_to_dataset_features)
STATE_KEY, ACTION_KEY = "observation.state", "action"
STATE_NAMES = tuple(f"iiwa_joint_{i}" for i in range(1, 8))
ACTION_NAMES = ("ee_dx", "ee_dy", "ee_dz")
CATEGORY = "block"

# Colours named as depth.objects names clusters, so "the red object" is the red block.
COLOURS = {"red": (0.85, 0.1, 0.1), "green": (0.1, 0.65, 0.2), "blue": (0.1, 0.25, 0.9), "yellow": (0.95, 0.85, 0.1),
           "orange": (1.0, 0.5, 0.05), "purple": (0.55, 0.15, 0.75)}
TABLE_CENTER_M, TABLE_HALF_EXTENTS_M, TABLE_RGBA = (0.45, 0.0, -0.35), (0.55, 0.65, 0.35), (0.55, 0.5, 0.45, 1.0)
OBJECT_XY_M = ((0.42, 0.75), (-0.25, 0.25))  # object centres
OBJECT_SIDE_M = (0.05, 0.12)
MIN_GAP_M = 0.04
CAMERA_EYE_M, CAMERA_TARGET_M = (1.0, 0.3, 0.62), (0.56, 0.0, 0.04)
NEAR_M, FAR_M = 0.05, 3.0
EE_LINK = 6  # lbr_iiwa_link_7
JOINT_LIMITS = ((-2.967, -2.094, -2.967, -2.094, -2.967, -2.094, -3.054),
                (2.967, 2.094, 2.967, 2.094, 2.967, 2.094, 3.054))
REST_Q = (0.0, 0.6, 0.0, -1.3, 0.0, 1.2, 0.0)
JOINT_FORCE_NM = 300.0
TIP_BELOW_EE_M = 0.05  # link 7's body reaches this far below its origin: the part that touches what it pushes
EE_BOUNDS_M = ((0.25, 0.8), (-0.45, 0.45), (TIP_BELOW_EE_M + 0.01, 0.6))  # x: reach at table height
QUIET_X265 = "lossless=1:log-level=error"  # lerobot's default depth encoding, without x265's log lines


@dataclass(frozen=True)
class ForeignConfig:
    height: int = 96
    width: int = 128
    fps: int = 12
    fov_deg: float = 60.0  # vertical
    physics_hz: int = 240
    frames: tuple[int, int] = (20, 40)  # episode length range (reach episodes are shorter than pushes)
    objects: tuple[int, int] = (2, 4)
    max_step_m: float = 0.035  # |action| per axis
    noise_m: float = 0.006  # per-step action noise (std)

    def __post_init__(self):
        for name in ("height", "width", "fps", "physics_hz"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.physics_hz % self.fps:
            raise ValueError(f"physics_hz: expected a multiple of fps {self.fps}, got {self.physics_hz}")
        if not 20 <= self.fov_deg <= 120:
            raise ValueError(f"fov_deg: expected 20..120, got {self.fov_deg}")
        if not 2 <= self.frames[0] <= self.frames[1]:
            raise ValueError(f"frames: expected 2 <= min <= max, got {self.frames}")
        if not 1 <= self.objects[0] <= self.objects[1] <= len(COLOURS):
            raise ValueError(f"objects: expected 1 <= min <= max <= {len(COLOURS)}, got {self.objects}")


def camera_calibration(config: ForeignConfig | None = None) -> dict[str, float]:
    """{fx, fy, cx, cy} of ``cam_high``'s images, OpenCV pixels (what a user passes as ingest params).

    TinyRenderer samples pixel column u at NDC x = 2u / W - 1 (its corner) and flips rows, so the principal point is
    (W / 2, H / 2 - 1) (as ``pipeline.sim.spec.CameraSpec.intrinsics``); fov is vertical, pixels square."""
    config = config or ForeignConfig()
    f = 0.5 * config.height / math.tan(math.radians(config.fov_deg) / 2)
    return {"fx": f, "fy": f, "cx": config.width / 2, "cy": config.height / 2 - 1}


def camera_to_world() -> np.ndarray:
    """(4, 4) cam_to_world of ``cam_high``, OpenCV convention."""
    eye, target = np.asarray(CAMERA_EYE_M), np.asarray(CAMERA_TARGET_M)
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    pose[:3, 3] = eye
    return pose


# -- simulation ------------------------------------------------------------------------------------------------------


@dataclass
class SimEpisode:
    rgb: np.ndarray  # (T, H, W, 3) uint8
    depth_m: np.ndarray  # (T, H, W) float32, 0 = nothing within the far plane
    segmentation: np.ndarray  # (T, H, W) int32 pybullet body ids (not written to the dataset)
    state: np.ndarray  # (T, 7) joint angles
    action: np.ndarray  # (T, 3) applied end-effector target deltas
    task: str
    truth: dict[str, Any]  # objects, per frame object_poses (T, K, 7) and ee_position_m (T, 3), as lists


class _KukaTable:
    """One pybullet DIRECT client; ``reset`` builds a new scene, ``step`` applies one action."""

    def __init__(self, config: ForeignConfig):
        import pybullet
        import pybullet_data

        self.p, self.config = pybullet, config
        self.client = pybullet.connect(pybullet.DIRECT)
        self.data_path = pybullet_data.getDataPath()
        c = self._call
        self.view = c(pybullet.computeViewMatrix, CAMERA_EYE_M, CAMERA_TARGET_M, [0.0, 0.0, 1.0])
        self.projection = c(pybullet.computeProjectionMatrixFOV, config.fov_deg, config.width / config.height,
                            NEAR_M, FAR_M)

    def _call(self, fn, *args, **kwargs):
        return fn(*args, physicsClientId=self.client, **kwargs)

    def close(self) -> None:
        self.p.disconnect(self.client)

    def reset(self, rng: np.random.Generator) -> list[dict[str, Any]]:
        """A new scene: table, iiwa, 2-4 blocks; the arm settles at a random start pose. Returns the objects."""
        p, c = self.p, self._call
        c(p.resetSimulation)
        c(p.setAdditionalSearchPath, self.data_path)
        c(p.setGravity, 0, 0, -9.81)
        c(p.setPhysicsEngineParameter, fixedTimeStep=1.0 / self.config.physics_hz, deterministicOverlappingPairs=1)
        c(p.loadURDF, "plane.urdf", [0, 0, -2 * TABLE_HALF_EXTENTS_M[2]], useFixedBase=True)
        c(p.createMultiBody, 0.0, c(p.createCollisionShape, p.GEOM_BOX, halfExtents=TABLE_HALF_EXTENTS_M),
          c(p.createVisualShape, p.GEOM_BOX, halfExtents=TABLE_HALF_EXTENTS_M, rgbaColor=TABLE_RGBA), TABLE_CENTER_M)
        self.robot = c(p.loadURDF, "kuka_iiwa/model.urdf", [0, 0, 0], useFixedBase=True)
        objects = []
        for colour in rng.choice(list(COLOURS), size=int(rng.integers(self.config.objects[0],
                                                                        self.config.objects[1] + 1)), replace=False):
            size = np.round(rng.uniform(*OBJECT_SIDE_M, size=3), 5)  # as the truth records it
            xy = _free_spot(rng, size, objects)
            yaw = float(rng.uniform(-math.pi, math.pi))
            half = [float(s) / 2 for s in size]
            body = c(p.createMultiBody, 0.3, c(p.createCollisionShape, p.GEOM_BOX, halfExtents=half),
                     c(p.createVisualShape, p.GEOM_BOX, halfExtents=half, rgbaColor=[*COLOURS[colour], 1.0]),
                     [*xy, half[2]], c(p.getQuaternionFromEuler, [0.0, 0.0, yaw]))
            c(p.changeDynamics, body, -1, lateralFriction=0.6)
            objects.append({"name": f"{colour} {CATEGORY}", "colour": str(colour), "category": CATEGORY,
                            "shape": "box", "size_m": [float(s) for s in size], "body_id": int(body),
                            "xy": xy})
        start = np.array([rng.uniform(0.38, 0.5), rng.uniform(-0.12, 0.12), rng.uniform(0.3, 0.4)])
        q = REST_Q
        for _ in range(20):  # IK from the rest pose, joints set directly: the arm starts at ``start``
            q = self._ik(start, q)
            for joint, angle in enumerate(q):
                c(p.resetJointState, self.robot, joint, angle, 0.0)
        self.target = start
        self._drive(q)
        for _ in range(self.config.physics_hz // 4):  # objects and arm settle
            c(p.stepSimulation)
        return [{k: v for k, v in o.items() if k != "xy"} for o in objects]

    def _ik(self, target: np.ndarray, rest: tuple[float, ...]) -> tuple[float, ...]:
        p = self.p
        lower, upper = JOINT_LIMITS
        down = p.getQuaternionFromEuler([0.0, math.pi, 0.0])
        return tuple(self._call(p.calculateInverseKinematics, self.robot, EE_LINK, [float(v) for v in target], down,
                                lowerLimits=list(lower), upperLimits=list(upper),
                                jointRanges=[u - lo for u, lo in zip(upper, lower)], restPoses=list(rest),
                                maxNumIterations=50, residualThreshold=1e-5))

    def _drive(self, q) -> None:
        self._call(self.p.setJointMotorControlArray, self.robot, list(range(7)), self.p.POSITION_CONTROL,
                   targetPositions=[float(v) for v in q], forces=[JOINT_FORCE_NM] * 7)

    def step(self, delta: np.ndarray) -> np.ndarray:
        """Move the commanded target by ``delta`` (kept inside EE_BOUNDS_M); returns the delta applied."""
        new = np.clip(self.target + delta, [b[0] for b in EE_BOUNDS_M], [b[1] for b in EE_BOUNDS_M])
        applied, self.target = new - self.target, new
        self._drive(self._ik(new, REST_Q))
        for _ in range(self.config.physics_hz // self.config.fps):
            self._call(self.p.stepSimulation)
        return applied

    def joints(self) -> np.ndarray:
        return np.array([s[0] for s in self._call(self.p.getJointStates, self.robot, list(range(7)))])

    def ee_position(self) -> np.ndarray:
        return np.array(self._call(self.p.getLinkState, self.robot, EE_LINK, computeForwardKinematics=True)[4])

    def object_poses(self, objects: list[dict[str, Any]]) -> np.ndarray:
        poses = [self._call(self.p.getBasePositionAndOrientation, o["body_id"]) for o in objects]
        return np.array([[*pos, *quat] for pos, quat in poses])  # (K, 7)

    def render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RGB (H, W, 3) uint8, metric depth (H, W) float32 (0 = nothing), segmentation (H, W) int32."""
        h, w = self.config.height, self.config.width
        _, _, rgba, zbuf, seg = self._call(self.p.getCameraImage, w, h, self.view, self.projection,
                                           renderer=self.p.ER_TINY_RENDERER)
        zbuf = np.asarray(zbuf, dtype=np.float64).reshape(h, w)
        depth = (FAR_M * NEAR_M / (FAR_M - (FAR_M - NEAR_M) * zbuf)).astype(np.float32)
        depth[zbuf >= 1.0 - 1e-7] = 0.0
        rgb = np.ascontiguousarray(np.asarray(rgba, dtype=np.uint8).reshape(h, w, 4)[..., :3])
        return rgb, depth, np.asarray(seg, dtype=np.int32).reshape(h, w)


def _free_spot(rng: np.random.Generator, size: np.ndarray, placed: list[dict[str, Any]]) -> list[float]:
    radius = 0.5 * math.hypot(size[0], size[1])
    for _ in range(200):
        xy = np.array([rng.uniform(*OBJECT_XY_M[0]), rng.uniform(*OBJECT_XY_M[1])])
        if all(np.linalg.norm(xy - o["xy"]) > radius + 0.5 * math.hypot(*o["size_m"][:2]) + MIN_GAP_M
               for o in placed):
            return [float(v) for v in xy]
    raise RuntimeError("no free spot for another object; lower ForeignConfig.objects")


def _waypoints(rng: np.random.Generator, obj: dict[str, Any], xy: np.ndarray, push: bool) -> tuple[list, str]:
    """The scripted end-effector path and the task text: hover above the block, or push it sideways from a start
    point behind it that the arm can reach (else it is a reach)."""
    top = obj["size_m"][2] + TIP_BELOW_EE_M
    directions = {"to the left": (0.0, 1.0), "to the right": (0.0, -1.0), "away from the robot": (1.0, 0.0),
                  "toward the robot": (-1.0, 0.0)}  # as the robot sees it (it faces +x)
    behind = {name: xy - np.asarray(d) * (0.5 * math.hypot(*obj["size_m"][:2]) + 0.07)
              for name, d in directions.items()}
    feasible = [name for name, b in behind.items()
                if all(lo <= v <= hi for v, (lo, hi) in zip(b, EE_BOUNDS_M[:2]))]
    if not push or not feasible:
        return [np.array([*xy, top + rng.uniform(0.03, 0.08)])], f"reach the {obj['name']}"
    name = str(rng.choice(feasible))
    low = TIP_BELOW_EE_M + 0.5 * obj["size_m"][2]
    path = [np.array([*behind[name], top + 0.05]), np.array([*behind[name], low]),
            np.array([*(xy + np.asarray(directions[name]) * rng.uniform(0.03, 0.07)), low])]
    return path, f"push the {obj['name']} {name}"


def simulate_episode(seed: int | list[int], config: ForeignConfig | None = None, sim: _KukaTable | None = None
                     ) -> SimEpisode:
    """One scripted episode (reach or push a random block, noisy actions), rendered every frame."""
    config = config or ForeignConfig()
    rng = np.random.default_rng(seed)
    own = sim is None
    sim = sim or _KukaTable(config)
    try:
        objects = sim.reset(rng)
        k = int(rng.integers(len(objects)))
        push = bool(rng.random() < 0.5)
        short, long = config.frames
        num_frames = int(rng.integers((short + long) // 2 if push else short, long + 1))
        path, task = _waypoints(rng, objects[k], sim.object_poses(objects)[k, :2], push)
        speed = rng.uniform(0.6, 1.0) * config.max_step_m
        rgb, depth, seg, state, action, poses, ee = [], [], [], [], [], [], []
        for _ in range(num_frames):
            for out, value in zip((rgb, depth, seg), sim.render()):
                out.append(value)
            state.append(sim.joints())
            poses.append(sim.object_poses(objects))
            ee.append(sim.ee_position())
            if len(path) > 1 and np.linalg.norm(path[0] - sim.target) < 0.015:
                path.pop(0)
            wanted = np.clip(path[0] - sim.target, -speed, speed) + rng.normal(0.0, config.noise_m, 3)
            action.append(sim.step(np.clip(wanted, -config.max_step_m, config.max_step_m)))
    finally:
        if own:
            sim.close()
    truth = {"task": task, "target_object": k, "objects": objects,
             "object_poses": np.round(np.stack(poses), 6).tolist(), "ee_position_m": np.round(np.stack(ee), 6).tolist()}
    return SimEpisode(rgb=np.stack(rgb), depth_m=np.stack(depth), segmentation=np.stack(seg),
                      state=np.stack(state).astype(np.float32), action=np.stack(action).astype(np.float32), task=task,
                      truth=truth)


# -- writing ---------------------------------------------------------------------------------------------------------


def features(config: ForeignConfig) -> dict[str, dict]:
    hw = (config.height, config.width)
    names = ["height", "width", "channels"]
    return {RGB_KEY: {"dtype": "video", "shape": (*hw, 3), "names": names},
            DEPTH_KEY: {"dtype": "video", "shape": (*hw, 1), "names": names, "info": {"is_depth_map": True}},
            STATE_KEY: {"dtype": "float32", "shape": (7,), "names": list(STATE_NAMES)},
            ACTION_KEY: {"dtype": "float32", "shape": (3,), "names": list(ACTION_NAMES)}}


def default_truth_path(root: Path) -> Path:
    return Path(root).parent / f"{Path(root).name}.truth.json"


def generate(root: Path, num_episodes: int, seed: int, config: ForeignConfig | None = None,
             truth_path: Path | None = None, repo_id: str = "local/kuka_iiwa_table") -> dict[str, Any]:
    """Simulate ``num_episodes`` episodes and write them at ``root`` (must not exist) with lerobot's writer, its
    default encoders; the truth goes to ``truth_path`` (default ``<root>.truth.json``). Returns a summary."""
    from lerobot.configs import DepthEncoderConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.utils.utils import SuppressProgressBars

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only, no banner per video
    config = config or ForeignConfig()
    root, truth_path = Path(root), Path(truth_path or default_truth_path(root))
    cpu0, sim_cpu_s, episodes = time.process_time(), 0.0, []
    dataset = LeRobotDataset.create(repo_id, fps=config.fps, features=features(config), root=root,
                                    robot_type=ROBOT_TYPE, use_videos=True,
                                    depth_encoder=DepthEncoderConfig(extra_options={"x265-params": QUIET_X265}))
    sim = _KukaTable(config)
    try:
        with SuppressProgressBars():  # no `datasets` progress bar per saved episode
            for i in range(num_episodes):
                t0 = time.process_time()
                ep = simulate_episode([seed, i], config, sim)
                sim_cpu_s += time.process_time() - t0
                for t in range(len(ep.rgb)):
                    depth_mm = np.round(ep.depth_m[t] * 1000.0).astype(np.uint16)[..., None]  # as a RealSense reads it
                    dataset.add_frame({RGB_KEY: ep.rgb[t], DEPTH_KEY: depth_mm, STATE_KEY: ep.state[t],
                                       ACTION_KEY: ep.action[t], "task": ep.task})
                dataset.save_episode(parallel_encoding=False)  # encoding CPU stays in this process (and its count)
                episodes.append({"episode_index": i, "seed": [seed, i], "num_frames": len(ep.rgb), **ep.truth})
    finally:
        sim.close()
        dataset.finalize()
    truth = {"robot_type": ROBOT_TYPE, "fps": config.fps, "dataset": str(root),
             "camera": {"name": CAMERA, "height": config.height, "width": config.width, "fov_deg": config.fov_deg,
                        "intrinsics": camera_calibration(config), "cam_to_world": camera_to_world().tolist()},
             "episodes": episodes}
    tmp = truth_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(truth))
    tmp.replace(truth_path)
    cpu_s = time.process_time() - cpu0
    return {"root": str(root), "truth_path": str(truth_path), "num_episodes": num_episodes,
            "num_frames": sum(e["num_frames"] for e in episodes), "cpu_s": round(cpu_s, 2),
            "sim_cpu_s": round(sim_cpu_s, 2), "episodes_per_cpu_s": round(num_episodes / cpu_s, 3) if cpu_s else None,
            "fps": config.fps, "image_hw": [config.height, config.width], "features": sorted(features(config))}


def write_clips(directory: Path, num_clips: int, seed: int, config: ForeignConfig | None = None) -> list[Path]:
    """``num_clips`` action-less H.264 clips of ``cam_high`` (RGB only), each with ``<stem>.json``: task, fps,
    robot_type (``ingest_videos``' sidecar). Seeds ``[seed, i]`` as ``generate``'s, so use another ``seed``."""
    import av

    config = config or ForeignConfig()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    sim = _KukaTable(config)
    try:
        for i in range(num_clips):
            ep = simulate_episode([seed, i], config, sim)
            path = directory / f"{ROBOT_TYPE}_clip_{i:03d}.mp4"
            with av.open(str(path), "w") as container:
                stream = container.add_stream("libx264", rate=config.fps)
                stream.width, stream.height, stream.pix_fmt = config.width, config.height, "yuv420p"
                stream.options = {"crf": "18", "x264-params": "log=-1"}  # no x264 statistics on stderr
                for rgb in ep.rgb:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
                container.mux(stream.encode())
            path.with_suffix(".json").write_text(json.dumps({"task": ep.task, "fps": config.fps,
                                                             "robot_type": ROBOT_TYPE}))
            paths.append(path)
    finally:
        sim.close()
    return paths


# -- truth and scoring -----------------------------------------------------------------------------------------------


def load_truth(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def truth_facts(truth: dict[str, Any], episode_index: int, frame: int, cam_to_frame: np.ndarray | None = None):
    """True ``depth.qa_facts.SceneFacts`` of ``cam_high`` at ``frame``, ids = pybullet body ids.

    The viewer frame is ``cam_to_frame`` when given (a QA sample's ``viewer_frame.cam_to_frame``: its answers are
    stated in that frame, whether its gravity came from extrinsics or a RANSAC plane), else the true gravity frame
    (``depth.geometry.gravity_from_extrinsics``). Objects are measured from their true box corners, as
    ``pipeline.sim.truth`` does for our simulator."""
    from depth.boxes import box_facts
    from depth.geometry import Intrinsics, gravity_from_extrinsics
    from depth.qa_facts import SceneFacts
    from pipeline.sim.truth import true_corners

    camera, episode = truth["camera"], truth["episodes"][episode_index]
    cam_to_world = np.asarray(camera["cam_to_world"], dtype=np.float64)
    if cam_to_frame is None:
        cam_to_frame = gravity_from_extrinsics(cam_to_world).cam_to_frame
    cam_to_frame = np.asarray(cam_to_frame, dtype=np.float64)
    frame_from_world = cam_to_frame @ np.linalg.inv(cam_to_world)
    intrinsics = Intrinsics.from_meta({**camera["intrinsics"], "height": camera["height"], "width": camera["width"]})
    world_to_cam = np.linalg.inv(cam_to_world)
    objects, names, categories, counted = {}, {}, {}, {}
    for obj, pose in zip(episode["objects"], np.asarray(episode["object_poses"][frame])):
        oid = obj["body_id"]
        corners = true_corners(obj, pose) @ frame_from_world[:3, :3].T + frame_from_world[:3, 3]
        objects[oid] = box_facts(oid, obj["name"], obj["category"], corners, num_points=0)
        names[oid], categories[oid] = obj["name"], obj["category"]
        centre_cam = world_to_cam[:3, :3] @ np.asarray(pose[:3]) + world_to_cam[:3, 3]
        counted[oid] = bool(intrinsics.contains(intrinsics.project(centre_cam[None]))[0])
    ee = np.asarray(episode["ee_position_m"][frame], dtype=np.float64)
    return SceneFacts(objects=objects, names=names, categories=categories, problems={},
                      camera_position_m=cam_to_frame[:3, 3].copy(),
                      gripper_position_m=frame_from_world[:3, :3] @ ee + frame_from_world[:3, 3], counted=counted,
                      world_from_frame=np.linalg.inv(frame_from_world), static_camera=True)


def match_objects(document: dict[str, Any], truth_scene, max_distance_m: float = 0.06) -> dict[int, int]:
    """Measured object id -> true object id: the document's measured objects (``objects[*].centre_m``, viewer frame)
    paired one to one with ``truth_scene``'s (in the same viewer frame), nearest centres first; pairs farther apart
    than ``max_distance_m`` stay unmatched (a cluster of the arm, a block split in two)."""
    pairs = sorted((float(np.linalg.norm(np.asarray(m["centre_m"]) - fact.centre_m)), int(m["object_id"]), tid)
                   for m in document["objects"] for tid, fact in truth_scene.objects.items())
    matches: dict[int, int] = {}
    for distance, mid, tid in pairs:
        if distance <= max_distance_m and mid not in matches and tid not in matches.values():
            matches[mid] = tid
    return matches


def _relabelled(scene, matches: dict[int, int], measured_names: dict[int, str]):
    """``scene`` with its matched objects under the measured ids and names (what the records refer to)."""
    objects = {mid: replace(scene.objects[tid], object_id=mid, name=measured_names[mid])
               for mid, tid in matches.items()}
    return replace(scene, objects=objects, names={mid: measured_names[mid] for mid in matches},
                   categories={mid: scene.categories[tid] for mid, tid in matches.items()},
                   counted={mid: scene.counted[tid] for mid, tid in matches.items()}, count_uncertain=set())


class Scored(NamedTuple):
    scores: list  # depth.qa_scoring.Score of every record whose objects all matched a true object
    unmatched: dict[str, int]  # family -> records left unscored: one of their objects matched no true object
    objects: dict[str, int]  # measured objects: matched, unmatched


def episode_index_of(episode_id: str) -> int:
    """The LeRobot episode index in an ``ingest_lerobot`` episode id (``<dataset>-ep000003`` -> 3)."""
    found = re.search(r"ep(\d+)$", episode_id)
    if found is None:
        raise ValueError(f"episode id {episode_id!r} does not end in ep<index> (an ingest_lerobot id)")
    return int(found.group(1))


def score_samples(samples, truth: dict[str, Any], max_distance_m: float = 0.06, qa_config=None) -> Scored:
    """Score QA samples of this data (``FrameSample``s or their JSON documents) against the truth: per sample, the
    measured objects are matched to true ones (``match_objects``), the truth is relabelled with the measured ids and
    names, and each record is scored with ``depth.qa_scoring.score_record``; records about an unmatched object are
    counted in ``unmatched``, not scored."""
    from depth.qa_scoring import score_record

    scores, unmatched, objects = [], {}, {"matched": 0, "unmatched": 0}
    for sample in samples:
        doc = getattr(sample, "document", sample)
        ref = doc["frame_ref"]
        if ref["camera"] != truth["camera"]["name"]:
            raise ValueError(f"sample of camera {ref['camera']!r}; the truth is of {truth['camera']['name']!r}")
        index, cam_to_frame = episode_index_of(ref["episode_id"]), doc["viewer_frame"]["cam_to_frame"]
        end = truth_facts(truth, index, int(ref["frame"]), cam_to_frame)
        matches = match_objects(doc, end, max_distance_m)
        names = {int(m["object_id"]): m["name"] for m in doc["objects"]}
        objects["matched"] += len(matches)
        objects["unmatched"] += len(names) - len(matches)
        start = None
        if ref.get("start_frame") is not None:
            start = _relabelled(truth_facts(truth, index, int(ref["start_frame"]), cam_to_frame), matches, names)
        end = _relabelled(end, matches, names)
        for record in doc["qa"]:
            if all(int(oid) in matches for oid in record["asked_ids"]):
                scores.append(score_record(record, end, start, qa_config))
            else:
                unmatched[record["family"]] = unmatched.get(record["family"], 0) + 1
    return Scored(scores, unmatched, objects)
