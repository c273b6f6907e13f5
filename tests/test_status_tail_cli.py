"""`facestream status` and `facestream tail` run as subprocesses against a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.facellava.answers import Task
from tests.services.redis_server import RedisServer
from tests.test_publisher import make_event, settings_for
from worker.events import FaceEvent
from worker.publisher import EventPublisher
from worker.redis_keys import RedisKeys
from worker.status import StreamState, StreamStatus

pytestmark = [pytest.mark.services, pytest.mark.timeout(60)]

REPO_ROOT = Path(__file__).resolve().parent.parent
PREFIX = "fs-test"  # what `settings_for` uses


def facestream(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}


def seed(server: RedisServer, events: list[FaceEvent], statuses: list[StreamStatus]) -> None:
    """Write events and statuses as a worker does; the workers named stay alive a minute."""
    for status in statuses:
        server.client().set(f"{PREFIX}:worker:{status.worker_id}", "{}", ex=60)
    with EventPublisher(settings_for(server.url)) as publisher:
        for event in events:
            publisher.publish(event)
        for status in statuses:
            publisher.update_status(status)
        assert publisher.flush(timeout_s=5)


def test_status_prints_a_table_of_all_streams(redis_server: RedisServer) -> None:
    now = time.time()
    seed(
        redis_server,
        [],
        [
            StreamStatus(
                "lobby", StreamState.RUNNING, "worker-a", now, fps=5.0, last_frame_wall_s=now
            ),
            StreamStatus("gate", StreamState.ERROR, "worker-b", now, error="connection refused"),
        ],
    )
    done = facestream("status", "--redis-url", redis_server.url, "--prefix", PREFIX)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["STREAM", "STATE", "FPS"]
    assert lines[1].split()[:3] == ["gate", "error", "-"]
    assert lines[1].endswith("connection refused")
    assert lines[2].split()[:3] == ["lobby", "running", "5.0"]


def test_status_of_one_stream_as_json(redis_server: RedisServer) -> None:
    status = StreamStatus(
        "lobby", StreamState.STALLED, "worker-a", 1_764_000_000.5, url="rtsp://u:pw@cam/1", fps=0.0
    )
    seed(redis_server, [], [status])
    done = facestream(
        "status", "lobby", "--json", "--redis-url", redis_server.url, "--prefix", PREFIX
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["stream_id"] == "lobby"
    assert shown["state"] == "stalled"
    assert shown["worker_id"] == "worker-a"
    assert shown["updated_s"] == 1_764_000_000.5
    assert shown["fps"] == 0.0
    assert shown["url"] == "rtsp://***@cam/1"


def test_status_of_unknown_stream_exits_1(redis_server: RedisServer) -> None:
    done = facestream("status", "nope", "--redis-url", redis_server.url, "--prefix", PREFIX)
    assert done.returncode == 1
    assert "nope" in done.stderr


def test_status_reports_unreachable_redis_with_exit_2(redis_server: RedisServer) -> None:
    url = redis_server.url.replace("redis://", "redis://:hunter2@")
    redis_server.stop()
    done = facestream("status", "--redis-url", url)
    assert done.returncode == 2
    assert "cannot reach Redis" in done.stderr
    assert "hunter2" not in done.stderr


def test_status_reports_an_error_reply_without_a_traceback(redis_server: RedisServer) -> None:
    redis_server.client().set(f"{PREFIX}:streams", "not a set")  # WRONGTYPE for SMEMBERS
    done = facestream("status", "--redis-url", redis_server.url, "--prefix", PREFIX)
    assert done.returncode == 2
    assert "error reply from Redis" in done.stderr
    assert "Traceback" not in done.stderr


def test_tail_from_start_prints_raw_json_of_each_event(redis_server: RedisServer) -> None:
    events = [make_event(0.0), make_event(0.0, task=Task.AGE), make_event(0.8)]
    seed(redis_server, events, [])
    done = facestream(
        "tail", "--from-start", "--json", "--count", "3", "--redis-url", redis_server.url,
        "--prefix", PREFIX,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The wire carries floats rounded like the window records (ms, 0.1 px, 4 digits).
    written = [FaceEvent.model_validate_json(event.model_dump_json()) for event in events]
    assert [FaceEvent.model_validate_json(line) for line in done.stdout.splitlines()] == written
    first = json.loads(done.stdout.splitlines()[0])
    assert first["detector_score"] == 0.9877 and first["box_xyxy"] == [10.2, 20.5, 110.8, 140.0]
    assert first["wall_time_s"] == 1_764_000_000.123


def test_tail_follows_only_new_events_in_pretty_lines(redis_server: RedisServer) -> None:
    old = make_event(0.0)
    seed(redis_server, [old], [])
    process = subprocess.Popen(
        [
            sys.executable, "-m", "worker.cli", "tail", "--count", "2",
            "--redis-url", redis_server.url, "--prefix", PREFIX,
        ],
        cwd=REPO_ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        assert process.stderr.readline().startswith(f"following {PREFIX}:events")  # it is ready
        new = [make_event(1.6), make_event(1.6, task=Task.ACTION_UNITS, track_id=3)]
        seed(redis_server, new, [])
        stdout, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 2
    assert " cam-1 track 7 emotion: happy  [1.6-3.2s] worker-a" in lines[0]
    assert " cam-1 track 3 action_units: AU6 cheek raiser, AU12 lip corner puller" in lines[1]


# -- entries this version did not write ------------------------------------------------------


def _write_raw_status(server: RedisServer, stream_id: bytes, fields: dict[bytes, bytes]) -> None:
    client = server.client()
    client.sadd(f"{PREFIX}:streams".encode(), stream_id)
    client.hset(RedisKeys(PREFIX).stream_raw(stream_id), mapping=fields)


def test_status_shows_broken_entries_as_such_and_still_lists_the_others(
    redis_server: RedisServer,
) -> None:
    now = time.time()
    seed(
        redis_server,
        [],
        [StreamStatus("good", StreamState.RUNNING, "worker-a", now, fps=5.0)],
    )
    _write_raw_status(
        redis_server, b"a-fps", {b"state": b"running", b"fps": b"fast", b"updated_s": b"1"}
    )
    _write_raw_status(redis_server, b"b-huge", {b"state": b"running", b"updated_s": b"1e300"})
    _write_raw_status(redis_server, b"c-nan", {b"state": b"done", b"updated_s": b"nan"})
    _write_raw_status(redis_server, b"d-\xff\xfe", {b"state": b"\xffweird", b"error": b"\xc3\x28"})
    _write_raw_status(
        redis_server,
        b"e-ansi",
        {b"state": b"error", b"updated_s": repr(now).encode(), b"error": b"\x1b[31mred\x1b[0m\rX"},
    )
    redis_server.client().set(RedisKeys(PREFIX).stream("f-string"), "not a hash")
    redis_server.client().sadd(f"{PREFIX}:streams", "f-string")

    done = facestream("status", "--redis-url", redis_server.url, "--prefix", PREFIX)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "\x1b" not in done.stdout and "\r" not in done.stdout
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert set(rows) == {"a-fps", "b-huge", "c-nan", "d-\\xff\\xfe", "e-ansi", "f-string", "good"}
    assert rows["good"].split()[:3] == ["good", "running", "5.0"]
    assert "broken entry" not in rows["good"]
    assert "fps 'fast' is not a number" in rows["a-fps"]
    assert "updated_s '1e300' is not a Unix time" in rows["b-huge"]
    assert "updated_s 'nan' is not a Unix time" in rows["c-nan"]
    assert "unknown state" in rows["d-\\xff\\xfe"] and "\\xffweird" in rows["d-\\xff\\xfe"]
    assert "\\u001b[31mred\\u001b[0m\\u000dX" in rows["e-ansi"]
    assert "unreadable" in rows["f-string"] and "WRONGTYPE" in rows["f-string"]
    assert "5 status entries unreadable" in done.stderr  # e-ansi is valid, only escaped

    as_json = facestream("status", "--json", "--redis-url", redis_server.url, "--prefix", PREFIX)
    assert as_json.returncode == 0, as_json.stderr
    shown = {entry["stream_id"]: entry for entry in json.loads(as_json.stdout)}
    assert shown["good"]["fps"] == 5.0 and "problems" not in shown["good"]
    assert shown["b-huge"]["problems"] == ["updated_s '1e300' is not a Unix time"]
    assert shown["e-ansi"]["error"] == "\x1b[31mred\x1b[0m\rX"  # JSON escapes it itself
    assert "\x1b" not in as_json.stdout

    one = facestream("status", "c-nan", "--redis-url", redis_server.url, "--prefix", PREFIX)
    assert one.returncode == 0, one.stderr
    assert "updated_s 'nan' is not a Unix time" in one.stdout


def test_tail_from_start_gets_past_foreign_and_broken_entries(redis_server: RedisServer) -> None:
    client = redis_server.client()
    key = f"{PREFIX}:events"
    good = make_event(0.0)
    ansi = make_event(0.8).model_copy(update={"answer_text": "\x1b]0;pwned\x07\x1b[2Jtext"})
    client.xadd(key, {"foo": "bar"})  # no event field
    client.xadd(key, {"event": b"\xff\xfe{not json"})
    huge_time = json.loads(good.model_dump_json()) | {"wall_time_s": 1e300}
    client.xadd(key, {"event": json.dumps(huge_time)})
    nan_time = good.model_dump_json().replace(
        f'"wall_time_s":{good.wall_time_s}', '"wall_time_s":NaN'
    )
    assert "NaN" in nan_time
    client.xadd(key, {"event": nan_time})
    client.xadd(key, {"event": ansi.model_dump_json()})
    client.xadd(key, {"event": good.model_dump_json()})

    done = facestream(
        "tail", "--from-start", "--count", "6", "--redis-url", redis_server.url,
        "--prefix", PREFIX,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 6
    assert "without an 'event' field; fields: foo" in lines[0]
    assert "(unreadable event) \\xff\\xfe{not json" in lines[1]
    assert lines[2].startswith("(bad time 1e+300) cam-1 track 7 emotion")
    assert lines[3].startswith("(bad time nan) cam-1 track 7 emotion")
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert " cam-1 track 7 emotion: happy " in lines[5]

    raw = facestream(
        "tail", "--from-start", "--json", "--count", "6", "--redis-url", redis_server.url,
        "--prefix", PREFIX,
    )  # fmt: skip
    assert raw.returncode == 0, raw.stderr
    raw_lines = raw.stdout.splitlines()
    assert "\x1b" not in raw.stdout
    assert FaceEvent.model_validate_json(raw_lines[5]) == good
