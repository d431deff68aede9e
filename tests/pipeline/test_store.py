"""The run store on memory:// and on disk: atomic writes, relative paths, markers, stage keys, storage errors."""

from __future__ import annotations

import uuid

import pytest

from episodes import io as fileio
from pipeline.stage import StageParams
from pipeline.store import RunStore, describe_storage_error, params_hash, stage_key


class P(StageParams):
    a: int = 1
    b: str = "x"


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        yield RunStore(str(tmp_path / "run"))
    else:
        root = f"memory://wmsynth-test-{uuid.uuid4().hex[:8]}/run"
        yield RunStore(root)
        fileio.remove(root, recursive=True)


def test_rows_are_stored_relative_and_loaded_absolute(store):
    stage_dir = store.stage_dir(0, "generate_tabletop")
    path = fileio.join(stage_dir, "episodes", "e1.episode")
    rows = [{"episode_id": "e1", "path": path, "status": "ok"}, {"episode_id": "e2", "path": "", "status": "ok"}]
    store.write_rows(stage_dir, rows)
    text = fileio.read_text(fileio.join(stage_dir, "rows.jsonl"))
    assert store.run_dir not in text and '"stages/00_generate_tabletop/episodes/e1.episode"' in text
    assert store.read_rows(stage_dir) == rows


def test_done_records_and_markers(store):
    stage_dir = store.stage_dir(1, "depth")
    assert store.done_rows(stage_dir) == {} and store.success(stage_dir) is None
    store.start_stage(stage_dir, "depth", "p", "k", fresh=True)
    store.write_json(fileio.join(stage_dir, "done", "e1.json"), store.stored_row(
        {"episode_id": "e1", "path": fileio.join(stage_dir, "episodes", "e1.episode"), "status": "ok"}))
    assert store.done_rows(stage_dir)["e1"]["path"] == fileio.join(stage_dir, "episodes", "e1.episode")
    assert store.started(stage_dir)["params_hash"] == "p"
    store.finish_stage(stage_dir, {"key": "abc"})
    assert store.success(stage_dir) == {"key": "abc"}
    store.start_stage(stage_dir, "depth", "p2", "k", fresh=True)  # a fresh start clears the stage's earlier work
    assert store.success(stage_dir) is None and store.done_rows(stage_dir) == {}


def test_probe_write_succeeds_where_writable(store):
    assert store.check_writable() is None
    assert fileio.listdir(store.run_dir) == []  # the probe leaves nothing behind


def test_unwritable_local_dir_is_described(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    problem = RunStore(str(blocker / "run")).check_writable()
    assert problem.startswith(str(blocker / "run")) and "cannot write" in problem


def test_atomic_write_leaves_no_temp_files(tmp_path):
    for i in range(3):
        fileio.atomic_write_text(tmp_path / "a.json", str(i))
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"] and (tmp_path / "a.json").read_text() == "2"


def test_stage_keys_chain_params_and_inputs():
    h1, h2 = params_hash(P()), params_hash(P(a=2))
    assert h1 == params_hash(P(a=1, b="x")) and h1 != h2
    first = stage_key("generate_tabletop", h1, "", 0)
    assert stage_key("depth", h1, first, 0) != stage_key("depth", h1, stage_key("generate_tabletop", h2, "", 0), 0)
    assert stage_key("depth", h1, first, 0) != stage_key("depth", h1, first, 1)  # the run seed is an input


def test_storage_errors_say_what_to_do_without_secrets():
    text = describe_storage_error("s3://nope/run", PermissionError("AccessDenied: Access Denied"))
    assert text.startswith("s3://nope/run: permission denied")
    text = describe_storage_error("s3://b/run", OSError("NoSuchBucket: The specified bucket does not exist"))
    assert "bucket does not exist" in text
    text = describe_storage_error("s3://b/run", OSError("Unable to locate credentials"))
    assert "credentials" in text and "AWS_ACCESS_KEY_ID=" not in text


def test_urls_join_and_relativize():
    store = RunStore("s3://bucket/runs/demo/")
    assert store.run_dir == "s3://bucket/runs/demo"
    assert store.stage_dir(2, "x") == "s3://bucket/runs/demo/stages/02_x"
    assert store.relative("s3://bucket/runs/demo/shards/a") == "shards/a"
    assert store.absolute("shards/a") == "s3://bucket/runs/demo/shards/a"
    assert store.relative("s3://other/x") == "s3://other/x"
