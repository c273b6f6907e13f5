"""`facestream dashboard` against a real Redis fed by the real `EventPublisher`: the SSE
feed (state, history, live, resume after reconnect), diffs of statuses and people, the
bounded per-page queue, and how the page is protected."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tests.events import emotion_event
from worker.dashboard.hub import DashboardHub, EntryId, Subscriber, sse_message
from worker.dashboard.server import DashboardConfigError, DashboardServer, check_bind
from worker.dashboard.sse_client import SseConnection, SseMessage
from worker.publisher import EventPublisher
from worker.redis_keys import RedisKeys
from worker.settings import DashboardSettings, RedisSettings
from worker.status import StreamState, StreamStatus

pytestmark = pytest.mark.timeout(120)
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def redis_settings(redis_server) -> RedisSettings:
    return RedisSettings(url=redis_server.url, prefix=f"dash{time.monotonic_ns() % 10**8}")


@pytest.fixture
def publisher(redis_settings: RedisSettings) -> Iterator[EventPublisher]:
    with EventPublisher(redis_settings) as pub:
        yield pub


@pytest.fixture
def start_dashboard(
    redis_settings: RedisSettings,
) -> Iterator[Callable[..., DashboardServer]]:
    servers: list[DashboardServer] = []

    def start(token: str | None = None, **dash: object) -> DashboardServer:
        settings = DashboardSettings(**{"poll_interval_s": 0.2, **dash})
        server = DashboardServer(DashboardHub(redis_settings, settings), "127.0.0.1", 0, token)
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()


def take(conn: SseConnection, kind: str, count: int, timeout_s: float = 20) -> list[SseMessage]:
    got: list[SseMessage] = []
    deadline = time.monotonic() + timeout_s
    for message in conn.messages():
        if message.event == kind:
            got.append(message)
            if len(got) >= count:
                return got
        assert time.monotonic() < deadline, f"only {len(got)} of {count} {kind!r} messages"
    raise AssertionError(f"connection closed after {len(got)} of {count} {kind!r} messages")


def get(server: DashboardServer, path: str, headers: dict[str, str] | None = None):
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def worker_alive(redis_server, prefix: str, worker_id: str = "w-test") -> None:
    """The liveness key a running worker keeps refreshing (`worker.liveness`)."""
    redis_server.client().set(RedisKeys(prefix).worker(worker_id), "{}", ex=60)


def test_new_page_gets_state_then_recent_history_then_live_events(
    publisher: EventPublisher, start_dashboard, redis_server, redis_settings: RedisSettings
) -> None:
    worker_alive(redis_server, redis_settings.prefix)
    publisher.update_status(
        StreamStatus("cam-a", StreamState.RUNNING, "w-test", time.time(), fps=5.0)
    )
    for n in range(3):
        publisher.publish(emotion_event("cam-a", 1, n))
    assert publisher.flush(5)
    server = start_dashboard()
    time.sleep(0.5)  # one poll: the status and the person are in the hub's state
    conn = SseConnection("127.0.0.1", server.port)
    messages = conn.messages()
    state = next(messages)
    assert state.event == "state"
    snapshot = json.loads(state.data)
    assert snapshot["streams"]["cam-a"]["state"] == "running"
    person_key = RedisKeys(redis_settings.prefix).person("cam-a", "", 1)
    assert snapshot["people"][person_key]["tasks"]["emotion"]["result"]["label"] == "happy"
    history = take(conn, "face", 3)
    assert [json.loads(m.data)["window_start_s"] for m in history] == [0.0, 1.0, 2.0]
    publisher.publish(emotion_event("cam-a", 1, 3, "sad"))
    live = take(conn, "face", 1)[0]
    assert json.loads(live.data)["result"]["label"] == "sad"
    assert EntryId.parse(live.id) > EntryId.parse(history[-1].id)
    conn.close()


def test_reconnect_with_last_event_id_resumes_without_gap_or_duplicate(
    publisher: EventPublisher, start_dashboard, redis_server, redis_settings: RedisSettings
) -> None:
    server = start_dashboard(history_events=0)
    total = 400
    stop = threading.Event()

    def produce() -> None:
        for n in range(total):
            if stop.is_set():
                return
            publisher.publish(emotion_event("cam-r", n % 7, n))
            time.sleep(0.002)

    producer = threading.Thread(target=produce, name="test-producer")
    producer.start()
    received: list[SseMessage] = []
    try:
        last_id = "0-0"  # from the stream's start: the producer is already running
        # Three pages in a row, each dropped mid-flow, each resuming from the one before.
        for batch in (60, 90, 10**9):
            conn = SseConnection("127.0.0.1", server.port, last_event_id=last_id)
            assert conn.status == 200
            want = min(batch, total - len(received))
            got = take(conn, "face", want, timeout_s=30)
            conn.close()
            received.extend(got)
            last_id = got[-1].id
            if len(received) >= total:
                break
    finally:
        stop.set()
        producer.join()
    client = redis_server.client()
    in_redis = [entry for entry, _ in client.xrange(f"{redis_settings.prefix}:events")]
    assert len(in_redis) == total
    assert [m.id for m in received] == in_redis  # every entry, once, in order


def test_stream_whose_worker_is_gone_is_shown_owner_gone_with_its_written_state(
    publisher: EventPublisher, start_dashboard, redis_server, redis_settings: RedisSettings
) -> None:
    worker_alive(redis_server, redis_settings.prefix, "w-live")
    now = time.time()
    publisher.update_status(StreamStatus("cam-live", StreamState.RUNNING, "w-live", now))
    publisher.update_status(StreamStatus("cam-dead", StreamState.RUNNING, "w-dead", now))
    publisher.update_status(StreamStatus("cam-over", StreamState.DONE, "w-dead", now))
    assert publisher.flush(5)
    server = start_dashboard()
    time.sleep(0.5)  # one poll
    streams = json.loads(get(server, "/api/state")[2])["streams"]
    assert streams["cam-dead"]["state"] == "owner_gone"
    assert streams["cam-dead"]["written_state"] == "running"
    assert streams["cam-live"]["state"] == "running" and "written_state" not in streams["cam-live"]
    assert streams["cam-over"]["state"] == "done"  # an outcome stays true without its worker


def test_status_hashes_the_cli_cannot_parse_or_decode_are_shown_as_written(
    publisher: EventPublisher, start_dashboard, redis_server, redis_settings: RedisSettings
) -> None:
    keys, client = RedisKeys(redis_settings.prefix), redis_server.client()
    publisher.update_status(StreamStatus("cam-ok", StreamState.RUNNING, "w-gone", time.time()))
    assert publisher.flush(5)
    # As `facestream status`: a hash with a problem is not checked against its worker.
    client.hset(keys.stream("cam-odd"), mapping={"state": "running", "worker_id": "w-gone",
                                                 "fps": "fast", "updated_s": "1"})
    client.hset(keys.stream("cam-bytes"), mapping={"state": b"running\xff", "worker_id": "w"})
    client.hset(keys.person("cam-bytes", "", 1), mapping={"emotion": b"\xff\xfe"})
    client.sadd(keys.streams, "cam-odd", "cam-bytes", b"cam-\xff")
    server = start_dashboard()
    time.sleep(0.8)  # a few polls
    streams = json.loads(get(server, "/api/state")[2])["streams"]
    assert streams["cam-ok"]["state"] == "owner_gone"
    assert streams["cam-odd"]["state"] == "running" and "written_state" not in streams["cam-odd"]
    assert streams["cam-bytes"]["state"] == "running\\xff"  # escaped, not fatal
    publisher.update_status(StreamStatus("cam-new", StreamState.DONE, "w", time.time()))
    assert publisher.flush(5)
    time.sleep(0.8)
    assert "cam-new" in json.loads(get(server, "/api/state")[2])["streams"], "still polling"


def test_status_changes_and_people_who_left_reach_open_pages(
    publisher: EventPublisher, start_dashboard, redis_server
) -> None:
    settings = RedisSettings(url=redis_server.url, prefix="leave", person_ttl_s=1)
    with EventPublisher(settings) as short_lived:
        server = DashboardServer(
            DashboardHub(settings, DashboardSettings(poll_interval_s=0.2)), "127.0.0.1", 0, None
        ).start()
        try:
            conn = SseConnection("127.0.0.1", server.port)
            worker_alive(redis_server, "leave")
            short_lived.update_status(
                StreamStatus("cam-s", StreamState.RUNNING, "w-test", time.time())
            )
            short_lived.publish(emotion_event("cam-s", 4, 0))
            key = RedisKeys("leave").person("cam-s", "", 4)
            history: list[tuple[str, dict]] = []
            degraded_sent = False
            deadline = time.monotonic() + 20
            for message in conn.messages():
                if message.event in ("streams", "people"):
                    history.append((message.event, json.loads(message.data)))
                states = [d["changed"]["cam-s"] for k, d in history
                          if k == "streams" and "cam-s" in d["changed"]]
                if states and not degraded_sent:
                    assert states[0]["state"] == "running"
                    # A newer writer's state and fields come through as they are.
                    redis_server.client().hset(
                        RedisKeys("leave").stream("cam-s"),
                        mapping={"state": "degraded", "reason": "slow"},
                    )
                    degraded_sent = True
                people = [(i, d) for i, (k, d) in enumerate(history) if k == "people"]
                came = [i for i, d in people if key in d["changed"]]
                went = [i for i, d in people if key in d["removed"]]
                if states and states[-1].get("state") == "degraded" and came and went:
                    assert states[-1]["reason"] == "slow"
                    assert came[0] < went[0]  # seen, then gone when the hash expired (1 s)
                    break
                assert time.monotonic() < deadline, history
            conn.close()
        finally:
            server.stop()


def test_page_that_stops_reading_is_cut_off_and_others_keep_receiving(
    publisher: EventPublisher, redis_settings: RedisSettings
) -> None:
    hub = DashboardHub(redis_settings, DashboardSettings(client_buffer_bytes=16384)).start()
    try:
        stalled = hub.subscribe()
        reader = hub.subscribe()
        assert stalled is not None and reader is not None
        received = 0
        for n in range(100):  # ~500 bytes each: far more than 16 KiB for a page that never reads
            publisher.publish(emotion_event("cam-slow", 1, n))
            if n % 4 == 3:
                assert publisher.flush(5)
                deadline = time.monotonic() + 5
                while received < n + 1 and time.monotonic() < deadline:
                    received += sum(1 for i, _ in reader[0].take(0.2) if i is not None)
        assert received == 100
        assert stalled[0].closed_reason.startswith("slow")
        assert not reader[0].closed_reason
        assert hub.stats().subscribers_cut_off == 1 and hub.stats().subscribers == 1
    finally:
        hub.stop()


def test_thumbnail_endpoint_serves_only_jpegs_of_people_the_hub_follows(
    redis_server, redis_settings: RedisSettings, start_dashboard
) -> None:
    import numpy as np

    from worker.thumbnails import encode_thumbnail

    keys = RedisKeys(redis_settings.prefix)
    jpeg = encode_thumbnail(np.full((200, 160, 3), 90, np.uint8))
    with EventPublisher(redis_settings.model_copy(update={"thumbnails": True})) as pub:
        pub.publish(emotion_event("cam-t", 1, 0).with_thumbnail(jpeg))
        pub.publish(emotion_event("cam-t", 2, 0))  # no thumbnail
        assert pub.flush(5)
    # Foreign bytes under a followed person's thumbnail key are never served.
    redis_server.client().set(keys.thumbnail("cam-t", "", 2), "<script>alert(1)</script>")
    server = start_dashboard(token="t0k")
    auth = {"Authorization": "Bearer t0k"}
    first, second = keys.person("cam-t", "", 1), keys.person("cam-t", "", 2)

    def people() -> dict:
        return json.loads(get(server, "/api/state", auth)[2])["people"]

    deadline = time.monotonic() + 10
    while not (first in people() and second in people()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert people()[first]["thumbnail"] is True
    query = urllib.parse.quote(first)
    code, headers, body = get(server, f"/api/thumbnail?person={query}", auth)
    assert code == 200 and body == jpeg
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert get(server, f"/api/thumbnail?person={query}")[0] == 401, "behind the token"
    assert get(server, f"/api/thumbnail?person={urllib.parse.quote(second)}", auth)[0] == 404
    for foreign in (keys.events, keys.stream("cam-t"), keys.thumbnail("cam-t", "", 1), ""):
        path = f"/api/thumbnail?person={urllib.parse.quote(foreign)}"
        assert get(server, path, auth)[0] == 404


def test_subscriber_queue_is_bounded_in_bytes() -> None:
    sub = Subscriber(max_bytes=100)
    message = sse_message("face", "x" * 40, EntryId(1, 0))
    assert sub.offer(EntryId(1, 0), message)
    assert not sub.offer(EntryId(1, 1), message * 3)
    assert sub.closed_reason and sub.take(0) == []


def test_public_bind_without_token_is_refused(redis_settings: RedisSettings) -> None:
    for host in ("0.0.0.0", "::", "10.1.2.3", "dashboard.example.com"):
        with pytest.raises(DashboardConfigError, match="FACESTREAM_DASHBOARD__TOKEN"):
            check_bind(host, None)
    check_bind("0.0.0.0", "s3cret")
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "dashboard", "--host", "0.0.0.0", "--port", "0"],
        env={"PATH": "/usr/bin:/bin", "FACESTREAM_REDIS__URL": redis_settings.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "without a token" in done.stderr


def test_token_is_required_and_opening_the_page_with_it_sets_a_cookie(start_dashboard) -> None:
    server = start_dashboard(token="tok en;=x")  # any characters work
    assert get(server, "/")[0] == 401
    assert get(server, "/api/state")[0] == 401
    assert get(server, "/?token=wrong")[0] == 401
    assert get(server, "/healthz")[0] == 200  # no data there: probes need no token
    conn = urllib.request.build_opener(NoRedirect())
    try:
        conn.open(f"http://127.0.0.1:{server.port}/?token=tok%20en%3B%3Dx", timeout=5)
        raise AssertionError("expected a redirect")
    except urllib.error.HTTPError as exc:
        assert exc.code == 303 and exc.headers["Location"] == "/"
        cookie = exc.headers["Set-Cookie"].split(";")[0]
        assert "tok en" not in cookie and "HttpOnly" in exc.headers["Set-Cookie"]
    code, headers, body = get(server, "/", {"Cookie": cookie})
    assert code == 200 and b"facestream" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert get(server, "/api/state", {"Authorization": "Bearer tok en;=x"})[0] == 200
    sse = SseConnection("127.0.0.1", server.port, headers={"Cookie": cookie})
    assert sse.status == 200
    sse.close()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def test_without_token_only_loopback_host_names_are_answered(start_dashboard) -> None:
    server = start_dashboard()
    assert get(server, "/", {"Host": f"localhost:{server.port}"})[0] == 200
    assert get(server, "/", {"Host": f"127.0.0.1:{server.port}"})[0] == 200
    # A page on another site that rebinds its DNS name to 127.0.0.1 sends its own Host.
    assert get(server, "/api/state", {"Host": "evil.example:8090"})[0] == 421


def test_dashboard_is_read_only(start_dashboard) -> None:
    server = start_dashboard()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/api/state", data=b"{}", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(request, timeout=5)
    assert exc.value.code == 405


def test_bad_last_event_id_is_refused(start_dashboard) -> None:
    server = start_dashboard()
    assert SseConnection("127.0.0.1", server.port, last_event_id="<script>").status == 400


def test_page_assets_ship_as_package_data() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["worker.dashboard"]
    static = REPO_ROOT / "worker" / "dashboard" / "static"
    files = sorted(p.relative_to(static.parent).as_posix() for p in static.iterdir())
    assert files
    for name in files:
        assert any(fnmatch(name, pattern) for pattern in patterns), name
    page = (static / "index.html").read_text()
    script = (static / "app.js").read_text()
    assert "<script>" not in page and "style=" not in page  # the CSP allows no inline code
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script


def test_foreign_entries_in_the_events_stream_never_stop_the_feed(
    publisher: EventPublisher, start_dashboard, redis_server, redis_settings: RedisSettings
) -> None:
    """Entries another writer left (a track id int() would choke on, bytes that are not
    UTF-8) neither kill the live reader nor break a page's replay: the good events around
    them still arrive, live and replayed."""
    events_key = RedisKeys(redis_settings.prefix).events
    raw = redis_server.client()
    publisher.publish(emotion_event("cam-f", 1, 0))
    assert publisher.flush(5)
    raw.xadd(events_key, {"event": '{"x": 1}', "track_id": "--1", "stream_id": "cam-f"})
    raw.xadd(events_key, {"event": b'{"x": "\xff\xfe"}', "track_id": "\xb2", "stream_id": b"\xff"})
    server = start_dashboard()
    conn = SseConnection("127.0.0.1", server.port)
    replayed = take(conn, "face", 3)  # the replay gets past both foreign entries
    assert json.loads(replayed[0].data)["stream_id"] == "cam-f"
    assert replayed[1].data == '{"x": 1}' and "\\xff" in replayed[2].data  # shown as such
    raw.xadd(events_key, {"event": b'{"y": "\xff"}', "track_id": "--2"})
    publisher.publish(emotion_event("cam-f", 1, 1, "sad"))
    live = take(conn, "face", 2)
    assert json.loads(live[-1].data)["result"]["label"] == "sad"  # the live reader survived
    conn.close()
    assert server.hub.is_alive()


def test_dashboard_binds_the_ipv6_loopback(redis_settings: RedisSettings) -> None:
    """`--host ::1` (loopback, no token needed) serves the page over IPv6."""
    server = DashboardServer(DashboardHub(redis_settings, DashboardSettings()), "::1", 0, None)
    server.start()
    try:
        url = f"http://[::1]:{server.port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert reply.status == 200
    finally:
        server.stop()
