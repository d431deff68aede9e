"""train_world_model on Ray Train (one worker) and evaluate_world_model: rows pass through, checkpoints, resume,
held-out evaluation report; params fail with the field named."""

from __future__ import annotations

import json

import pytest

from pipeline.stage import OK, QUARANTINED, REGISTRY, StageContext, row
from pipeline.stages.evaluate_world_model import EvaluateWorldModelParams, evaluate_world_model
from pipeline.stages.train_world_model import TrainWorldModelParams, plan_split, train_world_model

TINY = {"cameras": ["front"], "image_size": 32, "steps": 6, "batch_size": 8, "checkpoint_every": 3, "log_every": 2,
        "holdout_fraction": 0.25, "labelled_fraction": 0.5, "num_workers": 1, "cpus_per_worker": 1.0}


def _ctx(tmp_path, index: int, name: str, resume: bool = False) -> StageContext:
    return StageContext(run_dir=tmp_path, stage_dir=tmp_path / "stages" / f"{index:02d}_{name}", seed=3,
                        resume=resume, index=index)


@pytest.fixture
def rows(tmp_path, episode_factory):
    out = []
    for i in range(8):
        ep = episode_factory(episode_id=f"ep-{i:03d}", num_frames=6, seed=i, with_action=i != 7)
        path = ep.save(tmp_path / "in" / f"{ep.episode_id}.npz")
        out.append(row(ep.episode_id, path=str(path), stage="ingest", source="sim" if i < 6 else "video"))
    out.append(row("ep-bad", status=QUARANTINED, reason="EpisodeError: broken", stage="ingest", source="sim"))
    return out


def test_registered_as_transforms():
    assert REGISTRY["train_world_model"].kind == "transform"
    assert REGISTRY["train_world_model"].params_model is TrainWorldModelParams
    assert REGISTRY["evaluate_world_model"].kind == "transform" and REGISTRY["evaluate_world_model"].doc


@pytest.mark.parametrize("bad, field", [
    ({"latent_dim": 0}, "latent_dim"),
    ({"bottleneck": "gumbel"}, "bottleneck"),
    ({"backend": "gan"}, "backend"),
    ({"labelled_fraction": 1.5}, "labelled_fraction"),
    ({"holdout_fraction": 1.0}, "holdout_fraction"),
    ({"fsq_levels": [8, 1]}, "fsq_levels"),
    ({"image_size": 40}, "image_size"),
    ({"num_workers": 0}, "num_workers"),
    ({"source_weights": {"sim": -1.0}}, "source_weights"),
    ({"cameras": ["fisheye"]}, "cameras"),
    ({"motion_weight": -2}, "motion_weight"),
    ({"num_worker": 2}, "num_worker"),  # typo: unknown keys are errors
])
def test_params_reject_bad_values_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        TrainWorldModelParams(**bad)


def test_plan_split_holds_out_and_labels_deterministically(rows):
    params = TrainWorldModelParams(**TINY)
    ok = [r for r in rows if r["status"] == OK]
    split = plan_split(ok, params, seed=3)
    assert split == plan_split(list(reversed(ok)), params, seed=3)
    assert len(split["heldout"]) == 2 and not set(split["heldout"]) & set(split["train"])
    assert "ep-007" not in split["labelled"]  # no actions: can never be labelled
    eligible = [e for e in split["train"] if e != "ep-007"]
    assert len(split["labelled"]) == round(0.5 * len(eligible)) and set(split["labelled"]) <= set(eligible)
    assert split["action_dims"] == {"franka_panda": 5} and len(split["action_stats"]["franka_panda"]["std"]) == 5
    only_video = plan_split(ok, params.model_copy(update={"labelled_sources": ["video"]}), seed=3)
    assert only_video["labelled"] == []  # the video source has no actions to use


def test_plan_split_leaves_out_episodes_without_the_cameras(rows, tmp_path, episode_factory):
    other = episode_factory(episode_id="ep-side", cameras=("side",)).save(tmp_path / "in" / "ep-side.npz")
    ok = [r for r in rows if r["status"] == OK] + [row("ep-side", path=str(other), source="sim")]
    split = plan_split(ok, TrainWorldModelParams(**TINY), seed=3)
    assert split["skipped"] == {"ep-side": "missing rgb.front"}
    assert "ep-side" not in split["train"] + split["heldout"]
    with pytest.raises(ValueError, match=r"cameras=\['top'\].*generate_tabletop"):
        plan_split(ok, TrainWorldModelParams(**{**TINY, "cameras": ["top"]}), seed=3)


def test_ray_train_one_worker_checkpoints_resumes_and_evaluates(ray_session, rows, tmp_path):
    ds = ray_session.data.from_items(rows)
    ctx = _ctx(tmp_path, 1, "train_world_model")
    out = sorted(train_world_model(ds, TrainWorldModelParams(**TINY), ctx).take_all(), key=lambda r: r["episode_id"])
    assert out == sorted(rows, key=lambda r: r["episode_id"])  # rows pass through unchanged, the bad one too
    checkpoints = sorted(p.name for p in (ctx.stage_dir / "checkpoints").iterdir())
    assert checkpoints == ["step-00000003", "step-00000006"]
    assert {p.name for p in (ctx.stage_dir / "checkpoints" / "step-00000006").iterdir()} == {
        "config.json", "model.safetensors", "optimizer.safetensors"}
    curve = [json.loads(line) for line in (ctx.stage_dir / "losses.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve] == [2, 4, 6] and all("recon" in c for c in curve)
    summary = json.loads((ctx.stage_dir / "train.json").read_text())
    assert summary["start_step"] == 0 and summary["step"] == 6 and summary["num_workers"] == 1
    split = json.loads((ctx.stage_dir / "split.json").read_text())
    assert summary["num_pairs"] == 5 * len(split["train"])  # held-out episodes were not trained on

    # a resumed run continues from step 6 up to the new total
    resumed = _ctx(tmp_path, 1, "train_world_model", resume=True)
    train_world_model(ds, TrainWorldModelParams(**{**TINY, "steps": 8}), resumed).take_all()
    summary = json.loads((ctx.stage_dir / "train.json").read_text())
    assert summary["start_step"] == 6 and summary["step"] == 8
    assert [json.loads(line)["step"] for line in (ctx.stage_dir / "losses.jsonl").read_text().splitlines()] == \
        [2, 4, 6, 8]
    train_report = json.loads((ctx.stage_dir / "report.json").read_text())
    assert train_report["step"] == 8 and train_report["heldout_episodes"] == len(split["heldout"])

    # evaluation on the held-out episodes of that training
    ectx = _ctx(tmp_path, 2, "evaluate_world_model")
    out = evaluate_world_model(ds, EvaluateWorldModelParams(horizon=2), ectx).take_all()
    assert len(out) == len(rows)
    report = json.loads((ectx.stage_dir / "eval.json").read_text())
    assert report["num_episodes"] == len(split["heldout"]) and report["checkpoint"].endswith("step-00000008")
    assert "r2" in report["latent"]["probe_action"] and "head" in report["latent"]
    assert report["rollout"]["horizon"] == 2 and "action_sensitivity_db" in report["rollout"]["summary"]
    assert (ectx.stage_dir / "rollouts.png").stat().st_size > 0 and (ectx.stage_dir / "rollouts.gif").exists()
    headline = json.loads((ectx.stage_dir / "report.json").read_text())
    assert headline["probe_r2"] == report["latent"]["probe_action"]["r2"]
    assert headline["psnr_gain_1step_db"] == report["rollout"]["summary"]["psnr_gain_1step_db"]
    assert headline["files"]["panel"] == str(ectx.stage_dir / "rollouts.png")
