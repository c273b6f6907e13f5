"""Per-stream face tracking: stable track ids, ByteTrack-style two-stage association.

One `FaceTracker` per stream. Each call to `update` takes one frame's `Detections` and
its stream time; it predicts every live track to that time with a constant-velocity
Kalman filter (time step in seconds, so it behaves the same at 2 or 25 detections/s),
then associates in the ByteTrack order:

1. high-score detections ↔ confirmed tracks (seen or lost), by IoU (Hungarian
   assignment maximising the total IoU, then pairs under `match_iou` rejected);
2. low-score detections ↔ confirmed tracks seen in the previous update and still free,
   at IoU ≥ max(match_iou, 0.5) (ByteTrack's stricter second stage: weak boxes are
   often not faces);
3. remaining high-score detections ↔ tentative tracks; an unmatched tentative dies;
4. remaining high-score detections start tentative tracks, confirmed after `min_hits`.

A confirmed track unseen for more than `lost_buffer_s` seconds of stream time ends and
is returned as a `TrackRecord`. Track ids start at 1, are given at confirmation and are
never reused within one tracker.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.detections import Detections

_LOW_STAGE_MIN_IOU = 0.5


class TrackerOptions(BaseModel):
    """How detections are associated into tracks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    high_score: float = Field(0.6, ge=0, le=1, description="First-stage detection score.")
    low_score: float = Field(0.1, ge=0, le=1, description="Second-stage floor (ByteTrack).")
    match_iou: float = Field(0.2, gt=0, le=1, description="Minimum IoU to match a track.")
    lost_buffer_s: float = Field(1.5, gt=0, description="Keep an unseen track this long.")
    min_hits: int = Field(2, ge=1, description="Detections before a track is confirmed.")
    cut_threshold: float = Field(
        0.35,
        gt=0,
        le=1,
        description="End all tracks at a shot cut: scene histogram distance (1 = never).",
    )
    accel_std: float = Field(
        2.0, gt=0, description="Kalman process noise: face heights per s² of acceleration."
    )


@dataclass(frozen=True)
class TrackRecord:
    """A track's life summary: emitted when the track ends (or when the stream ends)."""

    track_id: int
    first_pts_s: float
    last_pts_s: float
    detections: int
    last_box_xyxy: tuple[float, float, float, float]


@dataclass(frozen=True)
class TrackedFaces:
    """The detections of one frame that belong to confirmed tracks, with their ids.

    `detections` keeps the detector's own boxes (not the filter's); `track_ids` is (N,)
    int64 parallel to it. `ended` lists the tracks that ended at this update.
    """

    detections: Detections
    track_ids: np.ndarray
    ended: tuple[TrackRecord, ...] = ()

    def __len__(self) -> int:
        return len(self.detections)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of two sets of xyxy boxes."""
    a = boxes_a[:, None, :]
    b = boxes_b[None, :, :]
    inter_w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    inter_h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def min_cost_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian algorithm: (rows, cols) of a minimum-total-cost matching of a cost matrix.

    Every row is matched when rows ≤ cols (else every column); rows come out sorted. Our
    own O(n²·m) shortest-augmenting-path version with potentials, vectorised over columns,
    so the tracker needs no scipy (whose import alone costs ~0.25 s per process).
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if cost.shape[0] > cost.shape[1]:
        cols, rows = min_cost_assignment(cost.T)
        order = np.argsort(rows)
        return rows[order], cols[order]
    n, m = cost.shape
    # 1-based, column 0 is the virtual start (as in the classic formulation).
    a = np.zeros((n + 1, m + 1))
    a[1:, 1:] = cost
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    row_of = np.zeros(m + 1, np.int64)  # row matched to each column (0 = none)
    way = np.zeros(m + 1, np.int64)
    for i in range(1, n + 1):
        row_of[0] = i
        j0 = 0
        min_slack = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, bool)
        while True:
            used[j0] = True
            i0 = row_of[j0]
            free = ~used
            free[0] = False
            slack = a[i0] - u[i0] - v
            better = free & (slack < min_slack)
            min_slack[better] = slack[better]
            way[better] = j0
            candidates = np.where(free, min_slack, np.inf)
            j1 = int(np.argmin(candidates))
            delta = candidates[j1]
            u[row_of[used]] += delta
            v[used] -= delta
            min_slack[free] -= delta
            j0 = j1
            if row_of[j0] == 0:
                break
        while j0:
            j1 = int(way[j0])
            row_of[j0] = row_of[j1]
            j0 = j1
    matched = np.flatnonzero(row_of[1:]) + 1
    rows, cols = row_of[matched] - 1, matched - 1
    order = np.argsort(rows)
    return rows[order], cols[order]


class _BoxKalman:
    """Constant-velocity Kalman filter on (cx, cy, w, h) with time steps in seconds.

    Noise scales with the face height, so small and large faces are treated alike.
    Process noise is white acceleration (`accel_std` face heights per s²).
    """

    _H = np.hstack([np.eye(4), np.zeros((4, 4))])
    _MEASURE_STD = 0.05  # of the face height, per coordinate
    _INIT_VEL_STD = 1.0  # face heights per second

    def __init__(self, box_xyxy: np.ndarray, accel_std: float) -> None:
        z = _xyxy_to_cxcywh(box_xyxy)
        self.mean = np.concatenate([z, np.zeros(4)])
        h = max(z[3], 1.0)
        pos_var = (2 * self._MEASURE_STD * h) ** 2
        vel_var = (self._INIT_VEL_STD * h) ** 2
        self.cov = np.diag([pos_var] * 4 + [vel_var] * 4)
        self._accel_std = accel_std

    def predict(self, dt_s: float) -> None:
        """Move the state `dt_s` seconds ahead."""
        if dt_s <= 0:
            return
        f = np.eye(8)
        f[:4, 4:] = np.eye(4) * dt_s
        h = max(self.mean[3], 1.0)
        q = (self._accel_std * h) ** 2
        block = np.array([[dt_s**4 / 4, dt_s**3 / 2], [dt_s**3 / 2, dt_s**2]]) * q
        noise = np.zeros((8, 8))
        for i in range(4):
            noise[np.ix_([i, i + 4], [i, i + 4])] = block
        self.mean = f @ self.mean
        self.mean[2:4] = np.maximum(self.mean[2:4], 1.0)
        self.cov = f @ self.cov @ f.T + noise

    def correct(self, box_xyxy: np.ndarray) -> None:
        """Fold in one measured box."""
        z = _xyxy_to_cxcywh(box_xyxy)
        r = np.eye(4) * (self._MEASURE_STD * max(z[3], 1.0)) ** 2
        s = self._H @ self.cov @ self._H.T + r
        gain = np.linalg.solve(s, self._H @ self.cov).T
        self.mean = self.mean + gain @ (z - self._H @ self.mean)
        self.cov = (np.eye(8) - gain @ self._H) @ self.cov

    @property
    def box_xyxy(self) -> np.ndarray:
        cx, cy, w, h = self.mean[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _xyxy_to_cxcywh(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, 1.0), max(y2 - y1, 1.0)])


@dataclass
class _Track:
    kalman: _BoxKalman
    first_pts_s: float
    last_seen_pts_s: float
    last_box_xyxy: np.ndarray
    hits: int = 1
    track_id: int | None = None  # given at confirmation
    seen_last_update: bool = True

    @property
    def confirmed(self) -> bool:
        return self.track_id is not None

    def record(self) -> TrackRecord:
        assert self.track_id is not None
        x1, y1, x2, y2 = (float(v) for v in self.last_box_xyxy)
        return TrackRecord(
            track_id=self.track_id,
            first_pts_s=self.first_pts_s,
            last_pts_s=self.last_seen_pts_s,
            detections=self.hits,
            last_box_xyxy=(x1, y1, x2, y2),
        )


class FaceTracker:
    """Stable per-stream face ids from per-frame detections (one instance per stream)."""

    def __init__(self, options: TrackerOptions | None = None) -> None:
        self.options = options or TrackerOptions()
        self._tracks: list[_Track] = []
        self._next_id = itertools.count(1)
        self._last_pts_s: float | None = None

    @property
    def active_track_ids(self) -> list[int]:
        """Ids of the confirmed tracks still alive (seen or within the lost buffer)."""
        return [t.track_id for t in self._tracks if t.track_id is not None]

    def update(
        self, detections: Detections, pts_s: float, *, new_shot: bool = False
    ) -> TrackedFaces:
        """Associate one frame's detections at stream time `pts_s`; see the module doc.

        `new_shot=True` (a scene cut before this frame) ends every track first.
        """
        opts = self.options
        ended: list[TrackRecord] = []
        if new_shot or (self._last_pts_s is not None and pts_s < self._last_pts_s - 1e-6):
            # After a cut, or when stream time went backwards (a reconnect restarted the
            # clock), old positions, motion and ages mean nothing.
            ended.extend(self.finish())
        dt_s = 0.0 if self._last_pts_s is None else max(pts_s - self._last_pts_s, 0.0)
        self._last_pts_s = pts_s
        for track in self._tracks:
            track.kalman.predict(dt_s)

        scores = detections.scores
        high = np.flatnonzero(scores >= opts.high_score)
        low = np.flatnonzero((scores >= opts.low_score) & (scores < opts.high_score))
        matched_det_for: dict[int, int] = {}  # id(track) -> detection index

        confirmed = [t for t in self._tracks if t.confirmed]
        pairs, free_tracks, free_high = self._associate(confirmed, detections.xyxy, high)
        matched_det_for.update({id(t): d for t, d in pairs})

        recent = [t for t in free_tracks if t.seen_last_update]
        pairs, _, _ = self._associate(
            recent, detections.xyxy, low, max(opts.match_iou, _LOW_STAGE_MIN_IOU)
        )
        matched_det_for.update({id(t): d for t, d in pairs})

        tentative = [t for t in self._tracks if not t.confirmed]
        pairs, _, free_high = self._associate(tentative, detections.xyxy, free_high)
        matched_det_for.update({id(t): d for t, d in pairs})

        out_ids: list[int] = []
        out_dets: list[int] = []
        survivors: list[_Track] = []
        for track in self._tracks:
            det = matched_det_for.get(id(track))
            if det is not None:
                box = detections.xyxy[det]
                track.kalman.correct(box)
                track.hits += 1
                track.last_seen_pts_s = pts_s
                track.last_box_xyxy = np.asarray(box, dtype=np.float64)
                track.seen_last_update = True
                if not track.confirmed and track.hits >= opts.min_hits:
                    track.track_id = next(self._next_id)
                if track.confirmed:
                    assert track.track_id is not None
                    out_ids.append(track.track_id)
                    out_dets.append(det)
                survivors.append(track)
                continue
            track.seen_last_update = False
            unseen_s = pts_s - track.last_seen_pts_s
            if track.confirmed:
                if unseen_s > opts.lost_buffer_s:
                    ended.append(track.record())
                else:
                    survivors.append(track)

        for det in free_high:
            box = np.asarray(detections.xyxy[det], dtype=np.float64)
            track = _Track(
                kalman=_BoxKalman(box, opts.accel_std),
                first_pts_s=pts_s,
                last_seen_pts_s=pts_s,
                last_box_xyxy=box,
            )
            if opts.min_hits <= 1:
                track.track_id = next(self._next_id)
                out_ids.append(track.track_id)
                out_dets.append(int(det))
            survivors.append(track)
        self._tracks = survivors

        order = np.argsort(out_ids, kind="stable")
        keep = np.asarray(out_dets, dtype=np.int64)[order]
        return TrackedFaces(
            detections=detections.select(keep),
            track_ids=np.asarray(out_ids, dtype=np.int64)[order],
            ended=tuple(ended),
        )

    def finish(self) -> list[TrackRecord]:
        """End every confirmed track (stream over) and return their records."""
        records = [t.record() for t in self._tracks if t.confirmed]
        self._tracks = []
        return records

    def _associate(
        self,
        tracks: list[_Track],
        det_boxes: np.ndarray,
        det_indices: np.ndarray,
        min_iou: float | None = None,
    ) -> tuple[list[tuple[_Track, int]], list[_Track], np.ndarray]:
        """Hungarian matching on IoU; returns pairs, unmatched tracks, unmatched detections."""
        if not tracks or len(det_indices) == 0:
            return [], list(tracks), det_indices
        predicted = np.stack([t.kalman.box_xyxy for t in tracks])
        iou = box_iou(predicted, det_boxes[det_indices].astype(np.float64))
        rows, cols = min_cost_assignment(1.0 - iou)
        ok = iou[rows, cols] >= (self.options.match_iou if min_iou is None else min_iou)
        pairs = [(tracks[r], int(det_indices[c])) for r, c in zip(rows[ok], cols[ok], strict=True)]
        used_tracks = {id(t) for t, _ in pairs}
        used_cols = set(cols[ok].tolist())
        free_tracks = [t for t in tracks if id(t) not in used_tracks]
        free_dets = np.array(
            [d for i, d in enumerate(det_indices) if i not in used_cols], dtype=np.int64
        )
        return pairs, free_tracks, free_dets
