"""Stream health in Redis: the `StreamStatus` value, its hash layout, and a reader.

The writer side lives in `worker.publisher.EventPublisher.update_status` so that events
and statuses share one connection, one background thread and one outage policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from ingest.sources import SourceState
from ingest.urls import redact_url, scrub_secrets
from worker.redis_keys import RedisKeys

if TYPE_CHECKING:
    import redis


class StreamState(StrEnum):
    """Where a stream is, as its status hash says (part of the Redis wire format)."""

    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    STALLED = "stalled"
    DEGRADED = "degraded"  # running, but not fully served (the error field says why)
    DONE = "done"
    ERROR = "error"

    @classmethod
    def while_source_is(cls, state: SourceState) -> StreamState:
        """The state of a running stream whose source is in `state`. A source at its end
        leaves the stream `running`: it is `done` only once its last windows are answered."""
        return cls.RUNNING if state is SourceState.DONE else cls(state.value)


@dataclass(frozen=True)
class StreamStatus:
    """One stream's health as stored in the hash `{prefix}:stream:{stream_id}`."""

    stream_id: str
    state: StreamState
    worker_id: str
    updated_s: float
    url: str = ""
    fps: float | None = None
    last_frame_wall_s: float | None = None
    error: str = ""

    def to_hash(self) -> dict[str, str]:
        """Hash fields (all strings; unknown numbers empty); URL and error are always redacted."""
        return {
            "stream_id": self.stream_id,
            "state": str(self.state),
            "worker_id": self.worker_id,
            "updated_s": repr(float(self.updated_s)),
            "url": redact_url(self.url) if self.url else "",
            "fps": "" if self.fps is None else repr(float(self.fps)),
            "last_frame_wall_s": (
                "" if self.last_frame_wall_s is None else repr(float(self.last_frame_wall_s))
            ),
            "error": scrub_secrets(self.error, self.url or None),
        }

    @classmethod
    def from_hash(cls, stream_id: str, fields: dict[str, str]) -> StreamStatus:
        """Rebuild from a hash read back from Redis (decoded to str)."""

        def number(name: str) -> float | None:
            text = fields.get(name, "")
            return float(text) if text else None

        state_text = fields.get("state", "")
        try:
            state = StreamState(state_text)
        except ValueError as exc:
            raise StatusFormatError(
                f"stream {stream_id!r} has unknown state {state_text!r}; "
                "is a newer facestream writing this prefix?"
            ) from exc
        return cls(
            stream_id=stream_id,
            state=state,
            worker_id=fields.get("worker_id", ""),
            updated_s=number("updated_s") or 0.0,
            url=fields.get("url", ""),
            fps=number("fps"),
            last_frame_wall_s=number("last_frame_wall_s"),
            error=fields.get("error", ""),
        )


class StatusFormatError(ValueError):
    """A status hash in Redis does not have the layout this version writes."""


class StreamStatusReader:
    """Reads stream statuses back (for `facestream status` and dashboards' tests)."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self._client = client
        self._keys = keys

    def get(self, stream_id: str) -> StreamStatus | None:
        """The status of one stream, or None when it has none (unknown or expired)."""
        fields = _decode(self._client.hgetall(self._keys.stream(stream_id)))
        return StreamStatus.from_hash(stream_id, fields) if fields else None

    def list_all(self) -> list[StreamStatus]:
        """Every known stream with a live status hash, sorted by stream id."""
        ids = sorted(_text(member) for member in self._client.smembers(self._keys.streams))
        pipe = self._client.pipeline(transaction=False)
        for stream_id in ids:
            pipe.hgetall(self._keys.stream(stream_id))
        statuses = []
        for stream_id, raw in zip(ids, pipe.execute(), strict=True):
            fields = _decode(raw)
            if fields:  # the set may still name a stream whose hash expired
                statuses.append(StreamStatus.from_hash(stream_id, fields))
        return statuses


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(raw: dict) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}
