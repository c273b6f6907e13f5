"""One stream's ingest after detection: shot cuts → tracker → crops → clip windows.

`StreamPipeline` is the per-stream part, fed `(Frame, Detections)` pairs; it knows
nothing of the detector, so the worker can batch detection across all its streams and
hand each stream its own results. `run_stream` is the one-process driver used by
`facestream analyze`: it reads frames, detects them in small batches and feeds one
`StreamPipeline`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ingest.cuts import ShotCutDetector
from ingest.frames import Frame
from ingest.tracking import FaceTracker, TrackedFaces, TrackerOptions, TrackRecord
from ingest.windows import WindowBuilder, WindowOptions, WindowRequests, WindowStats
from models.detections import Detections


class FaceDetector(Protocol):
    """What the driver needs of a detector (RetinaFaceDetector has it)."""

    def detect(self, images_bgr: list[np.ndarray]) -> list[Detections]: ...


@dataclass(frozen=True)
class PipelineStep:
    """What one frame (or the end of the stream, `frame=None`) produced."""

    frame: Frame | None
    faces: TrackedFaces
    windows: list[WindowRequests] = field(default_factory=list)

    @property
    def ended_tracks(self) -> tuple[TrackRecord, ...]:
        return self.faces.ended


_NO_FACES = TrackedFaces(detections=Detections.empty(), track_ids=np.zeros((0,), np.int64))


class StreamPipeline:
    """Per-stream tracking and windowing, independent of the detector."""

    def __init__(
        self,
        stream_id: str,
        sample_fps: float,
        tracker_options: TrackerOptions | None = None,
        window_options: WindowOptions | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.tracker = FaceTracker(tracker_options or TrackerOptions())
        self.cuts = ShotCutDetector(self.tracker.options.cut_threshold)
        self.windows = WindowBuilder(stream_id, window_options or WindowOptions(), sample_fps)

    @property
    def stats(self) -> WindowStats:
        return self.windows.stats

    def update(self, frame: Frame, detections: Detections) -> PipelineStep:
        """Track one frame's faces and return them with any windows that closed."""
        new_shot = self.cuts.is_cut(frame.image_bgr)
        faces = self.tracker.update(detections, frame.pts_s, new_shot=new_shot)
        return PipelineStep(frame=frame, faces=faces, windows=self.windows.update(frame, faces))

    def finish(self) -> PipelineStep:
        """End of stream: end every track and flush their windows."""
        ended = tuple(self.tracker.finish())
        faces = TrackedFaces(_NO_FACES.detections, _NO_FACES.track_ids, ended=ended)
        windows = self.windows.end_tracks(r.track_id for r in ended)
        windows.extend(self.windows.finish())
        return PipelineStep(frame=None, faces=faces, windows=windows)


def batched(frames: Iterable[Frame], batch_size: int) -> Iterator[list[Frame]]:
    """Group frames into lists of at most `batch_size`."""
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_stream(
    frames: Iterable[Frame],
    detector: FaceDetector,
    pipeline: StreamPipeline,
    batch_size: int = 4,
    on_detected: Callable[[int], None] | None = None,
) -> Iterator[PipelineStep]:
    """Detect frames in batches and feed one pipeline; the last step has `frame=None`."""
    for batch in batched(frames, batch_size):
        detections = detector.detect([f.image_bgr for f in batch])
        for frame, dets in zip(batch, detections, strict=True):
            yield pipeline.update(frame, dets)
        if on_detected is not None:
            on_detected(len(batch))
    yield pipeline.finish()
