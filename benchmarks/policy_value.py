"""Policy value benchmark (issue 10): does wmsynth data make a lerobot policy succeed more often in closed loop?

    .venv/bin/python benchmarks/policy_value.py --resume     # full; resumable by phase, datasets and checkpoints cached
    .venv/bin/python benchmarks/policy_value.py --quick      # smoke run: every code path, numbers meaningless

Cost (measured 2026-12-01 on 2 cores shared with another training, so CPU-seconds ~2x a quiet machine's): ACT below
0.50 CPU-s per lerobot-train step with data loading (0.40 for forward + backward alone; ENVIRONMENT.md's 0.21 was a
quiet machine), ~20 CPU-s to start a training; evaluation 26 closed-loop steps per CPU-second. Full defaults, quiet
machine: 15 trainings x 2000 steps ~6,800 CPU-s + 15 evaluations ~1,100 + the two runs ~1,700: ~2.7 CPU-hours, ~1.4 h
wall (2 at a time); arms with the same episodes (no rollout accepted) train once. On a busy machine use --steps 1500.

``--resume`` skips finished phase files (refused when ``--out`` was made with other settings); without it the
phases run again, but cached datasets, checkpoints and evaluations are found by their spec and reused.

Everything goes through the shipped code paths: the data through ``wmsynth run`` (subprocess, a stages config written
here), training through lerobot's own ``lerobot-train`` CLI, evaluation through ``pipeline.policy_eval``'s
``evaluate_policy`` in the embedded simulator. Phases (each an atomic JSON under ``--out``, skipped by ``--resume``;
datasets and checkpoints cached under ``--cache-dir`` by a hash of their spec, so a finished one is never redone):

    pipeline     generate_tabletop (``--real`` + ``--actionless`` successful scripted demos, the action-less ones drawn
                 by the stage's own ``hide_actions_fraction``, set here so the counts come out exactly) ->
                 train_world_model -> label_actions -> train_evaluators -> rollout -> filter (``keep_rejected``: every
                 rollout judged and kept, so one run gives filtered and unfiltered data) -> write_lerobot (merge)
    oracle_data  the same generate_tabletop with no hidden actions: the same seeds, so the same episodes with their true
                 actions (checked: episode ids and lengths equal the main run's real + pseudo-labelled ones)
    arms         episode lists of the merged datasets (provenance ``episodes_by_source`` and ``evaluation.accepted``)
    train/<arm>/<seed>, eval/<arm>/<seed>     lerobot-train, then evaluate_policy on unseen scene seeds
    result       pooled success per arm (Wilson 95% CI), gains, gap closed, costs, targets; the last line printed

Choices (why):
- Task families reach + push: the two a small ACT can learn from a few dozen demos at 64 px (reach: 13-21 frames, push:
  30-50; pick_place and stack need grasping, which a from-scratch policy on ~30 demos does not learn in this budget).
- Cameras: ``front`` + ``top`` recorded and seen by the world model (two views label the actions better than one: the
  synthesis benchmark's pseudo-label R2 comes from these two), ``front`` alone for the policy (``POLICY_CAMERAS``;
  the policy's input features name it): a second camera almost doubles ACT's cost per step (its ResNet runs per
  camera) and would not fit 15 trainings in 3 CPU-hours. Depth off (ACT's ResNet takes RGB only, and real and
  synthetic episodes must share one schema, i.e. one merged dataset).
- Policy: ACT (lerobot's), shrunk for CPU (``POLICY``; ENVIRONMENT.md: ~0.2 CPU-s per step at batch 8), backbone from
  scratch (nothing can be downloaded), learning rate 1e-4 instead of ACT's 1e-5 (that default assumes a pretrained
  backbone and 100k steps; ours trains a few thousand from scratch). Every arm gets the same config and step budget.
- The world model trains on every episode with actions (``labelled_fraction: 1``) at batch 16 (as the synthesis
  benchmark's, half the CPU per step of the default 32). Rollouts start
  from real and pseudo-labelled episodes (the rollout stage's default), so ``real+synthetic`` also sees the
  action-less episodes' scenes, through the world model. The filter and ``rollout_context`` are read from the shipped
  stages.yaml (``shipped_params``); ``--quick`` filters with safety alone so that some rollouts are trained on.
- ``real+synthetic_unfiltered`` draws as many synthetic episodes as the filter accepted, uniformly (seeded) from all
  rollouts, so it differs from ``real+synthetic`` only in which rollouts, not how many.
- Arms that select the same episodes (e.g. no rollout accepted) share one cached checkpoint and evaluation.
- lerobot normalises with the whole dataset's ``meta/stats.json`` whichever episodes are selected, so every arm of
  the main dataset uses the same statistics (real + pseudo-labelled + synthetic); the oracle uses its own dataset's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _policy_value_jobs import Job, eta_text, evaluate, run_jobs  # noqa: E402
from synthesis import phase, shipped_params, write_json  # noqa: E402

from pipeline.merge import policy_input_features_arg  # noqa: E402

logger = logging.getLogger("benchmarks.policy_value")

VENV_BIN = Path(sys.executable).parent
ARMS = ("real", "real_pseudo", "real_synthetic", "real_synthetic_unfiltered", "oracle")
TARGETS = {"gain_pseudo_points": 15.0, "gap_closed_pseudo": 0.5, "gain_synthetic_points": 5.0,
           "filtered_minus_unfiltered_points": 5.0, "cpu_hours": 3.0}
FAMILIES = ["reach", "push"]
CAMERAS = ["front", "top"]  # recorded, and what the world model sees (two views label actions better than one)
POLICY_CAMERAS = ["front"]  # what the policy sees: one ResNet pass per step keeps the trainings inside the budget
ACTION_NAMES = ["dx", "dy", "dz", "dyaw", "gripper"]
FILTER = {k: v for k, v in shipped_params("filter").items() if k in ("evaluators", "mode", "weights", "threshold")}
QUICK_FILTER = {"evaluators": {"safety": {}}, "mode": "all"}  # --quick: lenient, so synthetic episodes get trained on
POLICY = {"type": "act", "dim_model": 128, "dim_feedforward": 512, "n_encoder_layers": 2, "n_decoder_layers": 1,
          "n_vae_encoder_layers": 2, "n_heads": 4, "latent_dim": 16, "chunk_size": 10, "n_action_steps": 10,
          "optimizer_lr": 1e-4, "optimizer_lr_backbone": 1e-4}
QUICK_POLICY = {**POLICY, "dim_model": 32, "dim_feedforward": 64, "n_heads": 2, "n_encoder_layers": 1,
                "n_vae_encoder_layers": 1, "latent_dim": 8, "chunk_size": 4, "n_action_steps": 4}
EVAL_SEED = 1000  # scene seeds 1000.. (training episodes' seeds are 32-bit hashes of the run seed and index)


def spec_hash(spec: Any) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


# -- data: the wmsynth chain through its CLI ---------------------------------------------------------------------------


def hide_fraction(run_seed: int, real: int, actionless: int) -> float:
    """The ``hide_actions_fraction`` that makes exactly ``actionless`` of the first ``real + actionless`` episodes
    action-less, found by bisection on the stage's own per-episode draw (``hides_actions``)."""
    from pipeline.stages.generate_tabletop import episode_seed, hides_actions

    seeds = [episode_seed(run_seed, i) for i in range(real + actionless)]
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        hidden = sum(hides_actions(s, mid) for s in seeds)
        if hidden == actionless:
            return mid
        lo, hi = (mid, hi) if hidden < actionless else (lo, mid)
    raise ValueError(f"no hide_actions_fraction gives {actionless} action-less of {real + actionless} episodes")


def generate_params(args, hide: float) -> dict:
    return {"num_episodes": args.real + args.actionless, "image_size": args.image_size, "fps": 10, "tasks": FAMILIES,
            "cameras": CAMERAS, "depth": False, "segmentation": False, "keep_failures": False,
            "hide_actions_fraction": hide}


def main_config(args) -> dict:
    """The chain the benchmark needs (no depth, QA or world-model evaluation stages: nothing here reads them)."""
    steps = args.wm_steps
    return {"seed": args.data_seed, "ray_address": "", "stages": [
        {"name": "generate_tabletop",
         "params": generate_params(args, hide_fraction(args.data_seed, args.real, args.actionless))},
        {"name": "train_world_model", "params": {
            **{k: v for k, v in shipped_params("train_world_model").items() if k in ("rollout_context",
                                                                                    "rollout_fraction")},
            "cameras": CAMERAS, "depth": False, "image_size": args.image_size, "labelled_fraction": 1.0,
            "holdout_fraction": 0.15, "steps": steps, "batch_size": 16, "checkpoint_every": max(1, steps // 4),
            "num_workers": 1,
            "cpus_per_worker": 1, "num_threads": 2}},
        {"name": "label_actions", "params": {"action_names": ACTION_NAMES}},
        {"name": "train_evaluators", "params": {"steps": args.readout_steps}},
        {"name": "rollout", "params": {"rollouts_per_episode": args.rollouts, "horizon": args.horizon,
                                       "proposals": {"demo_perturbed": 0.5, "scripted": 0.25, "uniform": 0.25}}},
        {"name": "filter", "params": {**args.filter, "keep_rejected": True}},
        {"name": "write_lerobot", "params": {"repo_id": "wmsynth/policy-value", "episodes_per_shard": 16,
                                             "merge": True}},
    ]}


def oracle_config(args) -> dict:
    return {"seed": args.data_seed, "ray_address": "", "stages": [
        {"name": "generate_tabletop", "params": generate_params(args, 0.0)},
        {"name": "write_lerobot", "params": {"repo_id": "wmsynth/policy-value-oracle", "episodes_per_shard": 16,
                                             "merge": True}},
    ]}


def run_pipeline(args, name: str, config: dict) -> dict:
    """``wmsynth run`` of ``config`` in a run directory named by its hash (``--resume``: a killed run continues);
    a finished run is reused. Returns its merged dataset, stage reports and cost."""
    runs = args.cache_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    key = f"{name}-{spec_hash(config)}"
    run_dir, cost_file = runs / key, runs / f"{key}.cost.json"
    costs, ran = json.loads(cost_file.read_text()) if cost_file.is_file() else [], not _finished(run_dir)
    if ran:
        cfg = runs / f"{key}.yaml"
        cfg.write_text(yaml.safe_dump({"output_dir": str(run_dir), **config}, sort_keys=False))
        logger.info("%s: wmsynth run %s (log %s)", name, cfg, runs / f"{key}.log")
        [result] = run_jobs([Job(f"pipeline {name}", [str(VENV_BIN / "wmsynth"), "run", str(cfg), "--output",
                                                      str(run_dir), "--resume"], runs / f"{key}.log")], 1,
                            report_s=float("inf"))
        costs.append(result)
        write_json(cost_file, costs)
        if not _finished(run_dir):
            raise RuntimeError(f"{name}: wmsynth run ended without a merged dataset in {run_dir}; see {result['log']}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    datasets = json.loads((run_dir / "merged" / "merge_report.json").read_text())["datasets"]
    if len(datasets) != 1:  # real, pseudo-labelled and synthetic episodes must share one schema
        schemas = [d["schema"] for d in datasets]
        raise RuntimeError(f"{name}: the merge made {len(datasets)} datasets (schemas {schemas})"
                           "; every episode must share one schema to train one policy on them")
    return {"run_dir": str(run_dir), "config": config, "dataset": datasets[0],
            "reports": {s["stage"]: s.get("report") for s in manifest["stages"]},
            "stage_seconds": {s["stage"]: s["seconds"] for s in manifest["stages"]},
            "cpu_s": round(sum(c["cpu_s"] for c in costs), 1), "wall_s": round(sum(c["wall_s"] for c in costs), 1),
            "reused": not ran}


def _finished(run_dir: Path) -> bool:
    manifest = run_dir / "manifest.json"
    if not manifest.is_file() or not (run_dir / "merged" / "merge_report.json").is_file():
        return False
    m = json.loads(manifest.read_text())
    return bool(m.get("finished_at")) and not m.get("partial")


def provenance(dataset: dict) -> dict:
    return json.loads((Path(dataset["root"]) / "meta" / "wmsynth_provenance.json").read_text())


def oracle_data(args, main: dict) -> dict:
    oracle = run_pipeline(args, "oracle", oracle_config(args))
    ours = provenance(main["dataset"])
    kinds = ("real", "pseudo_labelled")
    ident = lambda e: (e["episode_id"], int(e["num_frames"]), e["seed"])  # noqa: E731
    mine = sorted(ident(e) for e in ours["episodes"] if e["provenance"] in kinds)
    theirs = sorted(ident(e) for e in provenance(oracle["dataset"])["episodes"])
    if mine != theirs:
        diff = sorted(set(mine) ^ set(theirs))[:5]
        raise RuntimeError(f"oracle episodes differ from the main run's real + pseudo-labelled ones (e.g. {diff}): "
                           "the simulator is expected to repeat an episode from its seed")
    return {**oracle, "episodes_match_main": len(mine)}


def make_arms(args, main: dict, oracle: dict) -> dict:
    """Episode indices per arm (main dataset, or the oracle's), with counts and the replay truth of the rollouts."""
    prov = provenance(main["dataset"])
    by_source, entries = prov["episodes_by_source"], {e["episode_index"]: e for e in prov["episodes"]}
    evaluation = {i: entries[i].get("evaluation") or {} for i in by_source["synthetic"]}
    accepted = [i for i in by_source["synthetic"] if evaluation[i].get("accepted")]
    rng = np.random.default_rng(args.data_seed)
    unfiltered = sorted(int(i) for i in rng.choice(by_source["synthetic"], size=len(accepted), replace=False))
    real, oracle_entries = by_source["real"], provenance(oracle["dataset"])["episodes"]
    frames = {"main": {i: int(e["num_frames"]) for i, e in entries.items()},
              "oracle": {e["episode_index"]: int(e["num_frames"]) for e in oracle_entries}}
    episodes = {"real": real, "real_pseudo": real + by_source["pseudo_labelled"],
                "real_synthetic": real + accepted, "real_synthetic_unfiltered": real + unfiltered,
                "oracle": sorted(frames["oracle"])}

    def replayed(ids):  # share of the rollouts whose actions, replayed in the simulator, reach their subgoal
        truth = [evaluation[i]["truth"]["passed"] for i in ids if "truth" in evaluation[i]]
        return round(float(np.mean(truth)), 4) if truth else None

    return {"episodes": episodes, "counts": {a: len(e) for a, e in episodes.items()},
            "frames": {a: sum(frames["oracle" if a == "oracle" else "main"][i] for i in e)
                       for a, e in episodes.items()},
            "synthetic_total": len(by_source["synthetic"]), "synthetic_accepted": len(accepted),
            "replay_success": {"accepted": replayed(accepted), "unfiltered_sample": replayed(unfiltered),
                               "all_synthetic": replayed(by_source["synthetic"])}}


# -- policies: lerobot-train, then closed-loop evaluation --------------------------------------------------------------


def train_spec(args, arm_episodes: list[int], dataset: dict, seed: int) -> dict:
    return {"dataset": dataset["root"], "repo_id": dataset["repo_id"], "episodes": arm_episodes,
            "policy": args.policy, "steps": args.steps, "batch_size": args.batch_size, "seed": seed}


def train_command(spec: dict, dataset: dict, out_dir: Path, log_freq: int) -> list[str]:
    policy = [f"--policy.{k}={v}" for k, v in spec["policy"].items()]
    schema = dataset["schema"]
    inputs = policy_input_features_arg({**schema, "cameras": [c for c in schema["cameras"] if c[0] in POLICY_CAMERAS]})
    data_args = [a if not a.startswith("--policy.input_features=") else inputs for a in dataset["lerobot_train_args"]]
    return [str(VENV_BIN / "lerobot-train"), *data_args, *policy, "--policy.device=cpu",
            "--policy.push_to_hub=false", "--policy.pretrained_backbone_weights=null",
            f"--dataset.episodes={json.dumps(spec['episodes'])}", f"--steps={spec['steps']}",
            f"--batch_size={spec['batch_size']}", f"--seed={spec['seed']}", "--num_workers=0",
            f"--save_freq={spec['steps']}", f"--log_freq={log_freq}", "--wandb.enable=false", f"--output_dir={out_dir}"]


def train_all(args, arms: dict, data: dict[str, dict]) -> dict[tuple[str, int], dict]:
    """Every (arm, seed) trained (cached by spec: same episodes, same checkpoint), ``--jobs`` at a time."""
    cells, jobs, dirs = {}, {}, args.cache_dir / "train"
    for arm in ARMS:
        for seed in args.seed_list:
            dataset = data["oracle" if arm == "oracle" else "main"]["dataset"]
            spec = train_spec(args, arms["episodes"][arm], dataset, seed)
            key = spec_hash(spec)
            cells[arm, seed] = {"arm": arm, "seed": seed, "key": key, "dir": str(dirs / key),
                                "checkpoint": str(dirs / key / "checkpoints" / "last" / "pretrained_model"),
                                "dataset": dataset["root"], "episodes": len(spec["episodes"])}
            if not (dirs / key / "done.json").is_file() and key not in jobs:
                shutil.rmtree(dirs / key, ignore_errors=True)  # a killed training restarts (one save, at the end)
                (dirs / f"{key}.spec.json").parent.mkdir(parents=True, exist_ok=True)
                write_json(dirs / f"{key}.spec.json", spec)
                log_freq = max(1, args.steps // 20)
                jobs[key] = Job(f"train {arm}/seed{seed}", train_command(spec, dataset, dirs / key, log_freq),
                                dirs / f"{key}.log", steps=args.steps, log_freq=log_freq,
                                on_done=lambda job, res, key=key: write_json(dirs / key / "done.json", res))
    if jobs:
        logger.info("training %d policies, %d at a time (%d steps each)", len(jobs), args.jobs, args.steps)
        run_jobs(list(jobs.values()), args.jobs, report_s=args.report_s)
    for (arm, seed), cell in cells.items():  # a record per cell (the cache, not --resume, skips finished ones)
        cost = json.loads((Path(cell["dir"]) / "done.json").read_text())
        cell.update(cost={k: cost[k] for k in ("cpu_s", "wall_s")}, reused=cell["key"] not in jobs)
        (args.out / "train" / arm).mkdir(parents=True, exist_ok=True)
        phase(args.out, f"train/{arm}/{seed}", False, lambda cell=cell: cell)
    return cells


def eval_all(args, cells: dict[tuple[str, int], dict]) -> dict[tuple[str, int], dict]:
    """evaluate_policy of every checkpoint (cached next to it by the eval spec), ``--jobs`` processes at a time."""
    results, todo = {}, {}
    for (arm, seed), cell in cells.items():
        request = {"checkpoint": cell["checkpoint"], "task": ",".join(FAMILIES), "episodes": args.eval_episodes,
                   "seed": EVAL_SEED, "dataset": cell["dataset"], "num_gifs": args.gifs}
        cache = Path(cell["dir"]) / f"eval-{spec_hash(request)}.json"
        request["out_dir"] = str(cache.with_suffix(""))
        if cache.is_file():
            results[arm, seed] = json.loads(cache.read_text())
        else:
            todo.setdefault(str(cache), (request, []))[1].append((arm, seed))
    if todo:
        logger.info("evaluating %d checkpoints x %d episodes, %d at a time", len(todo), args.eval_episodes, args.jobs)
        started, done = time.perf_counter(), 0
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(evaluate, request): (cache, who) for cache, (request, who) in todo.items()}
            for future in as_completed(futures):
                cache, who = futures[future]
                report = future.result()
                write_json(Path(cache), report)
                for key in who:
                    results[key] = report
                done += 1
                eta = (time.perf_counter() - started) / done * (len(todo) - done)
                logger.info("eval %s: success %d/%d (%.0f s); %d/%d evaluations done, ETA %s", who[0],
                            report["successes"], report["num_episodes"], report["wall_s"], done, len(todo),
                            eta_text(eta))
    for (arm, seed), report in results.items():
        if report["seen_seeds"]:
            raise RuntimeError(f"eval {arm}/{seed}: {report['seen_seeds']} evaluation scene seeds made training "
                               "episodes; the evaluation must be on unseen scenes")
        (args.out / "eval" / arm).mkdir(parents=True, exist_ok=True)
        phase(args.out, f"eval/{arm}/{seed}", False, lambda report=report: dict(report))
    return results


# -- the result --------------------------------------------------------------------------------------------------------


def summarize(args, data: dict, arms: dict, cells: dict, evals: dict) -> dict:
    from pipeline.policy_eval import wilson_interval

    out: dict[str, Any] = {}
    rate = {}
    for arm in ARMS:
        reports = [evals[arm, seed] for seed in args.seed_list]
        successes, trials = sum(r["successes"] for r in reports), sum(r["num_episodes"] for r in reports)
        rate[arm] = successes / trials
        out[f"success_{arm}"] = round(rate[arm], 4)
        out[f"success_{arm}_ci95"] = [round(v, 4) for v in wilson_interval(successes, trials)]
        out[f"success_{arm}_per_seed"] = [round(r["success_rate"], 4) for r in reports]
        out[f"success_{arm}_per_family"] = {f: round(float(np.mean([r["per_family"][f]["success_rate"]
                                                                    for r in reports])), 4) for f in FAMILIES}
    points = lambda a, b: round(100 * (rate[a] - rate[b]), 2)  # noqa: E731
    gap = rate["oracle"] - rate["real"]
    out.update(gain_pseudo_points=points("real_pseudo", "real"), gain_synthetic_points=points("real_synthetic", "real"),
               filtered_minus_unfiltered_points=points("real_synthetic", "real_synthetic_unfiltered"),
               oracle_minus_real_points=points("oracle", "real"),
               gap_closed_pseudo=round((rate["real_pseudo"] - rate["real"]) / gap, 4) if gap > 0 else None,
               gap_closed_synthetic=round((rate["real_synthetic"] - rate["real"]) / gap, 4) if gap > 0 else None)
    steps, cpu = sum(r["steps"] for r in evals.values()), sum(r["cpu_s"] for r in evals.values())
    out["eval_fps_per_core"] = round(steps / cpu, 2) if cpu else None
    reports = data["main"]["reports"]
    labels, filt = reports.get("label_actions") or {}, reports.get("filter") or {}
    out.update(pseudo_label_r2=labels.get("pseudo_label_r2"),
               pseudo_label_r2_per_dim=labels.get("pseudo_label_r2_per_dim"),
               filter_precision_vs_replay=filt.get("precision_vs_replay"),
               filter_recall_vs_replay=filt.get("recall_vs_replay"),
               filter_accepted=filt.get("accepted"), filter_judged=filt.get("judged"),
               synthetic_replay_success=arms["replay_success"], episodes_per_arm=arms["counts"],
               frames_per_arm=arms["frames"])
    train_cpu = sum({c["key"]: c["cost"]["cpu_s"] for c in cells.values()}.values())  # shared checkpoints once
    eval_cpu = sum({r["checkpoint"]: r["process_cpu_s"] for r in evals.values()}.values())
    cpu_s = {"pipeline": data["main"]["cpu_s"], "oracle_data": data["oracle"]["cpu_s"], "train": round(train_cpu, 1),
             "eval": round(eval_cpu, 1)}
    out["cpu_seconds_per_phase"] = cpu_s
    out["cpu_hours_total"] = round(sum(cpu_s.values()) / 3600, 3)
    out["policy"] = {**args.policy, "steps": args.steps, "batch_size": args.batch_size, "cameras": POLICY_CAMERAS,
                     "image_size": args.image_size, "pretrained_backbone_weights": None}
    out["setup"] = {"families": FAMILIES, "seeds": args.seed_list, "eval_episodes": args.eval_episodes,
                    "eval_scene_seeds": [EVAL_SEED, EVAL_SEED + args.eval_episodes - 1], "wm_steps": args.wm_steps,
                    "filter": args.filter, "rollouts_per_episode": args.rollouts, "horizon": args.horizon,
                    "quick": args.quick, "main_run": data["main"]["run_dir"], "oracle_run": data["oracle"]["run_dir"]}
    out["targets"] = TARGETS
    met = {k: (out[k] >= t) if out.get(k) is not None else False for k, t in TARGETS.items() if k != "cpu_hours"}
    met["cpu_hours"] = out["cpu_hours_total"] <= TARGETS["cpu_hours"]
    out["targets_met"] = met
    out["notes"] = notes(out)
    return out


def notes(r: dict) -> list[str]:
    """Where the value is lost, for each missed target, with the figures that show it."""
    found = []
    if r["oracle_minus_real_points"] < TARGETS["gain_pseudo_points"]:
        found.append(f"policy/data: even true actions for the {r['episodes_per_arm']['oracle']} episodes gain only "
                     f"{r['oracle_minus_real_points']} points over the {r['episodes_per_arm']['real']} real ones, so "
                     "more episodes do not buy this policy much at this budget")
    if not r["targets_met"]["gain_pseudo_points"]:
        found.append(f"label quality: pseudo-label R2 {r['pseudo_label_r2']} (per dim {r['pseudo_label_r2_per_dim']})")
    if not r["filter_accepted"]:
        found.append(f"filter: it accepted none of {r['filter_judged']} rollouts, so real+synthetic is the real arm")
    elif not r["targets_met"]["filtered_minus_unfiltered_points"]:
        found.append(f"filter: precision {r['filter_precision_vs_replay']} / recall {r['filter_recall_vs_replay']} vs "
                     f"replay; replay success of accepted vs unfiltered rollouts {r['synthetic_replay_success']}")
    if r["targets_met"]["gain_synthetic_points"] is False and r["filter_accepted"]:
        found.append(f"rollout blur: only {r['synthetic_replay_success']['all_synthetic']} of the rollouts' actions "
                     "reach their subgoal when replayed")
    return found


def check_settings(args) -> None:
    """--resume reuses phase files by name: refuse it when they were made with other settings."""
    names = ("real", "actionless", "seeds", "eval_episodes", "steps", "batch_size", "wm_steps", "readout_steps",
             "rollouts", "horizon", "image_size", "data_seed", "gifs", "policy", "filter")
    settings, path = json.loads(json.dumps({k: getattr(args, k) for k in names})), args.out / "settings.json"
    if args.resume and path.is_file() and (old := json.loads(path.read_text())) != settings:
        changed = sorted(k for k in names if old.get(k) != settings[k])
        raise SystemExit(f"--resume: {args.out} was made with other settings ({', '.join(changed)}); drop --resume "
                         "(cached datasets and checkpoints are still reused by their spec) or use another --out")
    write_json(path, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "policy_value")
    parser.add_argument("--cache-dir", type=Path, default=Path("/work/bench-cache/policy_value"))
    parser.add_argument("--resume", action="store_true", help="reuse finished phases")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, numbers meaningless")
    parser.add_argument("--real", type=int, default=24, help="labelled real episodes (N)")
    parser.add_argument("--actionless", type=int, default=48, help="action-less episodes, pseudo-labelled (M)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per arm")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--steps", type=int, default=2000, help="lerobot-train steps per policy")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--wm-steps", type=int, default=1500, help="world-model training steps")
    parser.add_argument("--readout-steps", type=int, default=600)
    parser.add_argument("--rollouts", type=int, default=4, help="rollouts per episode")
    parser.add_argument("--horizon", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=2, help="trainings / evaluations in parallel")
    parser.add_argument("--gifs", type=int, default=2, help="GIFs per evaluation")
    parser.add_argument("--data-seed", type=int, default=0, help="the wmsynth run seed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.policy, args.filter, args.report_s = dict(POLICY), FILTER, 60.0
    if args.quick:
        args.real, args.actionless, args.seeds, args.eval_episodes, args.steps, args.batch_size = 2, 4, 1, 2, 5, 2
        args.wm_steps, args.readout_steps, args.rollouts, args.horizon, args.image_size = 30, 20, 2, 4, 32
        args.policy, args.filter, args.report_s, args.gifs = dict(QUICK_POLICY), QUICK_FILTER, 10.0, 1
        args.out = args.out.with_name(args.out.name + "-quick")
    args.seed_list = list(range(args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    check_settings(args)
    data = {"main": phase(args.out, "pipeline", args.resume, lambda: run_pipeline(args, "main", main_config(args)))}
    data["oracle"] = phase(args.out, "oracle_data", args.resume, lambda: oracle_data(args, data["main"]))
    arms = phase(args.out, "arms", args.resume, lambda: make_arms(args, data["main"], data["oracle"]))
    logger.info("arms: %s episodes; %d of %d rollouts accepted", arms["counts"], arms["synthetic_accepted"],
                arms["synthetic_total"])
    cells = train_all(args, arms, data)
    evals = eval_all(args, cells)
    result = summarize(args, data, arms, cells, evals)
    write_json(args.out / "result.json", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
