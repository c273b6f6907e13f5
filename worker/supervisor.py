"""The supervisor: makes the running streams match the assignments, and reports them.

The watcher hands every `DesiredChange` to `on_change` (its thread; only folded into a
pending set here). Each `tick()` (the worker's main thread, every second or at once on a
change) applies the pending specs to the `StreamTable` — start, restart on a new spec,
stop — and writes each running stream's status: finished streams become `done` once their
last windows are answered, failed ones `error`. A stream stopped by a tombstone ends
`stopped`; one this worker lets go (its partition moved, the worker shuts down) ends
`released`, until the next owner writes over it. Both say when (`updated_s`) and why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from ingest.sources import SourceError
from ingest.urls import UnsupportedURLError
from worker.intake import StreamRecord, StreamTable
from worker.publisher import EventPublisher
from worker.scheduler import WindowQueue
from worker.settings import Settings
from worker.specs import StreamSpec
from worker.status import StreamState, StreamStatus
from worker.watcher import DesiredChange

log = structlog.get_logger(__name__)


class Supervisor:
    """Reconciles stream specs with the `StreamTable`; `tick()` from one thread only."""

    def __init__(
        self,
        settings: Settings,
        streams: StreamTable,
        queue: WindowQueue,
        publisher: EventPublisher,
        *,
        wake_detector: threading.Event,
        mark_done: Callable[[str], bool],
        on_stream_stopped: Callable[[str], None] = lambda _stream_id: None,
    ) -> None:
        self._settings = settings
        self._streams = streams
        self._queue = queue
        self._publisher = publisher
        self._wake_detector = wake_detector
        self._mark_done = mark_done
        self._on_stream_stopped = on_stream_stopped
        self.changed = threading.Event()
        self._pending_lock = threading.Lock()
        # A spec to run, or the state a stopped stream ends in (stopped / released).
        self._pending: dict[str, StreamSpec | StreamState] = {}
        self.last_tick_s = time.monotonic()

    # -- watcher thread: hand over, never wait ---------------------------------------------

    def on_change(self, change: DesiredChange) -> None:
        """Fold a change of the desired set into the pending specs."""
        with self._pending_lock:
            for stream_id in change.stopped:
                released = stream_id in change.released
                self._pending[stream_id] = StreamState.RELEASED if released else StreamState.STOPPED
            self._pending.update(change.started)
            self._pending.update(change.updated)
        self.changed.set()

    def on_invalid(self, stream_id: str | None, reason: str) -> None:
        """An invalid record: its stream's status says why, and survives the stop."""
        if stream_id is None:
            return
        record = self._streams.get(stream_id)
        if record is not None:
            record.invalid = True
        self._publisher.update_status(
            StreamStatus(
                stream_id=stream_id,
                state=StreamState.ERROR,
                worker_id=self._settings.worker_id,
                updated_s=time.time(),
                error=f"invalid assignment: {reason}",
            )
        )

    # -- main thread ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Apply pending specs, then refresh every running stream."""
        self.last_tick_s = time.monotonic()
        self.reconcile()
        for record in self._streams.active():
            self.refresh(record)

    def reconcile(self) -> None:
        """Start, restart and stop streams so they match the pending specs."""
        self.changed.clear()
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for stream_id, wanted in pending.items():
            spec = wanted if isinstance(wanted, StreamSpec) else None
            record = self._streams.get(stream_id)
            if record is not None:
                if spec == record.spec:
                    continue  # running, or failed/done with this very spec: leave it
                end = StreamState.STOPPED if spec is not None else StreamState(wanted)
                self.stop(record, forget=spec is None and not record.invalid, end=end)
            if spec is not None:
                self.start(spec)

    def start(self, spec: StreamSpec) -> None:
        """Build and start a stream's record; a refused one is kept with its error."""
        bound = log.bind(stream_id=spec.stream_id)
        try:
            record = StreamRecord.running(spec, self._settings)
        except (SourceError, UnsupportedURLError) as exc:  # refused before anything is opened
            bound.warning("stream refused", error=str(exc))
            self._retire_failed(StreamRecord(spec), str(exc))
            return
        except Exception as exc:  # one spec must not stop the others from starting
            bound.exception("stream could not start")
            self._retire_failed(StreamRecord(spec), f"internal error: {exc!r}")
            return
        self._streams.put(record)
        self._write_status(record, StreamState.STARTING)
        record.start(self._wake_detector)
        bound.info("stream started", tasks=[str(t) for t in spec.tasks])

    def stop(
        self, record: StreamRecord, *, forget: bool, end: StreamState = StreamState.STOPPED
    ) -> None:
        """Stop a stream and drop its waiting windows. `forget`: it left this worker's
        streams, and its status ends `end` (`stopped` by a tombstone, or `released`) with
        the reason; a `done` stream stays done, and a failed one is only marked stopped."""
        was_active = record.active
        record.stop()
        self._streams.remove(record)  # after this the detector refuses its windows
        self._on_stream_stopped(record.stream_id)  # a restart's track ids are new people
        if was_active:
            self._queue.drop_stream(record.stream_id)
            log.info("stream stopped", stream_id=record.stream_id, forget=forget, end=str(end))
        failed_before = not was_active and not record.flushed
        if forget and (was_active or (failed_before and end is StreamState.STOPPED)):
            self._write_status(record, end, reason=self._why(end))

    def release_all(self) -> None:
        """The worker shuts down: every running stream's status says it was released."""
        for record in self._streams.active():
            self._write_status(
                record,
                StreamState.RELEASED,
                reason=f"worker {self._settings.worker_id} shut down; the next owner takes it",
            )

    def _why(self, end: StreamState) -> str:
        if end is StreamState.RELEASED:
            return (
                f"worker {self._settings.worker_id} no longer owns its assignments partition; "
                "the next owner takes it"
            )
        return f"a tombstone on {self._settings.kafka.topic} stopped it (facestream stop)"

    def refresh(self, record: StreamRecord) -> None:
        """Finish an ended stream, retire a failed one, or write a running one's status."""
        record.update_rates()
        if record.invalid:
            return  # its `error` status (written by `on_invalid`) stands until the stop comes
        if record.flushed and not self._queue.has_stream(record.stream_id):
            record.retired = True  # not restarted before the tombstone
            self._write_status(record, StreamState.DONE)
            self._mark_done(record.stream_id)
            log.info("stream done", stream_id=record.stream_id)
        elif record.failed:
            self._retire_failed(record, record.status_error)
        else:
            self._write_status(
                record, record.state, fps=record.fps["detected"], decode_fps=record.fps["decoded"]
            )

    def _retire_failed(self, record: StreamRecord, error: str) -> None:
        record.stop()
        record.retired = True
        record.error = error
        self._streams.put(record)
        self._write_status(record, StreamState.ERROR)

    def _write_status(
        self,
        record: StreamRecord,
        state: StreamState,
        *,
        fps: float | None = None,
        decode_fps: float | None = None,
        reason: str = "",
    ) -> None:
        """`fps` is the detection rate (frames detected per second), `decode_fps` the
        decode rate; both only while the stream runs."""
        keeps_error = state not in (StreamState.DONE, StreamState.STOPPED, StreamState.RELEASED)
        self._publisher.update_status(
            StreamStatus(
                stream_id=record.stream_id,
                state=state,
                worker_id=self._settings.worker_id,
                updated_s=time.time(),
                url=record.spec.url,
                fps=fps,
                last_frame_wall_s=record.last_frame_wall_s,
                error=record.status_error if keeps_error else "",
                decode_fps=decode_fps,
                tasks=tuple(str(task) for task in record.spec.tasks),
                labels=record.spec.labels,
                reason=reason,
            )
        )
