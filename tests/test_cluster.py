"""The demo on a real 2-node Ray cluster, submitted with ``ray job submit`` and a ``runtime_env``, its run directory on
a local S3 server; the same config run locally in-process must give the same shards, episode for episode.

One cluster job and one local run are shared by the tests of this module (``runs`` fixture):

    cluster   wmsynth run cluster.yaml --output s3://wms-cluster/cluster-run   (ray job submit, working_dir = repo)
    local     pipeline.run.run(config) with output_dir in tmp_path             (the session's in-process Ray)

Compared per shard through lerobot's own reader (``LeRobotDataset(repo_id, root=...)``; the S3 shards are downloaded
first): the tabular data exactly (state, action, timestamps, episode/frame/global indices, task indices and texts),
decoded RGB frames (exact when the encoder is deterministic, else PSNR > 40 dB) and depth within 1 mm.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from episodes import io as fileio
from pipeline import shards
from tests.servers import REPO_ROOT

BUCKET = "wms-cluster"
REPO_ID = "test/cluster"
CONFIG = {
    "seed": 3,
    "stages": [
        {"name": "generate_tabletop", "params": {"num_episodes": 4, "image_size": 32, "max_steps": 12,
                                                 "tasks": ["reach", "push"], "num_objects": [2, 3]}},
        {"name": "depth", "params": {"backend": "sensor"}},
        {"name": "synthesize_qa", "params": {"frames_per_episode": 2}},
        {"name": "write_lerobot", "params": {"episodes_per_shard": 2, "repo_id": REPO_ID}},
    ],
}


def _http_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read().decode())


@pytest.fixture(scope="module")
def runs(s3_server, ray_cluster_2node, ray_session, tmp_path_factory):
    """(cluster result, local result): each a dict with run_dir, manifest, seconds (and the job for the cluster)."""
    from pipeline.config import parse_config
    from pipeline.run import run

    url = s3_server.bucket(BUCKET) + "/cluster-run"
    # The job writes its config next to the uploaded code: nothing on the submitting machine's disk is needed.
    entrypoint = f'printf "%s" "$WMSYNTH_CONFIG" > cluster.yaml && wmsynth run cluster.yaml --output {url}'
    config_text = yaml.safe_dump({"output_dir": "runs/unused", **CONFIG}, sort_keys=False)
    with ThreadPoolExecutor(1) as pool:  # the job mostly waits on the cluster: run the local twin meanwhile
        submitted = pool.submit(ray_cluster_2node.submit, entrypoint, working_dir=REPO_ROOT, timeout_s=600,
                                env_vars={"WMSYNTH_CONFIG": config_text, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
        local_dir = tmp_path_factory.mktemp("local-run") / "run"
        t0 = time.monotonic()
        manifest = run(parse_config({"output_dir": str(local_dir), **CONFIG}))
        local = {"run_dir": str(local_dir), "manifest": manifest, "seconds": time.monotonic() - t0}
        job = submitted.result()
    assert job.returncode == 0 and job.status == "SUCCEEDED", f"{job.status} {job.message}\n{job.logs[-6000:]}"
    cluster = {"run_dir": url, "job": job, "seconds": job.elapsed_s,
               "manifest": json.loads(fileio.read_text(f"{url}/manifest.json"))}
    return cluster, local


def _shard_members(manifest: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in manifest["episodes"]:
        if entry["fate"] == "written":
            out.setdefault(entry["shard"], []).append(entry["episode_id"])
    return {name: sorted(ids) for name, ids in sorted(out.items())}


def test_cluster_run_matches_local_run_episode_for_episode(runs):
    cluster, local = runs
    cm, lm = cluster["manifest"], local["manifest"]
    assert cm["counts"] == lm["counts"] == {"written": 4, "total": 4}
    assert cm["ray_nodes"] == 2 and lm["ray_nodes"] == 1
    assert cm["run_dir"] == cluster["run_dir"]
    assert _shard_members(cm) == _shard_members(lm)
    assert [s["name"] for s in cm["shards"]] == ["shard-00000", "shard-00001"]
    assert [t["stage"] for t in cm["stages"]] == ["generate_tabletop", "depth", "synthesize_qa", "write_lerobot"]
    # the spatial QA set landed in the bucket too, with as many samples as locally
    assert fileio.exists(f"{cluster['run_dir']}/qa/index.parquet")
    summary = json.loads(fileio.read_text(f"{cluster['run_dir']}/qa/summary.json"))
    assert summary == json.loads((Path(local["run_dir"]) / "qa" / "summary.json").read_text())


def test_cluster_tasks_ran_on_both_nodes(runs, ray_cluster_2node):
    """The generate stage's tasks, as the cluster's state API recorded them for the job: on both nodes."""
    cluster, _ = runs
    job = cluster["job"]
    job_id = _http_json(f"{ray_cluster_2node.dashboard_url}/api/jobs/{job.submission_id}")["job_id"]
    body = _http_json(f"{ray_cluster_2node.dashboard_url}/api/v0/tasks?limit=10000&detail=true"
                      f"&filter_keys=job_id&filter_predicates=%3D&filter_values={job_id}")
    tasks = body["data"]["result"]["result"]
    generate_nodes = {t["node_id"] for t in tasks if t.get("name") == "produce_one" and t.get("node_id")}
    all_nodes = {n["node_id"] for n in ray_cluster_2node.alive_nodes()}
    assert generate_nodes == all_nodes and len(all_nodes) == 2, (generate_nodes, all_nodes)


def _load(root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(REPO_ID, root=root, video_backend="pyav", depth_output_unit="m", return_uint8=True)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_cluster_shards_equal_local_shards(runs, tmp_path):
    cluster, local = runs
    listing = shards.list_shards(f"{cluster['run_dir']}/shards")
    assert listing.incomplete == [] and sorted(listing.complete) == ["shard-00000", "shard-00001"]
    worst_psnr, worst_depth_m, identical_videos = float("inf"), 0.0, True
    for name in sorted(listing.complete):
        remote_root = tmp_path / name
        fileio.download_dir(f"{cluster['run_dir']}/shards/{name}", remote_root)
        local_root = Path(local["run_dir"]) / "shards" / name
        remote, here = _load(remote_root), _load(local_root)

        assert remote.num_episodes == here.num_episodes == 2 and remote.num_frames == here.num_frames
        assert remote.meta.tasks.equals(here.meta.tasks)
        prov = [json.loads((root / "meta" / "wmsynth_provenance.json").read_text())["episodes"]
                for root in (remote_root, local_root)]
        assert [e["episode_id"] for e in prov[0]] == [e["episode_id"] for e in prov[1]]
        tabular = [c for c in here.hf_dataset.column_names if not c.startswith("observation.images")
                   and not c.startswith("observation.depth")]
        assert {"observation.state", "action", "timestamp", "episode_index", "frame_index", "index",
                "task_index"} <= set(tabular)
        for column in tabular:
            a = np.asarray(remote.hf_dataset.with_format("numpy")[column])
            b = np.asarray(here.hf_dataset.with_format("numpy")[column])
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: {column}")

        video_keys = here.meta.video_keys
        assert video_keys and video_keys == remote.meta.video_keys
        for key in video_keys:
            for path in sorted((local_root / "videos" / key).rglob("*.mp4")):
                twin = remote_root / path.relative_to(local_root)
                identical_videos &= twin.read_bytes() == path.read_bytes()
        for i in range(here.num_frames):
            a, b = remote[i], here[i]
            assert a["task"] == b["task"]
            for key in video_keys:
                x, y = a[key].numpy(), b[key].numpy()
                if key.startswith("observation.depth"):
                    worst_depth_m = max(worst_depth_m, float(np.abs(x - y).max()))
                else:
                    worst_psnr = min(worst_psnr, _psnr(x, y))
    print(f"\ncluster vs local shards: RGB PSNR min {worst_psnr:.1f} dB, depth max diff {worst_depth_m * 1000:.3f} mm, "
          f"video files byte-identical: {identical_videos}; cluster job {cluster['seconds']:.1f} s, "
          f"local run {local['seconds']:.1f} s")
    for which, result in (("cluster", cluster), ("local", local)):
        print(which, {t["stage"]: t["seconds"] for t in result["manifest"]["stages"]})
    assert worst_psnr > 40.0
    assert worst_psnr == float("inf") or not identical_videos  # same bytes decode to the same frames
    assert worst_depth_m <= 0.001
