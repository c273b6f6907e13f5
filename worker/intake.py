"""Intake: one `StreamRecord` per stream, kept in the `StreamTable`.

A running record owns its `VideoSource` (reader thread `source-<id>`, one frame queue
bounded by `FACESTREAM_SOURCE__QUEUE_FRAMES` and `QUEUE_BYTES`: a live source drops its
oldest frame, a file waits) and its `StreamPipeline` (tracking, crops, windows; used by
the detector thread only). The detector pulls frames with `take_frame()`: there is no
thread per stream in the worker. When the detector cannot serve every stream,
`worker.admission` sheds some (`shed_with`: source paused, status `degraded`). A record
that failed or finished stays in the table, retired, so the same spec is not started
again until the assignment changes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ingest.frames import Frame
from ingest.pipeline import StreamPipeline
from ingest.sources import SourceError, SourceState, VideoSource
from ingest.windows import WindowOptions
from models.overrides import with_overrides
from worker.sessions import new_nonce, session_for
from worker.settings import Settings
from worker.specs import StreamSpec
from worker.status import StreamState


@dataclass
class Rate:
    """Per second over the time between two `update`s, from a running count."""

    last_count: int = 0
    last_s: float = field(default_factory=time.monotonic)

    def update(self, count: int) -> float:
        """The rate since the previous call, given the running count now."""
        now = time.monotonic()
        per_s = (count - self.last_count) / max(now - self.last_s, 1e-6)
        self.last_count, self.last_s = count, now
        return per_s


def window_options_for(spec: StreamSpec, settings: Settings) -> WindowOptions:
    """The worker's window options with the spec's overrides, validated again."""
    overrides = {
        name: getattr(spec, name)
        for name in ("window_s", "stride_s", "max_faces", "min_face_px")
        if getattr(spec, name) is not None
    }
    return with_overrides(settings.windows, overrides)


class StreamRecord:
    """One stream: its spec and, while it runs, its source, pipeline and counters."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.stream_id = spec.stream_id
        self.source: VideoSource | None = None
        self.pipeline: StreamPipeline | None = None
        self.retired = False  # failed or done: not restarted while the spec stays the same
        self.invalid = False  # its latest record was invalid: keep the error status on stop
        self.error = ""  # a failure the source does not know of (refused, internal)
        self.detected = 0  # sampled frames run through the detector and tracker
        self.detector_errors = 0  # sampled frames lost to a detector or tracking error
        self.flushed = False  # the detector thread ran `pipeline.finish()`
        self.last_frame_wall_s: float | None = None
        self.started_s = time.monotonic()  # admission order: the longest-running first
        self.detection_fps = 0.0  # frames per second this stream asks of the detector
        self.shed_reason = ""  # why the detector does not serve it now ("" = served)
        self.admitted = False  # `worker.admission` decided to serve it (new records: not yet)
        self.fps = {"decoded": 0.0, "detected": 0.0, "skipped": 0.0}
        self._rates = {stage: Rate() for stage in self.fps}
        self._nonce = new_nonce()  # drawn at each start: a live run's session is new
        self._session: str | None = None

    @classmethod
    def running(cls, spec: StreamSpec, settings: Settings) -> StreamRecord:
        """A record with its source and pipeline built (nothing opened yet); raises
        `UnsupportedURLError` / `SourceError` for a URL refused before opening."""
        record = cls(spec)
        source_options = settings.source.with_sample_fps(spec.detection_fps)
        record.pipeline = StreamPipeline(
            spec.stream_id,
            source_options.sample_fps,
            settings.tracker,
            window_options_for(spec, settings),
        )
        record.source = VideoSource(spec.url, source_options, stream_id=spec.stream_id)
        record.detection_fps = source_options.sample_fps
        return record

    @property
    def session(self) -> str:
        """This run's session (`worker.sessions`), fixed at the first call: call it once
        the source is open (a window exists), when it is known to be live or finite."""
        if self._session is None:
            live = self.source is None or self.source.is_live
            self._session = session_for(self.spec, live=live, nonce=self._nonce)
        return self._session

    @property
    def active(self) -> bool:
        """Whether frames of this stream are still being read and detected."""
        return self.source is not None and not self.retired

    @property
    def state(self) -> StreamState:
        """The stream's state for its status hash."""
        if self.error or self.source is None:
            return StreamState.ERROR
        if self.shed_reason and self.source.state != SourceState.ERROR:
            return StreamState.DEGRADED
        return StreamState.while_source_is(self.source.state)

    @property
    def status_error(self) -> str:
        """The error text for the status hash (redacted by `StreamStatus`); for a shed
        stream, why it is not served."""
        if self.error:
            return self.error
        if self.shed_reason and self.source is not None and self.source.state != SourceState.ERROR:
            return self.shed_reason
        return (self.source.error if self.source is not None else None) or ""

    @property
    def failed(self) -> bool:
        """The stream failed for good: refused, an internal error, or its source failed
        and every frame before the failure was taken."""
        if self.error or self.source is None:
            return True
        return self.source.finished and self.source.state == SourceState.ERROR

    @property
    def read_all(self) -> bool:
        """A finite source reached its end and every frame was taken."""
        return (
            self.source is not None
            and self.source.finished
            and not self.error
            and self.source.state != SourceState.ERROR
        )

    def start(self, wake: threading.Event) -> None:
        """Start reading; `wake` is set whenever a frame is waiting."""
        assert self.source is not None
        self.source.start(wake=wake)

    def stop(self) -> None:
        """Close the source (returns at once; its reader thread ends promptly)."""
        if self.source is not None:
            self.source.close()

    @property
    def shed(self) -> bool:
        """Whether the detector does not serve this stream now (see `worker.admission`)."""
        return bool(self.shed_reason)

    def shed_with(self, reason: str) -> None:
        """Stop serving: the detector takes no frames, a live source stops decoding."""
        self.shed_reason = reason
        self.admitted = False
        if self.source is not None:
            self.source.pause()

    def admit(self) -> None:
        """Serve again (a live source reconnects)."""
        self.shed_reason = ""
        self.admitted = True
        if self.source is not None:
            self.source.resume()

    def take_frame(self) -> Frame | None:
        """The oldest waiting frame, or None; a source failure is kept as the record's
        state, never raised."""
        if self.source is None:
            return None
        try:
            frame = self.source.take()
        except SourceError:
            return None  # the source's state is `error` with the reason; the supervisor reports it
        if frame is not None:
            self.last_frame_wall_s = frame.wall_time_s
        return frame

    def update_rates(self) -> None:
        """Frames per second since the previous call (decoded, detected, skipped)."""
        if self.source is None:
            return
        stats = self.source.stats
        self.fps["decoded"] = self._rates["decoded"].update(stats.frames_decoded)
        self.fps["detected"] = self._rates["detected"].update(self.detected)
        self.fps["skipped"] = self._rates["skipped"].update(stats.frames_dropped)


class StreamTable:
    """The worker's streams, one record each, shared by the supervisor and the detector.

    `lock` also orders a record's removal against the detector queueing its windows."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._records: dict[str, StreamRecord] = {}

    def get(self, stream_id: str) -> StreamRecord | None:
        """The record of a stream, running or retired."""
        with self.lock:
            return self._records.get(stream_id)

    def put(self, record: StreamRecord) -> None:
        """Add or replace a stream's record."""
        with self.lock:
            self._records[record.stream_id] = record

    def remove(self, record: StreamRecord) -> None:
        """Forget a record (if it is still the stream's current one)."""
        with self.lock:
            if self._records.get(record.stream_id) is record:
                del self._records[record.stream_id]

    def is_current(self, record: StreamRecord) -> bool:
        """Whether `record` is still the stream's active record (call holding `lock`)."""
        return self._records.get(record.stream_id) is record and record.active

    def active(self) -> list[StreamRecord]:
        """The records whose frames are being read and detected."""
        with self.lock:
            return [r for r in self._records.values() if r.active]
