"""The episode file format: lossless round trip, header-only reads, URLs, atomic writes, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from episodes import Episode, EpisodeError, read_array, read_header_and_meta, read_meta, streams
from tests.factories import make_episode


def test_round_trip_is_lossless(tmp_path):
    ep = make_episode(cameras=("front", "wrist"))
    ep.segmentation = {"front": np.arange(6 * 32 * 32, dtype=np.int32).reshape(6, 32, 32)}
    ep.extras = {"object_poses": np.ones((6, 3, 7), np.float32)}
    ep.meta["cameras"] = {"front": {"intrinsics": {"fx": 50.0}}}
    ep.save(tmp_path / "ep.episode")
    back = Episode.load(tmp_path / "ep.episode")
    assert back.episode_id == ep.episode_id and back.fps == ep.fps and back.task == ep.task
    assert back.meta == ep.meta
    for cam in ("front", "wrist"):
        np.testing.assert_array_equal(back.rgb[cam], ep.rgb[cam])
        np.testing.assert_array_equal(back.depth_m[cam], ep.depth_m[cam])
    np.testing.assert_array_equal(back.segmentation["front"], ep.segmentation["front"])
    np.testing.assert_array_equal(back.extras["object_poses"], ep.extras["object_poses"])
    np.testing.assert_array_equal(back.state, ep.state)
    np.testing.assert_array_equal(back.action, ep.action)
    assert back.depth_m["front"].dtype == np.float32


def test_save_leaves_no_temp_files(tmp_path):
    make_episode().save(tmp_path / "a.episode")
    assert [p.name for p in tmp_path.iterdir()] == ["a.episode"]


def test_action_less_episode_round_trips(tmp_path):
    ep = make_episode(with_action=False)
    ep.save(tmp_path / "a.episode")
    assert Episode.load(tmp_path / "a.episode").action is None


@pytest.mark.parametrize(
    "mutate, field, text",
    [
        (lambda e: setattr(e, "action", np.where(np.arange(5) == 2, np.nan, e.action).astype(np.float32)),
         "action", "non-finite"),
        (lambda e: setattr(e, "state", np.full_like(e.state, np.inf)), "state", "non-finite"),
        (lambda e: e.rgb.update(front=e.rgb["front"][:0]), "rgb", "zero-length"),
        (lambda e: e.rgb.update(front=e.rgb["front"][..., :1]), "rgb.front", "(T, H, W, 3)"),
        (lambda e: e.rgb.update(front=e.rgb["front"].astype(np.float32)), "rgb.front", "uint8"),
        (lambda e: e.depth_m.update(front=e.depth_m["front"][:, :8]), "depth_m.front", "expected shape"),
        (lambda e: e.depth_m.update(front=-e.depth_m["front"]), "depth_m.front", "negative"),
        (lambda e: setattr(e, "action", e.action[:3]), "action", "expected shape"),
        (lambda e: setattr(e, "fps", 0.0), "fps", "positive"),
    ],
)
def test_validate_names_the_field(mutate, field, text):
    ep = make_episode(episode_id="ep-007")
    mutate(ep)
    with pytest.raises(EpisodeError) as info:
        ep.validate(source="/data/ep-007.mp4")
    assert info.value.field_name == field
    assert "/data/ep-007.mp4" in str(info.value) and text in str(info.value)


def test_nan_error_reports_first_bad_frame():
    ep = make_episode()
    ep.action[4, 1] = np.nan
    with pytest.raises(EpisodeError, match="first at frame 4, dim 1"):
        ep.validate()


def test_load_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __header__=np.array(["x", {"a": 1}], dtype=object), __meta__=np.array("{}"))
    with pytest.raises(EpisodeError, match="header.json"):
        Episode.load(path)


def test_header_lists_arrays_without_decoding(tmp_path):
    ep = make_episode(cameras=("front", "wrist"), with_action=False)
    ep.save(tmp_path / "a.episode")
    header, meta = read_header_and_meta(tmp_path / "a.episode")
    assert header["num_frames"] == 6 and header["episode_id"] == "ep-000"
    assert header["arrays"]["rgb.front"] == {"dtype": "uint8", "shape": [6, 32, 32, 3], "codec": "delta-zlib"}
    assert header["arrays"]["depth_m.wrist"]["codec"] == "delta-shuffle-zlib"
    assert streams(header, "rgb") == ["front", "wrist"] and "action" not in header["arrays"]
    assert meta == ep.meta == read_meta(tmp_path / "a.episode")
    np.testing.assert_array_equal(read_array(tmp_path / "a.episode", "state"), ep.state)
    assert read_array(tmp_path / "a.episode", "action") is None


def test_static_frames_compress_far_below_raw(tmp_path):
    ep = make_episode(num_frames=20, height=64, width=64)
    ep.rgb["front"][:] = ep.rgb["front"][:1]  # a static scene: only the first frame carries information
    ep.depth_m["front"][:] = ep.depth_m["front"][:1]
    raw = sum(a.nbytes for a in ep.arrays().values())
    assert len(ep.to_bytes()) < raw / 8


def test_round_trip_through_an_fsspec_url():
    import fsspec

    ep = make_episode()
    ep.save("memory://wmsynth-test/ep.episode")
    back = Episode.load("memory://wmsynth-test/ep.episode", keys={"rgb.front"})
    np.testing.assert_array_equal(back.rgb["front"], ep.rgb["front"])
    assert back.depth_m == {} and back.state is None  # only the asked-for arrays are decoded
    fsspec.filesystem("memory").rm("/wmsynth-test", recursive=True)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_file_is_a_clear_episode_error(tmp_path, damage):
    path = tmp_path / "a.episode"
    make_episode().save(path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # corrupt the first array's compressed bytes, keep the zip directory intact
        start = data.index(b"rgb.front.bin") + len("rgb.front.bin")
        data[start + 20: start + 60] = bytes(40)
    path.write_bytes(bytes(data))
    with pytest.raises(EpisodeError) as info:
        Episode.load(path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(EpisodeError, match="not found"):
        Episode.load(tmp_path / "nope.episode")


def test_missing_file_in_header_reads_names_the_url():
    with pytest.raises(EpisodeError, match="memory://wmsynth-none/x.episode: field 'file': episode file not found"):
        read_header_and_meta("memory://wmsynth-none/x.episode")
