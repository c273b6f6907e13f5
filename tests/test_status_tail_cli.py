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
