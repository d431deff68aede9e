"""The ``wmsynth`` command line: validate, run and list stages.

    wmsynth validate stages.yaml [--set stage.param=value ...]
    wmsynth run stages.yaml [--set stage.param=value ...] [--output DIR] [--only STAGE] [--resume]
    wmsynth stages
    wmsynth verify RUN_DIR
    wmsynth merge RUN [RUN ...] [--out DIR]
    wmsynth publish RUN --to hf://datasets/ORG/NAME | s3://... | DIR [--dry-run]
    wmsynth report RUN
    wmsynth view RUN --episode ID [--out PATH.mp4|PATH.gif]
    wmsynth eval-policy CHECKPOINT [--task push] [--episodes 50] [--seed 1000]

Exit codes: 0 success, 1 the run failed, 2 the configuration is invalid (every error printed with its YAML path).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import typing

from pydantic.fields import FieldInfo


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("wmsynth")
    except metadata.PackageNotFoundError:
        return "unknown"


# Subcommands that live with their code: name -> (module with add_arguments(parser) and command(args) -> int, help)
TOOLS = {
    "report": ("pipeline.report", "write a run's report.html: stage counts, timings and fates, training and "
                                  "evaluation plots, labelled rollouts, QA samples, filter and provenance"),
    "view": ("pipeline.view", "write one episode of a run (real, pseudo-labelled or synthetic) as an mp4/GIF: RGB, "
                              "colour-mapped depth, action bars, provenance"),
    "merge": ("pipeline.merge", "merge runs' LeRobot shards into one dataset per schema (lerobot's aggregation), with "
                                "every episode's provenance and source; prints the lerobot-train command"),
    "publish": ("pipeline.publish", "publish a finished run's merged LeRobot dataset(s) and QA set, with dataset "
                                    "cards, to hf://datasets/ORG/NAME, an fsspec URL or a directory"),
    "eval-policy": ("pipeline.policy_eval", "run a lerobot policy checkpoint in the embedded simulator: success rate "
                                            "with a 95%% confidence interval per task family, and GIFs"),
}


def _verbosity() -> argparse.ArgumentParser:
    """-v / -q, accepted before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging (debug)")
    common.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS, help="less logging (warnings)")
    return common


def _parser() -> argparse.ArgumentParser:
    common = _verbosity()
    parser = argparse.ArgumentParser(prog="wmsynth", description="World-model data synthesis for VLA policies.",
                                     parents=[common])
    parser.add_argument("--version", action="version", version=f"wmsynth {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("validate", "check a stages.yaml and its data without starting Ray"),
                            ("run", "run the pipeline of a stages.yaml on Ray")):
        cmd = sub.add_parser(name, help=help_text, parents=[common])
        cmd.add_argument("config", help="path to stages.yaml")
        cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.PARAM=VALUE",
                         help="override a param (value parsed as YAML); repeatable")
        cmd.add_argument("--output", help="run directory (overrides output_dir)")
        if name == "run":
            cmd.add_argument("--only", metavar="STAGE", help="re-run one stage from the persisted output before it")
            cmd.add_argument("--resume", action="store_true", help="continue a killed run: skip finished work")
        if name == "validate":
            cmd.add_argument("--no-data", action="store_true", help="check the file only (no storage or data access)")
    sub.add_parser("stages", help="list the registered stages and their params", parents=[common])
    verify = sub.add_parser("verify", help="load a run's shards with lerobot and compare them with their episodes",
                            parents=[common])
    verify.add_argument("run_dir")
    verify.add_argument("--frames-per-episode", type=int, default=6)
    for name, (module, help_text) in TOOLS.items():
        importlib.import_module(module).add_arguments(sub.add_parser(name, help=help_text, parents=[common]))
    return parser


def _type_name(annotation: typing.Any) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    return text or str(annotation).replace("typing.", "").replace("pipeline.stage.", "")


def _print_stages() -> None:
    import pipeline.stages  # noqa: F401
    from pipeline.stage import REGISTRY

    for name, spec in sorted(REGISTRY.items()):
        print(f"{name}  [{spec.kind}]  {spec.doc}")
        for field_name, info in spec.params_model.model_fields.items():
            info: FieldInfo
            default = "required" if info.is_required() else f"default {info.get_default(call_default_factory=True)!r}"
            desc = f"  {info.description}" if info.description else ""
            print(f"    {field_name}: {_type_name(info.annotation)} ({default}){desc}")
        print()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.DEBUG if getattr(args, "verbose", 0) else logging.WARNING if getattr(args, "quiet", 0) \
        else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:  # the console keeps -q even when run.log records INFO
        handler.setLevel(level)
    for noisy in ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if args.command == "stages":
        _print_stages()
        return 0
    if args.command in TOOLS:
        return importlib.import_module(TOOLS[args.command][0]).command(args)

    if args.command == "verify":
        from episodes.io import join
        from pipeline.verify import verify_run

        report = verify_run(args.run_dir, frames_per_episode=args.frames_per_episode)
        print(json.dumps(report, indent=2))
        print(f"verify: {'OK' if report['ok'] else 'FAILED'}: {report['episodes']} episodes in {report['shards']} "
              f"LeRobot shards under {join(args.run_dir, 'shards')} (report: {join(args.run_dir, 'verify.json')})")
        return 0 if report["ok"] else 1

    from pipeline.config import ConfigError, load_config

    from pipeline.checks import check_run

    try:
        config = load_config(args.config, args.overrides, output_dir=args.output)
        if args.command == "validate" and not args.no_data:
            problems = check_run(config)
            if problems:
                raise ConfigError(problems, args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"{args.config}: OK ({len(config.stages)} stages: {', '.join(s.name for s in config.stages)})")
        return 0

    from pipeline.run import RunError, run

    try:
        manifest = run(config, only=args.only, resume=args.resume)
    except ConfigError as exc:  # the data checks, run before any work
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary(manifest))
    return 0 if manifest["counts"].get("quarantined", 0) < manifest["counts"]["total"] else 1


MAX_LISTED = 12  # filtered / quarantined episodes named in the closing summary


def summary(manifest: dict) -> str:
    counts = {k: v for k, v in manifest["counts"].items() if k != "total"}
    lines = [
        "",
        f"wmsynth run finished: {manifest['counts']['total']} episodes -> {json.dumps(counts)}",
        *(f"  stage {t['stage']:<20} {t['seconds']:8.1f} s  {json.dumps(t['counts'])}"
          + ("  (resumed)" if t["resumed"] else "") for t in manifest["stages"]),
    ]
    for t in manifest["stages"]:  # what a stage reports as worth a look (e.g. synthesize_qa made no QA pair)
        lines.extend(f"  warning: stage {t['stage']}: {w}" for w in (t.get("report") or {}).get("warnings", []))
    dropped = [e for e in manifest["episodes"] if e["fate"] in ("quarantined", "filtered")]
    for entry in dropped[:MAX_LISTED]:
        lines.append(f"  {entry['fate']}: {entry['episode_id']} at {entry['stage']}: {entry.get('reason', '')}")
    if len(dropped) > MAX_LISTED:
        lines.append(f"  ... and {len(dropped) - MAX_LISTED} more filtered or quarantined (reasons in the manifest)")
    if manifest["shards"]:
        written = next((t["report"].get("episodes_by_provenance") for t in manifest["stages"]
                        if isinstance(t.get("report"), dict) and "episodes_by_provenance" in t["report"]), None)
        lines.append(f"shards ({len(manifest['shards'])}): {manifest['run_dir']}/{manifest['shards_dir']}"
                     + (f"  episodes by provenance: {json.dumps(written)}" if written else ""))
    lines.append(f"manifest: {manifest['run_dir']}/manifest.json   log: {manifest['run_dir']}/run.log")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
