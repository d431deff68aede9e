"""Closed-loop evaluation of a lerobot policy checkpoint in the embedded tabletop simulator.

    result = evaluate_policy("outputs/train/act/checkpoints/002000/pretrained_model", "push", episodes=50, seed=1000,
                             out_dir="eval/act-push")
    # wmsynth eval-policy CHECKPOINT --task push --episodes 50 --seed 1000   (add_arguments / command below)

The checkpoint is the ``pretrained_model`` directory lerobot-train writes (config.json, model.safetensors, the policy's
pre/post-processor files, train_config.json); it is loaded with lerobot's own policy class and processor pipelines.

Same observations as the training shards: the env is configured from the policy's ``input_features`` (cameras, image
size; fps, robot type and the depth encoding from the dataset's ``meta/info.json`` when a dataset is given or
train_config.json names one that exists), and any feature the simulator cannot produce fails before anything runs,
naming the feature. Each step goes env obs -> ``ShardSchema.frame`` (the function the shard writer feeds lerobot's
``add_frame`` with) -> the tensors lerobot's dataset reader returns (images float [0, 1] CHW via lerobot's
``prepare_observation_for_inference``; depth through lerobot's own 12-bit quantisation and back, in the unit training
read it in) -> the policy's preprocessor -> ``select_action`` -> postprocessor -> ``env.step``.

Episodes: episode i runs scene seed ``seed + i`` on task family ``families[i % len(families)]``; an episode ends at its
first successful frame or after the family's episode length (the scripted demos' ``max_steps`` frames, frame 0
included). With a dataset, its provenance (``meta/wmsynth_provenance.json``) gives those lengths per family and the
demos' scene distribution (object counts, camera jitter). Success rate with a Wilson 95% interval, overall and per
family. Scene seeds that also made a training episode (known from the provenance) are counted in ``seen_seeds``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.lerobot_schema import (
    ACTION_KEY,
    DEPTH_PREFIX,
    IMAGES_PREFIX,
    STATE_KEY,
    ShardSchema,
)
from pipeline.sim.spec import ACTION_NAMES, CAMERA_NAMES, STATE_NAMES, TASK_FAMILIES
from pipeline.sim.spec import ROBOT_TYPE as SIM_ROBOT_TYPE
from pipeline.sim.tabletop import TabletopConfig, TabletopEnv

logger = logging.getLogger(__name__)

Z_95 = 1.959963984540054  # two-sided 95% normal quantile
EVAL_FILE = "eval.json"


class EvalSetupError(ValueError):
    """The checkpoint, dataset and simulator do not fit together; the message names the feature or file."""


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) for no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends (no rounding residue at 0 and 1)
    hi = 1.0 if successes == trials else min(1.0, centre + half)
    return lo, hi


# -- loading ---------------------------------------------------------------------------------------------------------


def load_policy(checkpoint: str | Path, device: str = "cpu"):
    """(policy, preprocessor, postprocessor, train_config dict or None) of a lerobot ``pretrained_model`` dir."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    from lerobot.utils.constants import PRETRAINED_MODEL_DIR

    path = Path(checkpoint)
    if not (path / "config.json").is_file() and (path / PRETRAINED_MODEL_DIR / "config.json").is_file():
        path = path / PRETRAINED_MODEL_DIR  # checkpoints/NNNNNN given
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no lerobot policy checkpoint here (expected the pretrained_model directory "
                                "lerobot-train writes, with config.json and model.safetensors)")
    cfg = PreTrainedConfig.from_pretrained(path)
    cfg.pretrained_path = path
    cfg.device = device
    policy = get_policy_class(cfg.type).from_pretrained(path, config=cfg)
    policy.eval()
    preprocessor, postprocessor = make_pre_post_processors(
        cfg, pretrained_path=str(path), preprocessor_overrides={"device_processor": {"device": device}},
        postprocessor_overrides={"device_processor": {"device": "cpu"}})
    train_config_path = path / "train_config.json"
    train_config = json.loads(train_config_path.read_text()) if train_config_path.is_file() else None
    return policy, preprocessor, postprocessor, train_config


def read_dataset(root: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(meta/info.json, provenance episodes or []) of a LeRobot dataset written by wmsynth."""
    from pipeline.lerobot_shard import PROVENANCE_FILE

    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{root}: not a LeRobot dataset (no meta/info.json)")
    provenance_path = root / PROVENANCE_FILE
    episodes = json.loads(provenance_path.read_text()).get("episodes", []) if provenance_path.is_file() else []
    return json.loads(info_path.read_text()), episodes


# -- the policy's features -> the simulator ---------------------------------------------------------------------------


def sim_schema(input_features: dict, output_features: dict, fps: int, robot_type: str) -> ShardSchema:
    """The shard schema a policy with these lerobot features was trained on, as far as the simulator can make it.

    Raises EvalSetupError naming the first feature the simulator cannot produce.
    """
    from lerobot.utils.feature_utils import dataset_to_policy_features

    sizes: dict[str, tuple[int, int]] = {}
    depth_cameras: list[str] = []
    for key, feature in input_features.items():
        shape = tuple(feature.shape)
        kind, cam = ("rgb", key[len(IMAGES_PREFIX):]) if key.startswith(IMAGES_PREFIX) else (
            ("depth", key[len(DEPTH_PREFIX):]) if key.startswith(DEPTH_PREFIX) else (None, ""))
        if kind is not None:
            channels = 3 if kind == "rgb" else 1
            if cam not in CAMERA_NAMES or len(shape) != 3 or shape[0] != channels:
                raise EvalSetupError(f"{key}: the simulator cannot produce this feature {shape}: it renders "
                                     f"{channels}-channel {kind} (C, H, W) for cameras {', '.join(CAMERA_NAMES)}")
            if not 16 <= shape[1] <= 512 or not 16 <= shape[2] <= 512:
                raise EvalSetupError(f"{key}: image size {shape[1]}x{shape[2]} is outside the simulator's 16..512")
            sizes[key] = shape[1:]
            if kind == "depth":
                depth_cameras.append(cam)
        elif key == STATE_KEY:
            if shape != (len(STATE_NAMES),):
                raise EvalSetupError(f"{key}: shape {shape}, the simulator's state is ({len(STATE_NAMES)},) "
                                     f"({', '.join(STATE_NAMES)})")
        else:
            raise EvalSetupError(f"{key}: the simulator cannot produce this policy input (it makes "
                                 f"{IMAGES_PREFIX}<camera>, {DEPTH_PREFIX}<camera> and {STATE_KEY})")
    if len(set(sizes.values())) > 1:
        raise EvalSetupError(f"{', '.join(sizes)}: image sizes {sorted(set(sizes.values()))} differ; the simulator "
                             "renders every camera at one size")
    action = output_features.get(ACTION_KEY)
    if action is None or tuple(action.shape) != (len(ACTION_NAMES),):
        raise EvalSetupError(f"{ACTION_KEY}: the policy outputs {None if action is None else tuple(action.shape)}, "
                             f"the simulator takes ({len(ACTION_NAMES)},) ({', '.join(ACTION_NAMES)})")
    height, width = next(iter(sizes.values())) if sizes else (TabletopConfig.height, TabletopConfig.width)
    cameras = sorted({k.removeprefix(IMAGES_PREFIX).removeprefix(DEPTH_PREFIX) for k in sizes})
    schema = ShardSchema(fps=fps, robot_type=robot_type, cameras=tuple((cam, height, width) for cam in cameras),
                         depth_cameras=tuple(sorted(depth_cameras)),
                         state_names=tuple(STATE_NAMES) if STATE_KEY in input_features else None,
                         action_names=tuple(ACTION_NAMES))
    # The sim's frames as lerobot sees them must equal what the policy was built for (key, type and shape).
    produced = dataset_to_policy_features(schema.features())
    for key, feature in input_features.items():
        if key not in produced or tuple(produced[key].shape) != tuple(feature.shape):
            raise EvalSetupError(f"{key}: the simulator's schema gives "
                                 f"{tuple(produced[key].shape) if key in produced else 'nothing'}, the policy "
                                 f"expects {tuple(feature.shape)}")
    return schema


def check_dataset(schema: ShardSchema, info: dict[str, Any], input_features: dict) -> None:
    """The dataset's features must be the schema's for every policy input and the action (shape and names)."""
    ours = schema.features()
    for key in [*input_features, ACTION_KEY]:
        theirs = info.get("features", {}).get(key)
        if theirs is None:
            raise EvalSetupError(f"{key}: the policy uses this feature but the dataset has none "
                                 f"(dataset features: {', '.join(info.get('features', {}))})")
        for field in ("shape", "names"):
            if field in theirs and list(theirs[field]) != list(ours[key][field]):
                raise EvalSetupError(f"{key}: dataset {field} {list(theirs[field])}, the simulator produces "
                                     f"{list(ours[key][field])}")


def episode_lengths(provenance: list[dict[str, Any]], families: list[str], default: int) -> dict[str, int]:
    """Frames per episode per family: the scripted demos' ``max_steps`` in the dataset's provenance, else default."""
    lengths = {family: 0 for family in families}
    for entry in provenance:
        meta = entry.get("meta") or {}
        family, config = meta.get("task_family"), (meta.get("sim") or {}).get("config") or {}
        if family in lengths and config.get("max_steps"):
            lengths[family] = max(lengths[family], int(config["max_steps"]))
    return {family: n or default for family, n in lengths.items()}


def sim_config(schema: ShardSchema, provenance: list[dict[str, Any]], families: list[str],
               max_steps: int) -> TabletopConfig:
    """The env for ``schema``: cameras, size, fps and depth from it; the demos' scene distribution (object counts,
    camera jitter, ...) from the provenance's first sim config, else the defaults. No segmentation (no policy reads it).
    """
    demo = next((c for c in (((e.get("meta") or {}).get("sim") or {}).get("config") for e in provenance) if c), None)
    base = TabletopConfig.from_dict(demo) if demo else TabletopConfig()
    cameras = tuple(cam for cam, _, _ in schema.cameras) or base.cameras[:1]
    height, width = schema.cameras[0][1:] if schema.cameras else (base.height, base.width)
    return replace(base, width=width, height=height, cameras=cameras, fps=float(schema.fps), max_steps=max_steps,
                   tasks=tuple(families), depth=bool(schema.depth_cameras), segmentation=False)


# -- one step: env obs -> policy input --------------------------------------------------------------------------------


def observation_batch(frame: dict[str, np.ndarray], input_features: dict, depth_encoders: dict, depth_unit: str,
                      device: str, task: str, robot_type: str) -> dict[str, Any]:
    """A ``ShardSchema.frame`` as the batch lerobot's dataset reader would give the policy (before its preprocessor).

    Images: (1, 3, H, W) float in [0, 1] (lerobot's ``prepare_observation_for_inference``). Depth: (1, 1, H, W) through
    lerobot's 12-bit quantisation and back with the dataset's encoder settings, in ``depth_unit`` ("mm": lerobot's
    default on read). State: (1, D) float32.
    """
    import torch
    from lerobot.datasets.depth_utils import dequantize_depth, quantize_depth
    from lerobot.policies.utils import prepare_observation_for_inference

    observation = {}
    for key in input_features:
        value = frame[key]
        if key.startswith(DEPTH_PREFIX):
            enc = depth_encoders[key]
            params = {"depth_min": enc.depth_min, "depth_max": enc.depth_max, "shift": enc.shift,
                      "use_log": enc.use_log}
            codes = quantize_depth(value[..., 0], video_backend=None, input_unit="m", **params)  # (H, W) uint16
            value = np.asarray(dequantize_depth(codes, output_unit=depth_unit, output_tensor=False, **params),
                               dtype=np.float32).reshape(1, *codes.shape)  # (1, H, W)
        observation[key] = value
    return prepare_observation_for_inference(observation, torch.device(device), task, robot_type)


# -- the evaluation ---------------------------------------------------------------------------------------------------


def evaluate_policy(checkpoint: str | Path, task: str, episodes: int, seed: int, out_dir: str | Path, *,
                    dataset: str | Path | None = None, max_steps: int | None = None, num_gifs: int = 3,
                    device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Run the checkpoint for ``episodes`` episodes of ``task`` ("push", "push,stack" or "all"); a JSON-able report.

    Keys: num_episodes, successes, success_rate, ci95 [lo, hi]; per_family {family: the same + max_steps}; episodes
    [{index, seed, task, instruction, success, steps}]; eval_fps_per_core (closed-loop steps per CPU-second, policy
    + simulator); gifs (paths; the first ``num_gifs`` episodes, in out_dir/gifs); features and sim_config (what the
    env produced); seen_seeds (episodes whose scene seed made a training episode).
    """
    import torch
    from lerobot.configs.video import DepthEncoderConfig
    from tqdm import tqdm

    families = list(TASK_FAMILIES) if task == "all" else [t.strip() for t in task.split(",") if t.strip()]
    for family in families:
        if family not in TASK_FAMILIES:
            raise EvalSetupError(f"task: unknown {family!r} (known: {', '.join(TASK_FAMILIES)}, or all)")
    if episodes < 1:
        raise EvalSetupError(f"episodes: expected >= 1, got {episodes}")
    policy, preprocessor, postprocessor, train_config = load_policy(checkpoint, device)
    train_dataset = ((train_config or {}).get("dataset") or {})
    if dataset is None and train_dataset.get("root") and (Path(train_dataset["root"]) / "meta/info.json").is_file():
        dataset = train_dataset["root"]
        logger.info("using the training dataset named in train_config.json: %s", dataset)
    info, provenance = read_dataset(dataset) if dataset is not None else ({}, [])
    fps = int(info.get("fps") or TabletopConfig.fps)
    robot_type = str(info.get("robot_type") or SIM_ROBOT_TYPE)  # evaluated in the simulator: its robot
    inputs, outputs = policy.config.input_features, policy.config.output_features
    schema = sim_schema(inputs, outputs, fps, robot_type)
    if info:
        check_dataset(schema, info, inputs)
    else:
        logger.warning("no dataset given: assuming the simulator's default fps (%d) for the policy", fps)
    depth_unit = train_dataset.get("depth_output_unit") or "mm"
    depth_encoders = {DEPTH_PREFIX + cam: DepthEncoderConfig.from_video_info(
        (info.get("features", {}).get(DEPTH_PREFIX + cam) or {}).get("info")) for cam in schema.depth_cameras}
    lengths = episode_lengths(provenance, families, TabletopConfig.max_steps)
    if max_steps is not None:
        lengths = {family: int(max_steps) for family in families}
    config = sim_config(schema, provenance, families, max(lengths.values()))
    training_seeds = {int(e["seed"]) for e in provenance if e.get("seed") is not None}

    out_dir = Path(out_dir)
    (out_dir / "gifs").mkdir(parents=True, exist_ok=True)
    records, gifs, steps_total, cpu_s = [], [], 0, 0.0
    env = TabletopEnv(config)
    try:
        bar = tqdm(range(episodes), desc="eval-policy", unit="ep", disable=not progress)
        for index in bar:
            scene_seed, family = int(seed) + index, families[index % len(families)]
            start = time.process_time()
            record, frames = _run_episode(env, policy, preprocessor, postprocessor, schema, depth_encoders,
                                          depth_unit, device, scene_seed, family, lengths[family],
                                          keep_frames=index < num_gifs)
            cpu_s += time.process_time() - start
            steps_total += record["steps"]
            records.append({"index": index, **record})
            if frames:
                gifs.append(str(_write_gif(out_dir / "gifs" / f"episode-{index:03d}-{family}-seed{scene_seed}-"
                                           f"{'success' if record['success'] else 'failure'}.gif", frames, fps)))
            bar.set_postfix(success=f"{sum(r['success'] for r in records)}/{len(records)}")
    finally:
        env.close()
    return _report(records, families, lengths, gifs, steps_total, cpu_s, config, schema, checkpoint, dataset,
                   training_seeds, seed, torch.get_num_threads())


def _run_episode(env, policy, preprocessor, postprocessor, schema, depth_encoders, depth_unit, device, scene_seed,
                 family, length, keep_frames) -> tuple[dict[str, Any], list[np.ndarray]]:
    import torch
    from lerobot.utils.random_utils import set_seed

    obs, info = env.reset(seed=scene_seed, options={"task": family})
    policy.reset()
    set_seed(scene_seed)  # a stochastic policy (e.g. diffusion noise) repeats per scene seed
    view = schema.cameras[0][0] if schema.cameras else env.config.cameras[0]
    frames = [obs["rgb"][view]] if keep_frames else []
    steps, success = 0, bool(info["success"])
    while not success and steps < length - 1:  # ``length`` frames, frame 0 included, as the scripted demos
        frame = schema.frame(obs["rgb"], obs.get("depth_m", {}), obs["state"])
        batch = observation_batch(frame, policy.config.input_features, depth_encoders, depth_unit, device,
                                  info["instruction"], schema.robot_type)
        with torch.inference_mode():
            action = postprocessor(policy.select_action(preprocessor(batch)))  # (1, A)
        obs, _, _, _, info = env.step(action.squeeze(0).to("cpu").numpy().astype(np.float32))
        steps += 1
        success = bool(info["success"])
        if keep_frames:
            frames.append(obs["rgb"][view])
    return {"seed": scene_seed, "task": family, "instruction": info["instruction"], "success": success,
            "steps": steps}, frames


def _write_gif(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    return path


def _report(records, families, lengths, gifs, steps_total, cpu_s, config, schema, checkpoint, dataset,
            training_seeds, seed, threads) -> dict[str, Any]:
    def rate(rows: list[dict]) -> dict[str, Any]:
        successes = sum(r["success"] for r in rows)
        lo, hi = wilson_interval(successes, len(rows))
        return {"num_episodes": len(rows), "successes": successes,
                "success_rate": successes / len(rows) if rows else 0.0, "ci95": [lo, hi]}

    overall = rate(records)
    return {
        "checkpoint": str(checkpoint), "dataset": None if dataset is None else str(dataset),
        "task": families, "seed": int(seed), **overall,
        "per_family": {family: {**rate([r for r in records if r["task"] == family]), "max_steps": lengths[family]}
                       for family in families},
        "episodes": records,
        "eval_fps_per_core": steps_total / cpu_s if cpu_s > 0 else 0.0,
        "cpu_s": cpu_s, "steps": steps_total, "torch_threads": threads,
        "seen_seeds": sum(r["seed"] in training_seeds for r in records),
        "gifs": gifs,
        "features": {key: list(feature["shape"]) for key, feature in schema.features().items()},
        "sim_config": config.to_dict(),
    }


# -- command line (wired as ``wmsynth eval-policy`` by pipeline.cli) --------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a lerobot pretrained_model directory (checkpoints/NNNNNN/pretrained_model)")
    parser.add_argument("--task", default="all", help=f"task family, comma list or all (of {', '.join(TASK_FAMILIES)})")
    parser.add_argument("--episodes", type=int, default=50, help="episodes, over the families in turn")
    parser.add_argument("--seed", type=int, default=1000, help="scene seed of episode 0 (episode i: seed + i)")
    parser.add_argument("--out", default=None, help="output directory (default: <checkpoint>/eval-<task>-seed<seed>)")
    parser.add_argument("--dataset", default=None, help="the LeRobot dataset it was trained on (fps, features, "
                        "episode lengths; default: the one in train_config.json if it exists here)")
    parser.add_argument("--max-steps", type=int, default=None, help="frames per episode (default: the demos')")
    parser.add_argument("--gifs", type=int, default=3, help="episodes to save as GIFs")
    parser.add_argument("--device", default="cpu")


def command(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.checkpoint) / f"eval-{args.task.replace(',', '+')}-seed{args.seed}"
    try:
        result = evaluate_policy(args.checkpoint, args.task, args.episodes, args.seed, out, dataset=args.dataset,
                                 max_steps=args.max_steps, num_gifs=args.gifs, device=args.device)
    except (EvalSetupError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (out / EVAL_FILE).write_text(json.dumps(result, indent=1))
    lo, hi = result["ci95"]
    print(f"success {result['successes']}/{result['num_episodes']} = {result['success_rate']:.1%} "
          f"(95% CI {lo:.1%}-{hi:.1%}); {result['eval_fps_per_core']:.1f} steps per CPU-second")
    for family, row in result["per_family"].items():
        lo, hi = row["ci95"]
        print(f"  {family}: {row['successes']}/{row['num_episodes']} (95% CI {lo:.1%}-{hi:.1%})")
    print(f"wrote {out / EVAL_FILE}" + (f" and {len(result['gifs'])} GIFs in {out / 'gifs'}" if result["gifs"] else ""))
    return 0
