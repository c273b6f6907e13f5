"""`Worker`: one pod's service — Kafka assignments in, per-stream runners, one detector
loop batching frames of every stream, the window queue, one model loop, Redis out.

Threads (each named, owned here, stopped by `shutdown`, watched by `/healthz`):
- `kafka-assignments` (AssignmentWatcher): folds the owned partitions into the desired
  set; its callbacks only set a flag / hand a status to the publisher.
- `supervisor` (this object's `run` loop, the caller's thread): reconciles running
  streams with the desired set, refreshes stream status and metrics every second.
- `stream-<id>` (one per stream): pulls sampled frames from its `VideoSource` into the
  stream's frame slot (at most `frames_per_stream`; older frames are skipped, counted).
- `detector`: takes the waiting frames of all streams, detects them in one batch, and
  feeds each stream's `StreamPipeline` (tracking, crops, windows); windows → queue.
- `model`: takes batches from the window queue and answers them; events → publisher.
- `redis-publisher` (EventPublisher) and `http-health` (HealthServer).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import structlog
from prometheus_client import Counter

from ingest.frames import Frame
from ingest.pipeline import StreamPipeline
from ingest.sources import SourceError, SourceState, VideoSource
from ingest.urls import UnsupportedURLError
from models.detections import Detections
from worker.assignments import AssignmentWatcher, DesiredChange, WatcherState
from worker.events import FaceEvent
from worker.health import HealthServer
from worker.metrics import Metrics
from worker.publisher import EventPublisher
from worker.scheduler import WindowJob, WindowQueue
from worker.settings import Settings
from worker.specs import StreamSpec
from worker.status import StreamState, StreamStatus

log = structlog.get_logger(__name__)

SUPERVISOR_TICK_S = 1.0
SUPERVISOR_STALL_S = 30.0  # /healthz: a supervisor tick this late means the loop is stuck
DETECTOR_FAILURES_IN_ROW = 10  # failed batches in a row before the detector thread gives up
MODEL_FAILURES_IN_ROW = 10  # likewise for the model thread (a broken GPU shows on /healthz)


class Detector(Protocol):
    def detect(self, images_bgr: list[np.ndarray]) -> list[Detections]: ...


class Answerer(Protocol):
    def answer(self, jobs: list[WindowJob]) -> list[FaceEvent]: ...


@dataclass
class _Rate:
    """Frames per second over the last supervisor tick, from a running counter."""

    last_count: int = 0
    last_s: float = field(default_factory=time.monotonic)

    def update(self, count: int) -> float:
        now = time.monotonic()
        fps = (count - self.last_count) / max(now - self.last_s, 1e-6)
        self.last_count, self.last_s = count, now
        return fps


class _CounterMirror:
    """Advances Prometheus counters to running totals kept by the sources and pipelines."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}

    def advance(self, counter: Counter, total: int) -> None:
        previous = self._seen.get(id(counter), 0)
        if total > previous:
            counter.inc(total - previous)
            self._seen[id(counter)] = total


class StreamRunner:
    """One stream: its source thread, its frame slot and its (detector-thread) pipeline.

    The slot holds at most `frames_per_stream` frames. Policy: a live source skips its
    oldest waiting frame (counted as `detector_busy`); a finite source waits for room.
    """

    def __init__(self, spec: StreamSpec, settings: Settings, wake_detector: threading.Event):
        self.spec = spec
        self.stream_id = spec.stream_id
        source_options = settings.source.with_sample_fps(spec.detection_fps)
        overrides = {
            k: v
            for k, v in {
                "window_s": spec.window_s,
                "stride_s": spec.stride_s,
                "max_faces": spec.max_faces,
                "min_face_px": spec.min_face_px,
            }.items()
            if v is not None
        }
        self.pipeline = StreamPipeline(
            spec.stream_id,
            source_options.sample_fps,
            settings.tracker,
            settings.windows.model_copy(update=overrides),
        )
        self.source = VideoSource(
            spec.url, source_options, stream_id=spec.stream_id, on_state=self._on_state
        )
        self._slot: deque[Frame] = deque()
        self._slot_cap = settings.scheduler.frames_per_stream
        self._slot_room = threading.Condition()
        self._wake_detector = wake_detector
        self._stop = threading.Event()
        self.skipped = 0
        self.detected = 0
        self.failed = 0  # sampled frames lost to a detector or tracking error
        self.last_frame_wall_s: float | None = None
        self.state = StreamState.STARTING
        self.error = ""
        self.source_ended = False  # frames() returned: a finite source reached its end
        self.flushed = False  # the detector thread ran `pipeline.finish()`
        self.state_changed = threading.Event()
        self.rates = {"decoded": _Rate(), "detected": _Rate(), "skipped": _Rate()}
        self.counters = _CounterMirror()
        self.thread = threading.Thread(
            target=self._run, name=f"stream-{spec.stream_id}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Ask the source to stop; returns at once (the thread ends promptly)."""
        self._stop.set()
        self.source.close()

    def _on_state(self, state: SourceState, error: str | None) -> None:
        self.state = state
        self.error = error or ""
        self.state_changed.set()

    def _run(self) -> None:
        try:
            for frame in self.source.frames():
                if self._stop.is_set():
                    break
                with self._slot_room:
                    if self.source.is_live:  # a camera does not wait: skip the oldest frame
                        if len(self._slot) >= self._slot_cap:
                            self._slot.popleft()
                            self.skipped += 1
                    else:  # a file waits for the detector: every sampled frame is used
                        while len(self._slot) >= self._slot_cap and not self._stop.is_set():
                            self._slot_room.wait(0.2)
                    self._slot.append(frame)
                self.last_frame_wall_s = frame.wall_time_s
                self._wake_detector.set()
            else:
                if not self._stop.is_set():
                    self.source_ended = True
        except SourceError as exc:
            self.state, self.error = StreamState.ERROR, str(exc)
            log.warning("stream failed", stream_id=self.stream_id, error=str(exc))
        except Exception as exc:  # never let one stream take the worker down
            self.state, self.error = StreamState.ERROR, f"internal error: {exc!r}"
            log.exception("stream runner crashed", stream_id=self.stream_id)
        finally:
            self.state_changed.set()
            self._wake_detector.set()

    @property
    def pending_frames(self) -> int:
        return len(self._slot)

    def take_frames(self) -> list[Frame]:
        with self._slot_room:
            frames = list(self._slot)
            self._slot.clear()
            self._slot_room.notify_all()
        return frames


class Worker:
    """The facestream worker of one pod. `run()` blocks until `request_stop()` (or a signal)."""

    def __init__(
        self,
        settings: Settings,
        *,
        detector_factory: Callable[[], Detector] | None = None,
        answerer_factory: Callable[[], Answerer] | None = None,
    ) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id
        self.metrics = Metrics()
        self._detector_factory = detector_factory or self._default_detector
        self._answerer_factory = answerer_factory or self._default_answerer
        self._detector: Detector | None = None
        self._answerer: Answerer | None = None
        self.publisher = EventPublisher(settings.redis)
        self.watcher = AssignmentWatcher(
            settings.kafka,
            worker_id=self.worker_id,
            on_change=self._on_desired_change,
            on_invalid=self._on_invalid_record,
            allow_file=settings.source.allow_file,
        )
        self.queue = WindowQueue(
            settings.scheduler.model_queue_windows,
            settings.scheduler.max_window_age_s,
            on_drop=lambda reason, n: self.metrics.windows_dropped.labels(reason).inc(n),
        )
        self.http = HealthServer(
            settings.http.host,
            settings.http.port,
            self.metrics.registry,
            alive=self._alive,
            ready=self._ready,
        )
        self.runners: dict[str, StreamRunner] = {}
        self._runners_lock = threading.Lock()
        self._desired_changed = threading.Event()
        self._wake_detector = threading.Event()
        self._stop_requested = threading.Event()
        self._intake_stopped = threading.Event()
        self._models_loaded = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._failed_specs: dict[str, StreamSpec] = {}  # done/error: not restarted as is
        self._last_partitions: tuple[int, ...] = ()
        self._supervisor_beat_s = time.monotonic()
        self._detector_failures = 0
        # Streams whose latest record was invalid (watcher thread adds): their `error`
        # status must survive the runner's stop, which otherwise forgets the status.
        self._invalid_lock = threading.Lock()
        self._invalid_streams: set[str] = set()

    # -- factories --------------------------------------------------------------------

    def _default_detector(self) -> Detector:
        from models.retinaface import RetinaFaceDetector

        return RetinaFaceDetector.from_options(self.settings.detector)

    def _default_answerer(self) -> Answerer:
        from worker.answering import FaceAnswerer

        return FaceAnswerer.from_options(self.settings.model, self.worker_id)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def http_port(self) -> int:
        return self.http.port

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: graceful stop; a second signal exits at once (status 1). While
        the models load (minutes) nothing has started yet: the first signal exits at once
        (status 0) instead of waiting for the load and then joining the group to leave it."""

        def handler(signum: int, _frame: object) -> None:
            import os

            if not self._models_loaded.is_set():
                log.info("signal while loading the models: exiting now", signal=signum)
                os._exit(0)
            if self._stop_requested.is_set():
                log.warning("second signal: exiting now", signal=signum)
                os._exit(1)
            log.info("signal: stopping gracefully", signal=signum, grace_s=self.settings.grace_s)
            self._stop_requested.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def request_stop(self) -> None:
        """Begin a graceful stop (what SIGTERM does)."""
        self._stop_requested.set()

    def run(self) -> int:
        """Start everything, supervise until asked to stop, then shut down within the grace."""
        self.http.start()
        self.publisher.start()
        log.info("worker starting", worker_id=self.worker_id, http_port=self.http.port)
        try:
            self._detector = self._detector_factory()
            self._answerer = self._answerer_factory()
        except Exception:
            log.exception("could not load the models")
            self.publisher.stop()
            self.http.stop()
            return 1
        self._models_loaded.set()
        self._spawn("detector", self._detector_loop)
        self._spawn("model", self._model_loop)
        self.watcher.start()
        while not self._stop_requested.is_set():
            self._supervisor_beat_s = time.monotonic()
            self._desired_changed.wait(SUPERVISOR_TICK_S)
            if self._stop_requested.is_set():
                break
            try:
                self._reconcile()
                self._refresh()
            except Exception:
                log.exception("supervisor tick failed")
        return self.shutdown()

    def shutdown(self) -> int:
        """Stop intake, finish or drop in-flight windows, flush events, leave the group."""
        deadline = time.monotonic() + self.settings.grace_s
        log.info("shutting down", grace_s=self.settings.grace_s)
        self._intake_stopped.set()
        with self._runners_lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.stop()
        self._wake_detector.set()
        # Finish what the model already holds while at least ~40% of the grace is left
        # for flushing and leaving the group; then drop the rest (counted).
        drain_until = deadline - 0.4 * self.settings.grace_s
        while len(self.queue) and time.monotonic() < drain_until:
            time.sleep(0.05)
        self.queue.close()
        self._join("detector", drain_until)
        self._join("model", drain_until)
        flushed = self.publisher.flush(max(0.1, deadline - time.monotonic() - 2.0))
        self.watcher.stop(timeout_s=max(0.5, deadline - time.monotonic() - 0.5))
        self.publisher.stop(timeout_s=max(0.1, deadline - time.monotonic()))
        self.http.stop()
        log.info("stopped", events_flushed=flushed, worker_id=self.worker_id)
        return 0

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception:
                log.exception("thread died", thread=name)

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        self._threads[name] = thread
        thread.start()

    def _join(self, name: str, deadline: float) -> None:
        thread = self._threads.get(name)
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- health ---------------------------------------------------------------------------

    def _alive(self) -> tuple[bool, str]:
        dead = [n for n, t in self._threads.items() if not t.is_alive()]
        if not self._intake_stopped.is_set():
            if self._models_loaded.is_set() and not self.watcher.is_alive():
                dead.append("kafka-assignments")
            if (
                self._models_loaded.is_set()
                and time.monotonic() - self._supervisor_beat_s > SUPERVISOR_STALL_S
            ):
                dead.append("supervisor (stuck)")
            if not self.publisher.is_alive():
                dead.append("redis-publisher")
        if dead and not self._intake_stopped.is_set():
            return False, "dead: " + ", ".join(sorted(dead))
        return True, "ok" if self._models_loaded.is_set() else "loading models"

    def _ready(self) -> tuple[bool, str]:
        if not self._models_loaded.is_set():
            return False, "loading models"
        if self._intake_stopped.is_set():
            return False, "stopping"
        state = self.watcher.status().state
        if state != WatcherState.LIVE:
            return False, f"assignments {state}"
        return True, "ready"

    # -- assignment callbacks (watcher thread: hand over, never wait) ----------------------

    def _on_desired_change(self, change: DesiredChange) -> None:
        self._desired_changed.set()

    def _on_invalid_record(self, stream_id: str | None, reason: str) -> None:
        self.metrics.invalid_specs.inc()
        if stream_id is not None:
            with self._invalid_lock:
                self._invalid_streams.add(stream_id)
            self.publisher.update_status(
                StreamStatus(
                    stream_id=stream_id,
                    state=StreamState.ERROR,
                    worker_id=self.worker_id,
                    updated_s=time.time(),
                    error=f"invalid assignment: {reason}",
                )
            )

    # -- supervisor -----------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Start, restart and stop runners so they match the desired set."""
        self._desired_changed.clear()
        desired = self.watcher.desired()
        with self._runners_lock:
            running = dict(self.runners)
        for stream_id, runner in running.items():
            spec = desired.get(stream_id)
            if spec is None or spec != runner.spec:
                with self._invalid_lock:
                    invalid = stream_id in self._invalid_streams
                self._stop_runner(runner, forget=spec is None and not invalid)
        with self._runners_lock, self._invalid_lock:
            self._invalid_streams.intersection_update(self.runners)  # only running ones need it
        for stream_id in list(self._failed_specs):
            if desired.get(stream_id) != self._failed_specs[stream_id]:
                del self._failed_specs[stream_id]
        for stream_id, spec in desired.items():
            with self._runners_lock:
                if stream_id in self.runners or self._failed_specs.get(stream_id) == spec:
                    continue
            with self._invalid_lock:
                self._invalid_streams.discard(stream_id)  # valid again
            self._start_runner(spec)
        status = self.watcher.status()
        if status.partitions != self._last_partitions:
            self.metrics.rebalances.inc()
            self._last_partitions = status.partitions
        self.metrics.assigned_partitions.set(len(status.partitions))

    def _start_runner(self, spec: StreamSpec) -> None:
        bound = log.bind(stream_id=spec.stream_id)
        try:
            runner = StreamRunner(spec, self.settings, self._wake_detector)
        except (SourceError, UnsupportedURLError) as exc:  # refused before anything is opened
            bound.warning("stream refused", error=str(exc))
            self._failed_specs[spec.stream_id] = spec
            self._write_status(spec, StreamState.ERROR, error=str(exc))
            return
        except Exception as exc:  # one spec must not stop the others from starting
            bound.exception("stream could not start")
            self._failed_specs[spec.stream_id] = spec
            self._write_status(spec, StreamState.ERROR, error=f"internal error: {exc!r}")
            return
        with self._runners_lock:
            self.runners[spec.stream_id] = runner
        self._write_status(spec, StreamState.STARTING)
        runner.start()
        bound.info("stream started", tasks=[str(t) for t in spec.tasks])

    def _stop_runner(self, runner: StreamRunner, *, forget: bool) -> None:
        runner.stop()
        with self._runners_lock:  # after this `_enqueue` refuses the runner's windows
            self.runners.pop(runner.stream_id, None)
        self.queue.drop_stream(runner.stream_id)
        self.metrics.forget_stream(runner.stream_id)
        if forget:
            self.publisher.remove_status(runner.stream_id)
        log.info("stream stopped", stream_id=runner.stream_id, forget=forget)

    def _refresh(self) -> None:
        """Per-tick: finish ended streams, write status, update metrics."""
        with self._runners_lock:
            runners = list(self.runners.values())
        self.metrics.active_streams.set(len(runners))
        self.metrics.queue_depth.labels("windows").set(len(self.queue))
        self.metrics.queue_depth.labels("frames").set(sum(r.pending_frames for r in runners))
        stats = self.publisher.stats()
        self.metrics.redis_errors.set(stats.redis_errors)
        self.metrics.redis_buffer_size.set(stats.buffered)
        self.metrics.redis_buffer_high_water.set(stats.buffered_high_water)
        self.metrics.events_dropped.set(stats.dropped)
        for runner in runners:
            self._refresh_runner(runner)

    def _refresh_runner(self, runner: StreamRunner) -> None:
        sid = runner.stream_id
        source_stats = runner.source.stats
        m = self.metrics
        decoded_fps = runner.rates["decoded"].update(source_stats.frames_decoded)
        m.stream_fps.labels(sid, "decoded").set(decoded_fps)
        m.stream_fps.labels(sid, "detected").set(runner.rates["detected"].update(runner.detected))
        m.stream_fps.labels(sid, "skipped").set(runner.rates["skipped"].update(runner.skipped))
        runner.counters.advance(m.frames_decoded.labels(sid), source_stats.frames_decoded)
        runner.counters.advance(m.frames_detected.labels(sid), runner.detected)
        runner.counters.advance(m.frames_skipped.labels(sid, "detector_busy"), runner.skipped)
        if runner.failed:
            runner.counters.advance(m.frames_skipped.labels(sid, "detector_error"), runner.failed)
        runner.counters.advance(m.reconnects.labels(sid), source_stats.reconnects)
        m.active_tracks.labels(sid).set(len(runner.pipeline.tracker.active_track_ids))
        runner.counters.advance(m.windows_emitted.labels(sid), runner.pipeline.stats.emitted)
        runner.counters.advance(
            m.windows_skipped.labels(sid), runner.pipeline.stats.skipped_low_coverage
        )
        if runner.flushed and not self.queue.has_stream(sid):
            self._finish_runner(runner)
            return
        if runner.state == StreamState.ERROR and not runner.thread.is_alive():
            self._failed_specs[sid] = runner.spec
            self._write_status(runner.spec, StreamState.ERROR, error=runner.error)
            with self._runners_lock:
                self.runners.pop(sid, None)
            self.metrics.forget_stream(sid)
            return
        # The source says `done` at its end; the stream is done only once its last windows
        # are answered (`_finish_runner`): until then it is still running.
        state = StreamState.RUNNING if runner.state == StreamState.DONE else runner.state
        self._write_status(
            runner.spec,
            state,
            error=runner.error,
            fps=decoded_fps,
            last_frame_wall_s=runner.last_frame_wall_s,
        )

    def _finish_runner(self, runner: StreamRunner) -> None:
        """A finite source ended and its last windows are answered: mark it done."""
        self._write_status(
            runner.spec, StreamState.DONE, last_frame_wall_s=runner.last_frame_wall_s
        )
        self._failed_specs[runner.stream_id] = runner.spec  # do not restart before the tombstone
        with self._runners_lock:
            self.runners.pop(runner.stream_id, None)
        self.metrics.forget_stream(runner.stream_id)
        self.watcher.mark_done(runner.stream_id)
        log.info("stream done", stream_id=runner.stream_id)

    def _write_status(
        self,
        spec: StreamSpec,
        state: StreamState,
        *,
        error: str = "",
        fps: float | None = None,
        last_frame_wall_s: float | None = None,
    ) -> None:
        self.publisher.update_status(
            StreamStatus(
                stream_id=spec.stream_id,
                state=state,
                worker_id=self.worker_id,
                updated_s=time.time(),
                url=spec.url,
                fps=fps,
                last_frame_wall_s=last_frame_wall_s,
                error=error,
            )
        )

    # -- detector loop ----------------------------------------------------------------------

    def _detector_loop(self) -> None:
        assert self._detector is not None
        max_batch = self.settings.detector.max_batch
        while not self._intake_stopped.is_set():
            self._wake_detector.wait(0.5)
            self._wake_detector.clear()
            with self._runners_lock:
                runners = list(self.runners.values())
            batch: list[tuple[StreamRunner, Frame]] = []
            for runner in runners:
                batch.extend((runner, f) for f in runner.take_frames())
            for start in range(0, len(batch), max_batch):
                self._detect_and_track(batch[start : start + max_batch])
            for runner in runners:
                if runner.source_ended and not runner.flushed and not runner.pending_frames:
                    try:
                        windows = runner.pipeline.finish().windows
                    except Exception:
                        log.exception("last windows lost", stream_id=runner.stream_id)
                        windows = []
                    self._enqueue(runner, windows)
                    runner.flushed = True

    def _detect_and_track(self, batch: list[tuple[StreamRunner, Frame]]) -> None:
        """Detect one batch and feed each stream's pipeline. A failing batch (say, out of
        GPU memory) or frame is skipped and counted (`frames_skipped{reason=detector_error}`)
        so one bad stream cannot stop detection for all; only failures
        `DETECTOR_FAILURES_IN_ROW` batches in a row end the thread (and `/healthz` says so)."""
        assert self._detector is not None
        try:
            detections = self._detector.detect([frame.image_bgr for _, frame in batch])
        except Exception:
            self._detector_failures += 1
            if self._detector_failures >= DETECTOR_FAILURES_IN_ROW:
                raise
            log.exception("detector batch failed; its frames are skipped", frames=len(batch))
            for runner, _ in batch:
                runner.failed += 1
            return
        self._detector_failures = 0
        self.metrics.detector_batch_size.observe(len(batch))
        for (runner, frame), dets in zip(batch, detections, strict=True):
            try:
                step = runner.pipeline.update(frame, dets)
            except Exception:
                log.exception("tracking failed; frame skipped", stream_id=runner.stream_id)
                runner.failed += 1
                continue
            runner.detected += 1
            self._enqueue(runner, step.windows)

    def _enqueue(self, runner: StreamRunner, windows: list) -> None:
        if not windows:
            return
        with self._runners_lock:  # a stopped runner's windows were dropped with it
            if self.runners.get(runner.stream_id) is not runner:
                self.metrics.windows_dropped.labels("stream_stopped").inc(len(windows))
                return
            for window in windows:
                self.queue.put(WindowJob(window.clip, window.image, tuple(runner.spec.tasks)))

    # -- model loop -------------------------------------------------------------------------

    def _model_loop(self) -> None:
        """Answer window batches; a failed batch is dropped (counted), and only
        `MODEL_FAILURES_IN_ROW` failures in a row end the thread."""
        assert self._answerer is not None
        scheduler = self.settings.scheduler
        failures_in_row = 0
        while True:
            jobs = self.queue.take(
                self.settings.model.max_batch_clips, scheduler.batch_wait_ms / 1000, 0.5
            )
            if not jobs:
                if self._intake_stopped.is_set() and not len(self.queue):
                    return
                continue
            self.metrics.model_batch_size.observe(len(jobs))
            try:
                try:
                    events = self._answerer.answer(jobs)
                    failures_in_row = 0
                except Exception:
                    log.exception("model batch failed; its windows are dropped", jobs=len(jobs))
                    self.metrics.windows_dropped.labels("model_error").inc(len(jobs))
                    failures_in_row += 1
                    if failures_in_row >= MODEL_FAILURES_IN_ROW:
                        raise  # the thread ends; /healthz reports the model loop dead
                    events = []
                now_s = time.time()
                for event in events:
                    self.publisher.publish(event)
                    self.metrics.events.labels(str(event.task)).inc()
                    self.metrics.frame_to_event_s.observe(max(0.0, now_s - event.frame_wall_time_s))
            finally:
                self.queue.done(jobs)  # after publishing: a finished stream's events are out
