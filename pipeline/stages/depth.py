"""depth: give every camera a metric depth stream (1:1 per episode).

Backends:
    sensor   pass through the episode's own depth (simulator z-buffer, RGB-D camera); an episode with a camera lacking
             depth is quarantined with a message saying which camera and what to configure instead.

The depth maps stay float32 metres (``depth_m``); 0 or NaN marks pixels without a measurement.
"""

from __future__ import annotations

from typing import Literal

from pipeline.episode import Episode, EpisodeError
from pipeline.stage import OK, Resources, StageContext, StageParams, register_stage, run_episode_fn


class DepthParams(StageParams):
    backend: Literal["sensor"] = "sensor"
    resources: Resources = Resources(num_cpus=0.5)


def sensor_depth(episode: Episode) -> Episode:
    for cam in episode.cameras:
        if cam not in episode.depth_m:
            raise EpisodeError(episode.episode_id, f"depth_m.{cam}",
                               "no depth stream, and backend 'sensor' estimates none; ingest depth with the episode "
                               "or configure an estimator backend")
    return episode


@register_stage("depth", kind="transform", params=DepthParams)
def depth(ds, params: DepthParams, ctx: StageContext):
    """Metric depth per camera: sensor pass-through (no copy when present)."""
    fn = {"sensor": sensor_depth}[params.backend]
    return ds.map(lambda r: run_episode_fn(fn, r, "depth", ctx) if r["status"] == OK else r,
                  num_cpus=params.resources.num_cpus)
