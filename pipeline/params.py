"""Stage params that stand for library configs: a field's type, default and limits live once, in the dataclass.

A library config (``TabletopConfig``, ``EstimatorConfig``, ``WorldModelConfig``, ``PerceptionConfig``, ...) declares
its fields with types and defaults and checks itself in ``__post_init__``, raising ``ValueError("<field>: <what is
wrong>")`` (STYLE.md 1). A stage's params take some of those fields over, flat in stages.yaml, each with the
description ``wmsynth stages`` prints:

    SIM = ConfigFields(TabletopConfig, {"image_size": "square image side in pixels", "fps": "", ...},
                       renamed={"image_size": "width"})

    class GenerateTabletopParams(params_from(SIM)):
        num_episodes: int = Field(24, ge=1)          # the stage's own fields, as usual

        def library_configs(self) -> list[Any]:
            return [self.sim_config()]

        def sim_config(self) -> TabletopConfig:
            return TabletopConfig(**SIM.values(self), height=self.image_size)

``params_from`` makes the ``StageParams`` base class with those fields and a validator that builds the configs the way
the stage builds them (``library_configs``) and reports each ``ValueError`` at the params field it names, so
``wmsynth validate`` says ``stages[0].params.fps: expected 0 < fps <= 30, got 50``. A config stops at its first
problem; to report every problem at once, the validator puts the field it named back to its default and builds again.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, ValidationError, create_model, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from pipeline.stage import Problem, StageParams

_NAMED = re.compile(r"(\w+): (.+)", re.DOTALL)  # "<field>: <message>", as the configs raise them


class ConfigFields:
    """Fields of one library config dataclass that a stage's params take over, flat, in the order given.

    ``descriptions``: params field -> its description for ``wmsynth stages`` ("" for none); its keys are the fields.
    ``renamed``: params field -> the config field it stands for, where the stage's name differs.
    """

    def __init__(self, config: type, descriptions: Mapping[str, str], renamed: Mapping[str, str] | None = None):
        if not dataclasses.is_dataclass(config):
            raise TypeError(f"{config!r} is not a dataclass")
        self.config = config
        self.descriptions = dict(descriptions)
        self.renamed = dict(renamed or {})
        known = {f.name for f in dataclasses.fields(config)}
        unknown = [name for name in self.descriptions if self.config_name(name) not in known]
        unknown += [name for name in self.renamed if name not in self.descriptions]
        if unknown:
            raise TypeError(f"{config.__name__}: no such fields {unknown} (fields: {sorted(known)})")

    def config_name(self, name: str) -> str:
        return self.renamed.get(name, name)

    def pydantic_fields(self) -> dict[str, tuple[Any, Any]]:
        """{params field: (type, FieldInfo)} with the config's types and defaults, for ``pydantic.create_model``.
        A variable-length tuple of the config is a list in the params, as YAML writes it."""
        hints = typing.get_type_hints(self.config)
        fields = {f.name: f for f in dataclasses.fields(self.config)}
        out = {}
        for name, description in self.descriptions.items():
            f = fields[self.config_name(name)]
            annotation, doc = _as_lists(hints[f.name]), {"description": description or None}
            if isinstance(f.default, tuple) and annotation is not hints[f.name]:
                info = Field(default_factory=lambda default=f.default: list(default), **doc)
            elif f.default is not dataclasses.MISSING:
                info = Field(f.default, **doc)
            elif f.default_factory is not dataclasses.MISSING:
                info = Field(default_factory=f.default_factory, **doc)
            else:
                info = Field(**doc)  # required, as in the config
            out[name] = (annotation, info)
        return out

    def values(self, params: StageParams) -> dict[str, Any]:
        """The config's keyword arguments for these fields: {config field: the params value}, lists as tuples."""
        out = {}
        for name in self.descriptions:
            value = getattr(params, name)
            out[self.config_name(name)] = tuple(value) if isinstance(value, list) else value
        return out


class ConfigParams(StageParams):
    """Base of the params ``params_from`` makes: validated by building the library configs they stand for."""

    config_field_names: ClassVar[dict[str, str]] = {}  # config field -> params field, to place the configs' errors

    def library_configs(self) -> list[Any]:
        """The library configs these params stand for, built as the stage builds them (validation builds them)."""
        raise NotImplementedError(f"{type(self).__name__} must say how it builds its library configs")

    @model_validator(mode="after")
    def _check_library_configs(self) -> ConfigParams:
        problems = config_problems(self)
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, [
                InitErrorDetails(type=PydanticCustomError("library_config", "{message}", {"message": message}),
                                 loc=(name,) if name else (), input=getattr(self, name) if name else None)
                for name, message in problems])
        return self


def params_from(*groups: ConfigFields) -> type[ConfigParams]:
    """A params base class holding the fields of ``groups``; subclass it and define ``library_configs``."""
    fields: dict[str, tuple[Any, Any]] = {}
    names: dict[str, str] = {}
    for group in groups:
        for name, spec in group.pydantic_fields().items():
            if name in fields:
                raise TypeError(f"params field {name!r} comes from two configs")
            fields[name] = spec
            names.setdefault(group.config_name(name), name)
    base = create_model("".join(g.config.__name__ for g in groups) + "Params", __base__=ConfigParams, **fields)
    base.config_field_names = names
    return base


def config_problems(params: ConfigParams) -> list[Problem]:
    """Every (params field, message) the library configs reject; the field is "" where the message names none."""
    problems: list[Problem] = []
    probe, reset = params, set()
    while True:
        try:
            probe.library_configs()
            return problems
        except ValueError as exc:
            name, message = _placed(type(params), str(exc))
            if name in reset:  # still wrong at its default: another field's value is the cause, already reported
                return problems
            problems.append((name, message))
            if not name:
                return problems
            reset.add(name)
            default = type(params).model_fields[name].get_default(call_default_factory=True)
            probe = probe.model_copy(update={name: default})


def _as_lists(annotation: Any) -> Any:
    """``annotation`` with each ``tuple[X, ...]`` in it (also inside ``| None``) as ``list[X]``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return list[args[0]]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        mapped = [_as_lists(a) for a in args]
        return functools.reduce(operator.or_, mapped) if mapped != list(args) else annotation
    return annotation


def _placed(model: type[ConfigParams], message: str) -> Problem:
    """(params field, the message without its field name) for a config's "<field>: <message>"."""
    named = _NAMED.fullmatch(message)
    if named:
        name = model.config_field_names.get(named[1], named[1])
        if name in model.model_fields:
            return name, named[2]
    return "", message
