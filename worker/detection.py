"""The detector thread: frames of every stream → one RetinaFace batch → each stream's
tracker and window builder → `WindowJob`s into the window queue.

Input: each admitted stream's source queue (pulled with `StreamRecord.take_frame`,
bounded by `FACESTREAM_SOURCE__QUEUE_FRAMES` and `QUEUE_BYTES`; a live source drops its
oldest frame, a file waits). Each turn takes at most `max_batch` frames, one per stream
in turn (the first stream rotates), so the frames in the detector's hands are bounded too.
Output: `WindowQueue.put` (bounded, `newest-per-track`).

Every turn also lets `worker.admission` decide which streams are served, and reports each
batch's busy time to it (the measured capacity).
"""

from __future__ import annotations

import threading
import time

import structlog

from ingest.frames import Frame
from ingest.pipeline import FaceDetector
from ingest.windows import WindowRequests
from worker.admission import Admission
from worker.intake import StreamRecord, StreamTable
from worker.metrics import Metrics
from worker.scheduler import WindowJob, WindowQueue
from worker.settings import Settings
from worker.stage import StageThread

log = structlog.get_logger(__name__)

DETECTOR_FAILURES_IN_ROW = 10  # failed batches in a row before the thread gives up
_IDLE_WAIT_S = 0.5  # the loop looks for finished sources at least this often


class DetectionStage(StageThread):
    """Thread `detector`; `wake` (shared with the sources) is set whenever a frame waits."""

    def __init__(
        self,
        detector: FaceDetector,
        streams: StreamTable,
        queue: WindowQueue,
        metrics: Metrics,
        *,
        max_batch: int,
        wake: threading.Event,
        admission: Admission,
    ) -> None:
        super().__init__("detector")
        self.wake = wake
        self.admission = admission
        self._turn = 0
        self._detector = detector
        self._streams = streams
        self._queue = queue
        self._metrics = metrics
        self._max_batch = max_batch
        self._failures_in_row = 0

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        detector: FaceDetector,
        streams: StreamTable,
        queue: WindowQueue,
        metrics: Metrics,
        *,
        wake: threading.Event,
        admission: Admission,
    ) -> DetectionStage:
        """The stage around a loaded `detector`, batched as `settings.detector` says."""
        return cls(
            detector,
            streams,
            queue,
            metrics,
            max_batch=settings.detector.max_batch,
            wake=wake,
            admission=admission,
        )

    def stop(self) -> None:
        """Ask the loop to end at its next turn."""
        super().stop()
        self.wake.set()

    def run(self) -> None:
        """Until stopped: take every waiting frame, detect in batches, flush ended streams."""
        while not self.stopping.is_set():
            self.wake.wait(_IDLE_WAIT_S)
            self.wake.clear()
            records = self._streams.active()
            self.admission.update(records)
            batch = self.take_batch([r for r in records if not r.shed])
            if batch:
                started = time.monotonic()
                if self.detect_and_track(batch):
                    self.admission.observe(len(batch), time.monotonic() - started)
                if len(batch) == self._max_batch:
                    self.wake.set()  # more may be waiting: no idle wait before the next turn
            for record in records:
                if record.read_all and not record.flushed:
                    self._flush(record)

    def take_batch(self, records: list[StreamRecord]) -> list[tuple[StreamRecord, Frame]]:
        """Up to `max_batch` waiting frames, one per stream in turn, the first stream
        rotating between calls so no stream always waits for the others."""
        if records:
            self._turn = (self._turn + 1) % len(records)
            records = records[self._turn :] + records[: self._turn]
        batch: list[tuple[StreamRecord, Frame]] = []
        while records and len(batch) < self._max_batch:
            with_more = []
            for record in records:
                if len(batch) == self._max_batch:
                    break
                frame = record.take_frame()
                if frame is not None:
                    batch.append((record, frame))
                    with_more.append(record)
            records = with_more
        return batch

    def detect_and_track(self, batch: list[tuple[StreamRecord, Frame]]) -> bool:
        """Detect one batch and feed each stream's pipeline; False when the batch failed. A
        failing batch (say, out of GPU memory) or frame is skipped and counted
        (`frames_skipped{reason=detector_error}`) so one bad stream cannot stop detection for
        all; only failures `DETECTOR_FAILURES_IN_ROW` batches in a row end the thread (and
        `/healthz` says so)."""
        try:
            detections = self._detector.detect([frame.image_bgr for _, frame in batch])
        except Exception:
            self._failures_in_row += 1
            if self._failures_in_row >= DETECTOR_FAILURES_IN_ROW:
                raise
            log.exception("detector batch failed; its frames are skipped", frames=len(batch))
            for record, _ in batch:
                record.detector_errors += 1
            return False
        self._failures_in_row = 0
        self._metrics.detector_batch_size.observe(len(batch))
        for (record, frame), dets in zip(batch, detections, strict=True):
            assert record.pipeline is not None
            try:
                step = record.pipeline.update(frame, dets)
            except Exception:
                log.exception("tracking failed; frame skipped", stream_id=record.stream_id)
                record.detector_errors += 1
                continue
            record.detected += 1
            self.enqueue(record, step.windows)
        return True

    def enqueue(self, record: StreamRecord, windows: list[WindowRequests]) -> None:
        """Queue a stream's windows, unless the stream was stopped meanwhile (counted)."""
        if not windows:
            return
        with self._streams.lock:  # a stopped stream's windows were dropped with it
            if not self._streams.is_current(record):
                self._queue.count_drop("stream_stopped", len(windows))
                return
            tasks, session, labels = tuple(record.spec.tasks), record.session, record.spec.labels
            for window in windows:
                self._queue.put(WindowJob(window, tasks, session=session, labels=labels))

    def _flush(self, record: StreamRecord) -> None:
        """A finite source ended: end its tracks and queue their last windows."""
        assert record.pipeline is not None
        try:
            windows = record.pipeline.finish().windows
        except Exception:
            log.exception("last windows lost", stream_id=record.stream_id)
            windows = []
        self.enqueue(record, windows)
        record.flushed = True


def load_detector(settings: Settings) -> FaceDetector:
    """The worker's detector: RetinaFace with the crop regions `settings.windows` asks for."""
    from ingest.authors_boxes import with_crop_boxes
    from models.retinaface import RetinaFaceDetector

    return with_crop_boxes(
        RetinaFaceDetector.from_options(settings.detector),
        settings.windows.crop_mode,
        settings.detector.device,
    )
