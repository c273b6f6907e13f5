"""Redis output: `FaceEvent`s to a stream, a live channel and per-person hashes; stream status.

`EventPublisher` owns one background thread. The pipeline calls `publish()` and
`update_status()`, which only append to bounded in-memory buffers and never block or
raise; the thread writes them to Redis in pipelines. While Redis is unreachable the
thread retries with exponential backoff, the event buffer keeps the newest
`buffer_max_events` (drop-oldest, drops counted) and statuses keep the latest per stream.

What one round trip sends (the deduplicating Lua script per event, the status hashes)
is `worker.redis_writes`. With `FACESTREAM_KAFKA__EVENTS_TOPIC` set, `publish()` also
hands each event to the `KafkaEventMirror` (its own thread and bounded buffer), so a slow
or absent Kafka never holds up Redis, nor Redis Kafka.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from itertools import islice

import redis
import structlog
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from ingest.backoff import Backoff
from ingest.urls import redact_url
from worker.events import FaceEvent
from worker.kafka_events import KafkaEventMirror, KafkaMirrorStats
from worker.redis_keys import RedisKeys
from worker.redis_writes import PUBLISH_LUA, prune_streams_set, queue_event, queue_status
from worker.settings import RedisSettings, Settings
from worker.status import StreamStatus
from worker.writer_thread import WriterThread

log = structlog.get_logger(__name__)

STREAMS_PRUNE_INTERVAL_S = 60.0
"""How often the writer drops expired streams from `{p}:streams` (one bounded round)."""


class PublisherDiedError(RuntimeError):
    """The publisher thread stopped on an unexpected error; events are no longer written."""


@dataclass(frozen=True)
class PublisherStats:
    """Counters since start, for metrics and tests."""

    published: int
    duplicates_suppressed: int  # events whose id was already written (a replay): not shown again
    answers_truncated: int  # events whose answer was cut at the token cap (stop_reason=length)
    dropped: int
    redis_errors: int
    buffered: int
    buffered_high_water: int
    statuses_written: int  # status writes sent (a late `released` Redis declines counts too)
    statuses_pending: int
    redis_up: bool | None
    kafka: KafkaMirrorStats | None  # None when the events topic is off


_COUNTED = (
    "published",
    "duplicates_suppressed",
    "answers_truncated",
    "dropped",
    "redis_errors",
    "statuses_written",
)
"""The `PublisherStats` fields the writer counts up as it goes."""


@dataclass(frozen=True)
class _QueuedEvent:
    seq: int
    event: FaceEvent


class EventPublisher(WriterThread):
    """Writes events and stream statuses to Redis from a background thread; never blocks callers."""

    def __init__(
        self,
        settings: RedisSettings,
        *,
        batch_max_events: int = 256,
        socket_timeout_s: float = 5.0,
        thread_name: str = "redis-publisher",
        mirror: KafkaEventMirror | None = None,
    ) -> None:
        super().__init__(thread_name, died_event="publisher.died")
        self._settings = settings
        self._keys = RedisKeys(settings.prefix)
        self._prune_cursor = 0  # SSCAN position in `{p}:streams`
        self._next_prune_s = 0.0  # monotonic time of the next prune round
        self._batch_max_events = batch_max_events
        self._client = redis.Redis.from_url(
            settings.url,
            socket_connect_timeout=socket_timeout_s,
            socket_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),  # our own loop retries with backoff
        )
        self._mirror = mirror

        self._buffer: deque[_QueuedEvent] = deque()
        self._pending_status: dict[str, StreamStatus | None] = {}  # None = forget the stream
        self._next_seq = 0
        self._inflight_upto_seq = -1
        self._evicted_inflight = 0
        self._writing = False

        self._counts = dict.fromkeys(_COUNTED, 0)
        self._high_water = 0
        self._redis_up: bool | None = None
        self._down_since_s = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> EventPublisher:
        """The worker's publisher: to `settings.redis`, mirrored to Kafka when
        `settings.kafka.events_topic` is set."""
        mirror = None
        if settings.kafka.events_topic:
            client_id = f"facestream-{settings.worker_id}-events"
            mirror = KafkaEventMirror(settings.kafka, client_id=client_id)
        return cls(settings.redis, mirror=mirror)

    @property
    def keys(self) -> RedisKeys:
        """The key names this publisher writes."""
        return self._keys

    # -- caller side: never blocks, never raises -------------------------------------------

    def start(self) -> EventPublisher:
        """Start the writer thread (and the Kafka events thread, if on) once; returns self."""
        super().start()
        if self._mirror is not None:
            self._mirror.start()
        return self

    def publish(self, event: FaceEvent) -> None:
        """Queue one event; when the buffer is full the oldest queued event is dropped."""
        if self._mirror is not None:
            self._mirror.offer(event)
        with self._cond:
            if event.stop_reason == "length":
                self._counts["answers_truncated"] += 1
            if len(self._buffer) >= self._settings.buffer_max_events:
                evicted = self._buffer.popleft()
                if evicted.seq <= self._inflight_upto_seq:
                    self._evicted_inflight += 1  # being written now: counted if that write fails
                else:
                    self._counts["dropped"] += 1
            self._buffer.append(_QueuedEvent(self._next_seq, event))
            self._next_seq += 1
            self._high_water = max(self._high_water, len(self._buffer))
            self._cond.notify_all()

    def update_status(self, status: StreamStatus) -> None:
        """Queue a stream's status; a newer status of the same stream replaces an unwritten one."""
        with self._cond:
            self._pending_status[status.stream_id] = status
            self._cond.notify_all()

    def remove_status(self, stream_id: str) -> None:
        """Queue the removal of a stream's status (the stream was stopped and forgotten)."""
        with self._cond:
            self._pending_status[stream_id] = None
            self._cond.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued is written; False when time ran out (or the thread died)."""
        deadline = time.monotonic() + timeout_s
        if not self._wait_drained(
            lambda: not (self._buffer or self._pending_status or self._writing), timeout_s
        ):
            return False
        if self._mirror is not None:
            return self._mirror.flush(max(0.0, deadline - time.monotonic()))
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread; anything still queued is counted as dropped (call `flush` first)."""
        self._stop_thread(timeout_s)
        with self._cond:
            left = len(self._buffer)
            if left:
                self._counts["dropped"] += left
                self._buffer.clear()
                log.warning("publisher.stopped_with_unwritten_events", events=left)
        self._client.close()
        if self._mirror is not None:
            self._mirror.stop(timeout_s)

    def is_alive(self) -> bool:
        """True while the writer thread (and the Kafka events thread, if on) runs."""
        mirror_alive = self._mirror is None or self._mirror.is_alive()
        return super().is_alive() and mirror_alive

    @property
    def failure(self) -> BaseException | None:
        """The unexpected error that ended the thread (or the Kafka events thread), if any."""
        if self._failure is None and self._mirror is not None:
            return self._mirror.failure
        return self._failure

    def raise_if_died(self) -> None:
        """Raise `PublisherDiedError` if the thread ended on an unexpected error."""
        failure = self.failure
        if failure is not None:
            raise PublisherDiedError(
                f"event publisher thread died: {failure!r}; restart the worker"
            ) from failure

    def stats(self) -> PublisherStats:
        """A consistent snapshot of the counters."""
        with self._cond:
            return PublisherStats(
                **self._counts,
                buffered=len(self._buffer),
                buffered_high_water=self._high_water,
                statuses_pending=len(self._pending_status),
                redis_up=self._redis_up,
                kafka=self._mirror.stats() if self._mirror is not None else None,
            )

    def __enter__(self) -> EventPublisher:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.flush(timeout_s=5.0)
        self.stop()

    # -- writer thread ---------------------------------------------------------------------

    def _on_died(self) -> None:
        self._writing = False

    def _loop(self) -> None:
        backoff = Backoff(self._settings.retry_initial_s, self._settings.retry_max_s)
        while True:
            with self._cond:
                while not (self._stop_requested or self._buffer or self._pending_status):
                    self._cond.wait()
                if self._stop_requested:
                    return
                batch = list(islice(self._buffer, self._batch_max_events))
                statuses = self._pending_status
                self._pending_status = {}
                self._inflight_upto_seq = batch[-1].seq if batch else -1
                self._writing = True
            try:
                results = self._write(batch, statuses)
            except redis.RedisError as exc:
                self._after_failure(statuses, exc)
                self._wait_before_retry(backoff.next_delay_s())
                continue
            self._after_success(batch, statuses, results)
            backoff.reset()
            self._prune_streams_set_when_due()

    def _prune_streams_set_when_due(self) -> None:
        now_s = time.monotonic()
        if now_s < self._next_prune_s:
            return
        self._next_prune_s = now_s + STREAMS_PRUNE_INTERVAL_S
        try:
            self._prune_cursor = prune_streams_set(self._client, self._keys, self._prune_cursor)
        except redis.RedisError as exc:  # the next round tries again; writes are unaffected
            log.debug("streams set prune failed", error=str(exc))

    def _write(
        self, batch: list[_QueuedEvent], statuses: dict[str, StreamStatus | None]
    ) -> list[object]:
        """One round trip for the batch; returns 1 (written) or 0 (duplicate) per event."""
        results = self._write_pipeline(batch, statuses)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            # A restarted or failed-over Redis forgot the script (another worker may have
            # loaded it meanwhile, so only some entries can be missing): load, resend those.
            self._client.script_load(PUBLISH_LUA)
            resent = self._write_pipeline([batch[i] for i in missing], {})
            for i, result in zip(missing, resent, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result  # the whole batch is retried; written events come back as 0
        return results

    def _write_pipeline(
        self, batch: list[_QueuedEvent], statuses: dict[str, StreamStatus | None]
    ) -> list[object]:
        """Every event through the dedup script (EVALSHA), then the statuses; per-event results."""
        settings, keys = self._settings, self._keys
        pipe = self._client.pipeline(transaction=False)
        for queued in batch:
            queue_event(pipe, keys, settings, queued.event)
        for stream_id, status in statuses.items():
            queue_status(pipe, keys, settings, stream_id, status)
        results = pipe.execute(raise_on_error=False)
        for result in results[len(batch) :]:
            if isinstance(result, Exception):
                raise result
        return results[: len(batch)]

    def _after_success(
        self,
        batch: list[_QueuedEvent],
        statuses: dict[str, StreamStatus | None],
        results: list[object],
    ) -> None:
        written = sum(1 for result in results if result == 1)
        with self._cond:
            # Events evicted while in flight were written anyway: only drop what is still queued.
            while self._buffer and self._buffer[0].seq <= self._inflight_upto_seq:
                self._buffer.popleft()
            self._evicted_inflight = 0
            self._inflight_upto_seq = -1
            self._counts["published"] += written
            self._counts["duplicates_suppressed"] += len(batch) - written
            self._counts["statuses_written"] += len(statuses)
            self._writing = False
            was_up = self._redis_up
            self._redis_up = True
            self._cond.notify_all()
        if was_up is False:
            log.info(
                "redis.reconnected",
                url=redact_url(self._settings.url),
                outage_s=round(time.monotonic() - self._down_since_s, 1),
            )
        elif was_up is None:
            log.info("redis.connected", url=redact_url(self._settings.url))

    def _after_failure(
        self, statuses: dict[str, StreamStatus | None], exc: redis.RedisError
    ) -> None:
        with self._cond:
            self._counts["redis_errors"] += 1
            self._counts["dropped"] += self._evicted_inflight
            self._evicted_inflight = 0
            self._inflight_upto_seq = -1  # the batch stays queued (what is left of it)
            for stream_id, status in statuses.items():
                self._pending_status.setdefault(stream_id, status)  # newer updates win
            self._writing = False
            was_up = self._redis_up
            self._redis_up = False
            buffered = len(self._buffer)
            self._cond.notify_all()
        if was_up is not False:
            self._down_since_s = time.monotonic()
            log.warning(
                "redis.unreachable",
                url=redact_url(self._settings.url),
                error=f"{type(exc).__name__}: {exc}",
                buffered=buffered,
                buffer_max_events=self._settings.buffer_max_events,
            )
