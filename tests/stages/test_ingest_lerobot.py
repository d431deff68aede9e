"""ingest_lerobot: tiny LeRobot v3 datasets written with lerobot's own writer, read back through the runner on Ray, its
plan/fn/check called directly, and the same dataset from a memory:// URL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from episodes import Episode, EpisodeError
from pipeline.checks import check_run
from pipeline.config import parse_config
from pipeline.lerobot_read import dequantize_metres
from pipeline.run import run
from pipeline.stage import OK, QUARANTINED, StageContext
from pipeline.stages.ingest_lerobot import IngestLeRobotParams, describe, ingest_lerobot, plan, resolve
from pipeline.store import RunStore
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


def ctx_for(tmp_path: Path) -> StageContext:
    return StageContext(run_dir=str(tmp_path), stage_dir=str(tmp_path / "stages" / "00_ingest_lerobot"),
                        stage="ingest_lerobot", seed=0, resume=False, index=0)


def ingest(params: IngestLeRobotParams, tmp_path: Path) -> dict[str, Episode | EpisodeError]:
    """The stage's plan and function in this process (no Ray): each episode (validated) or the error it raised."""
    ctx = ctx_for(tmp_path)
    out: dict[str, Episode | EpisodeError] = {}
    for item in plan(params, ctx):
        try:
            out[item["episode_id"]] = ingest_lerobot(item, params, ctx)
            out[item["episode_id"]].validate()
        except EpisodeError as exc:
            out[item["episode_id"]] = exc
    return out


def config(run_dir: Path, **params) -> dict:
    return {"output_dir": str(run_dir), "stages": [{"name": "ingest_lerobot", "params": params}]}


def test_round_trip_through_the_runner_with_depth_and_a_nan_episode(ray_session, datasets, tmp_path):
    root, sources = datasets["rig"]
    # One task at a time: each new Ray worker spends ~12 s importing lerobot (torch, torchvision, datasets) on this
    # machine, and with 2 cores a second worker does not make 3 tiny episodes any faster.
    run_dir = tmp_path / "run"
    run(parse_config(config(run_dir, root=str(root), resources={"num_cpus": 1, "concurrency": 1})))
    store = RunStore(str(run_dir))
    by_id = {r["episode_id"]: r for r in store.read_rows(store.stage_dir(0, "ingest_lerobot"))}
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


def test_action_less_dataset_and_episode_selection(datasets, tmp_path):
    root, sources = datasets["noact"]
    params = IngestLeRobotParams(root=str(root), episodes=[1])
    assert describe(params) == {"cameras": ["front"], "depth": False, "actions": False}
    episodes = ingest(params, tmp_path)
    assert list(episodes) == ["noact-ep000001"]
    ep = episodes["noact-ep000001"]
    assert ep.action is None and ep.meta["action_names"] is None and ep.depth_m == {}
    assert ep.meta["robot_type"] == "unknown"  # the dataset names no robot: never the simulator's arm
    named = ingest(params.model_copy(update={"robot_type": "koch"}), tmp_path / "named")
    assert named["noact-ep000001"].meta["robot_type"] == "koch"
    np.testing.assert_array_equal(ep.state, sources[1].state)
    assert np.abs(ep.rgb["front"].astype(int) - sources[1].rgb["front"]).mean() < 2.0
    # the frames really are compared: the other episode's are far off
    assert np.abs(ep.rgb["front"].astype(int) - sources[0].rgb["front"]).mean() > 20


def test_memory_url_ingests_the_same_as_the_local_root_fetching_only_the_episode(datasets, tmp_path, monkeypatch):
    """A dataset on a non-local filesystem (fsspec memory://, in this process): each task copies meta/ and only its
    episode's mapped files to a temporary directory, and the episodes equal those read from the local root."""
    import fsspec

    import pipeline.lerobot_read

    root, _ = datasets["rig"]
    fs = fsspec.filesystem("memory")
    for file in root.rglob("*"):
        if file.is_file():
            fs.pipe(f"/bucket/rig/{file.relative_to(root).as_posix()}", file.read_bytes())
    fetched = []
    real_fetch = pipeline.lerobot_read.fetch
    monkeypatch.setattr(pipeline.lerobot_read, "fetch", lambda path, local: (fetched.append(path),
                                                                             real_fetch(path, local)))
    mapping = {"cameras": {"front": "observation.images.front"}, "depth": {}, "episodes": [0, 1]}
    try:
        url = "memory://bucket/rig"
        assert check_run(parse_config(config(tmp_path / "run", root=url, **mapping)), storage=False) == []
        remote = ingest(IngestLeRobotParams(root=url, **mapping), tmp_path / "remote")
    finally:
        fs.rm("/bucket", recursive=True)
    local = ingest(IngestLeRobotParams(root=str(root), **mapping), tmp_path / "local")
    assert sorted(remote) == sorted(local) == ["rig-ep000000", "rig-ep000001"]
    ep, want = remote["rig-ep000000"], local["rig-ep000000"]
    np.testing.assert_array_equal(ep.rgb["front"], want.rgb["front"])
    np.testing.assert_array_equal(ep.state, want.state)
    np.testing.assert_array_equal(ep.action, want.action)
    assert ep.depth_m == {} and ep.task == want.task and ep.fps == want.fps
    assert ep.meta["source_uri"] == "memory://bucket/rig#episode=0"
    assert isinstance(remote["rig-ep000001"], EpisodeError) and "NaN" in str(remote["rig-ep000001"])
    assert "memory://bucket/rig#episode=1" in str(remote["rig-ep000001"])
    # per episode: its data file and the one mapped video (the depth video is not mapped, so never copied)
    assert all(p.startswith("memory://bucket/rig/") for p in fetched) and len(fetched) == 4
    assert not any("observation.depth" in p for p in fetched)
    assert sum(p.endswith(".parquet") for p in fetched) == 2


def test_check_reports_problems_under_the_yaml_field(datasets, tmp_path):
    root, _ = datasets["rig"]
    noact, _ = datasets["noact"]
    cases = [
        (dict(root=str(root), cameras={"front": "observation.images.top"}), "cameras.front",
         f"'observation.images.top' is not a feature of LeRobot dataset {root}"),
        (dict(root=str(root), depth={"front": "observation.state"}), "depth.front", "not a depth map"),
        (dict(root=str(root), cameras={"front": "observation.depth.front"}), "cameras.front", "not an RGB"),
        (dict(root=str(noact), action_key="action"), "action_key", "'action'"),  # asked for explicitly: must exist
        (dict(root=str(noact), state_key="observation.joints"), "state_key", "'observation.joints'"),
        (dict(root=str(root), episodes=[0, 7]), "episodes", "episodes [7]"),
        (dict(root=str(tmp_path / "missing")), "root", "does not exist"),
        (dict(root=str(tmp_path)), "root", "no meta/info.json"),
        (dict(root="memory://wmsynth-test-nothing-here/ds"), "root", "does not exist"),
        (dict(root="nosuch://bucket/ds"), "root", "unknown URL scheme 'nosuch'"),
    ]
    for params, field, fragment in cases:
        errors = check_run(parse_config(config(tmp_path / "run", **params)), storage=False)
        assert len(errors) == 1, (params, errors)
        assert errors[0].startswith(f"stages[0].params.{field}: ") and fragment in errors[0], (params, errors)
        assert params["root"].split("://")[-1] in errors[0]

    # the defaults may be absent: action-less data is normal input
    resolved = resolve(IngestLeRobotParams(root=str(noact)))
    keys = resolved.keys
    assert not resolved.problems and keys.action_key is None and keys.state_key == "observation.state" and keys.depth == {}
    keys = resolve(IngestLeRobotParams(root=str(root))).keys
    assert keys.cameras == {"front": "observation.images.front"} and keys.depth == {"front": "observation.depth.front"}
    assert describe(IngestLeRobotParams(root=str(root))) == {"cameras": ["front"], "depth": True, "actions": True}

    with pytest.raises(ValueError, match="cameras.front: 'observation.images.top'"):  # the plan's last resort
        plan(IngestLeRobotParams(root=str(root), cameras={"front": "observation.images.top"}), ctx_for(tmp_path))


def test_params_validation(tmp_path):
    with pytest.raises(ValidationError, match="give root"):
        IngestLeRobotParams()
    with pytest.raises(ValidationError, match="not in cameras"):
        IngestLeRobotParams(repo_id="lerobot/pusht", cameras={"top": "observation.image"}, depth={"front": "d"})
    with pytest.raises(ValidationError, match="duplicate episode"):
        IngestLeRobotParams(root="ds", episodes=[1, 1])
    IngestLeRobotParams(root="s3://bucket/dataset")  # a URL root: read from object storage
    IngestLeRobotParams(repo_id="lerobot/pusht", root=str(tmp_path / "download_here"))  # download target
    [(field, message)] = resolve(IngestLeRobotParams(root=str(tmp_path / "missing"))).problems
    assert field == "root" and "set repo_id to download it there" in message


def edited_copy(src: Path, dst: Path, edit) -> Path:
    """A copy of dataset ``src`` whose meta/info.json went through ``edit(info)``."""
    root = shutil.copytree(src, dst)
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    edit(info)
    info_path.write_text(json.dumps(info))
    return root


def test_fps_and_shape_mismatch_and_missing_video(datasets, tmp_path):
    """Per-episode checks run in the task function; called directly here (no Ray) to keep the test fast."""
    src, _ = datasets["rig"]

    def one(root: Path, index: int):
        params = IngestLeRobotParams(root=str(root), episodes=[index])
        [item] = plan(params, ctx_for(tmp_path))
        return ingest_lerobot(item, params, ctx_for(tmp_path))

    root = edited_copy(src, tmp_path / "rig15", lambda info: info.update(fps=15))  # videos are still 10 fps
    with pytest.raises(EpisodeError) as info:
        one(root, 0)
    assert "'fps'" in str(info.value) and "10 fps" in str(info.value) and "15 fps" in str(info.value)

    def declare_64px(info):
        info["features"]["observation.images.front"]["shape"] = [64, 64, 3]
        info["features"]["observation.depth.front"]["shape"] = [64, 64, 1]

    root = edited_copy(src, tmp_path / "rig64", declare_64px)  # the videos are 128x128
    with pytest.raises(EpisodeError) as info:
        one(root, 2)
    reason = str(info.value)
    assert "'rgb.front'" in reason and "(128, 128, 3)" in reason and "episode=2" in reason

    root = shutil.copytree(src, tmp_path / "rig_broken")
    for video in (root / "videos" / "observation.depth.front").rglob("*.mp4"):
        video.unlink()
    with pytest.raises(EpisodeError) as info:  # quarantined, not fetched from the Hub
        one(root, 0)
    assert "observation.depth.front" in str(info.value) and "missing" in str(info.value)

    root = shutil.copytree(src, tmp_path / "rig_corrupt")
    for data in (root / "data").rglob("*.parquet"):
        data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])  # truncated: no footer
    with pytest.raises(EpisodeError) as info:
        one(root, 0)
    reason = str(info.value)
    assert "data/chunk-000/file-000.parquet is not a readable parquet file" in reason and "Parquet" in reason


def test_dequantised_depth_is_metres_and_code_zero_is_no_measurement():
    from lerobot.datasets.depth_utils import quantize_depth

    depth_m = np.array([[0.0, 0.4, 1.0], [2.5, 9.0, np.nan]], np.float32)
    codes = quantize_depth(depth_m, video_backend=None)[None, None]  # (T=1, 1, H, W) as lerobot's decoder gives
    back = dequantize_metres(codes, {"info": {"is_depth_map": True}})  # default quantiser parameters
    assert back.shape == (1, 2, 3) and back.dtype == np.float32
    assert back[0, 0, 0] == 0.0 and back[0, 1, 2] == 0.0  # 0 and NaN were written as code 0
    np.testing.assert_allclose(back[0].ravel()[1:5], [0.4, 1.0, 2.5, 9.0], rtol=1e-3)


def test_calibration_from_params_or_carried_by_a_wmsynth_shard(datasets, tmp_path):
    """Intrinsics and pose given as params land in meta.cameras with their origin; a calibrated camera the mapping
    lacks is a problem under calibration.<cam>; a dataset with wmsynth provenance carries its own (issue 12)."""
    root, _ = datasets["rig"]
    pose = [[1, 0, 0, 0.4], [0, -1, 0, 0.0], [0, 0, -1, 1.2], [0, 0, 0, 1]]
    params = IngestLeRobotParams(root=str(root), episodes=[0],
                                 calibration={"front": {"intrinsics": {"fov_deg": 60}, "cam_to_world": pose}})
    ep = ingest(params, tmp_path)["rig-ep000000"]
    front = ep.meta["cameras"]["front"]
    assert front["calibration"] == {"intrinsics": "given", "extrinsics": "given"}
    assert front["intrinsics"]["width"] == 128 and front["intrinsics"]["fy"] == pytest.approx(64 / np.tan(np.pi / 6))
    bare = ingest(IngestLeRobotParams(root=str(root), episodes=[0]), tmp_path / "bare")["rig-ep000000"]
    assert "cameras" not in bare.meta  # nothing known, nothing invented

    wrong = IngestLeRobotParams(root=str(root), calibration={"top": {"intrinsics": {"fov_deg": 60}}})
    errors = check_run(parse_config(config(tmp_path / "run", **wrong.model_dump(exclude_unset=True))), storage=False)
    assert len(errors) == 1 and errors[0].startswith("stages[0].params.calibration.top: ") and "'top'" in errors[0]

    carried = {"episodes": [{"episode_index": 2, "meta": {"cameras": {"front": {
        "intrinsics": {"fx": 100.0, "fy": 100.0, "cx": 63.5, "cy": 63.5, "width": 128, "height": 128},
        "cam_to_world": pose}}}}]}
    copy = edited_copy(root, tmp_path / "shard", lambda info: None)
    (copy / "meta" / "wmsynth_provenance.json").write_text(json.dumps(carried))
    episodes = ingest(IngestLeRobotParams(root=str(copy), episodes=[0, 2]), tmp_path / "shard-run")
    assert "cameras" not in episodes["shard-ep000000"].meta
    assert episodes["shard-ep000002"].meta["cameras"]["front"]["calibration"] == {"intrinsics": "dataset",
                                                                                   "extrinsics": "dataset"}
    assert episodes["shard-ep000002"].meta["cameras"]["front"]["intrinsics"]["fx"] == 100.0


def test_action_names_per_source(datasets, tmp_path):
    root, sources = datasets["rig"]
    dim = sources[0].action.shape[1]
    names = [f"ee_d{i}" for i in range(dim)]
    ep = ingest(IngestLeRobotParams(root=str(root), episodes=[0], action_names=names), tmp_path)["rig-ep000000"]
    assert ep.meta["action_names"] == names
    bad = ingest(IngestLeRobotParams(root=str(root), episodes=[0], action_names=names[:-1]), tmp_path / "bad")
    assert isinstance(bad["rig-ep000000"], EpisodeError)
    assert f"{dim - 1} names for {dim} action dimensions" in str(bad["rig-ep000000"])
