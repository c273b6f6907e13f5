"""Names of every Redis key and channel facestream uses; all share one prefix.

Dashboards and other readers depend on these names: change them only with a version bump.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    """Key names under `prefix` (default `facestream`)."""

    prefix: str = "facestream"

    @property
    def events(self) -> str:
        """Redis Stream of every `FaceEvent` (capped with approximate MAXLEN)."""
        return f"{self.prefix}:events"

    @property
    def live(self) -> str:
        """Pub/sub channel announcing each new event (same JSON as the stream)."""
        return f"{self.prefix}:live"

    @property
    def streams(self) -> str:
        """Set of the stream ids that have a status hash."""
        return f"{self.prefix}:streams"

    def person(self, stream_id: str, track_id: int) -> str:
        """Hash with the latest result per task of one tracked person (expires when idle)."""
        return f"{self.prefix}:person:{stream_id}:{track_id}"

    def stream(self, stream_id: str) -> str:
        """Hash with the health of one stream."""
        return f"{self.prefix}:stream:{stream_id}"

    def worker(self, worker_id: str) -> str:
        """Liveness key of one worker (expires unless the worker keeps refreshing it)."""
        return f"{self.prefix}:worker:{worker_id}"

    def seen(self, event_id: str) -> str:
        """Marker that an event id was already published (idempotency across workers)."""
        return f"{self.prefix}:seen:{event_id}"
