"""``<run_dir>/report.html``: one self-contained page (images embedded as base64 PNG, no external JS/CSS) showing what
a run made, built from the run's own files:

    manifest.json                             per-stage counts, timings, fates (filtered / quarantined by reason)
    stages/NN_train_world_model/losses.jsonl  loss curves
    stages/NN_evaluate_world_model/eval.json  probe R2, rollout PSNR/SSIM by horizon, action sensitivity;
                      rollouts.npz            labelled rollout panels (an older run's rollouts.png gets step headers)
    stages/NN_label_actions/report.json       pseudo-label R2;  NN_depth/depth_metrics.json  depth metrics
    stages/NN_filter/decisions.jsonl          evaluator score histograms, acceptance by reason
    qa/                                       a few QA samples drawn over their RGB frames
    shards/*/meta/wmsynth_provenance.json     episodes by provenance

A section the run does not have is skipped with a one-line note. Written at the end of every run
(``pipeline.run``) and by ``wmsynth report RUN``.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import re
import sys
import tarfile
from collections import Counter, defaultdict
from typing import Any, Callable

from episodes import io as fileio
from pipeline import report_plots as plots

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
MAX_QA_SAMPLES = 4
MAX_BYTES = 10_000_000
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 12px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:30px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#777;font-style:italic}.bar{background:#6a9fd8;height:10px;display:inline-block}
img{max-width:100%;margin:6px 0;display:block}.row{display:flex;flex-wrap:wrap;gap:10px}.row img{margin:0}
nav a{margin-right:10px}code{background:#f4f4f4;padding:0 3px}"""


class Run:
    """Read access to a run directory (local or URL): the manifest and each stage's files, all optional."""

    def __init__(self, run_dir: str):
        self.run_dir = fileio.normalize(run_dir)
        self.manifest = self.json(MANIFEST) or {}
        self.stage_dirs: dict[str, str] = {}
        for entry in self.manifest.get("stages", []):
            if entry.get("dir"):
                self.stage_dirs[entry["stage"]] = self.path(entry["dir"])
        if not self.stage_dirs and fileio.is_dir(self.path("stages")):
            for d in sorted(fileio.listdir(self.path("stages"))):
                match = re.match(r"\d+_(.+)$", fileio.name(d))
                if match:
                    self.stage_dirs[match.group(1)] = d

    def path(self, *parts: str) -> str:
        return fileio.join(self.run_dir, *parts)

    def json(self, *parts: str) -> Any:
        path = self.path(*parts)
        try:
            return json.loads(fileio.read_text(path)) if fileio.exists(path) else None
        except (OSError, ValueError) as exc:
            logger.warning("report: cannot read %s: %s", path, exc)
            return None

    def stage_file(self, stage: str, name: str) -> str | None:
        d = self.stage_dirs.get(stage)
        return fileio.join(d, name) if d and fileio.exists(fileio.join(d, name)) else None

    def stage_json(self, stage: str, name: str) -> Any:
        path = self.stage_file(stage, name)
        return json.loads(fileio.read_text(path)) if path else None

    def stage_jsonl(self, stage: str, name: str) -> list[dict[str, Any]]:
        path = self.stage_file(stage, name)
        return [json.loads(line) for line in fileio.read_text(path).splitlines() if line.strip()] if path else []

    def report(self, stage: str) -> dict[str, Any] | None:
        from_manifest = next((s.get("report") for s in self.manifest.get("stages", []) if s["stage"] == stage), None)
        return self.stage_json(stage, "report.json") or from_manifest


MANIFEST = "manifest.json"


# -- html helpers ----------------------------------------------------------------------------------------------------


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return html.escape(json.dumps(value)[:160])
    return html.escape("" if value is None else str(value))


def _table(header: list[str], rows: list[list[Any]], raw: set[int] = frozenset()) -> str:
    def cell(i, v):
        num = isinstance(v, (int, float)) and not isinstance(v, bool)
        return f'<td{" class=n" if num else ""}>{v if i in raw else _fmt(v)}</td>'

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _scalars(report: dict[str, Any]) -> str:
    rows = [[k, v] for k, v in report.items() if isinstance(v, (int, float, str, type(None))) and k != "panel"
            and not (isinstance(v, str) and ("/" in v or len(v) > 120))]
    return _table(["figure", "value"], rows)


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def reason_key(reason: str) -> str:
    """A reason without its numbers and per-episode details, to count episodes by it: ``rejected: safety: speed
    0.51 m/s ...; geometric: ...`` -> ``rejected: safety, geometric``."""
    head, _, rest = reason.partition(": ")
    if head == "rejected" and rest:
        return "rejected: " + ", ".join(part.split(":")[0].strip() for part in rest.split(";"))
    text = re.sub(r"[-+]?\d+(\.\d+)?", "#", reason)
    text = re.sub(r"(/|\b)[\w.-]+\.(episode|json|mp4|parquet|tar)\b", "<file>", text)
    return text[:140]


# -- sections --------------------------------------------------------------------------------------------------------


def section_overview(run: Run) -> str | None:
    m = run.manifest
    if not m:
        return None
    versions = m.get("versions") or {}
    rows = [["run directory", run.run_dir], ["started / finished", f"{m.get('started_at', '')} / "
                                                                   f"{m.get('finished_at', '')}"],
            ["command", m.get("command", "")], ["seed", m.get("seed")],
            ["versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)],
            ["episodes", ", ".join(f"{k} {v}" for k, v in (m.get("counts") or {}).items())]]
    if m.get("partial"):
        rows.append(["partial", "yes (--only): later stages did not run"])
    return _table(["", ""], rows)


def section_stages(run: Run) -> str | None:
    stages = run.manifest.get("stages") or []
    if not stages:
        return None
    statuses = sorted({k for s in stages for k in s.get("counts", {})})
    longest = max([s.get("seconds", 0) for s in stages] + [1e-9])
    rows = []
    for s in stages:
        secs = s.get("seconds", 0) or 0
        bar = f'<span class="bar" style="width:{int(120 * secs / longest)}px"></span> {secs:.1f} s'
        rows.append([s["stage"], bar, *[s.get("counts", {}).get(k, 0) for k in statuses],
                     "resumed" if s.get("resumed") else ""])
    out = _table(["stage", "time", *statuses, ""], rows, raw={1})
    dropped: dict[tuple, list[str]] = defaultdict(list)
    for e in run.manifest.get("episodes", []):
        if e.get("fate") in ("filtered", "quarantined"):
            dropped[(e["fate"], e.get("stage", ""), reason_key(e.get("reason", "")))].append(e["episode_id"])
    if dropped:
        rows = [[fate, stage, reason, len(ids), ", ".join(ids[:3]) + (" ..." if len(ids) > 3 else "")]
                for (fate, stage, reason), ids in sorted(dropped.items(), key=lambda kv: (kv[0][0], -len(kv[1])))]
        out += "<h3>Filtered and quarantined episodes by reason</h3>" + _table(
            ["fate", "stage", "reason", "episodes", "e.g."], rows)
    else:
        out += _note("No episode was filtered or quarantined.")
    return out


def section_training(run: Run) -> str | None:
    losses = run.stage_jsonl("train_world_model", "losses.jsonl")
    report = run.report("train_world_model")
    if not losses and not report:
        return None
    out = _img(plots.loss_curves(losses), "training losses") if losses else _note("No losses.jsonl in this run.")
    if report:
        out += _scalars({k: v for k, v in report.items() if k not in ("losses", "final")})
    return out


def section_evaluation(run: Run) -> str | None:
    ev = run.stage_json("evaluate_world_model", "eval.json")
    if not ev:
        return None
    out = []
    latent = ev.get("latent") or {}
    series = {label: latent[key]["r2_per_dim"] for key, label in (("probe_action", "linear probe z -> action"),
                                                                  ("head", "action head H(z)"))
              if (latent.get(key) or {}).get("r2_per_dim")}
    if series:
        out.append(_img(plots.probe_r2(series, _action_names(run), title="held-out R2 per action dimension"),
                        "probe R2"))
    rows = [[key, (latent.get(key) or {}).get("r2")] for key in ("probe_action", "head", "probe_ee_motion")
            if latent.get(key)]
    if rows:
        out.append(_table(["latent read-out", "R2 (mean over dims)"], rows))
    rollout = ev.get("rollout") or {}
    if rollout.get("per_step"):
        out.append(_img(plots.rollout_fidelity(rollout["per_step"]), "rollout fidelity"))
        out.append(_scalars(rollout.get("summary") or {}))
        sens = rollout["summary"].get("action_sensitivity_db")
        if sens is not None:
            out.append(f"<p>Action sensitivity (mean PSNR with the true minus with shuffled actions): "
                       f"<b>{sens:.2f} dB</b> full frame, {rollout['summary'].get('action_sensitivity_masked_db', 0):.2f}"
                       f" dB on moving pixels.</p>")
    out.append("<h3>Rollouts of held-out episodes</h3>" + _rollout_panel(run, ev))
    return "".join(out)


def _rollout_panel(run: Run, ev: dict[str, Any]) -> str:
    npz = run.stage_file("evaluate_world_model", "rollouts.npz")
    if npz:
        import io

        import numpy as np

        with np.load(io.BytesIO(fileio.read_bytes(npz))) as saved:
            return _img(plots.rollout_panel(dict(saved)), "rollout panel") + _note(
                "Columns are steps from the real start frame (t=0); each window shows the real frames, then the "
                "model's open-loop rollout from the true actions, from latents inferred from the real frames, and from "
                "another window's actions. PSNR is the row's mean over steps 1..K against the real row.")
    png = run.stage_file("evaluate_world_model", "rollouts.png")
    if not png:
        return _note("No rollout panel in this run.")
    horizon = (ev.get("rollout") or {}).get("horizon", 8)
    labelled = plots.label_old_panel(fileio.read_bytes(png), int(ev.get("image_size", 64)),
                                     len(ev.get("cameras") or [1]), int(horizon))
    return _img(labelled, "rollout panel") + _note(
        "This run predates rollouts.npz: its panel has no episode ids or per-row error (re-run evaluate_world_model "
        "to get them). Rows: real, true actions, inferred latents, shuffled actions; columns: steps t=0..K.")


def section_pseudo_labels(run: Run) -> str | None:
    report = run.report("label_actions")
    if not report:
        return None
    out = _scalars(report)
    if report.get("pseudo_label_r2_per_dim"):
        names = _action_names(run)
        out += _img(plots.probe_r2({"pseudo-label vs hidden true action": report["pseudo_label_r2_per_dim"]}, names,
                                   title="pseudo-label R2 per action dimension"), "pseudo-label R2")
    return out


def _action_names(run: Run) -> list[str] | None:
    for shard in _shard_dirs(run):
        prov = _read_json(fileio.join(shard, "meta", "wmsynth_provenance.json"))
        names = ((prov or {}).get("schema") or {}).get("action_names")
        if names:
            return names
    return None


def _read_json(path: str) -> Any:
    return json.loads(fileio.read_text(path)) if fileio.exists(path) else None


def section_evaluators(run: Run) -> str | None:
    report = run.report("train_evaluators")
    return _scalars(report) if report else None


def section_filter(run: Run) -> str | None:
    report = run.report("filter")
    decisions = run.stage_jsonl("filter", "decisions.jsonl")
    if not report and not decisions:
        return None
    out = []
    if decisions:
        out.append(_img(plots.score_histograms(decisions), "evaluator scores"))
        reasons = Counter("accepted" if d.get("accepted") else reason_key("rejected: " + d.get("reason", ""))
                          for d in decisions)
        out.append(_img(plots.bars(dict(reasons.most_common(12)), "acceptance by reason", "trajectories"),
                        "acceptance by reason"))
    if report:
        if report.get("rejected_by"):
            out.append(_table(["evaluator", "rejected", "pass rate", "AUROC vs replay"],
                              [[k, v, (report.get("pass_rate") or {}).get(k),
                                (report.get("auroc_vs_replay") or {}).get(k)] for k, v in report["rejected_by"].items()]))
        if report.get("by_proposal"):
            out.append(_table(["proposal", "judged", "accepted"],
                              [[k, v.get("judged"), v.get("accepted")] for k, v in report["by_proposal"].items()]))
        out.append(_scalars(report))
    return "".join(out)


def section_depth(run: Run) -> str | None:
    metrics = run.stage_json("depth", "depth_metrics.json")
    if not metrics:
        return None
    out = _scalars({k: v for k, v in metrics.items() if k not in ("overall", "episodes")})
    if metrics.get("overall"):
        out += _table(["metric (all estimated pixels)", "value"], [[k, v] for k, v in metrics["overall"].items()])
    per = metrics.get("episodes") or {}
    if per:
        rows = [[eid, *[(e.get("overall") or {}).get(k) for k in ("absrel", "rmse_m", "delta1")]]
                for eid, e in list(per.items())[:20]]
        out += _table(["episode", "AbsRel", "RMSE (m)", "delta1"], rows)
    return out


def section_qa(run: Run) -> str | None:
    qa_dir = run.path("qa")
    summary = _read_json(fileio.join(qa_dir, "summary.json"))
    if not summary:
        return None
    out = _table(["figure", "value"], [[k, summary.get(k)] for k in ("num_samples", "num_qa", "skipped_total")])
    if summary.get("qa_per_family"):
        out += _img(plots.bars(summary["qa_per_family"], "questions per family", "questions"), "qa per family")
    samples = _qa_samples(qa_dir, summary)
    out += '<div class="row">' + "".join(_img(png, "QA sample") for png in samples) + "</div>" if samples else \
        _note("No QA sample with an RGB frame to draw.")
    return out


def _qa_samples(qa_dir: str, summary: dict[str, Any]) -> list[bytes]:
    names = [s["name"] for s in summary.get("shards", []) if "name" in s] or \
        sorted(fileio.name(p) for p in fileio.listdir(qa_dir) if p.endswith(".tar"))
    if not names:
        return []
    grouped: dict[str, dict[str, bytes]] = defaultdict(dict)
    with fileio.open_file(fileio.join(qa_dir, names[0])) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                key, _, ext = member.name.partition(".")
                if ext in ("json", "rgb.png", "rgb.jpg"):
                    grouped[key][ext] = tar.extractfile(member).read()
    pictures, families = [], set()
    for key, files in grouped.items():
        rgb = files.get("rgb.png") or files.get("rgb.jpg")
        if not rgb or "json" not in files:
            continue
        record = json.loads(files["json"])
        for qa in record.get("qa", []):
            if qa.get("family") in families or not qa.get("object_ids"):
                continue
            families.add(qa.get("family"))
            pictures.append(plots.qa_sample(rgb, record, qa))
            break
        if len(pictures) >= MAX_QA_SAMPLES:
            break
    return pictures


def _shard_dirs(run: Run) -> list[str]:
    shards = run.path(run.manifest.get("shards_dir", "shards"))
    return sorted(d for d in fileio.listdir(shards) if fileio.exists(fileio.join(d, "meta", "info.json"))) \
        if fileio.is_dir(shards) else []


def section_provenance(run: Run) -> str | None:
    report = run.report("write_lerobot") or {}
    per_shard = []
    for shard in _shard_dirs(run):
        prov = _read_json(fileio.join(shard, "meta", "wmsynth_provenance.json")) or {}
        kinds = Counter(e.get("provenance", "?") for e in prov.get("episodes", []))
        per_shard.append((fileio.name(shard), kinds))
    totals = report.get("episodes_by_provenance") or dict(sum((k for _, k in per_shard), Counter()))
    if not totals and not per_shard:
        return None
    out = _img(plots.bars(totals, "episodes written, by provenance"), "provenance") if totals else ""
    kinds = sorted({k for _, c in per_shard for k in c})
    if per_shard:
        out += _table(["shard", *kinds], [[name, *[c.get(k, 0) for k in kinds]] for name, c in per_shard])
    return out


SECTIONS: list[tuple[str, str, Callable[[Run], str | None]]] = [
    ("overview", "Run", section_overview),
    ("stages", "Stages: counts, timings and fates", section_stages),
    ("training", "World model training", section_training),
    ("evaluation", "World model evaluation (held-out episodes)", section_evaluation),
    ("pseudo-labels", "Pseudo-labels (label_actions)", section_pseudo_labels),
    ("evaluators", "Evaluator read-out (train_evaluators)", section_evaluators),
    ("filter", "Filter: evaluator scores and acceptance", section_filter),
    ("depth", "Depth metrics", section_depth),
    ("qa", "Spatial QA", section_qa),
    ("provenance", "Episodes by provenance", section_provenance),
]


def build_html(run_dir: str) -> str:
    run = Run(run_dir)
    parts, nav = [], []
    for anchor, title, build in SECTIONS:
        try:
            body = build(run)
        except Exception as exc:  # one unreadable part must not cost the rest of the page
            logger.warning("report: section %r failed: %s", title, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
            body = _note(f"This section could not be built: {type(exc).__name__}: {exc}")
        nav.append(f'<a href="#{anchor}">{html.escape(title.split(":")[0])}</a>')
        parts.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>'
                     + (body if body is not None else _note("Not in this run.")))
    title = f"wmsynth run report: {fileio.name(run.run_dir)}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><nav>{''.join(nav)}</nav>"
            + "".join(parts) + "</body></html>")


def write_report(run_dir: str) -> str:
    """Build ``<run_dir>/report.html`` (one atomic write); its path."""
    page = build_html(run_dir)
    if len(page) > MAX_BYTES:
        logger.warning("report: %.1f MB, over the %d MB aim", len(page) / 1e6, MAX_BYTES // 1_000_000)
    path = fileio.join(fileio.normalize(run_dir), REPORT_FILE)
    fileio.atomic_write_text(path, page)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory (local path or URL)")


def command(args: argparse.Namespace) -> int:
    if not fileio.exists(fileio.join(args.run_dir, MANIFEST)) and not fileio.is_dir(fileio.join(args.run_dir,
                                                                                                "stages")):
        print(f"error: {args.run_dir} is not a run directory (no manifest.json, no stages/)", file=sys.stderr)
        return 2
    path = write_report(args.run_dir)
    print(f"report: {path}")
    return 0
