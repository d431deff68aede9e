"""Latent actions + world model benchmark (issue 3); the last line printed is one JSON object.

    .venv/bin/python benchmarks/latent_world_model.py            # full: about 1 CPU-hour on a 2-core machine
    .venv/bin/python benchmarks/latent_world_model.py --quick    # smoke run: tiny data, a few steps (numbers meaningless)

Data (generated once, cached under ``--cache-dir``, default ``$TMPDIR/wmsynth-bench-lwm/<hash of the data spec>``):
64x64 tabletop episodes from the embedded simulator with cameras oblique + top + wrist, a mix of random-exploration
episodes (``pipeline.sim.explore.explore_episode``: diverse actions on every axis) and scripted task episodes
(pick_place, push, stack, reach). Held-out episodes come from separate seeds and are never trained on.

Models (``world_model.train.train``, the loop the ``train_world_model`` stage runs inside Ray Train; here in-process so
that its CPU time is measured exactly), all with the same architecture and step budget:
    aligned_10pct    alignment on, 10% of the training episodes labelled         -> probe, rollouts, sensitivity
    aligned_2p5pct   alignment on, 2.5% labelled
    aligned_100pct   alignment on, every episode labelled
    alignment_off    the ablation: z learned from reconstruction only (H and A read it through a stop-gradient)
    fsq_10pct        the quantised (FSQ) bottleneck at 10% labelled                -> codebook usage, probe
    diffusion_10pct  the diffusion backend (diffusers UNet2DModel + DDIM, 4 sampling steps) at 10% labelled

Metrics (``world_model.evaluate``) on the held-out episodes: linear-probe R2 / MSE from frozen z to the commanded action
(5 dims: dx, dy, dz, dyaw, gripper; per-dim R2 averaged over dims that vary; 4-fold cross-validated by episode) and to
the actual end-effector motion; the head's R2; open-loop rollouts from the true actions (through A) for 1 and 8 steps,
PSNR/SSIM full frame and motion-masked against copying the last real frame; true minus shuffled actions; FSQ codebook
usage; rollout frames per CPU-second on one thread (``time.process_time``, not wall time: the machine may be shared).
Files: ``<out>/latent_world_model.json``, ``<out>/<run>/rollouts.png|gif``, ``<out>/<run>/checkpoints``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("benchmarks.latent_world_model")

TARGETS = {"probe_r2_10pct": 0.90, "probe_mse_ratio_off_vs_on": 4.0, "psnr_gain_1step_db": 6.0,
           "psnr_gain_8step_db": 3.0, "action_sensitivity_db": 3.0, "rollout_fps_per_core_deterministic": 200.0,
           "rollout_fps_per_core_diffusion": 50.0}


@dataclass(frozen=True)
class DataSpec:
    image_size: int = 64
    cameras: tuple[str, ...] = ("oblique", "top", "wrist")
    explore_train: int = 200
    scripted_train: int = 50
    explore_test: int = 30
    scripted_test: int = 10
    explore_frames: int = 48
    scripted_max_steps: int = 60
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def _make_one(job: tuple[str, int, str, DataSpec]) -> tuple[str, float]:
    """Generate and save one episode (in a worker process); returns its path and CPU seconds."""
    import numpy as np  # noqa: F401

    from pipeline.sim.generate import generate_episode
    from pipeline.sim.tabletop import TabletopConfig
    from pipeline.sim.explore import explore_episode

    kind, seed, path, spec = job
    start = time.process_time()
    config = TabletopConfig(width=spec.image_size, height=spec.image_size, cameras=spec.cameras, depth=False,
                            segmentation=False, max_steps=spec.scripted_max_steps)
    eid = Path(path).stem
    if kind == "explore":
        episode = explore_episode(seed, config, num_frames=spec.explore_frames, episode_id=eid)
    else:
        episode = generate_episode(seed, None, config, episode_id=eid)
    episode.save(path)
    return path, time.process_time() - start


def make_data(spec: DataSpec, cache_dir: Path, workers: int) -> tuple[list[str], list[str], float]:
    """(train paths, held-out paths, CPU seconds spent generating now). Episodes already in the cache are reused."""
    root = cache_dir / spec.key()
    root.mkdir(parents=True, exist_ok=True)
    (root / "spec.json").write_text(json.dumps(asdict(spec), indent=1))
    base = 1_000_000 * (spec.seed + 1)
    plan = {"train": [("explore", base + i) for i in range(spec.explore_train)]
                     + [("scripted", base + 10_000 + i) for i in range(spec.scripted_train)],
            "test": [("explore", base + 20_000 + i) for i in range(spec.explore_test)]
                    + [("scripted", base + 30_000 + i) for i in range(spec.scripted_test)]}
    paths: dict[str, list[str]] = {"train": [], "test": []}
    jobs = []
    for split, items in plan.items():
        for kind, seed in items:
            path = str(root / f"{split}-{kind}-{seed}.episode")
            paths[split].append(path)
            if not Path(path).exists():
                jobs.append((kind, seed, path, spec))
    cpu = 0.0
    if jobs:
        logger.info("generating %d episodes into %s with %d processes", len(jobs), root, workers)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for i, (_, seconds) in enumerate(pool.map(_make_one, jobs, chunksize=2)):
                cpu += seconds
                if (i + 1) % 20 == 0:
                    logger.info("  %d / %d episodes", i + 1, len(jobs))
    return paths["train"], paths["test"], cpu


@dataclass(frozen=True)
class Run:
    name: str
    labelled_fraction: float = 0.10
    alignment: bool = True
    backend: str = "deterministic"
    bottleneck: str = "continuous"


RUNS = (Run("aligned_10pct"), Run("aligned_2p5pct", labelled_fraction=0.025),
        Run("aligned_100pct", labelled_fraction=1.0), Run("alignment_off", alignment=False),
        Run("fsq_10pct", bottleneck="fsq"), Run("diffusion_10pct", backend="diffusion"))


def model_config(run: Run, spec: DataSpec, quick: bool):
    from latent_actions.model import LatentActionConfig
    from world_model.model import WorldModelConfig

    latent = LatentActionConfig(latent_dim=16, bottleneck=run.bottleneck)
    return WorldModelConfig(cameras=spec.cameras, image_size=spec.image_size, backend=run.backend, latent=latent,
                            alignment=run.alignment)


def run_one(run: Run, spec: DataSpec, train_paths: list[str], test_data, out: Path, args) -> dict:
    import torch

    from world_model.data import PairData, choose_labelled
    from world_model.evaluate import evaluate
    from world_model.train import TrainConfig, model_config_for, train

    torch.set_num_threads(args.threads)
    run_dir = out / run.name
    steps = args.steps if run.backend == "deterministic" else args.diffusion_steps
    done = run_dir / "eval.json"
    if args.resume and done.is_file():  # this run was trained to the end and evaluated: reuse its report
        report = json.loads(done.read_text())
        if report.get("train", {}).get("steps") == steps:
            logger.info("%s: reusing the finished run's report %s", run.name, done)
            return report
    data = PairData.from_episodes(train_paths, spec.cameras, spec.image_size)
    labelled = choose_labelled(data.episode_ids, [a is not None for a in data.actions], data.sources,
                               run.labelled_fraction, seed=spec.seed)
    data.labelled = labelled
    config = model_config_for(model_config(run, spec, args.quick), data)
    tc = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=min(100, steps // 10 + 1),
                     labelled_batch_fraction=0.25, checkpoint_every=max(1, steps // 4), log_every=max(1, steps // 20),
                     seed=spec.seed, num_threads=args.threads)
    logger.info("%s: %d training episodes (%d labelled), %d pairs, %d steps", run.name, data.num_episodes,
                len(labelled), len(data), steps)
    result = train(config, tc, data, run_dir, resume=args.resume)
    test_data.embodiment_names = config.embodiments
    report = evaluate(result.world_model, test_data, horizon=8, max_windows=args.max_windows, seed=spec.seed,
                      out_dir=run_dir)
    report["train"] = {"steps": result.step, "cpu_s": round(result.cpu_s, 1), "labelled_episodes": len(labelled),
                       "train_episodes": data.num_episodes, "train_pairs": len(data), "threads": args.threads,
                       "final_losses": result.history[-1] if result.history else {},
                       "checkpoint": str(result.checkpoint)}
    (run_dir / "eval.json").write_text(json.dumps(report, indent=1))
    logger.info("%s: probe R2 %s, 1-step gain %s dB, sensitivity %s dB, train %.0f CPU-s", run.name,
                report["latent"].get("probe_action", {}).get("r2"),
                report["rollout"].get("summary", {}).get("psnr_gain_1step_db"),
                report["rollout"].get("summary", {}).get("action_sensitivity_db"), result.cpu_s)
    return report


def headline(reports: dict[str, dict]) -> dict:
    def probe(name: str, key: str = "r2"):
        return reports[name]["latent"]["probe_action"][key] if name in reports else None

    if "aligned_10pct" not in reports:  # a partial benchmark (--runs): per-run figures only
        return {name: {"probe_r2": r["latent"]["probe_action"]["r2"], **r["rollout"].get("summary", {}),
                       "rollout_fps_per_core": r.get("speed", {}).get("rollout_fps_per_core")}
                for name, r in reports.items()}
    main = reports["aligned_10pct"]
    summary = main["rollout"]["summary"]
    out = {
        "probe_r2_10pct": probe("aligned_10pct"),
        "probe_r2_2p5pct": probe("aligned_2p5pct"),
        "probe_r2_100pct": probe("aligned_100pct"),
        "probe_r2_alignment_off": probe("alignment_off"),
        "probe_mse_10pct": probe("aligned_10pct", "mse"),
        "probe_mse_alignment_off": probe("alignment_off", "mse"),
        "probe_mse_ratio_off_vs_on": (round(probe("alignment_off", "mse") / probe("aligned_10pct", "mse"), 3)
                                      if "alignment_off" in reports else None),
        "probe_r2_per_dim_10pct": main["latent"]["probe_action"]["r2_per_dim"],
        "probe_ee_motion_r2_10pct": main["latent"].get("probe_ee_motion", {}).get("r2"),
        "head_r2_10pct": main["latent"].get("head", {}).get("r2"),
        "psnr_gain_1step_db": summary["psnr_gain_1step_db"],
        "psnr_gain_8step_db": summary["psnr_gain_8step_db"],
        "psnr_gain_1step_full_db": summary["psnr_gain_1step_full_db"],
        "psnr_gain_8step_full_db": summary["psnr_gain_8step_full_db"],
        "ssim_1step_masked": main["rollout"]["per_step"]["action"]["ssim_masked"][0],
        "ssim_1step_masked_copy": main["rollout"]["per_step"]["copy"]["ssim_masked"][0],
        "action_sensitivity_db": summary["action_sensitivity_db"],
        "action_sensitivity_masked_db": summary["action_sensitivity_masked_db"],
        "rollout_fps_per_core_deterministic": main.get("speed", {}).get("rollout_fps_per_core"),
    }
    if "diffusion_10pct" in reports:
        diff = reports["diffusion_10pct"]
        out.update(rollout_fps_per_core_diffusion=diff.get("speed", {}).get("rollout_fps_per_core"),
                   psnr_gain_1step_db_diffusion=diff["rollout"]["summary"]["psnr_gain_1step_db"],
                   psnr_gain_8step_db_diffusion=diff["rollout"]["summary"]["psnr_gain_8step_db"],
                   action_sensitivity_db_diffusion=diff["rollout"]["summary"]["action_sensitivity_db"],
                   probe_r2_10pct_diffusion=diff["latent"]["probe_action"]["r2"])
    if "fsq_10pct" in reports:
        fsq = reports["fsq_10pct"]
        out.update(probe_r2_10pct_fsq=fsq["latent"]["probe_action"]["r2"],
                   codebook_perplexity_fsq=fsq["latent"].get("codebook", {}).get("perplexity"),
                   codebook_used_fsq=fsq["latent"].get("codebook", {}).get("codes_used"),
                   codebook_dead_codes_fsq=fsq["latent"].get("codebook", {}).get("dead_codes"),
                   codebook_size_fsq=fsq["latent"].get("codebook", {}).get("codebook_size"))
    out["train_cpu_s"] = {name: r["train"]["cpu_s"] for name, r in reports.items()}
    out["targets_met"] = {k: (out.get(k) is not None and out[k] >= v) for k, v in TARGETS.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and steps: checks the script runs")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "wmsynth-bench-lwm")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "latent_world_model")
    parser.add_argument("--steps", type=int, default=2000, help="training steps per deterministic model")
    parser.add_argument("--diffusion-steps", type=int, default=2000, help="training steps of the diffusion model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument("--workers", type=int, default=2, help="processes generating episodes")
    parser.add_argument("--max-windows", type=int, default=256, help="rollout windows evaluated per model")
    parser.add_argument("--runs", default=",".join(r.name for r in RUNS), help="comma-separated subset of runs")
    parser.add_argument("--resume", action="store_true",
                        help="continue runs from their checkpoints in --out (finished, evaluated runs are reused)")
    parser.add_argument("--data-only", action="store_true", help="generate (or check) the cached episodes and stop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

    spec = DataSpec()
    if args.quick:
        spec = replace(spec, image_size=32, explore_train=4, scripted_train=2, explore_test=2, scripted_test=1,
                       explore_frames=14, scripted_max_steps=20)
        args.steps, args.diffusion_steps, args.max_windows = 20, 20, 8
        args.out = args.out.with_name(args.out.name + "_quick")
    start_wall = time.perf_counter()
    train_paths, test_paths, gen_cpu = make_data(spec, args.cache_dir, args.workers)
    if args.data_only:
        print(json.dumps({"cache": str(args.cache_dir / spec.key()), "train_episodes": len(train_paths),
                          "test_episodes": len(test_paths), "generation_cpu_s_this_run": round(gen_cpu, 1)}))
        return

    from world_model.data import PairData

    test_data = PairData.from_episodes(test_paths, spec.cameras, spec.image_size)
    wanted = [r for r in RUNS if r.name in args.runs.split(",")]
    if not wanted:
        parser.error(f"--runs: none of {args.runs!r} is a run (runs: {', '.join(r.name for r in RUNS)})")
    reports = {}
    for run in wanted:
        reports[run.name] = run_one(run, spec, train_paths, test_data, args.out, args)
    result = headline(reports)
    result.update(data={**asdict(spec), "train_episodes": len(train_paths), "test_episodes": len(test_paths),
                        "generation_cpu_s_this_run": round(gen_cpu, 1)},
                  wall_s=round(time.perf_counter() - start_wall, 1), quick=args.quick,
                  command="benchmarks/latent_world_model.py" + (" --quick" if args.quick else ""))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latent_world_model.json").write_text(json.dumps({"headline": result, "runs": reports}, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
