"""ingest_lerobot: tiny LeRobot v3 datasets written with lerobot's own writer, read back through the stage on Ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from episodes import Episode
from pipeline.stage import OK, QUARANTINED, StageContext
from pipeline.stages.ingest_lerobot import IngestLeRobotParams, _dequantize_metres, _ingest_row, _plan, ingest_lerobot
from tests.factories import make_episode

FPS = 10
NAN_EPISODE = 1


def write_dataset(root: Path, episodes: list[Episode], with_depth: bool, with_action: bool) -> Path:
    """Write ``episodes`` (camera "front") as a LeRobot v3 dataset with lerobot's writer; finalize in ``finally``."""
    from lerobot.configs import RGBEncoderConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    first = episodes[0]
    height, width = first.rgb["front"].shape[1:3]
    features = {
        "observation.images.front": {"dtype": "video", "shape": (height, width, 3),
                                     "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (first.state.shape[1],),
                              "names": first.meta["state_names"]},
    }
    if with_depth:
        features["observation.depth.front"] = {"dtype": "video", "shape": (height, width, 1),
                                               "names": ["height", "width", "channels"],
                                               "info": {"is_depth_map": True}}
    if with_action:
        features["action"] = {"dtype": "float32", "shape": (first.action.shape[1],),
                              "names": first.meta["action_names"]}
    # make_episode's frames are per-pixel noise, which lerobot's default AV1 (crf 30, 4:2:0) smears beyond
    # recognition at 32x32; near-lossless H.264 keeps "RGB close" a meaningful check.
    dataset = LeRobotDataset.create(f"test/{root.name}", fps=FPS, features=features, root=root,
                                    rgb_encoder=RGBEncoderConfig(vcodec="h264", pix_fmt="yuv444p", crf=0))
    try:
        for ep in episodes:
            for t in range(ep.num_frames):
                frame = {"observation.images.front": ep.rgb["front"][t], "observation.state": ep.state[t],
                         "task": ep.task}
                if with_depth:
                    frame["observation.depth.front"] = ep.depth_m["front"][t][..., None]  # float32 metres
                if with_action:
                    frame["action"] = ep.action[t]
                dataset.add_frame(frame)
            dataset.save_episode(parallel_encoding=False)  # no process pool forked from a process running Ray
    finally:
        dataset.finalize()
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("lerobot")
    # 128x128: at 32x32 and 64x64 lerobot's lossless HEVC depth is not bit-exact (a few B-frame pixels come back
    # several 12-bit codes off, up to ~17 %), at 128x128 it is, so depth can be held to 1 % everywhere.
    rig = [make_episode(f"src-{i}", seed=i, task=f"task {i}", height=128, width=128) for i in range(3)]
    rig[NAN_EPISODE].action[2, 3] = np.nan
    noact = [make_episode(f"na-{i}", seed=10 + i, with_depth=False, with_action=False) for i in range(2)]
    return {
        "rig": (write_dataset(base / "rig", rig, with_depth=True, with_action=True), rig),
        "noact": (write_dataset(base / "noact", noact, with_depth=False, with_action=False), noact),
    }


def ctx_for(tmp_path: Path, resume: bool = False) -> StageContext:
    return StageContext(run_dir=tmp_path, stage_dir=tmp_path / "stages" / "00_ingest_lerobot", seed=0, resume=resume,
                        index=0)


def test_round_trip_with_depth_and_a_nan_episode(ray_session, datasets, tmp_path):
    root, sources = datasets["rig"]
    # One task at a time: each new Ray worker spends ~12 s importing lerobot (torch, torchvision, datasets) on this
    # machine, and with 2 cores a second worker does not make 3 tiny episodes any faster.
    params = IngestLeRobotParams(root=str(root), resources={"num_cpus": 1, "concurrency": 1})
    rows = ingest_lerobot(None, params, ctx_for(tmp_path)).take_all()
    by_id = {r["episode_id"]: r for r in rows}
    assert sorted(by_id) == ["rig-ep000000", "rig-ep000001", "rig-ep000002"]
    assert {i: r["status"] for i, r in by_id.items()} == {
        "rig-ep000000": OK, "rig-ep000001": QUARANTINED, "rig-ep000002": OK}

    reason = by_id["rig-ep000001"]["reason"]
    assert "'action'" in reason and "episode=1" in reason and str(root) in reason and "NaN" in reason
    assert by_id["rig-ep000001"]["path"] == ""

    for index in (0, 2):
        row = by_id[f"rig-ep{index:06d}"]
        assert row["stage"] == row["source"] == "ingest_lerobot"
        ep = Episode.load(row["path"])
        src = sources[index]
        assert ep.num_frames == src.num_frames and ep.fps == FPS and ep.task == f"task {index}"
        np.testing.assert_array_equal(ep.state, src.state)
        np.testing.assert_array_equal(ep.action, src.action)
        assert ep.state.dtype == ep.action.dtype == np.float32
        assert ep.rgb["front"].dtype == np.uint8 and ep.rgb["front"].shape == src.rgb["front"].shape
        assert np.abs(ep.rgb["front"].astype(int) - src.rgb["front"]).mean() < 2.0
        depth = ep.depth_m["front"]  # metres (lerobot's default would be millimetres)
        assert depth.dtype == np.float32 and depth.shape == src.depth_m["front"].shape
        rel = np.abs(depth - src.depth_m["front"]) / src.depth_m["front"]
        assert rel.max() < 0.01
        assert ep.meta["source"] == "ingest_lerobot" and ep.meta["parent"] is None
        assert ep.meta["source_uri"] == f"{root}#episode={index}"
        assert ep.meta["state_names"] == src.meta["state_names"]
        assert ep.meta["action_names"] == src.meta["action_names"]


def test_action_less_dataset_and_episode_selection(ray_session, datasets, tmp_path):
    root, sources = datasets["noact"]
    rows = ingest_lerobot(None, IngestLeRobotParams(root=str(root), episodes=[1]), ctx_for(tmp_path)).take_all()
    assert [(r["episode_id"], r["status"]) for r in rows] == [("noact-ep000001", OK)]
    ep = Episode.load(rows[0]["path"])
    assert ep.action is None and ep.meta["action_names"] is None and ep.depth_m == {}
    np.testing.assert_array_equal(ep.state, sources[1].state)
    assert np.abs(ep.rgb["front"].astype(int) - sources[1].rgb["front"]).mean() < 2.0
    # the frames really are compared: the other episode's are far off
    assert np.abs(ep.rgb["front"].astype(int) - sources[0].rgb["front"]).mean() > 20


def test_key_mapping_errors_name_the_key_and_the_dataset(datasets, tmp_path):
    root, _ = datasets["rig"]
    noact, _ = datasets["noact"]
    cases = [
        (dict(root=str(root), cameras={"front": "observation.images.top"}), "'observation.images.top'"),
        (dict(root=str(root), depth={"front": "observation.state"}), "not a depth map"),
        (dict(root=str(root), cameras={"front": "observation.depth.front"}), "not an RGB"),
        (dict(root=str(noact), action_key="action"), "'action'"),  # asked for explicitly: must exist
        (dict(root=str(noact), state_key="observation.joints"), "'observation.joints'"),
        (dict(root=str(root), episodes=[0, 7]), "episodes [7]"),
    ]
    for kwargs, fragment in cases:
        with pytest.raises(ValueError) as info:
            ingest_lerobot(None, IngestLeRobotParams(**kwargs), ctx_for(tmp_path))
        assert fragment in str(info.value), (kwargs, str(info.value))
        assert str(kwargs["root"]) in str(info.value)

    # the defaults may be absent: action-less data is normal input
    _, plan = _plan(IngestLeRobotParams(root=str(noact)))
    assert plan.action_key is None and plan.state_key == "observation.state" and plan.depth == {}
    _, plan = _plan(IngestLeRobotParams(root=str(root)))
    assert plan.cameras == {"front": "observation.images.front"} and plan.depth == {"front": "observation.depth.front"}


def test_params_validation(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        IngestLeRobotParams(root=str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="no meta/info.json"):
        IngestLeRobotParams(root=str(tmp_path))
    with pytest.raises(ValidationError, match="give root"):
        IngestLeRobotParams()
    with pytest.raises(ValidationError, match="local directory"):
        IngestLeRobotParams(root="s3://bucket/dataset")
    with pytest.raises(ValidationError, match="not in cameras"):
        IngestLeRobotParams(repo_id="lerobot/pusht", cameras={"top": "observation.image"}, depth={"front": "d"})
    IngestLeRobotParams(repo_id="lerobot/pusht", root=str(tmp_path / "download_here"))  # download target


def edited_copy(src: Path, dst: Path, edit) -> Path:
    """A copy of dataset ``src`` whose meta/info.json went through ``edit(info)``."""
    root = shutil.copytree(src, dst)
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    edit(info)
    info_path.write_text(json.dumps(info))
    return root


def test_fps_and_shape_mismatch_and_resume(datasets, tmp_path):
    """Per-episode checks run in the task function; called directly here (no Ray) to keep the test fast."""
    src, _ = datasets["rig"]

    root = edited_copy(src, tmp_path / "rig15", lambda info: info.update(fps=15))  # videos are still 10 fps
    _, plan = _plan(IngestLeRobotParams(root=str(root)))
    out = _ingest_row({"episode_index": 0}, plan, ctx_for(tmp_path))
    assert out["status"] == QUARANTINED
    assert "'fps'" in out["reason"] and "10 fps" in out["reason"] and "15 fps" in out["reason"]

    def declare_64px(info):
        info["features"]["observation.images.front"]["shape"] = [64, 64, 3]
        info["features"]["observation.depth.front"]["shape"] = [64, 64, 1]

    root = edited_copy(src, tmp_path / "rig64", declare_64px)  # the videos are 128x128
    _, plan = _plan(IngestLeRobotParams(root=str(root)))
    out = _ingest_row({"episode_index": 2}, plan, ctx_for(tmp_path))
    assert out["status"] == QUARANTINED
    assert "'rgb.front'" in out["reason"] and "(128, 128, 3)" in out["reason"] and "episode=2" in out["reason"]

    _, plan = _plan(IngestLeRobotParams(root=str(src)))
    first = _ingest_row({"episode_index": 2}, plan, ctx_for(tmp_path))
    assert first["status"] == OK
    mtime = Path(first["path"]).stat().st_mtime_ns
    assert _ingest_row({"episode_index": 2}, plan, ctx_for(tmp_path, resume=True)) == first
    assert Path(first["path"]).stat().st_mtime_ns == mtime


def test_missing_video_file_is_quarantined_without_download(datasets, tmp_path):
    src, _ = datasets["rig"]
    root = shutil.copytree(src, tmp_path / "rig_broken")
    for video in (root / "videos" / "observation.depth.front").rglob("*.mp4"):
        video.unlink()
    _, plan = _plan(IngestLeRobotParams(root=str(root)))
    out = _ingest_row({"episode_index": 0}, plan, ctx_for(tmp_path))
    assert out["status"] == QUARANTINED and "observation.depth.front" in out["reason"] and "missing" in out["reason"]


def test_dequantised_depth_is_metres_and_code_zero_is_no_measurement():
    from lerobot.datasets.depth_utils import quantize_depth

    depth_m = np.array([[0.0, 0.4, 1.0], [2.5, 9.0, np.nan]], np.float32)
    codes = quantize_depth(depth_m, video_backend=None)[None, None]  # (T=1, 1, H, W) as lerobot's decoder gives
    back = _dequantize_metres(codes, {"info": {"is_depth_map": True}})  # default quantiser parameters
    assert back.shape == (1, 2, 3) and back.dtype == np.float32
    assert back[0, 0, 0] == 0.0 and back[0, 1, 2] == 0.0  # 0 and NaN were written as code 0
    np.testing.assert_allclose(back[0].ravel()[1:5], [0.4, 1.0, 2.5, 9.0], rtol=1e-3)
