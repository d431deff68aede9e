"""Evaluation of a trained latent-action world model on held-out episodes (never trained on).

``evaluate(wm, data)`` returns one JSON-serialisable dict:

    latent.probe_action      fresh linear probe, frozen z -> commanded action: R2 (mean over dims that vary), per-dim
                             R2, MSE of standardised targets; cross-validated by episode within the held-out set
    latent.probe_ee_motion   the same against the actual end-effector motion (ee_pose[t+1] - ee_pose[t], metres)
    latent.head              the model's own action head H(z) vs the commanded action (R2, per dim)
    latent.codebook          perplexity, used and dead codes (quantised bottlenecks)
    rollout.<cond>.step_k    open-loop rollouts from real s_t for k = 1..horizon, conditioned on the true actions
                             through A ("action"), on latents inferred from the real frames ("latent"), on another
                             window's actions ("shuffled"), or copying s_t ("copy"): PSNR / SSIM on RGB, full frame and
                             motion-masked (pixels whose real value changes between t and t+k)
    rollout.summary          PSNR gains over copy at 1 and ``horizon`` steps (masked), action sensitivity (true minus
                             shuffled actions, mean PSNR over the rollout), per camera as well
    speed                    rollout frames per CPU-second on one thread (a frame = one full multi-camera state)

``render_panel`` / ``render_gif`` draw real vs predicted rollouts side by side; ``rollouts.npz`` keeps the drawn windows
(one per held-out episode first) with their episode ids and start frames, for ``pipeline.report`` to redraw.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from world_model.data import PairData
from world_model.metrics import codebook_usage, linear_probe, mean_r2, motion_mask, psnr, r2_per_dim, ssim
from world_model.wrapper import WorldModel

logger = logging.getLogger(__name__)


def _round(value: Any, digits: int = 4) -> Any:
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v, digits) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else round(float(value), digits)
    if isinstance(value, np.integer):
        return int(value)
    return value


def latent_metrics(wm: WorldModel, data: PairData, folds: int = 4) -> dict[str, Any]:
    """Probe, head and codebook metrics over every pair of ``data`` (labels: all held-out actions, for evaluation)."""
    index = np.arange(len(data))
    z_parts, code_parts = [], []
    for i in range(0, len(index), 256):
        b = data.batch(index[i:i + 256])
        z_parts.append(wm.infer_latents(b["s_t"], b["s_next"]))
        codes = wm.infer_codes(b["s_t"], b["s_next"])
        if codes is not None:
            code_parts.append(codes)
    z = torch.cat(z_parts).cpu().numpy()  # (N, D)
    out: dict[str, Any] = {"num_pairs": int(len(index)), "num_episodes": int(data.num_episodes),
                           "latent_dim": int(z.shape[1])}
    actions, has = data.pair_actions(index)
    groups = data.pairs[:, 0]
    emb = np.array([data.embodiments[e] for e in groups])
    for name in sorted(set(emb[has])):
        rows = has & (emb == name)
        dim = wm.config.latent.embodiments.get(name, actions.shape[1])
        act = actions[rows, :dim]
        probe = linear_probe(z[rows], act, groups[rows], folds=folds)
        head = wm.decode_actions(torch.from_numpy(z[rows]), name).cpu().numpy() if name in \
            wm.config.latent.embodiments else None
        key = "" if len(set(emb[has])) == 1 else f".{name}"
        out[f"probe_action{key}"] = {k: v for k, v in probe.items() if k != "predictions"}
        if head is not None:
            out[f"head{key}"] = {"r2": mean_r2(head, act), "r2_per_dim": r2_per_dim(head, act).tolist()}
        by_source = {}
        sources = np.array([data.sources[e] for e in groups[rows]])
        for src in sorted(set(sources)):
            m = sources == src
            by_source[src] = {"probe_r2": mean_r2(probe["predictions"][m], act[m]),
                              "head_r2": mean_r2(head[m], act[m]) if head is not None else None,
                              "num_pairs": int(m.sum())}
        out[f"by_source{key}"] = by_source
    ee = data.pair_ee_deltas(index)
    ok = np.isfinite(ee).all(1)
    if ok.sum() > 10:
        probe = linear_probe(z[ok], ee[ok], groups[ok], folds=folds)
        out["probe_ee_motion"] = {k: v for k, v in probe.items() if k != "predictions"}
    if code_parts:
        out["codebook"] = codebook_usage(torch.cat(code_parts).cpu().numpy(), wm.config.latent.codebook_size)
    return _round(out)


def rollout_windows(data: PairData, horizon: int, max_windows: int, seed: int = 0) -> np.ndarray:
    """(W, 2) [episode index, start t] of windows with ``horizon`` steps, from episodes with actions, spread evenly."""
    starts = [(e, t) for e, s in enumerate(data.states) if data.actions[e] is not None
              for t in range(0, s.shape[0] - horizon, max(1, horizon // 2))]
    if not starts:
        return np.zeros((0, 2), dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    if len(starts) > max_windows:
        starts = starts[np.sort(np.random.default_rng(seed).choice(len(starts), max_windows, replace=False))]
    return starts


def _window_arrays(data: PairData, windows: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    frames = np.stack([data.states[e][t:t + horizon + 1] for e, t in windows])  # (W, K+1, C, H, W) uint8
    actions = np.stack([data.actions[e][t:t + horizon] for e, t in windows])  # (W, K, A)
    return frames, actions


def rollout_metrics(wm: WorldModel, data: PairData, horizon: int = 8, max_windows: int = 256, seed: int = 0,
                    batch_size: int = 64) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Open-loop rollouts over held-out windows; returns metrics and, for drawing, the first windows' frames."""
    windows = rollout_windows(data, horizon, max_windows, seed)
    if len(windows) == 0:
        return {"num_windows": 0}, {}
    frames, actions = _window_arrays(data, windows, horizon)
    emb = [data.embodiments[e] for e, _ in windows]
    rgb = 3 * len(wm.config.cameras)  # metrics on the RGB channels (depth channels, if any, follow them)
    perm = np.random.default_rng(seed + 1).permutation(len(windows))
    perm = np.where(perm == np.arange(len(perm)), np.roll(perm, 1), perm)  # never a window's own actions
    generator = torch.Generator().manual_seed(seed)
    preds: dict[str, list[np.ndarray]] = {"action": [], "latent": [], "shuffled": []}
    for i in range(0, len(windows), batch_size):
        sl = slice(i, i + batch_size)
        f = frames[sl]
        name = emb[i]
        batch_emb = set(emb[sl])
        if len(batch_emb) > 1:
            raise ValueError("rollout_metrics: one embodiment per evaluation set, please")
        s0 = f[:, 0]
        z = wm.infer_latents(f[:, :-1].reshape(-1, *f.shape[2:]), f[:, 1:].reshape(-1, *f.shape[2:]))
        z = z.reshape(len(f), horizon, -1)
        preds["action"].append(wm.rollout(s0, actions=actions[sl], embodiment=name, generator=generator))
        preds["latent"].append(wm.rollout(s0, latents=z, generator=generator))
        preds["shuffled"].append(wm.rollout(s0, actions=actions[perm[sl]], embodiment=name, generator=generator))
    pred = {k: np.concatenate(v) for k, v in preds.items()}  # (W, K, C, H, W) uint8
    pred["copy"] = np.repeat(frames[:, :1], horizon, axis=1)

    def img(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x[:, :rgb]).float() / 255.0

    cams = list(wm.config.cameras)
    result: dict[str, Any] = {"num_windows": int(len(windows)), "horizon": horizon}
    per_step: dict[str, dict[str, list]] = {k: {"psnr": [], "psnr_masked": [], "ssim": [], "ssim_masked": [],
                                                "psnr_masked_per_camera": []} for k in pred}
    for k in range(1, horizon + 1):
        real = img(frames[:, k])
        start = img(frames[:, 0])
        mask = motion_mask(start, real)
        cam_masks = [motion_mask(start[:, 3 * c:3 * c + 3], real[:, 3 * c:3 * c + 3]) for c in range(len(cams))]
        for cond, p in pred.items():
            x = img(p[:, k - 1])
            entry = per_step[cond]
            entry["psnr"].append(psnr(x, real).mean().item())
            entry["psnr_masked"].append(float(np.nanmean(psnr(x, real, mask).numpy())))
            entry["ssim"].append(ssim(x, real).mean().item())
            entry["ssim_masked"].append(float(np.nanmean(ssim(x, real, mask).numpy())))
            entry["psnr_masked_per_camera"].append(
                {cam: float(np.nanmean(psnr(x[:, 3 * c:3 * c + 3], real[:, 3 * c:3 * c + 3], cam_masks[c]).numpy()))
                 for c, cam in enumerate(cams)})
    result["per_step"] = per_step
    last = horizon - 1
    summary = {
        "psnr_gain_1step_db": per_step["action"]["psnr_masked"][0] - per_step["copy"]["psnr_masked"][0],
        f"psnr_gain_{horizon}step_db": per_step["action"]["psnr_masked"][last] - per_step["copy"]["psnr_masked"][last],
        "psnr_gain_1step_full_db": per_step["action"]["psnr"][0] - per_step["copy"]["psnr"][0],
        f"psnr_gain_{horizon}step_full_db": per_step["action"]["psnr"][last] - per_step["copy"]["psnr"][last],
        "latent_psnr_gain_1step_db": per_step["latent"]["psnr_masked"][0] - per_step["copy"]["psnr_masked"][0],
        f"latent_psnr_gain_{horizon}step_db": (per_step["latent"]["psnr_masked"][last]
                                               - per_step["copy"]["psnr_masked"][last]),
        "action_sensitivity_db": float(np.mean(per_step["action"]["psnr"]) - np.mean(per_step["shuffled"]["psnr"])),
        "action_sensitivity_masked_db": float(np.mean(per_step["action"]["psnr_masked"])
                                              - np.mean(per_step["shuffled"]["psnr_masked"])),
        "psnr_gain_1step_db_per_camera": {
            cam: per_step["action"]["psnr_masked_per_camera"][0][cam] - per_step["copy"]["psnr_masked_per_camera"][0][cam]
            for cam in cams},
        f"psnr_gain_{horizon}step_db_per_camera": {
            cam: (per_step["action"]["psnr_masked_per_camera"][last][cam]
                  - per_step["copy"]["psnr_masked_per_camera"][last][cam]) for cam in cams},
    }
    result["summary"] = summary
    show = drawing_windows(windows)
    drawings = {"real": frames[show], **{k: pred[k][show] for k in ("action", "latent", "shuffled")},
                "episode_ids": np.array([data.episode_ids[e] for e, _ in windows[show]]),
                "start_frames": windows[show, 1]}
    return _round(result), drawings


def drawing_windows(windows: np.ndarray, count: int = 4) -> np.ndarray:
    """Indices of up to ``count`` windows to draw, one per held-out episode first (then more of the same ones)."""
    first = [int(np.flatnonzero(windows[:, 0] == e)[0]) for e in np.unique(windows[:, 0])]
    rest = [i for i in range(len(windows)) if i not in first]
    return np.array(sorted((first + rest)[:count]), dtype=np.int64)


def rollout_speed(wm: WorldModel, data: PairData, batch_size: int = 64, steps: int = 4, threads: int = 1) -> float:
    """Predicted frames per CPU-second on ``threads`` torch threads, rolling ``steps`` steps from real states with
    real actions (a frame is one full state: every camera)."""
    windows = rollout_windows(data, steps, batch_size)
    if len(windows) == 0:
        return float("nan")
    frames, actions = _window_arrays(data, windows, steps)
    name = data.embodiments[windows[0][0]]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        wm.rollout(frames[:2, 0], actions=actions[:2, :1], embodiment=name)  # warm-up
        start = time.process_time()
        wm.rollout(frames[:, 0], actions=actions, embodiment=name)
        cpu = time.process_time() - start
    finally:
        torch.set_num_threads(before)
    return len(windows) * steps / cpu


def evaluate(wm: WorldModel, data: PairData, horizon: int = 8, max_windows: int = 256, seed: int = 0,
             out_dir: str | Path | None = None, speed: bool = True) -> dict[str, Any]:
    """Every metric in one dict; with ``out_dir``, also ``rollouts.png``, ``rollouts.gif`` and ``rollouts.npz`` there."""
    wm.model.eval()
    result: dict[str, Any] = {"backend": wm.config.backend, "bottleneck": wm.config.latent.bottleneck,
                              "alignment": wm.config.alignment, "cameras": list(wm.config.cameras),
                              "image_size": wm.config.image_size}
    result["latent"] = latent_metrics(wm, data)
    result["rollout"], drawings = rollout_metrics(wm, data, horizon, max_windows, seed)
    if speed:
        result["speed"] = {"rollout_fps_per_core": round(rollout_speed(wm, data), 1),
                           "clock": "process CPU time, 1 torch thread, batch 64, 4-step rollouts"}
    if out_dir is not None and drawings:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        render_panel(drawings, wm.config.cameras, out_dir / "rollouts.png")
        render_gif(drawings, wm.config.cameras, out_dir / "rollouts.gif")
        # The drawn windows' frames, for the run report to redraw with labels (a few hundred kB at 64 px).
        np.savez_compressed(out_dir / "rollouts.npz", cameras=np.array(list(wm.config.cameras)), **drawings)
        result["files"] = {"panel": str(out_dir / "rollouts.png"), "gif": str(out_dir / "rollouts.gif"),
                           "frames": str(out_dir / "rollouts.npz")}
    return result


# -- drawing ---------------------------------------------------------------------------------------------------------


def _tile(state: np.ndarray, num_cameras: int) -> np.ndarray:
    """(C, H, W) uint8 state -> (H, W * cameras, 3) image, cameras side by side."""
    return np.concatenate([np.moveaxis(state[3 * c:3 * c + 3], 0, -1) for c in range(num_cameras)], axis=1)


def render_panel(drawings: dict[str, np.ndarray], cameras, path: str | Path, scale: int = 2) -> Path:
    """Rows per window: real, then rollouts from true actions, inferred latents and shuffled actions; columns are
    steps 0..K (step 0 is the real start frame in every row)."""
    from PIL import Image, ImageDraw

    real = drawings["real"]  # (W, K+1, C, H, W)
    n_cam = len(cameras)
    gap = 2
    rows = []
    labels = []
    for w in range(real.shape[0]):
        for name in ("real", "action", "latent", "shuffled"):
            seq = real[w] if name == "real" else np.concatenate([real[w, :1], drawings[name][w]])
            tiles = [_tile(s, n_cam) for s in seq]
            spacer = np.full((tiles[0].shape[0], gap, 3), 255, np.uint8)
            rows.append(np.concatenate([x for t in tiles for x in (t, spacer)][:-1], axis=1))
            labels.append(f"window {w}: {name}")
        rows.append(np.full((gap * 3, rows[-1].shape[1], 3), 255, np.uint8))
        labels.append("")
    image = Image.fromarray(np.concatenate(rows, axis=0))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    canvas = Image.new("RGB", (image.width + 150, image.height), "white")
    canvas.paste(image, (150, 0))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for row, label in zip(rows, labels):
        if label:
            draw.text((4, y + 4), label, fill="black")
        y += row.shape[0] * scale
    canvas.save(path)
    return Path(path)


def render_gif(drawings: dict[str, np.ndarray], cameras, path: str | Path, scale: int = 2, fps: float = 3.0) -> Path:
    """Animation: per frame, for each window a row [real | predicted from true actions]."""
    from PIL import Image

    real, pred = drawings["real"], drawings["action"]
    n_cam = len(cameras)
    frames = []
    for k in range(real.shape[1]):
        rows = []
        for w in range(real.shape[0]):
            p = real[w, 0] if k == 0 else pred[w, k - 1]
            left, right = _tile(real[w, k], n_cam), _tile(p, n_cam)
            rows.append(np.concatenate([left, np.full((left.shape[0], 4, 3), 255, np.uint8), right], axis=1))
        img = Image.fromarray(np.concatenate(rows, axis=0))
        frames.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return Path(path)

