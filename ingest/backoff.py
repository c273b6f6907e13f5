"""`Backoff`: the one retry delay of facestream (sources, Kafka, Redis).

Exponential from `initial_s` to `max_s`; `jitter` is the fraction of each delay that is
randomised away (0 = exact delays, 0.5 = each delay drawn from [half, full]) so many
clients that failed together do not retry together. `wait(stop)` sleeps the next delay
unless `stop` is set first.
"""

from __future__ import annotations

import random
import threading


class Backoff:
    """Delays `initial_s, 2·initial_s, …` capped at `max_s`; `reset()` after a success."""

    def __init__(self, initial_s: float, max_s: float, jitter: float = 0.0) -> None:
        if initial_s <= 0:
            raise ValueError(f"a backoff's first delay must be positive, got {initial_s}")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"backoff jitter is a fraction in [0, 1], got {jitter}")
        self.initial_s = initial_s
        self.max_s = max(max_s, initial_s)  # a cap below the first delay means no growth
        self.jitter = jitter
        self.attempt = 0  # delays handed out since the last reset

    def reset(self) -> None:
        """Start again from `initial_s` (the call this backoff guards succeeded)."""
        self.attempt = 0

    def next_delay_s(self) -> float:
        """The next delay in seconds (and count one attempt)."""
        base_s = min(self.max_s, self.initial_s * (2.0 ** min(self.attempt, 64)))
        self.attempt += 1
        return base_s * random.uniform(1.0 - self.jitter, 1.0)

    def wait(self, stop: threading.Event) -> bool:
        """Sleep the next delay; True when `stop` was set (at once or while waiting)."""
        return stop.wait(self.next_delay_s())
