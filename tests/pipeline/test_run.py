"""The runner end to end on tiny configs: manifest accounting, resume after an interruption, --only, the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from episodes import Episode
from pipeline.config import ConfigError, parse_config
from pipeline.run import RunError, run

REPO = Path(__file__).resolve().parents[2]
TINY_SIM = {"num_episodes": 4, "image_size": 32, "max_steps": 12, "tasks": ["reach", "push"], "num_objects": [2, 3]}


def tiny_config(run_dir: Path, *, num_episodes: int = 4, extra_sources: list[dict] | None = None,
                episodes_per_shard: int = 2) -> dict:
    return {
        "output_dir": str(run_dir),
        "seed": 3,
        "stages": [
            {"name": "generate_tabletop", "params": {**TINY_SIM, "num_episodes": num_episodes}},
            *(extra_sources or []),
            {"name": "depth", "params": {"backend": "sensor"}},
            {"name": "write_lerobot", "params": {"episodes_per_shard": episodes_per_shard, "repo_id": "test/tiny"}},
        ],
    }


def _fates(manifest: dict) -> dict[str, str]:
    return {e["episode_id"]: e["fate"] for e in manifest["episodes"]}


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    manifest = run(parse_config(tiny_config(run_dir)))
    return run_dir, manifest


def test_run_writes_every_episode_once(finished_run):
    run_dir, manifest = finished_run
    assert manifest["counts"] == {"written": 4, "total": 4}
    assert sorted(_fates(manifest)) == [f"tabletop-{i:06d}" for i in range(4)]
    assert [s["name"] for s in manifest["shards"]] == ["shard-00000", "shard-00001"]
    assert [s["episodes"] for s in manifest["shards"]] == [2, 2]
    assert [t["stage"] for t in manifest["stages"]] == ["generate_tabletop", "depth", "write_lerobot"]
    assert json.loads((run_dir / "manifest.json").read_text()) == manifest
    for index, name in enumerate(("generate_tabletop", "depth", "write_lerobot")):
        assert (run_dir / "stages" / f"{index:02d}_{name}" / "_SUCCESS").exists()

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    total = sum(LeRobotDataset("test/tiny", root=run_dir / "shards" / s["name"]).num_episodes
                for s in manifest["shards"])
    assert total == 4


def _snapshot(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


def test_resume_after_interruption_redoes_only_missing_work(finished_run, tmp_path):
    import shutil

    src_dir, _ = finished_run
    run_dir = tmp_path / "tiny"
    shutil.copytree(src_dir, run_dir)
    config = parse_config(tiny_config(run_dir))
    gen_dir = run_dir / "stages" / "00_generate_tabletop"
    reference = Episode.load(gen_dir / "episodes" / "tabletop-000002.episode").rgb["front"]
    # The state a kill during the generate stage leaves: one episode missing, no stage marked complete, one shard
    # already written from an earlier attempt and a stale temp shard directory.
    (gen_dir / "episodes" / "tabletop-000002.episode").unlink()
    (gen_dir / "done" / "tabletop-000002.json").unlink()
    for stage_dir in (run_dir / "stages").iterdir():
        (stage_dir / "_SUCCESS").unlink()
    shutil.rmtree(run_dir / "shards" / "shard-00001")
    (run_dir / "shards" / ".tmp-shard-00001-deadbeef").mkdir()
    (run_dir / "manifest.json").unlink()
    kept = _snapshot(sorted((gen_dir / "episodes").glob("*.episode")) + [run_dir / "shards" / "shard-00000" / "meta"])

    manifest = run(config, resume=True)

    assert manifest["counts"] == {"written": 4, "total": 4}
    assert _snapshot(list(kept)) == kept, "finished episodes or shards were redone"
    regenerated = Episode.load(gen_dir / "episodes" / "tabletop-000002.episode").rgb["front"]
    np.testing.assert_array_equal(regenerated, reference)  # deterministic for the seed
    assert sorted(p.name for p in (run_dir / "shards").iterdir()) == ["shard-00000", "shard-00001"]
    shard_of = {e["episode_id"]: e["shard"] for e in manifest["episodes"]}
    assert sorted(shard_of.values()) == ["shard-00000", "shard-00000", "shard-00001", "shard-00001"]


def test_resume_of_a_complete_run_does_nothing(finished_run, tmp_path):
    import shutil

    run_dir = tmp_path / "tiny"
    shutil.copytree(finished_run[0], run_dir)
    (run_dir / "stages" / "01_depth" / "report.json").write_text('{"abs_rel": 0.01}')  # a stage's headline figures
    manifest = run(parse_config(tiny_config(run_dir)), resume=True)
    assert all(t["resumed"] for t in manifest["stages"])
    assert manifest["counts"] == {"written": 4, "total": 4}
    assert [t.get("report") for t in manifest["stages"]] == [
        None, {"abs_rel": 0.01}, {"shards_dir": "shards", "shards": 2, "episodes_by_provenance": {"real": 4}}]


def test_resume_after_a_param_change_reruns_that_stage_and_later_only(finished_run, tmp_path, caplog):
    import shutil

    run_dir = tmp_path / "tiny"
    shutil.copytree(finished_run[0], run_dir)
    gen_episodes = sorted((run_dir / "stages" / "00_generate_tabletop" / "episodes").glob("*.episode"))
    kept = _snapshot(gen_episodes)
    changed = tiny_config(run_dir, episodes_per_shard=4)  # only the last stage's params differ
    with caplog.at_level("INFO", logger="pipeline.run"):
        manifest = run(parse_config(changed), resume=True)
    assert [t["resumed"] for t in manifest["stages"]] == [True, True, False]
    assert "write_lerobot: its params changed" in caplog.text
    assert [s["episodes"] for s in manifest["shards"]] == [4]
    assert _snapshot(gen_episodes) == kept

    caplog.clear()
    upstream = tiny_config(run_dir, episodes_per_shard=4)
    upstream["stages"][0]["params"]["max_steps"] = 10  # an upstream change re-runs everything after it
    with caplog.at_level("INFO", logger="pipeline.run"):
        manifest = run(parse_config(upstream), resume=True)
    assert [t["resumed"] for t in manifest["stages"]] == [False, False, False]
    assert "generate_tabletop: its params changed" in caplog.text
    assert max(Episode.load(p).num_frames for p in gen_episodes) <= 10


def test_manifest_records_versions_and_relative_paths(finished_run):
    run_dir, manifest = finished_run
    assert manifest["versions"]["torch"] and manifest["versions"]["ray"] and manifest["versions"]["lerobot"]
    assert "git_commit" in manifest["versions"] and manifest["ray_nodes"] >= 1
    assert manifest["started_at"] <= manifest["finished_at"]
    assert manifest["shards_dir"] == "shards"
    assert [t["dir"] for t in manifest["stages"]] == ["stages/00_generate_tabletop", "stages/01_depth",
                                                      "stages/02_write_lerobot"]
    rows = (run_dir / "stages" / "01_depth" / "rows.jsonl").read_text()
    assert str(run_dir) not in rows and "stages/00_generate_tabletop/episodes/tabletop-000000.episode" in rows
    assert "stage write_lerobot" in (run_dir / "run.log").read_text()


def test_a_run_directory_can_move(finished_run, tmp_path):
    import shutil

    run_dir = tmp_path / "moved"
    shutil.copytree(finished_run[0], run_dir)
    manifest = run(parse_config(tiny_config(run_dir)), resume=True)
    assert all(t["resumed"] for t in manifest["stages"]) and manifest["run_dir"] == str(run_dir)


def test_only_reruns_one_stage_from_persisted_input(finished_run, tmp_path):
    import shutil

    run_dir = tmp_path / "tiny"
    shutil.copytree(finished_run[0], run_dir)
    before = (run_dir / "stages" / "00_generate_tabletop" / "rows.jsonl").stat().st_mtime_ns
    (run_dir / "stages" / "01_depth" / "report.json").write_text("{}")  # from an earlier run of the stage
    manifest = run(parse_config(tiny_config(run_dir)), only="depth")
    assert [t["stage"] for t in manifest["stages"]] == ["depth"]
    assert "report" not in manifest["stages"][0]  # the re-run wrote none, so the stale one is gone
    assert manifest["partial"] is True
    assert (run_dir / "stages" / "00_generate_tabletop" / "rows.jsonl").stat().st_mtime_ns == before
    with pytest.raises(RunError, match="no such stage"):
        run(parse_config(tiny_config(run_dir)), only="nope")


def test_only_needs_earlier_stages(ray_session, tmp_path):
    with pytest.raises(RunError, match="has not completed"):
        run(parse_config(tiny_config(tmp_path / "fresh")), only="write_lerobot")


def test_bad_episodes_are_quarantined_and_accounted(ray_session, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(os.urandom(2048))
    _write_video(videos / "nodepth.mp4", num_frames=6)
    config = tiny_config(tmp_path / "run", num_episodes=2,
                         extra_sources=[{"name": "ingest_videos", "params": {"path": str(videos)}}])
    manifest = run(parse_config(config))
    fates = {e["episode_id"]: e for e in manifest["episodes"]}
    assert manifest["counts"]["total"] == 4
    assert {k: v["fate"] for k, v in fates.items() if k.startswith("tabletop")} == {
        "tabletop-000000": "written", "tabletop-000001": "written"}
    broken = next(v for k, v in fates.items() if "broken" in k)
    assert broken["fate"] == "quarantined" and broken["stage"] == "ingest_videos" and "broken.mp4" in broken["reason"]
    nodepth = next(v for k, v in fates.items() if "nodepth" in k)
    assert nodepth["fate"] == "quarantined" and nodepth["stage"] == "depth"
    assert "depth_m.front" in nodepth["reason"]


def test_unwritable_output_dir_is_a_clear_error(ray_session, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = parse_config(tiny_config(tmp_path / "ok"))
    config.output_dir = blocker / "run"
    with pytest.raises(ConfigError, match=f"output_dir: {blocker / 'run'}: cannot write"):
        run(config)


def _write_video(path: Path, num_frames: int, size: int = 32) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(num_frames):
            img = np.zeros((size, size, 3), np.uint8)
            img[8:16, 2 + 2 * t:10 + 2 * t] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_cli_killed_run_resumes_without_loss(tmp_path):
    """The real CLI in a subprocess: kill it mid-generation, resume, and every episode is written exactly once."""
    import yaml

    run_dir = tmp_path / "cli"
    config = tiny_config(run_dir, num_episodes=6, episodes_per_shard=3)
    config["stages"][0]["params"]["resources"] = {"num_cpus": 1, "concurrency": 1}  # one at a time: a slow source
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump(config))
    wmsynth = [str(Path(sys.executable).parent / "wmsynth")]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.Popen([*wmsynth, "run", str(path)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    episodes = run_dir / "stages" / "00_generate_tabletop" / "episodes"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(episodes.glob("*.episode"))) < 2 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(list(episodes.glob("*.episode")))
    assert 2 <= partial < 6, f"kill landed at {partial} episodes; expected mid-stage"
    assert not (run_dir / "manifest.json").exists()

    done = subprocess.run([*wmsynth, "run", str(path), "--resume"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"shards (2): {run_dir / 'shards'}" in done.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"] == {"written": 6, "total": 6}
    assert sorted(e["episode_id"] for e in manifest["episodes"]) == [f"tabletop-{i:06d}" for i in range(6)]
    assert not [p for p in (run_dir / "shards").iterdir() if p.name.startswith(".tmp")]


def test_verify_reads_shards_back_with_lerobot(finished_run, tmp_path):
    import shutil

    from pipeline.cli import main
    from pipeline.verify import verify_run

    report = verify_run(finished_run[0], frames_per_episode=3)
    assert report["ok"] and report["episodes"] == 4 and report["shards"] == 2
    assert report["depth_median_rel_err"] < 0.01
    assert report["state_max_abs_err"] < 1e-6 and report["action_max_abs_err"] < 1e-6

    # The same shards against episodes whose depth drifted by 5%: verify must notice.
    run_dir = tmp_path / "tiny"
    shutil.copytree(finished_run[0], run_dir)
    for shard in (run_dir / "shards").iterdir():
        prov = shard / "meta" / "wmsynth_provenance.json"
        prov.write_text(prov.read_text().replace(str(finished_run[0]), str(run_dir)))
    for path in (run_dir / "stages" / "00_generate_tabletop" / "episodes").glob("*.episode"):
        episode = Episode.load(path)
        episode.depth_m = {cam: d * np.float32(1.05) for cam, d in episode.depth_m.items()}
        episode.save(path)
    assert main(["verify", str(run_dir), "--frames-per-episode", "2"]) == 1
    assert verify_run(run_dir, frames_per_episode=2)["depth_median_rel_err"] > 0.04
