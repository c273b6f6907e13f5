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


def replay_events(
    client: redis.Redis,
    events_key: str,
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
        raw = client.xrevrange(events_key, "+", str(oldest), count=settings.history_events)
        return feed(list(reversed(raw))), None
    events: list[FeedEvent] = []
    cursor = f"({since}"
    while True:
        raw = client.xrange(events_key, cursor, "+", count=READ_PAGE_EVENTS)
        events.extend(feed(raw))
        if len(events) > REPLAY_MAX_EVENTS:
            # Away too long: the newest REPLAY_MAX_EVENTS are enough for a page.
            raw = client.xrevrange(events_key, "+", "-", count=REPLAY_MAX_EVENTS)
            newest = feed(list(reversed(raw)))
            return newest, f"more than {REPLAY_MAX_EVENTS} events missed; older ones skipped"
        if len(raw) < READ_PAGE_EVENTS:
            break
        cursor = f"({raw[-1][0]}"
    return events, trimmed_after(client, events_key, since)


def trimmed_after(client: redis.Redis, events_key: str, since: EntryId) -> str | None:
    """Why entries after `since` are missing (the stream's MAXLEN trimmed them), or None."""
    if since == EntryId(0, 0):
        return None
    first = client.xrange(events_key, "-", "+", count=1)
    if not first or EntryId.parse(first[0][0]) <= since:
        return None
    # Redis >= 7 reports the largest id it ever deleted: a gap only if it is past `since`.
    max_deleted = client.xinfo_stream(events_key).get("max-deleted-entry-id")
    if max_deleted is not None and EntryId.parse(max_deleted) <= since:
        return None
    return "the events stream was trimmed (MAXLEN) past the last event this page had"
