"""stages.yaml validation: every error at once, each with its YAML path; overrides; the shipped YAML loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "stages.yaml"
    path.write_text(text)
    return path


def test_every_shipped_yaml_validates(tmp_path):
    shipped = sorted(REPO.glob("*.yaml")) + sorted((REPO / "configs").glob("*.yaml"))
    assert shipped, "no shipped stages.yaml found"
    for path in shipped:
        config = load_config(path, output_dir=str(tmp_path / path.stem))
        assert config.stages, path


def test_reports_every_error_with_its_yaml_path(tmp_path):
    path = _write(tmp_path, f"""
output_dir: {tmp_path}/run
seed: "zero"
colour: blue
stages:
  - name: generate_tabletop
    params: {{num_episodes: "many", bogus_param: 1}}
  - name: no_such_stage
  - name: write_lerobot
    params: {{episodes_per_shard: 0}}
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = "\n".join(info.value.errors)
    assert "seed: expected an integer" in errors
    assert "colour: unknown key" in errors
    assert "stages[0].params.num_episodes" in errors
    assert "stages[0].params.bogus_param" in errors
    assert "stages[1].name: unknown stage 'no_such_stage'" in errors
    assert "stages[2].params.episodes_per_shard" in errors
    assert len(info.value.errors) >= 6


def test_missing_required_keys(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "seed: 1\n"))
    assert {"output_dir: missing", "stages: missing"} <= set(info.value.errors)


def test_malformed_yaml_names_line(tmp_path):
    path = _write(tmp_path, "output_dir: x\nstages:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "malformed YAML" in info.value.errors[0] and "line" in info.value.errors[0]
    assert str(path) in str(info.value)


def test_first_stage_must_be_a_source(tmp_path):
    raw = {"output_dir": str(tmp_path / "r"), "stages": [{"name": "depth"}, {"name": "write_lerobot"}]}
    with pytest.raises(ConfigError, match=r"stages\[0\]: the first stage must be a source"):
        parse_config(raw)


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    raw = {"output_dir": str(blocker / "run"), "stages": [{"name": "generate_tabletop"}]}
    with pytest.raises(ConfigError, match="output_dir: .* is not a directory"):
        parse_config(raw)


def test_overrides_apply_and_are_checked(tmp_path):
    raw = {"output_dir": str(tmp_path / "r"), "stages": [{"name": "generate_tabletop", "params": {}},
                                                          {"name": "write_lerobot"}]}
    config = parse_config(raw, ["generate_tabletop.num_episodes=3", "seed=7", "write_lerobot.episodes_per_shard=2"])
    assert config.seed == 7
    assert config.stage("generate_tabletop").params.num_episodes == 3
    assert config.stage("write_lerobot").params.episodes_per_shard == 2
    with pytest.raises(ConfigError) as info:
        parse_config(raw, ["nostage.x=1", "generate_tabletop.num_episodes=-1", "novalue"])
    errors = "\n".join(info.value.errors)
    assert "stage 'nostage' appears 0 times" in errors
    assert "stages[0].params.num_episodes" in errors
    assert "expected KEY=VALUE" in errors


def test_cli_validate_exit_codes(tmp_path, capsys):
    good = _write(tmp_path, yaml.safe_dump({"output_dir": str(tmp_path / "r"),
                                            "stages": [{"name": "generate_tabletop"}]}))
    assert main(["validate", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: x\nstages:\n  - name: nope\n  - name: generate_tabletop\n    params: {x: 1}\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "stages[0].name: unknown stage 'nope'" in err and "stages[1].params.x" in err


def test_cli_lists_stages(capsys):
    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    for name in ("generate_tabletop", "ingest_lerobot", "ingest_videos", "depth", "write_lerobot"):
        assert name in out


def test_relative_output_dir_becomes_absolute(tmp_path, monkeypatch):
    # Episode paths in rows live under the run dir, and Ray workers (Ray Train's in particular) run elsewhere.
    monkeypatch.chdir(tmp_path)
    config = parse_config({"output_dir": "runs/demo", "stages": [{"name": "generate_tabletop"}]})
    assert config.output_dir == str(tmp_path / "runs" / "demo")


def test_urls_are_kept_and_unknown_schemes_refused(tmp_path):
    stages = [{"name": "generate_tabletop"}]
    assert parse_config({"output_dir": "s3://bucket/runs/demo/", "stages": stages}).output_dir == \
        "s3://bucket/runs/demo"
    assert parse_config({"output_dir": f"file://{tmp_path}/r", "stages": stages}).output_dir == f"{tmp_path}/r"
    with pytest.raises(ConfigError, match="output_dir: unknown URL scheme 'nosuch'"):
        parse_config({"output_dir": "nosuch://bucket/run", "stages": stages})
    with pytest.raises(ConfigError, match="keep_intermediates: expected true or false"):
        parse_config({"output_dir": str(tmp_path), "keep_intermediates": "no", "stages": stages})


def test_sources_come_before_other_stages(tmp_path):
    raw = {"output_dir": str(tmp_path / "r"), "stages": [{"name": "generate_tabletop"}, {"name": "depth"},
                                                          {"name": "generate_tabletop"}]}
    with pytest.raises(ConfigError, match=r"stages\[2\]: source 'generate_tabletop' must come before"):
        parse_config(raw)


def test_data_checks_report_every_problem_with_its_path(tmp_path, capsys):
    from pipeline.checks import check_run

    blocker = tmp_path / "file"
    blocker.write_text("x")
    raw = {"output_dir": str(tmp_path / "r"), "stages": [{"name": "generate_tabletop"}, {"name": "write_lerobot"}]}
    assert check_run(parse_config(raw)) == []
    config = parse_config(raw)
    config.output_dir = str(blocker / "run")
    assert [e.split(":")[0] for e in check_run(config)] == ["output_dir"]


def test_cli_validate_and_verbosity_flags(tmp_path, capsys):
    good = _write(tmp_path, yaml.safe_dump({"output_dir": str(tmp_path / "r"),
                                            "stages": [{"name": "generate_tabletop"}]}))
    assert main(["validate", str(good), "-q"]) == 0
    assert main(["-v", "validate", str(good), "--no-data"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("wmsynth ")


@pytest.mark.parametrize("argv", [["--help"], *[[name, "--help"] for name in
                                               ("validate", "run", "stages", "verify", "merge", "publish", "report",
                                                "view", "eval-policy")]])
def test_every_help_text_renders(argv, capsys):
    """argparse formats help strings with %: a stray one breaks --help for the whole command line."""
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0 and "usage: wmsynth" in capsys.readouterr().out
