"""The pybullet tabletop simulator: recorded episodes, scripted task families, camera geometry, restore/replay, gym API.

Tiny configs (32x32 or 64x64 images, one camera) keep the whole file well under a minute on one core.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pybullet")

from episodes import Episode  # noqa: E402
from pipeline.sim import TASK_FAMILIES, TabletopConfig, TabletopEnv, generate_episode  # noqa: E402
from pipeline.sim.spec import ACTION_NAMES, STATE_NAMES, action_limits  # noqa: E402

TINY = TabletopConfig(width=32, height=32, max_steps=70)
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def episodes() -> dict[str, list[Episode]]:
    """Three seeds of every task family at 32x32 (about 8 s)."""
    return {task: [generate_episode(seed, task, TINY) for seed in SEEDS] for task in TASK_FAMILIES}


def _arrays(episode: Episode) -> dict[str, np.ndarray]:
    out = {"state": episode.state, "action": episode.action}
    for prefix in ("rgb", "depth_m", "segmentation", "extras"):
        out.update({f"{prefix}.{k}": v for k, v in getattr(episode, prefix).items()})
    return out


def test_same_seed_gives_bitwise_identical_episode():
    a = generate_episode(11, "push", TINY)
    b = generate_episode(11, "push", TINY)
    c = generate_episode(12, "push", TINY)
    arrays_a, arrays_b = _arrays(a), _arrays(b)
    assert arrays_a.keys() == arrays_b.keys()
    for key in arrays_a:
        assert arrays_a[key].dtype == arrays_b[key].dtype and np.array_equal(arrays_a[key], arrays_b[key]), key
    assert json.dumps(a.meta, sort_keys=True) == json.dumps(b.meta, sort_keys=True)
    assert not np.array_equal(a.rgb["front"][0], c.rgb["front"][0])  # a different seed is a different scene


def test_episode_shapes_dtypes_and_meta(episodes, tmp_path):
    episode = episodes["pick_place"][0]
    episode.validate()
    num_frames, (h, w) = episode.num_frames, (TINY.height, TINY.width)
    num_objects = len(episode.meta["objects"])
    assert 2 + 1 <= num_objects <= 6 + 1  # objects plus the tray
    assert episode.rgb["front"].shape == (num_frames, h, w, 3) and episode.rgb["front"].dtype == np.uint8
    assert episode.depth_m["front"].shape == (num_frames, h, w) and episode.depth_m["front"].dtype == np.float32
    assert episode.segmentation["front"].shape == (num_frames, h, w)
    assert episode.segmentation["front"].dtype == np.int32
    assert episode.state.shape == (num_frames, len(STATE_NAMES)) and episode.state.dtype == np.float32
    assert episode.action.shape == (num_frames, 5) and episode.action.dtype == np.float32
    expected_extras = {"ee_pose": (7,), "joint_pos": (9,), "joint_vel": (9,), "gripper_width": (),
                       "object_poses": (num_objects, 7), "object_vel": (num_objects, 6), "ee_target": (4,)}
    for key, shape in expected_extras.items():
        assert episode.extras[key].shape == (num_frames, *shape), key

    meta = episode.meta
    json.dumps(meta)  # JSON-serialisable
    assert meta["source"] == "generate_tabletop" and meta["seed"] == 0 and meta["parent"] is None
    assert meta["task_family"] == "pick_place" and "tray" in episode.task
    assert meta["state_names"] == list(STATE_NAMES) and meta["action_names"] == list(ACTION_NAMES)
    cam = meta["cameras"]["front"]
    assert set(cam["intrinsics"]) == {"fx", "fy", "cx", "cy", "width", "height"}
    assert np.asarray(cam["cam_to_world"]).shape == (4, 4) and cam["near"] < cam["far"]
    body_ids = {o["body_id"] for o in meta["objects"]}
    assert body_ids <= set(np.unique(episode.segmentation["front"]).tolist()) | body_ids  # ids are pybullet ids
    for obj in meta["objects"]:
        assert {"name", "body_id", "shape", "color", "size_m", "category"} <= obj.keys() and len(obj["size_m"]) == 3
    assert len({o["name"] for o in meta["objects"]}) == num_objects  # names are unambiguous
    names = [s["name"] for s in meta["subgoals"]]
    assert names == ["approach", "grasp", "lift", "transport", "release", "retreat"]
    bounds = [(s["start"], s["end"]) for s in meta["subgoals"]]
    assert bounds[0][0] == 0 and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert bounds[-1][1] <= num_frames - 1
    assert {"scene", "config", "physics_hz", "restore_extras"} <= meta["sim"].keys()

    # Actions obey the action space; the last row is a hold; the gripper closes during "grasp" and opens at "release".
    low, high = action_limits(TINY.fps)
    assert (episode.action >= low - 1e-6).all() and (episode.action <= high + 1e-6).all()
    np.testing.assert_array_equal(episode.action[-1, :4], 0.0)
    grasp = next(s for s in meta["subgoals"] if s["name"] == "grasp")
    assert (episode.action[grasp["start"]:grasp["end"], 4] == 0).all()
    assert episode.extras["gripper_width"][grasp["end"]] < 0.07  # fingers stopped on the object, not fully open
    assert episode.extras["gripper_width"][0] > 0.075

    path = episode.save(tmp_path / "ep.npz")
    loaded = Episode.load(path)
    for key, arr in _arrays(episode).items():
        np.testing.assert_array_equal(_arrays(loaded)[key], arr)


@pytest.mark.parametrize("task", TASK_FAMILIES)
def test_scripted_policy_succeeds_in_most_seeds(episodes, task):
    successes = [ep.meta["success"] for ep in episodes[task]]
    assert sum(successes) >= 2, f"{task}: success {successes} over seeds {SEEDS}"
    for ep in episodes[task]:
        assert ep.meta["task_family"] == task and ep.meta["scripted_policy_finished"]


@pytest.mark.parametrize("task", ["pick_place", "stack", "push"])
def test_success_is_not_trivially_true(episodes, task):
    """At frame 0 the target object is where it started: the check must fail there and pass at the end."""
    episode = next(ep for ep in episodes[task] if ep.meta["success"])
    env = TabletopEnv.from_episode_meta(episode.meta)
    try:
        _, info_start = env.restore(episode.meta, episode.extras, 0)
        _, info_end = env.restore(episode.meta, episode.extras, episode.num_frames - 1)
    finally:
        env.close()
    assert not info_start["success"] and info_end["success"]


def test_moving_tasks_move_the_target(episodes):
    for task in ("pick_place", "stack", "push"):
        for ep in episodes[task]:
            target = ep.meta["target_object"]
            poses = ep.extras["object_poses"][:, target, :3]
            assert np.linalg.norm(poses[-1, :2] - poses[0, :2]) > 0.05, task
    for task in ("pick_place", "stack"):  # the target was lifted off the table on the way
        for ep in episodes[task]:
            if ep.meta["success"]:
                z = ep.extras["object_poses"][:, ep.meta["target_object"], 2]
                assert z.max() - z[0] > 0.05, task


def _unproject(depth: np.ndarray, cam: dict) -> np.ndarray:
    """(H, W) depth -> (H, W, 3) world points with the recorded OpenCV intrinsics and cam_to_world."""
    k = cam["intrinsics"]
    v, u = np.mgrid[0:depth.shape[0], 0:depth.shape[1]]
    points = np.stack([(u - k["cx"]) * depth / k["fx"], (v - k["cy"]) * depth / k["fy"], depth, np.ones_like(depth)],
                      axis=-1)
    return (points @ np.asarray(cam["cam_to_world"]).T)[..., :3]


@pytest.mark.parametrize("camera", ["front", "oblique", "top"])
def test_depth_and_calibration_match_geometry(camera):
    """Unprojected depth lands on the table plane (z = 0) and on the top faces of the objects the segmentation names."""
    config = TabletopConfig(width=64, height=64, cameras=(camera,), max_steps=2)
    episode = generate_episode(4, "reach", config)
    depth, seg, cam = episode.depth_m[camera][0], episode.segmentation[camera][0], episode.meta["cameras"][camera]
    world = _unproject(depth, cam)
    table = (seg == episode.meta["sim"]["body_ids"]["table"]) & (depth > 0)
    assert table.sum() > 200
    assert np.abs(world[table][:, 2]).max() < 5e-4  # the z-buffer is exact; so are the recorded intrinsics
    checked = 0
    for i, obj in enumerate(episode.meta["objects"]):
        pose = episode.extras["object_poses"][0, i]
        mask = seg == obj["body_id"]
        if obj["shape"] not in ("cube", "cylinder") or mask.sum() < 4:
            continue
        pts = world[mask]
        top = pose[2] + obj["size_m"][2] / 2
        # Every pixel of the object is inside its bounding cylinder, and its highest points are its top face.
        radius = 0.5 * np.hypot(*obj["size_m"][:2])
        assert (np.hypot(pts[:, 0] - pose[0], pts[:, 1] - pose[1]) < radius + 0.006).all(), obj["name"]
        assert (pts[:, 2] < top + 0.004).all() and (pts[:, 2] > -0.004).all(), obj["name"]
        assert abs(np.percentile(pts[:, 2], 95) - top) < 0.01, obj["name"]
        checked += 1
    assert checked >= 1
    assert (depth[seg == -1] == 0).all()  # nothing hit: no measurement


def test_principal_point_is_exact_for_a_rolled_camera():
    """With the camera rolled, both image axes tilt against the table, so a wrong cx or cy would bend the plane."""
    from pipeline.sim.spec import CameraSpec
    from pipeline.sim.simulator import BODY_TABLE, TabletopSim
    from pipeline.sim.tasks import sample_scene

    scene = sample_scene(4, "reach", 3, ["front"], 48, 40, fps=10, physics_hz=240)
    scene.cameras = [CameraSpec("rolled", [1.0, 0.2, 0.5], [0.4, 0.0, 0.0], [0.0, 0.7, 1.0], 55.0, 0.05, 3.0, 48, 40)]
    sim = TabletopSim(scene)
    try:
        frame = sim.render()["rolled"]
    finally:
        sim.close()
    cam = {"intrinsics": scene.cameras[0].intrinsics(), "cam_to_world": frame.cam_to_world}
    world = _unproject(frame.depth_m.astype(np.float64), cam)
    table = frame.segmentation == BODY_TABLE
    assert table.sum() > 300 and np.abs(world[table][:, 2]).max() < 5e-4


def test_restore_and_replay_matches_recording(episodes):
    """Restore mid-transport (object in the hand), replay the recorded actions, compare with the recording."""
    episode = next(ep for ep in episodes["pick_place"] if ep.meta["success"])
    transport = next(s for s in episode.meta["subgoals"] if s["name"] == "transport")
    env = TabletopEnv.from_episode_meta(episode.meta)
    try:
        for start in (0, transport["start"] + 2):
            obs, _ = env.restore(episode.meta, episode.extras, start)
            np.testing.assert_allclose(obs["ee_pose"][:3], episode.extras["ee_pose"][start, :3], atol=1e-4)
            num_objects = len(episode.meta["objects"])
            ee_err, obj_err = [], []
            for t in range(start, episode.num_frames - 1):
                obs, _, _, _, info = env.step(episode.action[t])
                ee_err.append(np.linalg.norm(obs["ee_pose"][:3] - episode.extras["ee_pose"][t + 1, :3]))
                obj = obs["object_poses"][:num_objects, :3] - episode.extras["object_poses"][t + 1, :, :3]
                obj_err.append(np.linalg.norm(obj, axis=-1).max())
            assert max(ee_err) < 0.005, (start, max(ee_err))
            assert max(obj_err) < 0.01, (start, max(obj_err))
            assert info["success"] == episode.meta["success"]
        # Rebuilding the recorded scene and replaying every action is exact: same scene, same actions, same physics.
        obs, _ = env.reset(options={"scene": episode.meta["sim"]["scene"]})
        for t in range(episode.num_frames - 1):
            obs, *_ = env.step(episode.action[t])
        np.testing.assert_array_equal(obs["object_poses"][:num_objects], episode.extras["object_poses"][-1])
        np.testing.assert_array_equal(obs["rgb"]["front"], episode.rgb["front"][-1])
    finally:
        env.close()


def test_gym_env_reset_step_spaces():
    from gymnasium.utils.env_checker import check_env

    config = TabletopConfig(width=32, height=32, cameras=("front", "wrist"), max_steps=5)
    env = TabletopEnv(config)
    try:
        obs, info = env.reset(seed=3, options={"task": "stack"})
        assert env.observation_space.contains(obs)
        assert info["task"] == "stack" and "stack" in info["instruction"] or "on" in info["instruction"]
        assert info["success"] is False
        assert obs["wrist_cam_to_world"].shape == (4, 4) and obs["rgb"]["wrist"].shape == (32, 32, 3)
        # A too-large action is clipped to the limits: the commanded target moves by at most one step.
        before = obs["ee_target"].copy()
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, -1.0, 0.0, 0.0, 1.0], dtype=np.float32))
        _, high = action_limits(config.fps)
        np.testing.assert_allclose(obs["ee_target"][:2] - before[:2], [high[0], -high[1]], atol=1e-6)
        assert env.observation_space.contains(obs) and reward == 0.0 and not terminated and not truncated
        for _ in range(3):
            obs, _, _, truncated, _ = env.step(env.action_space.sample())
        assert truncated  # max_steps frames
        # Same seed, same first observation; the wrist camera moves with the hand.
        first, _ = env.reset(seed=3, options={"task": "stack"})
        again, _ = env.reset(seed=3, options={"task": "stack"})
        np.testing.assert_array_equal(first["rgb"]["front"], again["rgb"]["front"])
        moved, _, _, _, _ = env.step(np.array([0.05, 0.0, -0.05, 0.0, 1.0], dtype=np.float32))
        assert not np.allclose(moved["wrist_cam_to_world"], first["wrist_cam_to_world"])
        check_env(env, skip_render_check=True)
    finally:
        env.close()


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="num_objects"):
        TabletopConfig(num_objects=(1, 3))
    with pytest.raises(ValueError, match="cameras"):
        TabletopConfig(cameras=("front", "ceiling"))
    with pytest.raises(ValueError, match="physics_hz"):
        TabletopConfig(fps=7.0, physics_hz=240)
