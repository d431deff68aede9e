"""Loading the run's world model inside a stage's actor: which checkpoint, which device, which embodiment."""

from __future__ import annotations

from typing import Any


def device_for(num_gpus: float) -> str:
    """``cuda`` when the actor was given a GPU and torch sees one, else ``cpu``."""
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def stage_world_model(stage: str, checkpoint: str, ctx, num_gpus: float, embodiment: str | None = None,
                      need_embodiment: bool = True) -> tuple[Any, str, str | None]:
    """(WorldModel, checkpoint path, embodiment): ``checkpoint`` or the run's ``world_model`` artifact, on the actor's
    device; the embodiment named, or the model's only one (None if several and ``need_embodiment`` is false)."""
    from world_model.checkpoint import load_world_model

    path = checkpoint or ctx.artifact("world_model")
    wm = load_world_model(path, device=device_for(num_gpus))
    names = wm.config.embodiments
    if embodiment is not None and embodiment not in names:
        raise ValueError(f"{stage}: embodiment {embodiment!r} is not one the model knows ({names})")
    if embodiment is None and len(names) != 1 and need_embodiment:
        raise ValueError(f"{stage}: the model knows several embodiments ({names}); set params.embodiment")
    return wm, path, embodiment or (names[0] if len(names) == 1 else None)


def episode_embodiment(stage: str, wm: Any, meta: dict[str, Any], fallback: str | None) -> str:
    """Whose action head serves this episode: its own robot's when the model has one, else ``fallback`` (the stage's
    ``embodiment`` param, or the model's only one); ValueError naming the robot and the heads when neither."""
    from world_model.data import embodiment_of

    own = embodiment_of(meta)
    if own in wm.config.embodiments:
        return own
    if fallback is not None:
        return fallback
    raise ValueError(f"{stage}: the episode's robot {own!r} has no action head in the world model (heads: "
                     f"{list(wm.config.embodiments)}); set params.embodiment to decode into one of them")
