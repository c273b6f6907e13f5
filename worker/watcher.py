"""The Kafka assignments thread: fold the owned partitions of `facestream.streams` into the
desired set of streams (`worker.desired`) and report how it changes.

`AssignmentWatcher` is a consumer in the workers' group. When the group gives it
partitions it reads each from the beginning up to the end offset seen at assignment time
and keeps the latest value per key (a `StreamSpec`, or a tombstone = stop and forget);
then it applies new records as they come. Every change leaves as one `DesiredChange`
through `on_change`; a bad record goes to the DLQ topic (`worker.watcher_writes`) and to
`on_invalid`. The poll loop runs in its own thread and never waits on stream work: the
callbacks must only hand the change over (the supervisor folds each change into its
pending set). Record parsing and DLQ payloads are `worker.records`.

Rebalances: streams of a partition keep running through a rebalance that gives the
partition back to this worker (the refold only reports real differences); streams of a
partition that went to another worker are released as soon as the new assignment is known.
Offsets are committed after each processed batch once its DLQ records are flushed; they
mark which records were checked, not where reading starts (`worker.offsets`).

A topic that does not exist (and that the brokers do not create) gives an empty
assignment: the watcher then says `topic_missing` (not ready) and logs it by name every
`REPEAT_INTERVAL_S` until the topic appears (`worker.watcher_state`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError

from ingest.backoff import Backoff
from worker.desired import ChangeLog, DesiredChange, DesiredSet, Fold, same_run
from worker.kafka_client import make_consumer, make_producer
from worker.offsets import OffsetBook
from worker.records import MAX_ERROR_CHARS, InvalidRecordError, parse_record
from worker.settings import KafkaSettings
from worker.specs import StreamSpec
from worker.watcher_state import RebalanceEvents, TopicCheck, WatcherState, WatcherStatus
from worker.watcher_writes import DeadLetters, Tombstones

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.consumer.fetcher import ConsumerRecord

log = structlog.get_logger(__name__)

_POLL_TIMEOUT_MS = 500
_MAX_POLL_RECORDS = 500
_BROKER_CALL_TIMEOUT_MS = 10000

__all__ = ["AssignmentWatcher", "DesiredChange", "WatcherState", "WatcherStatus"]


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
        self._tombstones = Tombstones(settings.topic)
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._desired = DesiredSet()
        self._dead_letters = DeadLetters(settings.dlq_topic, worker_id)
        # Guarded by _lock (read by other threads through status()).
        self._state = WatcherState.CONNECTING
        self._last_error: str | None = None
        self._counts = {"records": 0, "invalid": 0, "reconnects": 0, "rebalances": 0}
        # Poll thread only.
        self._owned: set[TopicPartition] = set()
        self._offsets = OffsetBook()
        self._topic = TopicCheck(settings.topic, settings.bootstrap_servers)
        self._joined = False

    # -- public API -----------------------------------------------------------------

    def start(self) -> None:
        """Start the poll thread (returns at once; connecting happens in the thread)."""
        self._thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Leave the group cleanly, report every stream as released, end the thread."""
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
        return self._tombstones.mark(stream_id)

    def desired(self) -> dict[str, StreamSpec]:
        """A copy of the current desired set (stream_id → spec)."""
        return self._desired.specs()

    def partition_of(self, stream_id: str) -> int | None:
        """The assignments partition a desired stream came from."""
        return self._desired.partition_of(stream_id)

    def status(self) -> WatcherStatus:
        """State, owned partitions and counters."""
        with self._lock:
            return WatcherStatus(
                state=self._state,
                partitions=tuple(sorted(tp.partition for tp in self._owned)),
                folding_partitions=self._desired.folding(),
                streams=len(self._desired),
                records=self._counts["records"],
                invalid_records=self._counts["invalid"],
                dlq_records=self._dead_letters.written,
                dlq_failures=self._dead_letters.failures,
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
            consumer.subscribe([self.settings.topic], listener=RebalanceEvents(self._events))
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
        self._desired.clear_folds()
        self._offsets.forget_consumed()
        self._dead_letters.forget_failures()
        while not self._events.empty():
            self._events.get_nowait()

    def _stop_everything(self) -> None:
        change = self._desired.release_all()
        with self._lock:
            self._owned = set()
            if self._state is not WatcherState.FAILED:
                self._state = WatcherState.STOPPED
        self._emit(change)

    def _poll_once(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        by_partition = consumer.poll(timeout_ms=_POLL_TIMEOUT_MS, max_records=_MAX_POLL_RECORDS)
        changes = self._desired.changes()
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
            self._check_topic(consumer)
            self._tombstones.send(self._producer)
        finally:
            # Whatever was applied is reported, even when a broker call failed midway.
            self._emit(changes.change())
        if consumed:
            self._commit(consumer)

    def _handle_rebalance(self, consumer: KafkaConsumer, changes: ChangeLog) -> set[TopicPartition]:
        assigned: set[TopicPartition] | None = None
        while not self._events.empty():
            kind, partitions = self._events.get_nowait()
            assigned = partitions if kind == "assigned" else None
        if assigned is None:
            return set()
        assigned &= set(consumer.assignment())
        self._joined = True
        self._topic.reset()
        ordered = sorted(assigned)
        folds: dict[int, Fold] = {}
        if ordered:
            consumer.seek_to_beginning(*ordered)
            ends = consumer.end_offsets(ordered, timeout_ms=_BROKER_CALL_TIMEOUT_MS)
            for tp in ordered:
                committed = consumer.committed(tp, timeout_ms=_BROKER_CALL_TIMEOUT_MS)
                self._offsets.assigned(tp, committed)
                folds[tp.partition] = Fold(end_offset=ends[tp])
            log.info(
                "kafka assignments: assigned",
                partitions=[tp.partition for tp in ordered],
                end_offsets={tp.partition: ends[tp] for tp in ordered},
            )
        with self._lock:
            if assigned != self._owned:
                self._counts["rebalances"] += 1
            self._owned = set(assigned)
        self._desired.reassign({tp.partition for tp in assigned}, folds, changes)
        self._dead_letters.forget_failures()
        self._offsets.forget_consumed()
        self._set_state()
        return set(ordered)

    def _check_topic(self, consumer: KafkaConsumer) -> None:
        """An empty assignment is normal for a spare worker, not for a missing topic."""
        if not self._joined or self._owned:
            self._topic.missing = False
            return
        if self._topic.check(consumer.topics):
            with self._lock:
                self._last_error = self._topic.reason
        self._set_state()

    def _apply(self, tp: TopicPartition, record: ConsumerRecord, changes: ChangeLog) -> None:
        with self._lock:
            self._counts["records"] += 1
        first_time = self._offsets.consumed(tp, record.offset)
        fold = self._desired.fold_of(tp.partition)
        try:
            stream_id, spec = parse_record(record.key, record.value, allow_file=self.allow_file)
        except InvalidRecordError as error:
            self._reject(record, error, first_time)
            if error.stream_id is None:
                if first_time:
                    self._report_invalid(None, error.reason)
            elif fold is not None:
                fold.latest[error.stream_id] = error
            else:
                self._desired.set_spec(error.stream_id, None, tp.partition, changes)
                self._report_invalid(error.stream_id, error.reason)
            return
        if spec is not None:
            spec = spec.from_record(record.topic, record.partition, record.offset)
        if fold is not None:
            fold.latest[stream_id] = same_run(fold.latest.get(stream_id), spec)
        else:
            self._desired.set_spec(stream_id, spec, tp.partition, changes)

    def _finish_folds(self, consumer: KafkaConsumer, changes: ChangeLog) -> None:
        for tp in sorted(self._owned):
            fold = self._desired.fold_of(tp.partition)
            if fold is None:
                continue
            # The end offset is always reached: compaction never touches the active segment,
            # which holds the last record.
            try:
                position = consumer.position(tp, timeout_ms=_BROKER_CALL_TIMEOUT_MS)
            except KafkaTimeoutError:
                continue  # broker away: try again on the next poll
            if position is None or position < fold.end_offset:
                continue
            for error in self._desired.finish_fold(tp.partition, changes):
                self._report_invalid(error.stream_id, error.reason)
            log.info(
                "kafka assignments: partition folded",
                partition=tp.partition,
                end_offset=fold.end_offset,
                keys=len(fold.latest),
                fold_s=round(time.monotonic() - fold.started_s, 3),
            )
        self._set_state()

    def _set_state(self) -> None:
        with self._lock:
            if self._desired.folding():
                self._state = WatcherState.FOLDING
            elif self._joined and self._topic.missing:
                self._state = WatcherState.TOPIC_MISSING
            elif self._joined:
                self._state = WatcherState.LIVE
            else:
                self._state = WatcherState.CONNECTING

    def _reject(self, record: ConsumerRecord, error: InvalidRecordError, first_time: bool) -> None:
        if not first_time:
            return  # checked, counted and sent to the DLQ before the last rebalance
        with self._lock:
            self._counts["invalid"] += 1
        self._dead_letters.send(self._producer, record, error)

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
            released=sorted(change.released),
        )

    def _commit(self, consumer: KafkaConsumer) -> None:
        if not self._dead_letters.flush(self._producer):
            return
        offsets = self._offsets.to_commit(self._owned, self._dead_letters.failed_at())
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
