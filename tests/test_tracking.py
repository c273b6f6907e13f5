"""Face tracker: ids survive gaps and crossings; the lost buffer is in seconds."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from ingest.tracking import FaceTracker, TrackerOptions, box_iou, min_cost_assignment
from models.detections import Detections

pytestmark = pytest.mark.timeout(30)


def faces(*boxes: tuple[float, float, float, float], score: float = 0.9) -> Detections:
    """Detections built by hand, landmarks placed on a frontal face inside each box."""
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    x1, y1, x2, y2 = (xyxy[:, i : i + 1] for i in range(4))
    rel = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32)
    landmarks = np.stack([x1 + rel[:, 0] * (x2 - x1), y1 + rel[:, 1] * (y2 - y1)], axis=-1).astype(
        np.float32
    )
    return Detections(xyxy, np.full(len(xyxy), score, np.float32), landmarks)


def box_at(cx: float, cy: float, side: float = 60.0) -> tuple[float, float, float, float]:
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def ids_of(tracked) -> list[int]:
    return [int(i) for i in tracked.track_ids]


def test_track_confirmed_after_min_hits_and_id_stays_stable() -> None:
    tracker = FaceTracker(TrackerOptions(min_hits=2))
    assert ids_of(tracker.update(faces(box_at(100, 100)), 0.0)) == []
    seen = [ids_of(tracker.update(faces(box_at(100 + 5 * k, 100)), 0.2 * k)) for k in range(1, 10)]
    assert seen == [[1]] * 9


def test_constant_motion_across_a_detection_gap_keeps_the_id() -> None:
    # A face moving 150 px/s (2.5 face widths per second) vanishes for 0.8 s: only the
    # motion model brings the prediction back onto it (a still box would have IoU 0).
    tracker = FaceTracker(TrackerOptions(lost_buffer_s=1.5))
    speed_px_s, fps = 150.0, 5.0
    for k in range(8):
        t = k / fps
        tracked = tracker.update(faces(box_at(50 + speed_px_s * t, 200)), t)
    assert ids_of(tracked) == [1]
    for k in range(8, 12):  # unseen for 0.8 s
        assert len(tracker.update(Detections.empty(), k / fps)) == 0
    t = 12 / fps
    tracked = tracker.update(faces(box_at(50 + speed_px_s * t, 200)), t)
    assert ids_of(tracked) == [1]
    assert tracker.active_track_ids == [1]


def test_two_faces_crossing_keep_their_ids() -> None:
    tracker = FaceTracker()
    fps = 5.0
    history: dict[int, list[float]] = {}
    for k in range(20):
        t = k / fps
        a = box_at(100 + 30 * k, 200)  # left → right
        b = box_at(670 - 30 * k, 210)  # right → left, overlapping a around k = 9..10
        tracked = tracker.update(faces(a, b), t)
        for track_id, box in zip(tracked.track_ids, tracked.detections.xyxy, strict=True):
            history.setdefault(int(track_id), []).append(float(box[0] + box[2]) / 2)
    assert sorted(history) == [1, 2]
    for centres in history.values():
        steps = np.diff(centres)
        # Each id moves one way only: no swap at the crossing.
        assert (steps > 0).all() or (steps < 0).all(), centres


@pytest.mark.parametrize("fps", [2.0, 10.0])
def test_lost_buffer_is_seconds_at_any_detection_rate(fps: float) -> None:
    tracker = FaceTracker(TrackerOptions(lost_buffer_s=1.5))
    t = 0.0
    for k in range(6):
        t = k / fps
        tracker.update(faces(box_at(300, 200)), t)
    last_seen = t
    ended_at = None
    k = 6
    while ended_at is None:
        t = k / fps
        tracked = tracker.update(Detections.empty(), t)
        if tracked.ended:
            ended_at = t
            assert [r.track_id for r in tracked.ended] == [1]
            assert tracked.ended[0].last_pts_s == pytest.approx(last_seen)
        k += 1
    # Ended at the first update more than 1.5 s after it was last seen.
    assert 1.5 < ended_at - last_seen <= 1.5 + 1 / fps + 1e-9
    # Back within the buffer → same id; after it → a new id.
    tracker2 = FaceTracker(TrackerOptions(lost_buffer_s=1.5))
    for k in range(6):
        tracker2.update(faces(box_at(300, 200)), k / fps)
    back = 5 / fps + 1.4
    assert ids_of(tracker2.update(faces(box_at(300, 200)), back)) == [1]


def test_low_score_detection_keeps_a_track_alive_but_does_not_start_one() -> None:
    tracker = FaceTracker(TrackerOptions(high_score=0.6, low_score=0.1))
    for k in range(3):
        tracker.update(faces(box_at(100, 100)), k * 0.2)
    tracked = tracker.update(faces(box_at(102, 100), score=0.3), 0.6)
    assert ids_of(tracked) == [1]
    lone = FaceTracker()
    for k in range(5):
        assert len(lone.update(faces(box_at(400, 100), score=0.3), k * 0.2)) == 0


def test_finish_and_backwards_time_end_all_tracks() -> None:
    tracker = FaceTracker()
    for k in range(4):
        tracker.update(faces(box_at(100, 100), box_at(400, 100)), k * 0.2)
    tracked = tracker.update(faces(box_at(100, 100)), 0.0)  # clock restarted
    assert sorted(r.track_id for r in tracked.ended) == [1, 2]
    assert tracker.active_track_ids == []
    for k in range(1, 3):
        tracker.update(faces(box_at(100, 100)), k * 0.2)
    records = tracker.finish()
    assert [r.track_id for r in records] == [3]
    assert records[0].detections == 3


def test_shot_cut_ends_every_track_even_at_the_same_place() -> None:
    from ingest.frames import Frame
    from ingest.pipeline import StreamPipeline

    stage = np.zeros((360, 640, 3), np.uint8)
    stage[:] = (40, 120, 200)  # warm stage light
    crowd = np.zeros((360, 640, 3), np.uint8)
    crowd[:, :320] = (200, 60, 20)  # a blue/green audience shot
    crowd[:, 320:] = (30, 160, 30)
    pipeline = StreamPipeline("cam", sample_fps=5.0)
    ids = []
    for k in range(10):
        image = stage if k < 5 else crowd
        step = pipeline.update(Frame(k, k / 5, 0.0, image), faces(box_at(300, 180)))
        ids.append(ids_of(step.faces))
        if k == 5:
            assert [r.track_id for r in step.ended_tracks] == [1]
    assert ids == [[], [1], [1], [1], [1], [], [2], [2], [2], [2]]


@pytest.mark.parametrize("seed", range(5))
def test_assignment_finds_the_minimum_total_cost(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n_rows, n_cols in [(1, 1), (3, 5), (5, 3), (6, 6)]:
        cost = rng.integers(0, 4, (n_rows, n_cols)).astype(float)  # ties included
        rows, cols = min_cost_assignment(cost)
        assert len(rows) == min(n_rows, n_cols) == len(set(cols.tolist()))
        assert rows.tolist() == sorted(set(rows.tolist()))
        small, large = sorted((n_rows, n_cols))
        matrix = cost if n_rows <= n_cols else cost.T
        best = min(
            sum(matrix[i, p[i]] for i in range(small))
            for p in itertools.permutations(range(large), small)
        )
        assert cost[rows, cols].sum() == pytest.approx(best)


def test_box_iou_values() -> None:
    a = np.array([[0, 0, 10, 10]], np.float64)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float64)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])


# --- real data: the Hamilton clip with the real detector ----------------------------------


def shot_cuts_by_frame_difference(video: Path, threshold: float = 20.0) -> list[int]:
    """Decode-order indices of frames that start a new shot: mean absolute difference of
    consecutive 160×90 grey thumbnails above `threshold` (independent of the tracker's own
    histogram-based cut detector)."""
    cuts, previous = [], None
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            grey = cv2.resize(frame.to_ndarray(format="gray"), (160, 90)).astype(np.float32)
            if previous is not None and float(np.abs(grey - previous).mean()) > threshold:
                cuts.append(index)
            previous = grey
    return cuts


@pytest.fixture(scope="module")
def hamilton_tracked(hamilton_mp4: Path, mnet_weights: Path) -> list[tuple[int, list[int]]]:
    """(frame index, track ids) for every frame sampled at 5 fps, real detector."""
    from ingest.pipeline import StreamPipeline, run_stream
    from ingest.sources import SourceOptions, VideoSource
    from models.retinaface import DetectorOptions, RetinaFaceDetector

    if not hamilton_mp4.is_file() or not mnet_weights.is_file():
        pytest.skip("Hamilton clip or RetinaFace weights missing from the test data")
    detector = RetinaFaceDetector.from_options(
        DetectorOptions(weights=str(mnet_weights), device="cpu")
    )
    source = VideoSource(str(hamilton_mp4), SourceOptions(sample_fps=5.0, allow_file=True))
    pipeline = StreamPipeline("hamilton", 5.0)
    return [
        (step.frame.index, [int(i) for i in step.faces.track_ids])
        for step in run_stream(source.frames(), detector, pipeline, batch_size=8)
        if step.frame is not None
    ]


@pytest.mark.timeout(240)
def test_hamilton_track_ids_stay_stable_within_each_shot(
    hamilton_mp4: Path, hamilton_tracked: list[tuple[int, list[int]]]
) -> None:
    cuts = shot_cuts_by_frame_difference(hamilton_mp4)
    assert len(cuts) == 3, cuts  # the clip has four shots
    ids_per_shot: dict[int, set[int]] = {}
    most_faces_per_shot: dict[int, int] = {}
    frames_per_shot: dict[int, int] = {}
    for index, ids in hamilton_tracked:
        shot = sum(index >= c for c in cuts)
        ids_per_shot.setdefault(shot, set()).update(ids)
        most_faces_per_shot[shot] = max(most_faces_per_shot.get(shot, 0), len(ids))
        frames_per_shot[shot] = frames_per_shot.get(shot, 0) + 1
    # No id crosses a cut: a person in one shot is never the same id as one in another.
    shots = sorted(ids_per_shot)
    for a, b in itertools.combinations(shots, 2):
        assert not ids_per_shot[a] & ids_per_shot[b], (a, b, ids_per_shot)
    # Ids do not churn: per shot, distinct ids barely exceed the faces seen at once.
    excess = {s: len(ids_per_shot[s]) - most_faces_per_shot[s] for s in shots}
    assert sum(excess.values()) <= 3, (excess, ids_per_shot)
    longest = max(frames_per_shot, key=frames_per_shot.__getitem__)
    assert excess[longest] == 0, (longest, ids_per_shot)
    assert max(most_faces_per_shot.values()) >= 4  # the group shot is really tracked
