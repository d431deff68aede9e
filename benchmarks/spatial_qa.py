"""Spatial QA accuracy against simulator truth (issue 4); the last line printed is one JSON object.

    .venv/bin/python benchmarks/spatial_qa.py [--episodes 12] [--image-size 128] [--quick]

Episodes come from the embedded simulator (seeds 2000.., task families in turn, 2-6 objects, cameras front, oblique,
side and top at 128x128; none of these seeds was used while developing the geometry). Every generated answer is
scored against ground truth from the simulator's object poses and true sizes (``pipeline.sim.truth``), never against the
point cloud it came from:

- quantitative (distances, sizes, gripper displacement, how far an object moved): correct within 25% of the truth
  (``quantitative_within_25pct``); the share within 0.5x-2x is ``quantitative_within_0_5x_2x``;
- qualitative (comparisons, counts, which object moved): exact (``qualitative_correct``).
Targets with sensor depth: >= 0.95 and >= 0.98.

Variants, same episodes:
- ``sensor``: the simulator's depth, known extrinsics, segmentation masks (the headline figures);
- ``perturbed_depth``: the same depth through ``depth.noise.MonocularNoiseModel`` (per-frame scale, a tilt, edge
  smoothing, pixel noise; its AbsRel / RMSE / delta1 against the sensor depth are reported), read as estimated depth
  (``synthesize_qa``'s ``estimated_depth``: outline depth from object interiors, 2%-trimmed extents);
- ``ransac_gravity``: sensor depth, but gravity from a RANSAC support plane instead of the extrinsics.

``qa_pairs_per_s_per_core``: QA pairs of the sensor variant per CPU-second of synthesis (lifting, RANSAC, object
measurement, questions; process CPU time, so per core whatever threads open3d uses). Skipped questions (per reason and
family) are those whose answer the geometry cannot support; they are not scored.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("benchmarks.spatial_qa")

TASKS = ("pick_place", "push", "stack", "reach")
CAMERAS = ("front", "oblique", "side", "top")
TARGETS = {"quantitative_within_25pct": 0.95, "qualitative_correct": 0.98}


def generate(num_episodes: int, image_size: int, seed_base: int, max_steps: int):
    from pipeline.sim.generate import generate_episode
    from pipeline.sim.tabletop import TabletopConfig

    config = TabletopConfig(width=image_size, height=image_size, cameras=CAMERAS, max_steps=max_steps)
    for i in range(num_episodes):
        yield generate_episode(seed_base + i, TASKS[i % len(TASKS)], config=config, episode_id=f"bench-{i:03d}")


def score_episode(episode, config):
    """(scores, skips, num_qa, cpu_s) of one synthesis variant on one episode."""
    from pipeline.sim.truth import truth_scene
    from depth.qa_scoring import score_record
    from depth.synthesis import synthesize_episode

    cpu = time.process_time()
    result = synthesize_episode(episode, config)
    cpu = time.process_time() - cpu
    scores = []
    truths = {}

    def truth(camera, frame):
        if (camera, frame) not in truths:
            truths[camera, frame] = truth_scene(episode, camera, frame)
        return truths[camera, frame]

    for sample in result.samples:
        ref = sample.document["frame_ref"]
        start = truth(ref["camera"], ref["start_frame"]) if "start_frame" in ref else None
        scores += [score_record(r, truth(ref["camera"], ref["frame"]), start, config.qa) for r in sample.records]
    return scores, result.skips, result.num_qa, cpu


def summary(scores, skips: Counter) -> dict:
    from depth.qa_scoring import summarize_scores

    out = summarize_scores(scores)
    reasons: Counter = Counter()
    by_family: dict[str, dict[str, int]] = {}
    for (family, reason), n in sorted(skips.items()):
        reasons[reason] += n
        by_family.setdefault(family, {})[reason] = n
    out["num_qa"] = len(scores)
    out["skipped"] = dict(sorted(reasons.items()))
    out["skipped_total"] = sum(reasons.values())
    out["skipped_by_family"] = by_family
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=4, help="frames per episode and camera")
    parser.add_argument("--max-steps", type=int, default=80)
    parser.add_argument("--seed-base", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="4 episodes (a smoke run)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    if args.quick:
        args.episodes = 4

    from depth.metrics import DepthErrorSums, depth_error_sums
    from depth.noise import MonocularNoiseModel
    from depth.pointcloud import PerceptionConfig
    from depth.spatial_qa import QAConfig
    from depth.synthesis import SynthesisConfig

    qa = QAConfig(seed=0)
    variants = {
        "sensor": SynthesisConfig(qa=qa, frames_per_episode=args.frames),
        "perturbed_depth": SynthesisConfig(qa=qa, frames_per_episode=args.frames,
                                           perception=PerceptionConfig(silhouette_depth="interior", extent_trim=0.02)),
        "ransac_gravity": SynthesisConfig(qa=qa, frames_per_episode=args.frames,
                                          perception=PerceptionConfig(gravity="ransac")),
    }
    noise = MonocularNoiseModel()
    scores = {name: [] for name in variants}
    skips = {name: Counter() for name in variants}
    cpu_s, num_qa, noise_error = 0.0, 0, DepthErrorSums()
    wall = time.perf_counter()
    gen_s = 0.0
    episodes = generate(args.episodes, args.image_size, args.seed_base, args.max_steps)
    for i in range(args.episodes):
        t0 = time.perf_counter()
        episode = next(episodes)
        gen_s += time.perf_counter() - t0
        for name, config in variants.items():
            if name == "perturbed_depth":
                sensor = dict(episode.depth_m)
                rng = np.random.default_rng([args.seed_base, i])
                episode.depth_m = {cam: noise.apply(d, rng) for cam, d in sensor.items()}
                for cam in sensor:
                    noise_error = noise_error + depth_error_sums(episode.depth_m[cam], sensor[cam])
            s, k, n, c = score_episode(episode, config)
            if name == "perturbed_depth":
                episode.depth_m = sensor
            scores[name] += s
            skips[name].update(k)
            if name == "sensor":
                cpu_s, num_qa = cpu_s + c, num_qa + n
        print(f"episode {i + 1}/{args.episodes} ({episode.meta['task_family']}, {len(episode.meta['objects'])} "
              f"objects, {episode.num_frames} frames): {len(scores['sensor'])} QA so far", file=sys.stderr, flush=True)

    sensor = summary(scores["sensor"], skips["sensor"])
    perturbed = summary(scores["perturbed_depth"], skips["perturbed_depth"])
    ransac = summary(scores["ransac_gravity"], skips["ransac_gravity"])
    result = {
        "quantitative_within_25pct": sensor["quantitative_within_25pct"],
        "quantitative_within_0_5x_2x": sensor["quantitative_within_0_5x_2x"],
        "qualitative_correct": sensor["qualitative_correct"],
        "qa_pairs_per_s_per_core": round(num_qa / cpu_s, 1) if cpu_s else None,
        "families": sorted(sensor["per_family"]),
        "num_qa": sensor["num_qa"], "num_quantitative": sensor["num_quantitative"],
        "num_qualitative": sensor["num_qualitative"],
        "targets": {**TARGETS, "met": bool((sensor["quantitative_within_25pct"] or 0) >= TARGETS[
            "quantitative_within_25pct"] and (sensor["qualitative_correct"] or 0) >= TARGETS["qualitative_correct"])},
        "per_family": sensor["per_family"],
        "skipped": sensor["skipped"], "skipped_total": sensor["skipped_total"],
        "skipped_by_family": sensor["skipped_by_family"],
        "perturbed_depth": {
            "noise_model": {"name": "depth.noise.MonocularNoiseModel", **noise.to_json()},
            "depth_error_vs_sensor": noise_error.to_json(),
            **{k: perturbed[k] for k in ("quantitative_within_25pct", "quantitative_within_0_5x_2x",
                                         "qualitative_correct", "num_qa", "per_family", "skipped", "skipped_total")},
        },
        "ransac_gravity": {k: ransac[k] for k in ("quantitative_within_25pct", "quantitative_within_0_5x_2x",
                                                   "qualitative_correct", "num_qa", "per_family", "skipped_total")},
        "setup": {"episodes": args.episodes, "seeds": [args.seed_base, args.seed_base + args.episodes - 1],
                  "tasks": list(TASKS), "cameras": list(CAMERAS), "image_size": args.image_size,
                  "frames_per_episode_and_camera": args.frames, "max_per_family": qa.max_per_family,
                  "generation_s": round(gen_s, 1), "synthesis_cpu_s_sensor": round(cpu_s, 2),
                  "wall_s": round(time.perf_counter() - wall, 1)},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
