"""Clip windows: 8 crops at linspace indices, stride, coverage skips counted, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.frames import Frame
from ingest.tracking import TrackedFaces, TrackRecord
from ingest.windows import WindowBuilder, WindowOptions
from models.detections import Detections
from models.facellava.tasks import sample_frame_indices

pytestmark = pytest.mark.timeout(30)

FPS = 5.0


def frame_at(k: int, fps: float = FPS) -> Frame:
    """A frame whose pixels carry its index, so a crop tells which frame it came from."""
    image = np.full((240, 320, 3), k % 256, np.uint8)
    return Frame(index=k, pts_s=k / fps, wall_time_s=1000.0 + k / fps, image_bgr=image)


def tracked(
    ids: list[int],
    side: float = 60.0,
    scores: list[float] | None = None,
    ended: tuple[TrackRecord, ...] = (),
) -> TrackedFaces:
    n = len(ids)
    xyxy = np.array(
        [[20 + 70 * i, 20, 20 + 70 * i + side, 20 + side] for i in range(n)], np.float64
    ).reshape(n, 4)
    lm = np.tile(
        np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]]), (n, 1, 1)
    )
    lm = lm * side + xyxy[:, None, :2]
    dets = Detections(
        xyxy.astype(np.float32).reshape(n, 4),
        np.array(scores or [0.9] * n, np.float32),
        lm.astype(np.float32).reshape(n, 5, 2),
    )
    return TrackedFaces(dets, np.array(ids, np.int64), ended=ended)


def record(track_id: int) -> TrackRecord:
    return TrackRecord(track_id, 0.0, 0.0, 1, (0.0, 0.0, 1.0, 1.0))


def test_clip_indices_follow_the_authors_linspace_floor() -> None:
    assert sample_frame_indices(13) == [0, 1, 3, 5, 6, 8, 10, 12]
    assert sample_frame_indices(8) == list(range(8))
    assert sample_frame_indices(3) == [0, 0, 0, 0, 1, 1, 1, 2]


def test_windows_every_stride_with_eight_crops_at_linspace_indices() -> None:
    builder = WindowBuilder("cam", WindowOptions(window_s=2.5, stride_s=2.0), FPS)
    out = []
    for k in range(0, 36):  # 0.0 .. 7.0 s
        out += builder.update(frame_at(k), tracked([1]))
    starts = [w.clip.window.window_start_s for w in out]
    assert starts == pytest.approx([0.0, 2.0, 4.0])
    first = out[0].clip
    assert first.window.window_end_s == pytest.approx(2.5)
    # 13 samples (0.0 .. 2.4 s) → indices [0, 1, 3, 5, 6, 8, 10, 12] = frames of those k.
    assert first.crops_rgb.shape == (8, 256, 256, 3) and first.crops_rgb.dtype == np.uint8
    assert [int(c[128, 128, 0]) for c in first.crops_rgb] == [0, 1, 3, 5, 6, 8, 10, 12]
    assert first.frame_pts_s == pytest.approx([k / FPS for k in [0, 1, 3, 5, 6, 8, 10, 12]])
    second = out[1].clip
    assert second.frame_pts_s[0] == pytest.approx(2.0) and second.frame_pts_s[-1] < 4.5
    assert out[0].image.crop_rgb.shape == (256, 256, 3)
    assert first.window.last_wall_time_s == pytest.approx(1000.0 + 12 / FPS)
    assert builder.stats.emitted == 3 and builder.stats.skipped_low_coverage == 0


def test_best_image_is_the_highest_quality_crop_of_the_window() -> None:
    builder = WindowBuilder("cam", WindowOptions(window_s=2.0, stride_s=2.0), FPS)
    out = []
    for k in range(0, 11):
        score = 1.0 if k == 4 else 0.5
        out += builder.update(frame_at(k), tracked([7], scores=[score]))
    assert len(out) == 1
    image = out[0].image
    assert image.frame_pts_s == pytest.approx(4 / FPS)
    assert out[0].clip.window.detector_score == pytest.approx(1.0)
    assert out[0].clip.window.track_id == 7


def test_window_below_min_coverage_is_skipped_and_counted() -> None:
    builder = WindowBuilder("cam", WindowOptions(window_s=2.0, stride_s=2.0, min_coverage=0.6), FPS)
    out = []
    for k in range(0, 31):  # windows [0,2) [2,4) [4,6)
        seen = k < 10 or k >= 20 or k % 4 == 0  # [2,4): 3 of 10 samples
        out += builder.update(frame_at(k), tracked([1] if seen else []))
    assert [w.clip.window.window_start_s for w in out] == pytest.approx([0.0, 4.0])
    assert builder.stats.skipped_low_coverage == 1


def test_memory_per_track_is_bounded_by_the_window_span() -> None:
    options = WindowOptions(window_s=2.0, stride_s=1.0)
    builder = WindowBuilder("cam", options, FPS)
    peak = 0
    for k in range(0, 200):
        builder.update(frame_at(k), tracked([1, 2]))
        peak = max(peak, builder.buffered_crops(1), builder.buffered_crops(2))
    assert peak <= options.window_s * FPS + 1
    # A source faster than promised is capped, counted.
    fast = WindowBuilder("cam", options, sample_fps=1.0)
    for k in range(0, 100):
        fast.update(frame_at(k, fps=25.0), tracked([1]))
        assert fast.buffered_crops(1) <= fast.max_samples_per_track
    assert fast.stats.crops_evicted > 0


def test_max_faces_and_min_face_px_are_respected() -> None:
    builder = WindowBuilder("cam", WindowOptions(max_faces=2, min_face_px=40), FPS)
    builder.update(frame_at(0), tracked([1, 2, 3]))
    assert sorted(builder.windowed_track_ids) == [1, 2]
    assert builder.stats.faces_over_max == 1
    small = WindowBuilder("cam", WindowOptions(min_face_px=40), FPS)
    small.update(frame_at(0), tracked([1], side=30))
    assert small.windowed_track_ids == [] and small.stats.faces_too_small == 1


def test_ended_track_flushes_a_nearly_full_window_and_drops_a_short_tail() -> None:
    builder = WindowBuilder("cam", WindowOptions(window_s=2.0, stride_s=2.0), FPS)
    out = []
    for k in range(0, 18):  # [0,2) closes at k=10; [2,4) holds 8 of 10 samples
        out += builder.update(frame_at(k), tracked([1]))
    out += builder.update(frame_at(18), tracked([], ended=(record(1),)))
    assert [w.clip.window.window_start_s for w in out] == pytest.approx([0.0, 2.0])
    assert builder.windowed_track_ids == []
    short = WindowBuilder("cam", WindowOptions(window_s=2.0, stride_s=2.0), FPS)
    for k in range(0, 3):
        short.update(frame_at(k), tracked([1]))
    assert short.update(frame_at(3), tracked([], ended=(record(1),))) == []
    assert short.stats.skipped_low_coverage == 1
