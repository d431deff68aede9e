"""One LeRobot shard without Ray: lerobot's reader gets back what we wrote; publication puts _COMPLETE last."""

from __future__ import annotations

import json

import numpy as np
import pytest

from episodes import io as fileio
from pipeline import shards
from pipeline.lerobot_schema import ShardSchema
from pipeline.lerobot_shard import PROVENANCE_FILE, create_dataset, read_provenance, write_and_publish, write_shard
from pipeline.stage import QUARANTINED, WRITTEN
from pipeline.stages.write_lerobot import WriteLerobotParams
from tests.shard_factories import REPO_ID, read_shard, save_episodes, shard_episode, shard_inputs

SETTINGS = WriteLerobotParams(repo_id=REPO_ID).writer_settings()


def _fates(fates: list[dict]) -> dict[str, dict]:
    return {f["episode_id"]: f for f in fates}


def test_round_trip_through_lerobot_reader(tmp_path):
    episodes = [shard_episode("ep-a", seed=1, cameras=("front", "wrist"), task="push the red cube to the left"),
                shard_episode("ep-b", seed=2, cameras=("front", "wrist"), num_frames=8, task="stack the blue block")]
    shard = tmp_path / "shard-00000"

    fates = write_shard(shard_inputs(save_episodes(tmp_path, *episodes)), shard, SETTINGS)

    assert [(f["episode_id"], f["status"], f["shard"]) for f in fates] == [
        ("ep-a", WRITTEN, "shard-00000"), ("ep-b", WRITTEN, "shard-00000")]
    ds = read_shard(shard)
    assert ds.num_episodes == 2 and len(ds) == 6 + 8 and ds.fps == 10
    assert ds.meta.robot_type == "unknown"  # the factory's episodes name no robot
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

    metres = read_shard(shard, depth_output_unit="m")[2]["observation.depth.front"].numpy()[0]
    assert np.max(np.abs(metres - episodes[0].depth_m["front"][2])) < 0.003  # 12-bit log steps: < 1.8 mm below 2 m


def test_action_less_episodes_make_a_shard_without_action(tmp_path):
    episodes = [shard_episode("vid-0", seed=4, with_action=False), shard_episode("vid-1", seed=5, with_action=False)]
    shard = tmp_path / "shard-00000"

    fates = write_shard(shard_inputs(save_episodes(tmp_path, *episodes)), shard, SETTINGS)

    assert {f["status"] for f in fates} == {WRITTEN}
    ds = read_shard(shard)
    assert "action" not in ds.meta.features and "observation.state" in ds.meta.features
    assert "action" not in ds[0] and len(ds) == 12


def test_bad_episodes_are_quarantined_and_the_rest_written(tmp_path):
    good = [shard_episode("ep-0", seed=0), shard_episode("ep-3", seed=3)]
    odd_size = shard_episode("ep-1", seed=1, size=48)
    paths = save_episodes(tmp_path, good[0], odd_size, good[1])
    corrupt = tmp_path / "ep-2.episode"
    corrupt.write_bytes(open(paths[0], "rb").read()[:5000])  # truncated copy
    shard = tmp_path / "shard-00000"

    fates = _fates(write_shard(shard_inputs([paths[0], paths[1], str(corrupt), paths[2]]), shard, SETTINGS))

    assert fates["ep-0"]["status"] == fates["ep-3"]["status"] == WRITTEN
    assert fates["ep-1"]["status"] == QUARANTINED and "cameras" in fates["ep-1"]["reason"]
    assert "48" in fates["ep-1"]["reason"] and fates["ep-1"]["shard"] == ""
    assert fates["ep-2"]["status"] == QUARANTINED and "ep-2.episode" in fates["ep-2"]["reason"]
    assert read_shard(shard).num_episodes == 2
    provenance = read_provenance(shard)
    assert [e["episode_id"] for e in provenance["episodes"]] == ["ep-0", "ep-3"]
    assert {q["episode_id"] for q in provenance["quarantined"]} == {"ep-1", "ep-2"}


def test_nothing_writable_leaves_no_dataset(tmp_path):
    corrupt = tmp_path / "ep-0.episode"
    corrupt.write_bytes(b"not an episode")
    [f] = write_shard(shard_inputs([str(corrupt)]), tmp_path / "shard-00000", SETTINGS)
    assert f["status"] == QUARANTINED and "not an episode file" in f["reason"]
    assert not (tmp_path / "shard-00000").exists()


@pytest.mark.parametrize("video_codec", ["libsvtav1", "h264", "hevc"])
def test_short_and_odd_length_episodes_decode_at_every_frame(tmp_path, video_codec):
    """Episode boundaries inside the concatenated videos: lerobot 0.6.1's x265 settings break here."""
    episodes = [shard_episode(f"ep-{i}", seed=i, num_frames=n) for i, n in enumerate((3, 2, 5, 7))]
    single = shard_episode("ep-single", seed=9, num_frames=1)
    shard = tmp_path / "shard-00000"
    settings = WriteLerobotParams(repo_id=REPO_ID, video_codec=video_codec).writer_settings()

    fates = write_shard(shard_inputs(save_episodes(tmp_path, *episodes, single)), shard, settings)

    assert [f["status"] for f in fates] == [WRITTEN] * 4 + [QUARANTINED]
    assert ">= 2 per episode" in fates[-1]["reason"]
    ds = read_shard(shard)
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
    episodes = [shard_episode("ep-x", seed=7), shard_episode("ep-y", seed=8, task="open the drawer")]
    episodes[1].meta["parent"] = "ep-x"
    shard = tmp_path / "shard-00007"

    write_shard(shard_inputs(save_episodes(tmp_path, *episodes)), shard, SETTINGS)

    provenance = json.loads((shard / PROVENANCE_FILE).read_text())
    assert provenance["shard"] == "shard-00007" and provenance["repo_id"] == REPO_ID
    assert provenance["schema"]["fps"] == 10 and provenance["depth"]["unit_read_by_default"] == "mm"
    first, second = provenance["episodes"]
    assert (first["episode_index"], first["episode_id"], first["seed"], first["source"]) == (0, "ep-x", 7, "test")
    assert first["input_path"] == "episodes/ep-x.episode"  # as the stage records it: relative to the run dir
    assert (second["episode_index"], second["episode_id"], second["parent"], second["task"]) == (
        1, "ep-y", "ep-x", "open the drawer")
    assert second["source_uri"] == "test://ep-y" and second["success"] is True and second["num_frames"] == 6
    assert second["meta"]["cameras"]["front"]["intrinsics"]["fx"] == 30.0
    assert second["meta"]["subgoals"] == [{"label": "approach", "start": 0, "end": 6}]
    ds = read_shard(shard)  # the extra file does not disturb lerobot
    assert [ds.meta.episodes[i]["episode_index"] for i in range(2)] == [0, 1]


def test_schema_probe_reads_the_header_only(tmp_path):
    episode = shard_episode("ep-p", seed=9, cameras=("front", "wrist"), depth_cameras=("wrist",), with_action=False)
    [path] = save_episodes(tmp_path, episode)
    assert ShardSchema.probe(path, None) == ShardSchema.of_episode(episode, None, str(path))
    probed = ShardSchema.probe(path, "koch")
    assert probed.robot_type == "koch" and probed.depth_cameras == ("wrist",) and probed.action_names is None
    memory_path = "memory://probe/ep-p.episode"
    episode.save(memory_path)
    assert ShardSchema.probe(memory_path, "koch") == probed


def test_lerobot_internals_used_to_pace_the_encoders_still_exist(tmp_path):
    """_wait_for_encoders reads lerobot 0.6.1's private encoder queues; after an upgrade it would silently stop
    pacing (long episodes could then be cut short and quarantined by the shard check). This test notices first."""
    episode = shard_episode("ep-q")
    schema = ShardSchema.of_episode(episode, None, "test")
    dataset = create_dataset(tmp_path / "ds", schema, SETTINGS)
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


# -- publication: rename or upload, then _COMPLETE -----------------------------------------------------------------


def test_object_storage_shard_gets_its_complete_marker_last(tmp_path):
    from fsspec.implementations.memory import MemoryFileSystem

    paths = save_episodes(tmp_path, shard_episode("ep-0", seed=0), shard_episode("ep-1", seed=1))
    target = "memory://objstore-run/shards/shard-00000"

    fates = write_and_publish(shard_inputs(paths), target, SETTINGS)

    assert [f["status"] for f in fates] == [WRITTEN, WRITTEN]
    keys = [k for k in MemoryFileSystem.store if k.startswith("/objstore-run/shards/shard-00000/")]
    assert keys[-1].endswith("/_COMPLETE") and len(keys) > 5  # objects in the order they were created
    record = shards.read_complete(target)
    assert record["episodes"] == ["ep-0", "ep-1"] and record["shard"] == "shard-00000"
    assert {f["path"] for f in record["files"]} >= {"meta/info.json", PROVENANCE_FILE}
    assert all(MemoryFileSystem.store["/objstore-run/shards/shard-00000/" + f["path"]].size == f["size"]
               for f in record["files"])
    listing = shards.list_shards("memory://objstore-run/shards")
    assert list(listing.complete) == ["shard-00000"] and not listing.incomplete
    with shards.local_copy(target, record) as local:  # streamed back into a temp dir, sizes checked
        assert read_shard(local).num_episodes == 2


def test_an_interrupted_upload_leaves_an_incomplete_shard(tmp_path, monkeypatch):
    paths = save_episodes(tmp_path, shard_episode("ep-0", seed=0))
    target = "memory://killed-run/shards/shard-00000"
    real_put = fileio.filesystem(target)[0].put_file
    uploaded = []

    def dying_put(self, lpath, rpath, *args, **kwargs):
        if len(uploaded) == 3:
            raise ConnectionError("connection reset by peer")
        uploaded.append(rpath)
        return real_put(lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(type(fileio.filesystem(target)[0]), "put_file", dying_put)
    [f] = write_and_publish(shard_inputs(paths), target, SETTINGS)

    assert f["status"] == QUARANTINED and "could not be published" in f["reason"]
    assert "connection reset" in f["reason"] and len(uploaded) == 3
    assert not fileio.exists(fileio.join(target, shards.COMPLETE))
    listing = shards.list_shards("memory://killed-run/shards")
    assert not listing.complete and [fileio.name(p) for p in listing.incomplete] == ["shard-00000"]


def test_a_local_shard_is_renamed_into_place_then_marked(tmp_path):
    paths = save_episodes(tmp_path / "episodes", shard_episode("ep-0", seed=0))
    target = tmp_path / "run" / "shards" / "shard-00003"

    write_and_publish(shard_inputs(paths), f"file://{target}", SETTINGS)

    files = [p for p in target.rglob("*") if p.is_file()]
    marker = target / shards.COMPLETE
    assert all(marker.stat().st_mtime_ns >= p.stat().st_mtime_ns for p in files)
    assert sorted(p.name for p in target.parent.iterdir()) == ["shard-00003"]  # no staging dir left
    assert {f["path"] for f in json.loads(marker.read_text())["files"]} == {
        p.relative_to(target).as_posix() for p in files if p != marker}
