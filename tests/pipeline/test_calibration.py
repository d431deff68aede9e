"""Calibration given as ingest params: forms, scaling to the episode's frames, origins, and config errors with their
YAML path before any work (issue 12)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.calibration import CameraCalibration, IntrinsicsParams, apply
from pipeline.checks import check_run
from pipeline.config import ConfigError, parse_config

POSE = [[1, 0, 0, 0.4], [0, -1, 0, 0.0], [0, 0, -1, 1.2], [0, 0, 0, 1]]


def test_fov_gives_square_pixels_at_the_frame_size_and_pixels_scale_with_a_resize():
    k = IntrinsicsParams(fov_deg=60).resolve(width=80, height=60)
    assert k["fx"] == k["fy"] == pytest.approx(30 / math.tan(math.radians(30)))
    assert (k["cx"], k["cy"], k["width"], k["height"]) == (39.5, 29.5, 80, 60)

    native = IntrinsicsParams(fx=500, fy=510, cx=319.5, cy=239.5, width=640, height=480)
    assert native.resolve(640, 480) == {"fx": 500, "fy": 510, "cx": 319.5, "cy": 239.5, "width": 640, "height": 480}
    half = native.resolve(320, 240)  # a 2x downsample: focal halves, the centre stays the centre
    assert half["fx"] == 250 and half["fy"] == 255 and (half["cx"], half["cy"]) == (159.5, 119.5)
    # projection agrees: a point seen at native pixel u lands at (u + 0.5) / 2 - 0.5 after the resize
    point = np.array([0.1, -0.05, 1.0])
    u_native = native.fx * point[0] / point[2] + 319.5
    assert half["fx"] * point[0] / point[2] + half["cx"] == pytest.approx((u_native + 0.5) / 2 - 0.5)
    assert IntrinsicsParams(fx=100, fy=100).resolve(64, 48)["cx"] == 31.5  # principal point defaults to the centre


def test_params_win_over_the_source_and_every_camera_says_where_its_geometry_came_from():
    meta: dict = {}
    given = {"front": CameraCalibration(intrinsics=IntrinsicsParams(fov_deg=50))}
    carried = {"front": {"intrinsics": {"fx": 1.0, "fy": 1.0, "cx": 0, "cy": 0}, "cam_to_world": POSE},
               "wrist": {"intrinsics": {"fx": 40.0, "fy": 40.0, "cx": 15.5, "cy": 15.5, "width": 32, "height": 32}}}
    apply(meta, {"front": (48, 64), "wrist": (64, 64), "side": (48, 64)}, given, carried)
    front, wrist = meta["cameras"]["front"], meta["cameras"]["wrist"]
    assert front["calibration"] == {"intrinsics": "given", "extrinsics": "dataset"}
    assert front["intrinsics"]["fy"] == pytest.approx(24 / math.tan(math.radians(25)))
    assert front["cam_to_world"] == np.asarray(POSE, dtype=float).tolist()
    assert wrist["calibration"] == {"intrinsics": "dataset", "extrinsics": None}
    assert wrist["intrinsics"]["fx"] == 80.0  # carried at 32x32, scaled to the 64x64 frames
    assert "side" not in meta["cameras"]  # nothing known: nothing invented


@pytest.mark.parametrize("calibration, path, fragment", [
    ({"front": {"intrinsics": {"fx": 0, "fy": 500}}}, "calibration.front.intrinsics.fx", "greater than 0"),
    ({"front": {"intrinsics": {"fx": 500}}}, "calibration.front.intrinsics", "give fx and fy"),
    ({"front": {"intrinsics": {"fx": 5, "fy": 5, "fov_deg": 60}}}, "calibration.front.intrinsics", "not both"),
    ({"front": {"intrinsics": {"fov_deg": 200}}}, "calibration.front.intrinsics.fov_deg", "less than 180"),
    ({"front": {"intrinsics": {"fx": 5, "fy": 5, "width": 64}}}, "calibration.front.intrinsics", "both width"),
    ({"front": {"cam_to_world": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}}, "calibration.front.cam_to_world", "4x4"),
    ({"front": {"cam_to_world": [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}},
     "calibration.front.cam_to_world", "not a rotation"),
    ({"front": {}}, "calibration.front", "intrinsics and/or cam_to_world"),
    ({"top": {"intrinsics": {"fov_deg": 60}}}, "calibration", "the clips' camera is 'front'"),
])
def test_bad_calibration_is_a_config_error_at_its_yaml_path(tmp_path, calibration, path, fragment):
    config = {"output_dir": str(tmp_path / "run"),
              "stages": [{"name": "ingest_videos", "params": {"path": str(tmp_path), "calibration": calibration}}]}
    with pytest.raises(ConfigError) as err:
        check_run(parse_config(config), storage=False)
    lines = [line.strip() for line in str(err.value).splitlines()[1:]]
    assert len(lines) == 1 and lines[0].startswith(f"stages[0].params.{path}: ") and fragment in lines[0], lines
