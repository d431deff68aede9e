"""synthesize_qa: rows pass through; shards read back with webdataset; index, summary, resume, a clear error for
episodes without depth."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from pydantic import ValidationError

from depth.qa_dataset import INDEX_FILE, SUMMARY_FILE, read_depth_png_m
from pipeline.stage import StageContext, row
from pipeline.stages.synthesize_qa import SynthesizeQAParams, assemble, part_paths, synthesize_one, synthesize_qa
from tests.factories import make_episode


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    from pipeline.sim.generate import generate_episode
    from pipeline.sim.tabletop import TabletopConfig

    root = tmp_path_factory.mktemp("episodes")
    sim = generate_episode(5, "reach", config=TabletopConfig(width=96, height=96, max_steps=8), num_objects=3,
                           episode_id="sim-a")
    no_depth = make_episode("rgb-only", with_depth=False)
    return {e.episode_id: e.save(root / f"{e.episode_id}.npz") for e in (sim, no_depth)}, sim


def _ctx(run_dir, resume: bool = False) -> StageContext:
    return StageContext(run_dir=run_dir, stage_dir=run_dir / "stages" / "02_synthesize_qa", seed=0, resume=resume,
                        index=2)


def _rows(paths) -> list[dict]:
    rows = [row(eid, path=str(p), stage="depth", source="test") for eid, p in paths.items()]
    return rows + [row("gone", status="quarantined", reason="bad input", stage="depth", source="test")]


def test_params_validation():
    with pytest.raises(ValidationError, match="unknown families"):
        SynthesizeQAParams(families=["distance_between", "telepathy"])
    with pytest.raises(ValidationError):
        SynthesizeQAParams(bogus=1)
    with pytest.raises(ValidationError, match="inside the run directory"):
        SynthesizeQAParams(output_subdir="../elsewhere")


def test_stage_writes_shards_that_webdataset_reads_back(ray_session, episodes, tmp_path):
    import pyarrow.parquet as pq
    import webdataset as wds
    from PIL import Image

    paths, sim = episodes
    rows = _rows(paths)
    params = SynthesizeQAParams(frames_per_episode=2, samples_per_shard=1, resources={"num_cpus": 0.5})
    out = synthesize_qa(ray_session.data.from_items(rows), params, _ctx(tmp_path)).take_all()
    assert sorted(out, key=lambda r: r["episode_id"]) == sorted(rows, key=lambda r: r["episode_id"])  # pass-through

    qa_dir = tmp_path / "qa"
    summary = json.loads((qa_dir / SUMMARY_FILE).read_text())
    assert summary["num_samples"] == 2 and len(summary["shards"]) == 2  # one sample per shard here
    assert "rgb-only" in summary["episode_errors"] and "`depth` stage" in summary["episode_errors"]["rgb-only"]
    assert summary["num_qa"] > 10 and len(summary["families"]) >= 8
    assert summary["skipped_total"] == sum(summary["skipped"].values())

    urls = str(qa_dir / "qa-{000000..000001}.tar")
    raw = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in raw] == ["sim-a__front__000000", f"sim-a__front__{sim.num_frames - 1:06d}"]
    num_qa = 0
    for sample, frame in zip(raw, (0, sim.num_frames - 1)):
        rgb = np.asarray(Image.open(io.BytesIO(sample["rgb.png"])))
        assert np.array_equal(rgb, sim.rgb["front"][frame])  # lossless PNG
        depth_m = read_depth_png_m(sample["depth.png"])
        assert Image.open(io.BytesIO(sample["depth.png"])).mode.startswith("I")  # 16-bit greyscale
        assert np.abs(depth_m - sim.depth_m["front"][frame]).max() <= 0.0005 + 1e-6  # millimetres, rounded
        doc = json.loads(sample["json"])
        assert doc["frame_ref"]["frame"] == frame and doc["depth"]["unit"] == "mm"
        for record in doc["qa"]:
            assert {"question", "answer", "answer_structured", "family", "object_ids", "reasoning",
                    "frame_ref"} <= set(record)
        num_qa += len(doc["qa"])
    decoded = next(iter(wds.WebDataset(urls, shardshuffle=False).decode("pil")))
    assert decoded["rgb.png"].size == (96, 96) and isinstance(decoded["json"], dict)

    index = pq.read_table(qa_dir / INDEX_FILE).to_pylist()
    assert len(index) == num_qa == summary["num_qa"]
    assert {r["shard"] for r in index} == {"qa-000000.tar", "qa-000001.tar"}
    quantity = next(r for r in index if r["answer_type"] == "quantity")
    assert quantity["unit"] in ("cm", "m") and quantity["value"] > 0 and quantity["choice"] is None
    assert not list(tmp_path.glob(".qa-*"))  # no temp or old directories left behind


def test_resume_reuses_parts_and_rebuilds_the_same_dataset(episodes, tmp_path):
    import pyarrow.parquet as pq

    paths, _ = episodes
    rows = _rows(paths)
    params = SynthesizeQAParams(frames_per_episode=2)
    ctx = _ctx(tmp_path)
    parts = ctx.stage_dir / "parts"
    for r in rows:
        assert synthesize_one(r, params, ctx, parts) == r
    tar_path, json_path = part_paths(parts, "sim-a")
    first = assemble(rows, parts, tmp_path / "qa", params)
    before = (tar_path.stat().st_mtime_ns, json_path.stat().st_mtime_ns)
    index_before = pq.read_table(tmp_path / "qa" / INDEX_FILE).to_pylist()

    resumed = _ctx(tmp_path, resume=True)
    for r in rows:
        synthesize_one(r, params, resumed, parts)
    assert (tar_path.stat().st_mtime_ns, json_path.stat().st_mtime_ns) == before  # not redone
    second = assemble(rows, parts, tmp_path / "qa", params)
    assert second["num_qa"] == first["num_qa"]
    assert pq.read_table(tmp_path / "qa" / INDEX_FILE).to_pylist() == index_before
    assert json.loads(json_path.read_text())["error"] is None
    assert sorted(p.name for p in (tmp_path / "qa").iterdir()) == ["index.parquet", "qa-000000.tar", "summary.json"]


def test_stage_in_a_config_validates(tmp_path):
    from pipeline.config import parse_config

    raw = {"output_dir": str(tmp_path / "run"), "stages": [
        {"name": "generate_tabletop", "params": {"num_episodes": 2}}, {"name": "depth"},
        {"name": "synthesize_qa", "params": {"frames_per_episode": 2, "families": ["height", "count"]}},
        {"name": "write_lerobot"}]}
    config = parse_config(raw)
    assert config.stage("synthesize_qa").params.families == ["height", "count"]
