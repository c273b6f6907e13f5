"""A stream's status hash as read back: the parsed `StreamStatus`, or what is wrong with it.

Readers (`facestream status`, the dashboard) show a hash they cannot parse as it is, with
its problems; only a good entry is checked against its worker's liveness key, so both
show `owner_gone` by the same rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from worker.status import (
    StatusFormatError,
    StreamState,
    StreamStatus,
    owners_alive,
    parse_labels,
    shown_state,
    split_tasks,
)

if TYPE_CHECKING:
    import redis

    from worker.redis_keys import RedisKeys

# A Unix time past this (year 5138) or before 0 is not a time a worker wrote.
_MAX_UNIX_S = 1e11
_MAX_FPS = 1e6


@dataclass(frozen=True)
class StatusEntry:
    """One stream's status hash as read: the parsed status, or what is wrong with it."""

    stream_id: str
    status: StreamStatus | None
    fields: dict[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    owner_alive: bool | None = None  # None: not asked (no worker named, or a broken entry)

    @property
    def good(self) -> bool:
        """Parsed without a problem: the only kind of entry checked against its worker."""
        return self.status is not None and not self.problems

    @property
    def state(self) -> StreamState | None:
        """The state to show: `owner_gone` when a running stream's worker is gone."""
        return None if self.status is None else shown_state(self.status.state, self.owner_alive)

    def to_json(self) -> dict[str, Any]:
        """The status fields for a good entry (`state` as shown, `written_state` as the
        worker wrote it, `owner_alive`); raw fields and problems otherwise."""
        if self.good and self.status is not None:
            fields = asdict(self.status)
            fields["labels"] = dict(self.status.labels)
            fields["tasks"] = list(self.status.tasks)
            return {
                **fields,
                "state": str(self.state),
                "written_state": str(self.status.state),
                "owner_alive": self.owner_alive,
            }
        return {"stream_id": self.stream_id, "problems": list(self.problems), "raw": self.fields}


def parse_status(stream_id: str, fields: dict[str, str]) -> StatusEntry:
    """A `StatusEntry` from a decoded hash; every field that does not parse is a problem."""
    problems: list[str] = []

    def number(name: str, low: float, high: float, what: str) -> float | None:
        text = fields.get(name, "")
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            problems.append(f"{name} {text[:40]!r} is not a number")
            return None
        if not math.isfinite(value) or not low <= value <= high:
            problems.append(f"{name} {text[:40]!r} is not {what}")
            return None
        return value

    state_text = fields.get("state", "")
    try:
        state = StreamState(state_text)
    except ValueError:
        problems.append(f"unknown state {state_text[:40]!r}")
        state = None
    fps = number("fps", 0.0, _MAX_FPS, "a frame rate")
    decode_fps = number("decode_fps", 0.0, _MAX_FPS, "a frame rate")
    try:
        labels = parse_labels(fields.get("labels", ""))
    except StatusFormatError as exc:
        problems.append(str(exc))
        labels = {}
    updated_s = number("updated_s", 0.0, _MAX_UNIX_S, "a Unix time")
    last_frame_s = number("last_frame_wall_s", 0.0, _MAX_UNIX_S, "a Unix time")
    if "updated_s" not in fields:
        problems.append("no updated_s")
    status = StreamStatus(
        stream_id=stream_id,
        state=state if state is not None else StreamState.ERROR,
        worker_id=fields.get("worker_id", ""),
        updated_s=updated_s or 0.0,
        url=fields.get("url", ""),
        fps=fps,
        last_frame_wall_s=last_frame_s,
        error=fields.get("error", ""),
        decode_fps=decode_fps,
        tasks=split_tasks(fields.get("tasks", "")),
        labels=labels,
        reason=fields.get("reason", ""),
    )
    return StatusEntry(stream_id, None if state is None else status, fields, tuple(problems))


def with_owners(
    client: redis.Redis, keys: RedisKeys, entries: Sequence[StatusEntry]
) -> list[StatusEntry]:
    """`entries` with `owner_alive` filled in for the good ones (one round trip); an entry
    that did not parse is never checked against a worker."""
    alive = owners_alive(client, keys, [e.status.worker_id for e in entries if e.good and e.status])
    return [
        replace(e, owner_alive=alive.get(e.status.worker_id)) if e.good and e.status else e
        for e in entries
    ]
