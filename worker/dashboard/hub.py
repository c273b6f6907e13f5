"""The dashboard's one reader of Redis and its fan-out to the open pages.

However many pages are open, one `DashboardHub` talks to Redis:

- the *live* thread subscribes to the `{p}:live` channel; each announcement (or one
  second of silence, which covers announcements lost while pub/sub reconnected) wakes
  it to read the new entries of the `{p}:events` stream after its cursor. So every
  event reaches the pages with its stream entry id, which is what lets a page that
  reconnects resume exactly where it stopped (`Last-Event-ID`);
- the *poll* thread reads every stream status hash and the person hashes it knows of
  (from events, and one SCAN at start) once per `poll_interval_s`, in pipelines, and
  sends the pages only what changed.

Each page is a `Subscriber` with a queue bounded in bytes. Policy `disconnect-slow`: a
page whose queue would exceed `client_buffer_bytes` is cut off; its browser reconnects
by itself with `Last-Event-ID` and replays the missed events from the Redis stream, so a
slow page loses time, not events.
"""

from __future__ import annotations

import contextlib
import json
import operator
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from ingest.urls import redact_url
from worker.dashboard.feed import (
    EntryId,
    FeedEvent,
    Subscriber,
    diff,
    feed_events,
    people_views,
    person_changed,
    sse_message,
    stream_view,
)
from worker.dashboard.replay import READ_PAGE_EVENTS, EventsStream, replay_events
from worker.redis_keys import RedisKeys
from worker.settings import DashboardSettings, RedisSettings
from worker.status_read import parse_status, with_owners
from worker.thumbnails import is_thumbnail

log = structlog.get_logger(__name__)

POLL_FAILURE_LOG_INTERVAL_S = 60.0
"""A poll that keeps failing on data it cannot read is logged at most this often."""

# An entry whose event JSON is larger than this is not sent (FaceEvents are < 2 KiB;
# a foreign writer's giant entry must not cut off every page).
MAX_EVENT_BYTES = 65536
# Person keys the hub follows at most (each costs one HGETALL + PTTL per poll).
MAX_PEOPLE = 20000


@dataclass(frozen=True)
class HubStats:
    """Counters since start (for `/healthz`, the benchmark and tests)."""

    events_read: int
    events_skipped: int
    subscribers: int
    subscribers_cut_off: int
    redis_up: bool | None


class DashboardHub:
    """Reads Redis once for all pages and fans the changes out; owns two threads."""

    def __init__(
        self,
        redis_settings: RedisSettings,
        settings: DashboardSettings,
        *,
        socket_timeout_s: float = 5.0,
    ) -> None:
        self.keys = RedisKeys(redis_settings.prefix)
        self.settings = settings
        self.person_ttl_s = redis_settings.person_ttl_s
        self._url = redis_settings.url
        self._client = redis.Redis.from_url(
            redis_settings.url,
            decode_responses=True,
            # A foreign hash or set member that is not UTF-8 is shown escaped, never fatal.
            encoding_errors="backslashreplace",
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
        )
        self._binary_client = redis.Redis.from_url(  # thumbnails are JPEG bytes
            redis_settings.url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
        )
        self._events = EventsStream(self._client, self._binary_client, self.keys.events)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # subscribers and the snapshot below
        self._subscribers: set[Subscriber] = set()
        self._streams: dict[str, dict[str, str]] = {}
        self._people: dict[str, dict[str, Any]] = {}  # person key -> view
        self._known_people: dict[str, float] = {}  # person key -> first seen (unix s)
        self._redis_up: bool | None = None
        self._events_read = 0
        self._events_skipped = 0
        self._cut_off = 0
        self._threads = [
            threading.Thread(target=self._guard, args=(self._live_loop,), name="dashboard-live"),
            threading.Thread(target=self._guard, args=(self._poll_loop,), name="dashboard-poll"),
        ]
        self.failure: BaseException | None = None
        self._cursor: EntryId | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> DashboardHub:
        """Fix the live cursor (the stream's newest entry now), then start both threads.
        Pages can only register after this returns, so every event after that cursor
        reaches them live (earlier ones come by replay)."""
        try:
            self._cursor = self._newest_entry()
        except redis.RedisError:
            self._cursor = None  # Redis is down: the live thread fixes it once Redis answers
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop both threads, close every subscriber, close the connection."""
        self._stop.set()
        with self._lock:
            subscribers = list(self._subscribers)
            self._subscribers.clear()
        for sub in subscribers:
            sub.close("dashboard stopping")
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(timeout_s)
        self._client.close()
        self._binary_client.close()

    @property
    def stopping(self) -> bool:
        """True once `stop` was called."""
        return self._stop.is_set()

    def is_alive(self) -> bool:
        """True while both threads run."""
        return all(thread.is_alive() for thread in self._threads)

    def stats(self) -> HubStats:
        """A snapshot of the counters."""
        with self._lock:
            return HubStats(
                events_read=self._events_read,
                events_skipped=self._events_skipped,
                subscribers=len(self._subscribers),
                subscribers_cut_off=self._cut_off,
                redis_up=self._redis_up,
            )

    # -- pages -----------------------------------------------------------------------------

    def subscribe(self) -> tuple[Subscriber, bytes] | None:
        """Register a page: its subscriber and the current state as one SSE message
        (taken atomically with the registration, so no later change is missed); None when
        `max_clients` pages are open."""
        sub = Subscriber(self.settings.client_buffer_bytes)
        with self._lock:
            if len(self._subscribers) >= self.settings.max_clients:
                return None
            self._subscribers.add(sub)
            state = sse_message("state", json.dumps(self._state_locked()))
        return sub, state

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a page (it closed, or was cut off)."""
        with self._lock:
            self._subscribers.discard(sub)

    def state(self) -> dict[str, Any]:
        """The streams, the people in view and the hub's health, as the page starts with."""
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> dict[str, Any]:
        return {
            "streams": dict(self._streams),
            "people": dict(self._people),
            "redis_up": self._redis_up,
            "person_ttl_s": self.person_ttl_s,
            "timeline_s": self.settings.timeline_s,
            "server_time_s": time.time(),
        }

    def replay(self, since: EntryId | None) -> tuple[list[FeedEvent], str | None]:
        """Events a page needs before the live feed, oldest first, and why some are
        missing (None: nothing is); see `worker.dashboard.replay`."""
        return replay_events(self._events, self.settings, since, self._feed)

    # -- threads ---------------------------------------------------------------------------

    def _guard(self, loop: Any) -> None:
        try:
            loop()
        except BaseException as exc:  # reported on /healthz; the page says Redis is lost
            log.exception("dashboard.thread_died", thread=threading.current_thread().name)
            self.failure = exc

    def _newest_entry(self) -> EntryId:
        last = self._events.revrange("+", "-", count=1)
        return EntryId.parse(last[0][0]) if last else EntryId(0, 0)

    def _live_loop(self) -> None:
        cursor = self._cursor
        pubsub = None
        delay_s = 0.2
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.keys.live)
                if cursor is None:
                    cursor = self._newest_entry()
                # Wake on an announcement, or after a second anyway (lost announcements).
                if pubsub.get_message(timeout=1.0) is not None:
                    while pubsub.get_message(timeout=0) is not None:
                        pass  # one read below covers every announcement so far
                cursor = self._read_after(cursor)
                self._set_redis_up(True)
                delay_s = 0.2
            except redis.RedisError as exc:
                self._set_redis_up(False, exc)
                if pubsub is not None:
                    with contextlib.suppress(redis.RedisError):
                        pubsub.close()
                pubsub = None
                self._stop.wait(delay_s)
                delay_s = min(delay_s * 2, 5.0)
        if pubsub is not None:
            pubsub.close()

    def _read_after(self, cursor: EntryId) -> EntryId:
        while not self._stop.is_set():
            raw = self._events.range(f"({cursor}", "+", count=READ_PAGE_EVENTS)
            if not raw:
                return cursor
            events = self._feed(raw)
            cursor = EntryId.parse(raw[-1][0])
            self._broadcast_events(events)
            if len(raw) < READ_PAGE_EVENTS:
                return cursor
        return cursor

    def _feed(self, raw: Any) -> list[FeedEvent]:
        events, skipped = feed_events(raw, MAX_EVENT_BYTES)
        if skipped:
            with self._lock:
                self._events_skipped += skipped
        return events

    def _broadcast_events(self, events: list[FeedEvent]) -> None:
        now_s = time.time()
        messages = [(e.entry_id, sse_message("face", e.event_json, e.entry_id)) for e in events]
        with self._lock:
            self._events_read += len(events)
            for event in events:
                if event.track_id is not None and event.stream_id:
                    key = self.keys.person(event.stream_id, event.session, event.track_id)
                    if key not in self._known_people and len(self._known_people) < MAX_PEOPLE:
                        self._known_people[key] = now_s
            self._fan_out_locked(messages)

    def _fan_out_locked(self, messages: list[tuple[EntryId | None, bytes]]) -> None:
        cut = []
        for sub in self._subscribers:
            for entry_id, message in messages:
                if not sub.offer(entry_id, message):
                    cut.append(sub)
                    break
        for sub in cut:
            self._subscribers.discard(sub)
        self._cut_off += len(cut)

    def _poll_loop(self) -> None:
        scanned = False
        last_failure_log_s = -POLL_FAILURE_LOG_INTERVAL_S
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if not scanned:
                    self._scan_people()
                    scanned = True
                self._poll_once()
                self._set_redis_up(True)
            except redis.RedisError as exc:
                self._set_redis_up(False, exc)
            except Exception:  # foreign data we did not foresee: the page keeps its last view
                if time.monotonic() - last_failure_log_s >= POLL_FAILURE_LOG_INTERVAL_S:
                    last_failure_log_s = time.monotonic()
                    log.exception("dashboard.poll_failed")
            self._stop.wait(max(0.0, self.settings.poll_interval_s - (time.monotonic() - started)))

    def _scan_people(self) -> None:
        """People already in view when the dashboard starts (once; later ones come by events)."""
        now_s = time.time()
        pattern = self.keys.person_pattern()
        found = {}
        for key in self._client.scan_iter(match=pattern, count=1000):
            found[key] = now_s
            if len(found) >= MAX_PEOPLE:
                break
        with self._lock:
            for key, seen_s in found.items():
                self._known_people.setdefault(key, seen_s)

    def _poll_once(self) -> None:
        stream_ids = sorted(self._client.smembers(self.keys.streams))
        with self._lock:
            person_keys = list(self._known_people)
        pipe = self._client.pipeline(transaction=False)
        for stream_id in stream_ids:
            pipe.hgetall(self.keys.stream(stream_id))
        for key in person_keys:
            pipe.hgetall(key)
            pipe.pttl(key)
            pipe.exists(self.keys.thumbnail_of_person(key))
        results = pipe.execute()
        now_s = time.time()
        entries = with_owners(  # as `facestream status` reads them
            self._client,
            self.keys,
            [
                parse_status(stream_id, fields)
                for stream_id, fields in zip(stream_ids, results[: len(stream_ids)], strict=True)
                if fields
            ],
        )
        streams = {entry.stream_id: stream_view(entry) for entry in entries}
        people, gone_keys = people_views(
            person_keys, results[len(stream_ids) :], self._known_people, now_s
        )
        with self._lock:
            for key in gone_keys:
                self._known_people.pop(key, None)
            _, streams_message = diff("streams", self._streams, streams, operator.ne)
            changed_people, people_message = diff("people", self._people, people, person_changed)
            messages = [(None, m) for m in (streams_message, people_message) if m is not None]
            self._streams = streams
            self._people = {
                **{k: self._people[k] for k in people if k in self._people},
                **changed_people,
            }
            if messages:
                self._fan_out_locked(messages)

    def thumbnail(self, person_key: str) -> bytes | None:
        """The face JPEG of a person the hub follows, or None (unknown person, no
        thumbnail, or stored bytes that are not a thumbnail of ours)."""
        with self._lock:
            if person_key not in self._known_people:
                return None  # only keys the hub found itself: never a key from the request
        try:
            data = self._binary_client.get(self.keys.thumbnail_of_person(person_key))
        except redis.RedisError:
            return None
        if not isinstance(data, bytes | bytearray) or not is_thumbnail(bytes(data)):
            return None
        return bytes(data)

    def _set_redis_up(self, up: bool, exc: BaseException | None = None) -> None:
        with self._lock:
            was = self._redis_up
            if was == up:
                return
            self._redis_up = up
            self._fan_out_locked([(None, sse_message("hub", json.dumps({"redis_up": up})))])
        if up:
            log.info("dashboard.redis_connected", url=redact_url(self._url))
        else:
            log.warning(
                "dashboard.redis_unreachable",
                url=redact_url(self._url),
                error=f"{type(exc).__name__}: {exc}",
            )
