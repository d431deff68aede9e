"""train_world_model (Ray Train, one worker) and evaluate_world_model as aggregate stages: through the runner with the
run directory behind an fsspec URL (checkpoints with commit markers, artifacts, resume from the newest complete
checkpoint), the evaluation alone on memory://, data checks with their YAML paths, params naming the bad field."""

from __future__ import annotations

import json
import os
import shutil
import uuid

import fsspec
import pytest

from episodes import io as fileio
from pipeline.checks import check_run
from pipeline.config import parse_config
from pipeline.run import run
from pipeline.stage import REGISTRY, StageContext, StageError, row
from pipeline.stages.evaluate_world_model import EvaluateWorldModelParams, evaluate_world_model
from pipeline.stages.train_world_model import TrainWorldModelParams, plan_split

TINY = {"cameras": ["front"], "image_size": 32, "steps": 6, "batch_size": 8, "checkpoint_every": 3, "log_every": 2,
        "holdout_fraction": 0.25, "labelled_fraction": 0.5, "num_workers": 1, "cpus_per_worker": 1.0}
TINY_SIM = {"num_episodes": 6, "image_size": 32, "max_steps": 8, "tasks": ["reach", "push"], "num_objects": [2, 3]}
TRAIN_DIR, EVAL_DIR = "stages/01_train_world_model", "stages/02_evaluate_world_model"

# ``local://`` is the local disk seen through fsspec like object storage: no directory renames, and a write needs no
# parent directory (auto_mkdir). Set at import, before the test session starts Ray, so Ray's workers inherit it.
os.environ.setdefault("FSSPEC_LOCAL_AUTO_MKDIR", "1")
fsspec.config.conf.setdefault("local", {})["auto_mkdir"] = True


def wm_config(output_dir: str, evaluate: dict | None = None, sim: dict | None = None,
              train: dict | None = None) -> dict:
    stages = [{"name": "generate_tabletop", "params": {**TINY_SIM, **(sim or {})}},
              {"name": "train_world_model", "params": {**TINY, **(train or {})}}]
    if evaluate is not None:
        stages.append({"name": "evaluate_world_model", "params": evaluate})
    return {"output_dir": output_dir, "seed": 3, "stages": stages}


@pytest.fixture
def rows(tmp_path, episode_factory):
    out = []
    for i in range(8):
        ep = episode_factory(episode_id=f"ep-{i:03d}", num_frames=6, seed=i, with_action=i != 7)
        path = ep.save(str(tmp_path / "in" / f"{ep.episode_id}.episode"))
        out.append(row(ep.episode_id, path=path, stage="ingest", source="sim" if i < 6 else "video"))
    return out


def test_registered_as_aggregates_with_their_artifacts():
    train, evaluate = REGISTRY["train_world_model"], REGISTRY["evaluate_world_model"]
    assert train.kind == evaluate.kind == "aggregate" and train.params_model is TrainWorldModelParams
    assert train.provides == ("world_model", "world_model_split") and evaluate.doc
    assert evaluate.required(EvaluateWorldModelParams()) == ("world_model",)
    assert evaluate.required(EvaluateWorldModelParams(checkpoint="/somewhere/step-00000010")) == ()


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
    ({"cameras": []}, "cameras"),  # any names the data has are fine (the run check compares them)
    ({"motion_weight": -2}, "motion_weight"),
    ({"num_worker": 2}, "num_worker"),  # typo: unknown keys are errors
])
def test_params_reject_bad_values_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        TrainWorldModelParams(**bad)


def test_plan_split_holds_out_and_labels_deterministically(rows):
    params = TrainWorldModelParams(**TINY)
    split = plan_split(rows, params, seed=3)
    assert split == plan_split(list(reversed(rows)), params, seed=3)
    assert len(split["heldout"]) == 2 and not set(split["heldout"]) & set(split["train"])
    assert "ep-007" not in split["labelled"]  # no actions: can never be labelled
    eligible = [e for e in split["train"] if e != "ep-007"]
    assert len(split["labelled"]) == round(0.5 * len(eligible)) and set(split["labelled"]) <= set(eligible)
    # the factory's episodes name no robot: their actions get the head of "unknown", never the simulator's arm
    assert split["action_dims"] == {"unknown": 5} and len(split["action_stats"]["unknown"]["std"]) == 5
    only_video = plan_split(rows, params.model_copy(update={"labelled_sources": ["video"]}), seed=3)
    assert only_video["labelled"] == []  # the video source has no actions to use


def test_plan_split_leaves_out_episodes_without_the_cameras(rows, tmp_path, episode_factory):
    other = episode_factory(episode_id="ep-side", cameras=("side",)).save(str(tmp_path / "in" / "ep-side.episode"))
    ok = rows + [row("ep-side", path=other, source="sim")]
    split = plan_split(ok, TrainWorldModelParams(**TINY), seed=3)
    assert split["skipped"] == {"ep-side": "missing rgb.front"}
    assert "ep-side" not in split["train"] + split["heldout"]
    with pytest.raises(StageError, match=r"cameras=\['top'\].*generate_tabletop"):
        plan_split(ok, TrainWorldModelParams(**{**TINY, "cameras": ["top"]}), seed=3)


# -- data checks (no Ray) --------------------------------------------------------------------------------------------


def test_evaluation_without_a_training_stage_is_reported_with_its_yaml_path(tmp_path):
    raw = {"output_dir": str(tmp_path / "run"), "stages": [
        {"name": "generate_tabletop", "params": {"num_episodes": 2}},
        {"name": "evaluate_world_model", "params": {"horizon": 2}}]}
    errors = check_run(parse_config(raw))
    assert len(errors) == 1 and errors[0].startswith("stages[1]: evaluate_world_model needs 'world_model'")
    assert "put train_world_model before it" in errors[0]

    raw["stages"][1]["params"]["checkpoint"] = str(tmp_path / "nowhere" / "step-00000010")
    assert [e.split(":")[0] for e in check_run(parse_config(raw))] == ["stages[1].params.checkpoint"]
    assert "does not exist" in check_run(parse_config(raw))[0]


def test_checks_name_cameras_and_depth_the_sources_do_not_produce(tmp_path):
    raw = wm_config(str(tmp_path / "run"), sim={"cameras": ["front", "top"], "depth": False},
                    train={"cameras": ["top", "wrist"], "depth": True})
    errors = check_run(parse_config(raw))
    assert [e.split(":")[0] for e in errors] == ["stages[1].params.cameras", "stages[1].params.depth"]
    assert "['wrist'] not produced by the sources" in errors[0] and "depth_anything" in errors[1]
    estimated = wm_config(str(tmp_path / "run"), sim={"depth": False}, train={"depth": True})
    estimated["stages"].insert(1, {"name": "depth", "params": {"backend": "depth_anything", "model": "m"}})
    assert not [e for e in check_run(parse_config(estimated)) if "params.depth" in e]
    assert check_run(parse_config(wm_config(str(tmp_path / "run"), evaluate={"horizon": 2}))) == []


def test_an_incomplete_checkpoint_is_refused_by_the_check(tmp_path):
    from world_model.checkpoint import COMPLETE

    ckpt = tmp_path / "checkpoints" / "step-00000004"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    raw = wm_config(str(tmp_path / "run"), evaluate={"checkpoint": str(ckpt)})
    assert "not a complete checkpoint" in check_run(parse_config(raw))[0]
    (ckpt / COMPLETE).write_text("{}")
    raw["stages"][2]["params"]["checkpoint"] = str(tmp_path / "checkpoints")
    assert "a directory of checkpoints" in check_run(parse_config(raw))[0]


# -- through the runner, run directory on a URL ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    """Generate, train and evaluate with the run directory behind ``local://`` (a fsspec URL of the local disk): the
    object-storage code paths (no renames, commit markers) in several processes (Ray Train's worker), which
    memory:// cannot give (it is per process) and file:// does not exercise (it is normalised to a local path)."""
    root = tmp_path_factory.mktemp("wm")
    raw = wm_config(f"local://{root}/run", evaluate={"horizon": 2}, train={"holdout_fraction": 0.34})
    manifest = run(parse_config(raw))
    return root, raw, manifest


def test_train_and_evaluate_on_a_url_run_dir(trained):
    from world_model.checkpoint import COMPLETE

    root, raw, manifest = trained
    run_dir = root / "run"
    assert manifest["counts"] == {"unwritten": 6, "total": 6}  # rows passed through both aggregates
    assert [s["stage"] for s in manifest["stages"]] == ["generate_tabletop", "train_world_model",
                                                        "evaluate_world_model"]
    train_dir = run_dir / TRAIN_DIR
    assert sorted(p.name for p in (train_dir / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    assert {p.name for p in (train_dir / "checkpoints" / "step-00000006").iterdir()} == {
        "config.json", "model.safetensors", "optimizer.safetensors", COMPLETE}
    curve = [json.loads(line) for line in (train_dir / "losses.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve] == [2, 4, 6] and all("recon" in c for c in curve)
    summary = json.loads((train_dir / "train.json").read_text())
    split = json.loads((train_dir / "split.json").read_text())
    assert summary["start_step"] == 0 and summary["step"] == 6 and summary["num_workers"] == 1
    assert summary["checkpoint"] == f"local://{train_dir}/checkpoints/step-00000006"
    assert len(split["heldout"]) == 2 and len(split["train"]) == 4
    # artifacts are stored relative to the run directory, so the run can be moved and resumed
    marker = json.loads((train_dir / "_SUCCESS").read_text())
    assert marker["artifacts"] == {"world_model": f"{TRAIN_DIR}/checkpoints/step-00000006",
                                   "world_model_split": f"{TRAIN_DIR}/split.json"}
    assert not (train_dir / "ray_results").exists()  # Ray Train's own files stayed in a local temp dir

    eval_dir = run_dir / EVAL_DIR
    report = json.loads((eval_dir / "eval.json").read_text())
    assert report["num_episodes"] == 2 and report["checkpoint"].endswith("step-00000006")
    assert report["latent"]["probe_action"]["r2"] is not None and report["rollout"]["horizon"] == 2
    assert (eval_dir / "rollouts.png").stat().st_size > 0 and (eval_dir / "rollouts.gif").stat().st_size > 0
    headline = next(s["report"] for s in manifest["stages"] if s["stage"] == "evaluate_world_model")
    assert headline["psnr_gain_1step_db"] == report["rollout"]["summary"]["psnr_gain_1step_db"]
    assert headline["files"]["panel"] == f"local://{eval_dir}/rollouts.png"
    train_headline = next(s["report"] for s in manifest["stages"] if s["stage"] == "train_world_model")
    assert train_headline["step"] == 6 and train_headline["heldout_episodes"] == 2


def test_resume_continues_from_the_newest_complete_checkpoint(trained, tmp_path):
    from world_model.checkpoint import COMPLETE

    root, raw, _ = trained
    run_dir = tmp_path / "run"
    shutil.copytree(root / "run", run_dir)
    # What a kill while rank 0 uploaded step 6 leaves on object storage: step 6's files without its marker, training
    # not marked complete, evaluation not run.
    (run_dir / TRAIN_DIR / "_SUCCESS").unlink()
    (run_dir / TRAIN_DIR / "checkpoints" / "step-00000006" / COMPLETE).unlink()
    shutil.rmtree(run_dir / EVAL_DIR)
    manifest = run(parse_config({**raw, "output_dir": f"local://{run_dir}"}), resume=True)

    summary = json.loads((run_dir / TRAIN_DIR / "train.json").read_text())
    assert summary["start_step"] == 3 and summary["step"] == 6  # not from step 6: it was incomplete
    assert [json.loads(line)["step"] for line in (run_dir / TRAIN_DIR / "losses.jsonl").read_text().splitlines()] \
        == [2, 4, 6]  # rewritten from the checkpoint's history: no step logged twice
    assert (run_dir / TRAIN_DIR / "checkpoints" / "step-00000006" / COMPLETE).exists()
    assert [s["resumed"] for s in manifest["stages"]] == [True, False, False]
    eval_report = json.loads((run_dir / EVAL_DIR / "eval.json").read_text())
    assert eval_report["checkpoint"] == f"local://{run_dir}/{TRAIN_DIR}/checkpoints/step-00000006"


# -- evaluation alone, everything on memory:// (in this process) -----------------------------------------------------


def test_evaluation_reads_and_writes_memory_urls(episode_factory):
    from world_model.checkpoint import COMPLETE
    from world_model.data import PairData
    from world_model.train import train

    root = f"memory://wmsynth-test-{uuid.uuid4().hex[:8]}/run"
    try:
        rows = []
        for i in range(4):
            ep = episode_factory(episode_id=f"ep-{i:03d}", num_frames=6, seed=i)
            rows.append(row(ep.episode_id, path=ep.save(fileio.join(root, "in", f"{ep.episode_id}.episode")),
                            source="sim"))
        params = TrainWorldModelParams(**{**TINY, "steps": 2, "checkpoint_every": 2})
        split = plan_split(rows, params, seed=0)
        train_dir = fileio.join(root, TRAIN_DIR)
        split_file = fileio.join(train_dir, "split.json")
        fileio.atomic_write_text(split_file, json.dumps(split))
        train_paths = [r["path"] for r in rows if r["episode_id"] in split["train"]]
        data = PairData.from_episodes(train_paths, ("front",), 32)
        result = train(params.model_config_obj(split["action_dims"]), params.train_config(), data, train_dir)
        assert result.checkpoint == fileio.join(train_dir, "checkpoints", "step-00000002")

        ctx = StageContext(run_dir=root, stage_dir=fileio.join(root, EVAL_DIR), stage="evaluate_world_model",
                           seed=0, resume=False, index=2,
                           artifacts={"world_model": result.checkpoint, "world_model_split": split_file})
        assert evaluate_world_model(rows, EvaluateWorldModelParams(horizon=2), ctx) is None
        report = json.loads(fileio.read_text(ctx.path("eval.json")))
        assert report["num_episodes"] == len(split["heldout"]) == 1
        assert report["latent"]["probe_action"]["r2"] is None  # one held-out episode: nothing to cross-validate on
        assert fileio.read_bytes(ctx.path("rollouts.png"))[:4] == b"\x89PNG"
        assert json.loads(fileio.read_text(ctx.path("report.json")))["files"]["gif"] == ctx.path("rollouts.gif")

        fileio.remove(fileio.join(result.checkpoint, COMPLETE))  # as if the upload had been cut short
        with pytest.raises(StageError, match="not a complete checkpoint"):
            evaluate_world_model(rows, EvaluateWorldModelParams(horizon=2), ctx)
    finally:
        fileio.remove(root, recursive=True)

