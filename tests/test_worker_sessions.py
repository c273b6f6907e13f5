"""Event identity end to end: real Kafka 0.9, Redis, RTSP, RetinaFace and the tiny
Face-LLaVA, workers as subprocesses. A live stream restarted (stop + submit, spec changes,
a worker restart) keeps every session's events, with unique ids and people that never
merge across sessions; a file re-run after a failover repeats its ids, and the repeats
are suppressed and counted."""

from __future__ import annotations

import signal

import pytest
import redis

from tests.workers import (
    SESSION_TIMEOUT_MS,
    WorkerProcess,
    read_events,
    stop_stream,
    stream_status,
    submit,
    wait_for,
)
from worker.events import FaceEvent, event_id_for
from worker.redis_keys import RedisKeys

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(900)]


def _metric(worker: WorkerProcess, name: str) -> float:
    code, text = worker.get("/metrics")
    assert code == 200
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def _check_people(client: redis.Redis, keys: RedisKeys, stream_id: str) -> set[str]:
    """Every person hash of the stream holds events of its own session only; returns the
    sessions seen in person keys."""
    sessions = set()
    for key in client.scan_iter(match=keys.person_pattern(stream_id), count=1000):
        fields = client.hgetall(key)
        if not fields:
            continue  # expired between SCAN and HGETALL
        session = fields["session"]
        assert key == keys.person(stream_id, session, int(fields["track_id"])), key
        for task in ("emotion", "age"):
            if task in fields:
                event = FaceEvent.model_validate_json(fields[task])
                assert event.session == session, f"{key} mixes sessions"
                assert event.track_id == int(fields["track_id"])
        sessions.add(session)
    return sessions


def test_live_stream_restarts_keep_every_sessions_events_apart_and_complete(
    ready_worker,
    worker_env,
    rtsp_server,
    redis_server,
) -> None:
    prefix = worker_env["FACESTREAM_REDIS__PREFIX"]
    keys = RedisKeys(prefix)
    client = redis_server.client()
    worker = ready_worker("w1")
    sessions: list[str] = []
    person_sessions: set[str] = set()

    def next_session(run: int) -> str:
        def found() -> str | None:
            fresh = [
                e for e in read_events(client, prefix) if e.session and e.session not in sessions
            ]
            return fresh[0].session if fresh else None

        session = wait_for(found, 150, f"events of run {run}")
        sessions.append(session)
        person_sessions.update(_check_people(client, keys, "cam-s"))
        return session

    submit(worker_env, rtsp_server.url, "cam-s", "--tasks", "emotion", "--label", "run=1")
    next_session(1)
    stop_stream(worker_env, "cam-s")  # restart 1: stop + submit
    wait_for(
        lambda: stream_status(client, prefix, "cam-s").get("state", "stopped") == "stopped",
        30,
        "the stream stopped",
    )
    submit(worker_env, rtsp_server.url, "cam-s", "--tasks", "emotion", "--label", "run=2")
    next_session(2)
    submit(worker_env, rtsp_server.url, "cam-s", "--tasks", "emotion", "--label", "run=3")
    next_session(3)  # restart 2: a spec change
    submit(
        worker_env,
        rtsp_server.url,
        "cam-s",
        "--tasks",
        "emotion,age",
        "--label",
        "run=4",
        "--detection-fps",
        "4",
    )
    next_session(4)  # restart 3: another spec change
    assert _metric(worker, "facestream_events_deduplicated_total") == 0
    worker.process.send_signal(signal.SIGTERM)  # a rolling restart of the worker
    assert worker.process.wait(40) == 0
    successor = ready_worker("w2")
    next_session(5)

    events = read_events(client, prefix)
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids)), "an event id appears twice"
    assert len(set(sessions)) == 5
    by_session = {s: [e for e in events if e.session == s] for s in sessions}
    for run, session in enumerate(sessions, start=1):
        assert by_session[session], f"run {run} lost its events"
        assert {e.labels["run"] for e in by_session[session]} == {str(min(run, 4))}
        for event in by_session[session]:
            assert event.event_id == event_id_for(
                "cam-s", event.track_id, event.window_start_s, event.task, session=session
            )
            assert event.stop_reason in ("eos", "length")
    # Track ids restart with each session; the ids and the people stay apart anyway.
    assert len({e.track_id for e in events}) < len({(e.session, e.track_id) for e in events})
    assert person_sessions <= set(sessions) and len(person_sessions) >= 2
    assert _metric(successor, "facestream_events_deduplicated_total") == 0
    published = _metric(successor, "facestream_events_published_total")
    assert published == len([e for e in read_events(client, prefix) if e.worker_id == "w2"]), (
        "every event the successor made is in Redis"
    )


def test_file_rerun_after_a_failover_repeats_its_ids_and_the_repeats_are_suppressed(
    start_worker,
    worker_env,
    hamilton_mp4,
    worker_output,
) -> None:
    prefix, client = worker_output
    env = {"FACESTREAM_SOURCE__ALLOW_FILE": "true", "FACESTREAM_SOURCE__REALTIME": "true"}
    first = start_worker("w-a", **env)
    second = start_worker("w-b", **env)
    first.wait_ready()
    second.wait_ready()
    submit(worker_env, str(hamilton_mp4), "vod-f", "--tasks", "emotion", "--allow-file")
    owner = wait_for(
        lambda: stream_status(client, prefix, "vod-f").get("worker_id"), 60, "an owner for the file"
    )
    killed, survivor = (first, second) if owner == "w-a" else (second, first)
    before = wait_for(lambda: read_events(client, prefix), 150, "events of the first run")
    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait(10)
    wait_for(
        lambda: stream_status(client, prefix, "vod-f").get("state") == "done",
        SESSION_TIMEOUT_MS / 1000 + 150,
        "the file done on the survivor",
    )
    events = read_events(client, prefix)
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids)), "an event id appears twice"
    assert {e.session for e in events} == {before[0].session}, "a replay has the same session"
    replayed = _metric(survivor, "facestream_events_deduplicated_total")
    assert replayed >= 1, "the survivor re-made at least one event the first owner wrote"
    assert replayed + _metric(survivor, "facestream_events_published_total") == sum(
        _metric_lines(survivor, "facestream_events_total")
    )


def _metric_lines(worker: WorkerProcess, name: str) -> list[float]:
    _code, text = worker.get("/metrics")
    return [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{")]
