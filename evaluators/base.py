"""Subgoal evaluators: what a judge of a synthetic trajectory sees, what it answers, and the registry.

A synthetic trajectory (``Trajectory``) is a start frame from a real episode, the actions commanded from it and the
frames the world model predicted for them, plus what the trajectory was made for (the parent's subgoal). Each
evaluator answers with a ``Verdict``: a score in [0, 1], its threshold, whether the score passes, and a short reason a
person can read in the manifest ("ee 4.1 cm from the subgoal", "jerk 31 m/s^3 > 20"). ``combine`` turns several
verdicts into one decision (all / any / weighted).

    @register_evaluator("safety")
    class Safety(Evaluator): ...

    judge = build_evaluator("safety", {"threshold": 0.5, ...}, resources)   # resources: shared models, see below
    verdict = judge(trajectory)

Evaluators that need a model receive it through ``resources`` (a dict: ``"world_model"`` -> a
``world_model.wrapper.WorldModel``, ``"readout"`` -> a ``evaluators.readout.FrameReadout`` wrapper), so a pool actor
loads each model once. This package never imports ``pipeline``; the simulator replay judge registers itself from
``pipeline.sim.replay``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Trajectory:
    """One synthetic trajectory and its context. Frames are the world model's states (uint8, channels = cameras x RGB
    (+ depth), see ``world_model.data.episode_state``) so the judges read exactly what the model produced."""

    frames: np.ndarray  # (K + 1, C, H, W) uint8: frame 0 is the real start frame, 1..K predicted
    actions: np.ndarray  # (K, A) commanded actions, in the robot's units (meta["action_names"])
    start_state: np.ndarray | None  # (S,) the robot state at the start frame (meta["state_names"]), if known
    meta: dict[str, Any]  # the synthetic episode's meta: parent, start_frame, recipe, subgoal, action_space, fps...
    cameras: tuple[str, ...] = ()  # camera order of the channels in ``frames``
    extras: dict[str, Any] = field(default_factory=dict)  # anything else a judge may use (e.g. "latents" (K, D))

    @property
    def horizon(self) -> int:
        return int(len(self.actions))


@dataclass(frozen=True)
class Verdict:
    name: str
    score: float  # in [0, 1], higher = more likely the trajectory reached its subgoal safely
    threshold: float
    reason: str
    details: dict[str, float] = field(default_factory=dict)  # figures behind the score (cm, m/s, ...)

    @property
    def passed(self) -> bool:
        return self.score >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"score": round(float(self.score), 4), "threshold": self.threshold, "passed": self.passed,
                "reason": self.reason, **{k: round(float(v), 4) for k, v in self.details.items()}}


class Evaluator:
    """Base: ``__call__(trajectory) -> Verdict``. Subclasses set ``name`` (by the registry) and read their options
    from ``options`` (a plain dict from stages.yaml; unknown keys are errors)."""

    name = "evaluator"
    defaults: dict[str, Any] = {"threshold": 0.5}

    def __init__(self, options: dict[str, Any] | None = None, resources: dict[str, Any] | None = None):
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(f"evaluator {self.name}: unknown options {unknown} (known: {sorted(self.defaults)})")
        self.options = {**self.defaults, **options}
        self.threshold = float(self.options["threshold"])
        self.resources = resources or {}

    def __call__(self, trajectory: Trajectory) -> Verdict:
        raise NotImplementedError

    def verdict(self, score: float, reason: str, **details: float) -> Verdict:
        return Verdict(self.name, float(np.clip(score, 0.0, 1.0)), self.threshold, reason, details)


EVALUATORS: dict[str, type[Evaluator]] = {}


def register_evaluator(name: str) -> Callable[[type[Evaluator]], type[Evaluator]]:
    def decorator(cls: type[Evaluator]) -> type[Evaluator]:
        if name in EVALUATORS and EVALUATORS[name] is not cls:
            raise RuntimeError(f"evaluator {name!r} registered twice")
        cls.name = name
        EVALUATORS[name] = cls
        return cls

    return decorator


def build_evaluator(name: str, options: dict[str, Any] | None = None,
                    resources: dict[str, Any] | None = None) -> Evaluator:
    if name not in EVALUATORS:
        raise ValueError(f"evaluator: unknown {name!r} (known: {', '.join(sorted(EVALUATORS))})")
    return EVALUATORS[name](options, resources)


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str  # "accepted" or the failing judges' reasons, e.g. "geometric: ee 4.1 cm from the subgoal"
    score: float  # the combined score (weighted mode) or the minimum / maximum score (all / any)
    verdicts: dict[str, Verdict]

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "reason": self.reason, "score": round(float(self.score), 4),
                "evaluators": {name: v.to_dict() for name, v in self.verdicts.items()}}


def combine(verdicts: dict[str, Verdict], mode: str = "all", weights: dict[str, float] | None = None,
            threshold: float = 0.5) -> Decision:
    """One decision from several verdicts.

    all       every verdict passes its own threshold (the reason lists each one that failed)
    any       at least one passes
    weighted  the weighted mean of the scores >= ``threshold`` (weights default to 1)
    """
    if not verdicts:
        raise ValueError("combine: no verdicts")
    failed = [v for v in verdicts.values() if not v.passed]
    if mode == "all":
        accepted, score = not failed, min(v.score for v in verdicts.values())
    elif mode == "any":
        accepted, score = len(failed) < len(verdicts), max(v.score for v in verdicts.values())
    elif mode == "weighted":
        w = {name: float((weights or {}).get(name, 1.0)) for name in verdicts}
        total = sum(w.values())
        if total <= 0:
            raise ValueError(f"combine: weights must sum to > 0, got {weights}")
        score = sum(w[name] * v.score for name, v in verdicts.items()) / total
        accepted = score >= threshold
    else:
        raise ValueError(f"combine: mode must be all, any or weighted, got {mode!r}")
    if accepted:
        reason = "accepted"
    elif mode == "weighted":
        reason = f"weighted score {score:.2f} < {threshold:g}" + "".join(f"; {v.name}: {v.reason}" for v in failed)
    else:
        reason = "; ".join(f"{v.name}: {v.reason}" for v in failed)
    return Decision(accepted, reason, score, dict(verdicts))
