"""Subgoal evaluators: judges of synthetic trajectories (see ``evaluators.base``). Importing the package registers
``progress``, ``geometric``, ``consistency``, ``safety`` and ``reach``; the simulator replay judge registers itself from
``pipeline.sim.replay`` (this package never imports ``pipeline``)."""

from evaluators import consistency, geometric, progress, reach, safety  # noqa: F401  (registers the judges)
from evaluators.base import (
    EVALUATORS,
    Decision,
    Evaluator,
    Trajectory,
    Verdict,
    build_evaluator,
    combine,
    register_evaluator,
)
from evaluators.readout import FrameReadout, Readout, ReadoutConfig, readout_targets, train_readout

__all__ = ["EVALUATORS", "Decision", "Evaluator", "FrameReadout", "Readout", "ReadoutConfig", "Trajectory", "Verdict",
           "build_evaluator", "combine", "readout_targets", "register_evaluator", "train_readout"]
