"""The worker's model stage on the tiny Face-LLaVA fixture: windows join the engine at
decode-step boundaries, answers are published as they finish, and age/attributes are
asked once per person (again on a clearly better crop or after the interval)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ingest.requests import ClipRequest, ImageRequest, WindowInfo
from ingest.windows import WindowRequests
from models.facellava.engine import GenerationEngine
from models.facellava.tasks import Task
from worker.answering import FaceAnswerer
from worker.events import FaceEvent
from worker.metrics import Metrics
from worker.model_stage import EngineWindows, ModelStage, WindowAnswers
from worker.scheduler import WindowJob, WindowQueue
from worker.static_tasks import StaticTaskPolicy

pytestmark = pytest.mark.timeout(180)

ALL = (Task.EMOTION, Task.AGE, Task.ATTRIBUTES, Task.ACTION_UNITS)
DYNAMIC = {Task.EMOTION, Task.ACTION_UNITS}


@pytest.fixture(scope="module")
def crops(tiny: Path) -> tuple[np.ndarray, np.ndarray]:
    """A real clip (T, H, W, 3) and face image (H, W, 3) of the fixture, uint8 RGB."""
    ref = tiny / "reference" / "preprocess"
    clip = torch.load(ref / "video_frames_uint8_THWC.pt", weights_only=True).numpy()
    image = torch.load(ref / "image_rgb_uint8_HWC.pt", weights_only=True).numpy()
    return clip, image


def _job(
    crops: tuple[np.ndarray, np.ndarray],
    *,
    stream_id: str = "cam",
    track_id: int = 1,
    end_s: float = 2.5,
    quality: float = 0.5,
    tasks: tuple[Task, ...] = ALL,
) -> WindowJob:
    clip, image = crops
    info = WindowInfo(
        stream_id=stream_id,
        track_id=track_id,
        window_start_s=end_s - 2.5,
        window_end_s=end_s,
        last_wall_time_s=time.time(),
        box_xyxy=(10.0, 10.0, 60.0, 70.0),
        detector_score=0.9,
    )
    request = WindowRequests(
        clip=ClipRequest(info, clip, tuple(float(i) for i in range(len(clip)))),
        image=ImageRequest(info, image, end_s, quality),
    )
    return WindowJob(request, tasks)


def _answerer(loaded, **engine_kwargs) -> FaceAnswerer:
    engine = GenerationEngine(
        loaded.model,
        loaded.tokenizer,
        eos_token_id=loaded.eos_token_id,
        max_new_tokens=12,
        max_visuals=4,
        max_batch_clips=2,
        **engine_kwargs,
    )
    return FaceAnswerer(engine, model_id="tiny", worker_id="w-test")


class Sink:
    """Collects published events (the stage's only output besides the queue's `done`)."""

    def __init__(self) -> None:
        self.events: list[FaceEvent] = []
        self.lock = threading.Lock()

    def publish(self, event: FaceEvent) -> None:
        with self.lock:
            self.events.append(event)

    def tasks_of(self, window_start_s: float) -> set[Task]:
        with self.lock:
            return {e.task for e in self.events if e.window_start_s == window_start_s}


def test_a_window_joining_mid_decode_gets_the_answers_it_gets_alone(loaded, crops) -> None:
    first = _job(crops, track_id=1)
    second = _job(crops, track_id=2, tasks=(Task.EMOTION, Task.AGE))
    windows = EngineWindows(_answerer(loaded, ignore_eos=True))
    windows.submit(first)
    finished: list[tuple[int, WindowAnswers, bool]] = []
    for step in range(60):
        if step == 3:
            windows.submit(second)  # joins while the first one's rows decode
        finished += [(step, item, windows.busy) for item in windows.step()]
        if step > 3 and not windows.busy:
            break
    engine = windows.answerer.engine
    # 4 rows of the first window (clip + 3 image lanes), then 2 more joined them
    assert max(engine.counters.decode_batch_sizes) == 6
    done = {item.job.key[1]: (step, busy) for step, item, busy in finished if item.finished}
    assert set(done) == {1, 2}
    first_step, still_busy = done[1]
    assert first_step < done[2][0] and still_busy, (
        "the first window leaves while the second decodes"
    )

    alone = _answerer(loaded, ignore_eos=True)
    for job in (first, second):
        expected = {e.task: e.answer_text for e in alone.answer([job])}
        got = {
            e.task: e.answer_text
            for _, item, _ in finished
            if item.job.key == job.key
            for e in item.events
        }
        assert got == expected and set(got) == set(job.tasks)


def _answered(queue: WindowQueue, stream_id: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while queue.has_stream(stream_id):
        assert time.monotonic() < deadline, "window not answered in time"
        time.sleep(0.01)


def test_model_stage_publishes_every_window_and_marks_it_done(loaded, crops) -> None:
    queue = WindowQueue(16, 30.0)
    sink = Sink()
    metrics = Metrics()
    stage = ModelStage(EngineWindows(_answerer(loaded)), queue, sink, metrics, batch_wait_s=0.0)
    stage.start()
    for track_id in (1, 2, 3):
        queue.put(_job(crops, track_id=track_id))
    _answered(queue, "cam")
    assert sorted((e.track_id, e.task) for e in sink.events) == sorted(
        (track_id, task) for track_id in (1, 2, 3) for task in ALL
    )
    assert metrics.registry.get_sample_value("facestream_events_total", {"task": "emotion"}) == 3
    stage.stop()
    stage.join(10)
    assert not stage.is_alive()


def test_static_tasks_are_asked_once_per_person_then_on_a_better_crop_or_after_the_interval(
    loaded, crops
) -> None:
    queue = WindowQueue(16, 30.0)
    sink = Sink()
    policy = StaticTaskPolicy(quality_margin=0.15, refresh_interval_s=10.0)
    stage = ModelStage(
        EngineWindows(_answerer(loaded)),
        queue,
        sink,
        Metrics(),
        batch_wait_s=0.0,
        static_tasks=policy,
    )
    stage.start()
    # (window end in stream seconds, best-crop quality) of one person's successive windows
    windows = [(2.5, 0.5), (4.5, 0.55), (6.5, 0.9), (8.5, 0.9), (16.5, 0.5), (18.5, 0.5)]
    asked = []
    for end_s, quality in windows:
        queue.put(_job(crops, end_s=end_s, quality=quality))
        _answered(queue, "cam")
        asked.append(sink.tasks_of(end_s - 2.5))
    assert asked == [set(ALL), DYNAMIC, set(ALL), DYNAMIC, set(ALL), DYNAMIC]

    # another person of the same stream is asked in full
    queue.put(_job(crops, track_id=2, end_s=18.5))
    _answered(queue, "cam")
    assert {e.task for e in sink.events if e.track_id == 2} == set(ALL)

    # the stream stopped and restarted: its track 1 is someone else now
    stage.forget_stream("cam")
    queue.put(_job(crops, end_s=20.5))
    _answered(queue, "cam")
    assert sink.tasks_of(18.0) == set(ALL)
    stage.stop()
    stage.join(10)


def test_a_person_second_window_does_not_ask_static_tasks_still_being_answered(
    loaded, crops
) -> None:
    queue = WindowQueue(16, 30.0)
    windows = EngineWindows(_answerer(loaded, ignore_eos=True))
    policy = StaticTaskPolicy(quality_margin=0.15, refresh_interval_s=10.0)
    stage = ModelStage(windows, queue, Sink(), Metrics(), batch_wait_s=0.0, static_tasks=policy)
    first, second = _job(crops, end_s=2.5), _job(crops, end_s=4.5)
    queue.put(first)
    stage._join(queue.take(1, 0.0, 1.0))  # the stage's loop, one turn without its thread
    queue.put(second)
    stage._join(queue.take(1, 0.0, 1.0))
    held = {
        entry.job.request.clip.window.window_end_s: entry.job.tasks
        for entry in windows._in_flight.values()
    }
    assert held == {2.5: ALL, 4.5: (Task.EMOTION, Task.ACTION_UNITS)}


def test_a_window_the_engine_refuses_is_dropped_once_and_the_others_are_answered(
    loaded, crops
) -> None:
    clip, image = crops
    bad = _job((clip, image[..., :2]), track_id=1)  # a 2-channel image: refused after its clip
    good = _job(crops, track_id=2)
    queue = WindowQueue(16, 30.0)
    sink = Sink()
    windows = EngineWindows(_answerer(loaded))
    stage = ModelStage(windows, queue, sink, Metrics(), batch_wait_s=0.0)
    queue.put(bad)
    queue.put(good)
    stage.start()
    _answered(queue, "cam")
    deadline = time.monotonic() + 30
    while windows.busy:  # the refused window's clip still runs out in the engine
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert {e.track_id for e in sink.events} == {2}
    assert queue.drops["model_error"] == 1
    assert not queue.has_stream("cam")
    stage.stop()
    stage.join(10)


def test_stopped_streams_leave_nothing_behind_when_static_tasks_are_off() -> None:
    stage = ModelStage(None, WindowQueue(4, 30.0), Sink(), Metrics(), batch_wait_s=0.0)  # type: ignore[arg-type]
    for n in range(1000):
        stage.forget_stream(f"cam-{n}")
    assert stage._forgotten.empty(), "no policy: nothing to forget, nothing kept"
