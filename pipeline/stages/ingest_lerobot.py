"""Source stage ``ingest_lerobot``: a LeRobot v3 dataset (local or object-storage ``root``, or ``repo_id`` on the Hub)
-> episodes.

    - name: ingest_lerobot
      params:
        root: data/koch_pick_place          # dataset directory (meta/info.json inside): local path or s3://, gs://...
        episodes: [0, 1, 2]                 # default: all
        cameras: {front: observation.images.front}     # default: every observation.images.* stream
        depth: {front: observation.depth.front}         # default: every is_depth_map stream, paired by name
        state_key: observation.state        # null = ignore; the default may be absent from the dataset
        action_key: action                  # null = ignore; the default may be absent (action-less data)
        robot_type: so100                   # default: the dataset's own (meta/info.json), else unknown
        calibration:                        # per camera (our names); see pipeline.calibration
          front: {intrinsics: {fx: 410.0, fy: 410.0, cx: 319.5, cy: 239.5}}

Fan-out 1:N. ``check`` (``wmsynth validate``, and before any work) reads ``meta/info.json`` alone and reports a root
that does not exist or cannot be read, an unknown URL scheme, a mapped key the dataset lacks or of the wrong kind, and
episode indices out of range and a calibrated camera the mapping lacks, each under its YAML field. ``plan`` resolves the same mapping on the driver and lists
the episodes; the runner then runs one Ray task per episode, which reads it with lerobot's own metadata, parquet and
video readers (``pipeline.lerobot_read``) and returns the ``Episode``:

    local root    read in place
    URL root      ``meta/`` and only this episode's data and video files are copied (in blocks) to a temporary
                  directory of the task, read there, and deleted; the driver never downloads the dataset
    Hub           lerobot downloads this episode's files (into ``root`` when given, else its snapshot cache)

A bad episode raises ``EpisodeError`` naming the episode (``<root>#episode=<i>``) and field; the runner quarantines
it and the others go on. Depth comes back in metres (see ``pipeline.lerobot_read``).

Calibration (``meta["cameras"]``): the ``calibration`` param, else what the dataset carries (a wmsynth shard's
``meta/wmsynth_provenance.json``, read on the driver), else none: a later ``depth`` stage may estimate it, and
``synthesize_qa`` says which episodes it could not use and why.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from episodes import Episode, EpisodeError, safe_id
from episodes import io as fileio
from pipeline import calibration, lerobot_read
from pipeline.calibration import CameraCalibration
from pipeline.inputs import read_problem, scheme_problem
from pipeline.lerobot_read import KeyMap, camera_keys, depth_camera_name, depth_keys, image_shape
from pipeline.stage import CheckContext, Problem, Resources, StageContext, StageParams, error_reason, register_stage

logger = logging.getLogger(__name__)

STAGE = "ingest_lerobot"
DEFAULT_STATE_KEY = "observation.state"
DEFAULT_ACTION_KEY = "action"


class IngestLeRobotParams(StageParams):
    repo_id: str | None = Field(None, description="Hub dataset id, e.g. lerobot/pusht; used when root does not exist")
    root: str | None = Field(None, description="LeRobot v3 dataset directory, local or a URL (s3://bucket/ds); or "
                                               "the local download target for repo_id")
    revision: str | None = Field(None, description="Hub revision (branch, tag, commit); default: lerobot's tag")
    episodes: list[int] | None = Field(None, description="episode indices to ingest; default: all")
    cameras: dict[str, str] | None = Field(None, description="our camera name -> dataset key; default: auto-detect")
    depth: dict[str, str] | None = Field(None, description="our camera name -> depth key; default: auto-detect")
    state_key: str | None = DEFAULT_STATE_KEY
    action_key: str | None = DEFAULT_ACTION_KEY
    tolerance_s: float = Field(1e-4, gt=0, description="timestamp tolerance for frame lookup and fps checks")
    robot_type: str | None = Field(None, min_length=1, description="the robot (the shards' robot_type, the world "
                                   "model's embodiment); default: the dataset's own, else unknown")
    task: str | None = Field(None, description="task text for episodes whose dataset gives none (empty)")
    action_names: list[str] | None = Field(None, min_length=1, description="names of the action dims; default: the "
                                           "dataset's feature names")
    calibration: dict[str, CameraCalibration] | None = Field(None, description="per camera: intrinsics (fx, fy, cx, "
                                                             "cy or fov_deg) and/or cam_to_world; default: the "
                                                             "dataset's, if it carries any")
    resources: Resources = Resources(num_cpus=1)

    @field_validator("episodes")
    @classmethod
    def _episodes_valid(cls, episodes: list[int] | None) -> list[int] | None:
        if episodes is None:
            return None
        if not episodes:
            raise ValueError("empty list; leave episodes out (null) to ingest every episode")
        negative = [e for e in episodes if e < 0]
        if negative:
            raise ValueError(f"episode indices must be >= 0, got {negative}")
        if len(set(episodes)) != len(episodes):
            raise ValueError(f"duplicate episode indices in {episodes}")
        return episodes

    @field_validator("cameras", "depth")
    @classmethod
    def _mapping_valid(cls, mapping: dict[str, str] | None) -> dict[str, str] | None:
        if mapping is None:
            return None
        for name, key in mapping.items():
            if not name or "/" in name:
                raise ValueError(f"camera name must be non-empty without '/', got {name!r}")
            if not key:
                raise ValueError(f"camera {name!r}: empty dataset key")
        return mapping

    @model_validator(mode="after")
    def _source_given(self) -> IngestLeRobotParams:
        if self.root is None and self.repo_id is None:
            raise ValueError("give root (a LeRobot dataset directory, local or s3://...) or repo_id (a Hub dataset)")
        if self.cameras is not None and self.depth is not None:
            unknown = sorted(set(self.depth) - set(self.cameras))
            if unknown:
                raise ValueError(f"depth names cameras {unknown} that are not in cameras {sorted(self.cameras)}")
        return self


@dataclass(frozen=True)
class Source:
    """Where the dataset is, resolved on the driver (travels to the tasks inside each item)."""

    mode: str  # "local" (read in place), "remote" (URL: per-episode copies), "hub" (lerobot downloads)
    name: str  # episode ids are <name>-ep<index>
    repo_id: str
    root: str | None  # local directory or URL; for the Hub the download target (None: lerobot's cache)
    location: str  # in messages and source_uri: the root, or hf://datasets/<repo_id>
    revision: str | None

    @property
    def label(self) -> str:
        return f"LeRobot dataset {self.location}"


# -- driver side: where the dataset is, its key mapping, checks and the plan -----------------------------------------


def locate(params: IngestLeRobotParams) -> tuple[Source | None, list[Problem]]:
    root, mode = params.root, "hub"
    if root is not None:
        problem = scheme_problem(root)
        if problem:
            return None, [("root", problem)]
        if not fileio.is_local(root):
            root, mode = fileio.normalize(root), "remote"
        else:
            path = fileio.local_path(root).expanduser().resolve()
            root = str(path)
            if path.is_dir():
                mode = "local"
            elif params.repo_id is None:
                return None, [("root", f"{path} does not exist or is not a directory (set repo_id to download it "
                                       "there)")]
    name = safe_id(params.repo_id.split("/")[-1] if params.repo_id else fileio.name(root), "lerobot")
    repo_id = params.repo_id or f"local/{name}"
    location = root if mode != "hub" else f"hf://datasets/{repo_id}"
    return Source(mode=mode, name=name, repo_id=repo_id, root=root, location=location,
                  revision=params.revision), []


def read_info(source: Source) -> tuple[dict | None, list[Problem]]:
    """The dataset's ``meta/info.json`` (the Hub's through lerobot, which downloads ``meta/``), or the problem."""
    if source.mode == "hub":
        from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

        meta = LeRobotDatasetMetadata(source.repo_id, root=source.root, revision=source.revision)
        return meta.info.to_dict(), []
    path = fileio.join(source.root, "meta", "info.json")
    try:
        info = json.loads(fileio.read_bytes(path))
    except FileNotFoundError:
        if source.mode == "remote" and not fileio.exists(source.root):
            return None, [("root", f"{source.root} does not exist")]
        return None, [("root", f"{source.root} is not a LeRobot dataset (no meta/info.json)")]
    except ValueError as exc:
        return None, [("root", f"{path} is not valid JSON ({exc})")]
    except Exception as exc:  # storage: no bucket, no credentials, no network, permissions
        return None, [("root", read_problem(path, exc))]
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        return None, [("root", f"{path} has no 'features' mapping: not a LeRobot v3 dataset")]
    return info, []


def resolve_keys(params: IngestLeRobotParams, features: dict[str, dict],
                 label: str) -> tuple[KeyMap, list[Problem], list[str]]:
    """The key mapping against the dataset's features: (mapping, problems by YAML field, notes to log)."""
    problems: list[Problem] = []
    notes: list[str] = []
    depth_set = set(depth_keys(features))
    visual = camera_keys(features)
    rgb_keys = [k for k in visual if k not in depth_set]

    def absent(key: str, at: str) -> bool:
        if key in features:
            return False
        problems.append((at, f"{key!r} is not a feature of {label}; its features are {sorted(features)}"))
        return True

    if params.cameras is None:
        cameras: dict[str, str] = {}
        for key in rgb_keys:
            cam = key.removeprefix("observation.images.").removeprefix("observation.")
            if cam in cameras:
                problems.append(("cameras", f"{label}: keys {cameras[cam]!r} and {key!r} both map to camera "
                                            f"{cam!r}; set cameras explicitly"))
            cameras.setdefault(cam, key)
        if not cameras:
            problems.append(("cameras", f"{label} has no RGB camera stream (camera keys: {visual}); set cameras: "
                                        "{name: key}"))
    else:
        cameras = dict(params.cameras)
        for cam, key in cameras.items():
            if not absent(key, f"cameras.{cam}") and (key not in visual or key in depth_set):
                problems.append((f"cameras.{cam}", f"{key!r} in {label} is not an RGB image/video stream (dtype "
                                                   f"{features[key]['dtype']!r}); RGB streams: {rgb_keys}"))

    if params.depth is None:
        depth: dict[str, str] = {}
        for key in sorted(depth_set):
            cam = depth_camera_name(key)
            if cam in cameras and cam not in depth:
                depth[cam] = key
            else:
                notes.append(f"{label}: depth stream {key!r} has no matching RGB camera (cameras {sorted(cameras)}); "
                             "skipped, map it with depth: {camera: key}")
    else:
        depth = dict(params.depth)
        for cam, key in depth.items():
            if absent(key, f"depth.{cam}"):
                continue
            if key not in depth_set:
                problems.append((f"depth.{cam}", f"{key!r} in {label} is not a depth map (its info has no "
                                                 f"is_depth_map); depth streams: {sorted(depth_set)}"))
            elif cam not in cameras:
                problems.append((f"depth.{cam}", f"no RGB camera {cam!r} (cameras: {sorted(cameras)})"))
    if not problems:
        for cam, key in depth.items():
            rgb_hw, depth_hw = image_shape(features[cameras[cam]])[:2], image_shape(features[key])[:2]
            if rgb_hw != depth_hw:
                problems.append((f"depth.{cam}", f"{label}: depth {key!r} is {depth_hw[0]}x{depth_hw[1]} but camera "
                                                 f"{cameras[cam]!r} is {rgb_hw[0]}x{rgb_hw[1]}; they must match"))

    def vector_key(value: str | None, at: str, default: str) -> str | None:
        if value is None:
            return None
        if value not in features:
            if at not in params.model_fields_set and value == default:
                notes.append(f"{label} has no {value!r}; episodes get {at.removesuffix('_key')}=None")
            else:
                absent(value, at)
            return None
        if features[value].get("dtype") in ("image", "video", "string", "language"):
            problems.append((at, f"{value!r} in {label} is a {features[value]['dtype']} feature, not a numeric "
                                    "vector"))
            return None
        return value

    keys = KeyMap(cameras=cameras, depth=depth,
                  state_key=vector_key(params.state_key, "state_key", DEFAULT_STATE_KEY),
                  action_key=vector_key(params.action_key, "action_key", DEFAULT_ACTION_KEY))
    return keys, problems, notes


@dataclass
class Resolved:
    """The dataset, its key mapping and the episodes to ingest, or the problems (by YAML field) in the way."""

    source: Source | None
    keys: KeyMap | None = None  # None: not resolved (a problem, or a Hub dataset at validation time)
    episodes: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth a log line, not an error


def resolve(params: IngestLeRobotParams, hub: bool = True) -> Resolved:
    """Everything ``check``, ``describe`` and ``plan`` need; with ``hub`` False a Hub dataset is left unresolved
    (validation does not download)."""
    source, problems = locate(params)
    if source is None or (source.mode == "hub" and not hub):
        return Resolved(source, problems=problems)
    info, problems = read_info(source)
    if info is None:
        return Resolved(source, problems=problems)
    keys, problems, notes = resolve_keys(params, info["features"], source.label)
    problems += calibration.camera_problems(params.calibration, list(keys.cameras), source.label)
    total = int(info.get("total_episodes") or 0)
    episodes = params.episodes if params.episodes is not None else list(range(total))
    missing = [e for e in episodes if e >= total]
    if missing:
        problems.append(("episodes", f"episodes {missing} do not exist in {source.location} ({total} episodes, "
                                     f"indices 0..{total - 1})"))
    elif not episodes:
        problems.append(("root", f"{source.location} has no episodes"))
    return Resolved(source, keys, episodes, problems, notes)


def check(params: IngestLeRobotParams, cctx: CheckContext) -> list[Problem]:
    """The root exists and holds a readable LeRobot dataset whose features have every mapped key (a Hub dataset is
    checked when the run downloads its metadata)."""
    return resolve(params, hub=False).problems


def describe(params: IngestLeRobotParams) -> dict:
    """Cameras, depth and actions the episodes will have, from ``meta/info.json`` when it can be read."""
    try:
        resolved = resolve(params, hub=False)
    except Exception:  # noqa: BLE001 - check reports why
        resolved = Resolved(None)
    keys = resolved.keys
    if keys is not None and not resolved.problems:
        return {"cameras": sorted(keys.cameras), "depth": bool(keys.depth), "actions": keys.action_key is not None}
    return {"cameras": sorted(params.cameras)} if params.cameras else {}


def plan(params: IngestLeRobotParams, ctx: StageContext) -> list[dict]:
    resolved = resolve(params)
    if resolved.problems:  # reported by check before the run; raised here only when the run skipped it
        raise ValueError(f"{STAGE}: " + "; ".join(f"{name}: {message}" for name, message in resolved.problems))
    for note in resolved.notes:
        logger.warning("%s: %s", STAGE, note)
    source, keys = resolved.source, resolved.keys
    logger.info("%s: %d episodes from %s, cameras %s, depth %s, state %s, action %s", STAGE, len(resolved.episodes),
                source.location, keys.cameras, keys.depth, keys.state_key, keys.action_key)
    shared = {"source": asdict(source), "keys": asdict(keys)}
    carried = carried_calibration(source, keys)
    return [{"episode_id": f"{source.name}-ep{e:06d}", "episode_index": int(e), "calibration": carried.get(e), **shared}
            for e in resolved.episodes]


def carried_calibration(source: Source, keys: KeyMap) -> dict[int, dict[str, dict]]:
    """{episode index: {our camera: {"intrinsics", "cam_to_world"}}} from a wmsynth shard's provenance (a dataset
    this pipeline wrote, or merged); {} for any other dataset (LeRobot v3 has no calibration field)."""
    from pipeline.lerobot_shard import PROVENANCE_FILE

    if source.mode == "hub":
        return {}
    path = fileio.join(source.root, PROVENANCE_FILE)
    try:
        provenance = json.loads(fileio.read_bytes(path))
    except FileNotFoundError:
        return {}
    except Exception as exc:  # noqa: BLE001 - the calibration is optional; the episodes are still read
        logger.warning("%s: %s is unreadable (%s); its calibration is not used", STAGE, path, error_reason(exc))
        return {}
    ours = {cam: key.removeprefix("observation.images.") for cam, key in keys.cameras.items()}
    out = {}
    for entry in provenance.get("episodes") or []:
        cameras = (entry.get("meta") or {}).get("cameras") or {}
        picked = {cam: {k: cameras[theirs][k] for k in ("intrinsics", "cam_to_world") if k in cameras[theirs]}
                  for cam, theirs in ours.items() if isinstance(cameras.get(theirs), dict)}
        if picked:
            out[int(entry["episode_index"])] = picked
    return out


# -- task side: one episode ------------------------------------------------------------------------------------------


@register_stage(STAGE, kind="source", params=IngestLeRobotParams, plan=plan, check=check, describe=describe)
def ingest_lerobot(item: dict, params: IngestLeRobotParams, ctx: StageContext) -> Episode:
    """Read a LeRobot v3 dataset (local, object storage, Hub) into episodes: RGB, metric depth, state, action, task."""
    source, keys = Source(**item["source"]), KeyMap(**item["keys"])
    ep_idx = int(item["episode_index"])
    where = f"{source.location}#episode={ep_idx}"
    try:
        with tempfile.TemporaryDirectory(prefix="wmsynth-lerobot-") as tmp:
            if source.mode == "local":
                root = Path(source.root)
                meta = lerobot_read.local_metadata(source.repo_id, root)
                # checked before reading: lerobot would try the Hub for files it cannot find
                lerobot_read.check_episode_files(meta, ep_idx, keys, source.root, where)
            elif source.mode == "remote":
                root = Path(tmp) / "dataset"
                meta = lerobot_read.stage_remote_episode(source.root, source.repo_id, ep_idx, keys, root, where)
            else:
                meta, root = lerobot_read.hub_episode(source.repo_id, source.root, source.revision, ep_idx,
                                                      params.tolerance_s)
            episode = lerobot_read.read_episode(meta, root, ep_idx, item["episode_id"], keys,
                                                location=source.location, repo_id=source.repo_id,
                                                tolerance_s=params.tolerance_s, cache_dir=Path(tmp) / "cache")
            # never the simulator's arm by default: the param, the dataset's own robot, else unknown
            episode.meta["robot_type"] = params.robot_type or episode.meta["lerobot"]["robot_type"] or "unknown"
            if params.task and not episode.task:
                episode.task = params.task
            if params.action_names is not None and episode.action is not None:
                if len(params.action_names) != episode.action.shape[1]:
                    raise EpisodeError(where, "action_names", f"{len(params.action_names)} names for "
                                       f"{episode.action.shape[1]} action dimensions of {keys.action_key!r}")
                episode.meta["action_names"] = list(params.action_names)
            sizes = {cam: frames.shape[1:3] for cam, frames in episode.rgb.items()}
            try:
                calibration.apply(episode.meta, sizes, params.calibration, item.get("calibration"))
            except ValueError as exc:
                raise EpisodeError(where, "calibration", f"the dataset's calibration: {exc}") from exc
            return episode
    except EpisodeError:
        raise
    except Exception as exc:  # a library or storage failure on this episode: quarantined, named by the episode
        logger.debug("%s: %s failed", STAGE, where, exc_info=True)
        raise EpisodeError(where, "episode", error_reason(exc)) from exc
