"""Frame-size policy: frames above `source.max_pixels` are scaled down in the decoder, so a
giant stream costs bounded memory (measured as the peak RSS of real `facestream` runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.sources import SourceOptions, VideoSource, scaled_size
from tests.media import write_gradient_clip

pytestmark = pytest.mark.timeout(600)

GIANT_W, GIANT_H = 16000, 8000


@pytest.mark.parametrize(
    ("size", "max_pixels", "expected"),
    [
        ((640, 360), 640 * 360, (640, 360)),
        ((16000, 8000), 3840 * 2160, (4072, 2036)),
        ((7680, 4320), 3840 * 2160, (3840, 2160)),
        ((1080, 1920), 640 * 360, (360, 640)),
    ],
)
def test_scaled_size_keeps_aspect_and_stays_within_max_pixels(
    size: tuple[int, int], max_pixels: int, expected: tuple[int, int]
) -> None:
    width, height = scaled_size(*size, max_pixels)
    assert (width, height) == expected
    assert width * height <= max_pixels
    assert width % 2 == 0 and height % 2 == 0


@settings(max_examples=2000, deadline=None)
@given(
    width=st.integers(1, 200_000),
    height=st.integers(1, 200_000),
    max_pixels=st.integers(64 * 64, 3840 * 2160 * 4),
)
def test_scaled_size_never_exceeds_max_pixels_even_for_thin_frames(
    width: int, height: int, max_pixels: int
) -> None:
    scaled_w, scaled_h = scaled_size(width, height, max_pixels)
    assert scaled_w * scaled_h <= max_pixels
    assert scaled_w <= max(width, 2) and scaled_h <= max(height, 2)
    if width * height > max_pixels:
        assert scaled_w % 2 == 0 and scaled_h % 2 == 0 and min(scaled_w, scaled_h) >= 2


def test_frames_above_max_pixels_are_delivered_scaled_with_aspect_kept(tmp_path: Path) -> None:
    clip = write_gradient_clip(tmp_path / "wide.mp4", 1280, 640, frames=5)
    options = SourceOptions(allow_file=True, max_pixels=320 * 160, sample_fps=100)
    frames = list(VideoSource(str(clip), options).frames())
    assert len(frames) == 5
    assert {f.image_bgr.shape for f in frames} == {(160, 320, 3)}
    # The scaled gradient still runs dark to bright from left to right.
    row = frames[0].image_bgr[80, :, 1].astype(int)
    assert row[5] < row[160] < row[-5]


@pytest.fixture(scope="module")
def giant_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 16000×8000 H.264 frames (written once for the module)."""
    path = tmp_path_factory.mktemp("giant") / "giant.mp4"
    return write_gradient_clip(path, GIANT_W, GIANT_H, frames=4)


# What a `facestream` process may use beside frames: Python, torch, the detector. Measured
# at 0.47 GB for `analyze` of a 640×360 clip; twice that is allowed.
RUNTIME_ALLOWANCE_BYTES = 1 << 30
TEST_MAX_PIXELS = 1920 * 1080


def _memory_bound_bytes(held_frames: int, decode_threads: int) -> int:
    """Bound from the settings: the runtime, the decoder's full-size YUV 4:2:0 frames (one per
    decoder thread, plus the reference, the frame being output and the one being converted),
    and the BGR frames the command may hold at `max_pixels` (its queue, a batch, two more)."""
    decoder = (decode_threads + 3) * GIANT_W * GIANT_H * 3 // 2
    frames = (held_frames + 2) * TEST_MAX_PIXELS * 3
    return RUNTIME_ALLOWANCE_BYTES + decoder + frames


def _peak_rss_bytes(
    command: list[str], env: dict[str, str]
) -> tuple[int, subprocess.CompletedProcess]:
    """Run `command` under a small Python parent that reports its only child's peak RSS."""
    probe = (
        "import resource, subprocess, sys, json;"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " done.returncode, done.stdout[-2000:], done.stderr[-2000:]]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *command], capture_output=True, text=True, env=env, check=True
    )
    max_rss_kib, returncode, stdout, stderr = json.loads(result.stdout)
    return max_rss_kib * 1024, subprocess.CompletedProcess(command, returncode, stdout, stderr)


@pytest.mark.parametrize("command", ["analyze", "detect"])
def test_giant_clip_is_processed_under_a_memory_bound_from_the_settings(
    command: str, giant_clip: Path, mnet_weights: Path
) -> None:
    from worker.commands.analyze import DETECT_BATCH_FRAMES, analyze_queue_frames

    decode_threads = SourceOptions().decode_threads
    env = {
        **os.environ,
        "FACESTREAM_SOURCE__MAX_PIXELS": str(TEST_MAX_PIXELS),
        "FACESTREAM_DETECTOR__MAX_BATCH": "4",
    }
    args = [str(giant_clip), "--weights", str(mnet_weights)]
    if command == "analyze":
        args.append("--no-progress")
        held = analyze_queue_frames(TEST_MAX_PIXELS) + DETECT_BATCH_FRAMES
    else:
        held = SourceOptions().queue_frames + 4
    cli = [sys.executable, "-m", "worker.cli", command, *args]
    peak, done = _peak_rss_bytes(cli, env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines, "no output"
    bound = _memory_bound_bytes(held, decode_threads)
    print(f"{command}: peak RSS {peak / 1e9:.2f} GB, bound {bound / 1e9:.2f} GB")
    assert peak <= bound
