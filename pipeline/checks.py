"""Validation that sees the data: each stage's cheap checks, run by ``wmsynth validate`` and before ``wmsynth run``.

``pipeline.config`` checks the file itself (keys, types, ranges). This module then checks it against the world, still
before Ray starts, and reports every problem at once with its YAML path:

    output_dir                 writable (a probe object is written and removed: bucket exists, credentials work)
    stages[i]                  every artifact the stage requires is provided by an earlier stage
    stages[i].params.<field>   the stage's own ``check``: inputs exist and are readable, mapped keys are in the
                               dataset, cameras exist in what the sources produce, ...
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.config import RunConfig
from pipeline.stage import REGISTRY, CheckContext, error_reason
from pipeline.store import RunStore

logger = logging.getLogger(__name__)


def check_run(config: RunConfig, storage: bool = True) -> list[str]:
    """Every data-level problem of ``config`` as 'yaml.path: message' (empty when the run can start)."""
    errors: list[str] = []
    storage_problem = RunStore(config.output_dir).check_writable() if storage else None
    if storage_problem:
        errors.append(f"output_dir: {storage_problem}")
    provided: dict[str, str] = {}
    outputs: dict[str, Any] = {}
    earlier = []
    for i, stage in enumerate(config.stages):
        spec = REGISTRY[stage.name]
        where = f"stages[{i}]"
        for name in spec.required(stage.params):
            if name not in provided:
                makers = sorted(n for n, s in REGISTRY.items() if name in s.provides)
                errors.append(f"{where}: {stage.name} needs {name!r} from an earlier stage; put "
                              f"{' or '.join(makers) or 'a stage providing it'} before it")
        cctx = CheckContext(run_dir=config.output_dir, index=i, earlier=list(earlier), outputs=dict(outputs))
        if spec.check is not None:
            try:
                problems = spec.check(stage.params, cctx)
            except Exception as exc:  # a check must not crash validation; say what it could not check
                logger.debug("check of %s failed", stage.name, exc_info=True)
                # With the run directory unreachable the same storage error would only be repeated here.
                problems = [] if storage_problem else [("", f"could not be checked: {error_reason(exc)}")]
            for field, message in problems:
                errors.append(f"{where}.params.{field}: {message}" if field else f"{where}: {message}")
        if spec.describe is not None:
            try:
                described = spec.describe(stage.params)
            except Exception:  # described by check's messages instead
                described = {}
            for key, value in described.items():
                if isinstance(value, list):  # sources concatenate: union of lists, any-of flags
                    outputs[key] = sorted(set(outputs.get(key, [])) | set(value))
                elif isinstance(value, bool):
                    outputs[key] = bool(outputs.get(key, False)) or value
                else:
                    outputs[key] = value
        for name in spec.provides:
            provided[name] = stage.name
        earlier.append((stage.name, stage.params))
    return errors
