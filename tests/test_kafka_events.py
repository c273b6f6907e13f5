"""Events to a Kafka topic as well as Redis (`FACESTREAM_KAFKA__EVENTS_TOPIC`), against the
real Kafka 0.9.0.1 broker and a real redis-server: same JSON and ids, key = stream id, a
bounded buffer while the broker is down, and Redis never waiting for Kafka."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.services.kafka_broker import KafkaTestBroker, free_port, unique_name
from tests.services.redis_server import RedisServer
from tests.test_publisher import make_event, settings_for, stream_events
from tests.workers import wait_for
from worker.kafka_events import KafkaEventMirror
from worker.publisher import EventPublisher
from worker.settings import KafkaSettings

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]


def _kafka_settings(bootstrap: str, topic: str, **overrides: object) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=bootstrap,
        api_version="0.9",
        events_topic=topic,
        retry_initial_s=0.2,
        retry_max_s=1.0,
        **overrides,
    )


def test_every_event_goes_to_redis_and_the_topic_with_the_same_json_and_stream_key(
    kafka_broker: KafkaTestBroker, redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    topic = unique_name(request, "events")
    kafka_broker.create_topic(topic, 2, compact=False)
    events = [
        make_event(float(n), stream_id=stream_id, labels={"site": "hq"})
        for n in range(5)
        for stream_id in ("lobby", "lobby:2")
    ]
    mirror = KafkaEventMirror(
        _kafka_settings(kafka_broker.bootstrap_servers, topic), client_id="t-events"
    )
    with EventPublisher(settings_for(redis_server.url), mirror=mirror) as publisher:
        for event in events:
            publisher.publish(event)
        assert publisher.flush(30)
        stats = publisher.stats()
    assert stats.kafka is not None and stats.kafka.sent == len(events)
    assert stats.kafka.dropped == 0 and stats.kafka.buffered == 0
    records = kafka_broker.consume(topic, min_count=len(events))
    by_id = {}
    for record in records:
        by_id[record.value.decode()] = record.key.decode()
    assert sorted(by_id) == sorted(e.model_dump_json() for e in events)
    for event in events:
        assert by_id[event.model_dump_json()] == event.stream_id
    assert stream_events(redis_server.client(), "fs-test:events") == events


def test_events_buffer_is_bounded_in_bytes_and_count_with_drops_counted() -> None:
    # Never started: nothing leaves, so the buffer only fills (as with Kafka down).
    by_bytes = KafkaEventMirror(
        _kafka_settings("127.0.0.1:1", "t", events_buffer_bytes=8192), client_id="t"
    )
    size = len(make_event(0.0).stream_id) + len(make_event(0.0).model_dump_json())
    for n in range(100):
        by_bytes.offer(make_event(float(n)))
    stats = by_bytes.stats()
    assert stats.buffered_bytes <= 8192 and stats.buffered == 8192 // size
    assert stats.dropped == 100 - stats.buffered
    by_count = KafkaEventMirror(
        _kafka_settings("127.0.0.1:1", "t", events_buffer_events=7), client_id="t"
    )
    for n in range(30):
        by_count.offer(make_event(float(n)))
    assert by_count.stats().buffered == 7 and by_count.stats().dropped == 23


def test_broker_down_never_holds_up_redis_and_the_buffer_is_sent_when_it_is_back(
    kafka_home: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    broker = KafkaTestBroker(tmp_path / "events-broker", kafka_home=kafka_home, port=free_port())
    topic = "events-outage"
    try:
        broker.start()
        broker.create_topic(topic, 1, compact=False)
        mirror = KafkaEventMirror(
            _kafka_settings(broker.bootstrap_servers, topic, events_buffer_events=20),
            client_id="t-outage",
        )
        client = redis_server.client()
        with EventPublisher(settings_for(redis_server.url), mirror=mirror) as publisher:
            first = [make_event(float(n)) for n in range(3)]
            for event in first:
                publisher.publish(event)
            assert publisher.flush(30)

            broker.stop_kafka()
            down = [make_event(float(n)) for n in range(3, 33)]  # 30 > the buffer of 20
            started = time.monotonic()
            for event in down:
                publisher.publish(event)
            wait_for(
                lambda: len(stream_events(client, "fs-test:events")) == 33,
                10,
                "Redis writes",
                poll_s=0.2,
            )
            redis_s = time.monotonic() - started
            assert redis_s < 5, f"Redis waited for Kafka: {redis_s:.1f}s"
            stats = publisher.stats().kafka
            assert stats is not None and stats.buffered <= 20
            assert stats.dropped == 10, "the 10 oldest waiting events were pushed out, counted"

            broker.start_kafka()
            assert publisher.flush(90), "the buffered events go out once Kafka is back"
            stats = publisher.stats().kafka
            assert stats is not None and stats.sent == 3 + 20 and stats.dropped == 10
        records = broker.consume(topic, min_count=23, timeout_s=30)
        sent = {r.value.decode() for r in records}
        every = {e.model_dump_json() for e in first + down}
        assert len(sent) == 23 and sent <= every, "each event not counted as dropped arrives"
        assert {e.model_dump_json() for e in first} <= sent
    finally:
        broker.stop()
