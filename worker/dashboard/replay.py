"""What a page that (re)connects gets before the live feed: the events it missed, read
from the Redis events stream after its `Last-Event-ID`, or for a new page the latest few.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from worker.dashboard.feed import EntryId, FeedEvent
from worker.settings import DashboardSettings

READ_PAGE_EVENTS = 500
"""Entries read from the events stream per round trip."""
REPLAY_MAX_EVENTS = 10000
"""A page that was away longer than this many events gets the newest ones and a `gap`."""


class EventsStream:
    """Reads of the events stream that survive entries other writers left: bytes that are
    not UTF-8 are read again through the binary client and shown as `\\xNN`, so one such
    entry never stops the live feed or a page's replay."""

    def __init__(self, text_client: redis.Redis, binary_client: redis.Redis, key: str) -> None:
        self._text = text_client
        self._binary = binary_client
        self.key = key

    def range(self, start: str, end: str, count: int) -> list[tuple[str, dict[str, str]]]:
        """XRANGE key start end COUNT count, entries as text."""
        return self._read("xrange", start, end, count)

    def revrange(self, end: str, start: str, count: int) -> list[tuple[str, dict[str, str]]]:
        """XREVRANGE key end start COUNT count, entries as text."""
        return self._read("xrevrange", end, start, count)

    def info(self) -> dict[str, Any]:
        """XINFO STREAM of the events stream (its entries read as bytes: never decoded)."""
        return {_text(k): v for k, v in self._binary.xinfo_stream(self.key).items()}

    def _read(self, command: str, a: str, b: str, count: int) -> list[tuple[str, dict[str, str]]]:
        try:
            return getattr(self._text, command)(self.key, a, b, count=count)
        except UnicodeDecodeError:
            raw = getattr(self._binary, command)(self.key, a, b, count=count)
            return [
                (_text(entry_id), {_text(k): _text(v) for k, v in fields.items()})
                for entry_id, fields in raw
            ]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def replay_events(
    events: EventsStream,
    settings: DashboardSettings,
    since: EntryId | None,
    feed: Callable[[Any], list[FeedEvent]],
) -> tuple[list[FeedEvent], str | None]:
    """Events after `since` (exclusive), or for a new page the newest `history_events` of
    the last `timeline_s`, oldest first (`feed` turns stream entries into page events).
    The second value says why some are missing (None: nothing is)."""
    if since is None:
        if settings.history_events == 0:
            return [], None
        oldest = EntryId(int((time.time() - settings.timeline_s) * 1000), 0)
        raw = events.revrange("+", str(oldest), count=settings.history_events)
        return feed(list(reversed(raw))), None
    missed: list[FeedEvent] = []
    cursor = f"({since}"
    while True:
        raw = events.range(cursor, "+", count=READ_PAGE_EVENTS)
        missed.extend(feed(raw))
        if len(missed) > REPLAY_MAX_EVENTS:
            # Away too long: the newest REPLAY_MAX_EVENTS are enough for a page.
            raw = events.revrange("+", "-", count=REPLAY_MAX_EVENTS)
            newest = feed(list(reversed(raw)))
            return newest, f"more than {REPLAY_MAX_EVENTS} events missed; older ones skipped"
        if len(raw) < READ_PAGE_EVENTS:
            break
        cursor = f"({raw[-1][0]}"
    return missed, trimmed_after(events, since)


def trimmed_after(events: EventsStream, since: EntryId) -> str | None:
    """Why entries after `since` are missing (the stream's MAXLEN trimmed them), or None."""
    if since == EntryId(0, 0):
        return None
    first = events.range("-", "+", count=1)
    if not first or EntryId.parse(first[0][0]) <= since:
        return None
    # Redis >= 7 reports the largest id it ever deleted: a gap only if it is past `since`.
    max_deleted = events.info().get("max-deleted-entry-id")
    if max_deleted is not None and EntryId.parse(max_deleted) <= since:
        return None
    return "the events stream was trimmed (MAXLEN) past the last event this page had"
