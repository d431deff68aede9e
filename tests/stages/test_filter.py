"""filter's bookkeeping: the report it builds from decisions (counts by reason, agreement with replay, AUROC)."""

from __future__ import annotations

import pytest

from pipeline.stages.filter_trajectories import FilterParams, auroc, summarize


def _record(eid: str, accepted: bool, truth: bool | None, scores: dict[str, float], proposal: str = "uniform"):
    evaluators = {name: {"score": s, "passed": s >= 0.5, "reason": "r"} for name, s in scores.items()}
    record = {"episode_id": eid, "accepted": accepted, "proposal": proposal, "evaluators": evaluators,
              "reason": "accepted" if accepted else "x"}
    if truth is not None:
        record["truth"] = {"passed": truth, "score": float(truth)}
    return record


def test_report_counts_rejections_by_evaluator_and_agreement_with_replay():
    records = [_record("a", True, True, {"safety": 1.0, "geometric": 0.9}, "demo_perturbed"),
               _record("b", True, False, {"safety": 1.0, "geometric": 0.6}),
               _record("c", False, False, {"safety": 0.0, "geometric": 0.2}),
               _record("d", False, True, {"safety": 1.0, "geometric": 0.4}, "demo_perturbed")]
    report = summarize(records)
    assert report["judged"] == 4 and report["accepted"] == 2 and report["accepted_fraction"] == 0.5
    assert report["rejected_by"] == {"safety": 1, "geometric": 2}
    assert report["precision_vs_replay"] == 0.5 and report["recall_vs_replay"] == 0.5
    assert report["auroc_vs_replay"]["geometric"] == 0.75  # true: 0.9, 0.4; false: 0.6, 0.2 -> 3 of 4 pairs
    assert report["by_proposal"]["demo_perturbed"] == {"judged": 2, "accepted": 1}


def test_auroc_ranks_and_ties():
    assert auroc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.1, 0.9], [True, False]) == 0.0
    assert auroc([0.3], [True]) is None


def test_params_reject_unknown_evaluators_and_options():
    with pytest.raises(ValueError, match="unknown evaluator 'vibes'"):
        FilterParams(evaluators={"vibes": {}})
    with pytest.raises(ValueError, match="safety: unknown options"):
        FilterParams(evaluators={"safety": {"max_sped": 1}})
    assert FilterParams(evaluators={"safety": {"max_speed_mps": 0.3}}).evaluators["safety"]["max_speed_mps"] == 0.3
