"""pipeline.params: params fields taken from a library config dataclass, validated by building it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pytest
from pydantic import Field, ValidationError

from pipeline.config import parse_config
from pipeline.params import ConfigFields, params_from


@dataclass(frozen=True)
class ToyConfig:
    width: int = 64
    fps: float = 10.0
    rate_hz: int = 240
    names: tuple[str, ...] = ("a", "b")
    mode: Literal["x", "y"] = "x"
    limit: float | None = None

    def __post_init__(self):
        if not 16 <= self.width <= 512:
            raise ValueError(f"width: expected 16..512, got {self.width}")
        if not 0 < self.fps <= 30:
            raise ValueError(f"fps: expected 0 < fps <= 30, got {self.fps}")
        if self.rate_hz % self.fps:
            raise ValueError(f"rate_hz: expected a multiple of fps ({self.fps:g}), got {self.rate_hz}")
        if not self.names:
            raise ValueError("names: expected at least one")
        if self.limit is not None and self.limit > 1:
            raise ValueError("the limit is over one")  # names no field


TOY = ConfigFields(ToyConfig, {"image_size": "square side", "fps": "", "rate_hz": "", "names": "", "mode": "",
                               "limit": ""}, renamed={"image_size": "width"})


class ToyParams(params_from(TOY)):
    count: int = Field(3, ge=1)

    def library_configs(self) -> list[Any]:
        return [self.toy_config()]

    def toy_config(self) -> ToyConfig:
        return ToyConfig(**TOY.values(self))


def _errors(**values) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as info:
        ToyParams(**values)
    return [(e["loc"], e["msg"]) for e in info.value.errors()]


def test_fields_take_the_configs_types_defaults_and_names():
    fields = ToyParams.model_fields
    assert list(fields) == ["image_size", "fps", "rate_hz", "names", "mode", "limit", "count"]
    assert fields["image_size"].default == 64 and fields["image_size"].description == "square side"
    assert fields["names"].annotation == list[str] and fields["fps"].description is None
    params = ToyParams()
    assert params.names == ["a", "b"]  # variable-length tuples are lists, as YAML writes them
    assert params.toy_config() == ToyConfig()  # ... and tuples again in the config
    assert ToyParams(image_size=32, names=["c"]).toy_config() == ToyConfig(width=32, names=("c",))


def test_config_errors_land_on_the_params_field_every_one_at_once():
    assert _errors(image_size=8, fps=50) == [(("image_size",), "expected 16..512, got 8"),
                                             (("fps",), "expected 0 < fps <= 30, got 50.0")]
    # wrong only with another field's value: reported once, on the field the config names
    assert _errors(fps=7) == [(("rate_hz",), "expected a multiple of fps (7), got 240")]
    assert _errors(limit=2.0) == [((), "the limit is over one")]
    assert _errors(mode="z")[0][0] == ("mode",)  # the config's Literal type is checked by pydantic
    assert _errors(names=[]) == [(("names",), "expected at least one")]


def test_rejects_unknown_fields_of_the_config():
    with pytest.raises(TypeError, match="no such fields"):
        ConfigFields(ToyConfig, {"height": ""})


def test_stages_validate_through_their_library_configs(tmp_path):
    """The YAML path of each problem, as ``wmsynth validate`` prints it, for fields the library configs check."""
    from pipeline.config import ConfigError

    raw = {"output_dir": str(tmp_path), "stages": [
        {"name": "generate_tabletop", "params": {"image_size": 8, "fps": 7}},
        {"name": "depth", "params": {"batch_size": 0, "torch_threads": 0}},
        {"name": "train_world_model", "params": {"diffusion_steps": 2000, "latent_dim": 600}},
        {"name": "synthesize_qa", "params": {"min_points": 2, "families": []}}]}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    errors = "\n".join(info.value.errors)
    for path in ("stages[0].params.image_size: expected 16..512", "stages[0].params.physics_hz: expected a whole",
                 "stages[1].params.batch_size: expected >= 1", "stages[1].params.torch_threads: expected >= 1",
                 "stages[2].params.diffusion_steps: expected <=", "stages[2].params.latent_dim: expected at most",
                 "stages[3].params.min_points: expected >= 4", "stages[3].params.families: expected at least one"):
        assert path in errors, errors
