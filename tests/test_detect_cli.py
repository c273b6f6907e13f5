"""`facestream detect`: JSON lines per processed frame on a real clip with real weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from worker.cli import main

pytestmark = pytest.mark.timeout(120)

LINE_KEYS = ["frame_index", "pts_s", "boxes", "scores", "landmarks", "crops"]


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _reference_frames(testdata: Path, name: str) -> list[dict[str, Any]]:
    """The `frames` of testdata/reference/NAME.json."""
    return json.loads((testdata / "reference" / f"{name}.json").read_text())["frames"]


def _clip_and_reference(testdata: Path, example: int) -> tuple[Path, list[dict[str, Any]]]:
    """The authors' example clip `example` (1 or 2) and our RetinaFace's reference frames."""
    clip = testdata / "videos" / f"facellava_facial_expr_example_{example}.mp4"
    return clip, _reference_frames(testdata, f"retinaface_mnet_facellava_ex{example}")


def test_detect_prints_every_nth_frame_as_json_in_original_pixels(
    testdata: Path, mnet_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip, reference = _clip_and_reference(testdata, 1)
    authors = _reference_frames(testdata, "blazeface_facellava_facial_expr_example_1")
    args = ["--every", "7", "--batch", "4", "--max-side", "0", "--device", "cpu"]
    status = main(["detect", str(clip), "--weights", str(mnet_weights), *args])
    out = capsys.readouterr().out
    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["frame_index"] for line in lines] == list(range(0, 60, 7))
    for line in lines:
        assert list(line) == LINE_KEYS
        expected = reference[line["frame_index"]]
        assert line["pts_s"] == pytest.approx(expected["pts_seconds"], abs=1e-5)
        assert len(line["boxes"]) == len(line["scores"]) == len(expected["boxes"]) == 1
        assert _iou(line["boxes"][0], expected["boxes"][0]) >= 0.95
        np.testing.assert_allclose(line["landmarks"], expected["landmarks"], atol=1.0)
        assert line["scores"][0] == pytest.approx(expected["scores"][0], abs=1e-3)
        # The crop region: whole pixels inside the 256×256 frame; in the default
        # `blazeface` mode the authors' own crop, cut from our BlazeFace's box.
        assert len(line["crops"]) == 1
        x0, y0, x1, y1 = line["crops"][0]
        assert all(isinstance(v, int) for v in line["crops"][0])
        assert 0 <= x0 < x1 <= 255 and 0 <= y0 < y1 <= 255
        their_crop = authors[line["frame_index"]]["faces"][0]["crop_xyxy"]
        assert line["crops"][0] == their_crop


def test_detect_with_resizing_still_reports_original_frame_pixels(
    testdata: Path, mnet_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip, reference = _clip_and_reference(testdata, 2)
    args = ["--every", "30", "--max-side", "160", "--score-threshold", "0.5"]
    status = main(["detect", str(clip), "--weights", str(mnet_weights), *args])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0
    assert [line["frame_index"] for line in lines] == [0, 30, 60]
    for line in lines:
        expected = reference[line["frame_index"]]["boxes"][0]
        assert len(line["boxes"]) == len(line["crops"]) == 1
        assert _iou(line["boxes"][0], expected) >= 0.8


def test_detect_with_missing_weights_exits_2_and_says_why(
    testdata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = testdata / "videos" / "facellava_facial_expr_example_1.mp4"
    status = main(["detect", str(clip), "--weights", str(tmp_path / "none.pth")])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert "none.pth" in captured.err and "no such file" in captured.err


def test_detect_on_a_missing_source_exits_1_without_output(
    mnet_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["detect", str(tmp_path / "absent.mp4"), "--weights", str(mnet_weights)])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert "absent.mp4" in captured.err


def test_detect_refuses_a_url_scheme_ffmpeg_must_not_open(
    mnet_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["detect", "ftp://user:secret@host/clip.mp4", "--weights", str(mnet_weights)])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert "ftp" in captured.err and "secret" not in captured.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_detect_on_cuda_without_a_gpu_exits_2_and_says_why(
    testdata: Path, mnet_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = testdata / "videos" / "facellava_facial_expr_example_1.mp4"
    status = main(["detect", str(clip), "--weights", str(mnet_weights), "--device", "cuda"])
    assert status == 2
    assert "no CUDA GPU" in capsys.readouterr().err
