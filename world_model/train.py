"""The training loop of the latent-action world model: sample, step, log, checkpoint, resume. No model maths here.

``train`` runs in one process (a Ray Train worker, the benchmark, a test). It builds the model for the data's
embodiments, fits the action normaliser on the labelled pairs, and every ``checkpoint_every`` steps (and at the end)
writes ``<out_dir>/checkpoints/step-XXXXXXXX`` (safetensors + JSON + a commit marker, see ``world_model.checkpoint``);
with ``resume=True`` it continues from the newest complete checkpoint there: weights, optimizer moments, the step
count, the batch sampler's random state and the loss history. The learning rate is a function of the step (linear
warm-up, cosine decay to 10%), so a resumed run follows the same schedule. Loss curves go to ``<out_dir>/losses.jsonl``
(one line per ``log_every`` steps, rewritten whole from the history each time, so a resumed run never repeats the steps
logged after its checkpoint) and to the ``report`` callback (Ray Train's ``ray.train.report`` in the stage).
``out_dir`` is a local path or an fsspec URL (``episodes.io``): nothing here needs a local filesystem.

CPU cost is measured as this process's CPU time (``time.process_time``, all its threads), which other load on a
shared machine does not inflate the way it inflates wall time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from episodes import io as fileio
from world_model.checkpoint import (
    latest_checkpoint, load_model, load_optimizer, prune_checkpoints, read_config, save_checkpoint, step_dir_name,
)
from world_model.config import TrainConfig, WorldModelConfig
from world_model.data import BatchSampler, PairData
from world_model.model import LatentWorldModel
from world_model.wrapper import ActionNormalizer, WorldModel

logger = logging.getLogger(__name__)

LOSSES = "losses.jsonl"


@dataclass
class TrainResult:
    checkpoint: str | None  # the last checkpoint written (a path or URL)
    step: int
    start_step: int
    cpu_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    world_model: WorldModel | None = None


def model_config_for(config: WorldModelConfig, data: PairData) -> WorldModelConfig:
    """``config`` with one action head per embodiment in ``data`` (dims from the episodes' actions); data without
    any actions keeps the configured heads."""
    dims = data.action_dims()
    if not dims:
        return config
    d = config.to_dict()
    d["latent"]["embodiments"] = dims
    return WorldModelConfig.from_dict(d)


def train(model_config: WorldModelConfig, train_config: TrainConfig, data: PairData, out_dir: str | Path,
          resume: bool = True, report: Callable[[dict[str, float]], None] | None = None,
          prepare_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None, is_main: bool = True,
          normalizer: ActionNormalizer | None = None, extra: dict[str, Any] | None = None,
          device: str | torch.device = "cpu") -> TrainResult:
    """Train (or continue training) on ``data``; returns the final checkpoint and the loss history.

    ``model_config`` is used as given (``model_config_for`` sets its heads from the data's embodiments);
    ``normalizer`` defaults to statistics of the labelled pairs of ``data`` (several workers should share one).
    ``prepare_model`` wraps the model for distributed training (``ray.train.torch.prepare_model``); only the
    ``is_main`` process writes checkpoints and the loss log.
    """
    tc = train_config
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if len(data) == 0:
        raise ValueError("train: no frame pairs (every episode has fewer than 2 frames, or no episodes)")
    out_dir = fileio.normalize(out_dir)
    ckpt_dir = fileio.join(out_dir, "checkpoints")
    losses_file = fileio.join(out_dir, LOSSES)
    last = latest_checkpoint(ckpt_dir) if resume else None
    history: list[dict[str, float]] = []
    sampler = BatchSampler(data, tc.batch_size, seed=tc.seed, source_weights=tc.source_weights,
                           labelled_batch_fraction=tc.labelled_batch_fraction)
    cpu_before = 0.0
    if last is not None:
        model, normalizer, saved = load_model(last)
        start = int(saved["step"])
        history = list(saved.get("history", []))
        cpu_before = float(saved.get("cpu_s", 0.0))
        if saved.get("sampler_state"):
            sampler.set_state(saved["sampler_state"])
        logger.info("resuming from %s (step %d)", last, start)
    else:
        torch.manual_seed(tc.seed)
        model = LatentWorldModel(model_config)
        if normalizer is None:
            normalizer = ActionNormalizer(model.config.latent.embodiments).fit(data)
        start = 0
    data.embodiment_names = model.config.embodiments
    device = torch.device(device)
    model.to(device)
    net = prepare_model(model) if prepare_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    if last is not None:
        load_optimizer(last, optimizer)
        torch.manual_seed(tc.seed + start)
    if start >= tc.steps:
        logger.info("already trained to step %d (steps=%d)", start, tc.steps)
        return TrainResult(last, start, start, cpu_before, history, WorldModel(model, normalizer))

    def checkpoint(step: int, cpu_s: float) -> str | None:
        if not is_main:
            return None
        path = save_checkpoint(fileio.join(ckpt_dir, step_dir_name(step)), model, normalizer, step, optimizer,
                               extra={"train": tc.to_dict(), "sampler_state": sampler.state(), "history": history,
                                      "cpu_s": cpu_s, **(extra or {})})
        prune_checkpoints(ckpt_dir, tc.keep_checkpoints)
        return path

    cpu0, wall0 = time.process_time(), time.perf_counter()
    window: list[dict[str, float]] = []
    path = last
    net.train()
    for step in range(start, tc.steps):
        for group in optimizer.param_groups:
            group["lr"] = tc.lr_at(step)
        batch = data.batch(sampler.sample(), normalizer, context=model.config.rollout_context)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss, parts = net(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
        optimizer.step()
        window.append(parts)
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            cpu_s = cpu_before + time.process_time() - cpu0
            keys = sorted({k for w in window for k in w})
            entry = {"step": done, "lr": tc.lr_at(step), "cpu_s": round(cpu_s, 2),
                     **{k: float(np.mean([w[k] for w in window if k in w])) for k in keys}}
            window = []
            history.append(entry)
            if is_main:
                fileio.atomic_write_text(losses_file, "".join(json.dumps(h) + "\n" for h in history))
            eta_s = (time.perf_counter() - wall0) / (done - start) * (tc.steps - done)
            logger.info("step %d/%d (ETA %.0f s): %s", done, tc.steps, eta_s,
                        {k: round(v, 4) for k, v in entry.items() if k != "step"})
            if report is not None:
                report(entry)
        if done % tc.checkpoint_every == 0 or done == tc.steps:
            path = checkpoint(done, cpu_before + time.process_time() - cpu0)
    cpu_s = cpu_before + time.process_time() - cpu0
    model.eval().cpu()
    return TrainResult(path, tc.steps, start, cpu_s, history, WorldModel(model, normalizer))


def checkpoint_summary(path: str | Path) -> dict[str, Any]:
    """The JSON side of a checkpoint without its optimizer block (for reports)."""
    config = read_config(path)
    config.pop("optimizer", None)
    config.pop("sampler_state", None)
    return config
