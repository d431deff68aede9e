"""The generate_tabletop source stage: params validation, parallel generation on Ray, resume, quarantine."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pybullet")

from episodes import Episode  # noqa: E402
from pipeline.execute import produce_one, run_source  # noqa: E402
from pipeline.stage import FILTERED, OK, QUARANTINED, REGISTRY, StageContext  # noqa: E402
from pipeline.stages.generate_tabletop import (  # noqa: E402
    GenerateTabletopParams,
    episode_id,
    episode_seed,
    generate_tabletop,
)
from pipeline.store import RunStore  # noqa: E402

TINY = {"image_size": 32, "max_steps": 40, "tasks": ["reach", "push"], "num_objects": (2, 3)}


def _ctx(tmp_path, resume: bool = False, seed: int = 0) -> StageContext:
    return StageContext(run_dir=str(tmp_path), stage_dir=str(tmp_path / "stages" / "00_generate_tabletop"),
                        stage="generate_tabletop", seed=seed, resume=resume, index=0)


def _run(params, ctx) -> list[dict]:
    """The stage as the runner runs it (one Ray task per episode)."""
    return sorted(run_source(REGISTRY["generate_tabletop"], params, ctx, RunStore(ctx.run_dir)),
                  key=lambda r: r["episode_id"])


def _one(index, params, ctx) -> dict:
    """One episode in this process, as a task would make it."""
    return produce_one({"episode_id": episode_id(index), "index": index}, generate_tabletop, params, ctx,
                       RunStore(ctx.run_dir))


def test_registered_as_source():
    spec = REGISTRY["generate_tabletop"]
    assert spec.kind == "source" and spec.params_model is GenerateTabletopParams and spec.doc


@pytest.mark.parametrize("bad, field", [
    ({"num_objects": (1, 3)}, "num_objects"),
    ({"num_objects": (5, 3)}, "num_objects"),
    ({"tasks": []}, "tasks"),
    ({"tasks": ["fly"]}, "tasks"),
    ({"cameras": ["front", "front"]}, "cameras"),
    ({"fps": 7.0}, "physics_hz"),
    ({"num_episodes": 0}, "num_episodes"),
    ({"image_size": 8}, "image_size"),
    ({"num_episode": 3}, "num_episode"),  # typo: unknown keys are errors
])
def test_params_reject_bad_values_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        GenerateTabletopParams(**bad)


def test_params_validated_through_the_config_loader(tmp_path):
    from pipeline.config import ConfigError, parse_config

    raw = {"output_dir": str(tmp_path), "stages": [{"name": "generate_tabletop",
                                                    "params": {"num_episodes": 2, "cameras": ["top", "wrist"]}}]}
    config = parse_config(raw)
    assert config.stages[0].params.sim_config().cameras == ("top", "wrist")
    raw["stages"][0]["params"] = {"num_objects": [0, 9], "tasks": ["dance"]}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert len(info.value.errors) == 2 and all("stages[0].params" in e for e in info.value.errors)


def test_episode_seeds_are_distinct_and_reproducible():
    seeds = [episode_seed(0, i) for i in range(100)]
    assert len(set(seeds)) == 100 and seeds == [episode_seed(0, i) for i in range(100)]
    assert episode_seed(1, 0) != episode_seed(0, 0)
    assert episode_id(7) == "tabletop-000007"


def test_stage_generates_episodes_in_parallel_on_ray(ray_session, tmp_path):
    from pipeline.sim import TabletopConfig, generate_episode

    params = GenerateTabletopParams(num_episodes=3, cameras=["front", "oblique"], **TINY)
    ctx = _ctx(tmp_path, seed=5)
    rows = _run(params, ctx)
    assert [r["episode_id"] for r in rows] == [episode_id(i) for i in range(3)]
    assert all(r["status"] == OK and r["stage"] == "generate_tabletop" and r["source"] == "generate_tabletop"
               for r in rows), rows
    episodes = [Episode.load(r["path"]) for r in rows]
    for i, (r, episode) in enumerate(zip(rows, episodes)):
        assert r["path"] == ctx.episode_path(r["episode_id"])
        episode.validate()
        assert episode.episode_id == r["episode_id"] and episode.cameras == ["front", "oblique"]
        assert episode.rgb["oblique"].shape[1:] == (32, 32, 3)
        assert episode.meta["seed"] == episode_seed(5, i) and episode.meta["task_family"] in ("reach", "push")
    # An episode can be regenerated on its own from what its meta records.
    again = generate_episode(episodes[1].meta["seed"],
                             config=TabletopConfig.from_dict(episodes[1].meta["sim"]["config"]))
    np.testing.assert_array_equal(again.rgb["front"], episodes[1].rgb["front"])
    np.testing.assert_array_equal(again.action, episodes[1].action)


def test_resume_skips_finished_episodes(ray_session, tmp_path):
    params = GenerateTabletopParams(num_episodes=2, **TINY)
    first = {r["episode_id"]: r for r in _run(params, _ctx(tmp_path))}
    kept, removed = (first[episode_id(i)]["path"] for i in range(2))
    marker = Episode.load(kept)
    marker.meta["marker"] = "left alone by resume"
    marker.save(kept)
    Episode.load(removed)  # exists before we remove it
    __import__("os").remove(removed)
    __import__("os").remove(tmp_path / "stages" / "00_generate_tabletop" / "done" / f"{episode_id(1)}.json")

    rows = {r["episode_id"]: r for r in _run(params, _ctx(tmp_path, resume=True))}
    assert all(r["status"] == OK for r in rows.values())
    assert Episode.load(rows[episode_id(0)]["path"]).meta.get("marker") == "left alone by resume"
    regenerated = Episode.load(rows[episode_id(1)]["path"])
    assert "marker" not in regenerated.meta and regenerated.meta["seed"] == episode_seed(0, 1)


def test_failing_episode_is_quarantined_not_fatal(tmp_path, monkeypatch):
    import pipeline.sim.generate

    def explode(*args, **kwargs):
        raise RuntimeError("IK diverged")

    monkeypatch.setattr(pipeline.sim.generate, "generate_episode", explode)
    out = _one(3, GenerateTabletopParams(**TINY), _ctx(tmp_path))
    assert out["status"] == QUARANTINED and out["episode_id"] == "tabletop-000003"
    assert out["reason"] == "RuntimeError: IK diverged" and out["path"] == ""


def test_failed_policy_is_filtered_when_failures_are_not_kept(tmp_path, monkeypatch):
    import pipeline.sim.generate

    real = pipeline.sim.generate.generate_episode

    def failing(*args, **kwargs):
        episode = real(*args, **kwargs)
        episode.meta["success"] = False
        return episode

    monkeypatch.setattr(pipeline.sim.generate, "generate_episode", failing)
    params = GenerateTabletopParams(keep_failures=False, **{**TINY, "tasks": ["reach"]})
    out = _one(0, params, _ctx(tmp_path))
    assert out["status"] == FILTERED and "policy failed" in out["reason"]
    assert not (tmp_path / "stages" / "00_generate_tabletop" / "episodes" / "tabletop-000000.episode").exists()
