"""The benchmarks' second embodiment (``benchmarks/_foreign_robot.py``): a tiny KUKA iiwa dataset written with
lerobot's writer loads with lerobot's reader and through ``ingest_lerobot``, carries no calibration, and its truth
(intrinsics, object boxes) is right; QA records of it are matched and scored against that truth."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks import _foreign_robot as foreign
from pipeline.checks import check_run
from pipeline.config import parse_config
from pipeline.stage import StageContext

CONFIG = foreign.ForeignConfig(height=48, width=64, frames=(12, 16))
SEED = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign") / "kuka"
    summary = foreign.generate(root, num_episodes=2, seed=SEED, config=CONFIG)
    return root, summary, foreign.load_truth(summary["truth_path"])


def ctx_for(tmp_path: Path, stage: str) -> StageContext:
    return StageContext(run_dir=str(tmp_path), stage_dir=str(tmp_path / "stages" / stage), stage=stage, seed=0,
                        resume=False, index=0)


def test_the_dataset_loads_with_lerobot_and_carries_no_calibration(dataset):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root, summary, truth = dataset
    assert not Path(summary["truth_path"]).is_relative_to(root)  # the truth is outside the dataset
    lds = LeRobotDataset("local/kuka_iiwa_table", root=root, video_backend="pyav")
    assert lds.meta.robot_type == "kuka_iiwa" and lds.meta.fps == CONFIG.fps and lds.num_episodes == 2
    assert len(lds) == summary["num_frames"] == sum(e["num_frames"] for e in truth["episodes"])
    assert lds.meta.camera_keys == [foreign.RGB_KEY, foreign.DEPTH_KEY] and lds.meta.depth_keys == [foreign.DEPTH_KEY]
    item = lds[len(lds) - 1]
    assert tuple(item[foreign.RGB_KEY].shape) == (3, 48, 64) and tuple(item[foreign.DEPTH_KEY].shape) == (1, 48, 64)
    assert tuple(item["action"].shape) == (3,) and tuple(item["observation.state"].shape) == (7,)
    assert lds.meta.features["action"]["names"] == list(foreign.ACTION_NAMES)
    meta_text = "".join(p.read_text(errors="ignore") for p in (root / "meta").rglob("*.json*")).lower()
    for word in ("intrinsic", "extrinsic", "cam_to_world", "fx", "focal"):
        assert word not in meta_text


def test_ingest_lerobot_reads_camera_depth_actions_and_robot(dataset, tmp_path):
    from pipeline.stages.ingest_lerobot import IngestLeRobotParams, ingest_lerobot, plan

    root, _, truth = dataset
    stages = [{"name": "ingest_lerobot", "params": {"root": str(root)}}]
    assert check_run(parse_config({"output_dir": str(tmp_path / "run"), "stages": stages}), storage=False) == []
    params = IngestLeRobotParams(root=str(root))
    items = plan(params, ctx_for(tmp_path, "ingest_lerobot"))
    assert len(items) == 2
    for item in items:
        episode = ingest_lerobot(item, params, ctx_for(tmp_path, "ingest_lerobot"))
        episode.validate()
        index = item["episode_index"]
        sim = foreign.simulate_episode([SEED, index], CONFIG)  # the same episode again: the generator's depth
        assert episode.cameras == ["cam_high"] and list(episode.depth_m) == ["cam_high"]
        assert episode.meta["robot_type"] == "kuka_iiwa" and episode.fps == CONFIG.fps
        assert episode.task == truth["episodes"][index]["task"] == sim.task
        assert episode.action.shape == (len(sim.rgb), 3) and episode.meta["action_names"] == list(foreign.ACTION_NAMES)
        np.testing.assert_allclose(episode.action, sim.action, atol=1e-6)
        assert episode.meta["state_names"] == list(foreign.STATE_NAMES)
        assert "intrinsics" not in (episode.meta.get("cameras") or {}).get("cam_high", {})
        depth, true_depth = episode.depth_m["cam_high"], sim.depth_m
        seen = true_depth > 0
        assert np.median(np.abs(depth[seen] - true_depth[seen])) < 0.002  # metres, not millimetres
        assert 0.3 < float(np.median(depth[seen])) < 2.0


def test_the_intrinsics_project_true_points_onto_what_the_renderer_drew():
    from depth.geometry import Intrinsics

    sim = foreign.simulate_episode([SEED, 7], CONFIG)
    intrinsics = Intrinsics.from_meta({**foreign.camera_calibration(CONFIG), "height": 48, "width": 64})
    world_to_cam = np.linalg.inv(foreign.camera_to_world())
    for frame in (0, len(sim.rgb) - 1):
        poses = np.asarray(sim.truth["object_poses"][frame])
        for obj, pose in zip(sim.truth["objects"], poses):
            centre = world_to_cam[:3, :3] @ pose[:3] + world_to_cam[:3, 3]
            u, v = np.round(intrinsics.project(centre[None])[0]).astype(int)
            assert sim.segmentation[frame, v, u] == obj["body_id"], (obj["name"], u, v)
    # Every table pixel lifted with the intrinsics and the pose lies on the table top (z = 0): f, cx, cy all right.
    table = sim.segmentation[0] == 1  # body ids: plane 0, table 1
    v, u = np.nonzero(table)
    z_m = sim.depth_m[0][table]
    cam = np.stack([(u - intrinsics.cx) / intrinsics.fx * z_m, (v - intrinsics.cy) / intrinsics.fy * z_m, z_m], -1)
    world = cam @ foreign.camera_to_world()[:3, :3].T + foreign.camera_to_world()[:3, 3]
    assert table.sum() > 500 and np.abs(world[:, 2]).max() < 0.003


def test_truth_facts_match_objects_and_scoring_on_a_hand_made_document(dataset):
    from depth.spatial_qa import FrameRef, QAConfig, generate_questions

    _, _, truth = dataset
    frame = 0
    scene = foreign.truth_facts(truth, 1, frame)
    episode = truth["episodes"][1]
    assert sorted(scene.objects) == sorted(o["body_id"] for o in episode["objects"])
    for obj in episode["objects"]:
        fact = scene.objects[obj["body_id"]]
        assert fact.height_m == pytest.approx(obj["size_m"][2], abs=1e-4)  # upright blocks
        assert sorted([fact.width_m, fact.length_m]) == pytest.approx(sorted(obj["size_m"][:2]), abs=1e-4)
        assert scene.counted[obj["body_id"]]

    # "Measured": the true boxes under cluster ids 100.. with cluster names, one moved 3 cm, plus an arm cluster.
    true_ids = sorted(scene.objects)
    measured = {}
    for i, tid in enumerate(true_ids):
        centre = scene.objects[tid].centre_m + (np.array([0.03, 0.0, 0.0]) if i == 0 else 0.0)
        measured[100 + i] = replace(scene.objects[tid], object_id=100 + i, name=f"cluster {i}", centre_m=centre)
    measured[999] = replace(scene.objects[true_ids[0]], object_id=999, name="arm", centre_m=np.array([0.0, 0.3, 0.4]))
    measured_scene = replace(scene, objects=measured, names={k: f.name for k, f in measured.items()},
                             categories={k: None for k in measured}, counted={k: True for k in measured},
                             has_identity=False)
    ref = FrameRef("kuka-ep000001", "cam_high", frame, 0.0)
    records, _ = generate_questions(measured_scene, ref, QAConfig(seed=0, max_per_family=20))
    cam_to_frame = np.linalg.inv(scene.world_from_frame) @ foreign.camera_to_world()  # the truth's own viewer frame
    document = {"frame_ref": ref.to_json(), "viewer_frame": {"cam_to_frame": cam_to_frame.tolist()},
                "objects": [f.to_json() for f in measured.values()], "qa": records}

    assert foreign.match_objects(document, scene) == {100 + i: tid for i, tid in enumerate(true_ids)}
    assert foreign.match_objects(document, scene, max_distance_m=0.02) == {
        100 + i: tid for i, tid in enumerate(true_ids) if i > 0}
    scored = foreign.score_samples([document], truth)
    about_arm = sum(1 for r in records if 999 in r["asked_ids"])
    assert about_arm > 0 and sum(scored.unmatched.values()) == about_arm
    assert len(scored.scores) == len(records) - about_arm > 0
    assert scored.objects == {"matched": len(true_ids), "unmatched": 1}
    # Answers off by a factor 2 are scored wrong: the truth really is compared.
    wrong = json.loads(json.dumps(document))
    for record in wrong["qa"]:
        if record["family"] == "distance_between":
            record["answer_structured"]["value"] *= 2
    scores = foreign.score_samples([wrong], truth).scores
    assert any(s.family == "distance_between" for s in scores)
    assert all(s.correct == (s.family != "distance_between") for s in scores if s.kind == "quantitative")


def test_action_less_clips_come_with_their_robot_and_task(tmp_path):
    from pipeline.stages.ingest_videos import IngestVideosParams, ingest_videos, plan

    [clip] = foreign.write_clips(tmp_path / "clips", num_clips=1, seed=99, config=CONFIG)
    sidecar = json.loads(clip.with_suffix(".json").read_text())
    assert sidecar["robot_type"] == "kuka_iiwa" and sidecar["fps"] == CONFIG.fps and sidecar["task"]
    params = IngestVideosParams(path=str(tmp_path / "clips"), camera="cam_high")
    [item] = plan(params, ctx_for(tmp_path, "ingest_videos"))
    episode = ingest_videos(item, params, ctx_for(tmp_path, "ingest_videos"))
    assert episode.action is None and episode.cameras == ["cam_high"] and episode.fps == CONFIG.fps
    assert episode.meta["robot_type"] == "kuka_iiwa" and episode.task == sidecar["task"]
    assert episode.rgb["cam_high"].shape[1:] == (48, 64, 3)
