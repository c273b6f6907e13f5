"""The desired set of streams of one worker's partitions, and how it changes.

`DesiredSet` is the fold of the assignments topic (`worker.watcher` feeds it from its
poll thread): the latest `StreamSpec` per key of every owned partition. A partition just
assigned is read from the beginning up to the end offset seen at assignment (a `Fold`)
before its streams count; later records apply at once. `ChangeLog` collects what one
poll batch changed and reports it as one `DesiredChange`:

- `started` / `updated`: a new spec to run (or to restart with);
- `stopped`: every stream that leaves the desired set;
- `released`: those of `stopped` that leave because they are no longer this worker's
  (the partition moved to another worker, or the watcher stopped): they go on
  elsewhere. The others left the topic (a tombstone, or an invalid latest record).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from worker.records import InvalidRecordError
from worker.specs import StreamSpec


def same_run(
    current: StreamSpec | InvalidRecordError | None, new: StreamSpec | None
) -> StreamSpec | None:
    """`new`, unless it repeats `current`'s value: then `current`, whose record started
    the run (its `origin`, and so the session of a finite source, stays the same on
    every worker that folds the partition)."""
    if isinstance(current, StreamSpec) and new is not None and current == new:
        return current
    return new


@dataclass(frozen=True)
class DesiredChange:
    """How the desired set of streams changed: start, restart, stop these (`released`:
    the stopped ones that go on at another worker)."""

    started: Mapping[str, StreamSpec] = field(default_factory=dict)
    updated: Mapping[str, StreamSpec] = field(default_factory=dict)
    stopped: frozenset[str] = frozenset()
    released: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.started or self.updated or self.stopped or self.released)


class ChangeLog:
    """Remembers the spec each touched stream had before this batch, to report the diff."""

    def __init__(self, specs: Mapping[str, StreamSpec]) -> None:
        self._specs = specs
        self._before: dict[str, StreamSpec | None] = {}
        self._released: set[str] = set()

    def touch(self, stream_id: str, *, released: bool = False) -> None:
        """Note a stream about to change; `released`: it leaves because it is not ours."""
        self._before.setdefault(stream_id, self._specs.get(stream_id))
        if released:
            self._released.add(stream_id)

    def change(self) -> DesiredChange:
        """The difference between the specs now and before the first `touch` of each."""
        started: dict[str, StreamSpec] = {}
        updated: dict[str, StreamSpec] = {}
        stopped: set[str] = set()
        released: set[str] = set()
        for stream_id, before in self._before.items():
            after = self._specs.get(stream_id)
            if before is None and after is not None:
                started[stream_id] = after
            elif before is not None and after is None:
                stopped.add(stream_id)
                if stream_id in self._released:
                    released.add(stream_id)
            elif before is not None and after is not None and before != after:
                updated[stream_id] = after
        return DesiredChange(started, updated, frozenset(stopped), frozenset(released))


@dataclass
class Fold:
    """Reading one partition from the beginning up to `end_offset`."""

    end_offset: int
    started_s: float = field(default_factory=time.monotonic)
    latest: dict[str, StreamSpec | InvalidRecordError | None] = field(default_factory=dict)


class DesiredSet:
    """stream_id → spec of the owned partitions, with the folds in progress.

    Written by the watcher's poll thread only; read by any thread (`specs`, `partition_of`,
    `folding`), hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._specs: dict[str, StreamSpec] = {}
        self._partition_of: dict[str, int] = {}
        self._folds: dict[int, Fold] = {}

    def changes(self) -> ChangeLog:
        """A change log for one batch of edits."""
        return ChangeLog(self._specs)

    def specs(self) -> dict[str, StreamSpec]:
        """A copy of the desired set."""
        with self._lock:
            return dict(self._specs)

    def partition_of(self, stream_id: str) -> int | None:
        """The partition a desired stream came from."""
        with self._lock:
            return self._partition_of.get(stream_id)

    def folding(self) -> tuple[int, ...]:
        """The partitions still being read up to their end offset."""
        with self._lock:
            return tuple(sorted(self._folds))

    def fold_of(self, partition: int) -> Fold | None:
        """The fold in progress of `partition` (None once it is live)."""
        with self._lock:
            return self._folds.get(partition)

    def reassign(self, owned: set[int], folds: Mapping[int, Fold], changes: ChangeLog) -> None:
        """A new assignment: streams of partitions not in `owned` are released; the
        `folds` (one per partition of the assignment) start reading from the beginning."""
        with self._lock:
            for stream_id, partition in list(self._partition_of.items()):
                if partition not in owned:
                    changes.touch(stream_id, released=True)
                    del self._specs[stream_id]
                    del self._partition_of[stream_id]
            self._folds = dict(folds)

    def clear_folds(self) -> None:
        """Forget the folds in progress (the consumer is gone; they restart with the next
        assignment). The streams keep running meanwhile."""
        with self._lock:
            self._folds.clear()

    def set_spec(
        self, stream_id: str, spec: StreamSpec | None, partition: int, changes: ChangeLog
    ) -> None:
        """Apply one record's value now (None = the stream leaves the topic)."""
        with self._lock:
            changes.touch(stream_id)
            if spec is None:
                self._specs.pop(stream_id, None)
                self._partition_of.pop(stream_id, None)
            else:
                self._specs[stream_id] = same_run(self._specs.get(stream_id), spec)
                self._partition_of[stream_id] = partition

    def finish_fold(self, partition: int, changes: ChangeLog) -> list[InvalidRecordError]:
        """The fold of `partition` reached its end offset: its latest values become the
        partition's streams (a stream it no longer has leaves). Returns the invalid ones."""
        with self._lock:
            fold = self._folds.pop(partition)
            for stream_id, owner in list(self._partition_of.items()):
                if owner == partition and stream_id not in fold.latest:
                    changes.touch(stream_id)
                    del self._specs[stream_id]
                    del self._partition_of[stream_id]
        invalid: list[InvalidRecordError] = []
        for stream_id, latest in fold.latest.items():
            if isinstance(latest, InvalidRecordError):
                invalid.append(latest)
                latest = None
            self.set_spec(stream_id, latest, partition, changes)
        return invalid

    def release_all(self) -> DesiredChange:
        """Forget every stream (the watcher stops): all of them are released."""
        with self._lock:
            released = frozenset(self._specs)
            self._specs.clear()
            self._partition_of.clear()
            self._folds.clear()
        return DesiredChange(stopped=released, released=released)

    def __len__(self) -> int:
        with self._lock:
            return len(self._specs)
