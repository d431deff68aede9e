"""What must be equal for episodes to share one LeRobot v3 dataset: its ``features``, ``fps`` and ``robot_type``.

LeRobot stores one feature schema per dataset, so ``write_lerobot`` groups episodes by ``ShardSchema`` and writes each
group into its own shards. The schema is read from an episode file's header and meta alone
(``episodes.read_header_and_meta``: a couple of small reads, also on object storage), never from its frames.

Features per schema:
    observation.images.<cam>  video (H, W, 3)
    observation.depth.<cam>   video (H, W, 1), ``is_depth_map`` (cameras with a depth stream only)
    observation.state         float32 (D,)   names from ``meta["state_names"]`` (state_0.. if absent)
    action                    float32 (A,)   names from ``meta["action_names"]``; absent for action-less episodes

``ShardSchema.frame`` turns one time step (RGB and depth per camera, state, action) into the frame dict of these keys:
the shard writer (``lerobot_shard``) feeds it to lerobot's ``add_frame`` and the closed-loop evaluator
(``policy_eval``) to the policy, so the keys and conversions are defined once, here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from episodes import Episode, EpisodeError, read_header_and_meta, streams
from episodes.io import PathLike

DEFAULT_ROBOT_TYPE = "unknown"  # episodes that name no robot; the simulator and the ingesters set theirs in meta
# lerobot 0.6.1's streaming writer keeps no video stats for a 1-frame episode, and finalize() then fails for the whole
# dataset (misaligned stats columns); a single frame is no trajectory anyway.
MIN_FRAMES = 2
IMAGES_PREFIX = "observation.images."  # + camera name
DEPTH_PREFIX = "observation.depth."  # + camera name
STATE_KEY = "observation.state"
ACTION_KEY = "action"


@dataclass(frozen=True)
class ShardSchema:
    fps: int
    robot_type: str
    cameras: tuple[tuple[str, int, int], ...]  # (name, height, width), sorted by name
    depth_cameras: tuple[str, ...]  # sorted
    state_names: tuple[str, ...] | None  # None: no state
    action_names: tuple[str, ...] | None  # None: action-less

    @classmethod
    def build(cls, where: str, fps: float, rgb_shapes: dict[str, tuple[int, ...]], depth_cameras: Iterable[str],
              state_dim: int | None, action_dim: int | None, meta: dict[str, Any],
              robot_type: str | None) -> ShardSchema:
        """Raise EpisodeError for what LeRobot cannot store (fractional fps, '/' in a camera, mismatched names)."""
        if not math.isfinite(fps) or fps <= 0 or abs(fps - round(fps)) > 1e-6:
            raise EpisodeError(where, "fps", f"LeRobot v3 stores an integer frame rate, got {fps!r}; resample first")
        if not rgb_shapes:
            raise EpisodeError(where, "rgb", "no camera stream")
        num_frames = int(next(iter(rgb_shapes.values()))[0])
        if num_frames < MIN_FRAMES:
            raise EpisodeError(where, "rgb", f"{num_frames} frame(s): a LeRobot shard needs >= {MIN_FRAMES} per "
                                             "episode")
        for cam in rgb_shapes:
            if "/" in cam or not cam:
                raise EpisodeError(where, f"rgb.{cam}", "camera names must be non-empty and without '/' (LeRobot "
                                                        "feature names)")
        cameras = tuple(sorted((cam, int(shape[1]), int(shape[2])) for cam, shape in rgb_shapes.items()))
        return cls(fps=int(round(fps)), robot_type=robot_type_of(meta, robot_type), cameras=cameras,
                   depth_cameras=tuple(sorted(depth_cameras)),
                   state_names=_names(where, meta, "state", state_dim),
                   action_names=_names(where, meta, "action", action_dim))

    @classmethod
    def of_episode(cls, episode: Episode, robot_type: str | None, where: str) -> ShardSchema:
        return cls.build(where, episode.fps, {cam: arr.shape for cam, arr in episode.rgb.items()}, episode.depth_m,
                         None if episode.state is None else episode.state.shape[1],
                         None if episode.action is None else episode.action.shape[1], episode.meta, robot_type)

    @classmethod
    def probe(cls, path: PathLike, robot_type: str | None) -> ShardSchema:
        """The schema from the file's header and meta alone (no array is read); raises EpisodeError for a bad file."""
        header, meta = read_header_and_meta(path)
        where = str(path)
        try:
            shapes = {key: tuple(int(n) for n in spec["shape"]) for key, spec in header["arrays"].items()}
            fps = float(header["fps"])
        except (KeyError, TypeError, ValueError) as exc:
            raise EpisodeError(where, "header", f"malformed header ({type(exc).__name__}: {exc})") from None
        rgb = {cam: shapes[f"rgb.{cam}"] for cam in streams(header, "rgb")}
        for cam, shape in rgb.items():
            if len(shape) != 4 or shape[-1] != 3:
                raise EpisodeError(where, f"rgb.{cam}", f"expected shape (T, H, W, 3), got {shape}")
        dims = {name: shapes[name][1] if len(shapes.get(name, ())) == 2 else None for name in ("state", "action")}
        return cls.build(where, fps, rgb, streams(header, "depth_m"), dims["state"], dims["action"], meta,
                         robot_type)

    def features(self) -> dict[str, dict]:
        features: dict[str, dict] = {}
        for cam, height, width in self.cameras:
            features[IMAGES_PREFIX + cam] = {
                "dtype": "video", "shape": (height, width, 3), "names": ["height", "width", "channels"]}
        for cam, height, width in self.cameras:
            if cam in self.depth_cameras:
                features[DEPTH_PREFIX + cam] = {
                    "dtype": "video", "shape": (height, width, 1), "names": ["height", "width", "channels"],
                    "info": {"is_depth_map": True}}
        if self.state_names is not None:
            features[STATE_KEY] = {"dtype": "float32", "shape": (len(self.state_names),),
                                   "names": list(self.state_names)}
        if self.action_names is not None:
            features[ACTION_KEY] = {"dtype": "float32", "shape": (len(self.action_names),),
                                    "names": list(self.action_names)}
        return features

    def frame(self, rgb: dict[str, np.ndarray], depth_m: dict[str, np.ndarray], state: np.ndarray | None,
              action: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One time step as a lerobot frame dict with the keys of ``features()`` (no ``task``).

        rgb[cam] (H, W, 3) uint8; depth_m[cam] (H, W) float32 metres, NaN or 0 = no measurement (written as 0);
        state (D,); action (A,), ignored when the schema has no action (an evaluator has none yet).
        """
        frame = {IMAGES_PREFIX + cam: rgb[cam] for cam, _, _ in self.cameras}  # (H, W, 3) uint8
        for cam in self.depth_cameras:
            frame[DEPTH_PREFIX + cam] = np.nan_to_num(depth_m[cam], nan=0.0)[..., None]  # (H, W, 1) float32 m
        if self.state_names is not None:
            frame[STATE_KEY] = np.ascontiguousarray(state, dtype=np.float32)  # (D,)
        if self.action_names is not None and action is not None:
            frame[ACTION_KEY] = np.ascontiguousarray(action, dtype=np.float32)  # (A,)
        return frame

    def difference(self, other: ShardSchema) -> str:
        """'fps: 15 (shard has 10); ...' for each field where ``other`` (the odd episode) differs."""
        mine, theirs = asdict(self), asdict(other)
        return "; ".join(f"{key}: {theirs[key]} (shard has {mine[key]})" for key in mine if mine[key] != theirs[key])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def robot_type_of(meta: dict[str, Any], override: str | None) -> str:
    if override:
        return override
    lerobot_meta = meta.get("lerobot") if isinstance(meta.get("lerobot"), dict) else {}
    return str(meta.get("robot_type") or lerobot_meta.get("robot_type") or DEFAULT_ROBOT_TYPE)


def _names(where: str, meta: dict[str, Any], kind: str, dim: int | None) -> tuple[str, ...] | None:
    if dim is None:
        return None
    names = meta.get(f"{kind}_names")
    if names is None:
        return tuple(f"{kind}_{i}" for i in range(dim))
    if not isinstance(names, list) or len(names) != dim or not all(isinstance(n, str) for n in names):
        raise EpisodeError(where, f"meta.{kind}_names",
                           f"expected {dim} names (one per {kind} dimension), got {names!r}")
    return tuple(names)
