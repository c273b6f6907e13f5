"""Admission: which streams the detector serves when it cannot serve them all.

Capacity is measured: the detector thread reports each batch's busy time (detection,
tracking, crops, windows), and `DetectorCapacity` keeps an exponentially weighted mean of
the seconds one frame costs; capacity = 1 / that, in frames per second, capped by
`FACESTREAM_SCHEDULER__DETECTOR_MAX_FPS` when the operator set it (a GPU shared with
other work).
A stream's demand is its detection rate (`StreamSpec.detection_fps`, else
`FACESTREAM_SOURCE__SAMPLE_FPS`).

Policy `start-order`: the streams are ordered by when they started (a restarted stream
goes to the back). A new stream is admitted when, with the streams before it, the demand
stays within `max_detector_load` × capacity (the first stream is always admitted);
otherwise it is shed, and so is every stream after the first one shed: the detector takes
none of their frames, a live source is paused (its connection closed: no decoding), and
the status says `degraded` with the reason. So overload costs whole streams, newest
first, and never lowers every stream below the windows' coverage bar at once.

Against flapping, two bars: an admitted stream is shed only when the demand up to it
exceeds the capacity itself (above 100 %, it is not being fully served); a shed stream
returns only under the admission bar again (`max_detector_load`), one stream at a time,
and only when the last change is `SETTLE_S` old (capacity measured since).

Why not lower a stream's rate first: a window needs `min_coverage` × `window_s` × fps
samples for its 8-crop clip; at the defaults (2.5 s, 0.6) that is 7.5 samples at 5 fps,
so below the default rate clips would repeat crops. Whole streams are shed instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from worker.intake import StreamRecord
    from worker.settings import SchedulerSettings

log = structlog.get_logger(__name__)

FRAME_WEIGHT = 0.05  # weight of one frame in the mean cost (about the last 20-60 frames)
MIN_FRAMES_MEASURED = 10  # capacity is unknown (everything admitted) before this many frames
ADMISSION_PERIOD_S = 1.0  # how often the admitted set is reconsidered
SETTLE_S = 5.0  # no re-admission sooner than this after any change
SHED_LOAD = 1.0  # an admitted stream is shed when the demand up to it exceeds this x capacity


class DetectorCapacity:
    """The detector's measured cost per frame and, from it, its capacity in frames/s."""

    def __init__(self) -> None:
        self._seconds_per_frame: float | None = None
        self._frames = 0
        self._lock = threading.Lock()

    def observe(self, frames: int, busy_s: float) -> None:
        """One batch of `frames` kept the detector busy for `busy_s` seconds."""
        if frames <= 0:
            return
        per_frame = max(busy_s, 1e-6) / frames
        weight = 1.0 - (1.0 - FRAME_WEIGHT) ** frames
        with self._lock:
            prev = self._seconds_per_frame
            self._seconds_per_frame = (
                per_frame if prev is None else prev + weight * (per_frame - prev)
            )
            self._frames += frames

    @property
    def fps(self) -> float | None:
        """Frames per second the detector can take when busy; None until measured."""
        with self._lock:
            if self._seconds_per_frame is None or self._frames < MIN_FRAMES_MEASURED:
                return None
            return 1.0 / self._seconds_per_frame


@dataclass(frozen=True)
class LoadFigures:
    """A snapshot for metrics: capacity, demand (all streams, admitted ones) and shed count."""

    capacity_fps: float | None
    demand_fps: float
    admitted_fps: float
    degraded_streams: int

    @property
    def load(self) -> float | None:
        """Demand of every stream ÷ capacity (above 1: more than one worker's worth)."""
        if self.capacity_fps is None:
            return None
        return self.demand_fps / self.capacity_fps


class Admission:
    """Decides which streams the detector serves (policy in the module doc).

    `update` runs in the detector thread; `figures` may be read from any thread."""

    def __init__(
        self,
        max_load: float,
        max_fps: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_load = max_load
        self.max_fps = max_fps
        self.capacity = DetectorCapacity()
        self._clock = clock
        self._next_update_s = 0.0
        self._last_change_s = -SETTLE_S
        self._figures = LoadFigures(None, 0.0, 0.0, 0)

    @classmethod
    def from_settings(cls, settings: SchedulerSettings) -> Admission:
        """Admission with the load ceiling and optional fps cap `settings` give."""
        return cls(settings.max_detector_load, settings.detector_max_fps)

    def observe(self, frames: int, busy_s: float) -> None:
        """Report a detected batch (detector thread)."""
        self.capacity.observe(frames, busy_s)

    def figures(self) -> LoadFigures:
        """The figures of the latest `update`."""
        return self._figures

    def update(self, records: list[StreamRecord], *, force: bool = False) -> None:
        """Admit or shed `records` (the running streams); at most every `ADMISSION_PERIOD_S`
        unless `force`."""
        now = self._clock()
        if not force and now < self._next_update_s:
            return
        self._next_update_s = now + ADMISSION_PERIOD_S
        candidates = sorted(
            (r for r in records if not r.read_all), key=lambda r: (r.started_s, r.stream_id)
        )
        capacity_fps = self.capacity.fps
        if capacity_fps is not None and self.max_fps is not None:
            capacity_fps = min(capacity_fps, self.max_fps)
        if capacity_fps is None:
            for record in candidates:
                record.admit()  # nothing measured yet: nothing to shed for
            self._publish(capacity_fps, candidates)
            return
        bar_fps = self.max_load * capacity_fps
        admitted_fps = 0.0
        readmitted = False
        cut_off: str | None = None  # set once a stream is shed: every later one is shed too
        for position, record in enumerate(candidates):
            demand = record.detection_fps
            if cut_off is None:
                within_bar = admitted_fps + demand <= bar_fps
                if position == 0 or (
                    record.admitted and admitted_fps + demand <= SHED_LOAD * capacity_fps
                ):
                    keep = True
                elif record.shed:
                    settled = now - self._last_change_s >= SETTLE_S
                    keep = settled and within_bar and not readmitted
                    readmitted = readmitted or keep
                else:  # new since the last update
                    keep = within_bar
                if keep:
                    if not record.admitted:
                        self._changed(now, "stream admitted", record, capacity_fps)
                    record.admit()
                    admitted_fps += demand
                    continue
                cut_off = (
                    f"shed: the detector is at capacity ({capacity_fps:.1f} frames/s, "
                    f"{self.max_load:.0%} of it admitted); streams that started earlier use "
                    f"{admitted_fps:.1f} frames/s, this one's {demand:g} fps would not fit; "
                    "its frames are not detected until capacity frees"
                )
            if not record.shed:
                self._changed(now, "stream shed", record, capacity_fps)
            record.shed_with(cut_off)
        self._publish(capacity_fps, candidates)

    def _changed(self, now: float, what: str, record: StreamRecord, capacity_fps: float) -> None:
        self._last_change_s = now
        log.info(
            what,
            stream_id=record.stream_id,
            detection_fps=record.detection_fps,
            capacity_fps=round(capacity_fps, 1),
        )

    def _publish(self, capacity_fps: float | None, candidates: list[StreamRecord]) -> None:
        self._figures = LoadFigures(
            capacity_fps=capacity_fps,
            demand_fps=sum(r.detection_fps for r in candidates),
            admitted_fps=sum(r.detection_fps for r in candidates if not r.shed),
            degraded_streams=sum(1 for r in candidates if r.shed),
        )
