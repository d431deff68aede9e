"""The shipped stages.yaml end to end at toy size: real, pseudo-labelled and synthetic episodes reach loadable shards
with their provenance, every filter decision is in the manifest, and a run killed mid-rollout resumes without loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.run import run

pytest.importorskip("pybullet")

REPO = Path(__file__).resolve().parents[1]
TINY = [  # the shipped chain, shrunk: seconds per stage on 2 cores
    "generate_tabletop.num_episodes=6", "generate_tabletop.image_size=32", "generate_tabletop.max_steps=14",
    "generate_tabletop.hide_actions_fraction=0.5", "train_world_model.image_size=32",
    "train_world_model.steps=10", "train_world_model.checkpoint_every=10", "train_world_model.holdout_fraction=0.2",
    "evaluate_world_model.horizon=2", "train_evaluators.steps=10", "rollout.rollouts_per_episode=3",
    "rollout.horizon=3", "synthesize_qa.frames_per_episode=1", "write_lerobot.episodes_per_shard=64",
    "filter.evaluators={safety: {}}",  # safety alone decides: a 10-step model cannot judge geometry
]


def _tiny_overrides(run_dir: Path) -> list[str]:
    return [*TINY, f"output_dir={run_dir}"]


@pytest.fixture(scope="module")
def chain_run(ray_session, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("chain") / "run"
    return run_dir, run(load_config(REPO / "stages.yaml", _tiny_overrides(run_dir)))


def test_chain_writes_real_pseudo_labelled_and_synthetic_episodes_with_provenance(chain_run):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from pipeline.lerobot_shard import read_provenance

    run_dir, manifest = chain_run
    entries = []
    for shard in sorted((run_dir / "shards").glob("shard-*")):
        provenance = read_provenance(shard)
        entries += provenance["episodes"]
        dataset = LeRobotDataset(provenance["repo_id"], root=shard)
        assert dataset.meta.total_episodes == len(provenance["episodes"])
    kinds = {e["provenance"] for e in entries}
    assert kinds == {"real", "pseudo_labelled", "synthetic"}, kinds
    synthetic = [e for e in entries if e["provenance"] == "synthetic"]
    for e in synthetic:
        assert e["parent"] and e["recipe"]["proposal"] and e["evaluation"]["accepted"]
        assert "safety" in e["evaluation"]["evaluators"]
    schemas = {json.dumps(read_provenance(s)["schema"], sort_keys=True) for s in (run_dir / "shards").glob("shard-*")}
    assert len(schemas) == 1, "synthetic episodes must share the real episodes' schema"
    written = next(t["report"] for t in manifest["stages"] if t["stage"] == "write_lerobot")
    assert written["episodes_by_provenance"]["synthetic"] == len(synthetic)


def test_every_filter_decision_is_in_the_manifest(chain_run):
    run_dir, manifest = chain_run
    made = [e for e in manifest["episodes"] if e["source"] == "rollout"]
    assert len(made) == 3 * sum(1 for e in manifest["episodes"] if e["source"] == "generate_tabletop"
                                and e["episode_id"] + "-syn000" in {m["episode_id"] for m in made})
    rejected = [e for e in made if e["fate"] == "filtered"]
    assert rejected and all(e["reason"].startswith("rejected: safety: ") for e in rejected)
    report = next(t["report"] for t in manifest["stages"] if t["stage"] == "filter")
    assert report["judged"] == len(made) and report["judged"] - report["accepted"] == len(rejected)
    assert report["replayed"] == len(made)  # every parent came from the simulator: replay truth for each
    decisions = (run_dir / "stages").glob("*_filter/decisions.jsonl")
    assert sum(1 for path in decisions for _ in path.open()) == len(made)


def test_killed_mid_rollout_resumes_without_duplicates_or_loss(chain_run, tmp_path):
    """The state a kill inside rollout leaves (some parents done, one parent's children written without its completion
    record, one half written, no later stage run): resuming redoes only those parents and every episode has one fate."""
    import shutil

    src_dir, finished = chain_run
    run_dir = tmp_path / "run"
    shutil.copytree(src_dir, run_dir)
    stages = sorted((run_dir / "stages").iterdir())
    rollout = next(d for d in stages if d.name.endswith("_rollout"))
    for later in stages[stages.index(rollout) + 1:]:
        shutil.rmtree(later)
    shutil.rmtree(run_dir / "shards")
    shutil.rmtree(run_dir / "qa", ignore_errors=True)
    (run_dir / "manifest.json").unlink()
    (rollout / "_SUCCESS").unlink()
    fanned = sorted(p for p in (rollout / "done").glob("*.json") if "rows" in json.loads(p.read_text()))
    assert len(fanned) >= 2
    fanned[0].unlink()  # its children are on disk, its record is not
    fanned[1].unlink()
    next(iter(sorted((rollout / "episodes").glob(fanned[1].stem + "-syn*.episode")))).unlink()  # half written
    kept = {p: p.stat().st_mtime_ns for p in (rollout / "done").glob("*.json")}

    manifest = run(load_config(REPO / "stages.yaml", _tiny_overrides(run_dir)), resume=True)

    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "finished parents were redone"
    ids = [e["episode_id"] for e in manifest["episodes"]]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(e["episode_id"] for e in finished["episodes"])
    assert manifest["counts"] == finished["counts"]
