"""merge: a run's shards (and several runs') -> one LeRobot dataset per schema, read back with lerobot's reader, with
provenance and a per-episode source; and lerobot's own ``lerobot-train`` trains a tiny ACT on the result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from episodes import io as fileio
from pipeline.execute import run_aggregate
from pipeline.lerobot_shard import PROVENANCE_FILE, write_and_publish
from pipeline.merge import SOURCE_COLUMN, MergeError, merge_run, merge_runs
from pipeline.stage import REGISTRY, WRITTEN, StageContext
from pipeline.stages.write_lerobot import STAGE, WriteLerobotParams
from tests.shard_factories import REPO_ID, ok_rows, read_shard, save_episodes, shard_episode, shard_inputs

SETTINGS = WriteLerobotParams(repo_id=REPO_ID).writer_settings()
LEROBOT_TRAIN = Path(sys.executable).with_name("lerobot-train")


def _episode(episode_id: str, seed: int, kind: str, size: int = 32):
    """A tiny episode of provenance ``kind`` (real, pseudo_labelled or synthetic), as the stages mark them."""
    episode = shard_episode(episode_id, seed=seed, size=size, num_frames=6 + seed % 3)
    if kind == "pseudo_labelled":
        episode.meta["action_source"] = "pseudo_labelled"
    if kind == "synthetic":
        episode.meta.update(source="synthetic", parent="a-real-0", recipe={"proposal": "push", "seed": seed},
                            evaluation={"accepted": True, "evaluators": {"safety": 1.0}})
    return episode


def _write_run(run_dir: Path, shards: list[list[tuple[str, str]]], size: int = 32) -> None:
    """One published shard (``_COMPLETE`` marker) per list of (episode_id, kind), as write_lerobot leaves them."""
    for number, members in enumerate(shards):
        episodes = [_episode(eid, seed, kind, size) for seed, (eid, kind) in enumerate(members)]
        paths = save_episodes(run_dir / "episodes", *episodes)
        write_and_publish(shard_inputs(paths), str(run_dir / "shards" / f"shard-{number:05d}"), SETTINGS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """run a: real + pseudo_labelled in one shard, synthetic in another; run b: one more shard of the same schema;
    run c: a shard with 48x48 cameras (another schema)."""
    root = tmp_path_factory.mktemp("runs")
    _write_run(root / "a", [[("a-real-0", "real"), ("a-pseudo-1", "pseudo_labelled")],
                            [("a-syn-0", "synthetic"), ("a-syn-1", "synthetic")]])
    _write_run(root / "b", [[("b-real-0", "real")]])
    _write_run(root / "c", [[("c-real-0", "real")]], size=48)
    return {name: root / name for name in "abc"}


def _provenance(dataset_root) -> dict:
    return json.loads((Path(dataset_root) / PROVENANCE_FILE).read_text())


def test_merge_keeps_every_episode_frame_and_provenance(runs):
    report = merge_run(runs["a"])

    [merged] = report["datasets"]
    assert merged["root"] == str(runs["a"] / "merged" / "test") and merged["shards"] == 2
    dataset = read_shard(merged["root"])  # lerobot's own reader
    shard_frames = [read_shard(runs["a"] / "shards" / s).meta.total_frames for s in ("shard-00000", "shard-00001")]
    assert dataset.meta.total_episodes == 4 and dataset.meta.total_frames == sum(shard_frames) == len(dataset)
    provenance = _provenance(merged["root"])
    entries = provenance["episodes"]
    assert [(e["episode_index"], e["episode_id"], e["provenance"]) for e in entries] == [
        (0, "a-real-0", "real"), (1, "a-pseudo-1", "pseudo_labelled"), (2, "a-syn-0", "synthetic"),
        (3, "a-syn-1", "synthetic")]
    assert [(e["from"]["shard"], e["from"]["episode_index"]) for e in entries] == [
        ("shard-00000", 0), ("shard-00000", 1), ("shard-00001", 0), ("shard-00001", 1)]
    assert entries[2]["parent"] == "a-real-0" and entries[2]["recipe"]["proposal"] == "push"
    assert entries[2]["evaluation"]["accepted"] and entries[0]["recipe"] is None
    assert provenance["episodes_by_source"] == {"real": [0], "pseudo_labelled": [1], "synthetic": [2, 3]}
    # each merged episode holds the frames of its shard episode
    for e, ep in zip(entries, dataset.meta.episodes, strict=True):
        assert ep["length"] == e["num_frames"] and ep[SOURCE_COLUMN] == e["provenance"]
    # select by source, as the README does: lerobot reads only those episodes
    real = [ep["episode_index"] for ep in dataset.meta.episodes if ep[SOURCE_COLUMN] == "real"]
    only_real = read_shard(merged["root"], episodes=real)
    assert len(only_real) == entries[0]["num_frames"]
    assert {int(only_real[i]["episode_index"]) for i in range(len(only_real))} == {0}
    assert json.loads((runs["a"] / "merged" / "merge_report.json").read_text()) == report


def test_shards_of_several_runs_and_schemas(runs, tmp_path):
    report = merge_runs([runs["a"], runs["b"], runs["c"]], tmp_path / "out")

    small, large = report["datasets"]  # 32x32 (runs a and b), 48x48 (run c), in the order of their first shard
    assert (small["name"], small["episodes"], small["shards"]) == ("test-0", 5, 3)
    assert (large["name"], large["episodes"], large["schema"]["cameras"]) == ("test-1", 1, [["front", 48, 48]])
    dataset = read_shard(small["root"])
    assert dataset.meta.total_episodes == 5
    entries = _provenance(small["root"])["episodes"]
    assert [(e["episode_id"], e["from"]["run"]) for e in entries][-1] == ("b-real-0", "b")
    assert [ep[SOURCE_COLUMN] for ep in dataset.meta.episodes] == [e["provenance"] for e in entries]
    assert int(dataset[len(dataset) - 1]["episode_index"]) == 4  # the last frame decodes in the concatenated video
    assert read_shard(large["root"]).meta.total_episodes == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["merge_report.json", "test-0", "test-1"]
    assert not list(tmp_path.glob(".tmp-*"))  # staging renamed into place


def test_shards_on_object_storage_merge_to_a_url(runs, tmp_path):
    fileio.upload_dir(runs["b"] / "shards", "memory://merge-test/b/shards")

    report = merge_run("memory://merge-test/b", "memory://merge-test/out")

    [merged] = report["datasets"]
    assert merged["root"] == "memory://merge-test/out/test" and merged["episodes"] == 1
    fileio.download_dir("memory://merge-test/out", tmp_path / "out")
    assert read_shard(tmp_path / "out" / "test").meta.total_episodes == 1
    assert json.loads((tmp_path / "out" / "merge_report.json").read_text()) == report


def test_bad_input_is_a_clear_error(runs, tmp_path, capsys):
    with pytest.raises(MergeError, match=r"shards: no shards directory; run the write_lerobot stage"):
        merge_run(tmp_path / "empty-run")
    (tmp_path / "no-complete" / "shards" / "shard-00000").mkdir(parents=True)  # a writer killed before _COMPLETE
    with pytest.raises(MergeError, match=r"no-complete/shards: no complete shard"):
        merge_run(tmp_path / "no-complete")
    with pytest.raises(MergeError, match=r"contains the run .*/b, which merging would replace"):
        merge_run(runs["b"], out_dir=runs["b"].parent)
    broken = tmp_path / "broken"
    (broken / "shards").mkdir(parents=True)
    shard = broken / "shards" / "shard-00000"
    shutil.copytree(runs["b"] / "shards" / "shard-00000", shard)
    provenance = json.loads((shard / PROVENANCE_FILE).read_text())
    del provenance["schema"]
    (shard / PROVENANCE_FILE).write_text(json.dumps(provenance))
    from pipeline.cli import main

    assert main(["merge", str(broken)]) == 2
    assert f"{shard}/{PROVENANCE_FILE}: field 'schema' is missing" in capsys.readouterr().err
    assert not (broken / "merged").exists()


def test_wmsynth_merge_prints_the_datasets_and_a_training_command(runs, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["merge", str(runs["b"]), "--out", str(tmp_path / "m"), "--repo-id", "local/b"]) == 0

    out = capsys.readouterr().out
    assert f"merge: 1 shards -> {tmp_path / 'm' / 'b'} (1 episodes" in out
    assert f"lerobot-train --dataset.repo_id=local/b --dataset.root={tmp_path / 'm' / 'b'}" in out


def test_write_lerobot_merge_param(tmp_path, ray_session):
    paths = save_episodes(tmp_path / "episodes", _episode("ep-0", 0, "real"), _episode("ep-1", 1, "synthetic"))
    run_dir = str(tmp_path / "run")
    ctx = StageContext(run_dir=run_dir, stage_dir=fileio.join(run_dir, "stages", f"02_{STAGE}"), stage=STAGE,
                       seed=0, resume=False, index=2)

    out = run_aggregate(REGISTRY[STAGE], ok_rows(paths), WriteLerobotParams(repo_id=REPO_ID, merge=True), ctx)

    assert [r["status"] for r in out] == [WRITTEN, WRITTEN]
    report = json.loads((Path(ctx.stage_dir) / "report.json").read_text())
    assert report["merged"] == [{"root": "merged/test", "repo_id": REPO_ID, "episodes": 2, "frames": 13,
                                 "episodes_by_provenance": {"real": 1, "synthetic": 1}}]
    assert read_shard(tmp_path / "run" / "merged" / "test").meta.total_episodes == 2


def test_lerobot_train_runs_on_the_merged_dataset(runs, tmp_path):
    """lerobot's own CLI, as the README shows it, at tiny sizes: a from-scratch ACT on CPU, 2 steps, a checkpoint."""
    [merged] = merge_run(runs["a"], tmp_path / "merged", repo_id="local/tabletop")["datasets"]
    output_dir = tmp_path / "train"
    real = _provenance(merged["root"])["episodes_by_source"]["real"]
    args = [str(LEROBOT_TRAIN), *merged["lerobot_train_args"], "--policy.type=act", "--policy.device=cpu",
            "--policy.push_to_hub=false", "--policy.pretrained_backbone_weights=null", "--policy.dim_model=32",
            "--policy.dim_feedforward=64", "--policy.n_heads=2", "--policy.n_encoder_layers=1",
            "--policy.n_vae_encoder_layers=1", "--policy.chunk_size=4", "--policy.n_action_steps=4",
            f"--dataset.episodes={[*real, *_provenance(merged['root'])['episodes_by_source']['synthetic']]}",
            "--steps=2", "--batch_size=2", "--num_workers=0", "--save_freq=2", "--log_freq=1",
            "--wandb.enable=false", f"--output_dir={output_dir}"]

    done = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})

    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = output_dir / "checkpoints" / "last" / "pretrained_model"
    assert (checkpoint / "model.safetensors").is_file()
    config = json.loads((checkpoint / "config.json").read_text())
    assert set(config["input_features"]) == {"observation.images.front", "observation.state"}  # no depth input
    assert config["output_features"]["action"]["shape"] == [5]
