"""depth: give every camera a metric depth stream (1:1 per episode).

Backends:
    sensor          pass through the episode's own depth (simulator z-buffer, RGB-D camera); an episode with a camera
                    lacking depth is quarantined with a message saying which camera and what to configure instead.
    depth_anything  estimate depth from RGB with a transformers depth model (``AutoModelForDepthEstimation`` + its
                    ``AutoImageProcessor``; a hub id or a local directory; relative or metric checkpoints). Relative
                    predictions are aligned to metres per frame by least squares against sparse metric cues (sensor
                    pixels, the known table plane), with the residual reported (see ``depth.estimator``).
    depth_pro       the same loading code for a Depth Pro checkpoint (e.g. apple/DepthPro-hf): metric depth, and a
                    focal length from its FoV head for cameras without intrinsics (``meta.cameras.<cam>.calibration
                    .intrinsics: estimated``); cameras with intrinsics keep them and the depth is scaled to them.

    - name: depth
      params:
        backend: depth_anything
        model: depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf   # or a local directory
        estimate_for: missing          # missing: only cameras without depth; all: every camera (sensor depth = GT)
        batch_size: 8                  # frames per forward pass
        resources: {num_cpus: 1, num_gpus: 0.5, concurrency: 2}

``depth_anything`` runs in a Ray actor pool (``ActorPoolStrategy(size=resources.concurrency or 1)``), each actor
reserving ``resources.num_cpus`` (fractional by default, so a 2-core machine keeps a core for reading tasks) and
``resources.num_gpus``: the model loads once per actor and is reused for every episode it is given. ``device: auto``
picks CUDA when the actor sees a GPU. When ground truth exists (``estimate_for: all`` on episodes with sensor depth),
AbsRel, RMSE and delta1 per episode and overall are written to ``<stage_dir>/depth_metrics.json``.

The depth maps stay float32 metres (``depth_m``); 0 or NaN marks pixels without a measurement.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import Field, model_validator

from depth.estimator import AlignmentConfig, EstimatorConfig
from episodes import Episode, EpisodeError, read_meta
from episodes.io import atomic_write_text
from pipeline.params import ConfigFields, params_from
from pipeline.stage import OK, Resources, StageContext, register_stage

logger = logging.getLogger(__name__)

STAGE = "depth"
METRICS_FILE = "depth_metrics.json"

# depth_anything's fields, their types, defaults and limits from ``depth.estimator``'s configs.
ESTIMATOR = ConfigFields(EstimatorConfig, {
    "kind": "auto: the checkpoint's depth_estimation_type",
    "device": "auto: cuda when the actor sees a GPU",
    "batch_size": "frames per forward pass",
    "input_size": "model input side in pixels; None: the processor's",
    "local_files_only": "load the model from disk or the HF cache only",
    "torch_threads": "torch threads per actor; None: resources.num_cpus, at least 1",
})
ALIGNMENT = ConfigFields(AlignmentConfig, {
    "estimate_for": "missing: cameras without depth; all: every camera, sensor depth kept as ground truth for the "
                    "metrics",
    "alignment": "auto: relative -> least-squares scale/shift in disparity, metric -> none",
    "cues": "metric cues pooled for alignment",
    "num_cue_pixels": "sensor cue pixels per frame",
    "support_segment_id": "segmentation id of the support (default: the simulator's table)",
    "support_plane_z_m": "world height of the support plane",
})


class DepthParams(params_from(ESTIMATOR, ALIGNMENT)):
    backend: Literal["sensor", "depth_anything", "depth_pro"] = "sensor"
    model: str | None = Field(None, description="depth_anything / depth_pro: hub id or local directory of the "
                                                "checkpoint")
    resources: Resources = Resources(num_cpus=0.5)

    @model_validator(mode="after")
    def _check(self) -> DepthParams:
        if self.backend != "sensor" and not self.model:
            example = {"depth_anything": "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf",
                       "depth_pro": "apple/DepthPro-hf"}[self.backend]
            raise ValueError(f"backend {self.backend} needs model: a hub id (e.g. {example}) or a local directory")
        if self.device == "cuda" and self.resources.num_gpus <= 0:
            raise ValueError("device cuda needs resources.num_gpus > 0 (Ray hides GPUs from actors that reserve "
                             "none); or use device auto")
        if self.kind == "relative" and self.alignment == "none":
            raise ValueError("alignment none with kind relative would give unitless depth; use auto or scale_shift")
        return self

    def library_configs(self) -> list[Any]:
        return [self.estimator_config(), self.alignment_config(seed=0)]

    def estimator_config(self) -> EstimatorConfig:
        """The estimator of the model backends (with backend sensor it names no model and is only validated)."""
        threads = max(1, int(round(self.resources.num_cpus))) if self.torch_threads is None else self.torch_threads
        return EstimatorConfig(**{**ESTIMATOR.values(self), "model": self.model or "none", "torch_threads": threads})

    def alignment_config(self, seed: int) -> AlignmentConfig:
        return AlignmentConfig(**ALIGNMENT.values(self), seed=seed)


def sensor_depth(episode: Episode) -> Episode:
    for cam in episode.cameras:
        if cam not in episode.depth_m:
            raise EpisodeError(episode.episode_id, f"depth_m.{cam}",
                               "no depth stream, and backend 'sensor' estimates none; ingest depth with the episode "
                               "or configure an estimator backend")
    return episode


def write_metrics(rows: list[dict], ctx: StageContext, backend: str, model: str) -> dict[str, Any]:
    """Per-episode and overall (pixel-weighted) depth metrics of the estimated cameras -> depth_metrics.json."""
    from depth.metrics import DepthErrorSums

    per_episode: dict[str, Any] = {}
    total = DepthErrorSums()
    for r in rows:
        if r["status"] != OK:
            continue
        info = read_meta(r["path"]).get("depth") or {}
        cams = {cam: c for cam, c in (info.get("cameras") or {}).items() if c.get("metric_sums")}
        if not cams:
            continue
        sums = DepthErrorSums()
        for c in cams.values():
            sums = sums + DepthErrorSums.from_json(c["metric_sums"])
        total = total + sums
        per_episode[r["episode_id"]] = {"overall": sums.to_json(),
                                        "cameras": {cam: {"metrics": c["metrics"],
                                                          "residual_rmse_m": c["residual_rmse_m"],
                                                          "residual_absrel": c["residual_absrel"]}
                                                    for cam, c in cams.items()}}
    report = {"backend": backend, "model": model,
              "ground_truth": "sensor depth of the episodes (estimate_for: all)",
              "overall": total.to_json() if per_episode else None, "episodes": per_episode}
    atomic_write_text(ctx.path(METRICS_FILE), json.dumps(report, indent=2))
    return report


def finish(rows: list[dict], params: DepthParams, ctx: StageContext) -> None:
    if params.backend == "sensor":
        return
    report = write_metrics(rows, ctx, params.backend, str(params.model))
    if report["overall"] is not None:
        logger.info("depth: %s against sensor depth: %s", params.model, report["overall"])


@register_stage(STAGE, kind="map", params=DepthParams, finish=finish)
class Depth:
    """Metric depth per camera: sensor pass-through (no copy when present) or Depth Anything in an actor pool."""

    def __init__(self, params: DepthParams, ctx: StageContext):
        self.estimator = None
        if params.backend != "sensor":  # the model loads once per actor
            from depth.estimator import DepthAnythingEstimator

            self.estimator = DepthAnythingEstimator(params.estimator_config())
            if self.estimator.backend != params.backend:
                raise ValueError(f"depth: backend {params.backend} but {params.model!r} is a {self.estimator.backend} "
                                 "checkpoint; set backend to match the model")
            self.alignment = params.alignment_config(ctx.seed)

    def __call__(self, episode: Episode) -> Episode:
        if self.estimator is None:
            return sensor_depth(episode)
        from depth.estimator import estimate_episode_depth

        estimated, _ = estimate_episode_depth(episode, self.estimator, self.alignment)
        return estimated  # the input episode itself when every camera already had depth: no copy
