"""One LeRobot v3 shard: write episodes with lerobot's own writer, reopen it with lerobot's reader, add provenance.

``write_shard`` works in a local directory (lerobot's writer needs one): ``LeRobotDataset.create -> add_frame ->
save_episode``, ``finalize`` in ``finally``; then the dataset is reopened with lerobot's reader and checked (frame and
episode counts, each video's length per episode, the first and last frame of every episode decode at their
timestamps) and given ``meta/wmsynth_provenance.json`` (LeRobot episode_index -> our episode_id, source, seed, parent,
task, input path relative to the run directory, the whole episode meta). ``write_and_publish`` (one Ray task per
shard in ``write_lerobot``) runs it in a staging directory and publishes the result with ``pipeline.shards`` (rename or
upload, then ``_COMPLETE`` last).

Streams: RGB as AV1 (libsvtav1 preset 12, crf 30, GOP 2: lerobot's defaults) or h264/hevc; depth as lerobot's
``is_depth_map`` stream: 12-bit log-quantised metres over ``depth_min_m..depth_max_m`` (0.01..10 m: steps <= 1.8 mm
below 2 m), HEVC *lossless*; 0/NaN ("no measurement") is stored as the lowest code and reads back as ``depth_min_m``.
lerobot's reader returns depth as float32 millimetres by default, metres with ``depth_output_unit="m"``. The x265
settings are lerobot's (lossless) plus closed GOPs without B-frames: with lerobot 0.6.1's own settings, episodes of odd
or very short length break the concatenated video (a frame after the boundary fails to decode on read).
Not written to LeRobot (listed per episode in the provenance file): segmentation and ``extras`` arrays.

A bad episode (unreadable file, fails ``Episode.validate``, schema differs from the shard's, fewer than 2 frames) is
quarantined with the reason and the rest of its shard is written. A failure of the writer itself (encoder crash, failed
check) quarantines the shard's episodes, names the shard in the reason and publishes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from episodes import Episode, EpisodeError
from episodes import io as fileio
from pipeline import shards
from pipeline.lerobot_schema import ShardSchema
from pipeline.stage import QUARANTINED, WRITTEN, error_reason

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "meta/wmsynth_provenance.json"
PROVENANCE_VERSION = 2  # 2: input_path relative to the run directory
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
DEFAULT_PRESET = {"libsvtav1": 12, "h264": "veryfast", "hevc": "veryfast"}
MAX_CRF = {"libsvtav1": 63, "h264": 51, "hevc": 51}
# x265 options (depth, and RGB when video_codec is hevc). lossless=1 keeps the 12-bit depth codes exact (lerobot's
# default too). The rest make episodes concatenate cleanly: with lerobot 0.6.1's settings (open GOP, B-frames) the
# first frame after a short or odd-length episode cannot be decoded after a seek (FrameTimestampError on read), and a
# 2-frame episode fails to mux.
X265_CONCAT_PARAMS = "bframes=0:no-open-gop=1:repeat-headers=1:log-level=error"
X265_DEPTH_PARAMS = f"lossless=1:{X265_CONCAT_PARAMS}"
# Frames a streaming encoder may lag behind add_frame (see _wait_for_encoders).
MAX_ENCODER_BACKLOG = 64


@dataclass(frozen=True)
class WriterSettings:
    """How a shard is encoded (``WriteLerobotParams.writer_settings()`` holds the defaults and their validation)."""

    repo_id: str
    robot_type: str | None  # None: meta["robot_type"] of the episodes
    video_codec: str
    video_crf: int
    video_preset: int | str | None  # None: DEFAULT_PRESET[video_codec]
    video_gop: int
    depth_preset: str
    depth_min_m: float
    depth_max_m: float
    encoder_threads: int | None
    license: str = "unknown"  # a Hub licence id (pipeline.dataset_card.HUB_LICENSES): provenance and README.md card


@dataclass(frozen=True)
class ShardInput:
    episode_id: str
    path: str  # where to read the episode: local path or URL
    recorded_path: str  # how the provenance names it (relative to the run directory)


class ShardWriteError(RuntimeError):
    """The writer itself failed for a whole shard (not one bad episode); its episodes are quarantined."""


def fate(episode_id: str, status: str, reason: str = "", shard: str = "") -> dict[str, str]:
    return {"episode_id": episode_id, "status": status, "reason": reason, "shard": shard}


# -- the Ray task ----------------------------------------------------------------------------------------------------


def write_and_publish(inputs: Sequence[ShardInput], target: str, settings: WriterSettings,
                      schema: ShardSchema | None = None) -> list[dict[str, str]]:
    """Write ``inputs`` as the shard at ``target`` (local path or URL); one fate per input, in order.

    The shard is built and checked in a local staging directory, then published (``pipeline.shards.publish``:
    rename or upload, ``_COMPLETE`` last). Nothing is published when no episode could be written or the writer failed.
    """
    name = fileio.name(target)
    with shards.staging_dir(target) as local:
        fates = write_shard(inputs, local, settings, name=name, schema=schema)
        written = [f["episode_id"] for f in fates if f["status"] == WRITTEN]
        if not written:
            return fates
        try:
            shards.publish(local, target, {"episodes": written,
                                           "quarantined": [{"episode_id": f["episode_id"], "reason": f["reason"]}
                                                           for f in fates if f["status"] == QUARANTINED]})
        except Exception as exc:  # storage failed: this shard's episodes say so, nothing half-published is trusted
            logger.error("%s: publishing to %s failed: %s", name, target, error_reason(exc))
            reason = f"shard {name} could not be published to {target}: {error_reason(exc)}"
            return [f if f["status"] == QUARANTINED else fate(f["episode_id"], QUARANTINED, reason) for f in fates]
    logger.info("%s: published %d episodes (%d quarantined) to %s", name, len(written), len(fates) - len(written),
                target)
    return fates


# -- one shard in a local directory (no Ray) -------------------------------------------------------------------------


def write_shard(inputs: Sequence[ShardInput], root: Path, settings: WriterSettings, *, name: str | None = None,
                schema: ShardSchema | None = None) -> list[dict[str, str]]:
    """Write the episodes of ``inputs`` (in that order) as one checked LeRobot v3 dataset at ``root`` (local).

    Returns one fate per input: ``written`` with ``shard`` = ``name``, or ``quarantined`` with the reason. ``schema``
    is what the episodes must match (the stage passes the probed one); by default the first readable episode's.
    ``root`` must not exist; when no episode could be written, or the writer failed, it is removed again.
    """
    root = Path(root)
    name = name or root.name
    if root.exists():
        raise FileExistsError(f"{root} already exists; write_shard never overwrites a dataset")
    fates: list[dict[str, str] | None] = [None] * len(inputs)
    entries: list[dict[str, Any]] = []
    with _quiet_encoders():
        try:
            schema = _write(inputs, root, settings, name, schema, fates, entries)
        except Exception as exc:  # the writer failed: nothing of this shard is kept, each of its episodes says why
            shutil.rmtree(root, ignore_errors=True)
            logger.error("%s: shard write failed, quarantining its episodes: %s", name, error_reason(exc))
            logger.debug("%s: traceback", name, exc_info=True)
            reason = f"shard {name} could not be written: {error_reason(exc)}"
            return [f if f is not None and f["status"] == QUARANTINED else fate(i.episode_id, QUARANTINED, reason)
                    for f, i in zip(fates, inputs, strict=True)]
    done = [f for f in fates if f is not None]
    if not entries:
        shutil.rmtree(root, ignore_errors=True)
        return done  # every episode was quarantined: no shard
    _write_json(root / PROVENANCE_FILE, _provenance(name, settings, schema, entries, inputs, done))
    _write_card(root, settings)
    logger.info("%s: wrote %d episodes (%d quarantined)", name, len(entries), len(done) - len(entries))
    return done


def _write(inputs: Sequence[ShardInput], root: Path, settings: WriterSettings, name: str, schema: ShardSchema | None,
           fates: list[dict[str, str] | None], entries: list[dict[str, Any]]) -> ShardSchema | None:
    """write_shard's body; fills ``fates`` and ``entries`` in place so a failure can still report them."""
    dataset = None
    try:
        for i, item in enumerate(inputs):
            try:
                episode = _load(item.path)
                episode.validate(item.path)
                episode_schema = ShardSchema.of_episode(episode, settings.robot_type, item.path)
                schema = schema or episode_schema
                if episode_schema != schema:
                    raise EpisodeError(item.path, "schema", f"differs from shard {name}: "
                                                            f"{schema.difference(episode_schema)}")
            except Exception as exc:  # a bad episode is recorded, not fatal: the others go on
                logger.warning("%s: quarantined %s: %s", name, item.episode_id, exc)
                fates[i] = fate(item.episode_id, QUARANTINED, error_reason(exc))
                continue
            if dataset is None:
                dataset = create_dataset(root, schema, settings)
            try:
                _add_frames(dataset, episode, schema)
            except Exception as exc:  # lerobot rejected a frame: drop this episode's buffer, keep the shard
                logger.warning("%s: quarantined %s: %s", name, item.episode_id, exc)
                dataset.clear_episode_buffer()
                fates[i] = fate(item.episode_id, QUARANTINED, error_reason(exc))
                continue
            dataset.save_episode()  # a failure here leaves the writer in an unknown state: the shard fails
            entries.append(_provenance_entry(len(entries), episode, item.recorded_path))
            fates[i] = fate(item.episode_id, WRITTEN, shard=name)
    finally:
        if dataset is not None:
            dataset.finalize()
    if entries:
        check_shard(root, settings.repo_id, schema, entries)
    return schema


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


def _load(path: str) -> Episode:
    try:
        return Episode.load(path)
    except EpisodeError:
        raise
    except Exception as exc:  # a truncated or foreign file: say so in one line
        raise EpisodeError(path, "file", f"unreadable episode file ({error_reason(exc)})") from exc


def encoder_configs(settings: WriterSettings):
    """lerobot (RGBEncoderConfig, DepthEncoderConfig) for these settings (the benchmark gives them to lerobot too)."""
    from lerobot.configs import DepthEncoderConfig, RGBEncoderConfig

    preset = settings.video_preset if settings.video_preset is not None else DEFAULT_PRESET[settings.video_codec]
    rgb_options = {"x265-params": X265_CONCAT_PARAMS} if settings.video_codec == "hevc" else {}
    rgb = RGBEncoderConfig(vcodec=settings.video_codec, crf=settings.video_crf, preset=preset, g=settings.video_gop,
                           extra_options=rgb_options)
    depth = DepthEncoderConfig(preset=settings.depth_preset, g=settings.video_gop, depth_min=settings.depth_min_m,
                               depth_max=settings.depth_max_m, extra_options={"x265-params": X265_DEPTH_PARAMS})
    return rgb, depth


def create_dataset(root: Path, schema: ShardSchema, settings: WriterSettings):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    rgb_encoder, depth_encoder = encoder_configs(settings)
    # Streaming: frames go straight to one PyAV encoder thread per stream, no PNG/TIFF round trip (139 vs 96 frames/s
    # for noisy 128x128 RGB + depth here; equal on smooth content, where lerobot's per-frame video stats dominate).
    # encoder_queue_maxsize=0 makes the queues unbounded: lerobot *drops* frames when a bounded queue is full, so
    # _wait_for_encoders keeps the backlog short instead.
    return LeRobotDataset.create(settings.repo_id, fps=schema.fps, features=schema.features(), root=root,
                                 robot_type=schema.robot_type, use_videos=True, rgb_encoder=rgb_encoder,
                                 depth_encoder=depth_encoder, encoder_threads=settings.encoder_threads,
                                 streaming_encoding=True, encoder_queue_maxsize=0)


def _add_frames(dataset, episode: Episode, schema: ShardSchema) -> None:
    """add_frame for every frame of the episode, each made by ``ShardSchema.frame`` (as the evaluator's are)."""
    for t in range(episode.num_frames):
        frame = schema.frame({cam: values[t] for cam, values in episode.rgb.items()},
                             {cam: values[t] for cam, values in episode.depth_m.items()},
                             None if episode.state is None else episode.state[t],
                             None if episode.action is None else episode.action[t])
        frame["task"] = episode.task
        dataset.add_frame(frame)
        _wait_for_encoders(dataset)


def _wait_for_encoders(dataset) -> None:
    """Keep each streaming encoder at most MAX_ENCODER_BACKLOG frames behind.

    lerobot 0.6.1 waits 120 s per stream at save_episode and then keeps a truncated video (logging an error); with
    unbounded queues a long, large episode could be that far behind. lerobot has no public hook for this, so this
    reads its private queues (pinned version; if they move, this becomes a no-op and check_shard still catches a
    short video). A dead encoder thread is not waited for: the next add_frame raises lerobot's own error.
    """
    encoder = getattr(getattr(dataset, "writer", None), "_streaming_encoder", None)
    queues = getattr(encoder, "_frame_queues", None) or {}
    threads = getattr(encoder, "_threads", None) or {}
    for key, frame_queue in queues.items():
        thread = threads.get(key)
        while thread is not None and thread.is_alive() and frame_queue.qsize() > MAX_ENCODER_BACKLOG:
            time.sleep(0.001)


def check_shard(root: Path, repo_id: str, schema: ShardSchema, entries: list[dict[str, Any]]) -> None:
    """Reopen the finished dataset with lerobot's reader: counts, each video's length per episode, and the first and
    last frame of every episode (episode boundaries are where concatenated videos break) decode at their timestamps."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset(repo_id, root=root)
    meta = dataset.meta
    expected_frames = sum(entry["num_frames"] for entry in entries)
    if meta.total_episodes != len(entries) or meta.total_frames != expected_frames:
        raise ShardWriteError(f"lerobot reports {meta.total_episodes} episodes / {meta.total_frames} frames, "
                              f"expected {len(entries)} / {expected_frames}")
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


# -- provenance ------------------------------------------------------------------------------------------------------


def provenance_kind(meta: dict[str, Any]) -> str:
    """``synthetic`` (a world-model rollout), ``pseudo_labelled`` (real frames, inferred actions) or ``real``."""
    if meta.get("source") == "synthetic":
        return "synthetic"
    return "pseudo_labelled" if meta.get("action_source") == "pseudo_labelled" else "real"


def _provenance_entry(episode_index: int, episode: Episode, recorded_path: str) -> dict[str, Any]:
    meta = episode.meta
    return {
        "episode_index": episode_index,
        "episode_id": episode.episode_id,
        "num_frames": episode.num_frames,
        "task": episode.task,
        "provenance": provenance_kind(meta),
        "recipe": meta.get("recipe"),  # synthetic: proposal, start frame, seed (the parent is below)
        "evaluation": meta.get("evaluation"),  # synthetic: every evaluator's score and the filter's decision
        "source": meta.get("source"),
        "source_uri": meta.get("source_uri"),
        "seed": meta.get("seed"),
        "parent": meta.get("parent"),
        "success": meta.get("success"),
        "input_path": recorded_path,
        "not_written": {"segmentation": sorted(episode.segmentation), "extras": sorted(episode.extras)},
        "meta": meta,  # everything else: camera intrinsics / cam_to_world, subgoals, objects, sim config, ...
    }


def _provenance(name: str, settings: WriterSettings, schema: ShardSchema, entries: list[dict[str, Any]],
                inputs: Sequence[ShardInput], fates: list[dict[str, str]]) -> dict[str, Any]:
    import lerobot

    paths = {i.episode_id: i.recorded_path for i in inputs}
    return {
        "format_version": PROVENANCE_VERSION,
        "writer": "wmsynth write_lerobot",
        "shard": name,
        "repo_id": settings.repo_id,
        "license": settings.license,
        "lerobot_version": getattr(lerobot, "__version__", "unknown"),
        "schema": schema.to_json(),
        "input_paths": "relative to the run directory (absolute or URLs when outside it)",
        # Full encoder settings per stream are in meta/info.json (features[key]["info"]).
        "depth": {"unit_written": "m", "unit_read_by_default": "mm", "lossless_codes": True,
                  "depth_min_m": settings.depth_min_m, "depth_max_m": settings.depth_max_m,
                  "no_measurement_reads_as_m": settings.depth_min_m},
        "episodes": entries,
        "quarantined": [{"episode_id": f["episode_id"], "input_path": paths[f["episode_id"]], "reason": f["reason"]}
                        for f in fates if f["status"] == QUARANTINED],
    }


def _write_card(root: Path, settings: WriterSettings) -> None:
    """lerobot's own dataset card (``README.md``: licence, tags, info.json) for the shard. The licence is not put in
    meta/info.json: lerobot 0.6.1's ``DatasetInfo.from_dict`` warns about unknown keys on every load and its writer
    drops them when it rewrites the file."""
    from lerobot.datasets.io_utils import load_info
    from lerobot.datasets.utils import create_lerobot_dataset_card

    card = create_lerobot_dataset_card(tags=["wmsynth"], dataset_info=load_info(root), license=settings.license,
                                       repo_id=settings.repo_id)
    (root / "README.md").write_text(str(card))


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str))


def read_provenance(shard_dir: str | Path) -> dict[str, Any]:
    """The provenance file of a shard directory (local path or URL)."""
    return json.loads(fileio.read_text(fileio.join(str(shard_dir), PROVENANCE_FILE)))
