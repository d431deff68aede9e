"""The on-disk episode format: lossless round trip, atomic writes, clear errors for bad fields."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.episode import Episode, EpisodeError
from tests.factories import make_episode


def test_round_trip_is_lossless(tmp_path):
    ep = make_episode(cameras=("front", "wrist"))
    ep.segmentation = {"front": np.arange(6 * 32 * 32, dtype=np.int32).reshape(6, 32, 32)}
    ep.extras = {"object_poses": np.ones((6, 3, 7), np.float32)}
    ep.meta["cameras"] = {"front": {"intrinsics": {"fx": 50.0}}}
    ep.save(tmp_path / "ep.npz")
    back = Episode.load(tmp_path / "ep.npz")
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
    make_episode().save(tmp_path / "a.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]


def test_action_less_episode_round_trips(tmp_path):
    ep = make_episode(with_action=False)
    ep.save(tmp_path / "a.npz")
    assert Episode.load(tmp_path / "a.npz").action is None


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
    with pytest.raises(ValueError, match="allow_pickle"):
        Episode.load(path)
