"""Checkpoints: weights (and optimizer state) as safetensors, everything else as JSON. Loading never unpickles.

A checkpoint is a directory, written under a temporary name and renamed when complete (a reader never sees half of
one; a training run killed mid-write leaves only a ``.tmp-*`` directory that ``latest_checkpoint`` ignores):

    step-000500/
        model.safetensors       LatentWorldModel weights and buffers, plus the action normaliser (``normalizer.*``)
        optimizer.safetensors   optimizer tensors (Adam moments), ``state.<param index>.<name>``   [training only]
        config.json             {"format": 1, "model": WorldModelConfig, "step": int, "action_dims": {...},
                                 "train": {...}, "optimizer": {param_groups, scalar state}, "sampler_state": {...},
                                 "history": [...]}

    save_checkpoint(dir / "step-000500", model, normalizer, step=500, optimizer=opt, extra={...})
    wm = load_world_model(latest_checkpoint(dir))
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from world_model.model import LatentWorldModel, WorldModelConfig
from world_model.wrapper import ActionNormalizer, WorldModel

FORMAT = 1
CONFIG, MODEL, OPTIMIZER = "config.json", "model.safetensors", "optimizer.safetensors"


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
                    optimizer: torch.optim.Optimizer | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically (temp directory, then rename; an existing one is replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        weights = _tensors(model.state_dict())
        weights.update({f"normalizer.{k}": v for k, v in _tensors(normalizer.state_dict()).items()})
        save_file(weights, str(tmp / MODEL), metadata={"format": str(FORMAT)})
        config: dict[str, Any] = {"format": FORMAT, "model": model.config.to_dict(), "step": int(step),
                                  "action_dims": normalizer.action_dims, **(extra or {})}
        if optimizer is not None:
            tensors, meta = _optimizer_split(optimizer)
            save_file(tensors, str(tmp / OPTIMIZER))
            config["optimizer"] = meta
        (tmp / CONFIG).write_text(json.dumps(config, indent=1, default=_json_default))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def read_config(path: str | Path) -> dict[str, Any]:
    config = json.loads((Path(path) / CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {config.get('format')!r}, this code reads {FORMAT}")
    return config


def load_model(path: str | Path) -> tuple[LatentWorldModel, ActionNormalizer, dict[str, Any]]:
    """(model, normalizer, config dict) from a checkpoint directory, weights via safetensors only."""
    path = Path(path)
    config = read_config(path)
    model = LatentWorldModel(WorldModelConfig.from_dict(config["model"]))
    normalizer = ActionNormalizer(config["action_dims"])
    weights = load_file(str(path / MODEL))
    norm = {k.removeprefix("normalizer."): v for k, v in weights.items() if k.startswith("normalizer.")}
    model_weights = {k: v for k, v in weights.items() if not k.startswith("normalizer.")}
    missing, unexpected = model.load_state_dict(model_weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path / MODEL}: does not match the config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    normalizer.load_state_dict(norm)
    return model, normalizer, config


def load_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    path = Path(path)
    config = read_config(path)
    if "optimizer" not in config or not (path / OPTIMIZER).exists():
        raise ValueError(f"{path}: no optimizer state (a checkpoint saved for inference only)")
    optimizer.load_state_dict(_optimizer_join(load_file(str(path / OPTIMIZER)), config["optimizer"]))


def load_world_model(path: str | Path, device: str = "cpu") -> WorldModel:
    model, normalizer, _ = load_model(path)
    return WorldModel(model, normalizer, device=device)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``directory`` (``step-XXXXXXXX``), or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = [p for p in directory.glob("step-*") if p.is_dir() and (p / CONFIG).exists() and (p / MODEL).exists()]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)
