"""The run directory on object storage (a local moto S3, ``tests/servers.py``): a whole run on s3://, every storage
problem a user can hit before or during a run, an input object that vanishes mid-run, and a killed run resumed.

    run on s3://                 every episode written, manifest/shards/_COMPLETE in the bucket, ``wmsynth verify``
    misspelled bucket            validate and run exit 2 before any work, naming output_dir and the missing bucket
    unreachable endpoint         exit 2, "cannot reach" (AWS_ENDPOINT_URL on a closed port, one attempt)
    no credentials               exit 2, naming credentials (no keys, no files, no instance metadata)
    permission denied on write   a second moto server with IAM enforced, a user that may read and list but not PUT
    object vanishes mid-run      an input video deleted between the plan and its task, an intermediate episode deleted
                                 before the stage that reads it: each one quarantined with a reason naming the object
    killed run, --resume         the real CLI killed mid-generation, resumed: nothing lost or redone, no partial shard
                                 listed, and the secret key never written anywhere
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

from pipeline import shards
from tests.pipeline.test_run import tiny_config
from tests.servers import free_ports, start_moto_server
from tests.stages.test_ingest_videos import moving_square, write_mp4

REPO = Path(__file__).resolve().parents[2]
WMSYNTH = str(Path(sys.executable).parent / "wmsynth")
SECRET = "wmsynthTestSecret-Zq7-do-not-leak"  # a distinctive fake secret key: grep-able in anything written
KEY_ID = "AKIAWMSYNTHTESTKEY01"


def _fs():
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return s3fs.S3FileSystem()


def _keys(s3_server, bucket: str, prefix: str = "") -> list[str]:
    client = s3_server.client()
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(keys)


def _write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([WMSYNTH, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _validate_and_run(config_path: Path, env: dict[str, str]) -> dict[str, subprocess.CompletedProcess]:
    """``wmsynth validate`` and ``wmsynth run`` on the same file, side by side (each is ~2 s of imports)."""
    procs = {cmd: subprocess.Popen([WMSYNTH, cmd, str(config_path)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
             for cmd in ("validate", "run")}
    out = {}
    for cmd, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        out[cmd] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return out


def _assert_config_error(results: dict[str, subprocess.CompletedProcess], *needles: str) -> None:
    for cmd, res in results.items():
        text = res.stdout + res.stderr
        assert res.returncode == 2, f"wmsynth {cmd}: exit {res.returncode}\n{text}"
        assert "output_dir: s3://" in res.stderr, f"wmsynth {cmd} does not name the YAML path:\n{text}"
        for needle in needles:
            assert needle in res.stderr, f"wmsynth {cmd}: {needle!r} not in\n{text}"
        assert "Traceback" not in text
        assert "Started a local Ray instance" not in text  # failed before any work
        assert SECRET not in text


# -- a whole run on s3:// --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_run(s3_server, ray_session):
    from pipeline.config import parse_config
    from pipeline.run import run

    url = s3_server.bucket("wms-runs") + "/run"
    manifest = run(parse_config(tiny_config(url)))  # type: ignore[arg-type]
    return url, manifest


def test_run_on_s3_writes_every_episode_and_verifies(s3_server, s3_run, capsys):
    from pipeline.cli import main

    url, manifest = s3_run
    assert manifest["counts"] == {"written": 4, "total": 4}
    assert manifest["run_dir"] == url
    keys = _keys(s3_server, "wms-runs", "run/")
    for key in ("manifest.json", "run.log", "config.resolved.yaml", "stages/00_generate_tabletop/_SUCCESS",
                "stages/01_depth/_SUCCESS", "stages/02_write_lerobot/_SUCCESS",
                "stages/00_generate_tabletop/episodes/tabletop-000003.episode",
                "stages/00_generate_tabletop/done/tabletop-000003.json"):
        assert f"run/{key}" in keys
    assert json.loads(_fs().cat(f"{url}/manifest.json")) == json.loads(json.dumps(manifest, default=str))
    assert "stage write_lerobot done" in _fs().cat(f"{url}/run.log").decode()

    listing = shards.list_shards(f"{url}/shards")
    assert sorted(listing.complete) == [s["name"] for s in manifest["shards"]] == ["shard-00000", "shard-00001"]
    assert listing.incomplete == []
    for name, record in listing.complete.items():
        members = {e["episode_id"] for e in manifest["episodes"] if e.get("shard") == name}
        assert set(record["episodes"]) == members
        assert f"run/shards/{name}/meta/info.json" in keys
    assert not [k for k in keys if "/.tmp" in k or ".wmsynth-write-probe" in k]

    assert main(["verify", url, "--frames-per-episode", "2"]) == 0
    assert "verify: OK: 4 episodes in 2 LeRobot shards" in capsys.readouterr().out
    assert json.loads(_fs().cat(f"{url}/verify.json"))["ok"] is True


# -- storage problems: exit 2 before any work ------------------------------------------------------------------------


def test_misspelled_bucket_is_a_config_error(s3_server, tmp_path):
    s3_server.bucket("wms-real-bucket")
    config = _write_config(tmp_path / "stages.yaml", tiny_config("s3://wms-reel-bucket/run"))  # type: ignore[arg-type]
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET}
    results = _validate_and_run(config, env)
    _assert_config_error(results, "s3://wms-reel-bucket/run: the bucket does not exist")
    buckets = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert "wms-reel-bucket" not in buckets  # the probe did not create it


def test_unreachable_endpoint_is_a_config_error(s3_server, tmp_path):
    url = s3_server.bucket("wms-unreachable") + "/run"
    config = _write_config(tmp_path / "stages.yaml", tiny_config(url))  # type: ignore[arg-type]
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    env = {**os.environ, "AWS_ENDPOINT_URL": closed, "AWS_ENDPOINT_URL_S3": closed, "AWS_MAX_ATTEMPTS": "1",
           "AWS_RETRY_MODE": "standard", "AWS_SECRET_ACCESS_KEY": SECRET}
    t0 = time.monotonic()
    results = _validate_and_run(config, env)
    assert time.monotonic() - t0 < 60
    _assert_config_error(results, f"{url}: cannot reach the storage endpoint")
    assert _keys(s3_server, "wms-unreachable") == []


def test_missing_credentials_are_a_config_error(s3_server, tmp_path):
    url = s3_server.bucket("wms-nocreds") + "/run"
    config = _write_config(tmp_path / "stages.yaml", tiny_config(url))  # type: ignore[arg-type]
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                        "AWS_WEB_IDENTITY_TOKEN_FILE")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-such-credentials"),
               AWS_CONFIG_FILE=str(tmp_path / "no-such-config"), AWS_EC2_METADATA_DISABLED="true")
    results = _validate_and_run(config, env)
    _assert_config_error(results, f"{url}: no valid credentials")
    assert _keys(s3_server, "wms-nocreds") == []


@pytest.fixture(scope="module")
def iam_s3(tmp_path_factory):
    """A second moto server that enforces IAM: bucket ``wms-locked`` and a user who may list and read it but whose
    policy denies s3:PutObject there. Returns (server, the user's environment)."""
    import boto3

    server = start_moto_server(tmp_path_factory.mktemp("moto-iam"))
    try:
        admin = {"endpoint_url": server.endpoint_url, "region_name": "us-east-1",
                 "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        s3, iam = boto3.client("s3", **admin), boto3.client("iam", **admin)
        s3.create_bucket(Bucket="wms-locked")
        s3.put_object(Bucket="wms-locked", Key="inputs/readme.txt", Body=b"readable")
        iam.create_user(UserName="reader")
        arns = ["arn:aws:s3:::wms-locked", "arn:aws:s3:::wms-locked/*"]
        iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"], "Resource": arns},
                          {"Effect": "Deny", "Action": ["s3:PutObject", "s3:DeleteObject"], "Resource": arns}]}))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        # From now on every request is authenticated and authorised against IAM (moto's INITIAL_NO_AUTH_ACTION_COUNT).
        request = urllib.request.Request(f"{server.endpoint_url}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.loads(resp.read())["status"] == "ok"
        env = {**os.environ, **server.env, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        yield server, env
    finally:
        server.stop()


def test_permission_denied_on_write_is_a_config_error(iam_s3, tmp_path):
    import boto3

    server, env = iam_s3
    user = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    # the server really enforces IAM: the user reads and lists, but may not write, and unknown keys are refused
    assert user.get_object(Bucket="wms-locked", Key="inputs/readme.txt")["Body"].read() == b"readable"
    with pytest.raises(user.exceptions.ClientError, match="AccessDenied"):
        user.put_object(Bucket="wms-locked", Key="x", Body=b"x")
    with pytest.raises(server.client().exceptions.ClientError, match="InvalidAccessKeyId"):
        server.client().list_objects_v2(Bucket="wms-locked")

    config = _write_config(tmp_path / "stages.yaml", tiny_config("s3://wms-locked/run"))  # type: ignore[arg-type]
    results = _validate_and_run(config, env)
    _assert_config_error(results, "s3://wms-locked/run: permission denied")
    assert [o["Key"] for o in user.list_objects_v2(Bucket="wms-locked")["Contents"]] == ["inputs/readme.txt"]


# -- objects that vanish mid-run -------------------------------------------------------------------------------------


class _DeleteOn(logging.Handler):
    """Deletes objects when a log line containing a marker is emitted: a real deletion at a known point of the run
    (the driver logs these lines synchronously, between planning and the tasks, or just before a stage starts)."""

    def __init__(self, deletions: dict[str, str]):
        super().__init__(logging.INFO)
        self.deletions = dict(deletions)  # marker text -> URL to delete
        self.deleted: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for marker, url in list(self.deletions.items()):
            if marker in message:
                _fs().rm(url)
                self.deleted.append(url)
                del self.deletions[marker]


@contextlib.contextmanager
def _deleting(deletions: dict[str, str], *loggers: str):
    handler = _DeleteOn(deletions)
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger, level in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)


def test_objects_that_vanish_mid_run_quarantine_their_episode(s3_server, ray_session, tmp_path, capsys):
    from pipeline.cli import main

    bucket = s3_server.bucket("wms-vanish")
    fs = _fs()
    for i, name in enumerate(("clip-a", "clip-b", "clip-c", "clip-d")):
        fs.put_file(str(write_mp4(tmp_path / f"{name}.mp4", moving_square(shift=i))), f"{bucket}/videos/{name}.mp4")
    run_url = f"{bucket}/run"
    config = _write_config(tmp_path / "stages.yaml", {
        "output_dir": run_url,
        "stages": [{"name": "ingest_videos", "params": {"path": f"{bucket}/videos/", "task": "watch"}},
                   {"name": "write_lerobot", "params": {"episodes_per_shard": 2, "repo_id": "test/vanish"}}]})
    gone_input = f"{bucket}/videos/clip-b.mp4"  # listed by the plan, deleted before its task reads it
    gone_episode = f"{run_url}/stages/00_ingest_videos/episodes/video-clip-d.episode"  # before write_lerobot reads it
    with _deleting({"4 videos under": gone_input, "stage write_lerobot": gone_episode},
                   "pipeline.stages.ingest_videos", "pipeline.run") as deleter:
        code = main(["run", str(config)])
    out = capsys.readouterr().out
    assert deleter.deleted == [gone_input, gone_episode], "a deletion point was not reached"
    assert code == 0, out  # some episodes were written: the CLI's success

    manifest = json.loads(fs.cat(f"{run_url}/manifest.json"))
    fates = {e["episode_id"]: e for e in manifest["episodes"]}
    assert manifest["counts"] == {"written": 2, "quarantined": 2, "total": 4}
    assert fates["video-clip-a"]["fate"] == fates["video-clip-c"]["fate"] == "written"
    b, d = fates["video-clip-b"], fates["video-clip-d"]
    assert (b["fate"], b["stage"]) == ("quarantined", "ingest_videos")
    assert "wms-vanish/videos/clip-b.mp4" in b["reason"], b["reason"]
    assert (d["fate"], d["stage"]) == ("quarantined", "write_lerobot")
    assert "video-clip-d.episode" in d["reason"], d["reason"]
    assert "quarantined: video-clip-b at ingest_videos" in out and "quarantined: video-clip-d at write_lerobot" in out
    listing = shards.list_shards(f"{run_url}/shards")
    assert listing.incomplete == [] and sorted(listing.complete) == [s["name"] for s in manifest["shards"]]
    assert sum(s["episodes"] for s in manifest["shards"]) == 2


# -- a killed run on S3, resumed -------------------------------------------------------------------------------------


def _etags(s3_server, bucket: str, prefix: str) -> dict[str, tuple[str, object]]:
    objects = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in objects}


def _grep_objects(s3_server, bucket: str, needle: str) -> list[str]:
    """Keys of every object in ``bucket`` holding ``needle``: raw bytes, the members of zip files (.episode) and
    the values of parquet tables (shards' data and meta)."""
    import pyarrow.parquet as pq

    client, found, raw_needle = s3_server.client(), [], needle.encode()
    for key in _keys(s3_server, bucket):
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        texts = [data]
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                texts.extend(zf.read(n) for n in zf.namelist())
        if key.endswith(".parquet"):
            texts.append(str(pq.read_table(io.BytesIO(data)).to_pylist()).encode())
        if any(raw_needle in t for t in texts):
            found.append(key)
    return found


def _kill_marked(marker: str, timeout_s: float = 30.0) -> None:
    """SIGKILL every process whose environment holds ``marker`` (the killed CLI's Ray workers, which run in process
    groups of their own and may finish their task after the driver died); wait until they are gone."""
    needle = marker.encode()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if needle in Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    raise TimeoutError(f"processes with {marker} still alive after {timeout_s} s")


def test_killed_run_on_s3_resumes_without_loss_or_leaks(s3_server, tmp_path):
    bucket = s3_server.bucket("wms-killed")
    run_url = f"{bucket}/run"
    config = tiny_config(run_url, num_episodes=6, episodes_per_shard=3)  # type: ignore[arg-type]
    config["stages"] = [s for s in config["stages"] if s["name"] != "depth"]  # not needed here: ~15 s less
    config["stages"][0]["params"]["resources"] = {"num_cpus": 1, "concurrency": 1}  # one at a time: a slow source
    path = _write_config(tmp_path / "stages.yaml", config)
    marker = f"WMSYNTH_TEST_KILLED_RUN={os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "WMSYNTH_TEST_KILLED_RUN": marker.split("=", 1)[1]}
    gen = "run/stages/00_generate_tabletop/"

    proc = subprocess.Popen([WMSYNTH, "run", str(path)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len(_keys(s3_server, "wms-killed", gen + "done/")) >= 2:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    first_output = proc.communicate()[0].decode(errors="replace")
    _kill_marked(marker)  # the whole local Ray of the killed run, as a killed machine would leave it
    done = [k for k in _keys(s3_server, "wms-killed", gen + "done/") if k.endswith(".json")]
    assert 2 <= len(done) < 6, f"kill landed at {len(done)} episodes; expected mid-stage\n{first_output[-3000:]}"
    assert not _keys(s3_server, "wms-killed", "run/manifest.json")
    finished = {f"{gen}episodes/{Path(k).stem}.episode" for k in done}
    before = {k: v for k, v in _etags(s3_server, "wms-killed", gen + "episodes/").items() if k in finished}
    assert set(before) == finished

    resumed = _cli("run", str(path), "--resume", env=env, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"shards (2): {run_url}/shards" in resumed.stdout
    manifest = json.loads(_fs().cat(f"{run_url}/manifest.json"))
    assert manifest["counts"] == {"written": 6, "total": 6}
    assert sorted(e["episode_id"] for e in manifest["episodes"]) == [f"tabletop-{i:06d}" for i in range(6)]
    after = _etags(s3_server, "wms-killed", gen + "episodes/")
    assert len(after) == 6
    assert {k: after[k] for k in finished} == before, "episodes finished before the kill were generated again"
    assert f"{len(done)} of 6 episodes finished in an earlier run" in resumed.stderr + resumed.stdout

    listing = shards.list_shards(f"{run_url}/shards")
    assert listing.incomplete == []
    assert sorted(listing.complete) == [s["name"] for s in manifest["shards"]] == ["shard-00000", "shard-00001"]
    shard_of = [e["shard"] for e in manifest["episodes"]]
    assert sorted(shard_of) == ["shard-00000"] * 3 + ["shard-00001"] * 3

    # The secret key is in the environment of the driver and of every Ray worker, and nowhere in what they wrote.
    outputs = first_output + resumed.stdout + resumed.stderr
    assert SECRET not in outputs
    assert _grep_objects(s3_server, "wms-killed", SECRET) == []
    assert "stage write_lerobot done" in _fs().cat(f"{run_url}/run.log").decode()
