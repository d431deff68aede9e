"""The test servers of tests/servers.py: a local S3 through s3fs/pyarrow, a real 2-node Ray cluster and its jobs."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.servers import REPO_ROOT

# One job checks the cluster from the inside: node count (the line the brief asks for), the interpreter, the uploaded
# working_dir, and one task pinned to each node that reads an S3 object with no storage options (environment only).
_JOB = r"""
import json, os, sys
import ray
ray.init()
print(len([n for n in ray.nodes() if n['Alive']]))

@ray.remote(num_cpus=1)
def probe(url):
    import fsspec, ray, sys, os
    with fsspec.open(url, 'rb') as f:
        data = f.read().decode()
    return {'node': ray.get_runtime_context().get_node_id(), 'prefix': sys.prefix, 'data': data,
            'endpoint': os.environ.get('AWS_ENDPOINT_URL')}

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as At
alive = [n['NodeID'] for n in ray.nodes() if n['Alive']]
probes = ray.get([probe.options(scheduling_strategy=At(n, soft=False)).remote(os.environ['PROBE_URL']) for n in alive])
print('RESULT ' + json.dumps({'prefix': sys.prefix, 'cwd': os.getcwd(),
    'cwd_has_pipeline': os.path.isfile('pipeline/__init__.py'), 'cwd_has_venv': os.path.exists('.venv'),
    'alive': alive, 'probes': probes}))
"""


def test_s3fs_roundtrip_through_moto(s3_server):
    import boto3
    import fsspec
    import pyarrow.fs as pafs
    import s3fs

    url = s3_server.bucket("wms-roundtrip")
    assert url == "s3://wms-roundtrip"
    assert s3_server.bucket("wms-roundtrip") == url  # idempotent

    fs = s3fs.S3FileSystem()  # no options: the endpoint comes from AWS_ENDPOINT_URL
    fs.pipe(f"{url}/a/b.txt", b"hello moto")
    assert fs.cat(f"{url}/a/b.txt") == b"hello moto"
    with fsspec.open(f"{url}/c.json", "w") as f:  # plain fsspec URL
        json.dump({"k": 1}, f)
    with fsspec.open(f"{url}/c.json") as f:
        assert json.load(f) == {"k": 1}
    assert sorted(fs.ls(url)) == ["wms-roundtrip/a", "wms-roundtrip/c.json"]

    # it really is the moto server (boto3 with explicit endpoint), and pyarrow's S3 (Ray Data's) reaches it too
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket="wms-roundtrip")["Contents"]]
    assert sorted(keys) == ["a/b.txt", "c.json"]
    assert boto3.client("s3").get_object(Bucket="wms-roundtrip", Key="a/b.txt")["Body"].read() == b"hello moto"
    pfs, path = pafs.FileSystem.from_uri(f"{url}/a/b.txt")
    with pfs.open_input_stream(path) as f:
        assert f.read() == b"hello moto"
    # explicit storage options work without the environment
    assert fsspec.filesystem("s3", **s3_server.storage_options).cat(f"{url}/a/b.txt") == b"hello moto"


def test_s3_missing_bucket_is_a_clear_error(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem()
    with pytest.raises(FileNotFoundError, match="bucket does not exist"):
        fs.cat("s3://wms-no-such-bucket/x.txt")
    with pytest.raises(FileNotFoundError, match="bucket does not exist"):
        fs.pipe("s3://wms-no-such-bucket/x.txt", b"data")
    with pytest.raises(FileNotFoundError):
        fs.ls("s3://wms-no-such-bucket")
    assert not fs.exists("s3://wms-no-such-bucket")


# Not marked slow: on 2 quiet cores the cluster starts in about 20 s and a job takes 10-16 s (this test about 36 s,
# the cluster tests about 60 s together); with other test runs loading the cores, start 40-60 s, this test 70-95 s.
def test_ray_cluster_2node_runs_jobs(s3_server, ray_cluster_2node):
    cluster = ray_cluster_2node
    alive = cluster.alive_nodes()
    assert len(alive) == 2
    assert sorted(n["is_head_node"] for n in alive) == [False, True]
    assert [n["resources_total"]["CPU"] for n in alive] == [1.0, 1.0]

    import s3fs

    url = s3_server.bucket("wms-cluster") + "/probe.txt"
    s3fs.S3FileSystem().pipe(url, b"seen from the cluster")

    res = cluster.submit(f'python -c "{_JOB}"', working_dir=REPO_ROOT, env_vars={"PROBE_URL": url}, timeout_s=300)
    assert res.status == "SUCCEEDED" and res.returncode == 0, res.logs + res.cli_output
    lines = res.logs.splitlines()
    assert "2" in lines, res.logs  # the brief's check: len(alive nodes) printed by the job's driver
    out = json.loads(next(ln for ln in lines if ln.startswith("RESULT "))[len("RESULT "):])
    assert out["prefix"] == sys.prefix  # the job ran on this venv's interpreter
    assert out["cwd_has_pipeline"] and not out["cwd_has_venv"], out  # repo root uploaded, .venv left out
    assert sorted(p["node"] for p in out["probes"]) == sorted(out["alive"])  # one task on each node
    for probe in out["probes"]:
        assert probe == {"node": probe["node"], "prefix": sys.prefix, "data": "seen from the cluster",
                         "endpoint": s3_server.endpoint_url}


def test_ray_cluster_2node_reports_failures(ray_cluster_2node):
    res = ray_cluster_2node.submit("python -c 'import sys; print(\"bye\"); sys.exit(3)'", timeout_s=180)
    assert res.status == "FAILED"
    assert res.returncode == 3 and res.cli_returncode != 0
    assert "bye" in res.logs


def test_cluster_coexists_with_local_ray(ray_session, ray_cluster_2node):
    ray = ray_session
    assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
    assert len(ray.nodes()) == 1  # the in-process Ray is its own one-node cluster
    assert ray.cluster_resources()["CPU"] == 2.0
    assert len(ray_cluster_2node.alive_nodes()) == 2
    # the cluster's processes (found by its environment marker) are none of the local Ray's
    session_dir = ray._private.worker._global_node.get_session_dir_path()
    local = {int(p) for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(int(p), session_dir)}
    assert local and ray_cluster_2node.pids() and not local & set(ray_cluster_2node.pids())


def _cmdline_has(pid: int, text: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return text.encode() in f.read()
    except OSError:
        return False
