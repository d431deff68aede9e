"""train_world_model: learn latent actions and an action-conditioned world model on the run's episodes (aggregate N:1).

Fan-in: every ok episode goes into one training job on Ray Train (``TorchTrainer``, ``num_workers`` workers of
``cpus_per_worker`` CPUs, ``use_gpu``), launched from the driver. Each worker loads its share of the training episodes
(every ``num_workers``-th path in id order, so a resumed run sees the same shards) from the run directory, local or
object storage: rows carry paths, never frames, and only the arrays the model uses are decoded. The rows pass through
unchanged, so later stages (evaluation, shard writers) still see every episode.

Before training, the driver decides, deterministically from the run seed and the episode ids:
    held-out   ``holdout_fraction`` of the episodes, never trained on (``evaluate_world_model`` measures on them)
    labelled   ``labelled_fraction`` of the training episodes that have actions (optionally only from
               ``labelled_sources``); every other training episode is used as video only
and writes them to ``<stage_dir>/split.json``. The model gets one action head / action encoder per embodiment found in
the episodes' metadata (``meta["robot_type"]``), with that robot's action dim, and action statistics from the
labelled episodes only.

Outputs under ``<stage_dir>`` (a local path or a URL; rank 0 writes them through ``episodes.io``):
``checkpoints/step-XXXXXXXX/`` (safetensors + JSON, then a ``_COMPLETE`` marker written last, every
``checkpoint_every`` steps and at the end; the newest ``keep_checkpoints`` are kept), ``losses.jsonl`` (loss curves),
``split.json``, ``train.json`` (summary, also the stage's ``report.json``). Ray Train's own result files (metrics
already in ``losses.jsonl``) go to ``<stage_dir>/ray_results`` for a local run directory and to a temporary local
directory otherwise. When the runner resumes the stage (``ctx.resume``), a killed training continues from the newest
complete checkpoint (same step count, optimizer state and sampler state).

Published for later stages: ``world_model`` (the final checkpoint directory) and ``world_model_split`` (split.json).

    - name: train_world_model
      params: {cameras: [oblique, top, wrist], steps: 3000, labelled_fraction: 0.1, bottleneck: continuous}
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from typing import Any

import numpy as np
from pydantic import Field

from episodes import io as fileio
from latent_actions.config import LatentActionConfig
from pipeline.params import ConfigFields, params_from
from pipeline.stage import CheckContext, Problem, StageContext, StageError, register_stage
from world_model.config import CAMERA_NAMES, DiffusionConfig, TrainConfig, WorldModelConfig

logger = logging.getLogger(__name__)

STAGE = "train_world_model"
SUMMARY, LOSSES = "train.json", "losses.jsonl"

# The model's and the trainer's fields, their types, defaults and limits from the library configs.
MODEL = ConfigFields(WorldModelConfig, {
    # what a state is
    "cameras": "cameras stacked into one state: names the episodes have (the simulator's "
               f"{', '.join(CAMERA_NAMES)}, or a dataset's own, e.g. cam_high); checked against the sources",
    "image_size": "frames are resized to this square side",
    "depth": "add each camera's depth map as a channel",
    "backend": "",
    # the objective
    "alignment": "false: the ablation, latents never see actions",
    "recon_weight": "",
    "action_recon_weight": "",
    "align_weight": "",
    "head_weight": "",
    "motion_weight": "",
    "rollout_context": "train W on its own open-loop predictions this many steps deep (0: off); less drift in rollouts",
    "rollout_fraction": "share of each batch that starts from W's own prediction when rollout_context > 0",
})
LATENT = ConfigFields(LatentActionConfig, {
    "bottleneck": "", "latent_dim": "", "kl_weight": "", "noise_std": "", "fsq_levels": "", "vq_codebook_size": "",
})
DIFFUSION = ConfigFields(DiffusionConfig, {"diffusion_steps": "sampling steps of the diffusion backend"},
                         renamed={"diffusion_steps": "num_inference_steps"})
TRAIN = ConfigFields(TrainConfig, {
    "steps": "", "batch_size": "", "lr": "", "checkpoint_every": "", "keep_checkpoints": "", "log_every": "",
    "labelled_batch_fraction": "share of each batch from labelled pairs (None: as they come)",
    "source_weights": "batch mix by source (None: by pair count)",
    "num_threads": "torch threads per worker (0: cpus_per_worker, at least 1)",
})


class TrainWorldModelParams(params_from(MODEL, LATENT, DIFFUSION, TRAIN)):
    # the data
    holdout_fraction: float = Field(0.1, ge=0, lt=1, description="episodes kept out of training for evaluation")
    labelled_fraction: float = Field(1.0, ge=0, le=1, description="share of training episodes with actions used")
    labelled_sources: list[str] | None = Field(None, description="only these sources may be labelled (None: any)")
    # Ray Train
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)

    def library_configs(self) -> list[Any]:
        return [self.model_config_obj(), self.train_config()]

    def model_config_obj(self, embodiments: dict[str, int] | None = None) -> WorldModelConfig:
        """The model config; ``embodiments`` (robot -> action dim) from the data, else the latent config's default."""
        latent = LatentActionConfig(**LATENT.values(self), **({"embodiments": embodiments} if embodiments else {}))
        diffusion = DiffusionConfig(**DIFFUSION.values(self))
        return WorldModelConfig(**MODEL.values(self), latent=latent, diffusion=diffusion)

    def train_config(self, seed: int = 0) -> TrainConfig:
        threads = self.num_threads or max(1, int(self.cpus_per_worker))
        return TrainConfig(**{**TRAIN.values(self), "num_threads": threads, "seed": seed})


def plan_split(rows: list[dict[str, Any]], params: TrainWorldModelParams, seed: int) -> dict[str, Any]:
    """Held-out, training and labelled episode ids, each robot's action dim and the labelled action statistics."""
    from world_model.data import choose_labelled, episode_info, load_actions, split_holdout

    infos, skipped = {}, {}
    for r in rows:
        info = episode_info(r["path"])
        missing = info.missing(params.cameras, params.depth)
        if missing or info.num_frames < 2:
            skipped[r["episode_id"]] = f"missing {', '.join(missing)}" if missing else "fewer than 2 frames"
        else:
            infos[r["episode_id"]] = info
    if skipped:
        logger.warning("%s: %d episode(s) cannot be used and are left out of training and evaluation, e.g. %s: %s",
                       STAGE, len(skipped), *next(iter(skipped.items())))
    if not infos:
        example = next(iter(skipped.items()))
        raise StageError(f"{STAGE}: no episode has what params.cameras={params.cameras} (depth={params.depth}) "
                         f"need (e.g. {example[0]}: {example[1]}); set cameras to ones the episodes have, or generate "
                         f"them (generate_tabletop params.cameras)")
    train_ids, heldout_ids = split_holdout(list(infos), params.holdout_fraction, seed)
    labelled = choose_labelled(train_ids, [infos[e].action_dim is not None for e in train_ids],
                               [infos[e].source for e in train_ids], params.labelled_fraction,
                               params.labelled_sources, seed)
    dims: dict[str, int] = {}
    for eid in sorted(infos):
        info = infos[eid]
        if info.action_dim is not None and dims.setdefault(info.embodiment, info.action_dim) != info.action_dim:
            raise StageError(f"{STAGE}: embodiment {info.embodiment!r} has action dim {info.action_dim} in "
                             f"{info.path} but {dims[info.embodiment]} elsewhere; give different robots different "
                             f"meta['robot_type']")
    stats: dict[str, dict[str, list[float]]] = {}
    for name in dims:
        acts = [load_actions(infos[e].path)[:-1] for e in sorted(labelled) if infos[e].embodiment == name]
        if acts:
            a = np.concatenate(acts)
            stats[name] = {"mean": a.mean(0).tolist(), "std": a.std(0).tolist()}
    return {"train": sorted(train_ids), "heldout": sorted(heldout_ids), "labelled": sorted(labelled),
            "action_dims": dims or LatentActionConfig().embodiments, "action_stats": stats,
            "sources": {e: infos[e].source for e in sorted(infos)}, "skipped": skipped}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: load this worker's share of episodes, train, report losses (rank 0 checkpoints)."""
    import ray.train
    import ray.train.torch
    import torch

    from world_model.data import PairData
    from world_model.train import train
    from world_model.wrapper import ActionNormalizer

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    model_config = WorldModelConfig.from_dict(config["model"])
    train_config = TrainConfig(**{**config["train"], "seed": config["train"]["seed"] + rank})
    paths = config["paths"][rank::world]
    data = PairData.from_episodes(paths, model_config.cameras, model_config.image_size, model_config.depth,
                                  model_config.max_depth_m, labelled=set(config["labelled"]),
                                  embodiment_names=model_config.embodiments)
    normalizer = ActionNormalizer(model_config.latent.embodiments)
    for name, s in config["action_stats"].items():
        normalizer.set_stats(name, s["mean"], s["std"])
    prepare = ray.train.torch.prepare_model if world > 1 else None
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")

    def report(entry: dict[str, float]) -> None:
        ray.train.report({**entry, "rank": rank})

    result = train(model_config, train_config, data, config["out_dir"], resume=config["resume"], report=report,
                   prepare_model=prepare, is_main=rank == 0, normalizer=normalizer,
                   extra={"split": config["split_file"], "num_episodes": data.num_episodes}, device=device)
    if rank == 0:
        summary = {"checkpoint": result.checkpoint, "step": result.step, "start_step": result.start_step,
                   "cpu_s": round(result.cpu_s, 1), "num_workers": world, "num_pairs": len(data),
                   "final": result.history[-1] if result.history else {}}
        fileio.atomic_write_text(fileio.join(config["out_dir"], SUMMARY), json.dumps(summary, indent=1))


def check(params: TrainWorldModelParams, cctx: CheckContext) -> list[Problem]:
    """The cameras exist in what the sources produce; depth exists (from the sources or a depth estimator)."""
    problems: list[Problem] = []
    produced = cctx.outputs.get("cameras")
    if produced is not None:
        missing = [cam for cam in params.cameras if cam not in produced]
        if missing:
            problems.append(("cameras", f"{missing} not produced by the sources (they produce {produced}); use some "
                                        f"of those, or add the cameras to the source (generate_tabletop "
                                        f"params.cameras)"))
    estimated = any(name == "depth" and getattr(p, "backend", "sensor") != "sensor" for name, p in cctx.earlier)
    if params.depth and cctx.outputs.get("depth") is False and not estimated:
        problems.append(("depth", "the sources produce no depth and no depth estimator runs before this stage; add a "
                                  "depth stage with backend: depth_anything (or depth_pro) before it, or set depth: false"))
    return problems


def ray_storage(ctx: StageContext) -> tuple[str, bool]:
    """(Ray Train's storage_path, whether it is a temporary directory): its result files stay on local disk."""
    if fileio.is_local(ctx.stage_dir):
        return str(fileio.local_path(ctx.path("ray_results"))), False
    return tempfile.mkdtemp(prefix="wmsynth-ray-train-"), True


@register_stage(STAGE, kind="aggregate", params=TrainWorldModelParams, check=check,
                provides=("world_model", "world_model_split"))
def train_world_model(rows: list[dict[str, str]], params: TrainWorldModelParams, ctx: StageContext) -> None:
    """Latent actions + world model trained jointly on Ray Train (TorchTrainer); checkpoints, resume; rows unchanged."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from world_model.checkpoint import latest_checkpoint

    if not ctx.resume:  # a fresh run of the stage starts from scratch
        fileio.remove(ctx.path("checkpoints"), recursive=True)
        fileio.remove(ctx.path(LOSSES))
    split = plan_split(rows, params, ctx.seed)
    if not split["train"]:
        raise StageError(f"{STAGE}: no training episodes left after holding out {params.holdout_fraction:.0%}")
    split_file = ctx.path("split.json")
    fileio.atomic_write_text(split_file, json.dumps(split, indent=1))
    model_config = params.model_config_obj(split["action_dims"])
    train_ids = set(split["train"])
    paths = [r["path"] for r in sorted(rows, key=lambda r: r["episode_id"]) if r["episode_id"] in train_ids]
    loop_config = {"model": model_config.to_dict(), "train": params.train_config(ctx.seed).to_dict(),
                   "labelled": split["labelled"], "action_stats": split["action_stats"], "out_dir": ctx.stage_dir,
                   "paths": paths, "resume": bool(ctx.resume), "use_gpu": params.use_gpu, "split_file": split_file}
    logger.info("%s: %d training episodes (%d labelled), %d held out; %d worker(s)%s", STAGE, len(split["train"]),
                len(split["labelled"]), len(split["heldout"]), params.num_workers,
                ", resuming from the newest complete checkpoint" if ctx.resume else "")
    storage, temporary = ray_storage(ctx)
    try:
        trainer = TorchTrainer(
            train_loop_per_worker, train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=params.num_workers, use_gpu=params.use_gpu,
                                         resources_per_worker={"CPU": params.cpus_per_worker}),
            run_config=RunConfig(name="ray_train", storage_path=storage))
        trainer.fit()
    finally:
        if temporary:
            shutil.rmtree(storage, ignore_errors=True)
    summary = json.loads(fileio.read_text(ctx.path(SUMMARY)))  # rank 0 wrote it
    checkpoint = summary.get("checkpoint") or latest_checkpoint(ctx.path("checkpoints"))
    if checkpoint is None:
        raise StageError(f"{STAGE}: training finished without a complete checkpoint under {ctx.path('checkpoints')}")
    ctx.publish("world_model", checkpoint)
    ctx.publish("world_model_split", split_file)
    ctx.write_report({**summary, "checkpoint": checkpoint, "train_episodes": len(split["train"]),
                      "labelled_episodes": len(split["labelled"]), "heldout_episodes": len(split["heldout"]),
                      "losses": ctx.path(LOSSES)})
