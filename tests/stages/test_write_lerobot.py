"""write_lerobot as the runner calls it: shards per schema, fates per row, _COMPLETE markers, resume, verify."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from episodes import io as fileio
from pipeline import shards
from pipeline.execute import run_aggregate
from pipeline.lerobot_schema import ShardSchema
from pipeline.lerobot_shard import read_provenance, write_and_publish
from pipeline.stage import FILTERED, QUARANTINED, REGISTRY, WRITTEN, CheckContext, StageContext, StageError, row
from pipeline.stages.write_lerobot import ARTIFACT, STAGE, WriteLerobotParams, check, plan_shards
from tests.shard_factories import REPO_ID, ok_rows, read_shard, save_episodes, shard_episode, shard_inputs

TINY_SIM = {"num_episodes": 4, "image_size": 32, "max_steps": 12, "tasks": ["reach", "push"], "num_objects": [2, 3]}


def _ctx(run_dir, resume: bool = False) -> StageContext:
    run_dir = str(run_dir)
    return StageContext(run_dir=run_dir, stage_dir=fileio.join(run_dir, "stages", f"02_{STAGE}"), stage=STAGE,
                        seed=0, resume=resume, index=2)


def _run_stage(rows: list[dict], params: WriteLerobotParams, ctx: StageContext) -> dict[str, dict]:
    """The runner's aggregate path (only ok rows reach the stage; one row back per row), by episode id."""
    out = run_aggregate(REGISTRY[STAGE], rows, params, ctx)
    assert len(out) == len(rows)
    return {r["episode_id"]: r for r in out}


def _fate(r: dict) -> tuple[str, str]:
    return r["status"], r["shard"]


# -- params, checks, planning (no Ray) -------------------------------------------------------------------------------


def test_params_are_checked():
    with pytest.raises(ValueError, match="episodes_per_shard"):
        WriteLerobotParams(episodes_per_shard=0)
    with pytest.raises(ValueError, match="libsvtav1 takes an integer"):
        WriteLerobotParams(video_preset="fast")
    with pytest.raises(ValueError, match="depth_max_m"):
        WriteLerobotParams(depth_min_m=2.0, depth_max_m=1.0)


def test_check_reports_data_problems(tmp_path):
    cctx = CheckContext(run_dir=str(tmp_path), index=2, earlier=[], outputs={"cameras": ["front"], "depth": True})
    assert check(WriteLerobotParams(repo_id="wmsynth/tabletop"), cctx) == []
    for bad in ("tabletop", "a/b/c", "wmsynth/table top", "-x/y", "wmsynth/a--b"):
        [(field, message)] = check(WriteLerobotParams(repo_id=bad), cctx)
        assert field == "repo_id" and "namespace/name" in message
    (tmp_path / "shards").write_text("not a directory")
    twice = CheckContext(run_dir=str(tmp_path), index=3, earlier=[(STAGE, WriteLerobotParams())],
                         outputs={"cameras": ["front", "arm/left"]})
    messages = " | ".join(m for _, m in check(WriteLerobotParams(), twice))
    assert "appears twice" in messages and "'arm/left'" in messages and "is a file" in messages


def test_plan_groups_by_schema_then_id_and_fills_free_numbers():
    small = ShardSchema(10, "franka_panda", (("front", 32, 32),), ("front",), ("s0",), ("a0",))
    big = ShardSchema(10, "franka_panda", (("front", 64, 64),), ("front",), ("s0",), ("a0",))
    episodes = [("e3", small), ("e1", big), ("e0", small), ("e2", small), ("e4", big)]

    plans = plan_shards(episodes, episodes_per_shard=2, taken={1})

    assert [(p.name, [episodes[j][0] for j in p.members]) for p in plans] == [
        ("shard-00000", ["e0", "e2"]), ("shard-00002", ["e1", "e4"]), ("shard-00003", ["e3"])]


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    run_dir = tmp_path / "not-a-dir"
    run_dir.write_text("a file where the run directory should be")
    rows = ok_rows(save_episodes(tmp_path, shard_episode("ep-0")))
    with pytest.raises(StageError, match="cannot write shards"):
        _run_stage(rows, WriteLerobotParams(repo_id=REPO_ID), _ctx(run_dir))


# -- the stage on Ray ------------------------------------------------------------------------------------------------


def test_stage_writes_a_shard_per_schema_group_with_row_fates(tmp_path, ray_session):
    episodes = [shard_episode(f"ep-{i}", seed=i) for i in range(3)] + [shard_episode("ep-3", seed=3, size=48)]
    rows = ok_rows(save_episodes(tmp_path / "episodes", *episodes))
    rows.append(row("ep-6", status=FILTERED, reason="scripted policy failed", stage="generate_tabletop"))
    rows.append(row("ep-7", status=QUARANTINED, reason="bad input", stage="depth"))
    run_dir = tmp_path / "run"
    ctx = _ctx(f"file://{run_dir}")  # a local URL

    out = _run_stage(rows, WriteLerobotParams(repo_id=REPO_ID, episodes_per_shard=2), ctx)

    assert {eid: _fate(r) for eid, r in out.items() if eid < "ep-6"} == {
        "ep-0": (WRITTEN, "shard-00000"), "ep-1": (WRITTEN, "shard-00000"), "ep-2": (WRITTEN, "shard-00001"),
        "ep-3": (WRITTEN, "shard-00002")}
    assert all(out[f"ep-{i}"]["stage"] == STAGE for i in range(4))
    assert out["ep-6"] == rows[-2] and out["ep-7"] == rows[-1]  # not ok: passed through unchanged
    shards_dir = run_dir / "shards"
    assert sorted(p.name for p in shards_dir.iterdir()) == ["shard-00000", "shard-00001", "shard-00002"]
    for name, ids, size in [("shard-00000", ["ep-0", "ep-1"], 32), ("shard-00001", ["ep-2"], 32),
                            ("shard-00002", ["ep-3"], 48)]:
        ds = read_shard(shards_dir / name)
        assert ds.num_episodes == len(ids) and ds.meta.features["observation.images.front"]["shape"][0] == size
        assert [e["episode_id"] for e in read_provenance(shards_dir / name)["episodes"]] == ids
        assert shards.read_complete(str(shards_dir / name))["episodes"] == ids
    assert fileio.local_path(ctx.artifacts[ARTIFACT]) == shards_dir


def test_bad_input_is_quarantined_with_the_reason(tmp_path, ray_session):
    good = [shard_episode("ep-0", seed=0), shard_episode("ep-5", seed=5)]
    nan_state = shard_episode("ep-1", seed=1)
    nan_state.state[2, 3] = np.nan
    episodes = [*good, nan_state, shard_episode("ep-2", seed=2, fps=12.5), shard_episode("ep-3", num_frames=1)]
    paths = save_episodes(tmp_path / "episodes", *episodes)
    truncated = tmp_path / "episodes" / "ep-4.episode"
    truncated.write_bytes(Path(paths[0]).read_bytes()[:3000])

    out = _run_stage(ok_rows([*paths, str(truncated)]), WriteLerobotParams(repo_id=REPO_ID, episodes_per_shard=8),
                     _ctx(tmp_path / "run"))

    assert _fate(out["ep-0"]) == _fate(out["ep-5"]) == (WRITTEN, "shard-00000")
    reasons = {eid: r["reason"] for eid, r in out.items() if r["status"] == QUARANTINED}
    assert sorted(reasons) == ["ep-1", "ep-2", "ep-3", "ep-4"] and all(out[e]["shard"] == "" for e in reasons)
    assert "field 'state'" in reasons["ep-1"] and "non-finite" in reasons["ep-1"]
    assert "integer frame rate" in reasons["ep-2"] and "12.5" in reasons["ep-2"]
    assert ">= 2 per episode" in reasons["ep-3"]
    assert "ep-4.episode" in reasons["ep-4"] and "EpisodeError" in reasons["ep-4"]
    record = shards.read_complete(str(tmp_path / "run" / "shards" / "shard-00000"))
    assert record["episodes"] == ["ep-0", "ep-5"] and [q["episode_id"] for q in record["quarantined"]] == ["ep-1"]


def test_resume_replaces_a_shard_without_complete_marker(tmp_path, ray_session):
    paths = save_episodes(tmp_path / "episodes", *[shard_episode(f"ep-{i}", seed=i) for i in range(4)])
    params = WriteLerobotParams(repo_id=REPO_ID, episodes_per_shard=2)
    shards_dir = tmp_path / "run" / "shards"
    write_and_publish(shard_inputs(paths[:2]), str(shards_dir / "shard-00000"), params.writer_settings())
    kept = {p: p.stat().st_mtime_ns for p in (shards_dir / "shard-00000").rglob("*")}
    # A writer killed mid-upload: some of shard-00001's files, no _COMPLETE; and a staging dir of a dead worker.
    (shards_dir / "shard-00001" / "meta").mkdir(parents=True)
    (shards_dir / "shard-00001" / "meta" / "info.json").write_text("{\"total_episodes\": 2")
    (shards_dir / ".tmp-shard-00001-deadbeef" / "meta").mkdir(parents=True)

    out = _run_stage(ok_rows(paths), params, _ctx(tmp_path / "run", resume=True))

    assert {eid: _fate(r) for eid, r in out.items()} == {
        "ep-0": (WRITTEN, "shard-00000"), "ep-1": (WRITTEN, "shard-00000"),
        "ep-2": (WRITTEN, "shard-00001"), "ep-3": (WRITTEN, "shard-00001")}
    assert {p: p.stat().st_mtime_ns for p in (shards_dir / "shard-00000").rglob("*")} == kept  # not rewritten
    assert sorted(p.name for p in shards_dir.iterdir()) == ["shard-00000", "shard-00001"]  # leftovers gone
    assert shards.read_complete(str(shards_dir / "shard-00001"))["episodes"] == ["ep-2", "ep-3"]
    assert read_shard(shards_dir / "shard-00001").num_episodes == 2


def test_without_resume_the_shards_of_an_earlier_run_are_replaced(tmp_path, ray_session):
    paths = save_episodes(tmp_path / "episodes", *[shard_episode(f"ep-{i}", seed=i) for i in range(2)])
    shards_dir = tmp_path / "run" / "shards"
    write_and_publish(shard_inputs(paths), str(shards_dir / "shard-00000"),
                      WriteLerobotParams(repo_id=REPO_ID).writer_settings())  # one shard of two episodes
    (shards_dir / "shard-00000" / "old").touch()

    out = _run_stage(ok_rows(paths), WriteLerobotParams(repo_id=REPO_ID, episodes_per_shard=1),
                     _ctx(tmp_path / "run"))

    assert {eid: r["shard"] for eid, r in out.items()} == {"ep-0": "shard-00000", "ep-1": "shard-00001"}
    assert sorted(p.name for p in shards_dir.iterdir()) == ["shard-00000", "shard-00001"]
    assert not (shards_dir / "shard-00000" / "old").exists()
    assert read_shard(shards_dir / "shard-00000").num_episodes == 1


# -- end to end: the runner on object-storage semantics, a writer killed mid-upload, verify ----------------------------


def test_interrupted_shard_is_rewritten_on_resume_and_skipped_by_verify(tmp_path, ray_session):
    """The run directory behind ``local://`` (the local disk seen through fsspec, like object storage): shards are
    uploaded file by file and committed by _COMPLETE; verify streams them back to temp dirs."""
    from pipeline.config import parse_config
    from pipeline.run import run
    from pipeline.verify import verify_run

    root = tmp_path / "tiny"
    run_url = f"local://{root}"
    config = parse_config({"output_dir": run_url, "seed": 3, "stages": [
        {"name": "generate_tabletop", "params": TINY_SIM},
        {"name": "depth", "params": {"backend": "sensor"}},
        {"name": STAGE, "params": {"episodes_per_shard": 2, "repo_id": REPO_ID}}]})
    manifest = run(config)
    assert manifest["counts"] == {"written": 4, "total": 4}
    shards_dir = root / "shards"
    for shard in ("shard-00000", "shard-00001"):
        marker = (shards_dir / shard / shards.COMPLETE).stat().st_mtime_ns
        assert all(marker >= p.stat().st_mtime_ns for p in (shards_dir / shard).rglob("*") if p.is_file())
    provenance = read_provenance(shards_dir / "shard-00000")
    assert provenance["episodes"][0]["input_path"] == "stages/00_generate_tabletop/episodes/tabletop-000000.episode"

    # A later writer killed mid-upload: a shard directory without _COMPLETE. Readers must not trust it.
    stray = shards_dir / "shard-00007"
    shutil.copytree(shards_dir / "shard-00000", stray)
    (stray / shards.COMPLETE).unlink()
    report = verify_run(run_url, frames_per_episode=2)
    assert report["ok"] and report["shards"] == 2 and report["episodes"] == 4 and report["run_dir"] == run_url
    assert report["skipped_incomplete"] == ["shard-00007"] and report["missing_shards"] == []
    assert json.loads((root / "verify.json").read_text())["ok"]

    # Kill write_lerobot mid-upload of shard-00001: no _COMPLETE, no stage marker, no manifest; then --resume.
    (shards_dir / "shard-00001" / shards.COMPLETE).unlink()
    next((shards_dir / "shard-00001").rglob("*.mp4")).write_bytes(b"half a video")
    (root / "stages" / f"02_{STAGE}" / "_SUCCESS").unlink()
    (root / "manifest.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in (shards_dir / "shard-00000").rglob("*")}
    manifest = run(config, resume=True)
    assert [t["resumed"] for t in manifest["stages"]] == [True, True, False]
    assert manifest["counts"] == {"written": 4, "total": 4}
    assert {p: p.stat().st_mtime_ns for p in (shards_dir / "shard-00000").rglob("*")} == kept
    assert sorted(p.name for p in shards_dir.iterdir()) == ["shard-00000", "shard-00001"]  # stray removed too
    assert verify_run(run_url, frames_per_episode=2)["ok"]

    shutil.rmtree(root / "stages" / "00_generate_tabletop" / "episodes")
    report = verify_run(run_url, frames_per_episode=2)  # sources gone, but the run did not remove them: fails
    assert not report["ok"] and len(report["source_missing"]) == 4 and not report["length_mismatch"]
    manifest_path = root / "manifest.json"
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), "intermediates_removed_bytes": 1}))
    assert verify_run(run_url, frames_per_episode=2)["ok"]  # keep_intermediates: false: lengths only
    shards.remove_shard(f"{run_url}/shards/shard-00001")  # a shard of the manifest is gone: verify fails
    report = verify_run(run_url, frames_per_episode=2)
    assert not report["ok"] and report["missing_shards"] == ["shard-00001"]
