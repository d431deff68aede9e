"""The run report's pictures, each returned as PNG bytes (``pipeline.report`` embeds them as base64).

    loss_curves            train_world_model's losses.jsonl: every loss term against the step (log scale)
    rollout_fidelity       evaluate_world_model's per-step PSNR / SSIM (motion-masked and full frame) by horizon for
                           true actions, inferred latents, shuffled actions and copy-last-frame
    probe_r2               latent probe / action head R2 per action dimension (and pseudo-label R2)
    rollout_panel          the drawn rollout windows (``rollouts.npz``): a header row of steps, per window one row per
                           condition labelled with the episode id, start frame and the row's PSNR against the real row
    label_old_panel        an older run's unlabelled ``rollouts.png`` with a header of steps added
    qa_sample              a QA frame with its objects' boxes (projected oriented boxes), the question and the answer
    score_histograms       the filter's evaluator scores, split by what the simulator replay said, thresholds drawn
    bars                   a small horizontal bar chart (acceptance by reason, episodes by provenance)

Matplotlib runs on the Agg backend; figures are drawn small (dpi 80) so the page stays light and quick to render.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

DPI = 80
CONDITION_STYLE = {"action": ("true actions", "C0", "-"), "latent": ("inferred latents", "C2", "-"),
                   "shuffled": ("shuffled actions", "C3", "--"), "copy": ("copy last frame", "0.4", ":")}
ROW_NAMES = {"real": "real", "action": "true actions", "latent": "inferred latents", "shuffled": "shuffled actions"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def image_png(image, max_width: int = 1100) -> bytes:
    """A PIL image as PNG bytes, downscaled to ``max_width`` pixels at most."""
    from PIL import Image

    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def loss_curves(records: list[dict[str, Any]]) -> bytes:
    plt = _pyplot()
    skip = {"step", "lr", "cpu_s", "grad_norm", "time_s", "epoch"}
    keys = sorted({k for r in records for k, v in r.items() if k not in skip and isinstance(v, (int, float))})
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [3, 1]})
    steps = [r.get("step") for r in records]
    for key in keys:
        values = [r.get(key) for r in records]
        if all(v is None or v <= 0 for v in values):
            continue  # an unused term (0 throughout) has no place on a log axis
        ax.plot(steps, [v if v and v > 0 else np.nan for v in values], label=key, lw=2 if key == "loss" else 1.2)
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training losses")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    if any("lr" in r for r in records):
        ax_lr.plot(steps, [r.get("lr") for r in records], color="k")
    ax_lr.set(xlabel="step", title="learning rate")
    ax_lr.grid(alpha=0.3)
    return _png(fig)


def rollout_fidelity(per_step: dict[str, dict[str, list]]) -> bytes:
    plt = _pyplot()
    panels = [("psnr_masked", "PSNR, moving pixels (dB)"), ("psnr", "PSNR, full frame (dB)"),
              ("ssim_masked", "SSIM, moving pixels"), ("ssim", "SSIM, full frame")]
    panels = [p for p in panels if any(p[0] in per_step[c] for c in per_step)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for cond, values in per_step.items():
            series = values.get(key)
            if not series:
                continue
            label, color, style = CONDITION_STYLE.get(cond, (cond, None, "-"))
            ax.plot(range(1, len(series) + 1), [np.nan if v is None else v for v in series], style, color=color,
                    marker="o", ms=3, label=label)
        ax.set(title=title, xlabel="rollout step (horizon)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _png(fig)


def probe_r2(series: dict[str, list[float]], dim_names: list[str] | None = None, title: str = "R2 per dimension"
             ) -> bytes:
    """Grouped bars: one group per dimension, one bar per series (probe, head, ...)."""
    plt = _pyplot()
    dims = max(len(v) for v in series.values())
    names = dim_names if dim_names and len(dim_names) == dims else [f"dim {i}" for i in range(dims)]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * dims + 1.5), 3.0))
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        values = [np.nan if v is None else max(v, -1.0) for v in values]  # R2 can be hugely negative: floor at -1
        ax.bar(np.arange(len(values)) + k * width - 0.4 + width / 2, values, width, label=label)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(dims), names)
    ax.set(ylim=(-1.05, 1.05), ylabel="R2 (floored at -1)", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _tile(state: np.ndarray, num_cameras: int) -> np.ndarray:
    """(C, H, W) uint8 state -> (H, W * cameras, 3), the RGB channels of each camera side by side."""
    return np.concatenate([np.moveaxis(state[3 * c:3 * c + 3], 0, -1) for c in range(num_cameras)], axis=1)


def rollout_panel(saved: dict[str, np.ndarray], scale: int = 2) -> bytes:
    """Header row: t=0..K; per window: real, true actions, latents, shuffled, each row labelled (episode id, start
    frame, mean PSNR of the row's predicted frames against the real ones)."""
    from PIL import Image, ImageDraw

    real = saved["real"]  # (W, K+1, C, H, W) uint8
    cameras = [str(c) for c in saved.get("cameras", np.array(["camera"]))]
    ids = [str(e) for e in saved.get("episode_ids", np.array([f"window {w}" for w in range(len(real))]))]
    starts = [int(s) for s in saved.get("start_frames", np.zeros(len(real), int))]
    n_cam, horizon = len(cameras), real.shape[1] - 1
    tile_h, tile_w = real.shape[3] * scale, real.shape[4] * n_cam * scale
    gap, label_w, head_h, line_h = 4, 230, 22, 14
    kinds = [k for k in ("real", "action", "latent", "shuffled") if k in saved]
    height = head_h + len(real) * (len(kinds) * (tile_h + gap) + 12)
    canvas = Image.new("RGB", (label_w + (horizon + 1) * (tile_w + gap), height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), f"cameras: {', '.join(cameras)}", fill="black")
    for k in range(horizon + 1):
        draw.text((label_w + k * (tile_w + gap) + tile_w // 2 - 12, 4), f"t={k}", fill="black")
    y = head_h
    for w in range(len(real)):
        for kind in kinds:
            seq = real[w] if kind == "real" else np.concatenate([real[w, :1], saved[kind][w]])
            for k, state in enumerate(seq):
                tile = Image.fromarray(_tile(state, n_cam)).resize((tile_w, tile_h), Image.NEAREST)
                canvas.paste(tile, (label_w + k * (tile_w + gap), y))
            lines = [f"{ids[w]} @ frame {starts[w]}", ROW_NAMES.get(kind, kind)] if kind == "real" else \
                [ROW_NAMES.get(kind, kind), "PSNR vs real: %.1f dB" % np.mean(
                    [_psnr(seq[k, :3 * n_cam], real[w, k, :3 * n_cam]) for k in range(1, horizon + 1)])]
            for i, line in enumerate(lines):
                draw.text((4, y + tile_h // 2 - line_h + i * line_h), line, fill="black" if i == 0 else "#444")
            y += tile_h + gap
        draw.line((0, y + 4, canvas.width, y + 4), fill="#bbb")
        y += 12
    return image_png(canvas)


def label_old_panel(png: bytes, image_size: int, num_cameras: int, horizon: int, scale: int = 2) -> bytes:
    """An older run's ``rollouts.png`` (rows labelled, no column headers) with a header row of steps added."""
    from PIL import Image, ImageDraw

    panel = Image.open(io.BytesIO(png)).convert("RGB")
    tile_w, gap, left, head_h = image_size * num_cameras * scale, 2 * scale, 150, 20
    canvas = Image.new("RGB", (panel.width, panel.height + head_h), "white")
    canvas.paste(panel, (0, head_h))
    draw = ImageDraw.Draw(canvas)
    for k in range(horizon + 1):
        draw.text((left + k * (tile_w + gap) + tile_w // 2 - 12, 4), f"t={k}", fill="black")
    return image_png(canvas)


def _project_box(obj: dict[str, Any], frame_to_cam: np.ndarray, intr: dict[str, float]) -> list[tuple] | None:
    """The 12 edges of an object's oriented box (viewer frame, metres) in pixels, or None if behind the camera."""
    obb = obj.get("obb_m")
    if not obb:
        return None
    centre, extent, rot = (np.asarray(obb[k], float) for k in ("centre", "extent", "R"))
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    corners = centre + (signs * extent / 2) @ rot.T  # (8, 3) viewer frame
    cam = (frame_to_cam[:3, :3] @ corners.T).T + frame_to_cam[:3, 3]
    if (cam[:, 2] <= 1e-3).any():
        return None
    px = np.stack([intr["fx"] * cam[:, 0] / cam[:, 2] + intr["cx"], intr["fy"] * cam[:, 1] / cam[:, 2] + intr["cy"]], 1)
    edges = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]
    return [(tuple(px[a]), tuple(px[b])) for a, b in edges]


def qa_sample(rgb_png: bytes, record: dict[str, Any], qa: dict[str, Any], size: int = 320) -> bytes:
    """The frame upscaled to ``size`` px with the QA's objects' boxes and names, the question and the answer below."""
    import textwrap

    from PIL import Image, ImageDraw

    frame = Image.open(io.BytesIO(rgb_png)).convert("RGB")
    s = size / frame.width
    frame = frame.resize((size, round(frame.height * s)), Image.BILINEAR)
    intr = record.get("intrinsics") or {}
    cam_to_frame = (record.get("viewer_frame") or {}).get("cam_to_frame")
    colours = ["#ff3030", "#30c0ff", "#ffd000", "#40ff60"]
    canvas = Image.new("RGB", (size, frame.height + 110), "white")
    canvas.paste(frame, (0, 0))
    draw = ImageDraw.Draw(canvas)
    wanted = [int(i) for i in qa.get("object_ids") or []]
    objects = {int(o["object_id"]): o for o in record.get("objects", []) if "object_id" in o}
    if cam_to_frame is not None and intr:
        frame_to_cam = np.linalg.inv(np.asarray(cam_to_frame, float))
        for n, oid in enumerate(wanted):
            edges = _project_box(objects[oid], frame_to_cam, intr) if oid in objects else None
            if not edges:
                continue
            colour = colours[n % len(colours)]
            for a, b in edges:
                draw.line((a[0] * s, a[1] * s, b[0] * s, b[1] * s), fill=colour, width=2)
            x0 = min(min(a[0], b[0]) for a, b in edges) * s
            y0 = min(min(a[1], b[1]) for a, b in edges) * s
            draw.rectangle((x0, max(0, y0 - 13), x0 + 7 * len(objects[oid].get("name", "")), max(0, y0 - 13) + 12),
                           fill="black")
            draw.text((x0 + 1, max(0, y0 - 13)), objects[oid].get("name", str(oid)), fill=colour)
    y = frame.height + 4
    for label, text in (("Q", qa.get("question", "")), ("A", qa.get("answer", ""))):
        for i, line in enumerate(textwrap.wrap(f"{label}: {text}", width=size // 7)[:3]):
            draw.text((4, y), line, fill="black" if label == "Q" else "#0a5")
            y += 14
    draw.text((4, y + 2), f"[{qa.get('family', '')}]", fill="#666")
    return image_png(canvas, max_width=size)


def score_histograms(decisions: list[dict[str, Any]]) -> bytes:
    """Per evaluator: score histogram, split by the replay's verdict when replayed; threshold dashed."""
    plt = _pyplot()
    names = sorted({name for d in decisions for name in (d.get("evaluators") or {})})
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, name in zip(axes[0], names):
        judged = [d for d in decisions if name in (d.get("evaluators") or {})]
        truth = [(d.get("truth") or {}).get("passed") for d in judged]
        scores = np.array([d["evaluators"][name].get("score", np.nan) for d in judged], float)
        if any(t is not None for t in truth):
            ok = np.array([t is True for t in truth])
            ax.hist([scores[ok], scores[~ok]], bins=bins, stacked=True, color=["C2", "C3"],
                    label=["replay succeeded", "replay failed"])
        else:
            ax.hist(scores, bins=bins, color="C0")
        threshold = judged[0]["evaluators"][name].get("threshold") if judged else None
        if threshold is not None:
            ax.axvline(threshold, color="k", ls="--", lw=1)
        ax.set(title=name, xlabel="score")
    axes[0][0].set_ylabel("trajectories")
    if any((d.get("truth") or {}).get("passed") is not None for d in decisions):
        axes[0][0].legend(fontsize=7)
    return _png(fig)


def bars(counts: dict[str, float], title: str, xlabel: str = "episodes") -> bytes:
    plt = _pyplot()
    labels = list(counts)
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(labels) + 1.0))
    ax.barh(labels, [counts[k] for k in labels], color="C0")
    for i, k in enumerate(labels):
        ax.text(counts[k], i, f" {counts[k]:g}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(title=title, xlabel=xlabel)
    return _png(fig)
