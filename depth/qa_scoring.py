"""Scoring QA records against true facts of the same frame: quantitative answers are correct within 25% of the truth
(the 0.5x-2x rate is reported too), qualitative answers must match exactly (see ``depth.spatial_qa``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from depth.qa_facts import SceneFacts, count_of, gripper_vector, moved
from depth.qa_families import COMPARISONS, FAMILIES, Kind, comparison_choice, quantity, winner
from depth.spatial_qa import QAConfig, to_metres


@dataclass
class Score:
    family: str
    kind: Kind
    correct: bool  # qualitative: exact; quantitative: within 25%
    ratio: float | None = None  # quantitative: estimate / truth (lengths)
    relative_error: float | None = None


def score_record(record: dict[str, Any], truth: SceneFacts, truth_start: SceneFacts | None = None,
                 config: QAConfig | None = None) -> Score:
    """Score one record against true facts of the same frame (and of the start frame for trajectory questions)."""
    config = config or QAConfig()
    family, structured, ids = record["family"], record["answer_structured"], record["asked_ids"]
    kind = FAMILIES[family].kind
    if family in COMPARISONS:
        win = winner(family, truth, ids[0], ids[1])
        expected = comparison_choice(family, record["phrasing"], win, ids[0], ids[1], truth.names)
        return Score(family, kind, structured["choice"] == expected)
    if family == "count":
        return Score(family, kind, structured["value"] == count_of(truth, record["category"]))
    if family == "moved_object":
        best = moved(truth_start, truth, config.moved_threshold_m)
        return Score(family, kind, structured["winner_id"] == best)
    if family == "gripper_displacement":
        true_vec = gripper_vector(truth, ids[0])
        est_vec = np.asarray(structured["components_m"])
        true_len = float(np.linalg.norm(true_vec))
        if true_len <= 0:
            return Score(family, kind, False, ratio=math.inf, relative_error=math.inf)
        err = float(np.linalg.norm(est_vec - true_vec)) / true_len
        return Score(family, kind, err <= 0.25, ratio=float(np.linalg.norm(est_vec)) / true_len, relative_error=err)
    true_value = quantity(family, truth, ids, truth_start)
    est_value = to_metres(structured["value"], structured["unit"])
    if true_value <= 0:  # e.g. a distance moved by an object that did not move: any positive answer is wrong
        return Score(family, kind, est_value == true_value, ratio=math.inf, relative_error=math.inf)
    err = abs(est_value - true_value) / true_value
    return Score(family, kind, err <= 0.25, ratio=est_value / true_value, relative_error=err)


def summarize_scores(scores: list[Score]) -> dict[str, Any]:
    """Overall and per-family accuracy: quantitative within 25% and within 0.5x-2x, qualitative exact."""
    def rate(items: list[Score], pred) -> float | None:
        return round(sum(1 for s in items if pred(s)) / len(items), 4) if items else None

    quant = [s for s in scores if s.kind == "quantitative"]
    qual = [s for s in scores if s.kind == "qualitative"]
    per_family: dict[str, dict[str, Any]] = {}
    for name in sorted({s.family for s in scores}):
        items = [s for s in scores if s.family == name]
        entry: dict[str, Any] = {"kind": items[0].kind, "n": len(items)}
        if items[0].kind == "quantitative":
            entry["within_25pct"] = rate(items, lambda s: s.correct)
            entry["within_0_5x_2x"] = rate(items, lambda s: 0.5 <= s.ratio <= 2.0)
            entry["median_relative_error"] = round(float(np.median([s.relative_error for s in items])), 4)
        else:
            entry["correct"] = rate(items, lambda s: s.correct)
        per_family[name] = entry
    return {"quantitative_within_25pct": rate(quant, lambda s: s.correct),
            "quantitative_within_0_5x_2x": rate(quant, lambda s: 0.5 <= s.ratio <= 2.0),
            "qualitative_correct": rate(qual, lambda s: s.correct),
            "num_quantitative": len(quant), "num_qualitative": len(qual), "per_family": per_family}
