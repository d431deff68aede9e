"""Synthetic trajectories from real start frames: what to try (action proposals), what it is for (the subgoal), and
the episode a rollout becomes. Used by the ``rollout`` stage; plain numpy, no Ray, no model.

    plan = plan_rollouts(parent, count=4, horizon=8, mix={"demo_perturbed": .5, "scripted": .25, "uniform": .25}, seed=s)
    actions = propose(parent, plan[0], horizon)        # (K, A) in the robot's units, inside its action bounds
    episode = synthetic_episode(parent, plan[0], actions, frames, depth, checkpoint)

Proposals (``recipe["proposal"]``):
    demo_perturbed  the parent's own next K actions plus Gaussian noise of ``scale`` x the half-range of each action
                    dim (scale 0 replays the demonstration: the trajectory that should pass)
    scripted        a straight move of the end effector toward a named object of the scene (the task's target or a
                    distractor, from ``meta["objects"]`` and the object poses), gripper held: on-task or off-task
    uniform         actions drawn uniformly within the action bounds (off-task, for the evaluators' failures)

The subgoal of a trajectory is what the demonstration reached ``horizon`` frames after the start: its end-effector
position, every object's position (simulator episodes) and its progress through the task, with the name of the
demonstration's phase at the start (``meta["subgoals"]``). A synthetic episode has the parent's cameras, image size,
state and action names, so it shares the parent's LeRobot schema; its state holds the commanded end-effector pose
(integrated from the start) and the rest of the start state (``meta["state_source"] = "commanded"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from episodes import Episode

PROPOSALS = ("demo_perturbed", "scripted", "uniform")
HOVER_M = 0.06  # scripted moves aim this far above an object's centre
EE_DIMS = ("ee_x", "ee_y", "ee_z")


def action_bounds(parent: Episode) -> tuple[np.ndarray, np.ndarray]:
    """Per-step (low, high) of the parent's actions: ``meta["action_space"]``, else the range the parent used."""
    space = parent.meta.get("action_space") or {}
    if "low" in space and "high" in space:
        return np.asarray(space["low"], np.float32), np.asarray(space["high"], np.float32)
    return parent.action.min(0), parent.action.max(0)


def ee_index(parent: Episode) -> list[int] | None:
    names = list(parent.meta.get("state_names") or [])
    return [names.index(n) for n in EE_DIMS] if parent.state is not None and all(n in names for n in EE_DIMS) else None


def object_positions(parent: Episode, frame: int) -> np.ndarray | None:
    poses = parent.extras.get("object_poses")
    return None if poses is None else np.asarray(poses[frame][:, :3], np.float64)


def plan_rollouts(parent: Episode, count: int, horizon: int, mix: dict[str, float], seed: int,
                  scales: list[float]) -> list[dict[str, Any]]:
    """``count`` recipes: start frame, proposal, its settings and a seed, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    names = [n for n in mix if mix[n] > 0 and (n != "scripted" or _can_script(parent))]
    weights = np.array([mix[n] for n in names], np.float64)
    plans = []
    for k in range(count):
        proposal = names[rng.choice(len(names), p=weights / weights.sum())]
        recipe: dict[str, Any] = {"proposal": proposal, "start_frame": int(rng.integers(0, parent.num_frames - horizon)),
                                  "seed": int(rng.integers(2**31)), "index": k}
        if proposal == "demo_perturbed":
            recipe["scale"] = float(scales[rng.integers(len(scales))])
        elif proposal == "scripted":
            objects = parent.meta["objects"]
            recipe["object"] = int(rng.integers(len(objects)))
            recipe["object_name"] = objects[recipe["object"]]["name"]
        plans.append(recipe)
    return plans


def _can_script(parent: Episode) -> bool:
    return bool(parent.meta.get("objects")) and "object_poses" in parent.extras and ee_index(parent) is not None


def propose(parent: Episode, recipe: dict[str, Any], horizon: int) -> np.ndarray:
    """(K, A) float32 actions for a recipe, clipped to the action bounds."""
    low, high = action_bounds(parent)
    rng = np.random.default_rng(recipe["seed"])
    t0 = recipe["start_frame"]
    if recipe["proposal"] == "demo_perturbed":
        actions = parent.action[t0:t0 + horizon].astype(np.float64)
        actions = actions + rng.normal(size=actions.shape) * recipe["scale"] * (high - low) / 2
    elif recipe["proposal"] == "scripted":
        ee = parent.state[t0, ee_index(parent)].astype(np.float64)
        goal = object_positions(parent, t0)[recipe["object"]] + np.array([0.0, 0.0, HOVER_M])
        steps = int(rng.integers(max(1, horizon // 2), horizon + 1))  # how fast: arrive within `steps` frames
        actions = np.zeros((horizon, len(low)))
        actions[:, :3] = (goal - ee) / steps
        actions[steps:, :3] = 0.0
        actions[:, 3:] = parent.action[t0, 3:]  # yaw rate 0 below, gripper held
        actions[:, 3] = 0.0
    elif recipe["proposal"] == "uniform":
        actions = rng.uniform(low, high, size=(horizon, len(low)))
    else:
        raise ValueError(f"proposal: unknown {recipe['proposal']!r} (known: {', '.join(PROPOSALS)})")
    return np.clip(actions, low, high).astype(np.float32)


def subgoal(parent: Episode, start: int, horizon: int) -> dict[str, Any]:
    """What the demonstration reached ``horizon`` frames after ``start``."""
    goal = min(start + horizon, parent.num_frames - 1)
    phase = next((s["name"] for s in parent.meta.get("subgoals") or [] if s["start"] <= start < s["end"]), "continue")
    index = ee_index(parent)
    objects = object_positions(parent, goal)
    return {"name": phase, "goal_frame": goal, "progress": round(goal / max(1, parent.num_frames - 1), 4),
            "ee_xyz": None if index is None else parent.state[goal, index].astype(float).round(5).tolist(),
            "objects_xyz": None if objects is None else objects.round(5).tolist(),
            "target_object": parent.meta.get("target_object")}


def commanded_state(parent: Episode, start: int, actions: np.ndarray) -> np.ndarray | None:
    """(K + 1, S) states: the start state with the end-effector pose moved by the commanded deltas."""
    if parent.state is None:
        return None
    state = np.repeat(parent.state[start:start + 1], len(actions) + 1, axis=0).astype(np.float32)
    names = list(parent.meta.get("state_names") or [])
    for dim, name in enumerate(("ee_x", "ee_y", "ee_z", "ee_yaw")):
        if name in names and dim < actions.shape[1]:
            state[1:, names.index(name)] += np.cumsum(actions[:, dim])
    return state


def restore_rows(parent: Episode, frame: int, keys: list[str]) -> dict[str, list] | None:
    """The simulator state at ``frame`` (what ``pipeline.sim.replay`` restores), for simulator parents."""
    if not keys or any(k not in parent.extras for k in keys):
        return None
    return {k: np.asarray(parent.extras[k][frame]).tolist() for k in keys}


def synthetic_episode(parent: Episode, recipe: dict[str, Any], actions: np.ndarray, rgb: dict[str, np.ndarray],
                      depth_m: dict[str, np.ndarray], provenance: dict[str, Any], horizon: int) -> Episode:
    """The episode of one rollout: frame 0 is the parent's real start frame, 1..K the model's (``rgb`` / ``depth_m``:
    (K, H, W, 3) / (K, H, W) at the parent's size). ``provenance`` adds e.g. the checkpoint."""
    t0 = recipe["start_frame"]
    meta = {k: v for k, v in parent.meta.items() if k not in ("subgoals", "success", "episode_index", "pseudo_label")}
    sim = parent.meta.get("sim") or {}
    meta.update(
        source="synthetic", action_source="synthetic", parent=parent.episode_id, start_frame=t0,
        recipe=recipe, instruction=parent.task, subgoal=subgoal(parent, t0, horizon), fps=parent.fps,
        state_source="commanded", parent_action_source=parent.meta.get("action_source", "real"), **provenance)
    replay = restore_rows(parent, t0, list(sim.get("restore_extras") or []))
    if replay is not None:
        meta["replay"] = {"frame": t0, "state": replay}
    cams = {cam: np.concatenate([parent.rgb[cam][t0:t0 + 1], frames]) for cam, frames in rgb.items()}
    depths = {cam: np.concatenate([parent.depth_m[cam][t0:t0 + 1], d]).astype(np.float32) for cam, d in depth_m.items()}
    hold = np.concatenate([np.zeros(actions.shape[1] - 1, np.float32), actions[-1:, -1]])[None]
    return Episode(episode_id=f"{parent.episode_id}-syn{recipe['index']:03d}", fps=parent.fps, task=parent.task,
                   rgb=cams, depth_m=depths, state=commanded_state(parent, t0, actions),
                   action=np.concatenate([actions, hold]).astype(np.float32), meta=meta)

