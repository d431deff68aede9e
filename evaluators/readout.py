"""A small CNN that reads, from one state frame, where the end-effector and the task's target object are and how far
the task has progressed: the eyes of the ``progress`` and ``geometric`` judges.

    frames, targets, masks = readout_targets(episode, cameras=("front",), image_size=64)   # per training episode
    readout = train_readout(frames, targets, masks, ReadoutConfig(in_channels=3, image_size=64))
    out = readout.predict(frames)            # {"ee_xyz": (N, 3) m, "object_xyz": (N, 3) m, "progress": (N,) in [0, 1]}
    readout.save("runs/x/readout");  readout = Readout.load("runs/x/readout")

A frame is a state as ``world_model.data.episode_state`` builds it, ``(C, H, W)`` uint8 (cameras x RGB stacked), so the
readout sees exactly what the world model produces. Each head has a mask: an episode without object truth trains only
the ee head, one that is not a successful scripted demonstration has no progress label. The network regresses
normalised positions (per-dim mean / std of the training labels); the wrapper ``Readout`` owns those statistics and
returns metres. Progress is a sigmoid in [0, 1].

Saved as a directory: ``model.safetensors`` (weights) and ``config.json`` (``ReadoutConfig`` and the target
statistics); nothing is unpickled on load.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from episodes import Episode
from episodes import io as fileio
from world_model.data import episode_state, to_model

logger = logging.getLogger(__name__)

FORMAT = 1
CONFIG, MODEL = "config.json", "model.safetensors"
POSITION_HEADS = ("ee_xyz", "object_xyz")  # regressed in normalised units, returned in metres
HEADS = (*POSITION_HEADS, "progress")
EE_STATE_NAMES = ("ee_x", "ee_y", "ee_z")


@dataclass
class ReadoutConfig:
    in_channels: int = 3  # channels of one state: 3 per RGB camera (+1 per depth map)
    image_size: int = 64  # square side in pixels
    channels: tuple[int, ...] = (16, 32, 64, 64)  # conv widths, each level halves the image (64 -> 4x4 at the end)
    hidden_dim: int = 128  # the MLP between the flattened feature map and the heads
    lr: float = 1e-3
    steps: int = 2000
    batch_size: int = 64
    seed: int = 0
    cameras: tuple[str, ...] = ()  # the camera order of the channels it was trained on (checked by the judges)

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.cameras = tuple(str(c) for c in self.cameras)
        for name in ("in_channels", "image_size", "hidden_dim", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"channels: expected one or more positive widths, got {list(self.channels)}")
        down = 2 ** len(self.channels)
        if self.image_size % down:
            raise ValueError(f"image_size: expected a multiple of {down} (2 ** len(channels)), got {self.image_size}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: expected an integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# -- the network -----------------------------------------------------------------------------------------------------


class FrameReadout(nn.Module):
    """Conv stack (stride 2 per level, with two coordinate channels so positions stay readable) -> flatten -> MLP ->
    three heads. ``forward`` returns raw outputs: normalised ee and object xyz, and a progress logit."""

    def __init__(self, config: ReadoutConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.in_channels + 2  # + x, y coordinate channels
        for out in config.channels:
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.GroupNorm(min(8, out), out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.SiLU()]
            width = out
        self.features = nn.Sequential(*layers)
        side = config.image_size // 2 ** len(config.channels)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(width * side * side, config.hidden_dim), nn.SiLU())
        self.heads = nn.ModuleDict({"ee_xyz": nn.Linear(config.hidden_dim, 3),
                                    "object_xyz": nn.Linear(config.hidden_dim, 3),
                                    "progress": nn.Linear(config.hidden_dim, 1)})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, C, H, W) in [-1, 1] -> {"ee_xyz": (B, 3), "object_xyz": (B, 3), "progress": (B,) logits}."""
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device).view(1, 1, 1, w).expand(b, 1, h, w)
        feat = self.mlp(self.features(torch.cat([x, xs, ys], dim=1)))  # (B, hidden)
        return {name: head(feat).squeeze(-1) if name == "progress" else head(feat) for name, head in self.heads.items()}

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: x (B, C, H, W) in [-1, 1]; per head its target (normalised xyz (B, 3) / progress (B,)) and
        ``mask_<head>`` (B,) bool. Each head's mean squared error over its labelled rows; heads without labels in the
        batch add nothing."""
        out = self(batch["x"])
        loss = batch["x"].new_zeros(())
        parts: dict[str, float] = {}
        for name in HEADS:
            mask = batch[f"mask_{name}"]
            if not mask.any():
                continue
            pred = torch.sigmoid(out[name]) if name == "progress" else out[name]
            err = F.mse_loss(pred[mask], batch[name][mask])
            loss = loss + err
            parts[name] = float(err.detach())
        parts["loss"] = float(loss.detach())
        return loss, parts


# -- the wrapper -----------------------------------------------------------------------------------------------------


class Readout:
    """Inference over a trained ``FrameReadout``: scales uint8 frames, un-normalises positions to metres."""

    def __init__(self, model: FrameReadout, stats: dict[str, dict[str, list[float]]],
                 labelled: dict[str, int] | None = None, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.config = model.config
        self.device = torch.device(device)
        self.stats = {name: {"mean": [float(v) for v in stats[name]["mean"]],
                             "std": [float(v) for v in stats[name]["std"]]} for name in POSITION_HEADS}
        self.labelled = {name: int((labelled or {}).get(name, 0)) for name in HEADS}  # training rows per head

    def trained(self, head: str) -> bool:
        """Whether ``head`` saw any labels in training (an untrained head's output means nothing)."""
        return self.labelled[head] > 0

    def check_cameras(self, cameras: Sequence[str]) -> None:
        """Raise ValueError if frames from ``cameras`` are not laid out as the readout was trained (when both are
        known)."""
        if self.config.cameras and cameras and tuple(cameras) != self.config.cameras:
            raise ValueError(f"readout: trained on cameras {list(self.config.cameras)}, frames have {list(cameras)}; "
                             f"train a readout on the world model's cameras")

    @torch.no_grad()
    def predict(self, frames: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
        """frames (N, C, H, W) uint8 (or one (C, H, W)) -> {"ee_xyz": (N, 3), "object_xyz": (N, 3) metres,
        "progress": (N,) in [0, 1]}."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        cfg = self.config
        if frames.ndim != 4 or frames.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"readout: frames of shape (N, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}) "
                             f"expected, got {frames.shape}")
        outs: dict[str, list[np.ndarray]] = {name: [] for name in HEADS}
        for i in range(0, len(frames), batch_size):
            out = self.model(to_model(frames[i:i + batch_size]).to(self.device))
            for name in POSITION_HEADS:
                mean, std = (torch.tensor(self.stats[name][k], device=self.device) for k in ("mean", "std"))
                outs[name].append((out[name] * std + mean).cpu().numpy())
            outs["progress"].append(torch.sigmoid(out["progress"]).cpu().numpy())
        empty = {"ee_xyz": (0, 3), "object_xyz": (0, 3), "progress": (0,)}
        return {name: (np.concatenate(v) if v else np.zeros(empty[name])).astype(np.float32)
                for name, v in outs.items()}

    def save(self, path: str | Path) -> str:
        """Write ``model.safetensors`` and ``config.json`` into the directory ``path`` (local or URL)."""
        path = fileio.normalize(path)
        fileio.makedirs(path)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        fileio.atomic_write_bytes(fileio.join(path, MODEL), save_safetensors(weights))
        doc = {"format": FORMAT, "config": self.config.to_dict(), "stats": self.stats, "labelled": self.labelled}
        fileio.atomic_write_text(fileio.join(path, CONFIG), json.dumps(doc, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Readout:
        path = fileio.normalize(path)
        doc = json.loads(fileio.read_text(fileio.join(path, CONFIG)))
        if doc.get("format") != FORMAT:
            raise ValueError(f"readout {path}: format {doc.get('format')!r} not supported (expected {FORMAT})")
        model = FrameReadout(ReadoutConfig(**doc["config"]))
        model.load_state_dict(load_safetensors(fileio.read_bytes(fileio.join(path, MODEL))))
        return cls(model, doc["stats"], doc.get("labelled"), device=device)


# -- training --------------------------------------------------------------------------------------------------------


def train_readout(frames: np.ndarray, targets: dict[str, np.ndarray], masks: dict[str, np.ndarray] | None = None,
                  config: ReadoutConfig | None = None, device: str | torch.device = "cpu") -> Readout:
    """Fit a readout on frames (N, C, H, W) uint8 and their labels.

    targets: "ee_xyz" (N, 3), "object_xyz" (N, 3) metres, "progress" (N,) in [0, 1]; any may be missing.
    masks: per head (N,) bool, which rows carry that label (default: every row of a given target).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected (N, C, H, W) uint8, got {frames.shape} {frames.dtype}")
    n = len(frames)
    config = config or ReadoutConfig(in_channels=frames.shape[1], image_size=frames.shape[-1])
    if frames.shape[1:] != (config.in_channels, config.image_size, config.image_size):
        raise ValueError(f"frames: shape {frames.shape[1:]} does not match the config "
                         f"({config.in_channels}, {config.image_size}, {config.image_size})")
    unknown = sorted(set(targets) - set(HEADS))
    if unknown:
        raise ValueError(f"targets: unknown heads {unknown} (known: {', '.join(HEADS)})")
    masks = dict(masks or {})
    labels: dict[str, np.ndarray] = {}
    label_masks: dict[str, np.ndarray] = {}
    for name in HEADS:
        width = 1 if name == "progress" else 3
        value = targets.get(name)
        value = np.zeros((n, width), np.float32) if value is None else np.asarray(value, np.float32).reshape(n, width)
        mask = masks.get(name)
        mask = np.full(n, name in targets) if mask is None else np.asarray(mask, bool).reshape(n)
        label_masks[name] = mask & np.isfinite(value).all(1)
        labels[name] = np.where(label_masks[name][:, None], value, 0.0).astype(np.float32)
    if not any(m.any() for m in label_masks.values()):
        raise ValueError("train_readout: no labelled rows (every mask is empty)")

    stats = {}
    for name in POSITION_HEADS:
        rows = labels[name][label_masks[name]]
        mean = rows.mean(0) if len(rows) else np.zeros(3, np.float32)
        std = rows.std(0) if len(rows) > 1 else np.ones(3, np.float32)
        std = np.where(std > 1e-6, std, 1.0)
        stats[name] = {"mean": mean.tolist(), "std": std.tolist()}
        labels[name] = (labels[name] - mean) / std

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = FrameReadout(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    x_all = torch.from_numpy(frames)  # uint8, scaled per batch
    t_all = {name: torch.from_numpy(labels[name].squeeze(-1) if name == "progress" else labels[name]) for name in HEADS}
    m_all = {name: torch.from_numpy(label_masks[name]) for name in HEADS}
    for step in range(config.steps):
        lr = config.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / config.steps)))  # cosine to lr / 10
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.from_numpy(rng.integers(0, n, size=min(config.batch_size, n)))
        batch = {"x": to_model(x_all[index]).to(device)}
        for name in HEADS:
            batch[name] = t_all[name][index].to(device)
            batch[f"mask_{name}"] = m_all[name][index].to(device)
        loss, parts = model.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 200 == 0 or step == config.steps - 1:
            logger.info("readout step %d/%d: %s", step + 1, config.steps,
                        ", ".join(f"{k} {v:.4f}" for k, v in parts.items()))
    labelled = {name: int(label_masks[name].sum()) for name in HEADS}
    return Readout(model.cpu(), stats, labelled, device=device)


# -- labels from episodes --------------------------------------------------------------------------------------------


def readout_targets(episode: Episode, cameras: Sequence[str], image_size: int, depth: bool = False,
                    max_depth_m: float = 2.0) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(frames (T, C, H, W) uint8, targets, masks) of one episode.

    ee_xyz     from ``state`` (``meta["state_names"]`` ee_x, ee_y, ee_z), else ``extras["ee_pose"][:, :3]``
    object_xyz ``extras["object_poses"][:, meta["target_object"], :3]`` when both are there
    progress   t / (T - 1), only for a successful episode with a task (``meta["success"]`` true: a scripted
               demonstration runs monotonically toward its goal, so frame order is progress); masked otherwise
    """
    frames = episode_state(episode, cameras, image_size, depth, max_depth_m)
    t_len = len(frames)
    meta = episode.meta or {}
    targets = {"ee_xyz": np.zeros((t_len, 3), np.float32), "object_xyz": np.zeros((t_len, 3), np.float32),
               "progress": np.zeros(t_len, np.float32)}
    masks = {name: np.zeros(t_len, bool) for name in HEADS}

    names = list(meta.get("state_names") or [])
    if episode.state is not None and all(n in names for n in EE_STATE_NAMES):
        targets["ee_xyz"] = episode.state[:, [names.index(n) for n in EE_STATE_NAMES]].astype(np.float32)
        masks["ee_xyz"][:] = True
    elif "ee_pose" in episode.extras:
        targets["ee_xyz"] = np.asarray(episode.extras["ee_pose"])[:, :3].astype(np.float32)
        masks["ee_xyz"][:] = True

    target = meta.get("target_object")
    poses = episode.extras.get("object_poses")
    if target is not None and poses is not None and 0 <= int(target) < np.asarray(poses).shape[1]:
        targets["object_xyz"] = np.asarray(poses)[:, int(target), :3].astype(np.float32)
        masks["object_xyz"][:] = True

    if bool(meta.get("success")) and (episode.task or meta.get("task_family")) and t_len > 1:
        targets["progress"] = (np.arange(t_len) / (t_len - 1)).astype(np.float32)
        masks["progress"][:] = True
    return frames, targets, masks
