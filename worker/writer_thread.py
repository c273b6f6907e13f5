"""`WriterThread`: the shell shared by the event writers (`worker.publisher` to Redis,
`worker.kafka_events` to Kafka).

Each owns one daemon thread that writes what callers queued and, after a failed write,
waits a backoff before it retries. This class holds what both do the same way: the
condition that guards the writer's state, starting the thread once, recording the
unexpected error that ended it, stopping it, waiting out a backoff that `flush` or `stop`
cuts short, and a flush that waits until the writer's queue is drained. What is queued,
how it is bounded and how it is written stay in the subclass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Self

import structlog

log = structlog.get_logger(__name__)

_FLUSH_POLL_S = 0.5  # a flush looks at least this often whether the thread is still alive


class WriterThread:
    """One owned, stoppable writer thread; subclasses implement `_loop` and guard their
    own queued state with `_cond`."""

    def __init__(self, thread_name: str, *, died_event: str) -> None:
        """`thread_name`: the thread's name; `died_event`: the log event when it dies."""
        self._thread_name = thread_name
        self._died_event = died_event
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._stop_requested = False
        self._retry_now = False
        self._failure: BaseException | None = None

    def start(self) -> Self:
        """Start the thread (once); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            self._thread.start()
        return self

    def is_alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def failure(self) -> BaseException | None:
        """The unexpected error that ended the thread, if any."""
        return self._failure

    def _loop(self) -> None:
        """The thread's work; returns once `_stop_requested` is set."""
        raise NotImplementedError

    def _on_died(self) -> None:
        """Called with `_cond` held after `_loop` raised, to reset the subclass's state."""

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            log.exception(self._died_event)
            with self._cond:
                self._failure = exc
                self._on_died()
                self._cond.notify_all()

    def _stop_thread(self, timeout_s: float) -> None:
        """Ask the thread to end and wait up to `timeout_s` for it."""
        with self._cond:
            self._stop_requested = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _wait_drained(self, drained: Callable[[], bool], timeout_s: float) -> bool:
        """Cut a waiting backoff short, then wait until `drained()` (called with `_cond`
        held); False when `timeout_s` ran out or the thread died first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._retry_now = True
            self._cond.notify_all()
            while not drained():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._failure is not None or not self.is_alive():
                    return False
                self._cond.wait(min(remaining, _FLUSH_POLL_S))
            return True

    def _wait_before_retry(self, delay_s: float) -> None:
        """Sleep `delay_s` unless a stop or a flush comes first."""
        deadline = time.monotonic() + delay_s
        with self._cond:
            while not (self._stop_requested or self._retry_now):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._retry_now = False
