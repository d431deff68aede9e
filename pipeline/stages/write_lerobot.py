"""Sink stage ``write_lerobot``: ok episodes -> LeRobot v3 datasets, one per shard, written in parallel.

    - name: write_lerobot
      params:
        repo_id: wmsynth/tabletop
        episodes_per_shard: 8
        resources: {num_cpus: 1}

Fan-in N:1 per shard. The driver collects the (tiny) rows, keeps the ``ok`` ones and reads each episode file's npz
headers (shapes, fps, meta; no frames) to learn its *schema*: fps, robot type, cameras with image size, which cameras
have depth, state and action names. LeRobot stores one feature schema per dataset, so episodes are grouped by schema,
sorted by ``episode_id`` inside a group and cut into shards of ``episodes_per_shard``; shards are numbered in the order
of their first episode id. Mixed inputs (say 64x64 and 128x128 cameras, or action-less videos next to teleop data)
end up in different shards instead of being rejected.

Each shard is one Ray task (``ray.remote``, ``resources.num_cpus`` each, at most ``resources.concurrency`` at once):
shards are few, coarse and all-or-nothing, so plain tasks cost less than a Ray Data operator (about 0.8 s less per
call on 2 cores) and a failed task maps cleanly onto its own episodes. Inside a task, lerobot's streaming encoder runs
one encoder thread per video stream (PyAV releases the GIL) next to the thread that loads episodes and writes parquet.
Parallelism therefore comes from the number of shards: 8 episodes as 2 shards on 2 cores write ~1.45x faster than
lerobot's own single-process loop (benchmarks/_writer_bench.py).

A shard is written with lerobot's own writer (``LeRobotDataset.create -> add_frame -> save_episode``, ``finalize`` in
``finally``) into ``shards/.tmp-shard-XXXXX-<uuid>``, reopened with lerobot's reader and checked (frame and episode
counts, each video's length per episode, the first and last frame of every episode decode at their timestamps), given
``meta/wmsynth_provenance.json`` (LeRobot episode_index -> our episode_id, source, seed, parent, task and the whole
episode meta) and only then renamed to ``shards/shard-XXXXX``: a reader never sees a partial shard. On resume,
episodes already settled in a finished shard keep it (read from the provenance files), only the others are planned,
into the lowest free shard numbers, and stale temp dirs are removed. Without resume (a fresh run, or ``--only
write_lerobot``), the shards of an earlier run in the same output_dir are replaced.

Features per shard:
    observation.images.<cam>  video (H, W, 3)   AV1 (libsvtav1 preset 12, crf 30, GOP 2: lerobot's defaults)
    observation.depth.<cam>   video (H, W, 1)   ``is_depth_map``: 12-bit log-quantised metres, HEVC *lossless*
    observation.state         float32 (D,)      names from ``meta["state_names"]`` (state_0.. if absent)
    action                    float32 (A,)      names from ``meta["action_names"]``; absent for action-less shards
    task                      per-frame string  ``episode.task``

Depth: fed as float32 metres; lerobot's reader returns float32 **millimetres** by default (rounded to 1 mm) or metres
with ``depth_output_unit="m"``. The quantiser covers ``depth_min_m..depth_max_m`` (0.01..10 m: steps <= 1.8 mm below
2 m); 0/NaN ("no measurement") is stored as the lowest code and reads back as ``depth_min_m``. The x265 settings are
lerobot's (lossless) plus closed GOPs without B-frames: with lerobot 0.6.1's own settings, episodes of odd or very short
length break the concatenated depth video (a frame after the boundary fails to decode on read).

Not written to LeRobot (listed per episode in the provenance file): segmentation and ``extras`` arrays.

A bad episode (unreadable file, fails ``Episode.validate``, schema differs from its shard's, fewer than 2 frames) is
quarantined with the reason and the rest of its shard is written. A failure of the writer itself (encoder crash, failed
check) quarantines that shard's episodes, names the shard in the reason and leaves no shard directory behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
import traceback
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from episodes import Episode, EpisodeError
# TODO private: ['_HEADER_KEY', '_META_KEY']
from pipeline.stage import (
    OK, QUARANTINED, WRITTEN, Resources, StageContext, StageParams, error_reason, register_stage, row,
)

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

STAGE = "write_lerobot"
SHARDS_DIRNAME = "shards"
PROVENANCE_FILE = "meta/wmsynth_provenance.json"
PROVENANCE_VERSION = 1
DEFAULT_ROBOT_TYPE = "franka_panda"  # the tabletop generator's robot; ingested data carries its own in meta
_SHARD_RE = re.compile(r"^shard-(\d{5,})$")
_X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_DEFAULT_PRESET = {"libsvtav1": 12, "h264": "veryfast", "hevc": "veryfast"}
_MAX_CRF = {"libsvtav1": 63, "h264": 51, "hevc": 51}
_MIN_FRAMES = 2
# x265 options (depth, and RGB when video_codec is hevc). lossless=1 keeps the 12-bit depth codes exact (lerobot's
# default too). The rest make episodes concatenate cleanly: with lerobot 0.6.1's settings (open GOP, B-frames) the
# first frame after a short or odd-length episode cannot be decoded after a seek (FrameTimestampError on read), and a
# 2-frame episode fails to mux.
_X265_CONCAT_PARAMS = "bframes=0:no-open-gop=1:repeat-headers=1:log-level=error"
_X265_DEPTH_PARAMS = f"lossless=1:{_X265_CONCAT_PARAMS}"
# Frames a streaming encoder may lag behind add_frame (see _wait_for_encoders).
_MAX_ENCODER_BACKLOG = 64


class WriteLerobotParams(StageParams):
    repo_id: str = Field("wmsynth/tabletop", min_length=1, description="repo_id recorded in every shard")
    episodes_per_shard: int = Field(8, ge=1)
    robot_type: str | None = Field(None, description="default: meta['robot_type'] of the episodes, else "
                                                      f"{DEFAULT_ROBOT_TYPE!r}")
    video_codec: Literal["libsvtav1", "h264", "hevc"] = "libsvtav1"
    video_crf: int = Field(30, ge=0, description="RGB quality: lower = better and bigger")
    video_preset: int | str | None = Field(None, description="encoder speed preset; default: 12 for libsvtav1, "
                                                             "'veryfast' for h264/hevc")
    video_gop: int = Field(2, ge=1, description="keyframe interval in frames (2 = cheap random access in training)")
    depth_preset: Literal[_X26X_PRESETS] = Field("ultrafast", description="x265 preset of the lossless depth "
                                                                         "stream: speed and file size only")
    depth_min_m: float = Field(0.01, gt=0, description="depth quantiser range, metres")
    depth_max_m: float = Field(10.0, gt=0)
    encoder_threads: int | None = Field(1, ge=1, description="threads per video encoder; None = codec decides")
    resources: Resources = Resources(num_cpus=1)

    @model_validator(mode="after")
    def _check(self) -> WriteLerobotParams:
        if self.depth_max_m <= self.depth_min_m:
            raise ValueError(f"depth_max_m ({self.depth_max_m}) must be greater than depth_min_m ({self.depth_min_m})")
        if self.video_crf > _MAX_CRF[self.video_codec]:
            raise ValueError(f"video_crf {self.video_crf} is out of range for {self.video_codec} "
                             f"(0..{_MAX_CRF[self.video_codec]})")
        preset = self.video_preset
        if preset is not None:
            if self.video_codec == "libsvtav1" and not (isinstance(preset, int) and 0 <= preset <= 13):
                raise ValueError(f"video_preset {preset!r}: libsvtav1 takes an integer 0 (slow) .. 13 (fast)")
            if self.video_codec != "libsvtav1" and preset not in _X26X_PRESETS:
                raise ValueError(f"video_preset {preset!r}: {self.video_codec} takes one of {list(_X26X_PRESETS)}")
        return self


# -- schema ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSchema:
    """What must be equal for episodes to share one LeRobot dataset (its ``features``, ``fps`` and ``robot_type``)."""

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
        if num_frames < _MIN_FRAMES:
            # lerobot 0.6.1's streaming writer keeps no video stats for a 1-frame episode, and finalize() then fails
            # for the whole dataset (misaligned stats columns); a single frame is no trajectory anyway.
            raise EpisodeError(where, "rgb", f"{num_frames} frame(s): a LeRobot shard needs >= {_MIN_FRAMES} per "
                                             "episode")
        for cam in rgb_shapes:
            if "/" in cam or not cam:
                raise EpisodeError(where, f"rgb.{cam}", "camera names must be non-empty and without '/' (LeRobot "
                                                        "feature names)")
        cameras = tuple(sorted((cam, int(shape[1]), int(shape[2])) for cam, shape in rgb_shapes.items()))
        return cls(fps=int(round(fps)), robot_type=_robot_type(meta, robot_type), cameras=cameras,
                   depth_cameras=tuple(sorted(depth_cameras)),
                   state_names=_names(where, meta, "state", state_dim),
                   action_names=_names(where, meta, "action", action_dim))

    @classmethod
    def of_episode(cls, episode: Episode, robot_type: str | None, where: str) -> ShardSchema:
        return cls.build(where, episode.fps, {cam: arr.shape for cam, arr in episode.rgb.items()}, episode.depth_m,
                         None if episode.state is None else episode.state.shape[1],
                         None if episode.action is None else episode.action.shape[1], episode.meta, robot_type)

    @classmethod
    def probe(cls, path: str | Path, robot_type: str | None) -> ShardSchema:
        """The schema from the npz headers alone (the arrays stay on disk); raises for an unreadable file."""
        header, meta, shapes = _read_npz_headers(path)
        rgb = {key.partition(".")[2]: shape for key, shape in shapes.items() if key.startswith("rgb.")}
        for cam, shape in rgb.items():
            if len(shape) != 4 or shape[-1] != 3:
                raise EpisodeError(str(path), f"rgb.{cam}", f"expected shape (T, H, W, 3), got {shape}")
        depth = [key.partition(".")[2] for key in shapes if key.startswith("depth_m.")]
        dims = {name: shapes[name][1] if len(shapes.get(name, ())) == 2 else None for name in ("state", "action")}
        return cls.build(str(path), float(header["fps"]), rgb, depth, dims["state"], dims["action"], meta,
                         robot_type)

    def features(self) -> dict[str, dict]:
        features: dict[str, dict] = {}
        for cam, height, width in self.cameras:
            features[f"observation.images.{cam}"] = {
                "dtype": "video", "shape": (height, width, 3), "names": ["height", "width", "channels"]}
        for cam, height, width in self.cameras:
            if cam in self.depth_cameras:
                features[f"observation.depth.{cam}"] = {
                    "dtype": "video", "shape": (height, width, 1), "names": ["height", "width", "channels"],
                    "info": {"is_depth_map": True}}
        if self.state_names is not None:
            features["observation.state"] = {"dtype": "float32", "shape": (len(self.state_names),),
                                             "names": list(self.state_names)}
        if self.action_names is not None:
            features["action"] = {"dtype": "float32", "shape": (len(self.action_names),),
                                  "names": list(self.action_names)}
        return features

    def difference(self, other: ShardSchema) -> str:
        """'fps: 15 (shard has 10); ...' for each field where ``other`` (the odd episode) differs."""
        mine, theirs = asdict(self), asdict(other)
        return "; ".join(f"{key}: {theirs[key]} (shard has {mine[key]})" for key in mine if mine[key] != theirs[key])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _robot_type(meta: dict[str, Any], override: str | None) -> str:
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


def _read_npz_headers(path: str | Path) -> tuple[dict, dict, dict[str, tuple[int, ...]]]:
    """(header, meta, {array key: shape}) of an episode file written by ``Episode.save``, without reading frames."""
    shapes: dict[str, tuple[int, ...]] = {}
    jsons: dict[str, dict] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                with zf.open(info) as f:
                    if key in (_HEADER_KEY, _META_KEY):
                        jsons[key] = json.loads(str(np.lib.format.read_array(f, allow_pickle=False)))
                        continue
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shapes[key] = tuple(int(n) for n in read_header(f)[0])
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise EpisodeError(str(path), "file", f"unreadable episode file ({error_reason(exc)})") from exc
    for key in (_HEADER_KEY, _META_KEY):
        if key not in jsons:
            raise EpisodeError(str(path), key, "missing: not an episode file written by pipeline.episode")
    return jsons[_HEADER_KEY], jsons[_META_KEY], shapes


# -- one shard (no Ray) ----------------------------------------------------------------------------------------------


class ShardWriteError(RuntimeError):
    """The writer itself failed for a whole shard (not one bad episode); its episodes are quarantined."""


def write_shard(episode_paths: Sequence[str | Path], shard_dir: str | Path, params: WriteLerobotParams, *,
                schema: ShardSchema | None = None) -> list[dict[str, str]]:
    """Write the episodes at ``episode_paths`` (in that order) as one LeRobot v3 dataset at ``shard_dir``.

    Returns one row per path: ``written`` with ``shard`` = the shard's name, or ``quarantined`` with the reason.
    ``schema`` is what the episodes must match (the stage passes the probed one); by default the first readable
    episode's. Writes into ``<parent>/.tmp-<name>-<uuid>`` and renames after ``finalize`` and the checks; when no
    episode could be written no shard directory is left. ``shard_dir`` must not exist yet.
    """
    shard_dir = Path(shard_dir)
    name = shard_dir.name
    if shard_dir.exists():
        raise FileExistsError(f"{shard_dir} already exists; write_shard never overwrites a shard")
    shard_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in shard_dir.parent.glob(f".tmp-{name}-*"):  # left by a crashed earlier attempt at this shard
        shutil.rmtree(stale, ignore_errors=True)
    tmp_dir = shard_dir.parent / f".tmp-{name}-{uuid.uuid4().hex[:12]}"

    rows: list[dict[str, str] | None] = [None] * len(episode_paths)
    provenance: list[dict[str, Any]] = []
    with _quiet_encoders():
        try:
            return _write(episode_paths, shard_dir, tmp_dir, params, schema, rows, provenance)
        except Exception as exc:  # the writer failed: nothing of this shard is kept, each of its episodes says why
            shutil.rmtree(tmp_dir, ignore_errors=True)
            logger.error("%s: shard write failed, quarantining its episodes: %s\n%s", name, exc,
                         traceback.format_exc())
            reason = f"shard {name} could not be written: {error_reason(exc)}"
            return [r if r is not None and r["status"] == QUARANTINED else _row(Path(p).stem, p, QUARANTINED, reason)
                    for r, p in zip(rows, episode_paths, strict=True)]


def _write(episode_paths: Sequence[str | Path], shard_dir: Path, tmp_dir: Path, params: WriteLerobotParams,
           schema: ShardSchema | None, rows: list[dict[str, str] | None],
           provenance: list[dict[str, Any]]) -> list[dict[str, str] | None]:
    """write_shard's body; fills ``rows`` and ``provenance`` in place so a failure can still report them."""
    name = shard_dir.name
    dataset = None
    try:
        for i, path in enumerate(episode_paths):
            try:
                episode = _load(path)
                episode.validate(str(path))
                episode_schema = ShardSchema.of_episode(episode, params.robot_type, str(path))
                schema = schema or episode_schema
                if episode_schema != schema:
                    raise EpisodeError(str(path), "schema", f"differs from shard {name}: "
                                                            f"{schema.difference(episode_schema)}")
            except Exception as exc:  # a bad episode is recorded, not fatal: the others go on
                logger.warning("%s: quarantined %s: %s", name, path, exc)
                rows[i] = _row(Path(path).stem, path, QUARANTINED, error_reason(exc))
                continue
            if dataset is None:
                dataset = _create_dataset(tmp_dir, schema, params)
            try:
                _add_frames(dataset, episode, schema)
            except Exception as exc:  # lerobot rejected a frame: drop this episode's buffer, keep the shard
                logger.warning("%s: quarantined %s: %s", name, path, exc)
                dataset.clear_episode_buffer()
                rows[i] = _row(episode.episode_id, path, QUARANTINED, error_reason(exc))
                continue
            dataset.save_episode()  # a failure here leaves the writer in an unknown state: the shard fails
            provenance.append(_provenance_entry(len(provenance), episode, path))
            rows[i] = _row(episode.episode_id, path, WRITTEN, shard=name, source=episode.meta.get("source", ""))
    finally:
        if dataset is not None:
            dataset.finalize()
    if not provenance:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        return rows  # every episode was quarantined: no shard
    _check_shard(tmp_dir, params.repo_id, schema, provenance)
    _write_json(tmp_dir / PROVENANCE_FILE, _provenance(name, params, schema, provenance, episode_paths, rows))
    os.rename(tmp_dir, shard_dir)
    logger.info("%s: wrote %d episodes (%d quarantined)", name, len(provenance), len(rows) - len(provenance))
    return rows


@contextlib.contextmanager
def _quiet_encoders():
    """Keep the worker log readable: SVT-AV1's banner (per video, to stderr) and `datasets`' per-episode bars off."""
    import datasets

    os.environ.setdefault("SVT_LOG", "1")  # errors only; an explicit SVT_LOG wins
    bars_were_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not bars_were_disabled:
            datasets.enable_progress_bars()


def _load(path: str | Path) -> Episode:
    try:
        return Episode.load(path)
    except EpisodeError:
        raise
    except Exception as exc:  # a truncated or foreign file: say so instead of numpy's pickle hint
        raise EpisodeError(str(path), "file", f"unreadable episode file ({error_reason(exc)})") from exc


def _row(episode_id: str, path: str | Path, status: str, reason: str = "", shard: str = "",
         source: str = "") -> dict[str, str]:
    return row(episode_id, path=str(path), status=status, reason=reason, stage=STAGE, shard=shard,
               source=str(source or ""))


def encoder_configs(params: WriteLerobotParams):
    """lerobot (RGBEncoderConfig, DepthEncoderConfig) for these params (the benchmark gives them to lerobot too)."""
    from lerobot.configs import DepthEncoderConfig, RGBEncoderConfig

    preset = params.video_preset if params.video_preset is not None else _DEFAULT_PRESET[params.video_codec]
    rgb_options = {"x265-params": _X265_CONCAT_PARAMS} if params.video_codec == "hevc" else {}
    rgb = RGBEncoderConfig(vcodec=params.video_codec, crf=params.video_crf, preset=preset, g=params.video_gop,
                           extra_options=rgb_options)
    depth = DepthEncoderConfig(preset=params.depth_preset, g=params.video_gop, depth_min=params.depth_min_m,
                               depth_max=params.depth_max_m, extra_options={"x265-params": _X265_DEPTH_PARAMS})
    return rgb, depth


def _create_dataset(root: Path, schema: ShardSchema, params: WriteLerobotParams):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    rgb_encoder, depth_encoder = encoder_configs(params)
    # Streaming: frames go straight to one PyAV encoder thread per stream, no PNG/TIFF round trip (139 vs 96 frames/s
    # for noisy 128x128 RGB + depth here; equal on smooth content, where lerobot's per-frame video stats dominate).
    # encoder_queue_maxsize=0 makes the queues unbounded: lerobot *drops* frames when a bounded queue is full, so
    # _wait_for_encoders keeps the backlog short instead.
    return LeRobotDataset.create(params.repo_id, fps=schema.fps, features=schema.features(), root=root,
                                 robot_type=schema.robot_type, use_videos=True, rgb_encoder=rgb_encoder,
                                 depth_encoder=depth_encoder, encoder_threads=params.encoder_threads,
                                 streaming_encoding=True, encoder_queue_maxsize=0)


def _add_frames(dataset, episode: Episode, schema: ShardSchema) -> None:
    """add_frame for every frame of the episode; arrays are converted once, not per frame."""
    columns: list[tuple[str, np.ndarray]] = []
    for cam, _, _ in schema.cameras:
        columns.append((f"observation.images.{cam}", episode.rgb[cam]))  # (T, H, W, 3) uint8
    for cam in schema.depth_cameras:
        depth_m = np.nan_to_num(episode.depth_m[cam], nan=0.0)  # NaN = no measurement, like 0
        columns.append((f"observation.depth.{cam}", depth_m[..., None]))  # (T, H, W, 1) float32 metres
    if schema.state_names is not None:
        columns.append(("observation.state", np.ascontiguousarray(episode.state, dtype=np.float32)))  # (T, D)
    if schema.action_names is not None:
        columns.append(("action", np.ascontiguousarray(episode.action, dtype=np.float32)))  # (T, A)
    for t in range(episode.num_frames):
        frame = {key: values[t] for key, values in columns}
        frame["task"] = episode.task
        dataset.add_frame(frame)
        _wait_for_encoders(dataset)


def _wait_for_encoders(dataset) -> None:
    """Keep each streaming encoder at most _MAX_ENCODER_BACKLOG frames behind.

    lerobot 0.6.1 waits 120 s per stream at save_episode and then keeps a truncated video (logging an error); with
    unbounded queues a long, large episode could be that far behind. lerobot has no public hook for this, so this
    reads its private queues (pinned version; if they move, this becomes a no-op and _check_shard still catches a
    short video). A dead encoder thread is not waited for: the next add_frame raises lerobot's own error.
    """
    encoder = getattr(getattr(dataset, "writer", None), "_streaming_encoder", None)
    queues = getattr(encoder, "_frame_queues", None) or {}
    threads = getattr(encoder, "_threads", None) or {}
    for key, frame_queue in queues.items():
        thread = threads.get(key)
        while thread is not None and thread.is_alive() and frame_queue.qsize() > _MAX_ENCODER_BACKLOG:
            time.sleep(0.001)


def _check_shard(root: Path, repo_id: str, schema: ShardSchema, provenance: list[dict[str, Any]]) -> None:
    """Reopen the finished dataset with lerobot's reader: counts, each video's length per episode, and the first and
    last frame of every episode (episode boundaries are where concatenated videos break) decode at their timestamps."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset(repo_id, root=root)
    meta = dataset.meta
    expected_frames = sum(entry["num_frames"] for entry in provenance)
    if meta.total_episodes != len(provenance) or meta.total_frames != expected_frames:
        raise ShardWriteError(f"lerobot reports {meta.total_episodes} episodes / {meta.total_frames} frames, "
                              f"expected {len(provenance)} / {expected_frames}")
    for ep in meta.episodes:
        length = int(ep["length"])
        for key in meta.video_keys:
            duration_s = float(ep[f"videos/{key}/to_timestamp"]) - float(ep[f"videos/{key}/from_timestamp"])
            if abs(duration_s * schema.fps - length) > 0.5:
                raise ShardWriteError(f"episode_index {ep['episode_index']}: {key} holds {duration_s * schema.fps:.1f} "
                                      f"frames, expected {length} (encoder fell behind or dropped frames)")
        for index in {int(ep["dataset_from_index"]), int(ep["dataset_to_index"]) - 1}:
            try:
                dataset[index]
            except Exception as exc:
                raise ShardWriteError(f"episode_index {ep['episode_index']}: frame {index} does not decode: "
                                      f"{str(exc).splitlines()[0]}") from exc


def _provenance_entry(episode_index: int, episode: Episode, path: str | Path) -> dict[str, Any]:
    meta = episode.meta
    return {
        "episode_index": episode_index,
        "episode_id": episode.episode_id,
        "num_frames": episode.num_frames,
        "task": episode.task,
        "source": meta.get("source"),
        "source_uri": meta.get("source_uri"),
        "seed": meta.get("seed"),
        "parent": meta.get("parent"),
        "success": meta.get("success"),
        "input_path": str(path),
        "not_written": {"segmentation": sorted(episode.segmentation), "extras": sorted(episode.extras)},
        "meta": meta,  # everything else: camera intrinsics / cam_to_world, subgoals, objects, sim config, ...
    }


def _provenance(name: str, params: WriteLerobotParams, schema: ShardSchema, episodes: list[dict[str, Any]],
                paths: Sequence[str | Path], rows: list[dict[str, str] | None]) -> dict[str, Any]:
    import lerobot

    return {
        "format_version": PROVENANCE_VERSION,
        "writer": f"wmsynth {STAGE}",
        "shard": name,
        "repo_id": params.repo_id,
        "lerobot_version": getattr(lerobot, "__version__", "unknown"),
        "schema": schema.to_json(),
        # Full encoder settings per stream are in meta/info.json (features[key]["info"]).
        "depth": {"unit_written": "m", "unit_read_by_default": "mm", "lossless_codes": True,
                  "depth_min_m": params.depth_min_m, "depth_max_m": params.depth_max_m,
                  "no_measurement_reads_as_m": params.depth_min_m},
        "episodes": episodes,
        "quarantined": [{"episode_id": r["episode_id"], "input_path": str(p), "reason": r["reason"]}
                        for r, p in zip(rows, paths, strict=True) if r is not None and r["status"] == QUARANTINED],
    }


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=False, default=str))


def read_provenance(shard_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(shard_dir) / PROVENANCE_FILE).read_text())


# -- the stage -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardPlan:
    name: str
    schema: ShardSchema
    row_indices: tuple[int, ...]  # into the stage's row list, in episode_id order


@register_stage(STAGE, kind="sink", params=WriteLerobotParams)
def write_lerobot(ds: ray.data.Dataset, params: WriteLerobotParams, ctx: StageContext) -> ray.data.Dataset:
    """Sink: ok episodes -> LeRobot v3 shards (grouped by schema, one Ray task per shard); rows become written."""
    import ray

    shards_dir = (ctx.run_dir / SHARDS_DIRNAME).absolute()  # tasks may run with another working directory
    replaced = _prepare_shards_dir(shards_dir, ctx.resume)
    rows = [dict(r) for r in ds.take_all()]  # rows are ids, paths and fates only; frames stay on disk
    out, todo = _triage(rows, _existing_shards(shards_dir) if ctx.resume else {})

    # N:1 per shard: probe headers (driver, threads), group by schema, one task per shard.
    paths = {i: str(Path(rows[i]["path"]).absolute()) for i in todo}
    probed: list[tuple[int, ShardSchema]] = []
    for i, schema in zip(todo, _probe_all([paths[i] for i in todo], params.robot_type), strict=True):
        if isinstance(schema, ShardSchema):
            probed.append((i, schema))
        else:
            out[i] = {**rows[i], "status": QUARANTINED, "reason": error_reason(schema), "stage": STAGE}
    taken = {int(m.group(1)) for p in shards_dir.iterdir() if (m := _SHARD_RE.match(p.name))}
    plans = plan_shards([(rows[i]["episode_id"], schema) for i, schema in probed], params.episodes_per_shard, taken)
    plans = [ShardPlan(p.name, p.schema, tuple(probed[j][0] for j in p.row_indices)) for p in plans]
    logger.info("%s: %d episodes -> %d new shards (%d episodes already in shards)", STAGE, len(probed), len(plans),
                sum(1 for r in out if r["status"] == WRITTEN))

    for i, shard_row in _run_shards(plans, paths, shards_dir, params).items():
        out[i] = {**rows[i], "status": shard_row["status"], "reason": shard_row["reason"], "stage": STAGE,
                  "shard": shard_row["shard"]}
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    return ray.data.from_items(out) if out else ds


def _triage(rows: list[dict], done: dict[str, tuple[str, str, str]]) -> tuple[list[dict], list[int]]:
    """(output rows so far, indices of the rows still to write). Not-ok rows pass through unchanged; on resume,
    episodes already settled in a finished shard keep that fate; a repeated episode_id is quarantined."""
    out, todo, seen = list(rows), [], set()
    for i, r in enumerate(rows):
        if r["status"] != OK:
            continue
        eid = r["episode_id"]
        if eid in seen:
            out[i] = {**r, "status": QUARANTINED, "reason": f"duplicate episode_id {eid!r} in this run", "stage": STAGE}
        elif eid in done:
            shard, status, reason = done[eid]
            out[i] = {**r, "status": status, "reason": reason, "stage": STAGE, "shard": shard}
        else:
            todo.append(i)
        seen.add(eid)
    if missing := sorted(set(done) - seen):
        logger.warning("%s: %d episodes in existing shards are not among this run's ok rows (e.g. %s); they stay "
                       "in their shards", STAGE, len(missing), missing[0])
    return out, todo


def _run_shards(plans: list[ShardPlan], paths: dict[int, str], shards_dir: Path,
                params: WriteLerobotParams) -> dict[int, dict[str, str]]:
    """One ``ray.remote`` task per shard, at most ``resources.concurrency`` at once; row index -> that row's fate."""
    import ray

    task = ray.remote(write_shard).options(num_cpus=params.resources.num_cpus, num_gpus=params.resources.num_gpus,
                                           max_retries=1)  # a crashed worker retries; its temp dir is discarded
    limit = params.resources.concurrency or max(1, len(plans))
    pending, in_flight, fates = list(plans), {}, {}
    while pending or in_flight:
        while pending and len(in_flight) < limit:
            plan = pending.pop(0)
            shard_paths = [paths[i] for i in plan.row_indices]
            in_flight[task.remote(shard_paths, shards_dir / plan.name, params, schema=plan.schema)] = plan
        [ref], _ = ray.wait(list(in_flight), num_returns=1)
        plan = in_flight.pop(ref)
        try:
            shard_rows = ray.get(ref)
        except Exception as exc:  # the task itself died (e.g. out of memory twice): its episodes say so
            logger.error("%s: %s task failed: %s", STAGE, plan.name, exc)
            reason = f"shard {plan.name} task failed: {error_reason(exc)}"
            shard_rows = [{"status": QUARANTINED, "reason": reason, "shard": ""} for _ in plan.row_indices]
        fates.update(zip(plan.row_indices, shard_rows, strict=True))
        logger.info("%s: %s done (%d to go)", STAGE, plan.name, len(pending) + len(in_flight))
    return fates


def plan_shards(episodes: Sequence[tuple[str, ShardSchema]], episodes_per_shard: int,
                taken: Iterable[int] = ()) -> list[ShardPlan]:
    """Group (episode_id, schema) pairs by schema, sort by id, cut into shards; number them by first id.

    ``row_indices`` index into ``episodes``. Shard numbers skip ``taken`` (shards already on disk), lowest first, so
    a resumed run fills exactly the gaps a fresh run would have filled when its inputs are unchanged.
    """
    groups: dict[ShardSchema, list[int]] = {}
    for j, (_, schema) in enumerate(episodes):
        groups.setdefault(schema, []).append(j)
    chunks: list[tuple[ShardSchema, list[int]]] = []
    for schema, members in groups.items():
        members.sort(key=lambda j: episodes[j][0])
        chunks += [(schema, members[k:k + episodes_per_shard]) for k in range(0, len(members), episodes_per_shard)]
    chunks.sort(key=lambda chunk: episodes[chunk[1][0]][0])
    taken, numbers, k = set(taken), [], 0
    while len(numbers) < len(chunks):
        if k not in taken:
            numbers.append(k)
        k += 1
    return [ShardPlan(f"shard-{k:05d}", schema, tuple(members))
            for k, (schema, members) in zip(numbers, chunks, strict=True)]


def _prepare_shards_dir(shards_dir: Path, resume: bool) -> Path | None:
    """Fail early on an unwritable output; clear leftovers of an interrupted run; without resume, move the shards of
    an earlier run aside (returned: delete it once the new shards are written) so they are replaced, not mixed in."""
    try:
        shards_dir.mkdir(parents=True, exist_ok=True)
        probe = shards_dir / f".write-probe-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OSError(f"{STAGE}: cannot write shards under {shards_dir} ({exc.strerror or exc}); "
                      "set output_dir to a writable directory") from exc
    for stale in [*shards_dir.glob(".tmp-shard-*"), *shards_dir.glob(".replaced-*")]:
        logger.info("%s: removing %s, left by an interrupted run", STAGE, stale)
        shutil.rmtree(stale, ignore_errors=True)
    existing = sorted(p.name for p in shards_dir.iterdir() if _SHARD_RE.match(p.name))
    if not existing or resume:
        return None
    replaced = shards_dir / f".replaced-{uuid.uuid4().hex[:12]}"
    replaced.mkdir()
    for name in existing:
        os.rename(shards_dir / name, replaced / name)
    logger.warning("%s: not resuming, so the %d shards of an earlier run in %s are replaced", STAGE, len(existing),
                   shards_dir)
    return replaced


def _existing_shards(shards_dir: Path) -> dict[str, tuple[str, str, str]]:
    """episode_id -> (shard, status, reason) of every episode settled in a finished shard (written or quarantined)."""
    done: dict[str, tuple[str, str, str]] = {}
    for shard_dir in sorted(p for p in shards_dir.iterdir() if _SHARD_RE.match(p.name)):
        try:
            provenance = read_provenance(shard_dir)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"{STAGE}: {shard_dir} has no readable {PROVENANCE_FILE} ({error_reason(exc)}); it "
                               "was not written by this stage: move it away before resuming") from exc
        for entry in provenance["episodes"]:
            done[entry["episode_id"]] = (shard_dir.name, WRITTEN, "")
        for entry in provenance["quarantined"]:
            done.setdefault(entry["episode_id"], ("", QUARANTINED, entry["reason"]))
    return done


def _probe_all(paths: Sequence[str], robot_type: str | None) -> list[ShardSchema | Exception]:
    """Schemas from the npz headers, a few files at a time (I/O bound); an exception in place of a bad file's."""

    def probe(path: str) -> ShardSchema | Exception:
        try:
            return ShardSchema.probe(path, robot_type)
        except Exception as exc:  # recorded per episode by the caller
            logger.warning("%s: quarantined %s: %s", STAGE, path, exc)
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(probe, paths))
