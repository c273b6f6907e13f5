"""Event identity and where events go: sessions, the key layout, labels, stop reasons,
counters and thumbnails. Real redis-server; the answerer runs the tiny Face-LLaVA."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
import redis

from ingest.requests import ClipRequest, ImageRequest, WindowInfo
from ingest.windows import WindowRequests
from models.facellava.answers import Task
from tests.services.redis_server import RedisServer
from tests.test_publisher import make_event, settings_for
from worker.admission import Admission
from worker.desired import same_run
from worker.events import FaceEvent, event_id_for
from worker.intake import StreamRecord, StreamTable
from worker.metrics import Metrics
from worker.publisher import EventPublisher
from worker.redis_keys import RedisKeys
from worker.scheduler import WindowJob, WindowQueue
from worker.sessions import session_for
from worker.settings import Settings
from worker.specs import StreamSpec
from worker.status import StreamState, StreamStatus
from worker.thumbnails import THUMBNAIL_MAX_PX, encode_thumbnail, is_thumbnail
from worker.watcher import WatcherState, WatcherStatus

pytestmark = pytest.mark.timeout(120)


def _spec(url: str, stream_id: str = "cam-1", **fields: object) -> StreamSpec:
    return StreamSpec(stream_id=stream_id, url=url, **fields)


# -- sessions ---------------------------------------------------------------------------------


def test_finite_session_is_the_same_on_every_worker_and_new_for_another_record() -> None:
    settings = Settings(source={"allow_file": True})
    spec = _spec("/videos/clip.mp4").from_record("facestream.streams", 2, 41)
    on_first = StreamRecord.running(spec, settings)
    on_failover_owner = StreamRecord.running(spec.model_copy(), settings)
    assert not on_first.source.is_live
    assert on_first.session == on_failover_owner.session, "a replay must give the same ids"
    resubmitted = _spec("/videos/clip.mp4").from_record("facestream.streams", 2, 97)
    assert StreamRecord.running(resubmitted, settings).session != on_first.session


def test_live_session_is_new_at_every_start_of_the_same_record() -> None:
    settings = Settings()
    spec = _spec("rtsp://camera.example/live").from_record("facestream.streams", 0, 7)
    sessions = {StreamRecord.running(spec, settings).session for _ in range(50)}
    assert len(sessions) == 50
    assert all(s.startswith(session_for(spec, live=False, nonce="")) for s in sessions)


def test_event_ids_of_two_sessions_never_collide_for_the_same_window() -> None:
    a = event_id_for("lobby", 1, 0.0, "emotion", session="s-a")
    b = event_id_for("lobby", 1, 0.0, "emotion", session="s-b")
    assert a != b
    assert a == event_id_for("lobby", 1, 0.0, "emotion", session="s-a")


def test_identified_event_takes_its_id_from_its_own_session_window_and_task() -> None:
    fields = {
        "stream_id": "cam",
        "session": "run-7",
        "track_id": 3,
        "task": Task.AGE,
        "result": None,
        "answer_text": "about 30",
        "window_start_s": 12.5,
        "window_end_s": 15.0,
        "wall_time_s": 1.0,
        "frame_wall_time_s": 1.0,
        "box_xyxy": (0.0, 0.0, 10.0, 10.0),
        "detector_score": 0.9,
        "model_id": "m",
        "worker_id": "w",
    }
    event = FaceEvent.identified(**fields)
    assert event.event_id == event_id_for("cam", 3, 12.5, "age", session="run-7")
    assert FaceEvent.identified(**{**fields, "session": "run-8"}).event_id != event.event_id


def test_repeated_assignment_value_keeps_the_record_that_started_the_run() -> None:
    first = _spec("rtsp://cam/a").from_record("t", 0, 3)
    again = _spec("rtsp://cam/a").from_record("t", 0, 9)
    changed = _spec("rtsp://cam/a", detection_fps=2.0).from_record("t", 0, 12)
    assert first == again, "the origin is no part of equality"
    assert same_run(first, again) is first
    assert same_run(first, changed) is changed
    assert same_run(None, again) is again
    assert same_run(first, None) is None


def test_window_job_carries_session_and_labels_from_the_stream_record() -> None:
    from worker.detection import DetectionStage

    settings = Settings()
    spec = _spec("rtsp://camera.example/live", labels={"site": "hq", "floor": "2"})
    record = StreamRecord.running(spec, settings)
    streams, queue = StreamTable(), WindowQueue(8, 30.0)
    streams.put(record)
    admission = Admission.from_settings(settings.scheduler)
    stage = DetectionStage.from_settings(
        settings,
        None,  # type: ignore[arg-type]
        streams,
        queue,
        Metrics(),
        wake=None,  # type: ignore[arg-type]
        admission=admission,
    )
    stage.enqueue(record, [_window_requests("cam-1", 3)])
    (job,) = queue.take(1, 0.0, 0.1)
    assert job.session == record.session and job.session
    assert dict(job.labels) == {"site": "hq", "floor": "2"}


# -- key layout -------------------------------------------------------------------------------

NEIGHBOURS = ["lobby", "lobby:2", "lobby:2:x", "lobb", "lobby-2", "lobby.", "l"]


def test_scan_for_one_stream_never_returns_another_streams_keys(
    redis_server: RedisServer,
) -> None:
    settings = settings_for(redis_server.url, thumbnails=True)
    keys = RedisKeys(settings.prefix)
    jpeg = encode_thumbnail(np.full((64, 64, 3), 128, np.uint8))
    with EventPublisher(settings) as publisher:
        for n, stream_id in enumerate(NEIGHBOURS):
            for track_id in (1, 2):
                event = make_event(float(n), stream_id=stream_id, track_id=track_id)
                publisher.publish(event.with_thumbnail(jpeg))
            publisher.update_status(StreamStatus(stream_id, StreamState.RUNNING, "w", time.time()))
        assert publisher.flush(5)
    client = redis_server.client()
    for stream_id in NEIGHBOURS:
        people = set(client.scan_iter(match=keys.person_pattern(stream_id), count=1000))
        assert people == {keys.person(stream_id, "s1", t) for t in (1, 2)}, stream_id
        for key in people:
            assert client.hget(key, "stream_id") == stream_id
        thumbs = keys.thumbnail(stream_id, "*", 0)[: -len(":*:0")] + ":*"
        assert set(client.scan_iter(match=thumbs, count=1000)) == {
            keys.thumbnail(stream_id, "s1", t) for t in (1, 2)
        }
        assert client.hget(keys.stream(stream_id), "stream_id") == stream_id
    every_person = set(client.scan_iter(match=keys.person_pattern(), count=1000))
    assert len(every_person) == 2 * len(NEIGHBOURS)


def test_people_of_two_sessions_with_the_same_track_id_stay_apart(
    redis_server: RedisServer,
) -> None:
    settings = settings_for(redis_server.url)
    first = make_event(0.0, session="run-1", labels={"v": "1"})
    second = make_event(0.0, session="run-2", labels={"v": "2"})
    with EventPublisher(settings) as publisher:
        publisher.publish(first)
        publisher.publish(second)
        assert publisher.flush(5)
        assert publisher.stats().published == 2, "the same window in a new session is new"
    client = redis_server.client()
    keys = RedisKeys(settings.prefix)
    for event in (first, second):
        person = client.hgetall(keys.person("cam-1", event.session, 7))
        assert person["session"] == event.session
        assert json.loads(person["labels"]) == event.labels
        assert FaceEvent.model_validate_json(person["emotion"]) == event


# -- thumbnails -------------------------------------------------------------------------------


def test_no_face_image_is_stored_by_default(redis_server: RedisServer) -> None:
    settings = settings_for(redis_server.url)
    assert settings.thumbnails is False
    jpeg = encode_thumbnail(np.zeros((256, 256, 3), np.uint8))
    with EventPublisher(settings) as publisher:
        publisher.publish(make_event(0.0).with_thumbnail(jpeg))
        assert publisher.flush(5)
    client = redis_server.client()
    assert list(client.scan_iter(match="fs-test:thumb:*")) == []
    assert not any(jpeg in v for v in _all_values(redis_server))


def test_thumbnail_is_a_small_jpeg_that_lives_as_long_as_the_person(
    redis_server: RedisServer,
) -> None:
    settings = settings_for(redis_server.url, thumbnails=True, person_ttl_s=20)
    crop = np.zeros((256, 256, 3), np.uint8)
    cv2.circle(crop, (128, 128), 90, (230, 180, 150), -1)
    jpeg = encode_thumbnail(crop)
    with EventPublisher(settings) as publisher:
        publisher.publish(make_event(0.0).with_thumbnail(jpeg))
        publisher.publish(make_event(2.0, task=Task.AGE))  # no thumbnail: keeps it alive
        assert publisher.flush(5)
    client = redis.Redis.from_url(redis_server.url)  # bytes, not text
    key = RedisKeys(settings.prefix).thumbnail("cam-1", "s1", 7)
    stored = client.get(key)
    assert stored == jpeg and is_thumbnail(stored)
    image = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_COLOR)
    assert max(image.shape[:2]) == THUMBNAIL_MAX_PX
    person_key = RedisKeys(settings.prefix).person("cam-1", "s1", 7)
    assert 0 < client.ttl(key) <= 20 and abs(client.ttl(key) - client.ttl(person_key)) <= 1


def _all_values(redis_server: RedisServer) -> list[bytes]:
    client = redis.Redis.from_url(redis_server.url)
    values: list[bytes] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            values.append(client.get(key))
        elif kind == b"hash":
            values.extend(client.hgetall(key).values())
    return values


# -- counters ---------------------------------------------------------------------------------


def test_duplicates_and_truncated_answers_are_exported_as_counters(
    redis_server: RedisServer,
) -> None:
    metrics = Metrics()
    status = WatcherStatus(WatcherState.LIVE, (), (), 0, 0, 0, 0, 0, 0, 0, None)
    with EventPublisher(settings_for(redis_server.url)) as publisher:
        metrics.collect_stages(StreamTable(), WindowQueue(4, 30.0), publisher, lambda: status)
        cut = make_event(0.0, stop_reason="length")
        for event in (cut, make_event(1.0), cut, cut):  # a replay of `cut`, twice
            publisher.publish(event)
        assert publisher.flush(5)

        def sample(name: str) -> float | None:
            return metrics.registry.get_sample_value(name)

        assert sample("facestream_events_published_total") == 2
        assert sample("facestream_events_deduplicated_total") == 2
        assert sample("facestream_answers_truncated_total") == 3
    assert sample("facestream_kafka_events_sent_total") is None, "no events topic: no series"


# -- the answerer builds complete events ------------------------------------------------------


def _window_requests(stream_id: str, track_id: int, seed: int = 0) -> WindowRequests:
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 255, (8, 256, 256, 3), dtype=np.uint8)
    info = WindowInfo(stream_id, track_id, 4.0, 6.5, time.time(), (10.0, 20.0, 90.0, 120.0), 0.97)
    return WindowRequests(
        clip=ClipRequest(
            window=info, crops_rgb=crops, frame_pts_s=tuple(4.0 + i * 0.3 for i in range(8))
        ),
        image=ImageRequest(window=info, crop_rgb=crops[3], frame_pts_s=4.9, quality=1.0),
    )


def test_answerer_events_carry_session_labels_stop_reason_and_one_thumbnail(loaded) -> None:
    from models.facellava.engine import GenerationEngine
    from worker.answering import FaceAnswerer

    engine = GenerationEngine(
        loaded.model, loaded.tokenizer, eos_token_id=loaded.eos_token_id, max_new_tokens=6
    )
    answerer = FaceAnswerer(engine, "tiny", "w-1", thumbnails=True)
    job = WindowJob(
        _window_requests("lobby:2", 5),
        (Task.EMOTION, Task.AGE),
        session="abc123-def456",
        labels={"site": "hq"},
    )
    events = answerer.answer([job])
    assert {e.task for e in events} == {"emotion", "age"}
    for event in events:
        assert event.session == "abc123-def456"
        assert event.labels == {"site": "hq"}
        assert event.stop_reason in ("eos", "length")
        assert event.event_id == event_id_for(
            "lobby:2", 5, 4.0, event.task, session="abc123-def456"
        )
        assert FaceEvent.model_validate_json(event.model_dump_json()) == event
        assert "thumbnail" not in event.model_dump_json()
    thumbnails = [e.thumbnail_jpeg for e in events if e.thumbnail_jpeg is not None]
    assert len(thumbnails) == 1 and is_thumbnail(thumbnails[0])
    without = FaceAnswerer(engine, "tiny", "w-1").answer([job])
    assert all(e.thumbnail_jpeg is None for e in without)


def test_events_written_before_the_new_fields_still_parse() -> None:
    old = make_event(0.0).model_dump()
    for name in ("session", "labels", "stop_reason"):
        old.pop(name)
    event = FaceEvent.model_validate(old)
    assert event.session == "" and event.labels == {} and event.stop_reason is None
