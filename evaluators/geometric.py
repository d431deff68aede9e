"""Geometric judge: are the end-effector and the task's target object where the subgoal had them, in the last frame?

The readout (``evaluators.readout``) reads the end-effector and target-object xyz (metres) from the last predicted
frame; the subgoal (``meta["subgoal"]``) holds where the parent episode had them at its goal frame. The score is the
product of smooth terms, each 1 when perfect and 0.5 at its tolerance:

    ee        exp(-ln2 (d_ee / ee_tol_m)^2)               d_ee  = |ee - subgoal ee_xyz|
    object    exp(-ln2 (d_obj / object_tol_m)^2)           d_obj = |object - subgoal objects_xyz[target_object]|
    table     sigmoid((z_obj - min_object_z_m) / table_softness_m)        the object has not sunk into the table

The object terms apply when the subgoal names a target object with its position and the readout's object head was
trained; otherwise the verdict says the object was not checked. ``check`` picks the terms (default all three): where
the arm's position is known better from the commanded actions (the ``reach`` judge), ``check: [object, table]`` leaves
this judge the part only the predicted frames can tell. With the default threshold 0.5 a trajectory passes
only if every term is at least about as good as its tolerance. The reason names the worst term, in cm.
"""

from __future__ import annotations

import math

import numpy as np

from evaluators.base import Evaluator, Trajectory, Verdict, register_evaluator

LN2 = math.log(2.0)
TERMS = ("ee", "object", "table")


def distance_term(distance_m: float, tolerance_m: float) -> float:
    """1 at 0, 0.5 at the tolerance, falling like a Gaussian beyond."""
    return float(math.exp(-LN2 * (distance_m / tolerance_m) ** 2))


@register_evaluator("geometric")
class Geometric(Evaluator):
    """Options: threshold (0.5), check (ee, object, table), ee_tol_m (0.03), object_tol_m (0.03), min_object_z_m
    (-0.01), table_softness_m (0.005). Resources: ``"readout"`` (a ``Readout``)."""

    defaults = {"threshold": 0.5, "check": TERMS, "ee_tol_m": 0.03, "object_tol_m": 0.03, "min_object_z_m": -0.01,
                "table_softness_m": 0.005}

    def __init__(self, options=None, resources=None):
        super().__init__(options, resources)
        check = self.options["check"]
        if isinstance(check, str) or not check or any(term not in TERMS for term in check):
            raise ValueError(f"evaluator geometric: check must be a non-empty list of {', '.join(TERMS)}, "
                             f"got {check!r}")
        self.check = set(check)
        for name in ("ee_tol_m", "object_tol_m", "table_softness_m"):
            if not float(self.options[name]) > 0:
                raise ValueError(f"evaluator geometric: {name} must be > 0, got {self.options[name]!r}")
        self.readout = self.resources.get("readout")
        if self.readout is None:
            raise ValueError("evaluator geometric: needs resources['readout'] (an evaluators.readout.Readout)")

    def __call__(self, trajectory: Trajectory) -> Verdict:
        opt = self.options
        subgoal = trajectory.meta.get("subgoal") or {}
        self.readout.check_cameras(trajectory.cameras)
        out = self.readout.predict(trajectory.frames[-1:])
        terms: dict[str, tuple[float, str]] = {}  # name -> (term, reason if it is the worst)
        details: dict[str, float] = {}

        if "ee" in self.check and subgoal.get("ee_xyz") is not None:
            d_ee = float(np.linalg.norm(out["ee_xyz"][0] - np.asarray(subgoal["ee_xyz"], float)))
            terms["ee"] = (distance_term(d_ee, float(opt["ee_tol_m"])), f"ee {100 * d_ee:.1f} cm from the subgoal")
            details["ee_error_cm"] = 100 * d_ee

        note = ""
        target, objects = subgoal.get("target_object"), subgoal.get("objects_xyz")
        if target is not None and objects is not None and self.check & {"object", "table"}:
            if self.readout.trained("object_xyz"):
                obj = out["object_xyz"][0]
                d_obj = float(np.linalg.norm(obj - np.asarray(objects[int(target)], float)))
                z = float(obj[2])
                details.update(object_error_cm=100 * d_obj, object_z_cm=100 * z)
                if "object" in self.check:
                    terms["object"] = (distance_term(d_obj, float(opt["object_tol_m"])),
                                       f"object {100 * d_obj:.1f} cm from its subgoal position")
                if "table" in self.check:
                    margin = (z - float(opt["min_object_z_m"])) / float(opt["table_softness_m"])
                    table = 0.5 * (1.0 + math.tanh(0.5 * margin))  # sigmoid(margin), without overflow
                    terms["table"] = (table, f"object at z = {100 * z:.1f} cm, below the table "
                                             f"(limit {100 * float(opt['min_object_z_m']):.1f} cm)")
            else:
                note = " (object not checked: the readout has no trained object head)"

        if not terms:
            return self.verdict(0.0, f"cannot judge: meta['subgoal'] has nothing for the checked terms "
                                     f"({', '.join(sorted(self.check))}){note}")
        details.update({f"{name}_term": term for name, (term, _) in terms.items()})
        score = float(np.prod([term for term, _ in terms.values()]))
        worst = min(terms, key=lambda name: terms[name][0])
        return self.verdict(score, terms[worst][1] + note, **details)
