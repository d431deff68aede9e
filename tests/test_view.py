"""wmsynth view (a real episode read back from a LeRobot shard, a synthetic one from its intermediate episode file:
playable videos with one frame per episode frame) and lerobot's own viewer (lerobot-dataset-viz, rerun-sdk) on a
wmsynth shard, depth stream included, in its headless save-to-file mode."""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.lerobot_shard import write_and_publish
from pipeline.stages.write_lerobot import WriteLerobotParams
from pipeline.view import ViewError, view_episode
from tests.shard_factories import REPO_ID, save_episodes, shard_episode, shard_inputs


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run with one shard (a real and a pseudo-labelled episode) and a synthetic episode kept only as a stage's
    episode file (as a rejected rollout is)."""
    run = tmp_path_factory.mktemp("view") / "run"
    real = shard_episode("ep-real-0", seed=0, num_frames=7)
    pseudo = shard_episode("ep-pseudo-1", seed=1, num_frames=6)
    pseudo.meta["action_source"] = "pseudo_labelled"
    paths = save_episodes(run / "stages" / "00_generate_tabletop" / "episodes", real, pseudo)
    write_and_publish(shard_inputs(paths), str(run / "shards" / "shard-00000"),
                      WriteLerobotParams(repo_id=REPO_ID).writer_settings())
    synthetic = shard_episode("ep-real-0-syn000", seed=2, num_frames=5)
    synthetic.meta.update(source="synthetic", parent="ep-real-0", recipe={"proposal": "scripted"})
    save_episodes(run / "stages" / "06_rollout" / "episodes", synthetic)
    return run


def _decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_view_real_episode_from_its_shard_as_mp4(run_dir, tmp_path):
    from pipeline import cli

    out = tmp_path / "real.mp4"
    assert cli.main(["view", str(run_dir), "--episode", "ep-real-0", "--out", str(out)]) == 0
    frames = _decode(out)
    assert len(frames) == 7
    height, width, _ = frames[0].shape
    assert height > 2 * 256 and width >= 256  # RGB above depth, the action strip below
    top_left = frames[0][2:14, 2:30].astype(int)
    assert abs(top_left[..., 1].mean() - 160) < 40 and top_left[..., 0].mean() < 100  # the green "real" tag


def test_view_pseudo_labelled_and_synthetic_episodes(run_dir, tmp_path):
    path, count, where = view_episode(str(run_dir), "ep-pseudo-1", tmp_path / "pseudo.mp4")
    assert count == 6 and len(_decode(path)) == 6 and "shard-00000" in where
    path, count, where = view_episode(str(run_dir), "ep-real-0-syn000", tmp_path / "syn.gif")
    assert count == 5 and where.endswith("06_rollout/episodes/ep-real-0-syn000.episode")
    assert len(_decode(path)) == 5  # the GIF decodes too
    path, count, _ = view_episode(str(run_dir), "ep-real-0-syn000", tmp_path / "syn.mp4")
    assert len(_decode(path)) == 5


def test_view_unknown_episode_says_where_it_looked(run_dir, tmp_path):
    with pytest.raises(ViewError, match="is in no shard"):
        view_episode(str(run_dir), "no-such-episode", tmp_path / "x.mp4")


def test_lerobot_dataset_viz_saves_an_rrd_with_the_depth_stream(run_dir, tmp_path, monkeypatch):
    from lerobot.scripts import lerobot_dataset_viz

    monkeypatch.setattr(sys, "argv", ["lerobot-dataset-viz", "--repo-id", REPO_ID,
                                      "--root", str(run_dir / "shards" / "shard-00000"), "--episode-index", "0",
                                      "--save", "1", "--output-dir", str(tmp_path), "--batch-size", "4"])
    lerobot_dataset_viz.main()
    from rerun.experimental import RrdReader

    rrd = tmp_path / f"{REPO_ID.replace('/', '_')}_episode_0.rrd"
    assert rrd.stat().st_size > 1000
    schema = str(RrdReader(rrd).stream().collect().schema())  # rerun's reader (the file is still open: no footer)
    for column in ("/observation.depth.front:DepthImage:buffer", "/observation.depth.front:DepthImage:meter",
                   "/observation.images.front:Image:buffer", "/action:Scalars:scalars"):
        assert column in schema, column
