"""The spatial QA dataset on disk: webdataset shards plus a parquet index (schema in the README).

    <dir>/qa-000000.tar       webdataset shard; one sample per (episode, camera, frame):
        <key>.rgb.png|jpg        the RGB frame
        <key>.depth.png          16-bit PNG, depth in millimetres (uint16; 0 = no measurement; 65535 = 65.535 m or more)
        <key>.json               frame_ref, intrinsics, cam_to_world, viewer frame, measured objects, unmeasured
                                 objects with the reason, and "qa": the QA records (depth.spatial_qa)
    <dir>/index.parquet       one row per QA record, with the shard and sample key that hold it
    <dir>/summary.json        counts: samples, QA pairs per family, skipped questions per reason and family, episodes
                              that gave no samples and why

Keys are ``<episode_id>__<camera>__<frame:06d>`` with characters other than letters, digits, ``_`` and ``-`` replaced
by ``_`` (webdataset splits a key from its extensions at the first dot). Read back with webdataset::

    import webdataset as wds
    for sample in wds.WebDataset("runs/demo/qa/qa-{000000..000003}.tar", shardshuffle=False).decode("pil"):
        rgb, depth_mm, doc = sample["rgb.png"], sample["depth.png"], sample["json"]
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

SHARD_PATTERN = "qa-{:06d}.tar"
INDEX_FILE = "index.parquet"
SUMMARY_FILE = "summary.json"
MAX_DEPTH_MM = 65535


def depth_png_mm(depth_m: np.ndarray) -> bytes:
    """(H, W) float metres -> 16-bit greyscale PNG bytes in millimetres (0 = no measurement)."""
    from PIL import Image

    depth = np.nan_to_num(np.asarray(depth_m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    mm = np.clip(np.round(depth * 1000.0), 0, MAX_DEPTH_MM).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(mm).save(buf, format="PNG")  # uint16 -> mode I;16
    return buf.getvalue()


def read_depth_png_m(data: bytes) -> np.ndarray:
    """16-bit millimetre PNG bytes -> (H, W) float32 metres."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image, dtype=np.uint16).astype(np.float32) / 1000.0


def rgb_bytes(rgb: np.ndarray, image_format: str = "png", jpeg_quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if image_format == "png":
        Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    elif image_format == "jpg":
        Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=jpeg_quality)
    else:
        raise ValueError(f"image_format: expected png or jpg, got {image_format!r}")
    return buf.getvalue()


def encode_sample(key: str, rgb: np.ndarray, depth_m: np.ndarray, document: dict[str, Any],
                  image_format: str = "png", jpeg_quality: int = 95) -> dict[str, Any]:
    """A webdataset sample dict (bytes only)."""
    return {"__key__": key, f"rgb.{image_format}": rgb_bytes(rgb, image_format, jpeg_quality),
            "depth.png": depth_png_mm(depth_m), "json": json.dumps(document).encode("utf-8")}


def index_rows(document: dict[str, Any], key: str, shard: str) -> list[dict[str, Any]]:
    """Parquet index rows for a sample's QA records."""
    rows = []
    for record in document["qa"]:
        structured = record["answer_structured"]
        ref = record["frame_ref"]
        rows.append({
            "qa_id": record["qa_id"], "shard": shard, "key": key, "episode_id": ref["episode_id"],
            "camera": ref["camera"], "frame": int(ref["frame"]), "start_frame": ref.get("start_frame"),
            "family": record["family"], "kind": record["kind"], "question": record["question"],
            "answer": record["answer"], "answer_type": structured["type"],
            "value": float(structured["value"]) if structured["type"] != "choice" else None,
            "unit": structured.get("unit") if structured["type"] != "choice" else None,
            "value_m": structured.get("value_m"),
            "choice": structured.get("choice"), "answer_structured": json.dumps(structured),
            "object_ids": [int(o) for o in record["object_ids"]], "object_names": list(record["object_names"]),
            "reasoning": record["reasoning"], "phrasing": int(record["phrasing"]),
        })
    return rows


def index_schema():
    import pyarrow as pa

    return pa.schema([
        ("qa_id", pa.string()), ("shard", pa.string()), ("key", pa.string()), ("episode_id", pa.string()),
        ("camera", pa.string()), ("frame", pa.int64()), ("start_frame", pa.int64()), ("family", pa.string()),
        ("kind", pa.string()), ("question", pa.string()), ("answer", pa.string()), ("answer_type", pa.string()),
        ("value", pa.float64()), ("unit", pa.string()), ("value_m", pa.float64()), ("choice", pa.string()),
        ("answer_structured", pa.string()), ("object_ids", pa.list_(pa.int64())),
        ("object_names", pa.list_(pa.string())), ("reasoning", pa.string()), ("phrasing", pa.int64()),
    ])
