"""``wmsynth view RUN --episode ID [--out PATH.mp4|.gif]``: one episode as a video to look at.

Each frame shows every camera's RGB above its colour-mapped depth (turbo, near = warm, with the range in metres), the
action as signed bars with values (``action_names`` from the episode), the frame index, and the provenance kind
(``real`` / ``pseudo_labelled`` / ``synthetic``) in the top-left corner.

Where the episode comes from, in order:
    1. the run's LeRobot shards (``shards/*/meta/wmsynth_provenance.json`` names the shard and episode index): opened
       with lerobot's ``LeRobotDataset`` and decoded with its video decoder (``pipeline.lerobot_read``);
    2. the run's intermediate episode files (``stages/NN_<stage>/episodes/<ID>.episode``, the latest stage first),
       e.g. a synthetic rollout that the filter rejected, while ``keep_intermediates`` kept them.
Encoded with PyAV (H.264 mp4) or Pillow (GIF).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from episodes import SUFFIX, Episode
from episodes import io as fileio
from pipeline.lerobot_schema import DEPTH_PREFIX, IMAGES_PREFIX, STATE_KEY
from pipeline.lerobot_shard import PROVENANCE_FILE, provenance_kind

TILE_PX = 256  # each camera's RGB and depth are drawn this tall
ACTION_KEY = "action"
KIND_COLOURS = {"real": (40, 160, 60), "pseudo_labelled": (230, 150, 20), "synthetic": (150, 60, 200)}


class ViewError(ValueError):
    """The episode cannot be found or shown; says where it was looked for."""


def find_in_shards(run_dir: str, episode_id: str) -> tuple[str, dict, dict] | None:
    """(shard directory, its provenance, the episode's entry) of the shard holding ``episode_id``, or None."""
    shards = fileio.join(run_dir, "shards")
    for shard in sorted(fileio.listdir(shards)) if fileio.is_dir(shards) else []:
        path = fileio.join(shard, PROVENANCE_FILE)
        if not fileio.exists(path):
            continue
        import json

        provenance = json.loads(fileio.read_text(path))
        for entry in provenance.get("episodes", []):
            if entry.get("episode_id") == episode_id:
                return shard, provenance, entry
    return None


def read_from_shard(shard: str, provenance: dict, entry: dict, tmp: Path) -> Episode:
    """The episode read back with lerobot's reader (a shard on object storage is copied to ``tmp`` first)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from pipeline.lerobot_read import VIDEO_BACKEND, KeyMap, read_episode

    root = Path(shard) if fileio.is_local(shard) else tmp / "shard"
    if not fileio.is_local(shard):
        fileio.download_dir(shard, root)
    schema = provenance.get("schema") or {}
    cameras = [c[0] for c in schema.get("cameras", [])]
    keys = KeyMap(cameras={c: IMAGES_PREFIX + c for c in cameras},
                  depth={c: DEPTH_PREFIX + c for c in schema.get("depth_cameras", [])},
                  state_key=STATE_KEY if schema.get("state_names") else None,
                  action_key=ACTION_KEY if schema.get("action_names") else None)
    index = int(entry["episode_index"])
    dataset = LeRobotDataset(provenance.get("repo_id", "wmsynth/run"), root=root, episodes=[index],
                             video_backend=VIDEO_BACKEND)
    episode = read_episode(dataset.meta, root, index, entry["episode_id"], keys, location=str(shard),
                           repo_id=dataset.repo_id, tolerance_s=dataset.tolerance_s, cache_dir=tmp / "cache")
    episode.meta.update(entry.get("meta") or {})
    episode.meta["provenance"] = entry.get("provenance") or provenance_kind(episode.meta)
    return episode


def find_intermediate(run_dir: str, episode_id: str) -> str | None:
    """The newest stage's ``<ID>.episode`` under ``stages/*/episodes/``, or None."""
    stages = fileio.join(run_dir, "stages")
    for stage_dir in sorted(fileio.listdir(stages), reverse=True) if fileio.is_dir(stages) else []:
        path = fileio.join(stage_dir, "episodes", episode_id + SUFFIX)
        if fileio.exists(path):
            return path
    return None


def load_episode(run_dir: str, episode_id: str, tmp: Path) -> tuple[Episode, str]:
    """(episode, where it was read from)."""
    found = find_in_shards(run_dir, episode_id)
    if found is not None:
        return read_from_shard(*found, tmp), f"{found[0]} (LeRobot shard)"
    path = find_intermediate(run_dir, episode_id)
    if path is not None:
        episode = Episode.load(path)
        episode.meta["provenance"] = provenance_kind(episode.meta)
        return episode, path
    raise ViewError(f"episode {episode_id!r} is in no shard of {run_dir} (shards/*/{PROVENANCE_FILE}) and no stage "
                    f"kept its episode file (stages/*/episodes/); episode ids are in {run_dir}/manifest.json")


# -- drawing ---------------------------------------------------------------------------------------------------------


def _turbo_lut() -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["turbo"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)  # (256, 3)


def colour_depth(depth_m: np.ndarray, near_m: float, far_m: float, lut: np.ndarray) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) uint8, near warm, far cool; no measurement (0 / NaN) black."""
    valid = np.isfinite(depth_m) & (depth_m > 0)
    scaled = np.clip((far_m - np.nan_to_num(depth_m)) / max(far_m - near_m, 1e-6), 0, 1)
    out = lut[(scaled * 255).astype(np.uint8)]
    out[~valid] = 0
    return out


def _depth_range(episode: Episode, cam: str) -> tuple[float, float]:
    d = episode.depth_m[cam]
    valid = d[np.isfinite(d) & (d > 0)]
    if valid.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(valid, [1, 99])
    return float(lo), float(max(hi, lo + 1e-3))


def render_frames(episode: Episode, tile_px: int = TILE_PX):
    """Yield one RGB image (uint8, even width and height) per frame."""
    from PIL import Image, ImageDraw

    cams = episode.cameras
    lut = _turbo_lut()
    ranges = {cam: _depth_range(episode, cam) for cam in episode.depth_m}
    action = episode.action
    names = list(episode.meta.get("action_names") or [f"a{i}" for i in range(action.shape[1])]) \
        if action is not None else []
    scale = np.maximum(np.abs(action).max(0), 1e-6) if action is not None else None
    kind = episode.meta.get("provenance", provenance_kind(episode.meta))
    widths = [round(episode.rgb[c].shape[2] * tile_px / episode.rgb[c].shape[1]) for c in cams]
    has_depth = bool(episode.depth_m)
    bar_h = 18 * len(names) + 28
    width = sum(widths) + 4 * (len(cams) - 1)
    height = tile_px * (2 if has_depth else 1) + bar_h
    width, height = width + width % 2, height + height % 2  # H.264 wants even sizes
    for t in range(episode.num_frames):
        canvas = Image.new("RGB", (width, height), (20, 20, 20))
        draw = ImageDraw.Draw(canvas)
        x = 0
        for cam, w in zip(cams, widths):
            canvas.paste(Image.fromarray(episode.rgb[cam][t]).resize((w, tile_px), Image.BILINEAR), (x, 0))
            draw.text((x + 4, tile_px - 14), cam, fill="white")
            if cam in episode.depth_m:
                near, far = ranges[cam]
                depth = colour_depth(episode.depth_m[cam][t], near, far, lut)
                canvas.paste(Image.fromarray(depth).resize((w, tile_px), Image.NEAREST), (x, tile_px))
                draw.text((x + 4, 2 * tile_px - 14), f"depth {near:.2f}-{far:.2f} m", fill="white")
            x += w + 4
        label = kind.replace("_", "-")
        draw.rectangle((0, 0, 8 + 7 * len(label), 16), fill=KIND_COLOURS.get(kind, (90, 90, 90)))
        draw.text((4, 2), label, fill="white")
        draw.text((width - 120, 2), f"frame {t + 1}/{episode.num_frames}", fill="white")
        y = tile_px * (2 if has_depth else 1) + 6
        if action is None:
            draw.text((6, y), "no action in this episode", fill="white")
        else:
            draw.text((6, y), f"action[{t}]", fill="white")
            mid = width // 2
            for i, name in enumerate(names):
                yy = y + 18 * (i + 1)
                value = float(action[t, i])
                length = int(value / scale[i] * (width // 2 - 90))
                draw.text((6, yy), name[:10], fill="white")
                draw.rectangle((min(mid, mid + length), yy + 2, max(mid, mid + length), yy + 12),
                               fill=(80, 170, 255) if value >= 0 else (255, 110, 80))
                draw.line((mid, yy, mid, yy + 14), fill="white")
                draw.text((width - 76, yy), f"{value:+.3f}", fill="white")
        yield np.asarray(canvas)


def write_video(frames, path: Path, fps: float) -> int:
    """Encode ``frames`` to an mp4 (H.264, PyAV) or a GIF (Pillow) by the suffix; the number of frames written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
        return len(images)
    import av
    from fractions import Fraction

    count = 0
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20"}
        for frame in frames:
            if count == 0:
                stream.height, stream.width = frame.shape[:2]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count


def view_episode(run_dir: str, episode_id: str, out: str | Path | None = None) -> tuple[Path, int, str]:
    """Write the episode's video; (path, frames written, where the episode was read from)."""
    out = Path(out) if out else Path(f"{episode_id}.mp4")
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise ViewError(f"--out {out}: write an .mp4 or a .gif")
    with tempfile.TemporaryDirectory(prefix="wmsynth-view-") as tmp:
        episode, where = load_episode(fileio.normalize(run_dir), episode_id, Path(tmp))
        count = write_video(render_frames(episode), out, float(episode.fps or 10.0))
    return out, count, where


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory (local path or URL)")
    parser.add_argument("--episode", required=True, help="episode id (as in manifest.json)")
    parser.add_argument("--out", help="output .mp4 or .gif (default: <episode>.mp4 in the current directory)")


def command(args: argparse.Namespace) -> int:
    try:
        path, count, where = view_episode(args.run_dir, args.episode, args.out)
    except ViewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"view: {path} ({count} frames of {args.episode}, read from {where})")
    return 0
