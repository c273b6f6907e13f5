"""The model stage: windows join the generation engine at decode-step boundaries.

Thread `model` (`ModelStage`) runs one loop: take as many windows from the window queue
(`worker.scheduler`) as the engine has room for, ask the static-task policy which of
their stream's tasks they still need (`worker.static_tasks`), submit them, run ONE engine
step (admit, start questions, decode one token for every active row), and hand the
answers that finished in that step to the publisher at once. A window whose clip is
answered publishes its emotion event while its image questions still decode; new windows
join while others decode (continuous batching, `models/facellava/engine.py`).

Bounds: the engine holds at most `max_windows` windows (its KV slots, sized from free
device memory by default) and at most `admit_per_step` windows join per step, so a
window waits in the window queue — where `newest-per-track` can supersede it and
`max_window_age_s` can drop it as stale — rather than inside the engine.

Failure policy: a failed step drops every window in the engine (its KV state is no
longer trustworthy), counted `model_error`; only `MODEL_FAILURES_IN_ROW` failed steps in
a row end the thread (`/healthz` then fails). After `stop()` it answers what is queued
and in the engine, and ends once both are empty (or the queue is closed).
"""

from __future__ import annotations

import dataclasses
import queue as stdlib_queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import structlog

from models.facellava.engine import EngineRequestError
from models.facellava.tasks import Task
from worker.answering import FaceAnswerer
from worker.events import FaceEvent
from worker.metrics import Metrics
from worker.scheduler import WindowJob, WindowQueue
from worker.settings import Settings
from worker.stage import StageThread
from worker.static_tasks import Sighting, StaticTaskPolicy

log = structlog.get_logger(__name__)

MODEL_FAILURES_IN_ROW = 10  # failed steps in a row before the thread gives up (/healthz)
_IDLE_TAKE_TIMEOUT_S = 0.5  # an idle engine waits this long for a window, then looks again


class EventSink(Protocol):
    """Where events go (the Redis publisher; `bench worker` counts them instead)."""

    def publish(self, event: FaceEvent) -> None: ...


@dataclass(frozen=True)
class WindowAnswers:
    """Answers of one window that finished in a step: one visual's, or its last one's."""

    job: WindowJob
    events: tuple[FaceEvent, ...]
    finished: bool
    """True when this was the window's last visual: it has left the engine."""


class WindowStepper(Protocol):
    """What the model stage drives: windows in, one step at a time, answers out."""

    def room(self) -> int:
        """Windows that may join now."""
        ...

    def submit(self, job: WindowJob) -> None:
        """Queue a window; it joins the decode batch at the next `step`. Raises
        `EngineRequestError` for a window the engine cannot serve (nothing is kept)."""
        ...

    def step(self) -> list[WindowAnswers]:
        """One engine step; the answers that finished in it."""
        ...

    def abort(self) -> list[WindowJob]:
        """After a failed step: forget every window in the engine and return them."""
        ...

    @property
    def busy(self) -> bool:
        """Windows are in the engine."""
        ...


@dataclass
class _InFlight:
    job: WindowJob
    visuals_left: int
    abandoned: bool = False  # part of it was refused: the stage dropped it, answers unused


class EngineWindows:
    """`WindowStepper` over a `FaceAnswerer`'s engine: a window is one request per
    modality it needs (clip, best image); it leaves when all of them finished."""

    def __init__(self, answerer: FaceAnswerer, *, max_windows: int | None = None) -> None:
        self.answerer = answerer
        engine = answerer.engine
        self.max_windows = engine.max_visuals if max_windows is None else max_windows
        self.admit_per_step = engine.max_batch_clips
        self._in_flight: dict[int, _InFlight] = {}
        self._next_key = 0

    @property
    def busy(self) -> bool:
        """Requests are in the engine."""
        return bool(self._in_flight)

    def room(self) -> int:
        """Free window places, at most one admission batch: the rest wait in the queue."""
        return max(0, min(self.max_windows - len(self._in_flight), self.admit_per_step))

    def submit(self, job: WindowJob) -> None:
        """Submit the window's requests (none if it asks nothing: it is not kept)."""
        key, self._next_key = self._next_key, self._next_key + 1
        requests = self.answerer.requests_for(job, key)
        if not requests:
            return
        submitted = 0
        try:
            for request in requests:
                self.answerer.engine.submit(request)
                submitted += 1
        finally:
            if submitted:
                # A refused image after an accepted clip: the caller drops the window; the
                # clip cannot be taken back from the engine, so its answers go unused.
                abandoned = submitted < len(requests)
                self._in_flight[key] = _InFlight(job, submitted, abandoned)

    def step(self) -> list[WindowAnswers]:
        """One engine step; its finished requests as window answers."""
        answers = []
        for result in self.answerer.engine.step():
            key, _modality = result.key
            entry = self._in_flight[key]
            entry.visuals_left -= 1
            finished = entry.visuals_left == 0
            if finished:
                del self._in_flight[key]
            if entry.abandoned:
                continue
            events = tuple(self.answerer.events_for(entry.job, result))
            answers.append(WindowAnswers(entry.job, events, finished))
        return answers

    def abort(self) -> list[WindowJob]:
        """Forget the windows in the engine (it dropped them itself when its step failed)."""
        self.answerer.engine.reset()
        jobs = [entry.job for entry in self._in_flight.values() if not entry.abandoned]
        self._in_flight.clear()
        return jobs


class ModelStage(StageThread):
    """Thread `model`: window queue → engine steps → events to the sink, as they finish."""

    def __init__(
        self,
        stepper: WindowStepper,
        queue: WindowQueue,
        sink: EventSink,
        metrics: Metrics,
        *,
        batch_wait_s: float,
        static_tasks: StaticTaskPolicy | None = None,
    ) -> None:
        """`batch_wait_s`: how long an idle engine lets its first admission fill up;
        `static_tasks`: None asks every task of every window."""
        super().__init__("model")
        self._stepper = stepper
        self._queue = queue
        self._sink = sink
        self._metrics = metrics
        self._batch_wait_s = batch_wait_s
        self._static = static_tasks
        # (stream, track) → static tasks asked by a window still in the engine: a second
        # window of the same person does not ask them again meanwhile.
        # Keyed by (window key, session): a restarted stream's track ids are other people.
        self._static_in_flight: dict[
            tuple[tuple[str, int], str], tuple[WindowJob, frozenset[Task]]
        ] = {}
        self._forgotten: stdlib_queue.SimpleQueue[str] = stdlib_queue.SimpleQueue()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        stepper: WindowStepper,
        queue: WindowQueue,
        sink: EventSink,
        metrics: Metrics,
    ) -> ModelStage:
        """The stage around a loaded `stepper`, with the batch wait and static-task policy
        `settings` give."""
        return cls(
            stepper,
            queue,
            sink,
            metrics,
            batch_wait_s=settings.scheduler.batch_wait_ms / 1000,
            static_tasks=static_task_policy(settings),
        )

    def forget_stream(self, stream_id: str) -> None:
        """A stream stopped (any thread): its people's static answers are forgotten, so a
        restarted stream's track 1 (another person) is asked in full."""
        if self._static is not None:  # nothing is remembered without the policy
            self._forgotten.put(stream_id)

    def run(self) -> None:
        """Step until stopped and drained."""
        failures_in_row = 0
        while True:
            busy = self._stepper.busy
            room = self._stepper.room()
            jobs: list[WindowJob] = []
            if room:
                wait_s = 0.0 if busy else _IDLE_TAKE_TIMEOUT_S
                jobs = self._queue.take(room, 0.0 if busy else self._batch_wait_s, wait_s)
            # After the take: a restarted stream's windows were queued after its forget.
            self._apply_forgotten()
            self._join(jobs)
            if not self._stepper.busy:
                if self.stopping.is_set() and not len(self._queue):
                    return
                continue
            try:
                finished = self._stepper.step()
            except Exception:
                dropped = self._stepper.abort()
                log.exception("model step failed; its windows are dropped", windows=len(dropped))
                self._retire(dropped, drop_reason="model_error")
                failures_in_row += 1
                if failures_in_row >= MODEL_FAILURES_IN_ROW:
                    raise  # the thread ends; /healthz reports the model loop dead
                continue
            failures_in_row = 0
            self._deliver(finished)

    def _join(self, jobs: list[WindowJob]) -> None:
        """Submit taken windows with the tasks they still need; the rest are done."""
        if jobs:
            self._metrics.model_batch_size.observe(len(jobs))
        for job in jobs:
            job = self._with_needed_tasks(job)
            if not job.tasks:
                self._queue.done([job])  # nothing left to ask: its static answers are known
                continue
            try:
                self._stepper.submit(job)
            except EngineRequestError:
                log.exception("window refused by the engine; dropped", stream_id=job.key[0])
                self._retire([job], drop_reason="model_error")
                continue
            static = self._static_tasks_of(job)
            if static:
                self._static_in_flight[(job.key, job.session)] = (job, static)

    def _with_needed_tasks(self, job: WindowJob) -> WindowJob:
        if self._static is None:
            return job
        asking = self._static_in_flight.get((job.key, job.session), (job, frozenset()))[1]
        needed = self._static.tasks_for(_sighting(job), (t for t in job.tasks if t not in asking))
        return dataclasses.replace(job, tasks=needed) if needed != job.tasks else job

    def _static_tasks_of(self, job: WindowJob) -> frozenset[Task]:
        if self._static is None:
            return frozenset()
        return frozenset(job.tasks) & self._static.static_tasks

    def _deliver(self, finished: list[WindowAnswers]) -> None:
        """Publish each finished visual's events now; remember static answers."""
        now_s = time.time()
        for item in finished:
            for event in item.events:
                self._sink.publish(event)
                self._metrics.events.labels(str(event.task)).inc()
                self._metrics.frame_to_event_s.observe(max(0.0, now_s - event.frame_wall_time_s))
            if self._static is not None:
                self._static.mark_answered(
                    _sighting(item.job), (Task(event.task) for event in item.events)
                )
            if item.finished:
                self._retire([item.job], drop_reason=None)

    def _retire(self, jobs: list[WindowJob], *, drop_reason: str | None) -> None:
        """Windows that left the engine: done in the queue (after their events went out,
        so a finished stream is marked done only then), counted when dropped."""
        for job in jobs:
            asking = self._static_in_flight.get((job.key, job.session))
            if asking is not None and asking[0] is job:
                del self._static_in_flight[(job.key, job.session)]
        if drop_reason is not None and jobs:
            self._queue.count_drop(drop_reason, len(jobs))
        self._queue.done(jobs)

    def _apply_forgotten(self) -> None:
        if self._static is None:
            return
        for stream_id in _drain(self._forgotten):
            self._static.forget_stream(stream_id)


def _sighting(job: WindowJob) -> Sighting:
    """`job`'s person, crop quality and time, as the static-task policy reads them."""
    window = job.request.clip.window
    return Sighting(
        window.stream_id,
        window.track_id,
        job.request.image.quality,
        window.window_end_s,
        session=job.session,
    )


def static_task_policy(settings: Settings) -> StaticTaskPolicy | None:
    """The worker's static-task policy; None (every task every window) at interval 0."""
    static = settings.static_tasks
    if static.refresh_interval_s == 0:
        return None
    return StaticTaskPolicy(
        quality_margin=static.quality_margin, refresh_interval_s=static.refresh_interval_s
    )


def load_answerer(settings: Settings) -> WindowStepper:
    """The worker's model: Face-LLaVA as `settings.model` says, stepped by the engine."""
    return EngineWindows(
        FaceAnswerer.from_options(
            settings.model, settings.worker_id, thumbnails=settings.redis.thumbnails
        )
    )


def _drain(pending: stdlib_queue.SimpleQueue[str]) -> Iterator[str]:
    while True:
        try:
            yield pending.get_nowait()
        except stdlib_queue.Empty:
            return
