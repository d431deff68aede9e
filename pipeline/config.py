"""stages.yaml: loading, ``--set`` overrides and whole-file validation before Ray starts.

    output_dir: runs/demo        # the run directory (stage outputs, shards, manifest.json)
    ray_address: ""              # "" = start a local Ray; "auto" or ray://host:port = join a cluster (RAY_ADDRESS wins)
    seed: 0
    keep_intermediates: true     # false: delete the stages' episode files once every episode reached its fate
    stages:
      - name: generate_tabletop
        params: {num_episodes: 24}
      - name: write_lerobot
        params: {episodes_per_shard: 8}

Every problem is collected with its YAML path (``stages[1].params.num_episodes``) and reported at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from episodes import io as fileio
from pipeline.stage import REGISTRY, StageParams


class ConfigError(Exception):
    """The run configuration has problems; ``errors`` lists each as 'yaml.path: message'."""

    def __init__(self, errors: list[str], source: str = "stages.yaml"):
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in errors))


@dataclass
class StageConfig:
    name: str
    params: StageParams


@dataclass
class RunConfig:
    output_dir: str  # an absolute local path or a URL (episodes.io)
    ray_address: str
    seed: int
    stages: list[StageConfig]
    source_file: str = ""
    keep_intermediates: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir, "ray_address": self.ray_address, "seed": self.seed,
                "keep_intermediates": self.keep_intermediates,
                "stages": [{"name": s.name, "params": s.params.model_dump(mode="json")} for s in self.stages]}

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)


_TOP_LEVEL = {"output_dir", "ray_address", "seed", "keep_intermediates", "stages"}


def _format_loc(prefix: str, loc: tuple) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def apply_overrides(raw: dict[str, Any], overrides: list[str], errors: list[str]) -> None:
    """``--set stage.param=value`` (or ``stage.a.b=value``, or a top-level ``seed=1``); values are parsed as YAML."""
    for item in overrides:
        key, sep, value_text = item.partition("=")
        if not sep or not key:
            errors.append(f"--set {item!r}: expected KEY=VALUE, e.g. generate_tabletop.num_episodes=4")
            continue
        try:
            value = yaml.safe_load(value_text)
        except yaml.YAMLError:
            value = value_text
        parts = key.split(".")
        if len(parts) == 1:
            if parts[0] not in _TOP_LEVEL - {"stages"}:
                errors.append(f"--set {item!r}: unknown top-level key {parts[0]!r}")
                continue
            raw[parts[0]] = value
            continue
        matches = [s for s in raw.get("stages") or [] if isinstance(s, dict) and s.get("name") == parts[0]]
        if len(matches) != 1:
            errors.append(f"--set {item!r}: stage {parts[0]!r} appears {len(matches)} times in stages")
            continue
        target = matches[0].setdefault("params", {}) or {}
        matches[0]["params"] = target
        for part in parts[1:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value


def _check_output_dir(output_dir: Any, errors: list[str]) -> str | None:
    if not isinstance(output_dir, str) or not output_dir:
        errors.append(f"output_dir: expected a directory path or URL (s3://bucket/run), got {output_dir!r}")
        return None
    if fileio.is_url(output_dir):
        scheme = output_dir.split("://", 1)[0]
        import fsspec

        if scheme not in fsspec.available_protocols():
            errors.append(f"output_dir: unknown URL scheme {scheme!r} (use s3://, gs://, file://, memory:// or a "
                          f"local path)")
            return None
        if not fileio.is_local(output_dir):
            return fileio.normalize(output_dir)
    # Absolute from here on: rows carry episode paths under it, and Ray workers do not share the driver's working
    # directory (Ray Train's workers run in their own trial directory).
    path = fileio.local_path(output_dir).expanduser().absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        errors.append(f"output_dir: {probe} exists and is not a directory")
    elif not os.access(probe, os.W_OK | os.X_OK):
        errors.append(f"output_dir: {path} cannot be created or written ({probe} is not writable)")
    return str(path)


def parse_config(raw: Any, overrides: list[str] | None = None, source: str = "stages.yaml",
                 output_dir: str | None = None) -> RunConfig:
    import pipeline.stages  # noqa: F401  (registers every stage)

    errors: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError([f"<root>: expected a mapping with keys {sorted(_TOP_LEVEL)}, got {type(raw).__name__}"],
                          source)
    apply_overrides(raw, overrides or [], errors)
    if output_dir is not None:
        raw["output_dir"] = output_dir
    for key in sorted(set(raw) - _TOP_LEVEL):
        errors.append(f"{key}: unknown key (expected one of {sorted(_TOP_LEVEL)})")
    for key in ("output_dir", "stages"):
        if key not in raw:
            errors.append(f"{key}: missing")
    out = _check_output_dir(raw.get("output_dir"), errors) if "output_dir" in raw else None
    ray_address = raw.get("ray_address") or ""
    if not isinstance(ray_address, str):
        errors.append(f"ray_address: expected a string ('' for local, 'auto' for a cluster), got {ray_address!r}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        errors.append(f"seed: expected an integer, got {seed!r}")
    keep = raw.get("keep_intermediates", True)
    if not isinstance(keep, bool):
        errors.append(f"keep_intermediates: expected true or false, got {keep!r}")

    stages: list[StageConfig] = []
    raw_stages = raw.get("stages")
    if "stages" in raw and (not isinstance(raw_stages, list) or not raw_stages):
        errors.append("stages: expected a non-empty list of {name, params}")
        raw_stages = []
    for i, entry in enumerate(raw_stages or []):
        where = f"stages[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            errors.append(f"{where}: expected a mapping with 'name' and optional 'params'")
            continue
        for key in sorted(set(entry) - {"name", "params"}):
            errors.append(f"{where}.{key}: unknown key (expected 'name' and 'params')")
        name = entry["name"]
        spec = REGISTRY.get(name)
        if spec is None:
            errors.append(f"{where}.name: unknown stage {name!r} (known: {', '.join(sorted(REGISTRY))})")
            continue
        params_raw = entry.get("params") or {}
        if not isinstance(params_raw, dict):
            errors.append(f"{where}.params: expected a mapping, got {type(params_raw).__name__}")
            continue
        try:
            params = spec.params_model.model_validate(params_raw)
        except ValidationError as exc:
            for err in exc.errors():
                errors.append(f"{_format_loc(where + '.params', err['loc'])}: {err['msg']}")
            continue
        stages.append(StageConfig(name=name, params=params))

    kinds = [REGISTRY[s.name].kind for s in stages]
    if stages and kinds[0] != "source":
        errors.append(f"stages[0]: the first stage must be a source ({_names('source')}), got {stages[0].name!r}")
    for i, kind in enumerate(kinds):
        if kind == "source" and i > 0 and kinds[i - 1] != "source":
            errors.append(f"stages[{i}]: source {stages[i].name!r} must come before every other stage")
    if errors:
        raise ConfigError(errors, source)
    return RunConfig(output_dir=out, ray_address=ray_address, seed=seed, stages=stages, source_file=source,
                     keep_intermediates=keep)


def _names(kind: str) -> str:
    return ", ".join(sorted(n for n, s in REGISTRY.items() if s.kind == kind))


def load_config(path: str | Path, overrides: list[str] | None = None, output_dir: str | None = None) -> RunConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"<file>: cannot read: {exc.strerror}"], str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<file>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: malformed YAML: {problem}"], str(path)) from None
    return parse_config(raw, overrides, source=str(path), output_dir=output_dir)
