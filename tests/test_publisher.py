"""`EventPublisher` against a real redis-server: stream, live channel, person hash, dedup,
MAXLEN, outages, and stream status."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
from structlog.testing import capture_logs

from models.facellava.answers import (
    ActionUnit,
    ActionUnitsResult,
    AgeResult,
    EmotionResult,
    Task,
)
from tests.services.redis_server import RedisServer, free_port
from worker.events import FaceEvent, event_id_for
from worker.publisher import EventPublisher, PublisherDiedError
from worker.redis_keys import RedisKeys
from worker.settings import RedisSettings
from worker.status import StreamState, StreamStatus, StreamStatusReader

pytestmark = [pytest.mark.services, pytest.mark.timeout(60)]


def make_event(
    window_start_s: float,
    *,
    stream_id: str = "cam-1",
    track_id: int = 7,
    task: Task = Task.EMOTION,
    worker_id: str = "worker-a",
    session: str = "s1",
    labels: dict[str, str] | None = None,
    stop_reason: str = "eos",
) -> FaceEvent:
    """A realistic event whose id follows `event_id_for`."""
    results = {
        Task.EMOTION: EmotionResult(label="happy", matched_text="happiness"),
        Task.AGE: AgeResult(years=31.5, range_years=(28.0, 35.0)),
        Task.ACTION_UNITS: ActionUnitsResult(
            units=[
                ActionUnit(number=6, name="cheek raiser"),
                ActionUnit(number=12, name="lip corner puller"),
            ]
        ),
    }
    return FaceEvent(
        event_id=event_id_for(stream_id, track_id, window_start_s, str(task), session=session),
        stream_id=stream_id,
        session=session,
        track_id=track_id,
        task=task,
        result=results.get(task),
        answer_text="The person looks happy, with a broad smile.",
        window_start_s=window_start_s,
        window_end_s=window_start_s + 1.6,
        wall_time_s=1_764_000_000.123456 + window_start_s,
        frame_wall_time_s=1_764_000_000.1 + window_start_s,
        box_xyxy=(10.25, 20.5, 110.75, 140.0),
        detector_score=0.987654321,
        model_id="chaubeyG/FaceLLaVA",
        worker_id=worker_id,
        labels=labels if labels is not None else {"site": "hq"},
        stop_reason=stop_reason,
    )


def settings_for(server_url: str, **overrides: object) -> RedisSettings:
    base: dict[str, object] = {
        "url": server_url,
        "prefix": "fs-test",
        "retry_initial_s": 0.05,
        "retry_max_s": 0.5,
    }
    return RedisSettings(**{**base, **overrides})


def stream_events(client, key: str) -> list[FaceEvent]:
    return [FaceEvent.model_validate_json(fields["event"]) for _id, fields in client.xrange(key)]


def test_event_lands_in_stream_with_every_field_equal_after_json_round_trip(
    redis_server: RedisServer,
) -> None:
    events = [
        make_event(0.0),
        make_event(0.0, task=Task.AGE),
        make_event(0.8, task=Task.ACTION_UNITS),
    ]
    with EventPublisher(settings_for(redis_server.url)) as publisher:
        for event in events:
            publisher.publish(event)
        assert publisher.flush(timeout_s=5)
        stats = publisher.stats()
    client = redis_server.client()
    entries = client.xrange("fs-test:events")
    assert [FaceEvent.model_validate_json(fields["event"]) for _id, fields in entries] == events
    first = entries[0][1]
    assert first["stream_id"] == "cam-1"
    assert first["track_id"] == "7"
    assert first["task"] == "emotion"
    assert first["event_id"] == events[0].event_id
    assert first["session"] == "s1"
    assert stats.published == 3
    assert stats.duplicates_suppressed == 0
    assert stats.dropped == 0
    assert stats.redis_up is True


def test_person_hash_holds_latest_result_per_task_and_expires(redis_server: RedisServer) -> None:
    older = make_event(0.0)
    newer = make_event(2.0)
    age = make_event(1.0, task=Task.AGE)
    with EventPublisher(settings_for(redis_server.url, person_ttl_s=30)) as publisher:
        # The newer emotion window is published first: the older one must not overwrite it.
        for event in (newer, age, older):
            publisher.publish(event)
        assert publisher.flush(timeout_s=5)
    client = redis_server.client()
    person = client.hgetall("fs-test:person:{cam-1}:s1:7")
    assert FaceEvent.model_validate_json(person["emotion"]) == newer
    assert FaceEvent.model_validate_json(person["age"]) == age
    assert float(person["last_seen_s"]) == newer.frame_wall_time_s
    assert person["stream_id"] == "cam-1"
    assert person["track_id"] == "7"
    assert person["session"] == "s1"
    assert json.loads(person["labels"]) == {"site": "hq"}
    assert 0 < client.ttl("fs-test:person:{cam-1}:s1:7") <= 30


def test_live_channel_receives_each_new_event(redis_server: RedisServer) -> None:
    client = redis_server.client()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("fs-test:live")
    pubsub.get_message(timeout=1.0)  # consume the subscribe confirmation
    event = make_event(3.2)
    with EventPublisher(settings_for(redis_server.url)) as publisher:
        publisher.publish(event)
        assert publisher.flush(timeout_s=5)
    message = pubsub.get_message(timeout=5.0)
    assert message is not None
    assert FaceEvent.model_validate_json(message["data"]) == event
    pubsub.close()


def test_duplicate_event_id_is_published_once(redis_server: RedisServer) -> None:
    event = make_event(4.0)
    with EventPublisher(settings_for(redis_server.url)) as publisher:
        publisher.publish(event)
        publisher.publish(event)
        assert publisher.flush(timeout_s=5)
        publisher.publish(event)  # again in a later round trip
        assert publisher.flush(timeout_s=5)
        stats = publisher.stats()
    assert redis_server.client().xlen("fs-test:events") == 1
    assert stats.published == 1
    assert stats.duplicates_suppressed == 2


def test_two_workers_publishing_the_same_events_write_each_once(redis_server: RedisServer) -> None:
    events = [make_event(i * 0.8, track_id=i % 3) for i in range(200)]
    workers = [
        EventPublisher(settings_for(redis_server.url), thread_name=f"pub-{name}").start()
        for name in ("a", "b")
    ]

    def publish_all(publisher: EventPublisher) -> None:
        for event in events:
            publisher.publish(event)

    threads = [threading.Thread(target=publish_all, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for worker in workers:
        assert worker.flush(timeout_s=10)
        worker.stop()
    stats = [w.stats() for w in workers]
    written = stream_events(redis_server.client(), "fs-test:events")
    assert sorted(e.event_id for e in written) == sorted(e.event_id for e in events)
    assert sum(s.published for s in stats) == len(events)
    assert sum(s.duplicates_suppressed for s in stats) == len(events)


def test_events_stream_is_capped_approximately_at_maxlen(redis_server: RedisServer) -> None:
    with EventPublisher(settings_for(redis_server.url, events_maxlen=100)) as publisher:
        for i in range(1000):
            publisher.publish(make_event(i * 0.5))
        assert publisher.flush(timeout_s=10)
    length = redis_server.client().xlen("fs-test:events")
    # `MAXLEN ~` trims whole radix-tree nodes (100 entries by default): never below the cap.
    assert 100 <= length <= 200


def test_publisher_survives_redis_outage_and_delivers_buffered_events(
    redis_server: RedisServer,
) -> None:
    buffer_max = 50
    settings = settings_for(redis_server.url, buffer_max_events=buffer_max, retry_max_s=1.0)
    client = redis_server.client()
    with capture_logs() as logs:
        publisher = EventPublisher(settings, socket_timeout_s=1.0).start()
        try:
            before = [make_event(i * 0.8) for i in range(5)]
            for event in before:
                publisher.publish(event)
            assert publisher.flush(timeout_s=5)

            redis_server.stop()
            outage_end = time.monotonic() + 10.0
            during = [make_event(100 + i * 0.8) for i in range(70)]
            slowest_publish_s = 0.0
            high_water = 0
            for i, event in enumerate(during):
                started = time.perf_counter()
                publisher.publish(event)
                slowest_publish_s = max(slowest_publish_s, time.perf_counter() - started)
                high_water = max(high_water, publisher.stats().buffered)
                if i < 30:  # spread the first 30 over the outage, then a burst beyond the bound
                    time.sleep(0.3)
            publisher.update_status(
                StreamStatus("cam-1", StreamState.RECONNECTING, "worker-a", updated_s=time.time())
            )
            publisher.update_status(
                StreamStatus(
                    "cam-1", StreamState.RUNNING, "worker-a", updated_s=time.time(), fps=5.0
                )
            )
            time.sleep(max(0.0, outage_end - time.monotonic()))
            assert publisher.is_alive()
            assert publisher.flush(timeout_s=0.2) is False
            outage_stats = publisher.stats()
            assert outage_stats.redis_up is False
            assert outage_stats.redis_errors >= 3  # it kept retrying
            assert outage_stats.buffered == buffer_max
            assert outage_stats.dropped == len(during) - buffer_max

            redis_server.start()
            assert publisher.flush(timeout_s=10)
            stats = publisher.stats()
        finally:
            publisher.stop()
    assert slowest_publish_s < 0.05
    assert high_water <= buffer_max
    assert stats.buffered_high_water <= buffer_max
    assert stats.redis_up is True
    # The restarted server is empty: it holds what was buffered, the newest `buffer_max`.
    written = stream_events(client, "fs-test:events")
    assert written == during[-buffer_max:]
    assert stats.published == len(before) + buffer_max
    assert stats.dropped == len(during) - buffer_max
    status = StreamStatusReader(client, publisher.keys).get("cam-1")
    assert status is not None
    assert status.state is StreamState.RUNNING  # the latest status won
    assert status.fps == 5.0
    # One log line per state change, not one per failed retry or per event.
    events_logged = [entry["event"] for entry in logs]
    assert events_logged.count("redis.unreachable") == 1
    assert events_logged.count("redis.reconnected") == 1


def test_unreachable_redis_at_start_does_not_crash_and_delivers_when_it_appears(
    tmp_path,
) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    server = RedisServer(binary, tmp_path, port=free_port())  # not started yet
    publisher = EventPublisher(settings_for(server.url), socket_timeout_s=0.5).start()
    try:
        event = make_event(9.6)
        publisher.publish(event)
        time.sleep(0.5)
        assert publisher.is_alive()
        assert publisher.failure is None
        assert publisher.stats().redis_errors >= 1
        assert publisher.flush(timeout_s=0.2) is False
        server.start()
        assert publisher.flush(timeout_s=5)
        assert stream_events(server.client(), "fs-test:events") == [event]
    finally:
        publisher.stop()
        server.stop()


def test_stream_status_hash_fields_are_written_with_url_redacted(redis_server: RedisServer) -> None:
    status = StreamStatus(
        stream_id="lobby",
        state=StreamState.ERROR,
        worker_id="worker-b",
        updated_s=1_764_000_123.5,
        url="rtsp://admin:s3cret@10.0.0.5:554/live?token=abc",
        fps=4.75,
        last_frame_wall_s=1_764_000_120.25,
        error="connection refused by rtsp://admin:s3cret@10.0.0.5:554/live?token=abc",
    )
    with EventPublisher(settings_for(redis_server.url, status_ttl_s=600)) as publisher:
        publisher.update_status(status)
        assert publisher.flush(timeout_s=5)
        stats = publisher.stats()
    client = redis_server.client()
    fields = client.hgetall("fs-test:stream:{lobby}")
    assert fields["state"] == "error"
    assert fields["worker_id"] == "worker-b"
    assert float(fields["fps"]) == 4.75
    assert float(fields["last_frame_wall_s"]) == 1_764_000_120.25
    assert float(fields["updated_s"]) == 1_764_000_123.5
    assert fields["error"].startswith("connection refused by rtsp://")
    for secret in ("s3cret", "admin", "token=abc"):
        assert secret not in fields["url"]
        assert secret not in fields["error"]
    assert "10.0.0.5" in fields["url"]
    assert client.smembers("fs-test:streams") == {"lobby"}
    assert 0 < client.ttl("fs-test:stream:{lobby}") <= 600
    assert stats.statuses_written == 1
    read_back = StreamStatusReader(client, publisher.keys).get("lobby")
    assert read_back is not None
    assert read_back.state is StreamState.ERROR
    assert read_back.error == fields["error"]


def test_late_released_never_overwrites_the_next_owners_status(
    redis_server: RedisServer,
) -> None:
    now = time.time()
    reader = StreamStatusReader(redis_server.client(), RedisKeys("fs-test"))
    with (
        EventPublisher(settings_for(redis_server.url)) as old_owner,
        EventPublisher(settings_for(redis_server.url)) as new_owner,
    ):
        old_owner.update_status(StreamStatus("lobby", StreamState.RUNNING, "w-a", now))
        assert old_owner.flush(timeout_s=5)
        new_owner.update_status(
            StreamStatus("lobby", StreamState.ERROR, "w-b", now + 1, error="file is corrupt")
        )
        assert new_owner.flush(timeout_s=5)
        # w-a shuts down a moment later and lets the stream go.
        old_owner.update_status(StreamStatus("lobby", StreamState.RELEASED, "w-a", now + 2))
        assert old_owner.flush(timeout_s=5)
        kept = reader.get("lobby")
        assert kept is not None and kept.state is StreamState.ERROR and kept.worker_id == "w-b"
        assert kept.error == "file is corrupt"
        # Over its own status (or none), a worker's `released` is written.
        new_owner.update_status(StreamStatus("lobby", StreamState.RELEASED, "w-b", now + 3))
        new_owner.update_status(StreamStatus("gone", StreamState.RELEASED, "w-b", now + 3))
        redis_server.client().hset("fs-test:stream:{nobody}", mapping={"worker_id": ""})
        new_owner.update_status(StreamStatus("nobody", StreamState.RELEASED, "w-b", now + 3))
        assert new_owner.flush(timeout_s=5)
    for stream_id in ("lobby", "gone", "nobody"):
        written = reader.get(stream_id)
        assert written is not None and written.state is StreamState.RELEASED, stream_id
    assert redis_server.client().ttl("fs-test:stream:{lobby}") > 0


def test_removed_stream_status_disappears_from_listing(redis_server: RedisServer) -> None:
    now = time.time()
    with EventPublisher(settings_for(redis_server.url)) as publisher:
        for stream_id in ("a", "b"):
            publisher.update_status(StreamStatus(stream_id, StreamState.RUNNING, "w", now))
        assert publisher.flush(timeout_s=5)
        publisher.remove_status("a")
        assert publisher.flush(timeout_s=5)
    reader = StreamStatusReader(redis_server.client(), publisher.keys)
    assert [s.stream_id for s in reader.list_all()] == ["b"]
    assert reader.get("a") is None


def test_stop_counts_unwritten_events_as_dropped() -> None:
    publisher = EventPublisher(
        settings_for(f"redis://127.0.0.1:{free_port()}/0"), socket_timeout_s=0.2
    ).start()
    for i in range(3):
        publisher.publish(make_event(i * 0.8))
    publisher.stop()
    stats = publisher.stats()
    assert not publisher.is_alive()
    assert stats.dropped == 3
    assert stats.buffered == 0


def test_thread_death_is_reported_and_publish_still_does_not_raise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publisher = EventPublisher(settings_for(f"redis://127.0.0.1:{free_port()}/0"))

    def broken_write(*_args: object) -> list[object]:
        raise RuntimeError("bug in the writer")

    monkeypatch.setattr(publisher, "_write_pipeline", broken_write)
    publisher.start()
    publisher.publish(make_event(0.0))
    assert publisher.flush(timeout_s=5) is False
    assert not publisher.is_alive()
    assert isinstance(publisher.failure, RuntimeError)
    with pytest.raises(PublisherDiedError, match="bug in the writer"):
        publisher.raise_if_died()
    publisher.publish(make_event(0.8))  # the pipeline is never hit by the writer's death
    publisher.stop()


def test_events_are_counted_exactly_after_redis_forgets_the_script(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    with EventPublisher(settings_for(redis_server.url)) as publisher:
        publisher.publish(make_event(0.0))
        assert publisher.flush(timeout_s=5)
        client.script_flush()  # what a restart or a failover to a replica does
        publisher.publish(make_event(0.8))
        publisher.publish(make_event(1.6))
        assert publisher.flush(timeout_s=5)
        stats = publisher.stats()
    assert client.xlen("fs-test:events") == 3
    assert stats.published == 3
    assert stats.duplicates_suppressed == 0
    assert stats.redis_errors == 0


def test_event_is_written_even_when_the_person_key_has_the_wrong_type(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    client.set("fs-test:person:{cam-1}:s1:7", "not a hash")  # e.g. an operator's stray key
    event = make_event(0.0)
    with EventPublisher(settings_for(redis_server.url)) as publisher:
        publisher.publish(event)
        assert publisher.flush(timeout_s=5)
        stats = publisher.stats()
    assert stream_events(client, "fs-test:events") == [event]
    assert stats.published == 1 and stats.duplicates_suppressed == 0


def test_a_failed_stream_write_leaves_no_seen_marker_so_the_event_is_not_lost(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    client.set("fs-test:events", "not a stream")  # XADD fails with WRONGTYPE
    event = make_event(0.0)
    publisher = EventPublisher(settings_for(redis_server.url)).start()
    try:
        publisher.publish(event)
        deadline = time.monotonic() + 5
        while publisher.stats().redis_errors == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.stats().redis_errors > 0
        assert not client.exists(f"fs-test:seen:{event.event_id}")
        client.delete("fs-test:events")  # the operator repairs the key
        assert publisher.flush(timeout_s=10)
        assert stream_events(client, "fs-test:events") == [event]
        assert publisher.stats().duplicates_suppressed == 0
    finally:
        publisher.stop()


def test_streams_whose_status_expired_leave_the_streams_set(redis_server: RedisServer) -> None:
    """Every status write refreshes `{p}:streams`' TTL, so ids of streams that ended long ago
    would stay for ever: the writer drops those whose status hash is gone."""
    settings = settings_for(redis_server.url)
    keys = RedisKeys(settings.prefix)
    client = redis_server.client()
    client.sadd(keys.streams, "gone-1", "gone:2", "alive", b"gone-\xff")  # a foreign, non-UTF-8 id
    with EventPublisher(settings) as publisher:
        publisher.update_status(StreamStatus("alive", StreamState.RUNNING, "w", time.time()))
        assert publisher.flush(5)
        deadline = time.monotonic() + 5
        while client.scard(keys.streams) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        publisher.raise_if_died()  # the writer survived the foreign id
    assert client.smembers(keys.streams) == {"alive"}
