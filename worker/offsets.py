"""`OffsetBook`: which offsets of the assignments topic the watcher may commit.

Offsets do not decide where reading starts (always the beginning: the fold needs every
key); they mark which records were already checked, so a bad record goes to the DLQ
once, not after every rebalance. So a commit never moves below the offset committed
before (a refold reads from the beginning) nor past a record whose DLQ write failed
(the partition's next owner sends it again). Poll thread only.
"""

from __future__ import annotations

from collections.abc import Mapping

from kafka import OffsetAndMetadata, TopicPartition


class OffsetBook:
    """Per partition: the offset checked before this owner (`checked_below`) and the
    offset consumed since the last (re)assignment."""

    def __init__(self) -> None:
        self.checked_below: dict[TopicPartition, int] = {}
        self._consumed_below: dict[TopicPartition, int] = {}

    def assigned(self, tp: TopicPartition, committed: int | None) -> None:
        """A partition (re)assigned: what was committed was checked already."""
        self.checked_below[tp] = committed or 0

    def consumed(self, tp: TopicPartition, offset: int) -> bool:
        """Note a record read; True when it was not checked before (first time seen)."""
        self._consumed_below[tp] = offset + 1
        return offset >= self.checked_below.get(tp, 0)

    def forget_consumed(self) -> None:
        """A new assignment or consumer: reading starts over."""
        self._consumed_below.clear()

    def to_commit(
        self, owned: set[TopicPartition], failed_at: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """Per owned partition: what was consumed, but never below the offset committed
        before nor past a record whose DLQ write failed (`failed_at`)."""
        offsets = {}
        for tp, consumed in self._consumed_below.items():
            if tp not in owned:
                continue
            offset = max(self.checked_below.get(tp, 0), min(consumed, failed_at.get(tp, consumed)))
            offsets[tp] = OffsetAndMetadata(offset, "", -1)
        return offsets
