"""The episode: the unit every stage reads and writes, and its file format. Nothing here imports the pipeline.

An episode is one recorded trajectory: per-camera RGB (and optionally metric depth and segmentation), optional robot
state and action, per-frame extras (end-effector pose, object poses, ...) and a JSON ``meta`` dict with provenance,
camera calibration, objects, subgoals and success.

Array conventions (names carry units, shapes are in comments):
    rgb[camera]           (T, H, W, 3) uint8
    depth_m[camera]       (T, H, W)    float32, metres; 0 or NaN = no measurement
    segmentation[camera]  (T, H, W)    int32, simulator body/link ids (-1 = background)
    state                 (T, D)       float32
    action                (T, A)       float32; row t is the command applied between frame t and t+1
    extras[name]          (T, ...)     any numeric per-frame array

Standard ``meta`` keys: ``source`` (generator or ingester name), ``source_uri``, ``seed``, ``parent`` (episode this one
derives from, or null), ``robot_type``, ``state_names``, ``action_names``, ``cameras`` ({name: {"intrinsics": {fx, fy,
cx, cy, width, height}, "cam_to_world": 4x4 list}}), ``objects``, ``subgoals``, ``success``.

File format (``<episode_id>.episode``, version 2): a zip archive (members stored, not zip-compressed) holding
    header.json    {"format_version", "episode_id", "fps", "task", "num_frames",
                    "arrays": {key: {"dtype", "shape", "codec"}}}      what the file holds, readable alone
    meta.json      the meta dict
    <key>.bin      one array each (keys ``rgb.front``, ``depth_m.front``, ``state``, ``action``, ``extras.ee_pos``...),
                   encoded losslessly: image-like arrays (T, H, W[, C]) are delta-coded along time (uint8 differences
                   modulo 256; other dtypes XOR of the bit patterns with the previous frame), multi-byte values are
                   byte-shuffled, and the result is zlib-compressed. Frames of a static camera change in a few percent
                   of their pixels per step, so this is ~10-30x smaller than raw arrays and decodes at memory speed.
Nothing is unpickled: arrays are rebuilt from dtype, shape and bytes named in the header. Reading the header (or meta)
alone touches only the zip directory and that member, which on object storage is a couple of ranged reads.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from episodes import io as fileio

FORMAT_VERSION = 2
SUFFIX = ".episode"
HEADER_MEMBER = "header.json"
META_MEMBER = "meta.json"
_ALLOWED_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float16", "float32", "float64",
                   "bool"}


def safe_id(text: str, fallback: str) -> str:
    """A file-name-safe episode id fragment from free text (a file stem, a dataset name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or fallback


class EpisodeError(ValueError):
    """One episode's input is bad. Names where it came from and which field; the runner quarantines the episode."""

    def __init__(self, source: str, field_name: str, message: str):
        self.source = source
        self.field_name = field_name
        self.message = message
        super().__init__(f"{source}: field '{field_name}': {message}")


@dataclass
class Episode:
    episode_id: str
    fps: float
    task: str
    rgb: dict[str, np.ndarray]
    depth_m: dict[str, np.ndarray] = field(default_factory=dict)
    segmentation: dict[str, np.ndarray] = field(default_factory=dict)
    state: np.ndarray | None = None
    action: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        first = next(iter(self.rgb.values()), None)
        return 0 if first is None else int(first.shape[0])

    @property
    def cameras(self) -> list[str]:
        return list(self.rgb)

    @property
    def has_actions(self) -> bool:
        return self.action is not None

    def validate(self, source: str | None = None) -> None:
        """Raise EpisodeError naming the field for anything a later stage could not use."""
        where = source or self.meta.get("source_uri") or self.episode_id
        if not self.episode_id or "/" in self.episode_id:
            raise EpisodeError(where, "episode_id", f"must be a non-empty name without '/', got {self.episode_id!r}")
        if not np.isfinite(self.fps) or self.fps <= 0:
            raise EpisodeError(where, "fps", f"must be a positive number, got {self.fps!r}")
        if not self.rgb:
            raise EpisodeError(where, "rgb", "no camera stream")
        num_frames = self.num_frames
        if num_frames == 0:
            raise EpisodeError(where, "rgb", "zero-length episode (no frames)")
        for cam, frames in self.rgb.items():
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise EpisodeError(where, f"rgb.{cam}", f"expected shape (T, H, W, 3), got {tuple(frames.shape)}")
            if frames.dtype != np.uint8:
                raise EpisodeError(where, f"rgb.{cam}", f"expected uint8, got {frames.dtype}")
            if frames.shape[0] != num_frames:
                raise EpisodeError(where, f"rgb.{cam}", f"has {frames.shape[0]} frames, other cameras {num_frames}")
        for name, per_cam in (("depth_m", self.depth_m), ("segmentation", self.segmentation)):
            for cam, arr in per_cam.items():
                if cam not in self.rgb:
                    raise EpisodeError(where, f"{name}.{cam}", f"no rgb stream for camera {cam!r}")
                expected = self.rgb[cam].shape[:3]
                if arr.shape != expected:
                    raise EpisodeError(where, f"{name}.{cam}", f"expected shape {expected}, got {tuple(arr.shape)}")
        for cam, depth in self.depth_m.items():
            if depth.dtype != np.float32:
                raise EpisodeError(where, f"depth_m.{cam}", f"expected float32 metres, got {depth.dtype}")
            if np.isinf(depth).any() or (depth < 0).any():
                raise EpisodeError(where, f"depth_m.{cam}", "has negative or infinite values (use 0 or NaN for none)")
        for name in ("state", "action"):
            arr = getattr(self, name)
            if arr is None:
                continue
            if arr.ndim != 2 or arr.shape[0] != num_frames:
                raise EpisodeError(where, name, f"expected shape ({num_frames}, D), got {tuple(arr.shape)}")
            bad = ~np.isfinite(arr)
            if bad.any():
                frame, dim = (int(i) for i in np.argwhere(bad)[0])
                raise EpisodeError(where, name, f"{int(bad.sum())} non-finite values (first at frame {frame}, dim {dim})")
        for name, arr in self.extras.items():
            if arr.shape[:1] != (num_frames,):
                raise EpisodeError(where, f"extras.{name}", f"expected {num_frames} frames, got {tuple(arr.shape)}")

    # -- persistence -------------------------------------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array under its file key (``rgb.front``, ``depth_m.front``, ``state``, ``extras.ee_pos`` ...)."""
        out: dict[str, np.ndarray] = {}
        for prefix, per_key in (("rgb", self.rgb), ("depth_m", self.depth_m), ("segmentation", self.segmentation),
                                ("extras", self.extras)):
            for key, arr in per_key.items():
                out[f"{prefix}.{key}"] = arr
        if self.state is not None:
            out["state"] = self.state
        if self.action is not None:
            out["action"] = self.action
        return out

    def to_bytes(self, level: int = 1) -> bytes:
        entries = {key: _encode(np.ascontiguousarray(arr), level) for key, arr in self.arrays().items()}
        header = {"format_version": FORMAT_VERSION, "episode_id": self.episode_id, "fps": float(self.fps),
                  "task": self.task, "num_frames": self.num_frames,
                  "arrays": {key: spec for key, (spec, _) in entries.items()}}
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(HEADER_MEMBER, json.dumps(header))
            zf.writestr(META_MEMBER, json.dumps(self.meta))
            for key, (_, payload) in entries.items():
                zf.writestr(f"{key}.bin", payload)
        return buf.getvalue()

    def save(self, path: fileio.PathLike) -> str:
        """Write atomically to a local path or URL: a reader never sees a partial file."""
        fileio.atomic_write_bytes(path, self.to_bytes())
        return str(path)

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "<bytes>", keys: set[str] | None = None) -> Episode:
        with _open_zip(io.BytesIO(data), where) as zf:
            header = _read_header(zf, where)
            episode = cls(episode_id=header["episode_id"], fps=header["fps"], task=header["task"], rgb={},
                          meta=_read_json(zf, META_MEMBER, where))
            for key, spec in header["arrays"].items():
                if keys is not None and key not in keys:
                    continue
                arr = _decode(_member(zf, f"{key}.bin", where), spec, f"{where}: {key}")
                prefix, _, name = key.partition(".")
                if prefix in ("state", "action"):
                    setattr(episode, prefix, arr)
                elif prefix in ("rgb", "depth_m", "segmentation", "extras"):
                    getattr(episode, prefix)[name] = arr
        return episode

    @classmethod
    def load(cls, path: fileio.PathLike, keys: set[str] | None = None) -> Episode:
        """Read an episode file (local path or URL); ``keys`` limits which arrays are decoded."""
        try:
            data = fileio.read_bytes(path)
        except FileNotFoundError:
            raise EpisodeError(str(path), "file", "episode file not found") from None
        return cls.from_bytes(data, where=str(path), keys=keys)


# -- reading parts of a file -----------------------------------------------------------------------------------------


def read_header(path: fileio.PathLike) -> dict[str, Any]:
    """The header (id, fps, task, num_frames and every array's dtype/shape), without decoding any array."""
    with _open(path) as f, _open_zip(f, str(path)) as zf:
        return _read_header(zf, str(path))


def read_meta(path: fileio.PathLike) -> dict[str, Any]:
    with _open(path) as f, _open_zip(f, str(path)) as zf:
        _read_header(zf, str(path))
        return _read_json(zf, META_MEMBER, str(path))


def read_header_and_meta(path: fileio.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    with _open(path) as f, _open_zip(f, str(path)) as zf:
        return _read_header(zf, str(path)), _read_json(zf, META_MEMBER, str(path))


def read_array(path: fileio.PathLike, key: str) -> np.ndarray | None:
    """One array (e.g. ``action``) or None when the file has no such key."""
    with _open(path) as f, _open_zip(f, str(path)) as zf:
        spec = _read_header(zf, str(path))["arrays"].get(key)
        return None if spec is None else _decode(_member(zf, f"{key}.bin", str(path)), spec, f"{path}: {key}")


def streams(header: dict[str, Any], prefix: str) -> list[str]:
    """Names under ``prefix`` in a header: ``streams(h, "rgb")`` -> the cameras."""
    return [k.partition(".")[2] for k in header["arrays"] if k.startswith(prefix + ".")]


# -- codec -----------------------------------------------------------------------------------------------------------


def _encode(arr: np.ndarray, level: int) -> tuple[dict[str, Any], bytes]:
    temporal = arr.ndim >= 3 and arr.shape[0] > 1
    data = arr
    if temporal:
        if arr.dtype == np.uint8:
            data = arr.copy()
            data[1:] -= arr[:-1]  # wraps modulo 256
        else:
            bits = arr.view(f"u{arr.dtype.itemsize}")
            data = bits.copy()
            data[1:] ^= bits[:-1]
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if arr.dtype.itemsize > 1:  # byte-shuffle: equal-significance bytes next to each other
        raw = raw.reshape(-1, arr.dtype.itemsize).T.reshape(-1)
    codec = ("delta-" if temporal else "") + ("shuffle-" if arr.dtype.itemsize > 1 else "") + "zlib"
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "codec": codec}, zlib.compress(raw.tobytes(), level)


def _decode(payload: bytes, spec: dict[str, Any], where: str) -> np.ndarray:
    dtype_name, shape, codec = spec.get("dtype"), spec.get("shape"), str(spec.get("codec", ""))
    if dtype_name not in _ALLOWED_DTYPES or not isinstance(shape, list):
        raise EpisodeError(where, "header.arrays", f"unsupported array spec {spec!r}")
    dtype = np.dtype(dtype_name)
    try:
        raw = np.frombuffer(zlib.decompress(payload), np.uint8)
    except zlib.error as exc:
        raise EpisodeError(where, "data", f"corrupt array data ({exc})") from None
    if raw.size != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise EpisodeError(where, "data", f"{raw.size} bytes do not hold a {dtype_name} array of shape {shape}")
    if "shuffle-" in codec:
        raw = raw.reshape(dtype.itemsize, -1).T.reshape(-1)
    if codec.startswith("delta-"):
        if dtype == np.uint8:
            return np.cumsum(raw.reshape(shape), axis=0, dtype=np.uint8)
        bits = raw.view(f"u{dtype.itemsize}").reshape(shape)
        return np.bitwise_xor.accumulate(bits, axis=0).view(dtype)
    return raw.view(dtype).reshape(shape).copy()


def _open(path: fileio.PathLike):
    """Open an episode file for reading; a missing one is an EpisodeError naming the whole path or URL."""
    try:
        return fileio.open_file(path)
    except FileNotFoundError:
        raise EpisodeError(str(path), "file", "episode file not found") from None


def _open_zip(f, where: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise EpisodeError(where, "file", f"not an episode file ({type(exc).__name__}: {exc})") from None


def _member(zf: zipfile.ZipFile, member: str, where: str) -> bytes:
    try:
        return zf.read(member)
    except KeyError:
        raise EpisodeError(where, member, "missing: not an episode file written by episodes.format") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise EpisodeError(where, member, f"corrupt ({type(exc).__name__}: {exc})") from None


def _read_json(zf: zipfile.ZipFile, member: str, where: str) -> dict[str, Any]:
    try:
        return json.loads(_member(zf, member, where))
    except ValueError as exc:
        if isinstance(exc, EpisodeError):
            raise
        raise EpisodeError(where, member, f"not valid JSON ({exc})") from None


def _read_header(zf: zipfile.ZipFile, where: str) -> dict[str, Any]:
    header = _read_json(zf, HEADER_MEMBER, where)
    if header.get("format_version") != FORMAT_VERSION:
        raise EpisodeError(where, "format_version", f"unsupported {header.get('format_version')!r} "
                                                    f"(this wmsynth reads {FORMAT_VERSION})")
    return header
