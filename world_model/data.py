"""Frame pairs for the latent-action world model, from episodes on disk: states, actions, labels, batches.

A *state* is one time step of an episode as a stack of channels, ``(C, H, W)`` uint8: the RGB of each camera in
``cameras`` order (3 channels each), then optionally each camera's depth (clipped to ``max_depth_m``, scaled to 0..255).
Frames of another size are resized (area averaging). The model sees states scaled to [-1, 1] (``to_model``).

Which pairs carry labels is decided per *episode*: among episodes that have actions (and, if ``labelled_sources`` is
set, come from one of those sources) a deterministic, seeded ``labelled_fraction`` is kept labelled; every other
episode is video-only. So "10% labelled" means 10% of the episodes, and unlabelled and labelled data can come from
different sources in the same run. ``BatchSampler`` mixes sources with ``source_weights`` and can over-sample the
labelled pairs (``labelled_batch_fraction``), which matters when only a few episodes are labelled.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from episodes import Episode, read_array, read_header_and_meta, streams

logger = logging.getLogger(__name__)

DEFAULT_EMBODIMENT = "unknown"  # an episode that names no robot (never guessed: its actions get their own head)


def embodiment_of(meta: dict) -> str:
    """The robot an episode's actions belong to: ``meta["robot_type"]`` (or the LeRobot dataset's), else
    ``unknown``."""
    lerobot = meta.get("lerobot") if isinstance(meta.get("lerobot"), dict) else {}
    return str(meta.get("robot_type") or lerobot.get("robot_type") or DEFAULT_EMBODIMENT)


def episode_state(episode: Episode, cameras: Sequence[str], image_size: int, depth: bool = False,
                  max_depth_m: float = 2.0) -> np.ndarray:
    """(T, C, H, W) uint8 states of an episode; raises KeyError naming a missing camera or depth stream."""
    chans = []
    for cam in cameras:
        if cam not in episode.rgb:
            raise KeyError(f"episode {episode.episode_id}: no rgb stream for camera {cam!r} "
                           f"(has {', '.join(episode.rgb) or 'none'}); set cameras to ones the data has")
        chans.append(np.moveaxis(episode.rgb[cam], -1, 1))  # (T, 3, H, W)
    if depth:
        for cam in cameras:
            if cam not in episode.depth_m:
                raise KeyError(f"episode {episode.episode_id}: no depth_m stream for camera {cam!r}; "
                               f"run the depth stage first or set depth: false")
            d = np.nan_to_num(episode.depth_m[cam], nan=0.0)
            chans.append((np.clip(d / max_depth_m, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)[:, None])
    state = np.concatenate(chans, axis=1)  # (T, C, H, W)
    if state.shape[-2:] != (image_size, image_size):
        resized = F.interpolate(torch.from_numpy(state).float(), size=(image_size, image_size), mode="area")
        state = resized.round().clamp(0, 255).to(torch.uint8).numpy()
    return np.ascontiguousarray(state)


def episode_keys(cameras: Sequence[str], depth: bool = False) -> set[str]:
    """The arrays of an episode file that states, actions and end-effector motion are built from (``Episode.load``
    decodes only these: other cameras, segmentation and extras are skipped)."""
    keys = {f"rgb.{cam}" for cam in cameras} | {"action", "extras.ee_pose"}
    if depth:
        keys |= {f"depth_m.{cam}" for cam in cameras}
    return keys


def to_model(state: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 states (..., C, H, W) -> float32 in [-1, 1]."""
    x = torch.as_tensor(state)
    return x.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model-space states in [-1, 1] -> uint8 numpy."""
    return ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()


def _rank(seed: int, episode_id: str) -> float:
    digest = hashlib.sha256(f"{seed}:{episode_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_labelled(episode_ids: Sequence[str], has_action: Sequence[bool], sources: Sequence[str],
                    labelled_fraction: float, labelled_sources: Sequence[str] | None = None, seed: int = 0) -> set[str]:
    """Episode ids whose actions are used: a seeded ``labelled_fraction`` of the eligible ones (at least one when the
    fraction is positive and any is eligible); the choice for a given fraction is a prefix of the choice for a larger
    one, so 2.5% labelled is a subset of 10% labelled."""
    eligible = [eid for eid, act, src in zip(episode_ids, has_action, sources)
                if act and (labelled_sources is None or src in labelled_sources)]
    if labelled_fraction <= 0 or not eligible:
        return set()
    count = min(len(eligible), max(1, int(round(labelled_fraction * len(eligible)))))
    return set(sorted(eligible, key=lambda eid: _rank(seed, eid))[:count])


def split_holdout(episode_ids: Sequence[str], holdout_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) ids, seeded by episode id so the split does not depend on the order rows arrive in."""
    ids = sorted(episode_ids)
    if holdout_fraction <= 0 or len(ids) < 2:
        return ids, []
    count = min(len(ids) - 1, max(1, int(round(holdout_fraction * len(ids)))))
    held = set(sorted(ids, key=lambda eid: _rank(seed + 7919, eid))[:count])
    return [e for e in ids if e not in held], [e for e in ids if e in held]


@dataclass
class PairData:
    """Every consecutive frame pair of a set of episodes, in memory (uint8 states; pairs index into them)."""

    states: list[np.ndarray]  # per episode (T_i, C, H, W) uint8
    episode_ids: list[str]
    sources: list[str]  # per episode
    embodiments: list[str]  # per episode
    actions: list[np.ndarray | None]  # per episode (T_i, A_i) float32 or None
    ee_deltas: list[np.ndarray | None]  # per episode (T_i - 1, 3) end-effector motion (m) or None
    labelled: set[str] = field(default_factory=set)
    embodiment_names: list[str] = field(default_factory=list)  # the model's embodiment order
    pairs: np.ndarray = field(init=False)  # (N, 2) [episode index, t]

    def __post_init__(self):
        rows = [(i, t) for i, s in enumerate(self.states) for t in range(s.shape[0] - 1)]
        self.pairs = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        if not self.embodiment_names:
            self.embodiment_names = sorted(set(self.embodiments))

    @classmethod
    def from_episodes(cls, episodes: Iterable[Episode | str | Path], cameras: Sequence[str], image_size: int,
                      depth: bool = False, max_depth_m: float = 2.0, labelled: set[str] | None = None,
                      embodiment_names: Sequence[str] | None = None) -> PairData:
        fields: dict[str, list] = {k: [] for k in ("states", "episode_ids", "sources", "embodiments", "actions",
                                                   "ee_deltas")}
        keys = episode_keys(cameras, depth)
        for item in episodes:
            ep = item if isinstance(item, Episode) else Episode.load(item, keys=keys)
            if ep.num_frames < 2:
                continue
            fields["states"].append(episode_state(ep, cameras, image_size, depth, max_depth_m))
            fields["episode_ids"].append(ep.episode_id)
            fields["sources"].append(str(ep.meta.get("source", "")))
            fields["embodiments"].append(embodiment_of(ep.meta))
            fields["actions"].append(None if ep.action is None else ep.action.astype(np.float32))
            ee = ep.extras.get("ee_pose")
            fields["ee_deltas"].append(None if ee is None else np.diff(ee[:, :3], axis=0).astype(np.float32))
        labelled = set(labelled or ()) & {eid for eid, a in zip(fields["episode_ids"], fields["actions"])
                                          if a is not None}
        return cls(**fields, labelled=labelled, embodiment_names=list(embodiment_names or []))

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def num_episodes(self) -> int:
        return len(self.states)

    def action_dims(self) -> dict[str, int]:
        """{embodiment: action dim} of the episodes with actions (the metadata the model's heads are built from)."""
        dims: dict[str, int] = {}
        for name, act, eid in zip(self.embodiments, self.actions, self.episode_ids):
            if act is None:
                continue
            if dims.setdefault(name, act.shape[1]) != act.shape[1]:
                raise ValueError(f"episode {eid}: embodiment {name!r} has action dim {act.shape[1]}, other episodes "
                                 f"{dims[name]}; give different robots different meta['robot_type']")
        return dims

    def pair_is_labelled(self) -> np.ndarray:
        flags = np.array([eid in self.labelled for eid in self.episode_ids], dtype=bool)
        return flags[self.pairs[:, 0]] if len(self.pairs) else np.zeros(0, dtype=bool)

    def pair_actions(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(len(index), A_max) raw actions (zeros where an episode has none) and a (len(index),) has-action flag."""
        width = max([a.shape[1] for a in self.actions if a is not None], default=1)
        out = np.zeros((len(index), width), dtype=np.float32)
        has = np.zeros(len(index), dtype=bool)
        for row, (ep, t) in enumerate(self.pairs[index]):
            act = self.actions[ep]
            if act is not None:
                out[row, : act.shape[1]] = act[t]
                has[row] = True
        return out, has

    def pair_ee_deltas(self, index: np.ndarray) -> np.ndarray:
        out = np.full((len(index), 3), np.nan, dtype=np.float32)
        for row, (ep, t) in enumerate(self.pairs[index]):
            if self.ee_deltas[ep] is not None:
                out[row] = self.ee_deltas[ep][t]
        return out

    def batch(self, index: np.ndarray, normalizer=None, context: int = 0) -> dict[str, torch.Tensor]:
        """Model inputs for pairs ``index``: s_t, s_next (B, C, H, W) in [-1, 1], action (B, A_max) normalised
        (when a normalizer is given), labelled (B,), embodiment (B,) index into ``embodiment_names``. With
        ``context`` k > 0 also the k states before s_t, s_hist (B, k, C, H, W) (frame t-k+j, the episode's first
        frame where that is before the start), and hist_valid (B, k) bool: whether frame t-k+j exists."""
        ep, t = self.pairs[index, 0], self.pairs[index, 1]
        s_t = np.stack([self.states[e][i] for e, i in zip(ep, t)])
        s_next = np.stack([self.states[e][i + 1] for e, i in zip(ep, t)])
        action, _ = self.pair_actions(index)
        emb_index = {name: i for i, name in enumerate(self.embodiment_names)}
        embodiment = np.array([emb_index.get(self.embodiments[e], -1) for e in ep], dtype=np.int64)
        labelled = self.pair_is_labelled()[index] & (embodiment >= 0)
        action_t = torch.from_numpy(action)
        if normalizer is not None:
            action_t = normalizer.normalize_padded(action_t, embodiment, self.embodiment_names)
        labelled_t = torch.from_numpy(labelled)
        out = {"s_t": to_model(s_t), "s_next": to_model(s_next), "action": action_t * labelled_t[:, None],
               "labelled": labelled_t, "embodiment": torch.from_numpy(embodiment)}
        if context > 0:
            frame = t[:, None] - context + np.arange(context)[None]  # (B, k)
            out["s_hist"] = to_model(np.stack([[self.states[e][max(i, 0)] for i in row] for e, row in zip(ep, frame)]))
            out["hist_valid"] = torch.from_numpy(frame >= 0)
        return out


class BatchSampler:
    """Random batches of pair indices: sources mixed by ``source_weights`` (default: in proportion to their pairs),
    with ``labelled_batch_fraction`` of each batch drawn from labelled pairs when there are any (None: no
    over-sampling)."""

    def __init__(self, data: PairData, batch_size: int, seed: int = 0,
                 source_weights: dict[str, float] | None = None, labelled_batch_fraction: float | None = None):
        self.data, self.batch_size = data, batch_size
        self.rng = np.random.default_rng(seed)
        self.labelled_batch_fraction = labelled_batch_fraction
        pair_source = np.array([data.sources[e] for e in data.pairs[:, 0]])
        weights = np.ones(len(data), dtype=np.float64)
        if source_weights:
            for src in np.unique(pair_source):
                mask = pair_source == src
                weights[mask] = float(source_weights.get(str(src), 0.0)) / mask.sum()
            if weights.sum() <= 0:
                raise ValueError(f"source_weights: {source_weights} gives zero weight to every source in the data "
                                 f"(sources: {sorted(set(data.sources))})")
        self.p_all = weights / weights.sum()
        lab = data.pair_is_labelled()
        self.p_lab = None
        if lab.any() and labelled_batch_fraction:
            w = weights * lab
            self.p_lab = w / w.sum() if w.sum() > 0 else None

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def sample(self) -> np.ndarray:
        n = len(self.data)
        if self.p_lab is None:
            return self.rng.choice(n, self.batch_size, p=self.p_all)
        n_lab = max(1, int(math.floor(self.labelled_batch_fraction * self.batch_size + 0.5)))
        return np.concatenate([self.rng.choice(n, n_lab, p=self.p_lab),
                               self.rng.choice(n, self.batch_size - n_lab, p=self.p_all)])


@dataclass(frozen=True)
class EpisodeInfo:
    episode_id: str
    path: str
    source: str
    embodiment: str
    action_dim: int | None  # None: the episode has no actions
    num_frames: int
    cameras: tuple[str, ...] = ()  # cameras with an rgb stream
    depth_cameras: tuple[str, ...] = ()  # cameras with a depth_m stream

    def missing(self, cameras: Sequence[str], depth: bool) -> list[str]:
        """Streams a model with these cameras (and depth) needs that this episode lacks."""
        out = [f"rgb.{c}" for c in cameras if c not in self.cameras]
        if depth:
            out += [f"depth_m.{c}" for c in cameras if c not in self.depth_cameras]
        return out


def episode_info(path: str | Path) -> EpisodeInfo:
    """What the trainer needs to plan a run, without decoding the frames: id, source, robot, action dim."""
    header, meta = read_header_and_meta(path)
    action = header["arrays"].get("action")
    return EpisodeInfo(episode_id=header["episode_id"], path=str(path), source=str(meta.get("source", "")),
                       embodiment=embodiment_of(meta), action_dim=None if action is None else int(action["shape"][1]),
                       num_frames=int(header["num_frames"]), cameras=tuple(streams(header, "rgb")),
                       depth_cameras=tuple(streams(header, "depth_m")))


def load_actions(path: str | Path) -> np.ndarray | None:
    action = read_array(path, "action")
    return None if action is None else action.astype(np.float32)
