"""wmsynth publish: a tiny finished run (real LeRobot shards written by lerobot's writer, a small QA set, the run's
markers and manifest) published to a local directory, to a local S3 server (moto, tests/servers.py) and to the Hub.

The Hub is the one thing replaced, at its HTTP boundary: ``tests/fake_hub.py`` is a server on 127.0.0.1 that
huggingface_hub reaches through ``HF_ENDPOINT`` and that records what it sends (huggingface_hub's own create_repo,
create_branch, preupload, LFS upload, commit and tag requests run unchanged). ``HF_HUB_DISABLE_XET=1`` keeps
huggingface_hub on the LFS upload protocol, which the stand-in speaks (the Xet storage service it does not).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml

from episodes import io as fileio
from pipeline import publish, publish_files
from pipeline.dataset_card import HUB_LICENSES, read_front_matter
from pipeline.lerobot_shard import PROVENANCE_FILE, write_and_publish
from pipeline.stages.write_lerobot import WriteLerobotParams
from tests.fake_hub import FakeHub
from tests.shard_factories import REPO_ID, read_shard, save_episodes, shard_episode, shard_inputs

LICENSE = "cc-by-4.0"
STAGES = ["generate_tabletop", "depth", "evaluate_world_model", "label_actions", "filter", "synthesize_qa",
          "write_lerobot"]
REPORTS = {"evaluate_world_model": {"probe_r2": 0.625, "psnr_gain_8step_db": 3.25},
           "label_actions": {"pseudo_label_r2": 0.5, "episodes_labelled": 1},
           "filter": {"judged": 2, "accepted": 2, "precision_vs_replay": 0.75, "recall_vs_replay": None}}
TOKEN = "hf_fakeTokenForTheLocalStandIn0123456789"


def _cli(*argv: str) -> int:
    """``wmsynth publish ARGV`` through the real command line."""
    from pipeline.cli import main

    return main(["publish", *argv])


def _episode(episode_id: str, seed: int, kind: str):
    episode = shard_episode(episode_id, seed=seed, num_frames=6 + seed % 3)
    if kind == "pseudo_labelled":
        episode.meta["action_source"] = "pseudo_labelled"
    if kind == "synthetic":
        episode.meta.update(source="synthetic", parent="ep-real-0", recipe={"proposal": "scripted", "seed": seed},
                            evaluation={"accepted": True})
    return episode


def _qa_set(qa_dir: Path) -> None:
    """A small webdataset shard, its index and summary, and the _COMPLETE marker, as synthesize_qa leaves them."""
    qa_dir.mkdir(parents=True)
    with tarfile.open(qa_dir / "qa-000000.tar", "w") as tar:
        for name, data in (("ep-real-0__front__000000.json", b'{"qa": []}'),
                           ("ep-real-0__front__000000.rgb.png", bytes(range(256)) * 8)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    import pandas as pd

    pd.DataFrame({"qa_id": ["q0"], "family": ["height"], "answer": ["4.5 cm"]}).to_parquet(qa_dir / "index.parquet")
    (qa_dir / "summary.json").write_text(json.dumps({"num_samples": 1, "num_qa": 1, "families": ["height"],
                                                     "qa_per_family": {"height": 1}, "skipped": {"occluded": 2}}))
    (qa_dir / "_COMPLETE").write_text(json.dumps({"num_samples": 1}))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished run: 2 shards (real + pseudo-labelled, synthetic), a QA set, every stage's _SUCCESS, manifest."""
    run = tmp_path_factory.mktemp("publish") / "run"
    settings = WriteLerobotParams(repo_id=REPO_ID, license=LICENSE).writer_settings()
    for number, members in enumerate([[("ep-real-0", "real"), ("ep-pseudo-1", "pseudo_labelled")],
                                      [("ep-syn-0", "synthetic")]]):
        paths = save_episodes(run / "episodes", *[_episode(eid, seed, kind) for seed, (eid, kind) in
                                                   enumerate(members)])
        write_and_publish(shard_inputs(paths), str(run / "shards" / f"shard-{number:05d}"), settings)
    _qa_set(run / "qa")
    params = {"generate_tabletop": {"num_episodes": 3, "tasks": ["push"]}, "depth": {"backend": "sensor"},
              "synthesize_qa": {"output_subdir": "qa"},
              "write_lerobot": {"repo_id": REPO_ID, "license": LICENSE}}
    config = {"output_dir": str(run), "seed": 7, "stages": [{"name": s, "params": params.get(s, {})} for s in STAGES]}
    (run / "config.resolved.yaml").write_text(yaml.safe_dump(config))
    for i, name in enumerate(STAGES):
        (run / "stages" / f"{i:02d}_{name}").mkdir(parents=True)
        (run / "stages" / f"{i:02d}_{name}" / "_SUCCESS").write_text("{}")
    manifest = {"run_dir": str(run), "seed": 7, "started_at": "2026-01-01T00:00:00+0000",
                "finished_at": "2026-01-01T00:05:00+0000", "command": "wmsynth run stages.yaml",
                "versions": {"wmsynth": "0.1.0", "lerobot": "0.6.1", "git_commit": "abc123"},
                "counts": {"written": 3, "total": 3},
                "stages": [{"stage": s, "dir": f"stages/{i:02d}_{s}", **({"report": REPORTS[s]} if s in REPORTS else {})}
                           for i, s in enumerate(STAGES)]}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def _files_under(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def test_shards_carry_the_licence(run_dir):
    shard = run_dir / "shards" / "shard-00000"
    assert json.loads((shard / PROVENANCE_FILE).read_text())["license"] == LICENSE
    front = read_front_matter((shard / "README.md").read_text())  # lerobot's own card
    assert front["license"] == LICENSE and "LeRobot" in front["tags"] and "wmsynth" in front["tags"]
    assert "license" not in json.loads((shard / "meta" / "info.json").read_text())  # lerobot warns on unknown keys
    assert read_shard(shard).meta.total_episodes == 2
    assert "apache-2.0" in HUB_LICENSES and "cc-by-nc-sa-4.0" in HUB_LICENSES


def test_publish_to_a_directory_then_again_uploads_nothing(run_dir, tmp_path, capsys):
    out = tmp_path / "published"

    assert _cli(str(run_dir), "--to", str(out)) == 0

    files = _files_under(out)
    assert {"_PUBLISHED", ".wmsynth_publish.json", "test/README.md", "test/meta/info.json",
            f"test/{PROVENANCE_FILE}", "test-qa/README.md", "test-qa/qa-000000.tar", "test-qa/index.parquet",
            "test-qa/summary.json"} <= set(files)
    assert not any(name.endswith("_COMPLETE") for name in files)
    dataset = read_shard(out / "test")  # lerobot's reader on the published copy
    assert dataset.meta.total_episodes == 3
    card = (out / "test" / "README.md").read_text()
    front = read_front_matter(card)
    assert front["license"] == LICENSE and front["task_categories"] == ["robotics"]
    assert {"LeRobot", "wmsynth", "synthetic"} <= set(front["tags"]) and front["size_categories"] == ["n<1K"]
    assert front["configs"] == [{"config_name": "default", "data_files": "data/*/*.parquet"}]
    for text in ("git commit `abc123`", "| linear-probe R2, latent action -> true action (held-out episodes) | 0.625",
                 "| filter precision against simulator replay | 0.75", "pseudo-label R2 against the hidden true "
                 "actions | 0.5", "real 1", "pseudo_labelled 1", "synthetic 1", "`observation.depth.front`",
                 "Depth: backend `sensor`", "Seed 7"):
        assert text in card, text
    assert "recall against simulator replay" not in card  # the run did not measure it: left out
    qa_front = read_front_matter((out / "test-qa" / "README.md").read_text())
    assert qa_front["task_categories"] == ["visual-question-answering"] and qa_front["license"] == LICENSE
    assert qa_front["configs"][0]["data_files"] == "qa-*.tar"
    first = json.loads(capsys.readouterr().out.split("\npublish:")[0])
    assert first["uploaded_bytes"] == first["bytes"] > 0 and first["skipped_files"] == 0

    assert _cli(str(run_dir), "--to", str(out)) == 0

    second = json.loads(capsys.readouterr().out.split("\npublish:")[0])
    assert second["uploaded_bytes"] == 0 and second["skipped_bytes"] == first["bytes"]
    assert second["skipped_files"] == sum(d["files"] for d in second["datasets"])
    assert _files_under(out) == files


def test_publish_to_s3_twice(run_dir, s3_server):
    target = s3_server.bucket("wmsynth-publish") + "/runs/tiny"

    first = publish.publish_run(run_dir, target)
    second = publish.publish_run(run_dir, target)

    keys = {o["Key"]: o["Size"] for o in s3_server.client().list_objects_v2(
        Bucket="wmsynth-publish", Prefix="runs/tiny/")["Contents"]}
    assert keys == {f"runs/tiny/{f['path']}": f["size"] for f in first["files"]} | {
        "runs/tiny/_PUBLISHED": keys["runs/tiny/_PUBLISHED"],
        "runs/tiny/.wmsynth_publish.json": keys["runs/tiny/.wmsynth_publish.json"]}
    assert first["uploaded_bytes"] == first["bytes"] and second["uploaded_bytes"] == 0
    card = fileio.read_text(f"{target}/test/README.md")
    assert read_front_matter(card)["license"] == LICENSE


def test_dry_run_lists_every_file_and_uploads_nothing(run_dir, tmp_path, capsys):
    out = tmp_path / "never"

    assert _cli(str(run_dir), "--to", str(out), "--dry-run") == 0

    lines = capsys.readouterr().out.strip().splitlines()
    listed = {line.split()[1]: (int(line.split()[0]), line.split()[-1]) for line in lines[:-1]}
    assert listed["test/README.md"][1] == str(out / "test" / "README.md")
    assert listed["test-qa/qa-000000.tar"][0] == (run_dir / "qa" / "qa-000000.tar").stat().st_size
    assert "test/meta/info.json" in listed and lines[-1].endswith("nothing uploaded")
    assert not out.exists()
    assert _cli(str(run_dir), "--to", "hf://datasets/my-org/tiny", "--dry-run") == 0  # no token needed to list
    assert "hf://datasets/my-org/tiny-qa/qa-000000.tar" in capsys.readouterr().out


def test_interrupted_directory_publish_resumes(run_dir, tmp_path, monkeypatch, capsys):
    out, real_put, calls = tmp_path / "pub", publish_files._put, []

    def failing_put(*args):
        if len(calls) == 3:
            raise ConnectionResetError("connection reset by peer")
        calls.append(args[2])
        real_put(*args)

    monkeypatch.setattr(publish_files, "_put", failing_put)
    assert _cli(str(run_dir), "--to", str(out)) == 1
    assert "3 of" in capsys.readouterr().err and not (out / "_PUBLISHED").exists()
    monkeypatch.setattr(publish_files, "_put", real_put)

    report = publish.publish_run(run_dir, str(out))

    assert report["uploaded_files"] == len(report["files"]) - 3 and report["skipped_files"] == 3
    assert (out / "_PUBLISHED").exists() and read_shard(out / "test").meta.total_episodes == 3


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import huggingface_hub.constants

    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # read when huggingface_hub loads
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    yield server
    server.stop()


def test_publish_to_the_hub(run_dir, hub, capsys):
    assert _cli(str(run_dir), "--to", "hf://datasets/my-org/tiny", "--private") == 0

    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err
    assert set(hub.repos) == {"my-org/tiny", "my-org/tiny-qa"}
    creates = [r["json"] for r in hub.calls("POST", "/api/repos/create")]
    assert {(c["organization"], c["name"], c["type"], c["visibility"]) for c in creates} == {
        ("my-org", "tiny", "dataset", "private"), ("my-org", "tiny-qa", "dataset", "private")}
    assert all(auth == f"Bearer {TOKEN}" for auth, r in zip(hub.auth_headers, hub.requests, strict=True)
               if not r["path"].startswith("/lfs-upload/"))  # the API calls carry it; the LFS storage PUTs do not
    files = hub.files("my-org/tiny")
    assert {"README.md", "meta/info.json", PROVENANCE_FILE, "meta/stats.json", "meta/tasks.parquet"} <= set(files)
    assert any(p.startswith("videos/observation.depth.front/") for p in files)
    card = files["README.md"].decode()
    assert read_front_matter(card)["license"] == LICENSE and "# my-org/tiny" in card
    assert json.loads(files[PROVENANCE_FILE])["repo_id"] == "my-org/tiny"
    assert hub.repos["my-org/tiny"].tags == {"v3.0": hub.repos["my-org/tiny"].heads["main"]}  # lerobot's tag
    assert hub.repos["my-org/tiny-qa"].tags == {}
    assert set(hub.files("my-org/tiny-qa")) == {"README.md", "qa-000000.tar", "index.parquet", "summary.json"}
    assert [c["header"]["summary"] for c in hub.repos["my-org/tiny"].commits] == ["wmsynth publish run"]
    puts = len(hub.lfs_puts())

    assert _cli(str(run_dir), "--to", "hf://my-org/tiny") == 0  # again: nothing new is sent or committed

    assert len(hub.lfs_puts()) == puts and len(hub.repos["my-org/tiny"].commits) == 1
    assert len(hub.repos["my-org/tiny-qa"].commits) == 1


def test_hub_branch_and_interrupted_upload(run_dir, hub, capsys):
    hub.fail_commits = 1  # the first commit fails, after its LFS files arrived

    assert _cli(str(run_dir), "--to", "hf://datasets/my-org/tiny", "--revision", "v1") == 1
    assert "run the same command again" in capsys.readouterr().err
    assert hub.repos["my-org/tiny"].commits == []
    sent = hub.lfs_puts()

    assert _cli(str(run_dir), "--to", "hf://datasets/my-org/tiny", "--revision", "v1") == 0

    assert [r["path"] for r in hub.calls("POST", "/branch/")][:1] == ["/api/datasets/my-org/tiny/branch/v1"]
    repo = hub.repos["my-org/tiny"]
    assert [c["branch"] for c in repo.commits] == ["v1"] and "README.md" in repo.branches["v1"]
    assert repo.branches["main"] == {} and repo.tags == {"v3.0": repo.heads["v1"]}
    puts = hub.lfs_puts()
    assert len(puts) == len(set(puts)) and set(sent) <= set(puts)  # nothing sent twice


def test_bad_input_is_a_clear_message(run_dir, tmp_path, hub, monkeypatch, capsys):
    def error(*argv: str) -> str:
        assert _cli(*argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        return err

    assert "must be ORG/NAME" in error(str(run_dir), "--to", "hf://datasets/tiny")
    assert "would refuse repo id 'my-org/bad--name'" in error(str(run_dir), "--to", "hf://datasets/my-org/bad--name")
    assert "use hf://datasets/ORG/NAME" in error(str(run_dir), "--to", "hf://models/my-org/tiny")
    assert "'Apache 2' is not a Hugging Face Hub licence identifier" in error(
        str(run_dir), "--to", str(tmp_path / "x"), "--license", "Apache 2")
    monkeypatch.delenv("HF_TOKEN")
    assert "no Hugging Face token: run `hf auth login`" in error(str(run_dir), "--to", "hf://datasets/my-org/tiny")
    assert hub.requests == []

    incomplete = tmp_path / "incomplete"
    shutil.copytree(run_dir, incomplete, ignore=shutil.ignore_patterns("shards", "episodes", "qa"))
    (incomplete / "stages" / "04_filter" / "_SUCCESS").unlink()
    assert "stage filter (stages/04_filter) has no _SUCCESS marker" in error(str(incomplete), "--to", str(tmp_path))
    (incomplete / "stages" / "04_filter" / "_SUCCESS").write_text("{}")
    (incomplete / "shards" / "shard-00000").mkdir(parents=True)
    assert "shard-00000: no _COMPLETE marker" in error(str(incomplete), "--to", str(tmp_path))
    (incomplete / "manifest.json").unlink()
    assert "no manifest.json" in error(str(incomplete), "--to", str(tmp_path))
    assert "no such run directory" in error(str(tmp_path / "nope"), "--to", str(tmp_path))
    with pytest.raises(ValueError, match="'Apache 2' is not a Hugging Face Hub licence identifier"):
        WriteLerobotParams(license="Apache 2")
