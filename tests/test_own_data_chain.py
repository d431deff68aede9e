"""A user's own robot through the whole chain (issue 12): a KUKA iiwa LeRobot dataset (camera ``cam_high``, 3-d
actions, no calibration; ``benchmarks/_foreign_robot.py``) plus action-less clips of the same robot. The intrinsics
come in as an ingest param; every stage takes the data's camera name; the clips are pseudo-labelled by the robot's own
action head; QA records say where their calibration came from; the shards are the robot's, not the simulator's."""

from __future__ import annotations

import json

import pytest

from benchmarks import _foreign_robot as foreign
from episodes import Episode
from pipeline.checks import check_run
from pipeline.config import parse_config
from pipeline.run import run

CONFIG = foreign.ForeignConfig(height=48, width=64, frames=(12, 14))


def stages(root, clips, world_model_cameras=("cam_high",)) -> list[dict]:
    return [
        {"name": "ingest_lerobot", "params": {
            "root": str(root), "calibration": {"cam_high": {"intrinsics": foreign.camera_calibration(CONFIG)}}}},
        {"name": "ingest_videos", "params": {"path": str(clips), "camera": "cam_high"}},
        {"name": "train_world_model", "params": {
            "cameras": list(world_model_cameras), "image_size": 32, "steps": 6, "checkpoint_every": 6,
            "holdout_fraction": 0.0, "labelled_fraction": 1.0, "batch_size": 4, "depth": False}},
        {"name": "label_actions", "params": {}},
        {"name": "synthesize_qa", "params": {"frames_per_episode": 2, "cameras": ["cam_high"]}},
        {"name": "write_lerobot", "params": {"video_codec": "h264"}},
    ]


@pytest.fixture(scope="module")
def own_run(ray_session, tmp_path_factory):
    base = tmp_path_factory.mktemp("own")
    foreign.generate(base / "kuka", num_episodes=3, seed=5, config=CONFIG)
    foreign.write_clips(base / "clips", num_clips=2, seed=50, config=CONFIG)
    raw = {"output_dir": str(base / "run"), "seed": 0, "stages": stages(base / "kuka", base / "clips")}
    return base, run(parse_config(raw))


def test_camera_names_are_checked_against_the_data_before_any_work(own_run):
    base, _ = own_run
    raw = {"output_dir": str(base / "bad"), "stages": stages(base / "kuka", base / "clips", ("front",))}
    errors = check_run(parse_config(raw), storage=False)
    assert len(errors) == 1 and errors[0].startswith("stages[2].params.cameras: ") and "cam_high" in errors[0]


def test_foreign_robot_runs_through_with_its_own_names_head_and_calibration(own_run):
    base, manifest = own_run
    run_dir = base / "run"
    assert manifest["counts"]["written"] == 5 and manifest["counts"]["total"] == 5  # 3 episodes + 2 clips

    labelled = run_dir / "stages" / "03_label_actions" / "episodes"
    clips = sorted(labelled.glob("video-*.episode"))
    assert len(clips) == 2
    for path in clips:
        clip = Episode.load(path)
        assert clip.action.shape == (clip.num_frames, 3)  # the iiwa's own 3-d head, not the simulator's 5-d one
        assert clip.meta["robot_type"] == "kuka_iiwa" and clip.meta["pseudo_label"]["embodiment"] == "kuka_iiwa"

    summary = json.loads((run_dir / "qa" / "summary.json").read_text())
    assert summary["num_qa"] > 0 and summary["qa_by_calibration"] == {"given": summary["num_qa"]}
    assert summary["qa_by_depth_source"] == {"sensor": summary["num_qa"]}
    assert any("no depth" in reason for reason in summary["episode_errors"].values())  # the clips: RGB only

    shards = [json.loads(p.read_text()) for p in (run_dir / "shards").glob("*/meta/info.json")]
    assert len(shards) == 2 and {info["robot_type"] for info in shards} == {"kuka_iiwa"}  # with depth, and clips
    assert all("observation.images.cam_high" in info["features"] for info in shards)
