"""The Kafka assignments thread: fold the owned partitions of `facestream.streams` into the
desired set of streams and report how it changes.

`AssignmentWatcher` is a consumer in the workers' group. When the group gives it
partitions it reads each from the beginning up to the end offset seen at assignment time
and keeps the latest value per key (a `StreamSpec`, or a tombstone = stop and forget);
then it applies new records as they come. Every change leaves as one `DesiredChange`
(`started` / `updated` / `stopped`) through `on_change`; a bad record goes to the DLQ
topic and to `on_invalid`. The poll loop runs in its own thread and never waits on
stream work: the callbacks must only hand the change over (the supervisor folds each
change into its pending set). Record parsing and DLQ payloads are `worker.records`.

Rebalances: streams of a partition keep running through a rebalance that gives the
partition back to this worker (the refold only reports real differences); streams of a
partition that went to another worker stop as soon as the new assignment is known.
Offsets: committed after each processed batch once its DLQ records are flushed. They do
not decide where reading starts (always the beginning); they mark which records were
already checked, so a bad record goes to the DLQ once, not after every rebalance. So a
commit never moves below the offset committed before (a refold reads from the beginning)
nor past a record whose DLQ write failed (the next owner sends it again).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog
from kafka import ConsumerRebalanceListener, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaTimeoutError

from ingest.backoff import Backoff
from worker.kafka_client import make_consumer, make_producer
from worker.records import (
    DLQ_MAX_KEY_BYTES,
    MAX_ERROR_CHARS,
    InvalidRecordError,
    dlq_payload,
    parse_record,
)
from worker.settings import KafkaSettings
from worker.specs import StreamSpec

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.consumer.fetcher import ConsumerRecord

log = structlog.get_logger(__name__)

_POLL_TIMEOUT_MS = 500
_MAX_POLL_RECORDS = 500
_BROKER_CALL_TIMEOUT_MS = 10000
_DLQ_FLUSH_TIMEOUT_S = 5.0
_TOMBSTONE_QUEUE_SIZE = 10000


@dataclass(frozen=True)
class DesiredChange:
    """How the desired set of streams changed: start these, restart these, stop these."""

    started: Mapping[str, StreamSpec] = field(default_factory=dict)
    updated: Mapping[str, StreamSpec] = field(default_factory=dict)
    stopped: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.started or self.updated or self.stopped)


class WatcherState(StrEnum):
    """Where the watcher is: readiness is `live` (every owned partition folded)."""

    CONNECTING = "connecting"
    FOLDING = "folding"
    LIVE = "live"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class WatcherStatus:
    """A snapshot for health checks and metrics."""

    state: WatcherState
    partitions: tuple[int, ...]
    folding_partitions: tuple[int, ...]
    streams: int
    records: int
    invalid_records: int
    dlq_records: int
    dlq_failures: int
    reconnects: int
    rebalances: int  # assignments that changed the owned partitions
    last_error: str | None


@dataclass
class _Fold:
    """Reading one partition from the beginning up to `end_offset`."""

    end_offset: int
    started_s: float
    latest: dict[str, StreamSpec | InvalidRecordError | None] = field(default_factory=dict)


class _ChangeLog:
    """Remembers the spec each touched stream had before this batch, to report the diff."""

    def __init__(self, specs: dict[str, StreamSpec]) -> None:
        self._specs = specs
        self._before: dict[str, StreamSpec | None] = {}

    def touch(self, stream_id: str) -> None:
        self._before.setdefault(stream_id, self._specs.get(stream_id))

    def change(self) -> DesiredChange:
        started: dict[str, StreamSpec] = {}
        updated: dict[str, StreamSpec] = {}
        stopped: set[str] = set()
        for stream_id, before in self._before.items():
            after = self._specs.get(stream_id)
            if before is None and after is not None:
                started[stream_id] = after
            elif before is not None and after is None:
                stopped.add(stream_id)
            elif before is not None and after is not None and before != after:
                updated[stream_id] = after
        return DesiredChange(started, updated, frozenset(stopped))


def _same_run(
    current: StreamSpec | InvalidRecordError | None, new: StreamSpec | None
) -> StreamSpec | None:
    """`new`, unless it repeats `current`'s value: then `current`, whose record started
    the run (its `origin`, and so the session of a finite source, stays the same on
    every worker that folds the partition)."""
    if isinstance(current, StreamSpec) and new is not None and current == new:
        return current
    return new


class _RebalanceListener(ConsumerRebalanceListener):
    """Runs on kafka-python's IO thread: only records the event for the poll thread."""

    def __init__(self, events: queue.SimpleQueue) -> None:
        self._events = events

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._events.put(("revoked", set(revoked)))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._events.put(("assigned", set(assigned)))

    def on_partitions_lost(self, lost: Any) -> None:
        self._events.put(("revoked", set(lost)))


class AssignmentWatcher:
    """Consumes the assignments topic in the workers' group and reports the desired streams.

    `on_change(DesiredChange)` and `on_invalid(stream_id | None, reason)` are called from
    the watcher's thread and must return at once (hand the work to another thread).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        worker_id: str,
        on_change: Callable[[DesiredChange], None],
        on_invalid: Callable[[str | None, str], None],
        allow_file: bool = False,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.allow_file = allow_file
        self._on_change = on_change
        self._on_invalid = on_invalid
        self._backoff = Backoff(settings.retry_initial_s, settings.retry_max_s)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-assignments", daemon=True)
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._tombstones: queue.Queue[str] = queue.Queue(maxsize=_TOMBSTONE_QUEUE_SIZE)
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        # Guarded by _lock (read by other threads through desired()/status()).
        self._specs: dict[str, StreamSpec] = {}
        self._partition_of: dict[str, int] = {}
        self._state = WatcherState.CONNECTING
        self._last_error: str | None = None
        self._counts = {
            "records": 0,
            "invalid": 0,
            "dlq": 0,
            "dlq_failures": 0,
            "reconnects": 0,
            "rebalances": 0,
        }
        # Poll thread only.
        self._owned: set[TopicPartition] = set()
        self._folds: dict[TopicPartition, _Fold] = {}
        self._checked_below: dict[TopicPartition, int] = {}
        self._consumed_below: dict[TopicPartition, int] = {}
        self._dlq_pending = False
        # Written by the producer's IO thread too: guarded by _lock.
        self._dlq_failed_at: dict[TopicPartition, int] = {}
        self._joined = False

    # -- public API -----------------------------------------------------------------

    def start(self) -> None:
        """Start the poll thread (returns at once; connecting happens in the thread)."""
        self._thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Leave the group cleanly, report every stream as stopped, end the thread."""
        self._stopping.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("kafka-assignments thread did not stop", timeout_s=timeout_s)

    def is_alive(self) -> bool:
        """Whether the poll thread runs."""
        return self._thread.is_alive()

    def mark_done(self, stream_id: str) -> bool:
        """Write a tombstone for a finished finite stream; False when the queue is full."""
        try:
            self._tombstones.put_nowait(stream_id)
        except queue.Full:
            log.error("tombstone queue full; stream not marked done", stream_id=stream_id)
            return False
        return True

    def desired(self) -> dict[str, StreamSpec]:
        """A copy of the current desired set (stream_id → spec)."""
        with self._lock:
            return dict(self._specs)

    def partition_of(self, stream_id: str) -> int | None:
        """The assignments partition a desired stream came from."""
        with self._lock:
            return self._partition_of.get(stream_id)

    def status(self) -> WatcherStatus:
        """State, owned partitions and counters."""
        with self._lock:
            return WatcherStatus(
                state=self._state,
                partitions=tuple(sorted(tp.partition for tp in self._owned)),
                folding_partitions=tuple(sorted(tp.partition for tp in self._folds)),
                streams=len(self._specs),
                records=self._counts["records"],
                invalid_records=self._counts["invalid"],
                dlq_records=self._counts["dlq"],
                dlq_failures=self._counts["dlq_failures"],
                reconnects=self._counts["reconnects"],
                rebalances=self._counts["rebalances"],
                last_error=self._last_error,
            )

    # -- the poll thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self._connect()
                    while not self._stopping.is_set():
                        self._poll_once()
                        self._backoff.reset()
                except Exception as error:
                    with self._lock:
                        self._last_error = f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
                        self._counts["reconnects"] += 1
                    delay_s = self._backoff.next_delay_s()
                    log.warning(
                        "kafka assignments: retrying",
                        error=self._last_error,
                        retry_in_s=round(delay_s, 2),
                        bootstrap_servers=self.settings.bootstrap_servers,
                    )
                    self._close_clients()
                    self._stopping.wait(delay_s)
        except BaseException as error:
            with self._lock:
                self._state = WatcherState.FAILED
                self._last_error = f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
            log.exception("kafka-assignments thread died")
            raise
        finally:
            self._close_clients()
            self._stop_everything()

    def _connect(self) -> None:
        if self._consumer is None:
            self._joined = False
            with self._lock:
                self._state = WatcherState.CONNECTING
            consumer = make_consumer(self.settings, client_id=f"facestream-{self.worker_id}")
            self._consumer = consumer
            consumer.subscribe([self.settings.topic], listener=_RebalanceListener(self._events))
            log.info(
                "kafka assignments: subscribed",
                topic=self.settings.topic,
                group_id=self.settings.group_id,
            )
        if self._producer is None:
            self._producer = make_producer(self.settings, client_id=f"facestream-{self.worker_id}")

    def _close_clients(self) -> None:
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        if consumer is not None:
            try:
                consumer.close(autocommit=False, timeout_ms=5000)
            except Exception as error:
                log.warning("closing the kafka consumer failed", error=repr(error))
        if producer is not None:
            try:
                producer.close(timeout=5)
            except Exception as error:
                log.warning("closing the kafka producer failed", error=repr(error))
        # A new consumer starts with no partitions; until it gets some, keep running what
        # we have (the rebalance decides what moves). Folds restart with the assignment.
        self._folds.clear()
        self._consumed_below.clear()
        with self._lock:
            self._dlq_failed_at.clear()
        while not self._events.empty():
            self._events.get_nowait()

    def _stop_everything(self) -> None:
        with self._lock:
            stopped = frozenset(self._specs)
            self._specs.clear()
            self._partition_of.clear()
            self._owned = set()
            self._folds.clear()
            if self._state is not WatcherState.FAILED:
                self._state = WatcherState.STOPPED
        if stopped:
            self._emit(DesiredChange(stopped=stopped))

    def _poll_once(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        by_partition = consumer.poll(timeout_ms=_POLL_TIMEOUT_MS, max_records=_MAX_POLL_RECORDS)
        changes = _ChangeLog(self._specs)
        consumed = False
        try:
            refolding = self._handle_rebalance(consumer, changes)
            for tp, records in by_partition.items():
                if tp in refolding or tp not in self._owned:
                    continue  # fetched before the seek to the beginning: read again
                for record in records:
                    self._apply(tp, record, changes)
                    consumed = True
            self._finish_folds(consumer, changes)
            self._send_tombstones()
        finally:
            # Whatever was applied is reported, even when a broker call failed midway.
            self._emit(changes.change())
        if consumed:
            self._commit(consumer)

    def _handle_rebalance(
        self, consumer: KafkaConsumer, changes: _ChangeLog
    ) -> set[TopicPartition]:
        assigned: set[TopicPartition] | None = None
        while not self._events.empty():
            kind, partitions = self._events.get_nowait()
            assigned = partitions if kind == "assigned" else None
        if assigned is None:
            return set()
        assigned &= set(consumer.assignment())
        self._joined = True
        lost = self._owned - assigned
        with self._lock:
            if assigned != self._owned:
                self._counts["rebalances"] += 1
            for stream_id, partition in list(self._partition_of.items()):
                if any(tp.partition == partition for tp in lost):
                    changes.touch(stream_id)
                    del self._specs[stream_id]
                    del self._partition_of[stream_id]
            self._owned = set(assigned)
            self._folds.clear()
            self._dlq_failed_at.clear()
        self._consumed_below.clear()
        if not assigned:
            self._set_state()
            return set()
        ordered = sorted(assigned)
        consumer.seek_to_beginning(*ordered)
        ends = consumer.end_offsets(ordered, timeout_ms=_BROKER_CALL_TIMEOUT_MS)
        now = time.monotonic()
        for tp in ordered:
            committed = consumer.committed(tp, timeout_ms=_BROKER_CALL_TIMEOUT_MS)
            self._checked_below[tp] = committed or 0
            self._folds[tp] = _Fold(end_offset=ends[tp], started_s=now)
        log.info(
            "kafka assignments: assigned",
            partitions=[tp.partition for tp in ordered],
            end_offsets={tp.partition: ends[tp] for tp in ordered},
        )
        self._set_state()
        return set(ordered)

    def _apply(self, tp: TopicPartition, record: ConsumerRecord, changes: _ChangeLog) -> None:
        with self._lock:
            self._counts["records"] += 1
        self._consumed_below[tp] = record.offset + 1
        first_time = record.offset >= self._checked_below.get(tp, 0)
        try:
            stream_id, spec = parse_record(record.key, record.value, allow_file=self.allow_file)
        except InvalidRecordError as error:
            self._reject(record, error, first_time)
            fold = self._folds.get(tp)
            if error.stream_id is None:
                if first_time:
                    self._report_invalid(None, error.reason)
            elif fold is not None:
                fold.latest[error.stream_id] = error
            else:
                self._set_spec(error.stream_id, None, tp.partition, changes)
                self._report_invalid(error.stream_id, error.reason)
            return
        if spec is not None:
            spec = spec.from_record(record.topic, record.partition, record.offset)
        fold = self._folds.get(tp)
        if fold is not None:
            fold.latest[stream_id] = _same_run(fold.latest.get(stream_id), spec)
        else:
            self._set_spec(stream_id, spec, tp.partition, changes)

    def _set_spec(
        self, stream_id: str, spec: StreamSpec | None, partition: int, changes: _ChangeLog
    ) -> None:
        with self._lock:
            changes.touch(stream_id)
            if spec is None:
                self._specs.pop(stream_id, None)
                self._partition_of.pop(stream_id, None)
            else:
                self._specs[stream_id] = _same_run(self._specs.get(stream_id), spec)
                self._partition_of[stream_id] = partition

    def _finish_folds(self, consumer: KafkaConsumer, changes: _ChangeLog) -> None:
        now = time.monotonic()
        for tp, fold in list(self._folds.items()):
            # The end offset is always reached: compaction never touches the active segment,
            # which holds the last record.
            try:
                position = consumer.position(tp, timeout_ms=_BROKER_CALL_TIMEOUT_MS)
            except KafkaTimeoutError:
                continue  # broker away: try again on the next poll
            if position is None or position < fold.end_offset:
                continue
            with self._lock:
                for stream_id, partition in list(self._partition_of.items()):
                    if partition == tp.partition and stream_id not in fold.latest:
                        changes.touch(stream_id)
                        del self._specs[stream_id]
                        del self._partition_of[stream_id]
                del self._folds[tp]
            invalid: list[InvalidRecordError] = []
            for stream_id, latest in fold.latest.items():
                if isinstance(latest, InvalidRecordError):
                    invalid.append(latest)
                    latest = None
                self._set_spec(stream_id, latest, tp.partition, changes)
            for error in invalid:
                self._report_invalid(error.stream_id, error.reason)
            log.info(
                "kafka assignments: partition folded",
                partition=tp.partition,
                end_offset=fold.end_offset,
                keys=len(fold.latest),
                fold_s=round(now - fold.started_s, 3),
            )
        self._set_state()

    def _set_state(self) -> None:
        with self._lock:
            if self._folds:
                self._state = WatcherState.FOLDING
            elif self._joined:
                self._state = WatcherState.LIVE
            else:
                self._state = WatcherState.CONNECTING

    def _reject(self, record: ConsumerRecord, error: InvalidRecordError, first_time: bool) -> None:
        with self._lock:
            self._counts["invalid"] += 1
        if not first_time:
            return  # checked (and sent to the DLQ) before the last rebalance
        log.warning(
            "kafka assignments: invalid record",
            stream_id=error.stream_id,
            partition=record.partition,
            offset=record.offset,
            error=error.reason,
        )
        tp = TopicPartition(record.topic, record.partition)
        producer = self._producer
        if producer is None:
            self._count_dlq_failure(RuntimeError("no producer"), tp, record.offset)
            return
        payload = dlq_payload(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            reason=error.reason,
            worker_id=self.worker_id,
            time_s=time.time(),
        )
        key = (
            record.key if record.key is not None and len(record.key) <= DLQ_MAX_KEY_BYTES else None
        )
        try:
            future = producer.send(self.settings.dlq_topic, key=key, value=payload)
        except Exception as send_error:
            self._count_dlq_failure(send_error, tp, record.offset)
            return
        future.add_callback(lambda _metadata: self._count("dlq"))
        future.add_errback(lambda error: self._count_dlq_failure(error, tp, record.offset))
        self._dlq_pending = True

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _count_dlq_failure(self, error: BaseException, tp: TopicPartition, offset: int) -> None:
        with self._lock:
            self._counts["dlq_failures"] += 1
            # Commits stop before this record, so the partition's next owner sends it again.
            self._dlq_failed_at[tp] = min(offset, self._dlq_failed_at.get(tp, offset))
        log.error(
            "kafka assignments: DLQ write failed",
            dlq_topic=self.settings.dlq_topic,
            error=repr(error),
        )

    def _report_invalid(self, stream_id: str | None, reason: str) -> None:
        try:
            self._on_invalid(stream_id, reason)
        except Exception:
            log.exception("on_invalid callback failed", stream_id=stream_id)

    def _emit(self, change: DesiredChange) -> None:
        if not change:
            return
        try:  # first: the supervisor must hear of every change, even if logging fails
            self._on_change(change)
        except Exception:
            log.exception("on_change callback failed")
        log.info(
            "kafka assignments: desired set changed",
            started=sorted(change.started),
            updated=sorted(change.updated),
            stopped=sorted(change.stopped),
        )

    def _send_tombstones(self) -> None:
        producer = self._producer
        while producer is not None and not self._tombstones.empty():
            stream_id = self._tombstones.get_nowait()
            try:
                future = producer.send(
                    self.settings.topic, key=stream_id.encode("utf-8"), value=None
                )
            except Exception as error:
                log.error(
                    "tombstone write failed; stream not marked done",
                    stream_id=stream_id,
                    error=repr(error),
                )
                continue
            future.add_errback(
                lambda error, sid=stream_id: log.error(
                    "tombstone write failed; stream not marked done",
                    stream_id=sid,
                    error=repr(error),
                )
            )

    def _commit(self, consumer: KafkaConsumer) -> None:
        if self._dlq_pending:
            producer = self._producer
            try:
                if producer is not None:
                    producer.flush(timeout=_DLQ_FLUSH_TIMEOUT_S)
            except Exception as error:
                log.warning("DLQ flush failed; offsets not committed", error=repr(error))
                return
            self._dlq_pending = False
        offsets = self._offsets_to_commit()
        if not offsets:
            return
        try:
            consumer.commit_async(
                offsets=offsets,
                callback=lambda _offsets, response: (
                    log.debug("offset commit failed", error=repr(response))
                    if isinstance(response, Exception)
                    else None
                ),
            )
        except Exception as error:
            log.debug("offset commit skipped", error=repr(error))

    def _offsets_to_commit(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """Per owned partition: what was consumed, but never below the offset committed
        before (a refold rereads from 0) nor past a record whose DLQ write failed."""
        with self._lock:
            failed_at = dict(self._dlq_failed_at)
        offsets = {}
        for tp, consumed in self._consumed_below.items():
            if tp not in self._owned:
                continue
            offset = max(self._checked_below.get(tp, 0), min(consumed, failed_at.get(tp, consumed)))
            offsets[tp] = OffsetAndMetadata(offset, "", -1)
        return offsets
