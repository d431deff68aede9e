"""depth stage: sensor pass-through, and the depth_anything backend through the stage on a tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from episodes import Episode
from pipeline.execute import map_one, run_map
from pipeline.stage import OK, QUARANTINED, REGISTRY, StageContext, row
from pipeline.stages.depth import METRICS_FILE, DepthParams, finish, sensor_depth
from pipeline.store import RunStore
from tests.factories import make_episode


def save_tiny_depth_anything(path, kind: str = "metric") -> str:
    """A tiny random Depth Anything + processor saved like a real checkpoint (see tests/depth/test_estimator.py)."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(image_size=32, patch_size=16, hidden_size=4, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=8, out_features=["stage1", "stage2"], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=4, patch_size=16,
                                 neck_hidden_sizes=[2, 2], fusion_hidden_size=6, depth_estimation_type=kind,
                                 max_depth=20)
    DepthAnythingForDepthEstimation(config).save_pretrained(path)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=True, ensure_multiple_of=16,
                      do_pad=False).save_pretrained(path)
    return str(path)


def _ctx(run_dir, index: int = 1) -> StageContext:
    return StageContext(run_dir=str(run_dir), stage_dir=str(run_dir / "stages" / f"{index:02d}_depth"),
                        stage="depth", seed=0, resume=False, index=index)


def test_params_validation():
    with pytest.raises(ValidationError, match="needs model"):
        DepthParams(backend="depth_anything")
    with pytest.raises(ValidationError, match="num_gpus"):
        DepthParams(backend="depth_anything", model="m", device="cuda")
    with pytest.raises(ValidationError, match="unitless"):
        DepthParams(backend="depth_anything", model="m", kind="relative", alignment="none")
    ok = DepthParams(backend="depth_anything", model="m", device="cuda", resources={"num_gpus": 0.5, "num_cpus": 0.5})
    assert ok.estimator_config().torch_threads == 1


def test_sensor_backend_quarantines_an_episode_without_depth(tmp_path):
    path = make_episode("no-depth", with_depth=False).save(tmp_path / "in" / "no-depth.episode")
    [out] = map_one(row("no-depth", path=str(path)), sensor_depth, _ctx(tmp_path), RunStore(str(tmp_path)))
    assert out["status"] == QUARANTINED
    assert "depth_m.front" in out["reason"] and "configure an estimator backend" in out["reason"]


def test_depth_anything_backend_through_the_stage(ray_session, tmp_path):
    model = save_tiny_depth_anything(tmp_path / "tiny-da")
    with_gt = make_episode("ep-gt", num_frames=3, height=24, width=24)
    no_depth = make_episode("ep-rgb", num_frames=2, height=24, width=24, with_depth=False, seed=1)
    rows = [row(ep.episode_id, path=ep.save(tmp_path / "in" / f"{ep.episode_id}.episode"), stage="generate",
                source="test") for ep in (with_gt, no_depth)]
    rows.append(row("ep-bad", status="filtered", reason="earlier stage", source="test"))
    params = DepthParams(backend="depth_anything", model=model, estimate_for="all", batch_size=2, local_files_only=True,
                         resources={"num_cpus": 0.5, "concurrency": 1})
    ctx = _ctx(tmp_path)
    out_rows = run_map(REGISTRY["depth"], rows, params, ctx, RunStore(ctx.run_dir))
    finish(out_rows, params, ctx)
    out = {r["episode_id"]: r for r in out_rows}

    assert out["ep-bad"]["status"] == "filtered"  # not-ok rows pass through
    for eid in ("ep-gt", "ep-rgb"):
        assert out[eid]["status"] == OK and out[eid]["stage"] == "depth", out[eid]
        episode = Episode.load(out[eid]["path"])
        assert out[eid]["path"] == ctx.episode_path(eid)
        assert episode.depth_m["front"].shape == episode.rgb["front"].shape[:3]
        assert episode.meta["depth"]["backend"] == "depth_anything" and episode.meta["depth"]["kind"] == "metric"
    assert not np.allclose(Episode.load(out["ep-gt"]["path"]).depth_m["front"], with_gt.depth_m["front"])

    report = json.loads((tmp_path / "stages" / "01_depth" / METRICS_FILE).read_text())
    assert set(report["episodes"]) == {"ep-gt"}  # only it had ground truth
    overall = report["overall"]
    assert overall["num_pixels"] == 3 * 24 * 24 and overall["absrel"] > 0 and 0 <= overall["delta1"] <= 1
    assert report["episodes"]["ep-gt"]["cameras"]["front"]["metrics"]["rmse_m"] == pytest.approx(overall["rmse_m"])
