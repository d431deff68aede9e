"""Scene specification of the tabletop simulator: what is in the world, where the cameras and the light are.

Pure Python + numpy (no pybullet), so it is cheap to import and a spec round-trips through JSON: a ``SceneSpec`` is
everything needed to rebuild a scene bit-for-bit in a fresh pybullet client (``meta["sim"]["scene"]`` of an episode).

World frame (metres, radians): z up, the table top is the plane z = 0, the Panda's base sits at the origin and faces +x.
Objects are placed in the workspace ``WORKSPACE_XY``. Quaternions are pybullet's ``[x, y, z, w]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

TASK_FAMILIES = ("pick_place", "push", "stack", "reach")
CAMERA_NAMES = ("front", "side", "top", "oblique", "wrist")
SHAPES = ("cube", "cylinder", "sphere")

# Base colours; each object gets a small per-episode jitter around its base so the name stays true.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "green": (0.10, 0.65, 0.20),
    "blue": (0.10, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "orange": (1.00, 0.50, 0.05),
    "purple": (0.55, 0.15, 0.75),
    "cyan": (0.10, 0.80, 0.85),
    "white": (0.92, 0.92, 0.92),
}

WORKSPACE_XY = ((0.36, 0.70), (-0.28, 0.28))  # ((x_min, x_max), (y_min, y_max)) for object centres
TABLE_HALF_EXTENTS_M = (0.65, 0.75, 0.30)  # box table; top face at z = 0
TABLE_CENTER_M = (0.40, 0.0, -0.30)
FLOOR_Z_M = -0.60
MIN_GAP_M = 0.035  # free space between any two object footprints at reset
TRAY_WALL_HEIGHT_M = 0.04
TRAY_WALL_THICKNESS_M = 0.008

# -- the action and state contract of the env (see pipeline.sim.tabletop) --
ROBOT_TYPE = "franka_panda"  # every simulator episode's meta["robot_type"]; nothing else defaults to it
ACTION_NAMES = ("dx", "dy", "dz", "dyaw", "gripper")
STATE_NAMES = ("ee_x", "ee_y", "ee_z", "ee_yaw", "gripper_width", *(f"joint_{i}" for i in range(1, 8)))
MAX_EE_SPEED_MPS = 0.5  # |dx|, |dy|, |dz| <= MAX_EE_SPEED_MPS / fps per control step
MAX_YAW_RATE_RPS = 3.0  # |dyaw| <= MAX_YAW_RATE_RPS / fps
EE_TARGET_BOUNDS = ((0.20, 0.85), (-0.50, 0.50), (0.015, 0.60), (-math.pi / 2, math.pi / 2))  # x, y, z, yaw


def action_limits(fps: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of one action at control rate ``fps``: [dx, dy, dz, dyaw, gripper]."""
    step_m, step_rad = MAX_EE_SPEED_MPS / fps, MAX_YAW_RATE_RPS / fps
    high = np.array([step_m, step_m, step_m, step_rad, 1.0], dtype=np.float32)
    low = np.array([-step_m, -step_m, -step_m, -step_rad, 0.0], dtype=np.float32)
    return low, high


# Nominal Panda arm pose: gripper pointing down about 0.4 m above the table, yaw 0 (fingers close along world y).
PANDA_REST_Q = (0.0, -0.30, 0.0, -2.20, 0.0, 2.00, 0.785)
PANDA_FINGER_OPEN_M = 0.04  # per finger; full opening 0.08 m


@dataclass
class ObjectSpec:
    name: str  # "red cube", "tray": unique within a scene, used in instructions
    shape: str  # cube | cylinder | sphere | tray
    category: str  # cube | cylinder | sphere | container
    color: str
    rgba: list[float]
    size_m: list[float]  # true axis-aligned extents [x, y, z] in the object's own frame
    mass_kg: float
    position: list[float]  # initial base position (centre of the extents box; for the tray the floor centre)
    orientation: list[float]  # initial quaternion [x, y, z, w]
    lateral_friction: float = 1.0

    @property
    def footprint_radius_m(self) -> float:
        return 0.5 * math.hypot(self.size_m[0], self.size_m[1])

    @property
    def graspable(self) -> bool:
        """Fits between the Panda's fingers (0.08 m opening) with a margin and has flat sides."""
        return self.shape in ("cube", "cylinder") and max(self.size_m[:2]) <= 0.06


@dataclass
class CameraSpec:
    name: str
    eye: list[float]  # world frame, or the hand frame for mount == "panda_hand"
    target: list[float]
    up: list[float]
    fov_deg: float  # vertical field of view
    near: float
    far: float
    width: int
    height: int
    mount: str = "world"  # "world" (static) or "panda_hand" (moves with the gripper)

    def intrinsics(self) -> dict[str, float]:
        """Pinhole intrinsics of the rendered image, OpenCV convention (pixel (u, v) is column u, row v).

        TinyRenderer samples column u at normalised device x = 2u / W - 1 (the pixel's corner, not its centre) and
        pybullet flips rows, so the principal point is (W / 2, H / 2 - 1), not ((W - 1) / 2, (H - 1) / 2). Checked in
        tests: unprojecting depth with these puts the table plane at z = 0 to within micrometres.
        """
        fy = 0.5 * self.height / math.tan(math.radians(self.fov_deg) / 2)
        return {"fx": fy, "fy": fy, "cx": self.width / 2, "cy": self.height / 2 - 1,
                "width": self.width, "height": self.height}


@dataclass
class LightSpec:
    direction: list[float]
    color: list[float]
    ambient: float
    diffuse: float
    specular: float
    shadow: bool = False


@dataclass
class TaskSpec:
    family: str
    target: int  # index into SceneSpec.objects
    reference: int | None  # the tray, the object to push toward or to stack on; None for reach
    instruction: str


@dataclass
class SceneSpec:
    objects: list[ObjectSpec]
    cameras: list[CameraSpec]
    light: LightSpec
    task: TaskSpec
    robot_q: list[float]  # initial arm joint angles (7)
    table_rgba: list[float]
    fps: float
    physics_hz: int
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneSpec:
        return cls(objects=[ObjectSpec(**o) for o in d["objects"]], cameras=[CameraSpec(**c) for c in d["cameras"]],
                   light=LightSpec(**d["light"]), task=TaskSpec(**d["task"]), robot_q=list(d["robot_q"]),
                   table_rgba=list(d["table_rgba"]), fps=float(d["fps"]), physics_hz=int(d["physics_hz"]),
                   seed=int(d["seed"]), extra=dict(d.get("extra", {})))

    def camera(self, name: str) -> CameraSpec:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"camera {name!r} not in scene (have {[c.name for c in self.cameras]})")


# -- cameras ---------------------------------------------------------------------------------------------------------

# Static views of the workspace (eye, target, up, vertical fov). "front" faces the robot across the table; "side" looks
# along +y; "top" looks straight down with the robot at the bottom of the image; "oblique" is a corner view. Oblique
# views make motion along every world axis visible in the image, which later latent-action learning relies on.
_STATIC_CAMERAS: dict[str, tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], float]] = {
    "front": ((0.98, 0.0, 0.45), (0.42, 0.0, 0.06), (0.0, 0.0, 1.0), 55.0),
    "side": ((0.52, -0.72, 0.42), (0.50, 0.0, 0.05), (0.0, 0.0, 1.0), 55.0),
    "top": ((0.50, 0.0, 1.15), (0.50, 0.0, 0.0), (1.0, 0.0, 0.0), 40.0),
    "oblique": ((0.95, 0.58, 0.52), (0.46, 0.0, 0.05), (0.0, 0.0, 1.0), 55.0),
}
# Wrist camera in the panda_hand frame (z along the fingers, fingers close along y): behind and above the fingers,
# looking down past them.
_WRIST_CAMERA = ((0.09, 0.0, 0.0), (0.0, 0.0, 0.30), (1.0, 0.0, 0.0), 75.0)


def make_camera(name: str, width: int, height: int, rng: np.random.Generator | None = None,
                jitter_m: float = 0.0) -> CameraSpec:
    """A camera by name; static cameras get a uniform per-episode jitter of eye (± jitter_m) and target (± half)."""
    if name == "wrist":
        eye, target, up, fov = _WRIST_CAMERA
        return CameraSpec(name=name, eye=list(eye), target=list(target), up=list(up), fov_deg=fov, near=0.01, far=3.0,
                          width=width, height=height, mount="panda_hand")
    if name not in _STATIC_CAMERAS:
        raise ValueError(f"camera: unknown name {name!r} (known: {', '.join(CAMERA_NAMES)})")
    eye_t, target_t, up, fov = _STATIC_CAMERAS[name]
    eye, target = np.asarray(eye_t, dtype=float), np.asarray(target_t, dtype=float)
    if rng is not None and jitter_m > 0:
        eye = eye + rng.uniform(-jitter_m, jitter_m, 3)
        target = target + rng.uniform(-jitter_m / 2, jitter_m / 2, 3)
        fov = fov + float(rng.uniform(-2.0, 2.0))
    return CameraSpec(name=name, eye=[float(v) for v in eye], target=[float(v) for v in target],
                      up=[float(v) for v in up], fov_deg=float(fov), near=0.05, far=3.0, width=width, height=height)


# -- sampling --------------------------------------------------------------------------------------------------------


def sample_object(rng: np.random.Generator, shape: str, color: str) -> ObjectSpec:
    """Shape, size, colour and mass of one object; the pose is filled in by ``place_objects``."""
    if shape == "cube":
        side = float(rng.uniform(0.035, 0.055))
        size = [side, side, side]
    elif shape == "cylinder":
        radius, height = float(rng.uniform(0.018, 0.027)), float(rng.uniform(0.04, 0.075))
        size = [2 * radius, 2 * radius, height]
    elif shape == "sphere":
        radius = float(rng.uniform(0.02, 0.03))
        size = [2 * radius] * 3
    else:
        raise ValueError(f"shape: unknown {shape!r} (known: {', '.join(SHAPES)})")
    base = np.asarray(COLORS[color])
    rgb = np.clip(base + rng.uniform(-0.05, 0.05, 3), 0.0, 1.0)
    volume = size[0] * size[1] * size[2] * {"cube": 1.0, "cylinder": math.pi / 4, "sphere": math.pi / 6}[shape]
    density = float(rng.uniform(400.0, 700.0))  # kg/m^3: light wood / plastic
    return ObjectSpec(name=f"{color} {shape}", shape=shape, category=shape, color=color,
                      rgba=[float(v) for v in rgb] + [1.0], size_m=size, mass_kg=float(volume * density),
                      position=[0.0, 0.0, size[2] / 2], orientation=[0.0, 0.0, 0.0, 1.0],
                      lateral_friction=float(rng.uniform(0.8, 1.0)))


def make_tray(rng: np.random.Generator) -> ObjectSpec:
    side = float(rng.uniform(0.17, 0.21))
    grey = float(rng.uniform(0.25, 0.45))
    return ObjectSpec(name="tray", shape="tray", category="container", color="grey",
                      rgba=[grey, grey, grey + 0.05, 1.0], size_m=[side, side, TRAY_WALL_HEIGHT_M], mass_kg=0.0,
                      position=[0.0, 0.0, 0.0], orientation=[0.0, 0.0, 0.0, 1.0])


def place_objects(rng: np.random.Generator, objects: list[ObjectSpec], max_tries: int = 200) -> bool:
    """Non-overlapping random poses in the workspace (in place), largest first. False if no placement was found."""
    (x_lo, x_hi), (y_lo, y_hi) = WORKSPACE_XY
    placed: list[tuple[float, float, float]] = []
    for obj in sorted(objects, key=lambda o: -o.footprint_radius_m):
        radius = obj.footprint_radius_m
        for _ in range(max_tries):
            x, y = float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi))
            if all(math.hypot(x - px, y - py) > radius + pr + MIN_GAP_M for px, py, pr in placed):
                break
        else:
            return False
        placed.append((x, y, radius))
        if obj.shape == "cube":
            yaw = float(rng.uniform(-math.pi, math.pi))
        elif obj.shape == "tray":
            yaw = float(rng.uniform(-0.4, 0.4))
        else:  # cylinders and spheres: symmetric about z
            yaw = 0.0
        obj.position = [x, y, 0.0 if obj.shape == "tray" else obj.size_m[2] / 2 + 1e-4]
        obj.orientation = [0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)]
    return True


def sample_light(rng: np.random.Generator, shadow: bool = False) -> LightSpec:
    azimuth = float(rng.uniform(-math.pi, math.pi))
    elevation = float(rng.uniform(math.radians(35), math.radians(80)))
    direction = [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]
    tint = rng.uniform(0.8, 1.0, 3)
    return LightSpec(direction=direction, color=[float(v) for v in tint / tint.max()],
                     ambient=float(rng.uniform(0.45, 0.65)), diffuse=float(rng.uniform(0.35, 0.55)),
                     specular=float(rng.uniform(0.0, 0.1)), shadow=shadow)


def yaw_of_quat(q: np.ndarray | list[float]) -> float:
    """Yaw (rotation about world z) of a quaternion [x, y, z, w], from the rotated x axis."""
    x, y, z, w = (float(v) for v in q)
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def quat_to_matrix(q: np.ndarray | list[float]) -> np.ndarray:
    x, y, z, w = (float(v) for v in q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
