"""How the assignments watcher learns where it stands and reports it: `RebalanceEvents`
(the group's assignments, handed to the poll thread), `TopicCheck` (an empty assignment
of a spare worker vs a topic that does not exist), its `WatcherState` and the
`WatcherStatus` snapshot (health, readiness, metrics).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog
from kafka import ConsumerRebalanceListener
from kafka.errors import UnknownTopicOrPartitionError

from worker.logs import REPEAT_INTERVAL_S

log = structlog.get_logger(__name__)

_TOPIC_CHECK_S = 5.0  # with no partitions: how often to ask whether the topic exists


class WatcherState(StrEnum):
    """Where the watcher is: readiness is `live` (every owned partition folded)."""

    CONNECTING = "connecting"
    FOLDING = "folding"
    LIVE = "live"
    TOPIC_MISSING = "topic_missing"  # joined, but the assignments topic does not exist
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


class TopicCheck:
    """While the watcher owns no partition, asks every `_TOPIC_CHECK_S` whether the topic
    exists; a missing one is logged by name at most every `REPEAT_INTERVAL_S`."""

    def __init__(self, topic: str, bootstrap_servers: str) -> None:
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.missing = False
        self._checked_s = 0.0
        self._logged_s: float | None = None

    @property
    def reason(self) -> str:
        """What an operator should know (readiness says it)."""
        return (
            f"topic {self.topic!r} does not exist on the brokers; create it (compacted) "
            "or let the brokers auto-create topics"
        )

    def reset(self) -> None:
        """A new assignment: check again at the next chance."""
        self._checked_s = 0.0

    def check(self, list_topics: Callable[[], set[str]]) -> bool:
        """Ask the brokers for their topics when due; returns whether ours is missing."""
        now = time.monotonic()
        if now - self._checked_s < _TOPIC_CHECK_S:
            return self.missing
        self._checked_s = now
        try:
            self.missing = self.topic not in list_topics()
        except UnknownTopicOrPartitionError:  # the subscribed topic's metadata failed
            self.missing = True
        if self.missing and (self._logged_s is None or now - self._logged_s >= REPEAT_INTERVAL_S):
            self._logged_s = now
            log.error(
                "kafka assignments: topic missing",
                topic=self.topic,
                reason=self.reason,
                bootstrap_servers=self.bootstrap_servers,
            )
        elif not self.missing and self._logged_s is not None:
            self._logged_s = None
            log.info("kafka assignments: topic found", topic=self.topic)
        return self.missing


class RebalanceEvents(ConsumerRebalanceListener):
    """Runs on kafka-python's IO thread: only records the event for the poll thread."""

    def __init__(self, events: queue.SimpleQueue) -> None:
        self._events = events

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._events.put(("revoked", set(revoked)))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._events.put(("assigned", set(assigned)))

    def on_partitions_lost(self, lost: Any) -> None:
        self._events.put(("revoked", set(lost)))
