"""`facestream worker` end to end: real Kafka 0.9, real Redis, real RTSP, real RetinaFace
weights, the tiny Face-LLaVA fixture checkpoint (the 7B model needs a GPU), real video.

Workers run as subprocesses (`tests.workers`), exactly as Kubernetes runs them, so
SIGTERM and SIGKILL are real.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from ingest.sources import SourceState
from models.facellava.tasks import Task
from tests.workers import SESSION_TIMEOUT_MS, read_events, stream_status, submit, wait_for
from worker.detection import DETECTOR_FAILURES_IN_ROW
from worker.events import event_id_for
from worker.intake import StreamRecord
from worker.model_stage import MODEL_FAILURES_IN_ROW, ModelStage
from worker.redis_keys import RedisKeys
from worker.scheduler import WindowJob, WindowQueue
from worker.service import SUPERVISOR_STALL_S, Worker
from worker.settings import Settings
from worker.specs import StreamSpec
from worker.static_tasks import Sighting
from worker.status import StreamState, StreamStatus
from worker.watcher import DesiredChange

pytestmark = pytest.mark.timeout(240)

# -- the service's own logic, without services (fast) ---------------------------------------


@pytest.fixture
def bare_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Worker]:
    """A `Worker` that has started nothing: no Kafka, no Redis, no threads."""
    for key in [k for k in os.environ if k.startswith("FACESTREAM_")]:
        monkeypatch.delenv(key)
    worker = Worker(
        Settings(worker_id="w-unit", http={"host": "127.0.0.1", "port": 0}),
        detector_factory=lambda: None,  # type: ignore[arg-type,return-value]
        answerer_factory=lambda: None,  # type: ignore[arg-type,return-value]
    )
    yield worker
    worker.http.stop()


def _record(worker: Worker, stream_id: str = "cam-u") -> StreamRecord:
    spec = StreamSpec(stream_id=stream_id, url="rtsp://camera.example/live")
    record = StreamRecord.running(spec, worker.settings)  # not started: nothing is opened
    worker.streams.put(record)
    return record


def _job(stream_id: str, track_id: int = 1) -> WindowJob:
    window = SimpleNamespace(stream_id=stream_id, track_id=track_id)
    request = SimpleNamespace(
        clip=SimpleNamespace(window=window, crops_rgb=np.zeros((8, 4, 4, 3), np.uint8)),
        image=SimpleNamespace(crop_rgb=np.zeros((4, 4, 3), np.uint8)),
    )
    return WindowJob(request, (Task.EMOTION,))  # type: ignore[arg-type]


def _pending_status(worker: Worker, stream_id: str) -> StreamStatus | None:
    return worker.publisher._pending_status[stream_id]


def _model_stage(worker: Worker, stepper: object) -> ModelStage:
    return ModelStage(
        stepper,  # type: ignore[arg-type]
        worker.queue,
        worker.publisher,
        worker.metrics,
        batch_wait_s=0.0,
    )


class FailingSteps:
    """A model whose every decode step fails: a broken GPU cannot be had here, so this
    stands in for the engine (the stage's own loop and counters are real)."""

    def __init__(self, error: str = "boom") -> None:
        self.error = error
        self.steps = 0
        self.held: list[WindowJob] = []

    @property
    def busy(self) -> bool:
        return bool(self.held)

    def room(self) -> int:
        return 4

    def submit(self, job: WindowJob) -> None:
        self.held.append(job)

    def step(self) -> list:
        self.steps += 1
        raise RuntimeError(self.error)

    def abort(self) -> list[WindowJob]:
        held, self.held = self.held, []
        return held


def _metric(worker: Worker, name: str, **labels: str) -> float | None:
    return worker.metrics.registry.get_sample_value(name, labels)


def test_window_queue_counts_taken_jobs_as_pending_until_done() -> None:
    queue = WindowQueue(8, 30.0)
    queue.put(_job("s1"))
    jobs = queue.take(4, 0.0, 0.1)
    assert len(jobs) == 1 and len(queue) == 0
    assert queue.has_stream("s1"), "a window the model holds is still pending"
    queue.done(jobs)
    assert not queue.has_stream("s1")


def test_invalid_update_of_a_running_stream_keeps_its_error_status(bare_worker) -> None:
    record = _record(bare_worker)
    bare_worker.supervisor.on_invalid("cam-u", "invalid StreamSpec: url: missing")
    bare_worker.supervisor.on_change(DesiredChange(stopped=frozenset({"cam-u"})))
    bare_worker.supervisor.reconcile()  # the watcher dropped the spec: the stream stops
    assert bare_worker.streams.get("cam-u") is None
    status = _pending_status(bare_worker, "cam-u")
    assert status is not None and status.state == StreamState.ERROR
    assert "invalid assignment" in status.error
    assert record.source is not None and record.source._stop.is_set()


def test_a_tick_between_an_invalid_record_and_its_stop_keeps_the_error_status(
    bare_worker,
) -> None:
    record = _record(bare_worker)
    bare_worker.supervisor.on_invalid("cam-u", "invalid StreamSpec: url: missing")
    bare_worker.supervisor.refresh(record)  # the watcher has not handed over the stop yet
    bare_worker.supervisor.on_change(DesiredChange(stopped=frozenset({"cam-u"})))
    bare_worker.supervisor.reconcile()
    status = _pending_status(bare_worker, "cam-u")
    assert status is not None and status.state == StreamState.ERROR
    assert "invalid assignment" in status.error


def test_tombstone_of_a_running_stream_leaves_a_stopped_status_saying_why(bare_worker) -> None:
    _record(bare_worker)
    before_s = time.time()
    bare_worker.supervisor.on_change(DesiredChange(stopped=frozenset({"cam-u"})))
    bare_worker.supervisor.reconcile()
    status = _pending_status(bare_worker, "cam-u")  # kept for the status TTL, not deleted
    assert status is not None and status.state == StreamState.STOPPED
    assert status.updated_s >= before_s and "tombstone" in status.reason
    assert bare_worker.streams.get("cam-u") is None


def test_finite_stream_is_done_only_after_its_last_window_is_answered(bare_worker) -> None:
    record = _record(bare_worker)
    record.source._set_state(SourceState.DONE)  # the source reached its end
    bare_worker.supervisor.refresh(record)
    assert _pending_status(bare_worker, "cam-u").state == StreamState.RUNNING
    record.flushed = True
    bare_worker.queue.put(_job("cam-u"))
    jobs = bare_worker.queue.take(4, 0.0, 0.1)  # the model holds the last window
    bare_worker.supervisor.refresh(record)
    assert _pending_status(bare_worker, "cam-u").state == StreamState.RUNNING
    assert record in bare_worker.streams.active()
    bare_worker.queue.done(jobs)
    bare_worker.supervisor.refresh(record)
    assert _pending_status(bare_worker, "cam-u").state == StreamState.DONE
    assert record not in bare_worker.streams.active()
    assert bare_worker.watcher._tombstones.get_nowait() == "cam-u"


def test_model_loop_marks_a_failed_batch_done(bare_worker) -> None:
    stage = _model_stage(bare_worker, FailingSteps())
    bare_worker.queue.put(_job("cam-u"))
    stage.start()
    deadline = time.monotonic() + 5
    while bare_worker.queue.has_stream("cam-u") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not bare_worker.queue.has_stream("cam-u")
    stage.stop()
    bare_worker.queue.close()
    stage.join(5)
    assert not stage.is_alive()
    assert _metric(bare_worker, "facestream_windows_dropped_total", reason="model_error") == 1


def test_model_loop_survives_a_failed_batch_and_ends_only_after_repeated_failures(
    bare_worker,
) -> None:
    failing = FailingSteps("CUDA error: an illegal memory access was encountered")
    bare_worker.model = _model_stage(bare_worker, failing)
    bare_worker.model.start()  # as run() does: death is logged
    for track_id in range(MODEL_FAILURES_IN_ROW - 1):
        bare_worker.queue.put(_job("cam-m", track_id))
        deadline = time.monotonic() + 5
        while failing.steps <= track_id and time.monotonic() < deadline:
            time.sleep(0.01)
    time.sleep(0.1)
    assert bare_worker.model.is_alive(), "one failed batch must not end the model loop"
    bare_worker.queue.put(_job("cam-m", 999))
    bare_worker.model.join(5)
    assert not bare_worker.model.is_alive(), "repeated failures end the loop so /healthz can say so"
    alive, why = bare_worker._alive()
    assert not alive and "model" in why
    dropped = _metric(bare_worker, "facestream_windows_dropped_total", reason="model_error")
    assert dropped == MODEL_FAILURES_IN_ROW


def test_detector_failure_skips_the_batch_and_only_repeated_failures_end_the_loop(
    bare_worker,
) -> None:
    class Failing:
        def detect(self, images):
            raise RuntimeError("CUDA out of memory")

    bare_worker.build_stages(Failing(), None)  # type: ignore[arg-type]
    record = _record(bare_worker)
    frame = SimpleNamespace(image_bgr=np.zeros((4, 4, 3), np.uint8))
    for _ in range(DETECTOR_FAILURES_IN_ROW - 1):
        bare_worker.detection.detect_and_track([(record, frame)])
    assert record.detector_errors == DETECTOR_FAILURES_IN_ROW - 1
    skipped = _metric(
        bare_worker, "facestream_frames_skipped_total", stream_id="cam-u", reason="detector_error"
    )
    assert skipped == DETECTOR_FAILURES_IN_ROW - 1
    with pytest.raises(RuntimeError):
        bare_worker.detection.detect_and_track([(record, frame)])


def test_windows_of_a_stopped_stream_are_not_queued(bare_worker) -> None:
    bare_worker.build_stages(None, None)  # type: ignore[arg-type]
    record = _record(bare_worker)
    bare_worker.supervisor.stop(record, forget=True)
    bare_worker.detection.enqueue(record, [_job("cam-u").request])  # a moment late
    assert len(bare_worker.queue) == 0
    assert _metric(bare_worker, "facestream_windows_dropped_total", reason="stream_stopped") == 1


def test_stopping_a_stream_makes_the_model_stage_forget_its_people(bare_worker) -> None:
    bare_worker.build_stages(None, None)  # type: ignore[arg-type]
    policy = bare_worker.model._static
    assert policy is not None, "static tasks are on by default"
    policy.mark_answered(Sighting("cam-u", 1, 0.5, 0.0), (Task.AGE,))
    assert policy.tasks_for(Sighting("cam-u", 1, 0.5, 2.0), (Task.AGE,)) == ()
    bare_worker.supervisor.stop(_record(bare_worker), forget=False)
    bare_worker.model._apply_forgotten()  # what the model thread does before its next windows
    assert policy.tasks_for(Sighting("cam-u", 1, 0.5, 2.0), (Task.AGE,)) == (Task.AGE,)


def test_source_drops_and_pipeline_counters_reach_metrics_and_vanish_with_the_stream(
    bare_worker,
) -> None:
    record = _record(bare_worker)
    record.source._count("frames_dropped", 3)
    record.source._count("decode_errors", 2)
    record.pipeline.stats.faces_over_max = 4
    record.pipeline.stats.crops_evicted = 5
    labels = {"stream_id": "cam-u"}
    assert (
        _metric(bare_worker, "facestream_frames_skipped_total", reason="detector_busy", **labels)
        == 3
    )
    assert _metric(bare_worker, "facestream_decode_errors_total", **labels) == 2
    assert _metric(bare_worker, "facestream_faces_over_max_total", **labels) == 4
    assert _metric(bare_worker, "facestream_crops_evicted_total", **labels) == 5
    bare_worker.supervisor.stop(record, forget=True)
    assert _metric(bare_worker, "facestream_decode_errors_total", **labels) is None


def test_healthz_reports_a_stuck_supervisor(bare_worker) -> None:
    bare_worker._models_loaded.set()
    bare_worker.supervisor.last_tick_s = time.monotonic() - SUPERVISOR_STALL_S - 1
    ok, why = bare_worker._alive()
    assert not ok and "supervisor" in why


def test_signal_while_loading_models_exits_zero_at_once(
    bare_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    handlers: dict[int, Callable] = {}
    monkeypatch.setattr(signal, "signal", lambda signum, h: handlers.__setitem__(signum, h))
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    bare_worker.install_signal_handlers()
    with pytest.raises(SystemExit):
        handlers[signal.SIGTERM](signal.SIGTERM, None)
    assert exits == [0]
    bare_worker._models_loaded.set()
    handlers[signal.SIGTERM](signal.SIGTERM, None)  # graceful: no exit yet
    assert exits == [0] and bare_worker._stop_requested.is_set()
    with pytest.raises(SystemExit):
        handlers[signal.SIGTERM](signal.SIGTERM, None)
    assert exits == [0, 1]


# -- end to end ----------------------------------------------------------------------------


def test_submitted_camera_yields_complete_events_person_hash_and_status(
    ready_worker, worker_env, rtsp_server, worker_output
) -> None:
    prefix, client = worker_output
    worker = ready_worker("w1")
    secret_url = rtsp_server.url_with_credentials("admin", "s3cr3t-pw")
    submit(worker_env, secret_url, "cam-1", "--tasks", "emotion,age")

    events = wait_for(
        lambda: (lambda evs: evs if {e.task for e in evs} >= {"emotion", "age"} else None)(
            read_events(client, prefix)
        ),
        150,
        "emotion and age events",
    )
    for event in events:
        assert event.stream_id == "cam-1"
        assert event.worker_id == "w1"
        assert event.model_id == worker_env["FACESTREAM_MODEL__MODEL"]
        assert event.event_id == event_id_for(
            "cam-1", event.track_id, event.window_start_s, event.task, session=event.session
        )
        assert event.session and event.stop_reason in ("eos", "length")
        assert 0 < event.window_end_s - event.window_start_s <= 2.5 + 0.01
        x1, y1, x2, y2 = event.box_xyxy
        assert 0 <= x1 < x2 <= 640 + 1 and 0 <= y1 < y2 <= 360 + 1
        assert event.detector_score >= 0.5
        assert event.answer_text  # the tiny model's text is noise, but there is one
        assert event.wall_time_s >= event.frame_wall_time_s
    first = events[0]
    person_key = RedisKeys(prefix).person("cam-1", first.session, first.track_id)
    person = client.hgetall(person_key)
    assert person, "person hash missing"
    assert 0 < client.ttl(person_key) <= 30

    status = wait_for(
        lambda: (s := stream_status(client, prefix, "cam-1")).get("state") == "running" and s,
        30,
        "running status",
    )
    assert status["worker_id"] == "w1"
    assert float(status["fps"]) > 0
    assert "s3cr3t-pw" not in status["url"]

    code, metrics = worker.get("/metrics")
    assert code == 200
    assert 'facestream_frames_decoded_total{stream_id="cam-1"}' in metrics
    assert "facestream_frame_to_event_seconds_count" in metrics
    assert worker.get("/healthz")[0] == 200

    every_value = json.dumps(
        [
            str(v)
            for k in client.keys(f"{prefix}:*")
            if client.type(k) == "hash"
            for v in client.hgetall(k).values()
        ]
    )
    assert "s3cr3t-pw" not in every_value
    assert "s3cr3t-pw" not in worker.logs()


def test_sigterm_exits_zero_within_grace_with_only_whole_events(
    ready_worker, worker_env, rtsp_server, worker_output
) -> None:
    prefix, client = worker_output
    worker = ready_worker("w1")
    submit(worker_env, rtsp_server.url, "cam-term", "--tasks", "emotion")
    wait_for(lambda: read_events(client, prefix), 150, "a first event")

    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    code = worker.process.wait(timeout=float(worker_env["FACESTREAM_GRACE_S"]) + 10)
    elapsed = time.monotonic() - started
    assert code == 0, worker.logs()[-3000:]
    assert elapsed <= float(worker_env["FACESTREAM_GRACE_S"]) + 5
    events = read_events(client, prefix)  # every entry parses: nothing half-written
    assert len({e.event_id for e in events}) == len(events)
    assert '"stopped"' in worker.logs()


def _ids_on_distinct_partitions(count: int, partitions: int) -> list[str]:
    from kafka.partitioner.default import murmur2

    chosen: dict[int, str] = {}
    i = 0
    while len(chosen) < count:
        stream_id = f"cam-{i}"
        part = (murmur2(stream_id.encode()) & 0x7FFFFFFF) % partitions
        chosen.setdefault(part, stream_id)
        i += 1
    return list(chosen.values())


def test_streams_move_to_survivor_when_worker_is_killed_without_duplicate_events(
    start_worker, worker_env, rtsp_server_factory, hamilton_mp4, worker_output
) -> None:
    prefix, client = worker_output
    w1 = start_worker("w1")
    w2 = start_worker("w2")
    w1.wait_ready()
    w2.wait_ready()
    stream_ids = _ids_on_distinct_partitions(4, 4)
    for stream_id in stream_ids:
        server = rtsp_server_factory(hamilton_mp4, mount=f"/{stream_id}")
        submit(worker_env, server.url, stream_id, "--tasks", "emotion")

    def owners() -> dict[str, str]:
        return {s: stream_status(client, prefix, s).get("worker_id", "") for s in stream_ids}

    split = wait_for(
        lambda: (o := owners()) and set(o.values()) == {"w1", "w2"} and o, 90, "a split"
    )
    assert set(split) == set(stream_ids)
    wait_for(lambda: len(read_events(client, prefix)) >= 2, 150, "events from the split workers")

    w1.process.send_signal(signal.SIGKILL)
    w1.process.wait(10)
    killed_at = time.monotonic()

    def moved() -> bool:
        return all(
            (st := stream_status(client, prefix, s)).get("worker_id") == "w2"
            and st.get("state") in ("starting", "running")
            for s in stream_ids
        )

    wait_for(moved, SESSION_TIMEOUT_MS / 1000 + 30, "every stream running on w2")
    moved_after_s = time.monotonic() - killed_at
    assert moved_after_s <= SESSION_TIMEOUT_MS / 1000 + 30

    count_at_move = len(read_events(client, prefix))
    wait_for(lambda: len(read_events(client, prefix)) > count_at_move, 150, "events after the move")
    ids = [e.event_id for e in read_events(client, prefix)]
    assert len(ids) == len(set(ids)), "an event id appears twice"


def test_hostile_urls_are_refused_with_error_status_and_nothing_opened(
    ready_worker, worker_env, kafka_topics, worker_output
) -> None:
    prefix, client = worker_output
    worker = ready_worker("w1")
    hostile = {
        "h-file": "file:///etc/passwd",
        "h-concat": "concat:/etc/passwd|/etc/hosts",
        "h-data": "data:text/plain;base64,AAAA",
        "h-subfile": "subfile,,start,0,end,10,,:/etc/passwd",
        "h-local": "/etc/passwd",
        "h-gopher": "gopher://127.0.0.1/x",
    }
    records = [
        (sid, json.dumps({"schema_version": 1, "stream_id": sid, "url": url}))
        for sid, url in hostile.items()
    ]
    kafka_topics.broker.produce(kafka_topics.topic, records)

    def all_errors() -> bool:
        return all(stream_status(client, prefix, s).get("state") == "error" for s in hostile)

    wait_for(all_errors, 60, "error status for every hostile spec")
    for sid in hostile:
        assert stream_status(client, prefix, sid)["error"]
    dlq = kafka_topics.broker.consume(kafka_topics.dlq_topic, min_count=len(hostile))
    assert len(dlq) >= len(hostile)
    logs = worker.logs()
    assert '"stream started"' not in logs
    assert worker.process.poll() is None


def test_file_that_ends_is_marked_done_and_tombstoned(
    ready_worker, worker_env, kafka_topics, worker_output, testdata
) -> None:
    prefix, client = worker_output
    worker = ready_worker("w1", FACESTREAM_SOURCE__ALLOW_FILE="true")
    clip = testdata / "videos" / "facellava_facial_expr_example_2.mp4"
    submit(worker_env, str(clip), "vod-1", "--tasks", "emotion,age", "--allow-file")

    wait_for(lambda: stream_status(client, prefix, "vod-1").get("state") == "done", 120, "done")
    events = read_events(client, prefix)
    assert {e.task for e in events} >= {"emotion", "age"}
    assert all(e.stream_id == "vod-1" for e in events)

    def tombstoned() -> bool:
        records = kafka_topics.broker.consume(kafka_topics.topic, min_count=2, timeout_s=5)
        return any(r.key in (b"vod-1", "vod-1") and r.value is None for r in records)

    wait_for(tombstoned, 60, "a tombstone for the finished file")
    assert worker.process.poll() is None


def test_worker_survives_redis_outage_and_events_resume(
    ready_worker, worker_env, rtsp_server, redis_server
) -> None:
    prefix = worker_env["FACESTREAM_REDIS__PREFIX"]
    worker = ready_worker("w1", FACESTREAM_REDIS__BUFFER_MAX_EVENTS="50")
    submit(worker_env, rtsp_server.url, "cam-r", "--tasks", "emotion")
    client = redis_server.client()
    wait_for(lambda: read_events(client, prefix), 150, "a first event")

    redis_server.stop()
    time.sleep(10)
    assert worker.process.poll() is None, "worker died while Redis was down"
    assert worker.get("/healthz")[0] == 200
    redis_server.start()
    client = redis_server.client()  # the test Redis keeps nothing on disk: starts empty

    wait_for(lambda: read_events(client, prefix), 120, "events after Redis came back")
    _code, metrics = worker.get("/metrics")
    high_water_line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("facestream_redis_buffer_high_water ")
    )
    assert 0 < float(high_water_line.split()[1]) <= 50, "events were not buffered within bound"
    errors_line = next(
        line for line in metrics.splitlines() if line.startswith("facestream_redis_errors ")
    )
    assert float(errors_line.split()[1]) > 0, "the outage was not noticed"
    assert worker.process.poll() is None


def test_worker_survives_200_malformed_records_and_sends_each_to_the_dlq(
    ready_worker, worker_env, kafka_topics, worker_output
) -> None:
    from tests.test_assignments import malformed_record

    prefix, client = worker_output
    worker = ready_worker("w1")
    rng = random.Random(26112026)
    records = [malformed_record(rng, i) for i in range(200)]
    kafka_topics.broker.produce(kafka_topics.topic, records)

    dlq = kafka_topics.broker.consume(kafka_topics.dlq_topic, min_count=200, timeout_s=60)
    assert len(dlq) == 200
    assert all(json.loads(r.value)["error"] for r in dlq)
    assert worker.process.poll() is None
    assert worker.get("/healthz")[0] == 200
    # Records whose key is a usable stream id get an error status that says why.
    wait_for(lambda: stream_status(client, prefix, "bad-1").get("state") == "error", 30, "status")
    assert "invalid assignment" in stream_status(client, prefix, "bad-1")["error"]
    assert '"stream started"' not in worker.logs()
