"""The model stage: window jobs → Face-LLaVA questions → `FaceEvent`s → the publisher.

A window asks its stream's tasks; each task goes to the modality the authors recommend
(emotion → the 8-crop clip; age, attributes, action units → the best single crop). All
questions of one visual share its prefill inside the engine. `FaceAnswerer` is used by
the worker's `model` thread (`ModelStage`, input: the window queue) and by
`facestream analyze --model`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import structlog

from models.facellava.answers import parse_answer
from models.facellava.engine import GenerationEngine, GenerationRequest
from models.facellava.options import ModelOptions
from models.facellava.tasks import TASK_MODALITY, Task
from worker.events import FaceEvent, StopReason, event_id_for
from worker.metrics import Metrics
from worker.publisher import EventPublisher
from worker.scheduler import WindowJob, WindowQueue
from worker.stage import StageThread
from worker.thumbnails import encode_thumbnail

if TYPE_CHECKING:
    from models.facellava.checkpoint import LoadedModel

log = structlog.get_logger(__name__)

MODEL_FAILURES_IN_ROW = 10  # failed batches in a row before the thread gives up (/healthz)
_TAKE_TIMEOUT_S = 0.5


class Answerer(Protocol):
    """What the model stage needs: one event per (job, task) of a batch."""

    def answer(self, jobs: Sequence[WindowJob]) -> list[FaceEvent]: ...


class FaceAnswerer:
    """Owns one generation engine; `answer(jobs)` gives one event per (job, task)."""

    def __init__(
        self,
        engine: GenerationEngine,
        model_id: str,
        worker_id: str,
        *,
        thumbnails: bool = False,
    ) -> None:
        self.engine = engine
        self.model_id = model_id
        self.worker_id = worker_id
        self.thumbnails = thumbnails  # attach each window's best crop as a small JPEG

    @classmethod
    def from_options(
        cls, options: ModelOptions, worker_id: str, *, thumbnails: bool = False
    ) -> FaceAnswerer:
        """Load the checkpoint named by `options` and wrap it in an engine."""
        from models.facellava.checkpoint import load_from_options

        return cls.from_loaded(
            load_from_options(options), options, worker_id, thumbnails=thumbnails
        )

    @classmethod
    def from_loaded(
        cls,
        loaded: LoadedModel,
        options: ModelOptions,
        worker_id: str,
        *,
        thumbnails: bool = False,
    ) -> FaceAnswerer:
        """Wrap an already loaded model in an engine with the options' generation knobs."""
        engine = GenerationEngine.from_options(
            loaded.model, loaded.tokenizer, options, loaded.eos_token_id
        )
        log.info("model loaded", model=options.model, report=loaded.report.summary())
        return cls(engine, model_id=options.model, worker_id=worker_id, thumbnails=thumbnails)

    def answer(self, jobs: Sequence[WindowJob]) -> list[FaceEvent]:
        """Run every task of every job in one engine call and build the events."""
        requests: list[GenerationRequest] = []
        for index, job in enumerate(jobs):
            clip, image = job.request.clip, job.request.image
            video_tasks = [t for t in job.tasks if TASK_MODALITY[t] == "video"]
            image_tasks = [t for t in job.tasks if TASK_MODALITY[t] == "image"]
            if video_tasks:
                requests.append(
                    GenerationRequest.for_tasks((index, "video"), clip.crops_rgb, video_tasks)
                )
            if image_tasks:
                requests.append(
                    GenerationRequest.for_tasks((index, "image"), image.crop_rgb, image_tasks)
                )
        if not requests:
            return []
        results = self.engine.generate(requests)
        now_s = time.time()
        events: list[FaceEvent] = []
        with_thumbnail: set[int] = set()
        for result in results:
            index = result.key[0]
            job = jobs[index]
            for answer in result.answers:
                task = answer.question.task
                assert task is not None  # for_tasks always sets it
                event = self._event(job, Task(task), answer.text, answer.stop_reason, now_s)
                if self.thumbnails and index not in with_thumbnail:
                    with_thumbnail.add(index)  # one per window: the person's latest face
                    event = event.with_thumbnail(encode_thumbnail(job.request.image.crop_rgb))
                events.append(event)
        streams = sorted({job.key[0] for job in jobs})
        log.debug("answered", jobs=len(jobs), events=len(events), streams=streams)
        return events

    def _event(
        self, job: WindowJob, task: Task, text: str, stop_reason: StopReason, now_s: float
    ) -> FaceEvent:
        window = job.request.clip.window
        return FaceEvent(
            event_id=event_id_for(
                window.stream_id,
                window.track_id,
                window.window_start_s,
                task,
                session=job.session,
            ),
            stream_id=window.stream_id,
            session=job.session,
            track_id=window.track_id,
            task=task,
            result=parse_answer(task, text),
            answer_text=text,
            stop_reason=stop_reason,
            window_start_s=window.window_start_s,
            window_end_s=window.window_end_s,
            wall_time_s=now_s,
            frame_wall_time_s=window.last_wall_time_s,
            box_xyxy=window.box_xyxy,
            detector_score=window.detector_score,
            model_id=self.model_id,
            worker_id=self.worker_id,
            labels=dict(job.labels),
        )


class ModelStage(StageThread):
    """Thread `model`: batches from the window queue → the answerer → the publisher.

    A failed batch is dropped (counted as `model_error`); only `MODEL_FAILURES_IN_ROW`
    failures in a row end the thread. After `stop()` it answers what is still queued and
    ends once the queue is empty (or closed)."""

    def __init__(
        self,
        answerer: Answerer,
        queue: WindowQueue,
        publisher: EventPublisher,
        metrics: Metrics,
        *,
        max_batch: int,
        batch_wait_s: float,
    ) -> None:
        super().__init__("model")
        self._answerer = answerer
        self._queue = queue
        self._publisher = publisher
        self._metrics = metrics
        self._max_batch = max_batch
        self._batch_wait_s = batch_wait_s

    def run(self) -> None:
        """Answer batches until stopped and drained."""
        failures_in_row = 0
        while True:
            jobs = self._queue.take(self._max_batch, self._batch_wait_s, _TAKE_TIMEOUT_S)
            if not jobs:
                if self.stopping.is_set() and not len(self._queue):
                    return
                continue
            self._metrics.model_batch_size.observe(len(jobs))
            try:
                try:
                    events = self._answerer.answer(jobs)
                    failures_in_row = 0
                except Exception:
                    log.exception("model batch failed; its windows are dropped", jobs=len(jobs))
                    self._queue.count_drop("model_error", len(jobs))
                    failures_in_row += 1
                    if failures_in_row >= MODEL_FAILURES_IN_ROW:
                        raise  # the thread ends; /healthz reports the model loop dead
                    events = []
                self._publish(events)
            finally:
                self._queue.done(jobs)  # after publishing: a finished stream's events are out

    def _publish(self, events: list[FaceEvent]) -> None:
        now_s = time.time()
        for event in events:
            self._publisher.publish(event)
            self._metrics.events.labels(str(event.task)).inc()
            self._metrics.frame_to_event_s.observe(max(0.0, now_s - event.frame_wall_time_s))
