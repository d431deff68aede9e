"""Hugging Face dataset cards (``README.md``) for what a run publishes: its merged LeRobot dataset(s) and its QA set.

A card is YAML front matter the Hub reads (``license``, ``task_categories``, ``tags``, ``size_categories``,
``configs`` pointing at the data files) and a body that says what made the data and how good the run measured it to be.
Every figure is read from the run's files (``manifest.json`` with each stage's report, ``config.resolved.yaml``, the
dataset's ``meta/info.json`` and provenance, the QA set's ``summary.json``); nothing is typed in by hand, and a figure
the run does not have is left out. The text depends only on those files (no clock), so publishing the same run twice
makes byte-identical cards and uploads nothing new.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from episodes import io as fileio

# Licence identifiers the Hub accepts in a card's ``license:`` field, in the order of the Hub's table:
# https://huggingface.co/docs/hub/repositories-licenses (huggingface/hub-docs docs/hub/repositories-licenses.md,
# commit 242f4a1eeb867daf4ac3f44026a5df4a68908a3d).
HUB_LICENSES = (
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
    "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0",
    "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1",
    "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research",
    "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openmdw-1.0",
    "openmdw-1.1", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr",
    "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2", "llama3", "llama3.1", "llama3.2",
    "llama3.3", "llama4", "grok2-community", "gemma", "unknown", "other",
)
# The Hub's size buckets (number of rows: frames of a LeRobot dataset, samples of a webdataset).
_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))
# Headline figures of the stage reports (``manifest.json`` stages[].report): (stage, key, what it measures).
QUALITY_FIGURES = (
    ("evaluate_world_model", "probe_r2", "linear-probe R2, latent action -> true action (held-out episodes)"),
    ("evaluate_world_model", "head_r2", "alignment-head R2, latent action -> true action (held-out episodes)"),
    ("evaluate_world_model", "psnr_gain_1step_db", "1-step rollout PSNR gain over copy-last-frame, moving pixels (dB)"),
    ("evaluate_world_model", "psnr_gain_8step_db", "8-step rollout PSNR gain over copy-last-frame, moving pixels (dB)"),
    ("evaluate_world_model", "action_sensitivity_db", "PSNR of true-action over shuffled-action rollouts (dB)"),
    ("label_actions", "pseudo_label_r2", "pseudo-label R2 against the hidden true actions"),
    ("label_actions", "episodes_labelled", "episodes pseudo-labelled"),
    ("label_actions", "confidence_mean", "mean per-step pseudo-label confidence"),
    ("train_evaluators", "readout_ee_error_cm", "evaluator read-out end-effector error, held-out (cm)"),
    ("train_evaluators", "progress_value_order_corr", "evaluator progress value-order correlation, held-out"),
    ("filter", "judged", "synthetic trajectories judged"),
    ("filter", "accepted", "synthetic trajectories accepted"),
    ("filter", "precision_vs_replay", "filter precision against simulator replay"),
    ("filter", "recall_vs_replay", "filter recall against simulator replay"),
    ("filter", "replay_success_fraction", "fraction of judged trajectories that reach their subgoal in replay"),
)
_SOURCE_STAGES = ("generate_tabletop", "ingest_lerobot", "ingest_videos")


def license_problem(license_id: Any) -> str | None:
    """None when ``license_id`` is a licence identifier the Hub accepts, else what is wrong and what to use."""
    if isinstance(license_id, str) and license_id in HUB_LICENSES:
        return None
    close = [h for h in HUB_LICENSES if isinstance(license_id, str) and h == license_id.strip().lower()]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"{license_id!r} is not a Hugging Face Hub licence identifier{hint}; use one of e.g. apache-2.0, mit, "
            f"cc-by-4.0, cc-by-nc-4.0, other (all: https://huggingface.co/docs/hub/repositories-licenses)")


def size_category(rows: int) -> str:
    for bound, name in _SIZE_CATEGORIES:
        if rows < bound:
            return name
    return "n>1B"


@dataclass
class RunFacts:
    """What a run's files say about how it was made and how good it is (read once, used by every card)."""

    run_dir: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    depth_metrics: dict[str, Any] | None = None
    qa_summary: dict[str, Any] | None = None
    stage_reports: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def read(cls, run_dir: str, manifest: dict[str, Any], config: dict[str, Any]) -> RunFacts:
        facts = cls(run_dir, manifest, config)
        for entry in manifest.get("stages", []):
            if isinstance(entry.get("report"), dict):
                facts.stage_reports[entry["stage"]] = entry["report"]
            if entry.get("stage") == "depth":
                facts.depth_metrics = _read_json(fileio.join(run_dir, entry.get("dir", ""), "depth_metrics.json"))
        return facts

    def stage_params(self, name: str) -> dict[str, Any] | None:
        for stage in self.config.get("stages", []):
            if stage.get("name") == name:
                return stage.get("params") or {}
        return None


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        value = json.loads(fileio.read_text(path))
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# -- the two cards ---------------------------------------------------------------------------------------------------


def lerobot_card(repo_id: str, license_id: str, info: dict[str, Any], provenance: dict[str, Any],
                 facts: RunFacts) -> str:
    """The card of one merged LeRobot dataset (``info``: its meta/info.json, ``provenance``: its wmsynth file)."""
    by_source = {kind: len(indices) for kind, indices in provenance.get("episodes_by_source", {}).items() if indices}
    front = {"license": license_id, "task_categories": ["robotics"],
             "tags": ["LeRobot", "wmsynth", "rgb-d"] + (["synthetic"] if by_source.get("synthetic") else []),
             "size_categories": [size_category(int(info.get("total_frames", 0)))],
             "configs": [{"config_name": "default", "data_files": "data/*/*.parquet"}]}
    lines = [f"# {repo_id}", "",
             f"A [LeRobot](https://github.com/huggingface/lerobot) {info.get('codebase_version', '')} dataset of "
             f"{info.get('total_episodes')} robot episodes ({info.get('total_frames')} frames at {info.get('fps')} fps, "
             f"robot `{info.get('robot_type')}`) made by wmsynth. Episodes by provenance: "
             + ", ".join(f"{kind} {n}" for kind, n in sorted(by_source.items())) + ".", "",
             "```python", "from lerobot.datasets.lerobot_dataset import LeRobotDataset",
             f'ds = LeRobotDataset("{repo_id}", depth_output_unit="m")', "```", "",
             "`meta/wmsynth_provenance.json` maps every `episode_index` to its wmsynth episode id and provenance "
             "(`real`, `pseudo_labelled` or `synthetic`: parent, recipe and evaluator scores); the episode table's "
             f"`{provenance.get('source_column', 'wmsynth/source')}` column selects episodes by provenance.", ""]
    lines += _schema_section(info)
    lines += _made_by_section(facts, license_id)
    lines += _quality_section(facts, by_source)
    return _render(front, lines)


def qa_card(repo_id: str, license_id: str, summary: dict[str, Any], files: list[str], facts: RunFacts) -> str:
    """The card of the spatial-QA webdataset set (``summary``: its summary.json, ``files``: its file names)."""
    front = {"license": license_id, "task_categories": ["visual-question-answering"],
             "tags": ["wmsynth", "webdataset", "spatial-reasoning", "rgb-d", "robotics"],
             "size_categories": [size_category(int(summary.get("num_samples", 0)))],
             "configs": [{"config_name": "default", "data_files": "qa-*.tar", "default": True}]
             + ([{"config_name": "index", "data_files": "index.parquet"}] if "index.parquet" in files else [])}
    lines = [f"# {repo_id}", "",
             f"Metric spatial question-answer pairs over RGB-D robot frames, made by wmsynth: "
             f"{summary.get('num_qa')} QA pairs on {summary.get('num_samples')} frames (webdataset samples), "
             f"{len(summary.get('families', []))} question families.", "",
             "```python", "import webdataset as wds",
             'ds = wds.WebDataset("qa-000000.tar", shardshuffle=False).decode("pil")', "```", "",
             "Each sample `<episode>__<camera>__<frame>` holds `rgb.png` (or `.jpg`), `depth.png` (16-bit, millimetres, "
             "0 = no measurement) and a JSON record with the camera intrinsics, `cam_to_world`, the measured objects "
             "and the QA records; `index.parquet` has one row per QA pair.", ""]
    per_family = summary.get("qa_per_family") or {}
    if per_family:
        lines += ["## QA pairs per family", "", "| family | QA pairs |", "|---|---|"]
        lines += [f"| {family} | {n} |" for family, n in sorted(per_family.items())] + [""]
    if summary.get("skipped"):
        lines += ["Questions the geometry could not support were not emitted: "
                  + ", ".join(f"{reason} {n}" for reason, n in sorted(summary["skipped"].items())) + ".", ""]
    lines += _made_by_section(facts, license_id)
    lines += _quality_section(facts, {})
    return _render(front, lines)


# -- sections --------------------------------------------------------------------------------------------------------


def _schema_section(info: dict[str, Any]) -> list[str]:
    lines = ["## Schema", "", "| feature | dtype | shape | names / notes |", "|---|---|---|---|"]
    for key, feature in info.get("features", {}).items():
        notes = feature.get("names")
        extra = feature.get("info") or {}
        if extra.get("is_depth_map"):
            notes = f"depth map ({extra.get('video.codec')}, lossless codes; read back in mm by default)"
        elif feature.get("dtype") == "video":
            notes = f"{extra.get('video.codec')} video"
        shape = "x".join(str(s) for s in feature.get("shape", []))
        lines.append(f"| `{key}` | {feature.get('dtype')} | {shape} | {_short(notes)} |")
    return lines + [""]


def _made_by_section(facts: RunFacts, license_id: str) -> list[str]:
    manifest, versions = facts.manifest, facts.manifest.get("versions", {})
    lines = ["## How it was made", ""]
    made_by = f"wmsynth {versions.get('wmsynth') or 'unknown version'}"
    if versions.get("git_commit"):
        made_by += f" (git commit `{versions['git_commit']}`)"
    if versions.get("lerobot"):
        made_by += f", lerobot {versions['lerobot']}"
    lines.append(f"- Made by {made_by}.")
    if manifest.get("started_at") or manifest.get("finished_at"):
        lines.append(f"- Run from {manifest.get('started_at')} to {manifest.get('finished_at')}"
                     + (f": `{manifest['command']}`." if manifest.get("command") else "."))
    lines.append(f"- Seed {facts.config.get('seed', manifest.get('seed'))} (each stage derives its own from it); "
                 "every episode's seed is in its provenance entry.")
    counts = manifest.get("counts") or {}
    if counts:
        lines.append("- Episodes by fate: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".")
    lines.append(f"- Licence: `{license_id}`.")
    lines += ["", "### Sources", ""]
    for name in _SOURCE_STAGES:
        params = facts.stage_params(name)
        if params is not None:
            lines.append(f"- `{name}`: {_source_text(name, params, license_id)}")
    depth = facts.stage_params("depth")
    if depth is not None:
        model = f", model `{depth['model']}`" if depth.get("model") else ""
        revision = depth.get("revision") or (facts.depth_metrics or {}).get("revision")
        lines.append(f"- Depth: backend `{depth.get('backend')}`{model}"
                     + (f", model revision `{revision}`" if revision else "") + ".")
    lines += ["", "### Stages and their parameters", "", "| # | stage | params |", "|---|---|---|"]
    for i, stage in enumerate(facts.config.get("stages", [])):
        lines.append(f"| {i} | `{stage.get('name')}` | `{json.dumps(stage.get('params') or {}, sort_keys=True)}` |")
    return lines + [""]


def _source_text(name: str, params: dict[str, Any], license_id: str) -> str:
    if name == "generate_tabletop":
        return (f"{params.get('num_episodes')} episodes from wmsynth's embedded pybullet tabletop simulator (tasks "
                f"{', '.join(params.get('tasks') or [])}); generated data, licensed `{license_id}` with this dataset.")
    if name == "ingest_lerobot":
        where = params.get("repo_id") or params.get("root")
        return f"LeRobot dataset `{where}`; its licence is the source dataset's own (check its card)."
    return f"videos `{params.get('path')}`; their licence is the source's own (check it)."


def _quality_section(facts: RunFacts, by_source: dict[str, int]) -> list[str]:
    rows = [(stage, what, _fmt(facts.stage_reports[stage][key])) for stage, key, what in QUALITY_FIGURES
            if facts.stage_reports.get(stage, {}).get(key) is not None]
    overall = (facts.depth_metrics or {}).get("overall")
    if isinstance(overall, dict):
        rows += [("depth", f"estimated depth {k} against sensor depth", _fmt(v)) for k, v in sorted(overall.items())
                 if isinstance(v, (int, float))]
    for key, value in sorted((facts.qa_summary or {}).items()):
        if "accuracy" in key and isinstance(value, (int, float)):
            rows.append(("synthesize_qa", f"QA {key.replace('_', ' ')}", _fmt(value)))
    if not rows and not by_source:
        return []
    lines = ["## Quality measured by this run", "",
             "Read from the run's stage reports (`manifest.json`); figures a run did not measure are left out.", ""]
    if rows:
        lines += ["| stage | measure | value |", "|---|---|---|"]
        lines += [f"| `{stage}` | {what} | {value} |" for stage, what, value in rows] + [""]
    if by_source:
        lines += ["Episodes in this dataset by provenance: "
                  + ", ".join(f"{kind} {n}" for kind, n in sorted(by_source.items())) + ".", ""]
    return lines


# -- helpers ---------------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _short(value: Any, limit: int = 120) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value if value is not None else "")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _render(front: dict[str, Any], lines: list[str]) -> str:
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + "\n".join(lines).rstrip() + "\n"


def read_front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a card (as the Hub reads it)."""
    if not text.startswith("---\n"):
        return {}
    return yaml.safe_load(text[4:text.index("\n---\n", 4)]) or {}
