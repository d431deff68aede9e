"""write_lerobot: shards load back with lerobot's own reader, with the values, units and fates we expect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.stage import FILTERED, OK, QUARANTINED, WRITTEN, StageContext, row
from pipeline.stages.write_lerobot import (
    PROVENANCE_FILE, ShardSchema, WriteLerobotParams, plan_shards, read_provenance, write_lerobot, write_shard,
)
from tests.factories import make_episode

REPO_ID = "wmsynth/test"


def _smooth_rgb(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """(T, H, W, 3) uint8 gradients with a moving bright square: content a lossy codec can be judged on.

    (make_episode's RGB is per-pixel noise, which no video codec reproduces closely.)
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 150 + 50, y / height * 150 + 50, np.full_like(x, rng.uniform(60, 120))], -1)
    frames = np.repeat(base[None], num_frames, axis=0)
    for t in range(num_frames):
        top, left = 4 + t % (height // 2), 4 + (2 * t) % (width // 2)
        frames[t, top:top + height // 4, left:left + width // 4] = (230, 200, 40)
    return frames.astype(np.uint8)


def _episode(episode_id: str, seed: int = 0, size: int = 32, cameras=("front",), depth_cameras=("front",),
             with_action: bool = True, num_frames: int = 6, task: str = "push the red cube to the left"):
    episode = make_episode(episode_id, num_frames=num_frames, height=size, width=size, cameras=cameras,
                           with_action=with_action, seed=seed, task=task)
    episode.rgb = {cam: _smooth_rgb(num_frames, size, size, seed * 10 + k) for k, cam in enumerate(cameras)}
    episode.depth_m = {cam: d for cam, d in episode.depth_m.items() if cam in depth_cameras}
    episode.meta.update({
        "source_uri": f"test://{episode_id}",
        "cameras": {cam: {"intrinsics": {"fx": 30.0, "fy": 30.0, "cx": size / 2, "cy": size / 2, "width": size,
                                         "height": size},
                          "cam_to_world": np.eye(4).tolist()} for cam in cameras},
        "subgoals": [{"label": "approach", "start": 0, "end": num_frames}],
        "success": True,
    })
    episode.validate()
    return episode


def _save(tmp_path: Path, *episodes) -> list[Path]:
    return [ep.save(tmp_path / "episodes" / f"{ep.episode_id}.npz") for ep in episodes]


def _read(shard_dir: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(REPO_ID, root=shard_dir)


def _ctx(run_dir: Path, resume: bool = False) -> StageContext:
    return StageContext(run_dir=run_dir, stage_dir=run_dir / "stages" / "03-write_lerobot", seed=0, resume=resume,
                        index=3)


def _rows(paths: list[Path]) -> list[dict]:
    return [row(p.stem, path=str(p), stage="depth", source="test") for p in paths]


def _by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["episode_id"]: r for r in rows}


# -- write_shard, no Ray -----------------------------------------------------------------------------------------------


def test_round_trip_through_lerobot_reader(tmp_path):
    episodes = [_episode("ep-a", seed=1, cameras=("front", "wrist"), task="push the red cube to the left"),
                _episode("ep-b", seed=2, cameras=("front", "wrist"), num_frames=8, task="stack the blue block")]
    paths = _save(tmp_path, *episodes)
    shard = tmp_path / "shards" / "shard-00000"

    rows = write_shard(paths, shard, WriteLerobotParams(repo_id=REPO_ID))

    assert [(r["episode_id"], r["status"], r["shard"], r["stage"]) for r in rows] == [
        ("ep-a", WRITTEN, "shard-00000", "write_lerobot"), ("ep-b", WRITTEN, "shard-00000", "write_lerobot")]
    assert not list(shard.parent.glob(".tmp-*"))
    ds = _read(shard)
    assert ds.num_episodes == 2 and len(ds) == 6 + 8 and ds.fps == 10
    assert ds.meta.robot_type == "franka_panda"
    features = ds.meta.features
    assert features["observation.images.wrist"]["shape"] == (32, 32, 3)
    assert features["observation.depth.front"]["info"]["is_depth_map"] is True
    assert "observation.depth.wrist" not in features  # only cameras with depth get a depth stream
    assert features["observation.state"]["names"] == [f"s{i}" for i in range(8)]
    assert features["action"]["names"] == ["dx", "dy", "dz", "dyaw", "gripper"]

    index = 0
    for episode_index, episode in enumerate(episodes):
        depth_rel_errors, rgb_errors = [], []
        for t in range(episode.num_frames):
            item = ds[index]
            index += 1
            assert int(item["episode_index"]) == episode_index and int(item["frame_index"]) == t
            assert item["task"] == episode.task
            np.testing.assert_array_equal(item["observation.state"].numpy(), episode.state[t])  # float32 exact
            np.testing.assert_array_equal(item["action"].numpy(), episode.action[t])
            for cam in ("front", "wrist"):
                rgb = item[f"observation.images.{cam}"].numpy().transpose(1, 2, 0) * 255  # (3, H, W) in [0, 1]
                rgb_errors.append(np.abs(rgb - episode.rgb[cam][t]).mean())
            depth_mm = item["observation.depth.front"].numpy()[0]  # (1, H, W) float32 millimetres by default
            truth_m = episode.depth_m["front"][t]
            depth_rel_errors.append(np.median(np.abs(depth_mm / 1000.0 - truth_m) / truth_m))
        assert np.mean(rgb_errors) < 8.0, f"{episode.episode_id}: RGB mean abs error {np.mean(rgb_errors):.2f}"
        assert np.median(depth_rel_errors) < 0.01, f"{episode.episode_id}: depth error {np.median(depth_rel_errors)}"


def test_depth_reads_back_in_metres_when_asked(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    episode = _episode("ep-m", seed=3)
    shard = tmp_path / "shards" / "shard-00000"
    write_shard(_save(tmp_path, episode), shard, WriteLerobotParams(repo_id=REPO_ID))

    ds = LeRobotDataset(REPO_ID, root=shard, depth_output_unit="m")
    depth_m = ds[2]["observation.depth.front"].numpy()[0]
    assert np.max(np.abs(depth_m - episode.depth_m["front"][2])) < 0.003  # 12-bit log steps: < 1.8 mm below 2 m


def test_action_less_episodes_make_a_shard_without_action(tmp_path):
    episodes = [_episode("vid-0", seed=4, with_action=False), _episode("vid-1", seed=5, with_action=False)]
    shard = tmp_path / "shards" / "shard-00000"

    rows = write_shard(_save(tmp_path, *episodes), shard, WriteLerobotParams(repo_id=REPO_ID))

    assert {r["status"] for r in rows} == {WRITTEN}
    ds = _read(shard)
    assert "action" not in ds.meta.features and "observation.state" in ds.meta.features
    assert "action" not in ds[0] and len(ds) == 12


def test_bad_episodes_are_quarantined_and_the_rest_written(tmp_path):
    good = [_episode("ep-0", seed=0), _episode("ep-3", seed=3)]
    odd_size = _episode("ep-1", seed=1, size=48)
    paths = _save(tmp_path, good[0], odd_size, good[1])
    corrupt = tmp_path / "episodes" / "ep-2.npz"
    corrupt.write_bytes(paths[0].read_bytes()[:5000])  # truncated copy
    shard = tmp_path / "shards" / "shard-00000"

    rows = write_shard([paths[0], paths[1], corrupt, paths[2]], shard, WriteLerobotParams(repo_id=REPO_ID))

    by_id = _by_id(rows)
    assert by_id["ep-0"]["status"] == by_id["ep-3"]["status"] == WRITTEN
    assert by_id["ep-1"]["status"] == QUARANTINED and "cameras" in by_id["ep-1"]["reason"]
    assert "48" in by_id["ep-1"]["reason"] and by_id["ep-1"]["shard"] == ""
    assert by_id["ep-2"]["status"] == QUARANTINED and "unreadable episode file" in by_id["ep-2"]["reason"]
    assert _read(shard).num_episodes == 2
    provenance = read_provenance(shard)
    assert [e["episode_id"] for e in provenance["episodes"]] == ["ep-0", "ep-3"]
    assert {q["episode_id"] for q in provenance["quarantined"]} == {"ep-1", "ep-2"}


@pytest.mark.parametrize("video_codec", ["libsvtav1", "h264", "hevc"])
def test_short_and_odd_length_episodes_decode_at_every_frame(tmp_path, video_codec):
    """Episode boundaries inside the concatenated videos: lerobot 0.6.1's x265 settings break here."""
    episodes = [_episode(f"ep-{i}", seed=i, num_frames=n) for i, n in enumerate((3, 2, 5, 7))]
    single = _episode("ep-single", seed=9, num_frames=1)
    shard = tmp_path / "shards" / "shard-00000"
    params = WriteLerobotParams(repo_id=REPO_ID, video_codec=video_codec)

    rows = write_shard(_save(tmp_path, *episodes, single), shard, params)

    assert [r["status"] for r in rows] == [WRITTEN] * 4 + [QUARANTINED]
    assert ">= 2 per episode" in rows[-1]["reason"]
    ds = _read(shard)
    assert len(ds) == 3 + 2 + 5 + 7
    for i in range(len(ds)):
        item = ds[i]  # raises FrameTimestampError if a frame cannot be found at its timestamp
        episode, t = episodes[int(item["episode_index"])], int(item["frame_index"])
        np.testing.assert_array_equal(item["observation.state"].numpy(), episode.state[t])
        truth_m = episode.depth_m["front"][t]
        assert np.median(np.abs(item["observation.depth.front"].numpy()[0] / 1000 - truth_m) / truth_m) < 0.01
        rgb = item["observation.images.front"].numpy().transpose(1, 2, 0) * 255
        assert np.abs(rgb - episode.rgb["front"][t]).mean() < 10.0


def test_provenance_maps_episode_index_to_our_ids(tmp_path):
    episodes = [_episode("ep-x", seed=7), _episode("ep-y", seed=8, task="open the drawer")]
    episodes[1].meta["parent"] = "ep-x"
    shard = tmp_path / "shards" / "shard-00007"

    write_shard(_save(tmp_path, *episodes), shard, WriteLerobotParams(repo_id=REPO_ID))

    provenance = json.loads((shard / PROVENANCE_FILE).read_text())
    assert provenance["shard"] == "shard-00007" and provenance["repo_id"] == REPO_ID
    assert provenance["schema"]["fps"] == 10 and provenance["depth"]["unit_read_by_default"] == "mm"
    first, second = provenance["episodes"]
    assert (first["episode_index"], first["episode_id"], first["seed"], first["source"]) == (0, "ep-x", 7, "test")
    assert (second["episode_index"], second["episode_id"], second["parent"], second["task"]) == (
        1, "ep-y", "ep-x", "open the drawer")
    assert second["source_uri"] == "test://ep-y" and second["success"] is True and second["num_frames"] == 6
    assert second["meta"]["cameras"]["front"]["intrinsics"]["fx"] == 30.0
    assert second["meta"]["subgoals"] == [{"label": "approach", "start": 0, "end": 6}]
    ds = _read(shard)  # the extra file does not disturb lerobot
    assert [ds.meta.episodes[i]["episode_index"] for i in range(2)] == [0, 1]


def test_schema_probe_matches_the_loaded_episode(tmp_path):
    episode = _episode("ep-p", seed=9, cameras=("front", "wrist"), depth_cameras=("wrist",), with_action=False)
    [path] = _save(tmp_path, episode)
    assert ShardSchema.probe(path, None) == ShardSchema.of_episode(episode, None, str(path))
    probed = ShardSchema.probe(path, "koch")
    assert probed.robot_type == "koch" and probed.depth_cameras == ("wrist",) and probed.action_names is None


def test_plan_groups_by_schema_then_id_and_fills_free_numbers():
    small = ShardSchema(10, "franka_panda", (("front", 32, 32),), ("front",), ("s0",), ("a0",))
    big = ShardSchema(10, "franka_panda", (("front", 64, 64),), ("front",), ("s0",), ("a0",))
    episodes = [("e3", small), ("e1", big), ("e0", small), ("e2", small), ("e4", big)]

    plans = plan_shards(episodes, episodes_per_shard=2, taken={1})

    assert [(p.name, [episodes[j][0] for j in p.row_indices]) for p in plans] == [
        ("shard-00000", ["e0", "e2"]), ("shard-00002", ["e1", "e4"]), ("shard-00003", ["e3"])]


def test_lerobot_internals_used_to_pace_the_encoders_still_exist(tmp_path):
    """_wait_for_encoders reads lerobot 0.6.1's private encoder queues; after an upgrade it would silently stop
    pacing (long episodes could then be cut short and quarantined by the shard check). This test notices first."""
    from pipeline.stages.write_lerobot import _create_dataset

    episode = _episode("ep-q")
    schema = ShardSchema.of_episode(episode, None, "test")
    dataset = _create_dataset(tmp_path / "ds", schema, WriteLerobotParams(repo_id=REPO_ID))
    try:
        dataset.add_frame({"observation.images.front": episode.rgb["front"][0],
                           "observation.depth.front": episode.depth_m["front"][0][..., None],
                           "observation.state": episode.state[0], "action": episode.action[0], "task": episode.task})
        encoder = dataset.writer._streaming_encoder
        assert set(encoder._frame_queues) == set(encoder._threads) == {"observation.images.front",
                                                                         "observation.depth.front"}
        assert all(q.maxsize == 0 for q in encoder._frame_queues.values())  # unbounded: lerobot never drops a frame
    finally:
        dataset.clear_episode_buffer()
        dataset.finalize()


def test_params_are_checked():
    with pytest.raises(ValueError, match="episodes_per_shard"):
        WriteLerobotParams(episodes_per_shard=0)
    with pytest.raises(ValueError, match="libsvtav1 takes an integer"):
        WriteLerobotParams(video_preset="fast")
    with pytest.raises(ValueError, match="depth_max_m"):
        WriteLerobotParams(depth_min_m=2.0, depth_max_m=1.0)


# -- the stage on Ray --------------------------------------------------------------------------------------------------


def test_stage_writes_shards_in_parallel_with_row_fates(tmp_path, ray_session):
    episodes = [_episode(f"ep-{i}", seed=i) for i in range(4)] + [_episode("ep-4", seed=4, size=48)]
    paths = _save(tmp_path, *episodes)
    corrupt = tmp_path / "episodes" / "ep-5.npz"
    corrupt.write_bytes(b"not an npz")
    rows = _rows([*paths, corrupt])
    rows.append(row("ep-0", path=str(paths[0]), stage="depth", source="test"))  # the same episode twice
    rows.append(row("ep-6", path="", status=FILTERED, reason="scripted policy failed", stage="generate_tabletop"))
    rows.append(row("ep-7", path="", status=QUARANTINED, reason="bad input", stage="depth"))
    params = WriteLerobotParams(repo_id=REPO_ID, episodes_per_shard=2)

    out = write_lerobot(ray_session.data.from_items(rows), params, _ctx(tmp_path / "run")).take_all()

    assert len(out) == len(rows)
    [duplicate] = [r for r in out if "duplicate episode_id" in r["reason"]]
    assert duplicate["episode_id"] == "ep-0" and duplicate["status"] == QUARANTINED
    by_id = _by_id([r for r in out if r is not duplicate])
    assert {i: by_id[f"ep-{i}"]["shard"] for i in range(5)} == {
        0: "shard-00000", 1: "shard-00000", 2: "shard-00001", 3: "shard-00001", 4: "shard-00002"}
    assert all(by_id[f"ep-{i}"]["status"] == WRITTEN and by_id[f"ep-{i}"]["stage"] == "write_lerobot"
               for i in range(5))
    assert by_id["ep-5"]["status"] == QUARANTINED and "unreadable episode file" in by_id["ep-5"]["reason"]
    assert by_id["ep-6"] == rows[-2] and by_id["ep-7"] == rows[-1]  # passed through unchanged
    shards = tmp_path / "run" / "shards"
    assert sorted(p.name for p in shards.iterdir()) == ["shard-00000", "shard-00001", "shard-00002"]
    for name, ids, size in [("shard-00000", ["ep-0", "ep-1"], 32), ("shard-00001", ["ep-2", "ep-3"], 32),
                            ("shard-00002", ["ep-4"], 48)]:
        ds = _read(shards / name)
        assert ds.num_episodes == len(ids) and ds.meta.features["observation.images.front"]["shape"][0] == size
        assert [e["episode_id"] for e in read_provenance(shards / name)["episodes"]] == ids


def test_resume_keeps_finished_shards_and_writes_the_missing_ones(tmp_path, ray_session):
    episodes = [_episode(f"ep-{i}", seed=i) for i in range(4)]
    paths = _save(tmp_path, *episodes)
    params = WriteLerobotParams(repo_id=REPO_ID, episodes_per_shard=2)
    shards = tmp_path / "run" / "shards"
    write_shard(paths[:2], shards / "shard-00000", params)  # finished before the "crash"
    marker = shards / "shard-00000" / "untouched"
    marker.touch()
    (shards / ".tmp-shard-00001-deadbeef" / "meta").mkdir(parents=True)  # unfinished when it crashed

    out = write_lerobot(ray_session.data.from_items(_rows(paths)), params, _ctx(tmp_path / "run", resume=True))
    by_id = _by_id(out.take_all())

    assert {eid: (r["status"], r["shard"]) for eid, r in by_id.items()} == {
        "ep-0": (WRITTEN, "shard-00000"), "ep-1": (WRITTEN, "shard-00000"),
        "ep-2": (WRITTEN, "shard-00001"), "ep-3": (WRITTEN, "shard-00001")}
    assert marker.exists()  # not rewritten
    assert sorted(p.name for p in shards.iterdir()) == ["shard-00000", "shard-00001"]  # stale temp dir gone
    written = [e["episode_id"] for name in ("shard-00000", "shard-00001")
               for e in read_provenance(shards / name)["episodes"]]
    assert written == ["ep-0", "ep-1", "ep-2", "ep-3"]  # each episode exactly once
    assert _read(shards / "shard-00001").num_episodes == 2


def test_without_resume_the_shards_of_an_earlier_run_are_replaced(tmp_path, ray_session):
    paths = _save(tmp_path, *[_episode(f"ep-{i}", seed=i) for i in range(2)])
    shards = tmp_path / "run" / "shards"
    write_shard(paths, shards / "shard-00000", WriteLerobotParams(repo_id=REPO_ID))  # one shard of two episodes
    (shards / "shard-00000" / "old").touch()

    params = WriteLerobotParams(repo_id=REPO_ID, episodes_per_shard=1)
    out = write_lerobot(ray_session.data.from_items(_rows(paths)), params, _ctx(tmp_path / "run")).take_all()

    assert {r["episode_id"]: r["shard"] for r in out} == {"ep-0": "shard-00000", "ep-1": "shard-00001"}
    assert sorted(p.name for p in shards.iterdir()) == ["shard-00000", "shard-00001"]  # nothing old left aside
    assert not (shards / "shard-00000" / "old").exists() and _read(shards / "shard-00000").num_episodes == 1


def test_unwritable_output_dir_is_a_clear_error(tmp_path, ray_session):
    run_dir = tmp_path / "not-a-dir"
    run_dir.write_text("a file where the run directory should be")
    ds = ray_session.data.from_items(_rows(_save(tmp_path, _episode("ep-0"))))

    with pytest.raises(OSError, match=f"cannot write shards under {run_dir / 'shards'}"):
        write_lerobot(ds, WriteLerobotParams(repo_id=REPO_ID), _ctx(run_dir))


def test_nothing_ok_means_no_shards(tmp_path, ray_session):
    rows = [row("ep-0", status=FILTERED, reason="too short", stage="generate_tabletop")]
    out = write_lerobot(ray_session.data.from_items(rows), WriteLerobotParams(), _ctx(tmp_path / "run")).take_all()
    assert out == rows and not any((tmp_path / "run" / "shards").iterdir())
    assert OK not in {r["status"] for r in out}
