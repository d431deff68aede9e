"""Monocular depth with Depth Anything or Depth Pro (transformers), and alignment of relative depth to metres.

    estimator = DepthAnythingEstimator(EstimatorConfig(model="depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf"))
    raw = estimator.predict(frames)                        # (N, H, W): metres (metric) or relative disparity
    episode, report = estimate_episode_depth(episode, estimator, AlignmentConfig())

Loading: ``AutoImageProcessor.from_pretrained`` + ``AutoModelForDepthEstimation.from_pretrained`` on a hub id or a local
directory (the same code for real checkpoints and for the tiny random test model saved with ``save_pretrained``). The
checkpoint's ``config.depth_estimation_type`` ("relative" or "metric") says what it predicts unless ``kind`` overrides.
Frames go through the model ``batch_size`` at a time; predictions are resized back to the frame size (bilinear).

Relative checkpoints predict affine-invariant inverse depth (disparity, larger = nearer), so they are aligned per frame
by least squares in disparity space against sparse metric cues::

    min_{s, t}  sum_i (s * pred_i + t - 1 / d_i)^2          depth = 1 / (s * pred + t)  where that is > 0, else 0

Metric checkpoints are used as they are (``alignment: auto``) or, with ``alignment: scale_shift``, aligned the same way
in depth space (``s * pred + t``). Cues (``AlignmentConfig.cues``, all that apply are pooled):

    sensor        ``num_cue_pixels`` pixels of the episode's own (possibly sparse) depth, drawn once per camera
    table_plane   pixels of the support surface (segmentation id ``support_segment_id``, by default the simulator's
                  table) with their depth from intersecting the pixel ray with the plane z = ``support_plane_z_m``
                  in the world (needs ``cam_to_world``)

The residual of every fit is reported (RMSE in metres and AbsRel at the cues) per frame in
``extras["depth_alignment_<cam>"]`` (T, 4: scale, shift, residual RMSE m, number of cues) and summarised in
``meta["depth"]``. If a frame has fewer than 2 cues, or the prediction is constant over them (degenerate), only a shift
is fitted and the frame is flagged. A relative checkpoint with no cues at all cannot give metres: the episode is
rejected with a message saying which cue to provide.

Depth Pro checkpoints (``config.model_type == "depth_pro"``) predict canonical inverse depth and, with their FoV head,
the horizontal field of view; transformers' ``post_process_depth_estimation`` turns both into metric depth and a focal
length in pixels. A camera that has intrinsics keeps them, and its depth is rescaled to the known focal (depth is
proportional to focal length); a camera without intrinsics gets the median predicted focal as ``fx = fy`` with the
principal point at the image centre, marked ``calibration.intrinsics: estimated`` with the per-frame spread reported.

When the episode had sensor depth for a camera that is estimated (``estimate_for: all``), AbsRel, RMSE and delta1 of
the estimate against it are computed (``depth.metrics``) and kept in ``meta["depth"]["cameras"][cam]["metrics"]``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from depth.metrics import DepthErrorSums, depth_error_sums
from episodes import Episode, EpisodeError

logger = logging.getLogger(__name__)

CueSource = Literal["sensor", "table_plane"]


@dataclass(frozen=True)
class EstimatorConfig:
    model: str  # hub id or local directory
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = 8  # frames per forward pass
    input_size: int | None = None  # square resize target of the processor; None: the checkpoint's own
    kind: Literal["auto", "relative", "metric"] = "auto"  # auto: config.depth_estimation_type
    torch_threads: int | None = None  # torch intra-op threads; None: torch's default
    local_files_only: bool = False  # never touch the network (a local directory or the HF cache only)

    def __post_init__(self):
        if not self.model:
            raise ValueError("model: expected a hub id or a local directory, got an empty string")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: expected auto, cpu or cuda, got {self.device!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {self.batch_size}")
        if self.input_size is not None and self.input_size < 8:
            raise ValueError(f"input_size: expected >= 8 pixels or None, got {self.input_size}")
        if self.kind not in ("auto", "relative", "metric"):
            raise ValueError(f"kind: expected auto, relative or metric, got {self.kind!r}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads: expected >= 1 or None, got {self.torch_threads}")


@dataclass(frozen=True)
class AlignmentConfig:
    alignment: Literal["auto", "none", "scale_shift"] = "auto"  # auto: relative -> scale_shift, metric -> none
    cues: tuple[CueSource, ...] = ("sensor", "table_plane")
    num_cue_pixels: int = 200  # sensor cues per frame
    support_segment_id: int | None = None  # None: meta["sim"]["body_ids"]["table"] when present
    support_plane_z_m: float = 0.0  # world height of the support plane
    estimate_for: Literal["missing", "all"] = "missing"  # cameras without depth, or every camera (GT kept for metrics)
    seed: int = 0

    def __post_init__(self):
        if self.alignment not in ("auto", "none", "scale_shift"):
            raise ValueError(f"alignment: expected auto, none or scale_shift, got {self.alignment!r}")
        unknown = [c for c in self.cues if c not in ("sensor", "table_plane")]
        if unknown:
            raise ValueError(f"cues: unknown {unknown} (known: sensor, table_plane)")
        if self.num_cue_pixels < 2:
            raise ValueError(f"num_cue_pixels: expected >= 2, got {self.num_cue_pixels}")
        if self.estimate_for not in ("missing", "all"):
            raise ValueError(f"estimate_for: expected missing or all, got {self.estimate_for!r}")


# -- the model -------------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no GPU here; give the stage resources.num_gpus > 0 "
                           "on a GPU node, or use device 'cpu' / 'auto'")
    return device


class DepthAnythingEstimator:
    """transformers depth model + its image processor, loaded once; ``predict`` maps frames to raw depth."""

    def __init__(self, config: EstimatorConfig):
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.config = config
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        self.device = resolve_device(config.device)
        try:
            self.processor = AutoImageProcessor.from_pretrained(config.model, local_files_only=config.local_files_only)
            self.model = AutoModelForDepthEstimation.from_pretrained(config.model,
                                                                     local_files_only=config.local_files_only)
        except OSError as exc:
            raise RuntimeError(f"depth model {config.model!r} could not be loaded ({exc}); pass a local directory "
                               f"with config.json, the weights and preprocessor_config.json, or a hub id reachable "
                               f"from this machine") from exc
        self.model.to(self.device).eval()
        self.predicts_focal = getattr(self.model.config, "model_type", None) == "depth_pro"
        self.backend = "depth_pro" if self.predicts_focal else "depth_anything"
        declared = "metric" if self.predicts_focal else getattr(self.model.config, "depth_estimation_type", None)
        self.kind = config.kind if config.kind != "auto" else (declared or "relative")
        logger.info("depth model %s loaded on %s (%s depth)", config.model, self.device, self.kind)

    def predict(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, H, W) float32: metres (metric) or relative inverse depth (relative)."""
        return self.predict_with_focal(frames)[0]

    def predict_with_focal(self, frames: np.ndarray,
                           focal_px: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, H, W, 3) uint8 -> (depth (N, H, W) float32, predicted focal lengths (N,) in pixels or None).

        ``focal_px``: the camera's known horizontal focal length at the frames' size; Depth Pro's depth is then
        scaled to it instead of its own prediction. Other models predict no focal and ignore it."""
        import torch
        import torch.nn.functional as F

        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames: expected (N, H, W, 3) uint8, got {tuple(frames.shape)}")
        height, width = frames.shape[1:3]
        kwargs: dict[str, Any] = {}
        if self.config.input_size is not None:
            kwargs["size"] = {"height": self.config.input_size, "width": self.config.input_size}
        out, focals = [], []
        with torch.inference_mode():
            for start in range(0, len(frames), self.config.batch_size):
                batch = list(frames[start:start + self.config.batch_size])
                inputs = self.processor(images=batch, return_tensors="pt", **kwargs).to(self.device)
                outputs = self.model(**inputs)
                if self.predicts_focal:
                    depth, focal = self._depth_pro_metres(outputs, len(batch), height, width, focal_px)
                    out.append(depth)
                    focals.append(focal)
                    continue
                pred = outputs.predicted_depth  # (B, h, w)
                pred = F.interpolate(pred[:, None].float(), size=(height, width), mode="bilinear",
                                     align_corners=False)[:, 0]
                out.append(pred.cpu().numpy())
        focal = np.concatenate(focals) if focals and focals[0] is not None else None
        return np.concatenate(out).astype(np.float32), focal

    def _depth_pro_metres(self, outputs, batch: int, height: int, width: int,
                          focal_px: float | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Depth Pro's outputs -> metres at the frame size, and its focal lengths (None without a FoV head)."""
        results = self.processor.post_process_depth_estimation(outputs, target_sizes=[(height, width)] * batch)
        depth = np.stack([r["predicted_depth"].float().cpu().numpy() for r in results])  # f / (W * inverse depth)
        has_fov = results[0]["focal_length"] is not None
        focal = np.array([float(r["focal_length"]) for r in results]) if has_fov else None
        if has_fov and not ((focal > 0) & np.isfinite(focal)).all():
            fov = [round(float(r["field_of_view"]), 2) for r in results]
            raise ValueError(f"depth model {self.config.model!r} predicted fields of view {fov} deg (not in 0..180); "
                             "give the camera's intrinsics as ingest calibration params")
        if focal_px is not None:  # depth is proportional to the focal length it assumes: use the known one
            depth = depth * (focal_px / focal)[:, None, None] if has_fov else depth * (focal_px / width)
        elif not has_fov:
            raise ValueError(f"depth model {self.config.model!r} is Depth Pro without its FoV head "
                             "(use_fov_model false): it needs the camera's intrinsics to give metres; give them as "
                             "ingest calibration params")
        return depth, focal


# -- alignment -------------------------------------------------------------------------------------------------------


@dataclass
class Alignment:
    scale: float
    shift: float
    space: str  # "disparity" | "depth" | "none"
    num_cues: int
    residual_rmse_m: float | None
    residual_absrel: float | None
    degenerate: bool = False


def apply_alignment(pred: np.ndarray, scale: float, shift: float, space: str) -> np.ndarray:
    """Raw prediction -> metres (0 where the aligned value is not a positive depth)."""
    value = scale * pred.astype(np.float64) + shift
    if space == "disparity":
        with np.errstate(divide="ignore"):
            depth = np.where(value > 1e-6, 1.0 / np.maximum(value, 1e-6), 0.0)
    else:
        depth = np.where(value > 0, value, 0.0)
    return np.nan_to_num(depth, nan=0.0, posinf=0.0).astype(np.float32)


def fit_alignment(pred_at_cues: np.ndarray, cue_depth_m: np.ndarray, space: str) -> Alignment:
    """Least-squares scale and shift mapping predictions at cue pixels to their metric depths (see module docstring);
    ``space`` "none" fits nothing and only measures the residual."""
    pred = np.asarray(pred_at_cues, dtype=np.float64)
    depth = np.asarray(cue_depth_m, dtype=np.float64)
    ok = np.isfinite(pred) & np.isfinite(depth) & (depth > 0)
    pred, depth = pred[ok], depth[ok]
    n = len(depth)
    if space == "none":
        scale, shift, degenerate = 1.0, 0.0, False
    else:
        target = 1.0 / depth if space == "disparity" else depth
        degenerate = n < 2 or float(np.std(pred)) <= 1e-9 * (abs(float(np.mean(pred))) + 1.0)
        if n == 0:
            return Alignment(1.0, 0.0, space, 0, None, None, degenerate=True)
        if degenerate:
            scale, shift = 0.0, float(np.mean(target))
        else:
            design = np.stack([pred, np.ones_like(pred)], axis=1)
            (scale, shift), *_ = np.linalg.lstsq(design, target, rcond=None)
            scale, shift = float(scale), float(shift)
    if n == 0:
        return Alignment(scale, shift, space, 0, None, None, degenerate)
    aligned = pred if space == "none" else apply_alignment(pred, scale, shift, space)
    err = aligned - depth
    return Alignment(scale, shift, space, n, residual_rmse_m=float(np.sqrt(np.mean(err ** 2))),
                     residual_absrel=float(np.mean(np.abs(err) / depth)), degenerate=degenerate)


# -- cues ------------------------------------------------------------------------------------------------------------


def sensor_cue_pixels(depth_m: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """(K,) flat indices of up to ``num`` measured pixels of an (H, W) depth map."""
    valid = np.flatnonzero(np.isfinite(depth_m.ravel()) & (depth_m.ravel() > 0))
    if len(valid) <= num:
        return valid
    return np.sort(rng.choice(valid, size=num, replace=False))


def plane_depth(intrinsics: dict[str, float], cam_to_world: np.ndarray, plane_z_m: float,
                height: int, width: int) -> np.ndarray:
    """(H, W) depth along the optical axis at which each pixel's ray meets the world plane z = plane_z_m (0 where it
    does not, in front of the camera)."""
    rows, cols = np.mgrid[0:height, 0:width]
    ray_cam = np.stack([(cols - intrinsics["cx"]) / intrinsics["fx"], (rows - intrinsics["cy"]) / intrinsics["fy"],
                        np.ones_like(cols, dtype=np.float64)], axis=-1)
    ray_z = ray_cam @ np.asarray(cam_to_world)[2, :3]  # world z component of each ray (per unit camera depth)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = (plane_z_m - cam_to_world[2, 3]) / ray_z
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0)


@dataclass
class CameraReport:
    camera: str
    alignments: list[Alignment]
    metrics: DepthErrorSums | None
    cues: list[str]

    def to_json(self) -> dict[str, Any]:
        rmse = [a.residual_rmse_m for a in self.alignments if a.residual_rmse_m is not None]
        absrel = [a.residual_absrel for a in self.alignments if a.residual_absrel is not None]
        return {"cues": self.cues, "alignment_space": self.alignments[0].space if self.alignments else None,
                "residual_rmse_m": round(float(np.mean(rmse)), 5) if rmse else None,
                "residual_absrel": round(float(np.mean(absrel)), 5) if absrel else None,
                "degenerate_frames": sum(a.degenerate for a in self.alignments),
                "metrics": None if self.metrics is None else self.metrics.to_json(),
                "metric_sums": None if self.metrics is None else self.metrics.sums_json()}


@dataclass
class EpisodeDepthReport:
    episode_id: str
    cameras: dict[str, CameraReport] = field(default_factory=dict)

    @property
    def metrics(self) -> DepthErrorSums | None:
        parts = [c.metrics for c in self.cameras.values() if c.metrics is not None]
        return sum(parts[1:], parts[0]) if parts else None


def _camera_rng(seed: int, episode_id: str, camera: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{episode_id}/{camera}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def estimated_intrinsics(meta: dict[str, Any], camera: str, focal_px: np.ndarray, height: int,
                         width: int) -> dict[str, Any]:
    """Set ``meta["cameras"][camera]`` from per-frame predicted focal lengths (median; square pixels, centred
    principal point) and mark them estimated; returns the camera's entry."""
    f = float(np.median(focal_px))
    entry = meta.setdefault("cameras", {}).setdefault(camera, {})
    entry["intrinsics"] = {"fx": f, "fy": f, "cx": (width - 1) / 2, "cy": (height - 1) / 2, "width": width,
                           "height": height}
    entry["calibration"] = {**(entry.get("calibration") or {"extrinsics": None}), "intrinsics": "estimated"}
    entry["focal_estimate"] = {"median_px": round(f, 3), "frames": int(len(focal_px)),
                               "relative_spread": round(float(np.std(focal_px) / f), 4) if f > 0 else None}
    return entry


def estimate_episode_depth(episode: Episode, estimator: DepthAnythingEstimator,
                           config: AlignmentConfig) -> tuple[Episode, EpisodeDepthReport]:
    """Estimate metric depth for the episode's cameras (see module docstring). Returns a new episode (the input is
    not modified) and the report; the episode itself when there is nothing to estimate."""
    cameras = [c for c in episode.cameras if config.estimate_for == "all" or c not in episode.depth_m]
    report = EpisodeDepthReport(episode.episode_id)
    if not cameras:
        return episode, report
    source = episode
    episode = dataclasses.replace(source, depth_m=dict(source.depth_m), extras=dict(source.extras),
                                  meta=copy.deepcopy(source.meta))
    space = {"auto": "disparity" if estimator.kind == "relative" else "none", "none": "none",
             "scale_shift": "disparity" if estimator.kind == "relative" else "depth"}[config.alignment]
    if estimator.kind == "relative" and space == "none":
        raise ValueError("alignment 'none' with a relative checkpoint would give unitless depth; use auto/scale_shift")
    support_id = config.support_segment_id
    if support_id is None:
        support_id = ((episode.meta.get("sim") or {}).get("body_ids") or {}).get("table")
    for cam in cameras:
        frames = episode.rgb[cam]
        cam_meta = (episode.meta.get("cameras") or {}).get(cam) or {}
        known = cam_meta.get("intrinsics")
        raw, focal = estimator.predict_with_focal(frames, None if known is None else float(known["fx"]))  # (T, H, W)
        if known is None and focal is not None:
            cam_meta = estimated_intrinsics(episode.meta, cam, focal, *frames.shape[1:3])
        gt = source.depth_m.get(cam)
        plane = None
        seg = episode.segmentation.get(cam)
        if ("table_plane" in config.cues and seg is not None and support_id is not None
                and "cam_to_world" in cam_meta and "intrinsics" in cam_meta):
            plane = plane_depth(cam_meta["intrinsics"], np.asarray(cam_meta["cam_to_world"]), config.support_plane_z_m,
                                *frames.shape[1:3])
        use_sensor = "sensor" in config.cues and gt is not None
        cue_names = (["sensor"] if use_sensor else []) + (["table_plane"] if plane is not None else [])
        if space != "none" and not cue_names:
            raise EpisodeError(episode.episode_id, f"depth_m.{cam}",
                               f"relative depth model {estimator.config.model!r} needs metric cues to give metres, and "
                               f"camera {cam!r} has none: provide sparse sensor depth (cues: [sensor]), segmentation "
                               f"of the support plus cam_to_world (cues: [table_plane]), or use a metric checkpoint")
        rng = _camera_rng(config.seed, episode.episode_id, cam)
        aligned = np.zeros_like(raw)
        alignments: list[Alignment] = []
        for t in range(len(frames)):
            idx_parts, depth_parts = [], []
            if use_sensor:
                idx = sensor_cue_pixels(gt[t], config.num_cue_pixels, rng)
                idx_parts.append(idx)
                depth_parts.append(gt[t].ravel()[idx])
            if plane is not None:
                idx = np.flatnonzero((seg[t].ravel() == support_id) & (plane.ravel() > 0))
                idx_parts.append(idx)
                depth_parts.append(plane.ravel()[idx])
            idx = np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64)
            cue_depth = np.concatenate(depth_parts) if depth_parts else np.zeros(0)
            fit = fit_alignment(raw[t].ravel()[idx], cue_depth, space)
            aligned[t] = raw[t] if space == "none" else apply_alignment(raw[t], fit.scale, fit.shift, space)
            alignments.append(fit)
        aligned = np.nan_to_num(np.maximum(aligned, 0.0), nan=0.0, posinf=0.0).astype(np.float32)
        metrics = depth_error_sums(aligned, gt) if gt is not None else None
        report.cameras[cam] = CameraReport(cam, alignments, metrics, cue_names)
        episode.depth_m[cam] = aligned
        episode.extras[f"depth_alignment_{cam}"] = np.array(
            [[a.scale, a.shift, np.nan if a.residual_rmse_m is None else a.residual_rmse_m, a.num_cues]
             for a in alignments], dtype=np.float32)  # (T, 4)
    episode.meta["depth"] = {"backend": estimator.backend, "model": estimator.config.model, "kind": estimator.kind,
                             "device": estimator.device, "estimate_for": config.estimate_for,
                             "cameras": {cam: r.to_json() for cam, r in report.cameras.items()}}
    return episode, report
