"""Stream health in Redis: the `StreamState`s, the `StreamStatus` value and its hash
layout, worker liveness as readers see it, and a reader.

The writer side lives in `worker.publisher.EventPublisher.update_status` so that events
and statuses share one connection, one background thread and one outage policy. Worker
liveness keys are written by `worker.liveness.WorkerLiveness`.

A status is only as fresh as its owner: a reader asks whether the worker named in a
status still refreshes its liveness key (`owners_alive`) and shows a stream whose owner
is gone as `owner_gone` (`shown_state`), whatever the hash last said.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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
    DONE = "done"  # a finite source was read to its end and every window answered
    ERROR = "error"  # refused, invalid, or its source failed for good
    STOPPED = "stopped"  # a tombstone stopped it (`facestream stop`)
    RELEASED = "released"  # its worker let it go (shut down, partition moved) for the next
    # owner, whose first write replaces this status
    OWNER_GONE = "owner_gone"  # never written: readers show it for an owned state whose
    # worker's liveness key expired (killed, or cut off from Redis)

    @classmethod
    def while_source_is(cls, state: SourceState) -> StreamState:
        """The state of a running stream whose source is in `state`. A source at its end
        leaves the stream `running`: it is `done` only once its last windows are answered."""
        return cls.RUNNING if state is SourceState.DONE else cls(state.value)

    @property
    def needs_owner(self) -> bool:
        """Whether this state is only true while its worker is alive (a stream being
        worked on), as opposed to an outcome that stays true (`done`, `stopped`, ...)."""
        return self not in _OUTCOMES


_OUTCOMES = frozenset(
    {
        StreamState.DONE,
        StreamState.ERROR,
        StreamState.STOPPED,
        StreamState.RELEASED,
        StreamState.OWNER_GONE,
    }
)


@dataclass(frozen=True)
class StreamStatus:
    """One stream's health as stored in the hash `{prefix}:stream:{stream_id}`.

    `fps` is the detection rate (sampled frames run through the detector per second, what
    the stream costs and yields); `decode_fps` the rate frames were decoded at (the
    camera's rate while it keeps up). `reason` says why a stream is `stopped`/`released`.
    """

    stream_id: str
    state: StreamState
    worker_id: str
    updated_s: float
    url: str = ""
    fps: float | None = None
    last_frame_wall_s: float | None = None
    error: str = ""
    decode_fps: float | None = None
    tasks: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""

    def to_hash(self) -> dict[str, str]:
        """Hash fields (all strings; unknown numbers empty); URL and error are always redacted.
        Every field is always written, so a write replaces the whole previous status."""
        return {
            "stream_id": self.stream_id,
            "state": str(self.state),
            "worker_id": self.worker_id,
            "updated_s": repr(float(self.updated_s)),
            "url": redact_url(self.url) if self.url else "",
            "fps": _number_text(self.fps),
            "decode_fps": _number_text(self.decode_fps),
            "last_frame_wall_s": _number_text(self.last_frame_wall_s),
            "error": scrub_secrets(self.error, self.url or None),
            "tasks": ",".join(self.tasks),
            "labels": json.dumps(dict(self.labels), ensure_ascii=False) if self.labels else "",
            "reason": scrub_secrets(self.reason, self.url or None),
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
            decode_fps=number("decode_fps"),
            tasks=split_tasks(fields.get("tasks", "")),
            labels=parse_labels(fields.get("labels", "")),
            reason=fields.get("reason", ""),
        )


class StatusFormatError(ValueError):
    """A status hash in Redis does not have the layout this version writes."""


def _number_text(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def split_tasks(text: str) -> tuple[str, ...]:
    """The `tasks` field (comma-separated task names) as a tuple."""
    return tuple(task for task in text.split(",") if task)


def parse_labels(text: str) -> dict[str, str]:
    """The `labels` field (a JSON object of strings) as a dict; raises `StatusFormatError`."""
    if not text:
        return {}
    try:
        labels = json.loads(text)
    except ValueError as exc:
        raise StatusFormatError(f"labels {text[:40]!r} are not JSON") from exc
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise StatusFormatError(f"labels {text[:40]!r} are not an object of strings")
    return labels


def shown_state(state: StreamState, owner_alive: bool | None) -> StreamState:
    """What a reader shows: `owner_gone` for a state that needs its worker when the
    worker's liveness key is gone (`owner_alive` False); the written state otherwise."""
    if owner_alive is False and state.needs_owner:
        return StreamState.OWNER_GONE
    return state


def owners_alive(
    client: redis.Redis, keys: RedisKeys, worker_ids: Iterable[str]
) -> dict[str, bool]:
    """Whether each worker's liveness key `{prefix}:worker:{id}` exists (one round trip)."""
    ids = sorted({worker_id for worker_id in worker_ids if worker_id})
    if not ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for worker_id in ids:
        pipe.exists(keys.worker(worker_id))
    return {worker_id: bool(found) for worker_id, found in zip(ids, pipe.execute(), strict=True)}


class StreamStatusReader:
    """Reads stream statuses back as written (for dashboards' tests and tools)."""

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
