"""What the assignments watcher writes to Kafka, from its poll thread:

- `DeadLetters`: bad assignment records to the DLQ topic. Where a write failed is
  remembered per partition, so the watcher never commits an offset past a record the
  DLQ did not get (the partition's next owner sends it again).
- `Tombstones`: a tombstone for each finished finite stream, so a later owner does not
  redo it. Any thread queues one; the poll thread sends them.

A send never blocks the poll thread: the producer's IO thread reports each outcome.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING

import structlog
from kafka import TopicPartition

from worker.records import DLQ_MAX_KEY_BYTES, InvalidRecordError, dlq_payload

if TYPE_CHECKING:
    from kafka import KafkaProducer
    from kafka.consumer.fetcher import ConsumerRecord

log = structlog.get_logger(__name__)

_FLUSH_TIMEOUT_S = 5.0
_TOMBSTONE_QUEUE_SIZE = 10000


class DeadLetters:
    """DLQ writes of one watcher, their counts and the offsets they hold back."""

    def __init__(self, dlq_topic: str, worker_id: str) -> None:
        self.dlq_topic = dlq_topic
        self.worker_id = worker_id
        self._lock = threading.Lock()  # the producer's IO thread reports outcomes too
        self._failed_at: dict[TopicPartition, int] = {}
        self._pending = False  # sent since the last flush (poll thread only)
        self.written = 0
        self.failures = 0

    def send(
        self, producer: KafkaProducer | None, record: ConsumerRecord, error: InvalidRecordError
    ) -> None:
        """Log one bad assignment record and queue its DLQ record (credentials redacted)."""
        log.warning(
            "kafka assignments: invalid record",
            stream_id=error.stream_id,
            partition=record.partition,
            offset=record.offset,
            error=error.reason,
        )
        tp = TopicPartition(record.topic, record.partition)
        if producer is None:
            self._failed(RuntimeError("no producer"), tp, record.offset)
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
            future = producer.send(self.dlq_topic, key=key, value=payload)
        except Exception as send_error:
            self._failed(send_error, tp, record.offset)
            return
        future.add_callback(lambda _metadata: self._written())
        future.add_errback(lambda error: self._failed(error, tp, record.offset))
        self._pending = True

    def flush(self, producer: KafkaProducer | None) -> bool:
        """Wait for the DLQ writes sent so far; False when they could not be flushed."""
        if not self._pending:
            return True
        try:
            if producer is not None:
                producer.flush(timeout=_FLUSH_TIMEOUT_S)
        except Exception as error:
            log.warning("DLQ flush failed; offsets not committed", error=repr(error))
            return False
        self._pending = False
        return True

    def failed_at(self) -> dict[TopicPartition, int]:
        """Per partition, the lowest offset whose DLQ write failed."""
        with self._lock:
            return dict(self._failed_at)

    def forget_failures(self) -> None:
        """A new assignment or consumer: the partitions' next readers check again."""
        with self._lock:
            self._failed_at.clear()

    def _written(self) -> None:
        with self._lock:
            self.written += 1

    def _failed(self, error: BaseException, tp: TopicPartition, offset: int) -> None:
        with self._lock:
            self.failures += 1
            # Commits stop before this record, so the partition's next owner sends it again.
            self._failed_at[tp] = min(offset, self._failed_at.get(tp, offset))
        log.error(
            "kafka assignments: DLQ write failed", dlq_topic=self.dlq_topic, error=repr(error)
        )


class Tombstones(queue.Queue[str]):
    """Stream ids waiting for their tombstone (bounded; a full queue refuses, logged)."""

    def __init__(self, topic: str) -> None:
        super().__init__(maxsize=_TOMBSTONE_QUEUE_SIZE)
        self.topic = topic

    def mark(self, stream_id: str) -> bool:
        """Queue a tombstone for a finished stream; False when the queue is full."""
        try:
            self.put_nowait(stream_id)
        except queue.Full:
            log.error("tombstone queue full; stream not marked done", stream_id=stream_id)
            return False
        return True

    def send(self, producer: KafkaProducer | None) -> None:
        """Send every queued tombstone (failures are logged: the stream stays undone)."""
        while producer is not None and not self.empty():
            stream_id = self.get_nowait()
            try:
                future = producer.send(self.topic, key=stream_id.encode("utf-8"), value=None)
            except Exception as error:
                _tombstone_failed(stream_id, error)
                continue
            future.add_errback(lambda error, sid=stream_id: _tombstone_failed(sid, error))


def _tombstone_failed(stream_id: str, error: BaseException) -> None:
    log.error(
        "tombstone write failed; stream not marked done", stream_id=stream_id, error=repr(error)
    )
