"""Issue-11 figures: ``wmsynth publish`` of a finished run to a local S3-compatible server (moto on 127.0.0.1, started
and stopped here), then the same publication again. The last line printed is one JSON object:

- ``publish_mb_per_s``: MB published per second of the whole first publication (checking the run, merging its shards
  with lerobot's aggregation, cards, hashing, uploading); ``upload_mb_per_s`` counts the upload phase alone;
- ``republish_uploaded_bytes``: bytes the second publication of the same run uploaded (target 0).

    .venv/bin/python benchmarks/publish.py [RUN_DIR]     (default runs/demo if it exists, else a small run made here)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def small_run(run_dir: Path) -> Path:
    """generate (4 episodes) -> sensor depth -> spatial QA -> LeRobot shards, with the real pipeline."""
    from pipeline.config import parse_config
    from pipeline.run import run

    config = parse_config({"output_dir": str(run_dir), "seed": 0, "stages": [
        {"name": "generate_tabletop", "params": {"num_episodes": 4, "image_size": 64, "max_steps": 40}},
        {"name": "depth", "params": {"backend": "sensor"}},
        {"name": "synthesize_qa", "params": {"frames_per_episode": 2}},
        {"name": "write_lerobot", "params": {"repo_id": "wmsynth/bench-publish", "license": "apache-2.0",
                                             "episodes_per_shard": 2}}]})
    run(config)
    return run_dir


def main() -> None:
    import yaml

    from pipeline.publish import publish_run
    from tests.servers import start_moto_server

    with tempfile.TemporaryDirectory(prefix="wmsynth-bench-publish-") as tmp:
        default = REPO / "runs" / "demo"
        run_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default if (default / "manifest.json").exists() \
            else small_run(Path(tmp) / "run")
        config = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
        recorded = [s for s in config["stages"] if s["name"] == "write_lerobot" and "license" in (s.get("params") or {})]
        license_id = None if recorded else "apache-2.0"  # runs made before write_lerobot recorded a licence
        server = start_moto_server(Path(tmp))
        os.environ.update(server.env)
        try:
            target = server.bucket("wmsynth-bench") + "/published"
            first = publish_run(run_dir, target, license_id=license_id)
            second = publish_run(run_dir, target, license_id=license_id)
        finally:
            server.stop()
    mb = first["bytes"] / 1e6
    result = {"run_dir": str(run_dir), "datasets": [d["name"] for d in first["datasets"]], "files": len(first["files"]),
              "published_mb": round(mb, 3), "publish_seconds": first["seconds"],
              "publish_mb_per_s": round(mb / first["seconds"], 3),
              "upload_mb_per_s": round(mb / max(first["upload_seconds"], 1e-9), 3),
              "republish_seconds": second["seconds"], "republish_uploaded_bytes": second["uploaded_bytes"],
              "republish_uploaded_files": second["uploaded_files"], "licence_from_run": license_id is None}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
