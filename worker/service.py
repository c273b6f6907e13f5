"""`Worker`: one pod's service. It builds the stages, starts and stops them, handles
signals and answers health checks; the stages do the work.

The data path, one thread per stage, each with one bounded input (README "What one
worker runs"):

- `kafka-assignments` (`worker.watcher`): the owned partitions → `DesiredChange`s, folded
  into the supervisor's pending specs.
- supervisor (`worker.supervisor`, this object's `run` loop in the caller's thread):
  pending specs → one `StreamRecord` per stream (`worker.intake`), statuses every second.
- `source-<id>` (`ingest.sources`, one per stream): decode → sampled `Frame`s into the
  source's queue (`FACESTREAM_SOURCE__QUEUE_FRAMES`; live drops oldest, a file waits).
- `detector` (`worker.detection`): pulls the frames of every stream, detects them in one
  batch, tracks and windows them → `WindowJob`s into the window queue (`worker.scheduler`).
- `model` (`worker.model_stage`): windows join the engine at decode-step boundaries;
  answers → `FaceEvent`s (`worker.answering`) → the publisher as each one finishes.
- `redis-publisher` (`worker.publisher`), `http-health` (`worker.health`) and
  `worker-liveness` (`worker.liveness`: the key status readers check for an owner).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import structlog

from ingest.pipeline import FaceDetector
from worker.admission import Admission
from worker.detection import DetectionStage, load_detector
from worker.health import HealthServer
from worker.intake import StreamTable
from worker.liveness import WorkerLiveness
from worker.metrics import Metrics
from worker.model_stage import ModelStage, WindowStepper, load_answerer
from worker.publisher import EventPublisher
from worker.scheduler import WindowQueue
from worker.settings import Settings
from worker.supervisor import Supervisor
from worker.watcher import AssignmentWatcher, WatcherState

log = structlog.get_logger(__name__)

SUPERVISOR_TICK_S = 1.0
SUPERVISOR_STALL_S = 30.0  # /healthz: a supervisor tick this late means the loop is stuck


class Worker:
    """The facestream worker of one pod. `run()` blocks until `request_stop()` (or a signal)."""

    def __init__(
        self,
        settings: Settings,
        *,
        detector_factory: Callable[[], FaceDetector] | None = None,
        answerer_factory: Callable[[], WindowStepper] | None = None,
    ) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id
        self._detector_factory = detector_factory or (lambda: load_detector(settings))
        self._answerer_factory = answerer_factory or (lambda: load_answerer(settings))
        self.metrics = Metrics()
        self.streams = StreamTable()
        self.publisher = EventPublisher.from_settings(settings)
        self.queue = WindowQueue.from_settings(settings.scheduler)
        self.wake_detector = threading.Event()
        self.admission = Admission.from_settings(settings.scheduler)
        self.supervisor = Supervisor(
            settings,
            self.streams,
            self.queue,
            self.publisher,
            wake_detector=self.wake_detector,
            mark_done=lambda stream_id: self.watcher.mark_done(stream_id),
            on_stream_stopped=self._forget_stream,
        )
        self.watcher = AssignmentWatcher(
            settings.kafka,
            worker_id=self.worker_id,
            on_change=self.supervisor.on_change,
            on_invalid=self.supervisor.on_invalid,
            allow_file=settings.source.allow_file,
        )
        self.metrics.collect_stages(
            self.streams, self.queue, self.publisher, self.watcher.status, self.admission
        )
        self.http = HealthServer(
            settings.http.host,
            settings.http.port,
            self.metrics.registry,
            alive=self._alive,
            ready=self._ready,
        )
        self.liveness = WorkerLiveness(settings, healthy=lambda: self._alive()[0])
        self.detection: DetectionStage | None = None
        self.model: ModelStage | None = None
        self._stop_requested = threading.Event()
        self._intake_stopped = threading.Event()
        self._models_loaded = threading.Event()

    def _forget_stream(self, stream_id: str) -> None:
        if self.model is not None:
            self.model.forget_stream(stream_id)

    @property
    def http_port(self) -> int:
        """The port of /healthz, /readyz and /metrics."""
        return self.http.port

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: graceful stop; a second signal exits at once (status 1). While
        the models load (minutes) nothing has started yet: the first signal exits at once
        (status 0) instead of waiting for the load and then joining the group to leave it."""

        def handler(signum: int, _frame: object) -> None:
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

    def build_stages(self, detector: FaceDetector, answerer: WindowStepper) -> None:
        """The detector and model stages around loaded models (not started)."""
        self.detection = DetectionStage.from_settings(
            self.settings,
            detector,
            self.streams,
            self.queue,
            self.metrics,
            wake=self.wake_detector,
            admission=self.admission,
        )
        self.model = ModelStage.from_settings(
            self.settings, answerer, self.queue, self.publisher, self.metrics
        )

    def run(self) -> int:
        """Start everything, supervise until asked to stop, then shut down within the grace."""
        self.http.start()
        self.publisher.start()
        log.info("worker starting", worker_id=self.worker_id, http_port=self.http.port)
        try:
            self.build_stages(self._detector_factory(), self._answerer_factory())
        except Exception:
            log.exception("could not load the models")
            self.publisher.stop()
            self.http.stop()
            return 1
        assert self.detection is not None and self.model is not None
        self.supervisor.last_tick_s = time.monotonic()  # loading took minutes: not stuck
        self._models_loaded.set()
        self.detection.start()
        self.model.start()
        self.watcher.start()
        self.liveness.start()
        while not self._stop_requested.is_set():
            self.supervisor.changed.wait(SUPERVISOR_TICK_S)
            if self._stop_requested.is_set():
                break
            try:
                self.supervisor.tick()
            except Exception:
                log.exception("supervisor tick failed")
        return self.shutdown()

    def shutdown(self) -> int:
        """Stop intake, finish or drop in-flight windows, flush events, leave the group."""
        deadline = time.monotonic() + self.settings.grace_s
        log.info("shutting down", grace_s=self.settings.grace_s)
        self._intake_stopped.set()
        self.supervisor.release_all()  # written with the flush below, before the group moves
        for record in self.streams.active():
            record.stop()
        # Finish what the model already holds while at least ~40% of the grace is left
        # for flushing and leaving the group; then drop the rest (counted).
        drain_until = deadline - 0.4 * self.settings.grace_s
        for stage in (self.detection, self.model):
            if stage is not None:
                stage.stop()
        while len(self.queue) and time.monotonic() < drain_until:
            time.sleep(0.05)
        self.queue.close()
        for stage in (self.detection, self.model):
            if stage is not None:
                stage.join(drain_until - time.monotonic())
        flushed = self.publisher.flush(max(0.1, deadline - time.monotonic() - 2.0))
        self.watcher.stop(timeout_s=max(0.5, deadline - time.monotonic() - 0.5))
        self.liveness.release(timeout_s=1.0)
        self.publisher.stop(timeout_s=max(0.1, deadline - time.monotonic()))
        self.http.stop()
        log.info("stopped", events_flushed=flushed, worker_id=self.worker_id)
        return 0

    # -- health ---------------------------------------------------------------------------

    def _alive(self) -> tuple[bool, str]:
        if self._intake_stopped.is_set():
            return True, "ok"
        dead = [
            s.name for s in (self.detection, self.model) if s and s.started and not s.is_alive()
        ]
        if self._models_loaded.is_set():
            if not self.watcher.is_alive():
                dead.append("kafka-assignments")
            if self.liveness.started and not self.liveness.is_alive():
                dead.append("worker-liveness")
            if time.monotonic() - self.supervisor.last_tick_s > SUPERVISOR_STALL_S:
                dead.append("supervisor (stuck)")
        if not self.publisher.is_alive():
            dead.append("redis-publisher")
        if dead:
            return False, "dead: " + ", ".join(sorted(dead))
        return True, "ok" if self._models_loaded.is_set() else "loading models"

    def _ready(self) -> tuple[bool, str]:
        if not self._models_loaded.is_set():
            return False, "loading models"
        if self._intake_stopped.is_set():
            return False, "stopping"
        status = self.watcher.status()
        if status.state == WatcherState.TOPIC_MISSING:
            return False, f"assignments {status.state}: {status.last_error}"
        if status.state != WatcherState.LIVE:
            return False, f"assignments {status.state}"
        return True, "ready"
