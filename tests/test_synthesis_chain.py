"""The shipped stages.yaml end to end at toy size: real, pseudo-labelled and synthetic episodes reach loadable shards
with their provenance, every filter decision is in the manifest, and a run killed mid-rollout resumes without loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

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


def test_killed_mid_rollout_resumes_without_duplicates_or_loss(tmp_path):
    """The real CLI: kill it while rollout writes episodes, resume, and every episode has exactly one fate."""
    run_dir = tmp_path / "killed"
    config = yaml.safe_load((REPO / "stages.yaml").read_text())
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump(config))
    sets = [arg for item in _tiny_overrides(run_dir) for arg in ("--set", item)]
    sets += ["--set", "rollout.resources.concurrency=1"]
    wmsynth = [str(Path(sys.executable).parent / "wmsynth")]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.Popen([*wmsynth, "run", str(path), *sets], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done_dir = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        done_dir = next(run_dir.glob("stages/*_rollout/done"), None)
        if done_dir is not None and len(list(done_dir.glob("*.json"))) >= 1:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done_dir is not None, "the run ended before rollout started"
    assert not (run_dir / "manifest.json").exists()

    done = subprocess.run([*wmsynth, "run", str(path), *sets, "--resume"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    ids = [e["episode_id"] for e in manifest["episodes"]]
    assert len(ids) == len(set(ids))
    parents = [e for e in manifest["episodes"] if e["source"] == "generate_tabletop"]
    assert len(parents) == 6
    made = [e for e in manifest["episodes"] if e["source"] == "rollout"]
    assert made and all(e["fate"] in ("written", "filtered") for e in made)
