"""Task families of the tabletop simulator: scene sampling, language instructions, scripted policies, success checks.

Families (``TASK_FAMILIES``):
    pick_place  "pick up the red cube and place it in the tray"   target: a cube or cylinder; reference: the tray
    push        "push the blue cylinder toward the green cube"     target: a cube or cylinder; reference: any object
    stack       "stack the red cube on the yellow cube"            target: a cube; reference: a cube or a cylinder
    reach       "reach to the purple sphere"                       target: any object; the gripper hovers above it

Scripted policies are waypoint controllers over the env's action space (see ``pipeline.sim.tabletop``): each phase has a
goal (end-effector xyz + yaw, fixed when the phase starts from the observation at that moment), a gripper command, a
speed and a tolerance. The policy emits ``[dx, dy, dz, dyaw, gripper]`` that move the env's commanded end-effector
target toward the goal at the phase's speed; a phase ends when the measured end effector is within tolerance of the goal
and any hold time (gripper closing, opening) has passed, or after its timeout. Each phase carries a subgoal name
("approach", "grasp", "lift", "transport", "release", "retreat", "push", "hover"), recorded as ``meta["subgoals"]``.

Grasping is physical (friction between the Panda's finger pads and the object under a 40 N finger force); there is no
grasp constraint. Success checks read only object poses, the end-effector position and whether the gripper touches the
target, so they hold for any policy, scripted or learned.

This module is pure numpy (no pybullet) and cheap to import.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.sim.spec import (
    COLORS,
    EE_TARGET_BOUNDS,
    PANDA_REST_Q,
    SHAPES,
    TASK_FAMILIES,
    ObjectSpec,
    SceneSpec,
    TaskSpec,
    action_limits,
    make_camera,
    make_tray,
    place_objects,
    sample_light,
    sample_object,
    yaw_of_quat,
)

Goal = tuple[np.ndarray, float]  # (xyz (3,), yaw)

_INSTRUCTIONS = {
    "pick_place": ("pick up the {t} and place it in the tray", "put the {t} in the tray", "move the {t} into the tray"),
    "push": ("push the {t} toward the {r}", "slide the {t} to the {r}", "push the {t} next to the {r}"),
    "stack": ("stack the {t} on the {r}", "put the {t} on top of the {r}", "place the {t} on the {r}"),
    "reach": ("reach to the {t}", "move the gripper above the {t}", "reach toward the {t}"),
}

HOVER_HEIGHT_M = 0.05  # reach: gripper point above the target's top
SAFE_HEIGHT_M = 0.16  # transport height of the gripper point


# -- geometry helpers ------------------------------------------------------------------------------------------------


def wrap_angle(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def grasp_yaw(obj: ObjectSpec, quat: np.ndarray) -> float:
    """Gripper yaw that closes the fingers on two opposite faces: a cube's yaw modulo 90 degrees, in [-45, 45]."""
    if obj.shape != "cube":
        return 0.0
    return (yaw_of_quat(quat) + math.pi / 4) % (math.pi / 2) - math.pi / 4


def half_width(obj: ObjectSpec) -> float:
    return 0.5 * max(obj.size_m[0], obj.size_m[1])


def _top_z(obj: ObjectSpec, pose: np.ndarray) -> float:
    return float(pose[2]) + 0.5 * obj.size_m[2]


def _grasp_z(obj: ObjectSpec, pose: np.ndarray) -> float:
    """Height of the gripper point (between the finger pads) when grasping: the centre, at most 2 cm below the top."""
    return float(np.clip(max(float(pose[2]), _top_z(obj, pose) - 0.02), EE_TARGET_BOUNDS[2][0] + 0.005, 1.0))


def _upright(quat: np.ndarray, tol_rad: float = 0.35) -> bool:
    """The object's z axis is within tol of world z (a cube may rest on any face)."""
    x, y, _, _ = (float(v) for v in quat)
    return 1 - 2 * (x * x + y * y) > math.cos(tol_rad)


def _resting_face_up(obj: ObjectSpec, quat: np.ndarray) -> bool:
    if obj.shape == "cube":
        rot_zz = np.abs(_rot_columns_z(quat))
        return float(rot_zz.max()) > math.cos(0.35)
    return obj.shape == "sphere" or _upright(quat)


def _rot_columns_z(quat: np.ndarray) -> np.ndarray:
    """World-z components of the object's three axes."""
    x, y, z, w = (float(v) for v in quat)
    return np.array([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)])


# -- success ---------------------------------------------------------------------------------------------------------


@dataclass
class TaskState:
    """What a success check may read at one frame."""

    object_poses: np.ndarray  # (K, 7) xyz + quaternion xyzw, same order as SceneSpec.objects
    ee_position: np.ndarray  # (3,) gripper point
    gripper_touches_target: bool


def check_success(scene: SceneSpec, state: TaskState) -> bool:
    task, objects, poses = scene.task, scene.objects, state.object_poses
    target, pose = objects[task.target], poses[task.target]
    if task.family == "reach":
        goal = np.array([pose[0], pose[1], _top_z(target, pose) + HOVER_HEIGHT_M])
        offset = state.ee_position - goal
        return bool(np.hypot(offset[0], offset[1]) < 0.02 and abs(offset[2]) < 0.025)
    reference, ref_pose = objects[task.reference], poses[task.reference]
    if task.family == "pick_place":
        # Resting inside the tray's walls (in the tray frame), below the rim, and let go of.
        rel = pose[:3] - ref_pose[:3]
        yaw = yaw_of_quat(ref_pose[3:])
        local_x = math.cos(yaw) * rel[0] + math.sin(yaw) * rel[1]
        local_y = -math.sin(yaw) * rel[0] + math.cos(yaw) * rel[1]
        inner = 0.5 * reference.size_m[0] - 0.005
        inside = abs(local_x) < inner and abs(local_y) < inner
        low = rel[2] < 0.5 * target.size_m[2] + 0.02
        return bool(inside and low and not state.gripper_touches_target)
    if task.family == "stack":
        offset = pose[:3] - ref_pose[:3]
        on_top_z = 0.5 * (target.size_m[2] + reference.size_m[2])
        centred = math.hypot(offset[0], offset[1]) < half_width(reference)
        touching = abs(offset[2] - on_top_z) < 0.012
        ref_on_table = abs(ref_pose[2] - 0.5 * reference.size_m[2]) < 0.01 and _resting_face_up(reference, ref_pose[3:])
        return bool(centred and touching and ref_on_table and not state.gripper_touches_target)
    if task.family == "push":
        start = np.asarray(target.position[:2]) - np.asarray(reference.position[:2])
        gap = float(np.hypot(*(pose[:2] - ref_pose[:2]))) - half_width(target) - half_width(reference)
        moved_closer = float(np.hypot(*start)) - float(np.hypot(*(pose[:2] - ref_pose[:2]))) > 0.05
        on_table = abs(pose[2] - 0.5 * target.size_m[2]) < 0.01
        return bool(gap < 0.05 and moved_closer and on_table)
    raise ValueError(f"task family: unknown {task.family!r} (known: {', '.join(TASK_FAMILIES)})")


# -- sampling --------------------------------------------------------------------------------------------------------


def _choose_task(rng: np.random.Generator, family: str, objects: list[ObjectSpec]) -> TaskSpec | None:
    """Target and reference indices for ``family`` in a placed scene, or None if this scene does not allow it."""
    movable = [i for i, o in enumerate(objects) if o.shape != "tray"]
    tray = next((i for i, o in enumerate(objects) if o.shape == "tray"), None)
    target = reference = None
    if family == "reach":
        target = int(rng.choice(movable))
    elif family == "pick_place":
        options = [i for i in movable if objects[i].graspable]
        if tray is None or not options:
            return None
        target, reference = int(rng.choice(options)), tray
    elif family == "stack":
        # The lower object's top must be at least as wide as the cube, or the cube slides off a round edge.
        pairs = [(i, j) for i in movable for j in movable
                 if i != j and objects[i].shape == "cube" and objects[i].graspable
                 and objects[j].shape in ("cube", "cylinder") and objects[j].size_m[0] >= objects[i].size_m[0]]
        if not pairs:
            return None
        target, reference = (int(v) for v in pairs[int(rng.integers(len(pairs)))])
    elif family == "push":
        pairs = [(i, j) for i in movable for j in movable if i != j and objects[i].shape in ("cube", "cylinder")
                 and _push_clear(objects, i, j)]
        if not pairs:
            return None
        target, reference = (int(v) for v in pairs[int(rng.integers(len(pairs)))])
    else:
        raise ValueError(f"task family: unknown {family!r} (known: {', '.join(TASK_FAMILIES)})")
    template = _INSTRUCTIONS[family][int(rng.integers(len(_INSTRUCTIONS[family])))]
    ref_name = objects[reference].name if reference is not None else ""
    return TaskSpec(family=family, target=target, reference=reference,
                    instruction=template.format(t=objects[target].name, r=ref_name))


def _push_clear(objects: list[ObjectSpec], target: int, reference: int) -> bool:
    """The push starts behind the target and sweeps toward the reference: nothing else may be in that corridor."""
    t, r = np.asarray(objects[target].position[:2]), np.asarray(objects[reference].position[:2])
    dist = float(np.hypot(*(r - t)))
    if not 0.13 <= dist <= 0.32:
        return False
    direction = (r - t) / dist
    start = t - direction * (half_width(objects[target]) + 0.06)
    (x_lo, x_hi), (y_lo, y_hi), _, _ = EE_TARGET_BOUNDS
    if not (x_lo + 0.1 <= start[0] <= x_hi and y_lo <= start[1] <= y_hi):
        return False
    for k, obj in enumerate(objects):
        if k in (target, reference):
            continue
        p = np.asarray(obj.position[:2])
        along = float(np.clip(np.dot(p - start, direction), 0.0, dist))
        clearance = obj.footprint_radius_m + half_width(objects[target]) + 0.05
        if float(np.hypot(*(p - (start + along * direction)))) < clearance:
            return False
    return True


def sample_scene(seed: int, family: str, num_objects: int, cameras: list[str], width: int, height: int,
                 fps: float, physics_hz: int, camera_jitter_m: float = 0.02, shadow: bool = False,
                 rng: np.random.Generator | None = None) -> SceneSpec:
    """A random scene for ``family`` with ``num_objects`` objects (the tray comes on top when present).

    Objects get unique colours, so "the red cube" names exactly one object. Deterministic in ``seed`` (or ``rng``).
    """
    if family not in TASK_FAMILIES:
        raise ValueError(f"task family: unknown {family!r} (known: {', '.join(TASK_FAMILIES)})")
    if not 1 <= num_objects <= len(COLORS):
        raise ValueError(f"num_objects: expected 1..{len(COLORS)}, got {num_objects}")
    rng = rng if rng is not None else np.random.default_rng(seed)
    for _ in range(100):
        colors = [str(c) for c in rng.permutation(list(COLORS))[:num_objects]]
        shapes = [str(s) for s in rng.choice(SHAPES, size=num_objects, p=[0.45, 0.35, 0.2])]
        # Make sure the family has what it needs (the rest of the objects are random distractors).
        if family in ("pick_place", "stack", "push") and not any(s != "sphere" for s in shapes):
            shapes[0] = "cube"
        if family == "stack":
            shapes[0] = "cube"
            if num_objects > 1 and shapes[1] == "sphere":
                shapes[1] = "cube"
        objects = [sample_object(rng, shape, color) for shape, color in zip(shapes, colors)]
        if family == "pick_place" or (num_objects <= 4 and rng.random() < 0.3):
            objects.append(make_tray(rng))
        if not place_objects(rng, objects):
            continue
        task = _choose_task(rng, family, objects)
        if task is None:
            continue
        cams = [make_camera(name, width, height, rng, camera_jitter_m) for name in cameras]
        robot_q = [float(q) for q in np.asarray(PANDA_REST_Q) + rng.uniform(-0.08, 0.08, 7)]
        wood = rng.uniform(0.85, 1.1)
        table_rgba = [float(min(1.0, 0.62 * wood)), float(min(1.0, 0.48 * wood)), float(min(1.0, 0.34 * wood)), 1.0]
        return SceneSpec(objects=objects, cameras=cams, light=sample_light(rng, shadow), task=task, robot_q=robot_q,
                         table_rgba=table_rgba, fps=float(fps), physics_hz=int(physics_hz), seed=int(seed))
    raise RuntimeError(f"could not sample a feasible {family!r} scene with {num_objects} objects in 100 tries")


# -- scripted policies -----------------------------------------------------------------------------------------------


@dataclass
class Phase:
    subgoal: str
    goal: Callable[[dict], Goal]  # evaluated once, from the observation when the phase starts
    gripper: float  # 1 open, 0 closed
    speed_mps: float
    tol_m: float = 0.01
    hold_s: float = 0.0  # stay at the goal this long once reached (gripper closing / opening)
    timeout_s: float = 5.0


class ScriptedPolicy:
    """Waypoint controller: ``policy(obs) -> action``; ``done`` once the last phase has finished.

    ``subgoal`` is the subgoal name of the action last returned (None once done).
    """

    def __init__(self, phases: list[Phase], fps: float):
        self.phases = phases
        self.fps = fps
        self.low, self.high = action_limits(fps)
        self.index = -1
        self.goal: Goal | None = None
        self.steps_in_phase = 0
        self.steps_at_goal = 0
        self.subgoal: str | None = None
        self.last_gripper = 1.0

    @property
    def done(self) -> bool:
        return self.index >= len(self.phases)

    def _start_next(self, obs: dict) -> None:
        self.index += 1
        self.steps_in_phase = self.steps_at_goal = 0
        if not self.done:
            xyz, yaw = self.phases[self.index].goal(obs)
            lo, hi = np.array([b[0] for b in EE_TARGET_BOUNDS[:3]]), np.array([b[1] for b in EE_TARGET_BOUNDS[:3]])
            self.goal = (np.clip(np.asarray(xyz, dtype=float), lo, hi),
                         float(np.clip(yaw, EE_TARGET_BOUNDS[3][0], EE_TARGET_BOUNDS[3][1])))

    def _phase_finished(self, obs: dict) -> bool:
        phase = self.phases[self.index]
        if self.steps_in_phase >= max(1, round(phase.timeout_s * self.fps)):
            return True
        target = np.asarray(obs["ee_target"], dtype=float)
        goal_xyz, goal_yaw = self.goal
        at_goal = (np.linalg.norm(target[:3] - goal_xyz) < 1e-6 and abs(wrap_angle(target[3] - goal_yaw)) < 1e-6
                   and np.linalg.norm(np.asarray(obs["ee_pose"][:3]) - goal_xyz) < phase.tol_m)
        self.steps_at_goal = self.steps_at_goal + 1 if at_goal else 0
        return at_goal and self.steps_at_goal > round(phase.hold_s * self.fps)

    def __call__(self, obs: dict) -> np.ndarray:
        if self.index < 0:
            self._start_next(obs)
        while not self.done and self._phase_finished(obs):
            self._start_next(obs)
        if self.done:
            self.subgoal = None
            return np.array([0, 0, 0, 0, self.last_gripper], dtype=np.float32)
        phase = self.phases[self.index]
        self.steps_in_phase += 1
        target = np.asarray(obs["ee_target"], dtype=float)
        goal_xyz, goal_yaw = self.goal
        delta = goal_xyz - target[:3]
        max_step = min(phase.speed_mps / self.fps, float(self.high[0]))
        norm = float(np.linalg.norm(delta))
        if norm > max_step:
            delta *= max_step / norm
        dyaw = float(np.clip(wrap_angle(goal_yaw - target[3]), self.low[3], self.high[3]))
        self.subgoal = phase.subgoal
        self.last_gripper = phase.gripper
        action = np.array([*delta, dyaw, phase.gripper], dtype=np.float32)
        return np.clip(action, self.low, self.high)


def make_policy(scene: SceneSpec, fps: float, rng: np.random.Generator | None = None) -> ScriptedPolicy:
    """The scripted policy for ``scene.task``; ``rng`` varies speeds and heights a little between episodes."""
    rng = rng if rng is not None else np.random.default_rng(0)
    task, objects = scene.task, scene.objects
    target = objects[task.target]
    speed = float(rng.uniform(0.8, 1.2))  # per-episode speed factor
    above = float(rng.uniform(0.06, 0.10))  # approach height above the object's top

    def pose(obs: dict, index: int) -> np.ndarray:
        return np.asarray(obs["object_poses"][index], dtype=float)

    def ee(obs: dict) -> Goal:
        t = np.asarray(obs["ee_target"], dtype=float)
        return t[:3], float(t[3])

    def above_target(obs: dict) -> Goal:
        p = pose(obs, task.target)
        return np.array([p[0], p[1], _top_z(target, p) + above]), grasp_yaw(target, p[3:])

    def at_grasp(obs: dict) -> Goal:
        p = pose(obs, task.target)
        return np.array([p[0], p[1], _grasp_z(target, p)]), grasp_yaw(target, p[3:])

    def lifted(obs: dict) -> Goal:
        xyz, yaw = ee(obs)
        return np.array([xyz[0], xyz[1], SAFE_HEIGHT_M]), yaw

    def retreat(obs: dict) -> Goal:
        xyz, yaw = ee(obs)
        return np.array([xyz[0], xyz[1], min(xyz[2] + 0.08, SAFE_HEIGHT_M + 0.04)]), yaw

    pick = [
        Phase("approach", above_target, 1.0, 0.40 * speed, tol_m=0.02),
        Phase("approach", at_grasp, 1.0, 0.20 * speed, tol_m=0.008),
        Phase("grasp", ee, 0.0, 0.1, tol_m=0.02, hold_s=0.4),
        Phase("lift", lifted, 0.0, 0.25 * speed, tol_m=0.03),
    ]

    if task.family == "reach":
        def hover(obs: dict) -> Goal:
            p = pose(obs, task.target)
            return np.array([p[0], p[1], _top_z(target, p) + HOVER_HEIGHT_M]), grasp_yaw(target, p[3:])

        phases = [Phase("approach", hover, 1.0, 0.35 * speed, tol_m=0.01),
                  Phase("hover", ee, 1.0, 0.1, tol_m=0.015, hold_s=0.3)]
    elif task.family in ("pick_place", "stack"):
        reference = objects[task.reference]

        def place_xy_yaw(obs: dict) -> tuple[np.ndarray, float]:
            """Gripper xy and yaw to place with: centred over the reference. (The grasp centres the object between
            the fingers to within a millimetre; measuring its offset in the hand while the arm moves only adds the
            object's swing.)"""
            r = pose(obs, task.reference)
            _, yaw = ee(obs)
            if task.family == "stack" and reference.shape == "cube":
                # Turn the held cube so its faces line up with the cube below (the grasp fixed it in the hand).
                held_yaw_offset = wrap_angle(yaw_of_quat(pose(obs, task.target)[3:]) - yaw)
                yaw = (yaw_of_quat(r[3:]) - held_yaw_offset + math.pi / 4) % (math.pi / 2) - math.pi / 4
            return r[:2], yaw

        def over_place(obs: dict) -> Goal:
            xy, yaw = place_xy_yaw(obs)
            return np.array([xy[0], xy[1], SAFE_HEIGHT_M]), yaw

        def at_place(obs: dict) -> Goal:
            xy, yaw = place_xy_yaw(obs)
            held = pose(obs, task.target)
            below_grip = float(obs["ee_pose"][2]) - held[2]  # gripper point above the held object's centre
            r = pose(obs, task.reference)
            if task.family == "stack":
                bottom = _top_z(reference, r) + 0.005  # release just above the lower object
            else:
                bottom = r[2] + 0.008 + 0.015  # tray floor + clearance
            return np.array([xy[0], xy[1], bottom + 0.5 * target.size_m[2] + below_grip]), yaw

        phases = pick + [
            Phase("transport", over_place, 0.0, 0.35 * speed, tol_m=0.02),
            Phase("transport", at_place, 0.0, 0.15 * speed, tol_m=0.008),
            Phase("release", ee, 1.0, 0.1, tol_m=0.02, hold_s=0.3),
            Phase("retreat", retreat, 1.0, 0.3 * speed, tol_m=0.03),
        ]
    elif task.family == "push":
        reference = objects[task.reference]
        t0, r0 = np.asarray(target.position[:2]), np.asarray(reference.position[:2])
        direction = (r0 - t0) / float(np.hypot(*(r0 - t0)))
        push_yaw = wrap_angle(math.atan2(direction[1], direction[0]))  # hand x along the push: fingers side by side
        push_yaw = (push_yaw + math.pi / 2) % math.pi - math.pi / 2
        push_z = float(np.clip(0.5 * target.size_m[2], 0.02, 0.03))
        contact = half_width(target) + 0.012  # gripper point behind the target's centre when touching it
        final_centre = r0 - direction * (half_width(target) + half_width(reference) + 0.015)

        def behind(obs: dict, height: float) -> Goal:
            p = pose(obs, task.target)
            start = p[:2] - direction * (contact + 0.04)
            return np.array([start[0], start[1], height]), push_yaw

        def pushed(obs: dict) -> Goal:
            end = final_centre - direction * contact
            return np.array([end[0], end[1], push_z]), push_yaw

        phases = [
            Phase("approach", lambda obs: behind(obs, push_z + above), 0.0, 0.40 * speed, tol_m=0.02),
            Phase("approach", lambda obs: behind(obs, push_z), 0.0, 0.20 * speed, tol_m=0.01),
            Phase("push", pushed, 0.0, 0.12 * speed, tol_m=0.015),
            Phase("retreat", retreat, 0.0, 0.3 * speed, tol_m=0.03),
        ]
    else:
        raise ValueError(f"task family: unknown {task.family!r} (known: {', '.join(TASK_FAMILIES)})")
    return ScriptedPolicy(phases, fps)


__all__ = ["Phase", "ScriptedPolicy", "TaskState", "check_success", "grasp_yaw", "make_policy", "sample_scene"]
