"""ingest_videos: tiny mp4s written with PyAV; the stage through the runner on Ray, its plan/fn/check called directly,
sidecars, resize/stride, local vs file:// vs memory:// inputs, and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from episodes import Episode, EpisodeError
from pipeline import video_io
from pipeline.checks import check_run
from pipeline.config import parse_config
from pipeline.run import run
from pipeline.stage import OK, QUARANTINED, StageContext
from pipeline.stages.ingest_videos import IngestVideosParams, ingest_videos, plan
from pipeline.store import RunStore

FPS = 10
NUM_FRAMES = 8


def moving_square(num_frames: int = NUM_FRAMES, height: int = 32, width: int = 32, shift: int = 0,
                  fade: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8: a yellow square moving right and down over a flat blue background (redder by ``fade``
    levels per frame, so that frames taken at the wrong index are far off)."""
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frames[t] = (40 + fade * t, 60, 120)
        y, x = 4 + t + shift, 4 + 2 * t
        frames[t, y:y + 10, x:x + 10] = (230, 200, 30)
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int = FPS, faststart: bool = False) -> Path:
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"  # no chroma subsampling: decoded colours stay within a few levels
        stream.options = {"crf": "0"}
        if len(frames) == 0:
            container.start_encoding()  # header only: a valid container whose stream has no frames
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def cut_before_frame(path: Path, frame: int) -> bytes:
    """The bytes of ``path`` up to where frame ``frame``'s data starts: a download that stopped part way."""
    import av

    with av.open(str(path)) as container:
        positions = [packet.pos for packet in container.demux(video=0) if packet.size]
    return path.read_bytes()[: positions[frame]]


def ctx_for(tmp_path: Path) -> StageContext:
    return StageContext(run_dir=str(tmp_path), stage_dir=str(tmp_path / "stages" / "00_ingest_videos"),
                        stage="ingest_videos", seed=0, resume=False, index=0)


def ingest(params: IngestVideosParams, tmp_path: Path) -> dict[str, Episode]:
    """The stage's plan and function in this process (no Ray), each episode validated as the runner would."""
    ctx = ctx_for(tmp_path)
    out = {}
    for item in plan(params, ctx):
        episode = ingest_videos(item, params, ctx)
        episode.validate()
        out[item["episode_id"]] = episode
    return out


def config(run_dir: Path, **params) -> dict:
    return {"output_dir": str(run_dir), "stages": [{"name": "ingest_videos", "params": params}]}


def run_rows(run_dir: Path, resume: bool = False, **params) -> dict[str, dict]:
    """Run a config with just this source through the runner; its rows by episode id."""
    run(parse_config(config(run_dir, **params)), resume=resume)
    store = RunStore(str(run_dir))
    rows = store.read_rows(store.stage_dir(0, "ingest_videos"))
    by_id = {r["episode_id"]: r for r in rows}
    assert len(by_id) == len(rows), "episode ids must be unique"
    return by_id


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A folder with good clips (with and without sidecars) and one clip for each kind of bad input."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    frames = moving_square()
    expected = {"frames": frames, "actions": rng.normal(size=(NUM_FRAMES, 3)).astype(np.float32)}

    write_mp4(root / "push.mp4", frames)  # npy actions + json sidecar
    np.save(root / "push.actions.npy", expected["actions"])
    (root / "push.json").write_text(json.dumps({"task": "push the cube", "fps": FPS,
                                                 "action_names": ["dx", "dy", "dz"]}))

    write_mp4(root / "plain.mp4", moving_square(shift=2))  # no sidecar: action-less
    write_mp4(root / "My Clip (1).mp4", frames)  # no sidecar; odd name

    write_mp4(root / "tabular.mp4", frames)  # csv actions with a header
    lines = ["a,b"] + [f"{t * 0.5},{-t}" for t in range(NUM_FRAMES)]
    (root / "tabular.actions.csv").write_text("\n".join(lines) + "\n")

    write_mp4(root / "nan_actions.mp4", frames)
    bad = expected["actions"].copy()
    bad[3, 1] = np.nan
    np.save(root / "nan_actions.actions.npy", bad)

    write_mp4(root / "short_actions.mp4", frames)
    np.save(root / "short_actions.actions.npy", expected["actions"][:5])

    write_mp4(root / "wrong_fps.mp4", frames)
    (root / "wrong_fps.json").write_text(json.dumps({"fps": 30}))

    data = write_mp4(root / "whole.mp4", moving_square(num_frames=30)).read_bytes()
    (root / "whole.mp4").unlink()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])  # index (moov) at the end: cannot open
    whole = write_mp4(root / "whole.mp4", moving_square(num_frames=30), faststart=True)  # index first
    (root / "truncated_tail.mp4").write_bytes(cut_before_frame(whole, 20))  # opens; the last 10 frames are gone
    whole.unlink()
    (root / "random.mp4").write_bytes(rng.bytes(4096))
    write_mp4(root / "no_frames.mp4", frames[:0])
    (root / "notes.txt").write_text("not a video")
    return root, expected


def test_folder_fates_frames_actions_and_errors(ray_session, clips, tmp_path):
    root, expected = clips
    rows = run_rows(tmp_path / "run", path=str(root), task="default task")

    assert {i: r["status"] for i, r in rows.items()} == {
        "video-push": OK, "video-plain": OK, "video-My-Clip-1": OK, "video-tabular": OK,
        "video-nan_actions": QUARANTINED, "video-short_actions": QUARANTINED, "video-wrong_fps": QUARANTINED,
        "video-truncated": QUARANTINED, "video-truncated_tail": QUARANTINED, "video-random": QUARANTINED,
        "video-no_frames": QUARANTINED,
    }
    for r in rows.values():
        assert r["stage"] == r["source"] == "ingest_videos"

    push = Episode.load(rows["video-push"]["path"])
    assert push.num_frames == NUM_FRAMES and push.fps == FPS and push.task == "push the cube"
    assert push.cameras == ["front"]
    assert np.abs(push.rgb["front"].astype(int) - expected["frames"]).mean() < 3.0
    np.testing.assert_array_equal(push.action, expected["actions"])
    assert push.meta["action_names"] == ["dx", "dy", "dz"]
    assert push.meta["source"] == "ingest_videos" and push.meta["parent"] is None
    assert push.meta["source_uri"].endswith("push.mp4")

    plain = Episode.load(rows["video-plain"]["path"])
    assert plain.action is None and plain.task == "default task" and plain.num_frames == NUM_FRAMES
    assert np.abs(plain.rgb["front"].astype(int) - moving_square(shift=2)).mean() < 3.0
    # the content really is compared: the other clip's frames are far off
    assert np.abs(plain.rgb["front"].astype(int) - expected["frames"]).mean() > 5.0

    tabular = Episode.load(rows["video-tabular"]["path"])
    np.testing.assert_array_equal(tabular.action, [[t * 0.5, -t] for t in range(NUM_FRAMES)])
    assert tabular.meta["action_names"] == ["a", "b"]

    def reason(episode_id: str) -> str:
        return rows[episode_id]["reason"]

    assert "nan_actions.mp4" in reason("video-nan_actions") and "'action'" in reason("video-nan_actions")
    assert "NaN" in reason("video-nan_actions")
    assert "5 rows" in reason("video-short_actions") and f"{NUM_FRAMES} frames" in reason("video-short_actions")
    assert "'fps'" in reason("video-wrong_fps") and "30" in reason("video-wrong_fps")
    for bad in ("truncated", "truncated_tail", "random", "no_frames"):
        assert f"{bad}.mp4" in reason(f"video-{bad}") and "'video'" in reason(f"video-{bad}")
    assert "zero-length" in reason("video-no_frames")
    assert "truncated" in reason("video-truncated_tail") and "30 frames but only 20" in reason("video-truncated_tail")
    assert not any(r["path"] for r in rows.values() if r["status"] == QUARANTINED)


def test_file_url_through_the_runner_matches_local_and_resume_keeps_finished_clips(ray_session, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    frames = moving_square()
    write_mp4(src / "clip.mp4", frames)
    np.save(src / "clip.actions.npy", np.arange(2 * NUM_FRAMES, dtype=np.float32).reshape(NUM_FRAMES, 2))
    local = ingest(IngestVideosParams(path=str(src)), tmp_path / "local")["video-clip"]

    rows = run_rows(tmp_path / "run", path=f"file://{src}")
    assert rows["video-clip"]["status"] == OK
    via_url = Episode.load(rows["video-clip"]["path"])
    np.testing.assert_array_equal(via_url.rgb["front"], local.rgb["front"])
    np.testing.assert_array_equal(via_url.action, local.action)

    (src / "clip.mp4").write_bytes(b"now broken")  # would be quarantined if it were decoded again
    again = run_rows(tmp_path / "run", resume=True, path=f"file://{src}")
    assert again["video-clip"]["status"] == OK


def test_glob_resize_stride_and_max_frames(tmp_path):
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    frames = moving_square(num_frames=10, height=48, width=64, fade=15)
    write_mp4(src / "nested" / "strided.mp4", frames)
    actions = np.arange(10, dtype=np.float32).reshape(5, 2)  # one row per kept frame (stride 2 -> 5 frames)
    np.save(src / "nested" / "strided.actions.npy", actions)
    write_mp4(src / "nested" / "every_frame.mp4", frames)
    np.save(src / "nested" / "every_frame.actions.npy", np.zeros((10, 2), np.float32))  # per video frame: wrong

    params = IngestVideosParams(path=str(src / "**" / "*.mp4"), height=24, width=32, frame_stride=2, max_frames=4,
                                camera="wrist")
    items = {item["episode_id"]: item for item in plan(params, ctx_for(tmp_path))}
    assert sorted(items) == ["video-every_frame", "video-strided"]
    ep = ingest_videos(items["video-strided"], params, ctx_for(tmp_path))
    ep.validate()
    assert ep.rgb["wrist"].shape == (4, 24, 32, 3)
    assert ep.fps == pytest.approx(FPS / 2)
    np.testing.assert_array_equal(ep.action, actions[:4])
    shrunk = np.stack([np.asarray(Image.fromarray(f).resize((32, 24))) for f in frames[::2][:4]])
    per_frame = np.abs(ep.rgb["wrist"].astype(int) - shrunk).mean(axis=(1, 2, 3))
    assert (per_frame < 4.0).all(), per_frame
    assert ep.meta["video"]["frame_stride"] == 2 and ep.meta["video"]["num_frames"] == 10
    assert ep.meta["robot_type"] == "unknown"  # never the simulator's arm by default
    (src / "nested" / "strided.json").write_text('{"robot_type": "koch"}')
    assert ingest_videos(items["video-strided"], params.model_copy(update={"robot_type": "so100"}),
                         ctx_for(tmp_path)).meta["robot_type"] == "koch"  # the clip's own sidecar wins

    # calibration at the video's own 64x48, from the sidecar, then the param: scaled to the kept 32x24 frames
    (src / "nested" / "strided.json").write_text('{"intrinsics": {"fx": 60, "fy": 60, "cx": 31.5, "cy": 23.5}}')
    wrist = ingest_videos(items["video-strided"], params, ctx_for(tmp_path)).meta["cameras"]["wrist"]
    assert wrist["intrinsics"] == {"fx": 30, "fy": 30, "cx": 15.5, "cy": 11.5, "width": 32, "height": 24}
    assert wrist["calibration"] == {"intrinsics": "dataset", "extrinsics": None}
    given = IngestVideosParams(**{**params.model_dump(), "calibration": {"wrist": {"intrinsics": {"fx": 80, "fy": 80}}}})
    wrist = ingest_videos(items["video-strided"], given, ctx_for(tmp_path)).meta["cameras"]["wrist"]
    assert wrist["intrinsics"]["fx"] == 40 and wrist["calibration"]["intrinsics"] == "given"
    (src / "nested" / "strided.json").write_text('{"intrinsics": {"fx": -1, "fy": 60}}')
    with pytest.raises(EpisodeError, match="strided.json.*fx: Input should be greater than 0"):
        ingest_videos(items["video-strided"], params, ctx_for(tmp_path))

    with pytest.raises(EpisodeError) as info:
        ingest_videos(items["video-every_frame"], params, ctx_for(tmp_path))
    assert "one row per video frame" in str(info.value) and "frame_stride=2" in str(info.value)


def test_params_validation():
    with pytest.raises(ValidationError, match="both height and width"):
        IngestVideosParams(path="clips", height=32)
    with pytest.raises(ValidationError, match="frame_stride"):
        IngestVideosParams(path="clips", frame_stride=0)
    IngestVideosParams(path="s3://bucket/clips/*.mp4")  # inputs are checked by check(), not by the params
    IngestVideosParams(path="/does/not/exist")


def test_check_reports_input_problems_under_the_yaml_field(tmp_path):
    (tmp_path / "readme.txt").write_text("no videos here")
    write_mp4(tmp_path / "ok.mp4", moving_square(num_frames=2))

    def problems(path: str) -> list[str]:
        return check_run(parse_config(config(tmp_path / "run", path=path)), storage=False)

    field = "stages[0].params.path: "
    assert problems(str(tmp_path)) == []
    assert problems(f"file://{tmp_path}/*.mp4") == []
    assert problems(str(tmp_path / "missing")) == [f"{field}path {str(tmp_path / 'missing')!r} does not exist"]
    [missing_glob] = problems(str(tmp_path / "missing" / "*.mp4"))
    assert missing_glob.startswith(field) and "directory of the glob" in missing_glob
    assert "does not exist" in missing_glob
    [empty] = problems(str(tmp_path / "*.mkv"))
    assert empty.startswith(field) and "no video files with extensions" in empty and "*.mkv" in empty
    [scheme] = problems("nosuch://bucket/clips")
    assert scheme.startswith(field) and "unknown URL scheme 'nosuch'" in scheme
    [remote] = problems("memory://wmsynth-test-nothing-here/clips")
    assert remote.startswith(field) and "does not exist" in remote

    # one source, one robot: a sidecar naming another robot than the rest is an error under robot_type
    write_mp4(tmp_path / "other.mp4", moving_square(num_frames=2))
    (tmp_path / "other.json").write_text('{"robot_type": "koch"}')
    [robots] = problems(str(tmp_path))
    assert robots.startswith("stages[0].params.robot_type: ") and "koch: other.mp4" in robots
    assert "unknown: ok.mp4" in robots and "own ingest_videos stage" in robots
    (tmp_path / "ok.json").write_text('{"robot_type": "koch", "task": "wave"}')
    assert problems(str(tmp_path)) == []


def test_ids_are_sanitised_and_unique(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "take 1.mp4").write_bytes(b"")
    (tmp_path / "a" / "TAKE.MOV").write_bytes(b"")
    ids = [item["episode_id"] for item in plan(IngestVideosParams(path=str(tmp_path)), ctx_for(tmp_path))]
    assert ids == ["video-TAKE", "video-take-1", "video-take-1-2"]
    non_recursive = plan(IngestVideosParams(path=str(tmp_path / "a"), recursive=False, extensions=[".mov"]),
                         ctx_for(tmp_path))
    assert [item["name"] for item in non_recursive] == ["TAKE.MOV"]


def test_memory_url_ingests_the_same_as_a_local_folder(tmp_path, monkeypatch):
    """A non-local filesystem (fsspec memory://, in this process): listing, a streamed temp copy of the video that is
    deleted afterwards, sidecars read through fsspec; the episodes equal those from a local folder."""
    import fsspec

    import pipeline.inputs

    src = tmp_path / "src"
    src.mkdir()
    write_mp4(src / "clip.mp4", moving_square())
    (src / "clip.actions.csv").write_text("1,2\n3,4\n5,6\n7,8\n1,2\n3,4\n5,6\n7,8\n")
    (src / "clip.json").write_text(json.dumps({"task": "wave"}))
    write_mp4(src / "other.mp4", moving_square(shift=2))
    fs = fsspec.filesystem("memory")
    for file in src.iterdir():
        fs.pipe(f"/bucket/clips/{file.name}", file.read_bytes())
    fetched = []
    real_fetch = pipeline.inputs.fetch
    monkeypatch.setattr(pipeline.inputs, "fetch", lambda path, local: (fetched.append((path, local)),
                                                                       real_fetch(path, local)))
    try:
        params = IngestVideosParams(path="memory://bucket/clips")
        assert [i["uri"] for i in plan(params, ctx_for(tmp_path))] == ["memory:///bucket/clips/clip.mp4",
                                                                      "memory:///bucket/clips/other.mp4"]
        remote = ingest(params, tmp_path / "remote")
        local = ingest(IngestVideosParams(path=str(src)), tmp_path / "local")
    finally:
        fs.rm("/bucket", recursive=True)
    assert sorted(remote) == sorted(local) == ["video-clip", "video-other"]
    for episode_id, ep in remote.items():
        np.testing.assert_array_equal(ep.rgb["front"], local[episode_id].rgb["front"])
        assert ep.task == local[episode_id].task and ep.fps == local[episode_id].fps
    assert remote["video-clip"].task == "wave" and remote["video-clip"].meta["action_names"] is None
    np.testing.assert_array_equal(remote["video-clip"].action, local["video-clip"].action)
    assert remote["video-clip"].meta["source_uri"] == "memory:///bucket/clips/clip.mp4"
    assert [path for path, _ in fetched] == ["memory:///bucket/clips/clip.mp4", "memory:///bucket/clips/other.mp4"]
    assert not any(Path(local_file).exists() for _, local_file in fetched)  # temp copies are gone


def test_bad_sidecars_raise_episode_errors_naming_the_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    frames = moving_square()
    params = IngestVideosParams(path=str(src))
    cases = {
        "pickled": lambda stem: np.save(src / f"{stem}.actions.npy", np.array([{"a": 1}] * NUM_FRAMES, dtype=object),
                                        allow_pickle=True),
        "inf_csv": lambda stem: (src / f"{stem}.actions.csv").write_text("1\n" * 7 + "inf\n"),
        "text_csv": lambda stem: (src / f"{stem}.actions.csv").write_text("1,2\n" * 7 + "1,x\n"),
        "both": lambda stem: (np.save(src / f"{stem}.actions.npy", np.zeros((NUM_FRAMES, 1))),
                              (src / f"{stem}.actions.csv").write_text("0\n" * NUM_FRAMES)),
        "bad_json": lambda stem: (src / f"{stem}.json").write_text("{not json"),
    }
    expected = {"pickled": "pickle", "inf_csv": "NaN/inf", "text_csv": "non-numeric", "both": "keep one",
                "bad_json": "not valid JSON"}
    for stem, make in cases.items():
        write_mp4(src / f"{stem}.mp4", frames)
        make(stem)
    for item in plan(params, ctx_for(tmp_path)):
        stem = item["name"].removesuffix(".mp4")
        with pytest.raises(EpisodeError) as info:
            ingest_videos(item, params, ctx_for(tmp_path))
        assert expected[stem] in str(info.value) and item["name"] in str(info.value), (stem, str(info.value))


def test_empty_file_reports_the_file(tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    item = {"episode_id": "video-zero", "uri": str(tmp_path / "zero.mp4"), "name": "zero.mp4"}
    with pytest.raises(EpisodeError, match="zero.mp4.*empty file"):
        ingest_videos(item, IngestVideosParams(path=str(tmp_path)), ctx_for(tmp_path))


def test_chunked_decode_and_resize_match_whole_clip(tmp_path, monkeypatch):
    frames = moving_square(num_frames=NUM_FRAMES, fade=15)
    write_mp4(tmp_path / "clip.mp4", frames)
    params = IngestVideosParams(path=str(tmp_path), height=16, width=16)
    [item] = plan(params, ctx_for(tmp_path))
    whole = ingest_videos(item, params, ctx_for(tmp_path))
    monkeypatch.setattr(video_io, "DECODE_CHUNK_FRAMES", 3)  # 3 + 3 + 2 frames
    chunked = ingest_videos(item, params, ctx_for(tmp_path))
    np.testing.assert_array_equal(chunked.rgb["front"], whole.rgb["front"])
    assert chunked.rgb["front"].shape == (NUM_FRAMES, 16, 16, 3)
    shrunk = np.stack([np.asarray(Image.fromarray(f).resize((16, 16))) for f in frames])
    assert np.abs(chunked.rgb["front"].astype(int) - shrunk).mean(axis=(1, 2, 3)).max() < 4.0
