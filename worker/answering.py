"""Window jobs → Face-LLaVA questions → `FaceEvent`s.

A window asks its stream's tasks; each task goes to the modality the authors recommend
(emotion → the 8-crop clip; age, attributes, action units → the best single crop). All
questions of one visual share its prefill inside the engine. `FaceAnswerer` is used by
the worker's `model` thread (`worker.model_stage`: `requests_for` / `events_for`, one
engine step at a time) and by `facestream analyze --model` (`answer`: a list of windows
run to completion).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import structlog

from models.facellava.answers import parse_answer
from models.facellava.batch_limits import resolve_batch_clips
from models.facellava.engine import GenerationEngine, GenerationRequest, GenerationResult
from models.facellava.options import ModelOptions
from models.facellava.tasks import TASK_MODALITY, Task
from models.overrides import with_overrides
from worker.events import FaceEvent, StopReason
from worker.scheduler import WindowJob
from worker.thumbnails import encode_thumbnail

if TYPE_CHECKING:
    from models.facellava.checkpoint import LoadedModel

log = structlog.get_logger(__name__)


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
        """Wrap an already loaded model in an engine with the options' generation knobs
        (an "auto" `max_batch_clips` sized from the free device memory now)."""
        batch_clips = resolve_batch_clips(options.max_batch_clips, loaded.model)
        options = with_overrides(options, {"max_batch_clips": batch_clips})
        engine = GenerationEngine.from_options(
            loaded.model, loaded.tokenizer, options, loaded.eos_token_id
        )
        log.info(
            "model loaded",
            model=options.model,
            report=loaded.report.summary(),
            max_batch_clips=engine.max_batch_clips,
            engine_visuals=engine.max_visuals,
        )
        return cls(engine, model_id=options.model, worker_id=worker_id, thumbnails=thumbnails)

    def answer(self, jobs: Sequence[WindowJob]) -> list[FaceEvent]:
        """Run every task of every job in one engine call and build the events."""
        requests = [r for index, job in enumerate(jobs) for r in self.requests_for(job, index)]
        if not requests:
            return []
        events = [
            event
            for result in self.engine.generate(requests)
            for event in self.events_for(jobs[result.key[0]], result)
        ]
        streams = sorted({job.key[0] for job in jobs})
        log.debug("answered", jobs=len(jobs), events=len(events), streams=streams)
        return events

    def requests_for(self, job: WindowJob, key: Hashable) -> list[GenerationRequest]:
        """The engine requests of one window: its clip (video tasks) and its best image
        (image tasks), keyed `(key, modality)`; none when it asks nothing."""
        requests = []
        video_tasks = [t for t in job.tasks if TASK_MODALITY[t] == "video"]
        image_tasks = [t for t in job.tasks if TASK_MODALITY[t] == "image"]
        if video_tasks:
            requests.append(
                GenerationRequest.for_tasks((key, "video"), job.request.clip.crops_rgb, video_tasks)
            )
        if image_tasks:
            requests.append(
                GenerationRequest.for_tasks((key, "image"), job.request.image.crop_rgb, image_tasks)
            )
        return requests

    def events_for(self, job: WindowJob, result: GenerationResult) -> list[FaceEvent]:
        """One event per answer of one finished request of `job`, made now; with
        thumbnails on, the first carries the window's best crop (the person's latest face)."""
        now_s = time.time()
        # One thumbnail per window: on the first event of its first request (the clip's
        # when it asks a video task, else the image's).
        asks_video = any(TASK_MODALITY[t] == "video" for t in job.tasks)
        first_request = result.key[-1] == ("video" if asks_video else "image")
        events = []
        for answer in result.answers:
            task = answer.question.task
            assert task is not None  # requests_for always sets it
            event = self._event(job, Task(task), answer.text, answer.stop_reason, now_s)
            if self.thumbnails and first_request and not events:
                event = event.with_thumbnail(encode_thumbnail(job.request.image.crop_rgb))
            events.append(event)
        return events

    def _event(
        self, job: WindowJob, task: Task, text: str, stop_reason: StopReason, now_s: float
    ) -> FaceEvent:
        window = job.request.clip.window
        return FaceEvent.identified(
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
