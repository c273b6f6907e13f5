"""What the dashboard hub sends its pages: stream entry ids, the server-sent-events wire
format, one page's outbox bounded in bytes (`Subscriber`, policy `disconnect-slow`), and
the views of status and person hashes with the diffs between polls."""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models.facellava.tasks import Task
from worker.status_read import StatusEntry

_INTEGER = re.compile(r"-?[0-9]{1,18}")  # a track id as the worker writes it

# A person's expiry is re-sent only when it moved by more than this (polls jitter by ms).
EXPIRY_TOLERANCE_S = 0.75
_TASK_FIELDS = frozenset(str(task) for task in Task)


@dataclass(frozen=True, order=True)
class EntryId:
    """A Redis stream entry id `ms-seq`, ordered as Redis orders them."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, text: str) -> EntryId:
        """Parse `123-4` (or `123`, meaning `123-0`); ValueError if it is not an entry id."""
        ms_text, _, seq_text = text.strip().partition("-")
        ms, seq = int(ms_text), int(seq_text or "0")
        if ms < 0 or seq < 0:
            raise ValueError(f"not a stream entry id: {text!r}")
        return cls(ms, seq)

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


@dataclass(frozen=True)
class FeedEvent:
    """One entry of the events stream as the pages get it: its id and the event JSON."""

    entry_id: EntryId
    event_json: str
    stream_id: str
    track_id: int | None
    task: str
    session: str = ""


def sse_message(kind: str, data: str, entry_id: EntryId | None = None) -> bytes:
    """One server-sent-events message; every line of `data` becomes a `data:` line."""
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    head = f"id: {entry_id}\n" if entry_id is not None else ""
    body = "".join(f"data: {line}\n" for line in lines)
    return f"{head}event: {kind}\n{body}\n".encode()


class Subscriber:
    """One open page: a queue of encoded SSE messages bounded in bytes (`disconnect-slow`)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._cond = threading.Condition()
        self._queue: deque[tuple[EntryId | None, bytes]] = deque()
        self._bytes = 0
        self.closed_reason = ""

    def offer(self, entry_id: EntryId | None, message: bytes) -> bool:
        """Queue a message; False (and the subscriber is closed) when it would overflow."""
        with self._cond:
            if self.closed_reason:
                return False
            if self._bytes + len(message) > self._max_bytes:
                self._close_locked("slow: more than client_buffer_bytes unsent")
                return False
            self._queue.append((entry_id, message))
            self._bytes += len(message)
            self._cond.notify_all()
            return True

    def take(self, timeout_s: float) -> list[tuple[EntryId | None, bytes]]:
        """Everything queued (waits up to `timeout_s` for something); empty once closed."""
        with self._cond:
            if not self._queue and not self.closed_reason:
                self._cond.wait(timeout_s)
            items = list(self._queue)
            self._queue.clear()
            self._bytes = 0
            return items

    def close(self, reason: str) -> None:
        """Close it; a waiting `take` returns at once."""
        with self._cond:
            self._close_locked(reason)

    def _close_locked(self, reason: str) -> None:
        if not self.closed_reason:
            self.closed_reason = reason
        self._queue.clear()
        self._bytes = 0
        self._cond.notify_all()


def stream_view(entry: StatusEntry) -> dict[str, str]:
    """A status hash as the page gets it: every field, as strings (newer fields included).

    As `facestream status` shows it (`StatusEntry.state`): a state that needs its worker
    (`running`, ...) is shown `owner_gone` when that worker's liveness key is gone; the
    state as written is then kept in `written_state`."""
    view = dict(sorted(entry.fields.items()))
    if entry.status is not None and entry.state is not entry.status.state:
        view["written_state"] = view["state"]
        view["state"] = str(entry.state)
    return view


def person_view(
    fields: dict[str, str], expires_s: float | None, first_seen_s: float
) -> dict[str, Any]:
    """A person hash as the page gets it: the latest event per task, parsed; other fields
    as strings. A task field that is not JSON is passed on as its text."""
    tasks: dict[str, Any] = {}
    other: dict[str, str] = {}
    for name, value in fields.items():
        if name in _TASK_FIELDS and value.startswith("{"):
            try:
                tasks[name] = json.loads(value)
                continue
            except ValueError:
                pass
        other[name] = value
    window_starts = [
        t.get("frame_wall_time_s", 0) - (t.get("window_end_s", 0) - t.get("window_start_s", 0))
        for t in tasks.values()
        if isinstance(t, dict) and isinstance(t.get("frame_wall_time_s"), int | float)
    ]
    return {
        "fields": other,
        "tasks": tasks,
        "expires_s": expires_s,
        "first_seen_s": min([first_seen_s, *window_starts]),
    }


def person_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    if old is None or old["fields"] != new["fields"] or old["tasks"] != new["tasks"]:
        return True
    if old.get("thumbnail") != new.get("thumbnail"):
        return True
    if (old["expires_s"] is None) != (new["expires_s"] is None):
        return True
    return (
        old["expires_s"] is not None
        and abs(old["expires_s"] - new["expires_s"]) > EXPIRY_TOLERANCE_S
    )


def diff(
    kind: str,
    old: dict[str, Any],
    new: dict[str, Any],
    changed: Callable[[Any, Any], bool],
) -> tuple[dict[str, Any], bytes | None]:
    """The entries of `new` that `changed(old value or None, new value)`, and the `kind`
    message of those and of the keys gone since `old` (None when nothing changed)."""
    changed_entries = {k: v for k, v in new.items() if changed(old.get(k), v)}
    removed = [k for k in old if k not in new]
    if not (changed_entries or removed):
        return changed_entries, None
    body = json.dumps({"changed": changed_entries, "removed": removed})
    return changed_entries, sse_message(kind, body)


def feed_events(raw: Any, max_event_bytes: int) -> tuple[list[FeedEvent], int]:
    """The entries of an XRANGE/XREAD reply as `FeedEvent`s, and how many were skipped
    (no event, or its JSON over `max_event_bytes`)."""
    events = []
    skipped = 0
    for entry_id, fields in raw:
        event_json = fields.get("event", "")
        if not event_json or len(event_json) > max_event_bytes:
            skipped += 1
            continue
        track = fields.get("track_id", "")
        events.append(
            FeedEvent(
                entry_id=EntryId.parse(entry_id),
                event_json=event_json,
                stream_id=fields.get("stream_id", ""),
                track_id=int(track) if _INTEGER.fullmatch(track) else None,
                task=fields.get("task", ""),
                session=fields.get("session", ""),
            )
        )
    return events, skipped


def people_views(
    person_keys: list[str], replies: list[Any], first_seen: dict[str, float], now_s: float
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The person views from one poll's replies (HGETALL, PTTL, EXISTS thumbnail per key),
    and the keys that are gone."""
    people: dict[str, dict[str, Any]] = {}
    gone_keys = []
    for i, key in enumerate(person_keys):
        fields, pttl_ms, has_thumbnail = replies[3 * i : 3 * i + 3]
        if not fields or pttl_ms == -2:
            gone_keys.append(key)
            continue
        expires_s = now_s + pttl_ms / 1000 if pttl_ms >= 0 else None
        people[key] = person_view(fields, expires_s, first_seen.get(key, now_s))
        people[key]["thumbnail"] = bool(has_thumbnail)
    return people, gone_keys
