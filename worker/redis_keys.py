"""Names of every Redis key and channel facestream uses; all share one prefix.

Dashboards and other readers depend on these names: change them only with a version bump
(`KEY_LAYOUT_VERSION`). A stream id inside a key is wrapped in braces, `{lobby}`: a stream
id cannot contain `{` or `}` (`worker.specs.STREAM_ID_RULE`), so a pattern for one stream
(`{p}:person:{lobby}:*`) never matches another stream's keys (`{p}:person:{lobby:2}:...`),
though ids may contain ':'. (In a Redis Cluster the braces are a hash tag: one stream's
person, thumbnail and status keys share a slot.)
"""

from __future__ import annotations

from dataclasses import dataclass

# 1: {p}:person:{stream_id}:{track_id}, {p}:stream:{stream_id} (stream ids bare)
# 2: stream ids in braces; person and thumbnail keys carry the session
KEY_LAYOUT_VERSION = 2

_GLOB_SPECIALS = "\\*?[]"


def glob_escape(text: str) -> str:
    """`text` with Redis glob specials escaped, for a literal part of a MATCH pattern."""
    return "".join(f"\\{c}" if c in _GLOB_SPECIALS else c for c in text)


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

    def person(self, stream_id: str, session: str, track_id: int) -> str:
        """Hash with the latest result per task of one tracked person (expires when idle)."""
        return f"{self.prefix}:person:{{{stream_id}}}:{session}:{track_id}"

    def person_pattern(self, stream_id: str | None = None) -> str:
        """SCAN MATCH pattern for the person hashes of one stream (all streams: None)."""
        if stream_id is None:
            return f"{glob_escape(self.prefix)}:person:{{*}}:*"
        return f"{glob_escape(self.prefix)}:person:{{{glob_escape(stream_id)}}}:*"

    def thumbnail(self, stream_id: str, session: str, track_id: int) -> str:
        """A person's best face crop as a small JPEG (only with thumbnails on; the person
        hash's TTL)."""
        return f"{self.prefix}:thumb:{{{stream_id}}}:{session}:{track_id}"

    def thumbnail_of_person(self, person_key: str) -> str:
        """The thumbnail key of a person hash key (same stream, session and track)."""
        head = f"{self.prefix}:person:"
        if not person_key.startswith(head):
            raise ValueError(f"not a person key under prefix {self.prefix!r}")
        return f"{self.prefix}:thumb:{person_key[len(head) :]}"

    def stream(self, stream_id: str) -> str:
        """Hash with the health of one stream."""
        return f"{self.prefix}:stream:{{{stream_id}}}"

    def stream_raw(self, raw_stream_id: bytes) -> bytes:
        """`stream()` of an id read back from Redis as bytes (which may not be UTF-8)."""
        return f"{self.prefix}:stream:{{".encode() + raw_stream_id + b"}"

    def stream_pattern(self) -> str:
        """SCAN MATCH pattern for every stream status hash."""
        return f"{glob_escape(self.prefix)}:stream:{{*}}"

    def worker(self, worker_id: str) -> str:
        """Liveness key of one worker (expires unless the worker keeps refreshing it)."""
        return f"{self.prefix}:worker:{worker_id}"

    def seen(self, event_id: str) -> str:
        """Marker that an event id was already published (idempotency across workers)."""
        return f"{self.prefix}:seen:{event_id}"
