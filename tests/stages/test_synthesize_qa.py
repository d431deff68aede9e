"""synthesize_qa as a map stage with a finish hook: through the runner (episodes unchanged, shards webdataset reads
back, index, summary, the ``qa_dataset`` artifact); the per-episode function and the assembly on memory:// (parts,
commit marker last, a rebuild from existing parts); one log line per reason for episodes without depth."""

from __future__ import annotations

import io
import json
import logging
import uuid

import numpy as np
import pytest
from pydantic import ValidationError

from depth.qa_dataset import INDEX_FILE, SUMMARY_FILE, read_depth_png_m
from episodes import Episode
from episodes import io as fileio
from pipeline.checks import check_run
from pipeline.config import parse_config
from pipeline.run import run
from pipeline.stage import REGISTRY, StageContext, row
from pipeline.stages.synthesize_qa import COMPLETE, SynthesizeQAParams, finish, part_paths, synthesize_qa
from tests.factories import make_episode

SIM = {"num_episodes": 2, "image_size": 96, "max_steps": 8, "tasks": ["reach"], "num_objects": [3, 3]}


@pytest.fixture(scope="module")
def episodes():
    from pipeline.sim.generate import generate_episode
    from pipeline.sim.tabletop import TabletopConfig

    sim = generate_episode(5, "reach", config=TabletopConfig(width=96, height=96, max_steps=8), num_objects=3,
                           episode_id="sim-a")
    return [sim, make_episode("rgb-only", with_depth=False)]


def test_params_validation_and_registration():
    with pytest.raises(ValidationError, match="unknown families"):
        SynthesizeQAParams(families=["distance_between", "telepathy"])
    with pytest.raises(ValidationError):
        SynthesizeQAParams(bogus=1)
    with pytest.raises(ValidationError, match="inside the run directory"):
        SynthesizeQAParams(output_subdir="../elsewhere")
    spec = REGISTRY["synthesize_qa"]
    assert spec.kind == "map" and spec.finish is finish and spec.provides == ("qa_dataset",)


def test_config_validates_and_checks_cameras(tmp_path):
    raw = {"output_dir": str(tmp_path / "run"), "stages": [
        {"name": "generate_tabletop", "params": {"num_episodes": 2}}, {"name": "depth"},
        {"name": "synthesize_qa", "params": {"frames_per_episode": 2, "families": ["height", "count"]}}]}
    config = parse_config(raw)
    assert config.stage("synthesize_qa").params.families == ["height", "count"]
    assert check_run(config) == []
    raw["stages"][2]["params"]["cameras"] = ["front", "wrist"]
    errors = check_run(parse_config(raw))
    assert len(errors) == 1 and errors[0].startswith("stages[2].params.cameras: ['wrist'] not produced")


def test_stage_through_the_runner_writes_shards_that_webdataset_reads_back(ray_session, tmp_path):
    import pyarrow.parquet as pq
    import webdataset as wds
    from PIL import Image

    run_dir = tmp_path / "run"
    raw = {"output_dir": str(run_dir), "seed": 1, "stages": [
        {"name": "generate_tabletop", "params": SIM},
        {"name": "synthesize_qa", "params": {"frames_per_episode": 2, "samples_per_shard": 3,
                                             "resources": {"num_cpus": 0.5}}}]}
    manifest = run(parse_config(raw))
    assert manifest["counts"] == {"unwritten": 2, "total": 2}  # rows stay ok
    stage_dir = run_dir / "stages" / "01_synthesize_qa"
    assert not (stage_dir / "episodes").exists()  # episodes returned unchanged: nothing copied
    assert json.loads((stage_dir / "_SUCCESS").read_text())["artifacts"] == {"qa_dataset": "qa"}

    qa_dir = run_dir / "qa"
    summary = json.loads((qa_dir / SUMMARY_FILE).read_text())
    assert summary["num_samples"] == 4 and [s["samples"] for s in summary["shards"]] == [3, 1]
    assert summary["episode_errors"] == {} and summary["episodes_with_qa"] == 2
    assert summary["num_qa"] > 10 and len(summary["families"]) >= 8
    assert summary["skipped_total"] == sum(summary["skipped"].values())
    # every pair says where its geometry came from: the simulator's calibration, the sensor's depth
    assert summary["qa_by_calibration"] == {"simulator": summary["num_qa"]}
    assert summary["qa_by_depth_source"] == {"sensor": summary["num_qa"]}
    assert json.loads((qa_dir / COMPLETE).read_text())["num_qa"] == summary["num_qa"]
    assert not list(run_dir.glob(".qa-*"))  # no temp or old directories left behind

    urls = str(qa_dir / "qa-{000000..000001}.tar")
    raw_samples = list(wds.WebDataset(urls, shardshuffle=False))
    first = Episode.load(run_dir / "stages" / "00_generate_tabletop" / "episodes" / "tabletop-000000.episode")
    last = first.num_frames - 1
    assert [s["__key__"] for s in raw_samples[:2]] == ["tabletop-000000__front__000000",
                                                       f"tabletop-000000__front__{last:06d}"]
    for sample, frame in zip(raw_samples[:2], (0, last)):
        rgb = np.asarray(Image.open(io.BytesIO(sample["rgb.png"])))
        assert np.array_equal(rgb, first.rgb["front"][frame])  # lossless PNG
        assert Image.open(io.BytesIO(sample["depth.png"])).mode.startswith("I")  # 16-bit greyscale
        depth_m = read_depth_png_m(sample["depth.png"])
        assert np.abs(depth_m - first.depth_m["front"][frame]).max() <= 0.0005 + 1e-6  # millimetres, rounded
        doc = json.loads(sample["json"])
        assert doc["frame_ref"]["frame"] == frame and doc["depth"]["unit"] == "mm"
        for record in doc["qa"]:
            assert {"question", "answer", "answer_structured", "family", "object_ids", "reasoning",
                    "frame_ref"} <= set(record)
    num_qa = sum(len(json.loads(s["json"])["qa"]) for s in raw_samples)
    decoded = next(iter(wds.WebDataset(urls, shardshuffle=False).decode("pil")))
    assert decoded["rgb.png"].size == (96, 96) and isinstance(decoded["json"], dict)

    index = pq.read_table(qa_dir / INDEX_FILE).to_pylist()
    assert len(index) == num_qa == summary["num_qa"]
    assert {r["shard"] for r in index} == {"qa-000000.tar", "qa-000001.tar"}
    quantity = next(r for r in index if r["answer_type"] == "quantity")
    assert quantity["unit"] in ("cm", "m") and quantity["value"] > 0 and quantity["choice"] is None


@pytest.fixture
def memory_ctx():
    root = f"memory://wmsynth-test-{uuid.uuid4().hex[:8]}/run"
    yield StageContext(run_dir=root, stage_dir=fileio.join(root, "stages", "02_synthesize_qa"), stage="synthesize_qa",
                       seed=0, resume=False, index=2)
    fileio.remove(root, recursive=True)


def test_parts_and_dataset_on_object_storage(episodes, memory_ctx, caplog):
    import pyarrow.parquet as pq

    ctx = memory_ctx
    params = SynthesizeQAParams(frames_per_episode=2)
    rows = [row(e.episode_id, path=f"unused/{e.episode_id}.episode", source="test") for e in episodes]
    rows.append(row("gone", status="quarantined", reason="bad input", source="test"))
    with caplog.at_level(logging.DEBUG, logger="pipeline.stages.synthesize_qa"):
        for episode in episodes:
            assert synthesize_qa(episode, params, ctx) is episode  # unchanged: the runner writes nothing
    tar_path, json_path = part_paths(ctx, "sim-a")
    assert fileio.exists(tar_path) and json.loads(fileio.read_text(json_path))["error"] is None
    no_depth = json.loads(fileio.read_text(part_paths(ctx, "rgb-only")[1]))
    assert "`depth` stage" in no_depth["error"] and not fileio.exists(part_paths(ctx, "rgb-only")[0])

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.stages.synthesize_qa"):
        finish(rows, params, ctx)
    qa_dir = ctx.run_path("qa")
    assert ctx.artifacts == {"qa_dataset": qa_dir}
    assert sorted(fileio.name(p) for p in fileio.listdir(qa_dir)) == [COMPLETE, "index.parquet", "qa-000000.tar",
                                                                       "summary.json"]
    summary = json.loads(fileio.read_text(fileio.join(qa_dir, SUMMARY_FILE)))
    assert list(summary["episode_errors"]) == ["rgb-only"] and summary["num_samples"] == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 episode(s) gave no QA (rgb-only)" in warnings[0].getMessage()
    assert "<episode>" in warnings[0].getMessage() and not warnings[0].exc_info  # one line, no traceback
    with fileio.open_file(fileio.join(qa_dir, INDEX_FILE)) as f:
        index = pq.read_table(f).to_pylist()
    assert len(index) == summary["num_qa"] > 10

    report = json.loads(fileio.read_text(fileio.join(ctx.stage_dir, "report.json")))
    assert report["num_qa"] == summary["num_qa"] and "warnings" not in report
    assert list(report["episodes_without_qa"].values()) == [1]

    # finished episodes' parts are reused: a second finish (a resumed stage) rebuilds the same dataset
    finish(rows, params, ctx)
    assert json.loads(fileio.read_text(fileio.join(qa_dir, SUMMARY_FILE))) == summary
    assert fileio.exists(fileio.join(qa_dir, COMPLETE))


def test_local_rebuild_swaps_the_dataset_in_whole(episodes, tmp_path):
    ctx = StageContext(run_dir=str(tmp_path), stage_dir=str(tmp_path / "stages" / "02_synthesize_qa"),
                       stage="synthesize_qa", seed=0, resume=False, index=2)
    params = SynthesizeQAParams(frames_per_episode=2, samples_per_shard=1)
    synthesize_qa(episodes[0], params, ctx)
    rows = [row("sim-a", path="unused", source="test")]
    finish(rows, params, ctx)
    (tmp_path / "qa" / "stale.txt").write_text("from an earlier build")
    finish(rows, params, ctx)
    assert sorted(p.name for p in (tmp_path / "qa").iterdir()) == [COMPLETE, "index.parquet", "qa-000000.tar",
                                                                    "qa-000001.tar", "summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa", "stages"]  # no temp or old copies left behind


def test_no_qa_pairs_is_a_warning_with_the_reasons_in_the_run_summary():
    from pipeline.cli import summary
    from pipeline.stages.synthesize_qa import stage_report

    qa = {"num_qa": 0, "num_samples": 0, "shards": [], "skipped": {},
          "episode_errors": {"clip-000": "clip-000: no camera intrinsics for front; give them as ingest params",
                             "clip-001": "clip-001: no camera intrinsics for front; give them as ingest params"}}
    report = stage_report(qa)
    assert report["warnings"] == ["no QA pairs: 2 episode(s): <episode>: no camera intrinsics for front; give them "
                                  "as ingest params"]
    manifest = {"counts": {"total": 2, "written": 2}, "episodes": [], "shards": [], "run_dir": "r",
                "stages": [{"stage": "synthesize_qa", "seconds": 1.0, "counts": {"ok": 2}, "resumed": False,
                            "report": report}]}
    assert "  warning: stage synthesize_qa: no QA pairs: 2 episode(s)" in summary(manifest)
    short = stage_report({**qa, "episode_errors": {"a": "a: no camera intrinsics for front"}})
    assert short["episodes_without_qa"] == {"<episode>: no camera intrinsics for front": 1}  # "camera" keeps its a
