"""Events to a Kafka topic as well (`FACESTREAM_KAFKA__EVENTS_TOPIC`; empty = off).

`KafkaEventMirror` owns one thread, `kafka-events`. `offer(event)` only appends the
event's JSON (the same bytes as the Redis entry; key = stream id) to a bounded buffer and
never blocks or raises, so the Redis path never waits for Kafka. The thread sends
batches and removes an event only once the broker acknowledged it (`acks=all`); a failed
send stays queued and is sent again after a backoff: at least once, with the same
`event_id` (consumers deduplicate by it; a replay after a failover is sent again too).

Buffer policy `drop-oldest`: at most `events_buffer_events` events and
`events_buffer_bytes` bytes of JSON wait or are in flight; a new event pushes out the
oldest waiting ones (counted in `dropped`). Nothing is dropped silently.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from ingest.backoff import Backoff
from worker.events import FaceEvent
from worker.kafka_client import make_producer
from worker.settings import KafkaSettings
from worker.writer_thread import WriterThread

if TYPE_CHECKING:
    from kafka import KafkaProducer

log = structlog.get_logger(__name__)

BATCH_MAX_EVENTS = 500
# A batch must be acknowledged (or fail) within this; the producer's own timeouts are
# set below it so no record outlives a batch inside the producer.
_REQUEST_TIMEOUT_MS = 10000
_DELIVERY_TIMEOUT_MS = 15000
_FLUSH_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class KafkaMirrorStats:
    """Counters since start, for metrics and tests."""

    sent: int
    dropped: int
    errors: int
    buffered: int
    buffered_bytes: int
    kafka_up: bool | None


@dataclass(frozen=True)
class _Record:
    key: bytes
    value: bytes

    @property
    def size(self) -> int:
        return len(self.key) + len(self.value)


class KafkaEventMirror(WriterThread):
    """Writes every offered event to `settings.events_topic` from a background thread."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        client_id: str,
        producer_factory: Callable[[], KafkaProducer] | None = None,
    ) -> None:
        if not settings.events_topic:
            raise ValueError("KafkaEventMirror needs FACESTREAM_KAFKA__EVENTS_TOPIC")
        super().__init__("kafka-events", died_event="kafka_events.died")
        self.topic = settings.events_topic
        self._settings = settings
        self._producer_factory = producer_factory or (
            lambda: make_producer(
                settings,
                client_id=client_id,
                request_timeout_ms=_REQUEST_TIMEOUT_MS,
                delivery_timeout_ms=_DELIVERY_TIMEOUT_MS,
            )
        )
        self._producer: KafkaProducer | None = None
        self._waiting: deque[_Record] = deque()
        self._inflight: list[_Record] = []
        self._bytes = 0  # waiting + in flight
        self._counts = dict.fromkeys(("sent", "dropped", "errors"), 0)
        self._kafka_up: bool | None = None

    # -- caller side: never blocks, never raises ------------------------------------------

    def offer(self, event: FaceEvent) -> None:
        """Queue one event; the oldest waiting ones go when a bound would be passed."""
        record = _Record(event.stream_id.encode(), event.model_dump_json().encode())
        with self._cond:
            while self._waiting and (
                self._bytes + record.size > self._settings.events_buffer_bytes
                or len(self._waiting) + len(self._inflight) >= self._settings.events_buffer_events
            ):
                evicted = self._waiting.popleft()
                self._bytes -= evicted.size
                self._counts["dropped"] += 1
            if (
                self._bytes + record.size > self._settings.events_buffer_bytes
                or len(self._inflight) >= self._settings.events_buffer_events
            ):
                self._counts["dropped"] += 1  # the batch in flight alone fills the bound
                return
            self._waiting.append(record)
            self._bytes += record.size
            self._cond.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued event is acknowledged; False when time ran out."""
        return self._wait_drained(lambda: not (self._waiting or self._inflight), timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread; what is still queued is counted as dropped (call `flush` first)."""
        self._stop_thread(timeout_s)
        with self._cond:
            left = len(self._waiting) + len(self._inflight)
            if left:
                self._counts["dropped"] += left
                self._waiting.clear()
                self._inflight = []
                self._bytes = 0
                log.warning("kafka_events.stopped_with_unsent_events", events=left)
        self._close_producer()

    def stats(self) -> KafkaMirrorStats:
        """A consistent snapshot of the counters."""
        with self._cond:
            return KafkaMirrorStats(
                **self._counts,
                buffered=len(self._waiting) + len(self._inflight),
                buffered_bytes=self._bytes,
                kafka_up=self._kafka_up,
            )

    # -- sender thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        backoff = Backoff(self._settings.retry_initial_s, self._settings.retry_max_s)
        while True:
            with self._cond:
                while not (self._stop_requested or self._waiting):
                    self._cond.wait()
                if self._stop_requested:
                    return
                batch = [
                    self._waiting.popleft()
                    for _ in range(min(BATCH_MAX_EVENTS, len(self._waiting)))
                ]
                self._inflight = batch
            failed, error = self._send(batch)
            with self._cond:
                self._inflight = []
                self._counts["sent"] += len(batch) - len(failed)
                self._bytes -= sum(r.size for r in batch) - sum(r.size for r in failed)
                self._waiting.extendleft(reversed(failed))  # first in line, in order
                was_up = self._kafka_up
                self._kafka_up = not failed
                if failed:
                    self._counts["errors"] += 1
                self._cond.notify_all()
            if not failed:
                if was_up is False:
                    log.info("kafka_events.reconnected", topic=self.topic)
                backoff.reset()
                continue
            if was_up is not False:
                log.warning(
                    "kafka_events.unreachable",
                    topic=self.topic,
                    error=error,
                    unsent=len(failed),
                    buffer_max_events=self._settings.events_buffer_events,
                )
            self._wait_before_retry(backoff.next_delay_s())

    def _send(self, batch: list[_Record]) -> tuple[list[_Record], str]:
        """Send and await one batch; returns the records not acknowledged, and why."""
        futures: list[Any] = []
        try:
            producer = self._producer or self._open_producer()
            for record in batch:
                futures.append(producer.send(self.topic, key=record.key, value=record.value))
            producer.flush(timeout=_FLUSH_TIMEOUT_S)
        except Exception as exc:  # broker away, timeouts, a refused record
            self._close_producer()  # what it still holds is resent by us, never twice kept
            acked = {i for i, f in enumerate(futures) if f.is_done and f.succeeded()}
            failed = [r for i, r in enumerate(batch) if i not in acked]
            return failed, f"{type(exc).__name__}: {exc}"
        failed = [r for r, f in zip(batch, futures, strict=True) if not f.succeeded()]
        errors = [repr(f.exception) for f in futures if not f.succeeded()]
        return failed, errors[0] if errors else ""

    def _open_producer(self) -> KafkaProducer:
        self._producer = self._producer_factory()
        return self._producer

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception as exc:
                log.warning("closing the events producer failed", error=repr(exc))
