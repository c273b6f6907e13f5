"""`facestream analyze` on real video: JSONL records, and clips/images/overview that decode."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import pytest

from worker.cli import main

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def hamilton_run(
    hamilton_mp4: Path, mnet_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[dict], Path]:
    """One analyze run over the Hamilton clip with --save-clips; (records, clips dir)."""
    if not hamilton_mp4.is_file() or not mnet_weights.is_file():
        pytest.skip("Hamilton clip or RetinaFace weights missing from the test data")
    tmp = tmp_path_factory.mktemp("analyze")
    out, clips = tmp / "records.jsonl", tmp / "clips"
    argv = ["analyze", str(hamilton_mp4), "--weights", str(mnet_weights), "--fps", "5"]
    rc = main([*argv, "--out", str(out), "--save-clips", str(clips), "--no-progress"])
    assert rc == 0
    return [json.loads(line) for line in out.read_text().splitlines()], clips


def test_analyze_writes_window_and_track_records(hamilton_run: tuple[list[dict], Path]) -> None:
    records, _ = hamilton_run
    windows = [r for r in records if r["type"] == "window"]
    tracks = {r["track_id"]: r for r in records if r["type"] == "track"}
    summary = records[-1]
    assert summary["type"] == "summary" and summary["windows"] == len(windows) >= 4
    assert 40 <= summary["frames"] <= 50  # 9.2 s at 5 fps
    for window in windows:
        pts = window["clip_frame_pts_s"]
        assert len(pts) == 8 and pts == sorted(pts)
        # Windows are [start, end); one cut short by the end of the source ends at its
        # newest frame, which it then includes.
        cut_short = window["window_end_s"] - window["window_start_s"] < 2.5 - 1e-6
        assert window["window_start_s"] <= pts[0]
        assert pts[-1] <= window["window_end_s"] if cut_short else pts[-1] < window["window_end_s"]
        assert window["window_start_s"] <= window["image_pts_s"] <= window["window_end_s"]
        assert 0 < window["quality"] <= 1 and 0.5 <= window["detector_score"] <= 1
        x1, y1, x2, y2 = window["box_xyxy"]
        assert 0 <= x1 < x2 and 0 <= y1 < y2
        track = tracks[window["track_id"]]  # every windowed track is reported when it ends
        assert track["first_pts_s"] <= window["image_pts_s"] <= track["last_pts_s"]
    assert len({w["track_id"] for w in windows}) >= 4  # the group shot gives several people


def test_no_window_ends_after_the_video(
    hamilton_run: tuple[list[dict], Path], hamilton_mp4: Path
) -> None:
    import av

    with av.open(str(hamilton_mp4)) as container:
        stream = container.streams.video[0]
        video_end_s = float((stream.start_time + stream.duration) * stream.time_base)
    records, _ = hamilton_run
    ends = [r["window_end_s"] for r in records if r["type"] == "window"]
    assert max(ends) <= video_end_s
    # Tracks alive at the end are flushed: some window is cut short by the video's end.
    assert any(end > video_end_s - 2.5 + 2.0 for end in ends)


def test_analyze_save_clips_writes_files_that_decode(hamilton_run: tuple[list[dict], Path]) -> None:
    records, clips = hamilton_run
    windows = [r for r in records if r["type"] == "window"]
    for window in windows:
        with av.open(window["clip_path"]) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == 8 and frames[0].shape == (256, 256, 3)
        image = cv2.imread(window["image_path"])
        assert image is not None and image.shape == (256, 256, 3)
    with av.open(str(clips / "overview.mp4")) as container:
        overview = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(overview) == records[-1]["frames"] and overview[0].shape == (360, 640, 3)
    sheet = cv2.imread(str(clips / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] == 4 * 320


def test_analyze_prints_records_to_stdout_without_out(
    testdata: Path, mnet_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = testdata / "videos" / "facellava_facial_expr_example_1.mp4"  # one face, 2.5 s
    rc = main(["analyze", str(video), "--weights", str(mnet_weights), "--no-progress"])
    assert rc == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["type"] for r in records].count("track") == 1
    assert any(r["type"] == "window" and r["track_id"] == 1 for r in records)


def test_analyze_refuses_a_missing_file_with_a_message(
    tmp_path: Path, mnet_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["analyze", str(tmp_path / "nope.mp4"), "--weights", str(mnet_weights)])
    assert rc != 0
    assert "nope.mp4" in capsys.readouterr().err
