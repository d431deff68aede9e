"""Consistency judge: do the generated frames agree with the actions that were commanded, and does the world model agree
with itself about where those actions lead?

(a) Action agreement. The latent actions of the generated frame pairs are re-inferred (``wm.infer_latents(frames[:-1],
    frames[1:])``) and decoded to robot actions (``wm.decode_actions``); their RMS difference from the commanded
    actions, per dim in units of the model's action std (``wm.normalizer.stats(embodiment)``), is ``action_error``.
    Frames that show a different motion than the one commanded decode to different actions.
        term_a = exp(-ln2 (action_error / action_tol)^2)             1 at 0, 0.5 at action_tol
(b) Disagreement. ``n_samples`` rollouts from frame 0 with the commanded actions plus seeded Gaussian jitter
    (``jitter`` x the action std, per dim) end in final frames; ``spread`` is their per-pixel standard deviation across
    samples (images in [0, 1], mean over channels), averaged over the pixels that move (in any sample's final frame or
    the trajectory's own, against frame 0). A model that is sure of the outcome of nearby actions gives a small spread;
    one guessing (out of its data, or a diffusion sampler with nothing to go on) a large one.
        term_d = exp(-ln2 (spread / spread_tol)^2)

    score = term_a ** action_weight * term_d ** (1 - action_weight)     (weighted geometric mean; n_samples = 0: term_a)

so a trajectory with both figures at their tolerances scores 0.5, the default threshold. The tolerances are first
guesses, to be calibrated on a trained model and its accepted / rejected trajectories. For scale, the demo run's
300-step deterministic model (64x64 front camera, 8-step windows): action_error median 0.74 std on its own rollouts
with the real actions, 1.10 with those actions permuted and sign-flipped; spread median 0.011 (p90 0.013) at jitter
0.1 in both cases.
Resources: ``"world_model"`` (a ``world_model.wrapper.WorldModel``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from evaluators.base import Evaluator, Trajectory, Verdict, register_evaluator
from world_model.metrics import motion_mask

LN2 = math.log(2.0)


@register_evaluator("consistency")
class Consistency(Evaluator):
    """Options: threshold (0.5), embodiment (None: the model's only one), action_tol (1.0, in action stds),
    n_samples (4, rollouts for the disagreement; 0 turns it off), jitter (0.1, fraction of the action std), seed (0),
    spread_tol (0.03, pixel std in [0, 1] on moving pixels), action_weight (0.5), motion_threshold (8 / 255)."""

    defaults = {"threshold": 0.5, "embodiment": None, "action_tol": 1.0, "n_samples": 4, "jitter": 0.1, "seed": 0,
                "spread_tol": 0.03, "action_weight": 0.5, "motion_threshold": 8.0 / 255.0}

    def __init__(self, options=None, resources=None):
        super().__init__(options, resources)
        opt = self.options
        self.wm = self.resources.get("world_model")
        if self.wm is None:
            raise ValueError("evaluator consistency: needs resources['world_model'] (a world_model.wrapper.WorldModel)")
        names = list(self.wm.config.embodiments)
        if opt["embodiment"] is None and len(names) != 1:
            raise ValueError(f"evaluator consistency: the model has embodiments {names}; "
                             f"name one in options.embodiment")
        self.embodiment = str(opt["embodiment"] or names[0])
        if self.embodiment not in self.wm.normalizer.action_dims:
            raise ValueError(f"evaluator consistency: embodiment {self.embodiment!r} not in the model "
                             f"(known: {', '.join(self.wm.normalizer.action_dims)})")
        for name in ("action_tol", "spread_tol", "motion_threshold"):
            if not float(opt[name]) > 0:
                raise ValueError(f"evaluator consistency: {name} must be > 0, got {opt[name]!r}")
        if not 0.0 <= float(opt["action_weight"]) <= 1.0:
            raise ValueError(f"evaluator consistency: action_weight must be in [0, 1], got {opt['action_weight']!r}")
        if int(opt["n_samples"]) != 0 and int(opt["n_samples"]) < 2:
            raise ValueError(f"evaluator consistency: n_samples must be 0 (off) or >= 2, got {opt['n_samples']!r}")
        if not float(opt["jitter"]) >= 0:
            raise ValueError(f"evaluator consistency: jitter must be >= 0, got {opt['jitter']!r}")
        self.n_samples = int(opt["n_samples"])
        self.std = self.wm.normalizer.stats(self.embodiment)[1].detach().cpu().numpy().astype(np.float64)  # (A,)

    def __call__(self, trajectory: Trajectory) -> Verdict:
        opt, cfg = self.options, self.wm.config
        frames = np.asarray(trajectory.frames)
        actions = np.asarray(trajectory.actions, dtype=np.float32)  # (K, A)
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if frames.ndim != 4 or frames.shape[1:] != expected:
            raise ValueError(f"evaluator consistency: frames of shape (K + 1, {', '.join(map(str, expected))}) "
                             f"expected (the world model's states), got {frames.shape}")
        if trajectory.cameras and tuple(trajectory.cameras) != tuple(cfg.cameras):
            raise ValueError(f"evaluator consistency: frames from cameras {list(trajectory.cameras)}, the world model "
                             f"uses {list(cfg.cameras)}")
        if actions.ndim != 2 or actions.shape != (len(frames) - 1, len(self.std)) or len(actions) == 0:
            return self.verdict(0.0, f"cannot judge: actions {actions.shape} do not match {len(frames)} frames and "
                                     f"the model's {len(self.std)} action dims")
        names = list(trajectory.meta.get("action_names") or [f"a{i}" for i in range(len(self.std))])

        # (a) re-inferred actions against the commanded ones, in action stds
        z = self.wm.infer_latents(frames[:-1], frames[1:])  # (K, D)
        decoded = self.wm.decode_actions(z, self.embodiment).cpu().numpy().astype(np.float64)  # (K, A)
        per_dim = np.sqrt((((decoded - actions) / self.std) ** 2).mean(0))  # (A,)
        action_error = float(np.sqrt((per_dim ** 2).mean()))
        term_a = math.exp(-LN2 * (action_error / float(opt["action_tol"])) ** 2)
        worst_dim = int(np.argmax(per_dim))
        details = {"action_error_std": action_error, "action_term": term_a,
                   **{f"action_error_{names[i]}": float(e) for i, e in enumerate(per_dim)}}
        reason = (f"re-inferred actions {action_error:.2f} std from the commanded "
                  f"(worst {names[worst_dim]} {per_dim[worst_dim]:.2f})")
        if self.n_samples == 0:
            return self.verdict(term_a, reason, **details)

        # (b) disagreement of jittered rollouts from frame 0
        spread, moving = self.disagreement(frames, actions)
        term_d = math.exp(-LN2 * (spread / float(opt["spread_tol"])) ** 2)
        w = float(opt["action_weight"])
        score = term_a ** w * term_d ** (1.0 - w)
        details.update(spread=spread, moving_fraction=moving, disagreement_term=term_d)
        reason += f"; {self.n_samples} jittered rollouts spread {spread:.3f} on {100 * moving:.0f}% moving pixels"
        return self.verdict(score, reason, **details)

    def disagreement(self, frames: np.ndarray, actions: np.ndarray) -> tuple[float, float]:
        """(spread, fraction of pixels that move) of ``n_samples`` jittered rollouts' final frames."""
        opt = self.options
        rng = np.random.default_rng(int(opt["seed"]))
        noise = rng.standard_normal((self.n_samples, *actions.shape)) * float(opt["jitter"]) * self.std
        jittered = (actions[None] + noise).astype(np.float32)  # (N, K, A)
        generator = torch.Generator(device=self.wm.device).manual_seed(int(opt["seed"]))
        start = np.repeat(frames[:1], self.n_samples, axis=0)  # (N, C, H, W)
        finals = self.wm.rollout(start, actions=jittered, embodiment=self.embodiment, generator=generator)[:, -1]
        unit = torch.from_numpy(finals).float() / 255.0  # (N, C, H, W)
        first = torch.from_numpy(frames[:1]).float() / 255.0
        last = torch.from_numpy(frames[-1:]).float() / 255.0
        threshold = float(opt["motion_threshold"])
        mask = motion_mask(first.expand_as(unit), unit, threshold).any(0) | motion_mask(first, last, threshold)[0]
        mask = mask[0]  # (H, W)
        if not mask.any():
            return 0.0, 0.0  # nothing moves in any of them: they agree
        std = unit.std(0, unbiased=False).mean(0)  # (H, W)
        return float(std[mask].mean()), float(mask.float().mean())
