"""Checkpoints: weights (and optimizer state) as safetensors, everything else as JSON. Loading never unpickles.

A checkpoint is a directory, on local disk or object storage (a path or an fsspec URL, through ``episodes.io``):

    step-00000500/
        model.safetensors       LatentWorldModel weights and buffers, plus the action normaliser (``normalizer.*``)
        optimizer.safetensors   optimizer tensors (Adam moments), ``state.<param index>.<name>``   [training only]
        config.json             {"format": 1, "model": WorldModelConfig, "step": int, "action_dims": {...},
                                 "train": {...}, "optimizer": {param_groups, scalar state}, "sampler_state": {...},
                                 "history": [...]}
        _COMPLETE               the commit marker, written last: {"step", "files": {name: bytes}}

Only a directory with its marker is a checkpoint (``is_complete``; ``latest_checkpoint`` ignores the rest). Locally the
directory is assembled under a temporary name and renamed into place, so a reader never sees half of one; on object
storage, where a directory cannot be renamed, each file is one PUT and the marker is written after them (and removed
first when a checkpoint is replaced or deleted), so a training run killed mid-write leaves no complete-looking
checkpoint behind.

    save_checkpoint("s3://bucket/run/checkpoints/step-00000500", model, normalizer, step=500, optimizer=opt)
    wm = load_world_model(latest_checkpoint("s3://bucket/run/checkpoints"))
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from episodes import io as fileio
from world_model.model import LatentWorldModel, WorldModelConfig
from world_model.wrapper import ActionNormalizer, WorldModel

FORMAT = 1
CONFIG, MODEL, OPTIMIZER, COMPLETE = "config.json", "model.safetensors", "optimizer.safetensors", "_COMPLETE"
STEP_DIR = re.compile(r"step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                tensors[f"state.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = float(value)
    return _tensors(tensors), {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, scalars in meta["scalars"].items():
        for name, value in scalars.items():
            state.setdefault(int(index), {})[name] = torch.tensor(value)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, model: LatentWorldModel, normalizer: ActionNormalizer, step: int,
                    optimizer: torch.optim.Optimizer | None = None, extra: dict[str, Any] | None = None) -> str:
    """Write a checkpoint directory (a local path or URL) whole or not at all; an existing one is replaced."""
    weights = _tensors(model.state_dict())
    weights.update({f"normalizer.{k}": v for k, v in _tensors(normalizer.state_dict()).items()})
    files = {MODEL: save_safetensors(weights, metadata={"format": str(FORMAT)})}
    config: dict[str, Any] = {"format": FORMAT, "model": model.config.to_dict(), "step": int(step),
                              "action_dims": normalizer.action_dims, **(extra or {})}
    if optimizer is not None:
        tensors, meta = _optimizer_split(optimizer)
        files[OPTIMIZER] = save_safetensors(tensors)
        config["optimizer"] = meta
    files[CONFIG] = json.dumps(config, indent=1, default=_json_default).encode()
    marker = json.dumps({"step": int(step), "files": {name: len(data) for name, data in files.items()}}).encode()
    path = str(path)
    if fileio.is_local(path):
        _write_local(fileio.local_path(path), {**files, COMPLETE: marker})
    else:
        remove_checkpoint(path)  # the old marker goes first: a half-replaced checkpoint never looks complete
        for name, data in files.items():
            fileio.atomic_write_bytes(fileio.join(path, name), data)
        fileio.atomic_write_bytes(fileio.join(path, COMPLETE), marker)
    return path


def _write_local(path: Path, files: dict[str, bytes]) -> None:
    """Assemble the directory under a temporary name, fsync, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint, its marker first (a reader never sees a half-deleted checkpoint as complete)."""
    fileio.remove(fileio.join(path, COMPLETE))
    fileio.remove(path, recursive=True)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def is_complete(path: str | Path) -> bool:
    """True when ``path`` holds a checkpoint whose commit marker was written (so every file of it was)."""
    return fileio.exists(fileio.join(path, COMPLETE))


def read_config(path: str | Path) -> dict[str, Any]:
    try:
        config = json.loads(fileio.read_text(fileio.join(path, CONFIG)))
    except FileNotFoundError:
        raise ValueError(f"{path}: not a world-model checkpoint (no {CONFIG})") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {config.get('format')!r}, this code reads {FORMAT}")
    return config


def load_model(path: str | Path) -> tuple[LatentWorldModel, ActionNormalizer, dict[str, Any]]:
    """(model, normalizer, config dict) from a checkpoint directory (path or URL), weights via safetensors only."""
    config = read_config(path)
    model = LatentWorldModel(WorldModelConfig.from_dict(config["model"]))
    normalizer = ActionNormalizer(config["action_dims"])
    weights = load_safetensors(fileio.read_bytes(fileio.join(path, MODEL)))
    norm = {k.removeprefix("normalizer."): v for k, v in weights.items() if k.startswith("normalizer.")}
    model_weights = {k: v for k, v in weights.items() if not k.startswith("normalizer.")}
    missing, unexpected = model.load_state_dict(model_weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{fileio.join(path, MODEL)}: does not match the config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    normalizer.load_state_dict(norm)
    return model, normalizer, config


def load_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    config = read_config(path)
    file = fileio.join(path, OPTIMIZER)
    if "optimizer" not in config or not fileio.exists(file):
        raise ValueError(f"{path}: no optimizer state (a checkpoint saved for inference only)")
    optimizer.load_state_dict(_optimizer_join(load_safetensors(fileio.read_bytes(file)), config["optimizer"]))


def load_world_model(path: str | Path, device: str = "cpu") -> WorldModel:
    model, normalizer, _ = load_model(path)
    return WorldModel(model, normalizer, device=device)


def checkpoint_step(path: str | Path) -> int | None:
    """The step in a ``step-XXXXXXXX`` directory name, or None for any other name."""
    match = STEP_DIR.match(fileio.name(path))
    return int(match.group(1)) if match else None


def list_checkpoints(directory: str | Path) -> list[str]:
    """Complete checkpoints under ``directory`` (path or URL), oldest step first."""
    found = [(checkpoint_step(p), p) for p in fileio.listdir(directory)]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None) if is_complete(p)]


def latest_checkpoint(directory: str | Path) -> str | None:
    """The complete checkpoint with the highest step under ``directory``, or None (incomplete ones never count)."""
    complete = list_checkpoints(directory)
    return complete[-1] if complete else None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete every ``step-*`` directory under ``directory`` but the newest ``keep`` complete ones."""
    entries = sorted((checkpoint_step(p), p) for p in fileio.listdir(directory))
    kept = set(list_checkpoints(directory)[-keep:])
    for step, path in entries:
        if step is not None and path not in kept:
            remove_checkpoint(path)
