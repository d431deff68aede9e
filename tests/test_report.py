"""The run report: from a tiny finished run's files (shards written by lerobot's writer, a QA set, every stage's
reports), one self-contained report.html with a section per part the run has, images embedded, no external URLs, a
few MB at most; a run without some parts gets a one-line note for each; and headless chromium renders it (slow)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import report
from pipeline.lerobot_shard import write_and_publish
from pipeline.stages.write_lerobot import WriteLerobotParams
from tests.shard_factories import REPO_ID, save_episodes, shard_episode, shard_inputs

STAGES = ["generate_tabletop", "depth", "train_world_model", "evaluate_world_model", "label_actions", "filter",
          "synthesize_qa", "write_lerobot"]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _qa_set(qa_dir: Path) -> None:
    """One QA sample as synthesize_qa stores it: RGB PNG and the record (intrinsics, viewer frame, objects, qa)."""
    qa_dir.mkdir(parents=True)
    obj = {"object_id": 3, "name": "red cube", "obb_m": {"centre": [0.0, 0.0, 0.5], "extent": [0.1, 0.1, 0.1],
                                                         "R": np.eye(3).tolist()}}
    record = {"intrinsics": {"fx": 40.0, "fy": 40.0, "cx": 16.0, "cy": 16.0, "width": 32, "height": 32},
              "viewer_frame": {"cam_to_frame": np.eye(4).tolist()}, "objects": [obj],
              "qa": [{"family": "width", "question": "How wide is the red cube?", "answer": "About 10 cm.",
                      "object_ids": [3]}]}
    rgb = np.full((32, 32, 3), 90, np.uint8)
    with tarfile.open(qa_dir / "qa-000000.tar", "w") as tar:
        for name, data in (("ep-real-0__front__000000.json", json.dumps(record).encode()),
                           ("ep-real-0__front__000000.rgb.png", _png(rgb))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (qa_dir / "summary.json").write_text(json.dumps({"num_samples": 1, "num_qa": 1, "qa_per_family": {"width": 1},
                                                     "shards": [{"name": "qa-000000.tar"}]}))


def _stage_files(run: Path) -> None:
    d = {name: run / "stages" / f"{i:02d}_{name}" for i, name in enumerate(STAGES)}
    for path in d.values():
        path.mkdir(parents=True)
    (d["train_world_model"] / "losses.jsonl").write_text("".join(
        json.dumps({"step": s, "lr": 1e-3, "loss": 1.0 / s, "recon": 0.5 / s, "bottleneck": 0.0}) + "\n"
        for s in (10, 20, 30)))
    steps = {"psnr": [20.0, 18.0], "psnr_masked": [12.0, 11.0], "ssim": [0.8, 0.7], "ssim_masked": [0.3, 0.2]}
    (d["evaluate_world_model"] / "eval.json").write_text(json.dumps({
        "cameras": ["front"], "image_size": 16,
        "latent": {"probe_action": {"r2": 0.5, "r2_per_dim": [0.6, 0.4]}, "head": {"r2": 0.3, "r2_per_dim": [0.2, 0.4]}},
        "rollout": {"horizon": 2, "per_step": {c: steps for c in ("action", "latent", "shuffled", "copy")},
                    "summary": {"psnr_gain_1step_db": 1.5, "action_sensitivity_db": 0.75,
                                "action_sensitivity_masked_db": 0.5}}}))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (2, 3, 3, 16, 16), dtype=np.uint8)  # (W, K+1, C, H, W)
    np.savez_compressed(d["evaluate_world_model"] / "rollouts.npz", cameras=np.array(["front"]), real=frames,
                        action=frames[:, 1:], latent=frames[:, 1:], shuffled=frames[:, 1:],
                        episode_ids=np.array(["ep-held-7", "ep-held-9"]), start_frames=np.array([0, 4]))
    (d["label_actions"] / "report.json").write_text(json.dumps({"pseudo_label_r2": 0.5,
                                                                "pseudo_label_r2_per_dim": [0.5, 0.5]}))
    decisions = [{"episode_id": f"s{i}", "accepted": i % 2 == 0, "reason": "" if i % 2 == 0 else "safety: too fast",
                  "evaluators": {"safety": {"score": i / 4, "threshold": 0.5}}, "truth": {"passed": i > 1}}
                 for i in range(4)]
    (d["filter"] / "decisions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in decisions))
    (d["filter"] / "report.json").write_text(json.dumps({"judged": 4, "accepted": 2, "rejected_by": {"safety": 2}}))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    episodes = [shard_episode("ep-real-0", seed=0), shard_episode("ep-pseudo-1", seed=1)]
    episodes[1].meta["action_source"] = "pseudo_labelled"
    paths = save_episodes(run / "episodes", *episodes)
    write_and_publish(shard_inputs(paths), str(run / "shards" / "shard-00000"),
                      WriteLerobotParams(repo_id=REPO_ID).writer_settings())
    _qa_set(run / "qa")
    _stage_files(run)
    manifest = {"run_dir": str(run), "seed": 0, "counts": {"written": 2, "filtered": 2, "total": 4},
                "stages": [{"stage": s, "dir": f"stages/{i:02d}_{s}", "seconds": 1.0 + i, "resumed": False,
                            "counts": {"ok": 4}} for i, s in enumerate(STAGES)],
                "episodes": [{"episode_id": "s1", "fate": "filtered", "stage": "filter",
                              "reason": "rejected: safety: speed 0.61 m/s > 0.5 at step 3"},
                             {"episode_id": "s3", "fate": "filtered", "stage": "filter",
                              "reason": "rejected: safety: speed 0.72 m/s > 0.5 at step 1"},
                             {"episode_id": "bad", "fate": "quarantined", "stage": "depth",
                              "reason": "x/bad.episode: depth_m.front: shape (3, 4) != (3, 5)"}]}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def _section(page: str, anchor: str) -> str:
    start = page.index(f'<h2 id="{anchor}">')
    end = page.find("<h2 ", start + 1)
    return page[start:end if end > 0 else len(page)]


def test_report_has_the_runs_sections_with_embedded_images(run_dir):
    from pipeline import cli

    assert cli.main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()

    assert len(page.encode()) < 3_000_000
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page) and "<script" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 9
    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    for anchor in ("overview", "stages", "training", "evaluation", "pseudo-labels", "filter", "qa", "provenance"):
        assert "Not in this run" not in _section(page, anchor), anchor
        assert "could not be built" not in _section(page, anchor), anchor
    stages = _section(page, "stages")
    assert "rejected: safety" in stages and ">2<" in stages  # both filtered episodes under one reason
    assert "quarantined" in stages and "depth_m.front" in stages
    assert "ep-held-7" not in page  # the panel's labels are drawn into the image, not the text
    assert "image" in _section(page, "evaluation") and "0.75" in _section(page, "evaluation")
    assert "pseudo_labelled" in _section(page, "provenance") and "shard-00000" in _section(page, "provenance")
    for anchor in ("depth", "evaluators"):  # the run has no depth metrics, no evaluator read-out
        assert "Not in this run." in _section(page, anchor)


def test_rollout_panel_is_labelled_and_qa_sample_has_its_box(run_dir):
    saved = dict(np.load(run_dir / "stages" / "03_evaluate_world_model" / "rollouts.npz"))
    panel = Image.open(io.BytesIO(report.plots.rollout_panel(saved)))
    assert panel.width > 3 * 32 and panel.height > 8 * 32  # 2 windows x 4 rows, 3 steps, labels on the left
    record = {"intrinsics": {"fx": 40.0, "fy": 40.0, "cx": 16.0, "cy": 16.0},
              "viewer_frame": {"cam_to_frame": np.eye(4).tolist()},
              "objects": [{"object_id": 3, "name": "cube", "obb_m": {"centre": [0, 0, 0.5], "extent": [0.1] * 3,
                                                                     "R": np.eye(3).tolist()}}]}
    png = report.plots.qa_sample(_png(np.full((32, 32, 3), 90, np.uint8)), record,
                                 {"question": "Q?", "answer": "A.", "object_ids": [3]})
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert (picture[:320, :, 0] > 200).sum() > 100  # the red box drawn over the grey frame


def test_report_of_an_empty_run_notes_every_missing_section(tmp_path):
    (tmp_path / "stages" / "00_generate_tabletop").mkdir(parents=True)
    page = Path(report.write_report(str(tmp_path))).read_text()
    assert page.count("Not in this run.") == len(report.SECTIONS)


@pytest.mark.slow
def test_headless_chromium_renders_the_report_quickly(run_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/bootstrap.sh installs it with WMSYNTH_SLOW_TESTS=1)")
    page = Path(report.write_report(str(run_dir)))
    shot = tmp_path / "report.png"
    start = time.perf_counter()
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,3000", f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=60)
    seconds = time.perf_counter() - start
    assert seconds < 5, seconds
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (3000, 1280)
    assert (pixels < 128).mean() > 0.01 and len(np.unique(pixels)) > 50  # text, tables and plots, not a blank page


def test_a_run_writes_its_report_and_a_failure_only_warns(run_dir, monkeypatch, caplog):
    from pipeline.run import write_run_report

    assert write_run_report(str(run_dir)) == str(run_dir / "report.html")

    def broken(run_dir):
        raise OSError("disk full")

    monkeypatch.setattr(report, "write_report", broken)
    with caplog.at_level("WARNING", logger="pipeline.run"):
        assert write_run_report(str(run_dir)) is None
    assert "run report could not be written (OSError: disk full)" in caplog.text and "wmsynth report" in caplog.text
