"""The bounded queue between the windows and the model, with a named drop policy.

Policy `newest-per-track`: a person's newer window supersedes their older one still
waiting (the newer says more about now); when the queue is full — `capacity` windows or
`capacity_bytes` bytes of crops — the oldest windows of all are dropped until the new one
fits (one window always fits); a window older than `max_age_s` when the model reaches it is dropped
as stale. Every drop is counted by reason (`drops`); nothing is dropped silently.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ingest.bounded import BoundedItems
from ingest.windows import WindowRequests
from models.facellava.tasks import Task

if TYPE_CHECKING:
    from worker.settings import SchedulerSettings

DROP_REASONS = ("superseded", "queue_full", "stale", "stream_stopped", "model_error", "shutdown")


@dataclass(frozen=True)
class WindowJob:
    """One window of one person (its clip and best image) and the tasks its stream asked;
    `session` and `labels` of the stream's run go into its events."""

    request: WindowRequests
    tasks: tuple[Task, ...]
    enqueued_s: float = field(default_factory=time.monotonic)
    session: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of the crops this job holds (its clip and its best image)."""
        return int(self.request.clip.crops_rgb.nbytes) + int(self.request.image.crop_rgb.nbytes)

    @property
    def key(self) -> tuple[str, int]:
        """(stream_id, track_id): a person's newer window supersedes the older one."""
        window = self.request.clip.window
        return (window.stream_id, window.track_id)


class WindowQueue:
    """Thread-safe, bounded, with the `newest-per-track` policy; drops counted by reason."""

    def __init__(self, capacity: int, max_age_s: float, capacity_bytes: int | None = None) -> None:
        self._jobs: BoundedItems[tuple[str, int], WindowJob] = BoundedItems(
            capacity, capacity_bytes, lambda job: job.nbytes
        )
        self._cond = self._jobs.cond
        self._max_age_s = max_age_s
        self._drops: Counter[str] = Counter()
        self._taken: Counter[str] = Counter()  # stream_id → jobs taken, not yet `done`
        self._closed = False

    @classmethod
    def from_settings(cls, settings: SchedulerSettings) -> WindowQueue:
        """The worker's window queue, bounded in windows and bytes as `settings` say."""
        return cls(
            settings.model_queue_windows, settings.max_window_age_s, settings.model_queue_bytes
        )

    def count_drop(self, reason: str, n: int) -> None:
        """Count `n` windows dropped outside the queue (`stream_stopped`, `model_error`)."""
        with self._cond:
            self._count_drop(reason, n)

    def _count_drop(self, reason: str, n: int) -> None:
        self._drops[reason] += n

    @property
    def drops(self) -> dict[str, int]:
        """Windows dropped so far, by reason (every reason of `DROP_REASONS`)."""
        with self._cond:
            return {reason: self._drops[reason] for reason in DROP_REASONS}

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def nbytes(self) -> int:
        """Bytes of the crops of the windows waiting now."""
        return self._jobs.nbytes

    def put(self, job: WindowJob) -> None:
        """Enqueue without ever blocking; applies the drop policy."""
        with self._cond:
            if self._closed:
                self._count_drop("shutdown", 1)
                return
            if job.key in self._jobs:
                self._jobs.remove(job.key)
                self._count_drop("superseded", 1)
            while not self._jobs.fits(job):
                self._jobs.remove_oldest()
                self._count_drop("queue_full", 1)
            self._jobs.add(job.key, job)
            self._cond.notify()

    def take(self, max_jobs: int, fill_wait_s: float, timeout_s: float) -> list[WindowJob]:
        """Up to `max_jobs` fresh jobs, oldest first; waits `timeout_s` for the first one and
        then at most `fill_wait_s` more for the batch to fill. Empty on timeout or close.
        The caller reports the batch finished with `done(batch)`."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._jobs and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
            fill_deadline = time.monotonic() + fill_wait_s
            while len(self._jobs) < max_jobs and not self._closed:
                remaining = fill_deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[WindowJob] = []
            now = time.monotonic()
            while self._jobs and len(batch) < max_jobs:
                job = self._jobs.remove_oldest()
                if now - job.enqueued_s > self._max_age_s:
                    self._count_drop("stale", 1)
                    continue
                batch.append(job)
                self._taken[job.key[0]] += 1
            return batch

    def done(self, jobs: list[WindowJob]) -> None:
        """The model finished (answered or dropped) jobs returned by `take`."""
        with self._cond:
            self._taken.subtract(job.key[0] for job in jobs)
            for stream_id in {job.key[0] for job in jobs}:
                if self._taken[stream_id] <= 0:
                    del self._taken[stream_id]

    def has_stream(self, stream_id: str) -> bool:
        """Whether a window of `stream_id` is waiting, or taken and not yet `done`."""
        with self._cond:
            return stream_id in self._taken or any(k[0] == stream_id for k in self._jobs)

    def drop_stream(self, stream_id: str) -> None:
        """Forget the waiting windows of a stopped stream (counted as `stream_stopped`)."""
        with self._cond:
            keys = [k for k in self._jobs if k[0] == stream_id]
            for k in keys:
                self._jobs.remove(k)
            if keys:
                self._count_drop("stream_stopped", len(keys))

    def close(self) -> int:
        """Refuse new jobs, wake waiters, and drop what is left; returns how many dropped."""
        with self._cond:
            self._closed = True
            n = self._jobs.clear()
            if n:
                self._count_drop("shutdown", n)
            self._cond.notify_all()
            return n
