"""`StageThread`: a named, owned, stoppable thread whose death is logged and visible."""

from __future__ import annotations

import threading

import structlog

log = structlog.get_logger(__name__)


class StageThread:
    """Runs `run()` in a daemon thread named `name`; `stop()` asks `run()` to end (it
    watches `stopping`), `is_alive()` tells health checks whether it still runs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._guarded, name=name, daemon=True)

    def run(self) -> None:
        """The thread's loop; ends when `stopping` is set (or raises: the thread dies)."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the thread (once)."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end; returns at once (`join` waits)."""
        self.stopping.set()

    def join(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the thread to end."""
        if self._thread.ident is not None:
            self._thread.join(max(0.0, timeout_s))

    @property
    def started(self) -> bool:
        """Whether `start` was called."""
        return self._thread.ident is not None

    def is_alive(self) -> bool:
        """Whether the thread runs now."""
        return self._thread.is_alive()

    def _guarded(self) -> None:
        try:
            self.run()
        except Exception:
            log.exception("thread died", thread=self.name)
