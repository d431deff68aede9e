"""filter: judge every synthetic trajectory with the subgoal evaluators; keep it or drop it with the reason (1:1).

Each synthetic episode (``meta["source"] == "synthetic"``, from ``rollout``) is scored by the evaluators named in
``evaluators`` (``evaluators.base``: progress, geometric, consistency, safety, reach, and sim_replay), each a score in [0, 1]
with a threshold and a reason, and ``combine`` decides (all / any / weighted). Accepted episodes get
``meta["evaluation"]`` (every score and the decision) and go on; rejected ones are dropped with the failing
evaluators' reasons in the manifest. Real and pseudo-labelled episodes pass through untouched.

``truth: sim_replay`` (default) also replays every trajectory whose parent came from the embedded simulator and
records whether it really reached its subgoal, without letting it decide (add ``sim_replay`` to ``evaluators`` to
filter with it). ``report.json`` then says how often the filter agreed with replay: precision, recall, accepted
fraction, counts of rejections by evaluator, per-evaluator pass rates; ``decisions.jsonl`` holds every decision and
``decisions.png`` shows a few accepted and rejected trajectories with their reasons. ``keep_rejected: true`` judges
and records the same way but lets rejected trajectories through (``meta.evaluation.accepted`` says which), so one run
can write both the filtered and the unfiltered data (the policy-value benchmark's two synthetic arms).

    - name: filter
      params:
        evaluators: {safety: {}, reach: {}, geometric: {check: [object, table]}}
        mode: all            # all | any | weighted (with weights and threshold)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from episodes import Episode
from episodes import io as fileio
from pipeline.models import device_for, stage_world_model
from pipeline.stage import Filtered, Resources, StageContext, StageParams, register_stage

logger = logging.getLogger(__name__)

STAGE = "filter"
DECISIONS = "decisions"
PANEL_ROWS = 8  # trajectories drawn in decisions.png (half accepted, half rejected)
MODEL_JUDGES = {"progress": "readout", "geometric": "readout", "consistency": "world_model"}


class FilterParams(StageParams):
    evaluators: dict[str, dict[str, Any]] = Field(
        {"safety": {}, "reach": {}, "geometric": {"check": ["object", "table"]}},
        description="evaluator name -> its options (threshold, tolerances); see evaluators/")
    mode: Literal["all", "any", "weighted"] = "all"
    weights: dict[str, float] | None = Field(None, description="weighted mode: weight per evaluator (default 1)")
    threshold: float = Field(0.5, ge=0, le=1, description="weighted mode: the combined score needed")
    keep_rejected: bool = Field(False, description="judge and record every trajectory but keep the rejected ones "
                                                   "too (meta.evaluation.accepted false): to measure what filtering buys")
    truth: Literal["sim_replay", "none"] = Field("sim_replay", description="replay simulator parents to measure the "
                                                                           "filter (never decides unless listed)")
    checkpoint: str = Field("", description="world model for consistency; empty: the run's train_world_model")
    readout: str = Field("", description="read-out directory; empty: the run's train_evaluators")
    resources: Resources = Resources(num_cpus=1)

    @field_validator("evaluators")
    @classmethod
    def _known(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from evaluators.base import EVALUATORS

        _register_all()
        if not value:
            raise ValueError("name at least one evaluator")
        for name, options in value.items():
            if name not in EVALUATORS:
                raise ValueError(f"unknown evaluator {name!r} (known: {', '.join(sorted(EVALUATORS))})")
            unknown = sorted(set(options or {}) - set(EVALUATORS[name].defaults))
            if unknown:
                raise ValueError(f"{name}: unknown options {unknown} (known: {sorted(EVALUATORS[name].defaults)})")
        return value


def _register_all() -> None:
    import evaluators  # noqa: F401  progress, geometric, consistency, safety, reach
    import pipeline.sim.replay  # noqa: F401  sim_replay


def _requires(params: FilterParams) -> tuple[str, ...]:
    needs = {"world_model"} | {MODEL_JUDGES[name] for name in params.evaluators if name in MODEL_JUDGES}
    if params.checkpoint:
        needs.discard("world_model")
    if params.readout:
        needs.discard("readout")
    return tuple(sorted(needs))


def finish(rows: list[dict[str, str]], params: FilterParams, ctx: StageContext) -> None:
    """report.json and decisions.jsonl from the per-episode decisions."""
    records = []
    for path in sorted(fileio.listdir(ctx.path(DECISIONS))):
        if path.endswith(".json"):
            records.append(json.loads(fileio.read_text(path)))
    fileio.atomic_write_text(ctx.path("decisions.jsonl"), "".join(json.dumps(r) + "\n" for r in records))
    report = summarize(records)
    paths = {r["episode_id"]: r["path"] for r in rows}
    shown = ([r for r in records if r["accepted"]][:PANEL_ROWS // 2]
             + [r for r in records if not r["accepted"]][:PANEL_ROWS // 2])
    if shown:
        report["panel"] = ctx.path("decisions.png")
        fileio.atomic_write_bytes(report["panel"], panel([(Episode.load(paths[r["episode_id"]]), r) for r in shown]))
    ctx.write_report(report)
    logger.info("%s: %d synthetic trajectories judged, %d accepted; against replay: precision %s, recall %s", STAGE,
                report["judged"], report["accepted"], report.get("precision_vs_replay"),
                report.get("recall_vs_replay"))


def panel(items: list[tuple[Episode, dict[str, Any]]], scale: int = 2) -> bytes:
    """PNG: one row per trajectory (frames 0..K of its first camera; frame 0 is real), labelled with the decision,
    the proposal, the replay truth and the reason."""
    import io

    from PIL import Image, ImageDraw

    label_w, gap = 330, 2
    strips, labels = [], []
    for episode, record in items:
        frames = next(iter(episode.rgb.values()))  # (K+1, H, W, 3)
        spacer = np.full((frames.shape[1], gap, 3), 255, np.uint8)
        strips.append(np.concatenate([x for f in frames for x in (f, spacer)][:-1], axis=1))
        truth = record.get("truth", {})
        replay = "" if not truth else (" | replay: reached" if truth["passed"] else " | replay: missed")
        labels.append([f"{'ACCEPTED' if record['accepted'] else 'REJECTED'} {record['episode_id']}",
                       f"{record['proposal']}{replay}", record["reason"][:60]])
    width = max(s.shape[1] for s in strips)
    strips = [np.pad(s, ((0, gap * 2), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
    image = Image.fromarray(np.concatenate(strips))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    canvas = Image.new("RGB", (image.width + label_w, max(image.height, 14 * 3 * len(items))), "white")
    canvas.paste(image, (label_w, 0))
    draw = ImageDraw.Draw(canvas)
    row_h = strips[0].shape[0] * scale
    for i, lines in enumerate(labels):
        for j, line in enumerate(lines):
            draw.text((4, i * row_h + 2 + 12 * j), line, fill="darkgreen" if items[i][1]["accepted"] else "darkred")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, rejections by evaluator, pass rates and (where replay truth exists) precision / recall / AUROC."""
    accepted = [r["accepted"] for r in records]
    rejected_by = Counter(name for r in records if not r["accepted"]
                          for name, v in r["evaluators"].items() if not v["passed"])
    report: dict[str, Any] = {
        "judged": len(records), "accepted": int(sum(accepted)),
        "accepted_fraction": round(float(np.mean(accepted)), 4) if records else None,
        "rejected_by": dict(rejected_by),
        "pass_rate": {name: round(float(np.mean([r["evaluators"][name]["passed"] for r in records])), 4)
                      for name in (records[0]["evaluators"] if records else {})},
        "by_proposal": {p: {"judged": n, "accepted": sum(r["accepted"] for r in records if r["proposal"] == p)}
                        for p, n in Counter(r["proposal"] for r in records).items()},
    }
    truthful = [r for r in records if "truth" in r]
    if truthful:
        truth = np.array([r["truth"]["passed"] for r in truthful])
        chosen = np.array([r["accepted"] for r in truthful])
        report.update(replayed=len(truthful), replay_success_fraction=round(float(truth.mean()), 4),
                      precision_vs_replay=round(float(truth[chosen].mean()), 4) if chosen.any() else None,
                      recall_vs_replay=round(float(chosen[truth].mean()), 4) if truth.any() else None,
                      auroc_vs_replay={name: auroc([r["evaluators"][name]["score"] for r in truthful], truth)
                                       for name in truthful[0]["evaluators"]})
    return report


def auroc(scores, labels) -> float | None:
    """Area under the ROC curve (ties count half); None when only one class is present."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return round(float(greater / (len(pos) * len(neg))), 4)


@register_stage(STAGE, kind="map", params=FilterParams, requires=_requires, finish=finish)
class Filter:
    """Subgoal evaluators on synthetic trajectories; accepted ones carry their scores, rejected ones the reason."""

    def __init__(self, params: FilterParams, ctx: StageContext):
        from evaluators.base import build_evaluator

        _register_all()
        self.params, self.ctx = params, ctx
        # The world model always loads: its camera / size layout is what the judges read (and consistency uses it).
        wm, _, _ = stage_world_model(STAGE, params.checkpoint, ctx, params.resources.num_gpus, need_embodiment=False)
        resources: dict[str, Any] = {"world_model": wm}
        if "readout" in {MODEL_JUDGES.get(name) for name in params.evaluators}:
            from evaluators.readout import Readout

            resources["readout"] = Readout.load(params.readout or ctx.artifact("readout"),
                                                device=device_for(params.resources.num_gpus))
        self.wm = resources["world_model"]
        self.judges = {name: build_evaluator(name, options, resources)
                       for name, options in params.evaluators.items()}
        self.truth = build_evaluator("sim_replay") if params.truth == "sim_replay" else None

    def __call__(self, episode: Episode) -> Episode:
        from evaluators.base import combine

        if episode.meta.get("source") != "synthetic":
            return episode
        trajectory = self.trajectory(episode)
        verdicts = {name: judge(trajectory) for name, judge in self.judges.items()}
        decision = combine(verdicts, self.params.mode, self.params.weights, self.params.threshold)
        record = {"episode_id": episode.episode_id, "parent": episode.meta.get("parent"),
                  "proposal": episode.meta.get("recipe", {}).get("proposal"), **decision.to_dict()}
        if self.truth is not None and episode.meta.get("replay"):
            truth = self.truth(trajectory)
            record["truth"] = truth.to_dict()
        fileio.atomic_write_text(self.ctx.path(DECISIONS, episode.episode_id + ".json"), json.dumps(record))
        if not decision.accepted and not self.params.keep_rejected:
            raise Filtered(f"rejected: {decision.reason}")
        evaluation = {k: v for k, v in record.items() if k not in ("episode_id", "parent", "proposal")}
        return dataclasses.replace(episode, meta={**episode.meta, "evaluation": evaluation})

    def trajectory(self, episode: Episode):
        from evaluators.base import Trajectory

        cfg = self.wm.config
        return Trajectory(frames=self.wm.states(episode), actions=episode.action[:-1],
                          start_state=None if episode.state is None else episode.state[0], meta=episode.meta,
                          cameras=tuple(cfg.cameras))
