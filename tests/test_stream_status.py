"""Stream status that tells the truth: `stopped` after a tombstone, `released` after a
graceful exit, `owner_gone` once a killed worker's liveness key expires, the detection
rate as FPS, tasks and labels; and a missing assignments topic is not ready.

Against real Redis, a real Kafka 0.9 broker, a real RTSP camera and real workers (the
fixtures of `tests.test_worker`), plus fast checks of the supervisor and the readers.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

import tests.test_worker as worker_tests
from tests.services.kafka_broker import KafkaTestBroker
from tests.services.redis_server import RedisServer
from tests.test_status_tail_cli import PREFIX, facestream, seed
from tests.test_worker import _record
from tests.workers import SESSION_TIMEOUT_MS, stop_stream, submit, wait_for
from worker.commands.status import read_statuses
from worker.desired import DesiredSet, Fold
from worker.liveness import WorkerLiveness
from worker.redis_keys import RedisKeys
from worker.settings import Settings
from worker.specs import StreamSpec
from worker.status import StreamState, StreamStatus, shown_state
from worker.watcher import DesiredChange

pytestmark = pytest.mark.timeout(300)

# The unit-test worker of tests/test_worker.py, shared (`start_worker`, `ready_worker` and
# `worker_env` come from the `tests.workers` plugin).
bare_worker = worker_tests.bare_worker


def _status_json(env: dict[str, str], stream_id: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "status", stream_id, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _entry(redis_server: RedisServer, prefix: str, stream_id: str):
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)  # bytes, as the CLI reads
    entries = read_statuses(client, RedisKeys(prefix), stream_id)
    client.close()
    return entries[0] if entries else None


def _submit_and_wait_running(
    env: dict[str, str], url: str, redis_server: RedisServer, stream_id: str, *extra: str
) -> None:
    submit(env, url, stream_id, *extra)
    prefix = env["FACESTREAM_REDIS__PREFIX"]
    wait_for(
        lambda: (e := _entry(redis_server, prefix, stream_id)) and e.state == "running",
        150,
        f"{stream_id} running",
    )


# -- fast: the supervisor, the fold and the readers ------------------------------------------


def test_released_partition_leaves_a_released_status_for_the_next_owner(bare_worker) -> None:
    _record(bare_worker)
    change = DesiredChange(stopped=frozenset({"cam-u"}), released=frozenset({"cam-u"}))
    bare_worker.supervisor.on_change(change)
    bare_worker.supervisor.reconcile()
    status = bare_worker.publisher._pending_status["cam-u"]
    assert status.state == StreamState.RELEASED and "no longer owns" in status.reason


def test_graceful_shutdown_marks_running_streams_released(bare_worker) -> None:
    spec = StreamSpec(
        stream_id="cam-g", url="rtsp://camera.example/x", tasks=["age"], labels={"site": "hall"}
    )
    from worker.intake import StreamRecord

    bare_worker.streams.put(StreamRecord.running(spec, bare_worker.settings))
    bare_worker.supervisor.release_all()
    status = bare_worker.publisher._pending_status["cam-g"]
    assert status.state == StreamState.RELEASED and "shut down" in status.reason
    assert status.tasks == ("age",) and status.labels == {"site": "hall"}


def test_own_done_tombstone_keeps_the_done_status(bare_worker) -> None:
    record = _record(bare_worker)
    record.flushed = True
    record.retired = True  # done: retired with its last windows answered
    bare_worker.supervisor.on_change(DesiredChange(stopped=frozenset({"cam-u"})))
    bare_worker.supervisor.reconcile()
    assert "cam-u" not in bare_worker.publisher._pending_status


def test_fold_reports_lost_partitions_as_released_and_tombstones_as_stopped() -> None:
    desired = DesiredSet()
    changes = desired.changes()
    desired.set_spec("a", StreamSpec(stream_id="a", url="rtsp://x/a"), 0, changes)
    desired.set_spec("b", StreamSpec(stream_id="b", url="rtsp://x/b"), 1, changes)
    assert set(changes.change().started) == {"a", "b"}
    changes = desired.changes()
    desired.reassign({1}, {1: Fold(end_offset=5)}, changes)  # partition 0 went elsewhere
    desired.set_spec("b", None, 1, changes)  # a tombstone
    change = changes.change()
    assert change.stopped == {"a", "b"} and change.released == {"a"}


def test_only_states_that_need_a_worker_show_owner_gone() -> None:
    for state in (StreamState.STARTING, StreamState.RUNNING, StreamState.STALLED):
        assert shown_state(state, owner_alive=False) is StreamState.OWNER_GONE
        assert shown_state(state, owner_alive=True) is state
    for state in (StreamState.DONE, StreamState.STOPPED, StreamState.RELEASED, StreamState.ERROR):
        assert shown_state(state, owner_alive=False) is state


def test_liveness_key_lives_one_session_timeout_and_goes_on_release(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        worker_id="w-live",
        redis={"url": redis_server.url, "prefix": PREFIX},
        kafka={"session_timeout_ms": 6000},
    )
    healthy = [False]
    liveness = WorkerLiveness(settings, healthy=lambda: healthy[0])
    client = redis_server.client()
    liveness.start()
    time.sleep(0.3)
    assert client.get(f"{PREFIX}:worker:w-live") is None  # unhealthy: never refreshed
    healthy[0] = True
    assert liveness.refresh()
    assert 5 <= client.ttl(f"{PREFIX}:worker:w-live") <= 6
    assert json.loads(client.get(f"{PREFIX}:worker:w-live"))["worker_id"] == "w-live"
    liveness.release(timeout_s=5)
    assert client.get(f"{PREFIX}:worker:w-live") is None
    assert not liveness.is_alive()


def test_status_shows_owner_gone_when_the_worker_key_is_missing(redis_server: RedisServer) -> None:
    now = time.time()
    seed(redis_server, [], [StreamStatus("lobby", StreamState.RUNNING, "w-dead", now, fps=5.0)])
    redis_server.client().delete(f"{PREFIX}:worker:w-dead")  # killed: its key expired
    done = facestream("status", "--redis-url", redis_server.url, "--prefix", PREFIX)
    assert done.returncode == 0, done.stderr
    row = done.stdout.splitlines()[1]
    assert row.split()[:2] == ["lobby", "owner_gone"]
    assert "w-dead is gone" in row and "last wrote running" in row
    done = facestream("status", "lobby", "--json", "--redis-url", redis_server.url,
                      "--prefix", PREFIX)  # fmt: skip
    shown = json.loads(done.stdout)
    assert shown["state"] == "owner_gone" and shown["written_state"] == "running"
    assert shown["owner_alive"] is False


# -- end to end: real workers -----------------------------------------------------------------


def test_status_shows_detection_rate_tasks_labels_then_stopped_and_released(
    ready_worker, worker_env, rtsp_server, redis_server
) -> None:
    prefix = worker_env["FACESTREAM_REDIS__PREFIX"]
    worker = ready_worker("w1")
    _submit_and_wait_running(worker_env, rtsp_server.url, redis_server, "cam-s",
                             "--tasks", "emotion,age", "--label", "site=lobby",
                             "--detection-fps", "4")  # fmt: skip
    time.sleep(3)  # rates over whole seconds of running
    rates = []
    for _ in range(6):
        shown = _status_json(worker_env, "cam-s")
        rates.append((shown["fps"], shown["decode_fps"]))
        time.sleep(1)
    detected = statistics.median(r[0] for r in rates)
    decoded = statistics.median(r[1] for r in rates)
    print(f"status rates (detected, decoded): {rates}")
    assert 2.0 <= detected <= 6.0, rates  # the stream's detection fps (4), not the camera's 30
    assert decoded >= 15.0, rates  # the camera's ~30 fps, kept apart
    assert shown["tasks"] == ["emotion", "age"] and shown["labels"] == {"site": "lobby"}
    assert shown["owner_alive"] is True and shown["worker_id"] == "w1"
    table = facestream("status", "--redis-url", redis_server.url, "--prefix", prefix)
    row = next(line for line in table.stdout.splitlines() if line.startswith("cam-s "))
    assert 2.0 <= float(row.split()[2]) <= 6.0, row  # the FPS column is the detection rate
    assert "emotion,age" in row and "site=lobby" in row

    stopped_at = time.time()
    stop_stream(worker_env, "cam-s")
    wait_for(lambda: _entry(redis_server, prefix, "cam-s").state == "stopped", 30, "stopped")
    shown = _status_json(worker_env, "cam-s")
    assert shown["updated_s"] >= stopped_at - 1 and "tombstone" in shown["reason"]
    assert shown["labels"] == {"site": "lobby"} and shown["fps"] is None
    # kept for the status TTL
    assert redis_server.client().ttl(RedisKeys(prefix).stream("cam-s")) > 3600

    _submit_and_wait_running(worker_env, rtsp_server.url, redis_server, "cam-t")
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=30) == 0
    shown = _status_json(worker_env, "cam-t")  # no other worker: nobody took it over
    assert shown["state"] == "released" and "shut down" in shown["reason"]
    assert shown["owner_alive"] is False  # the worker deleted its liveness key on the way out


def test_status_says_owner_gone_within_session_timeout_after_sigkill(
    ready_worker, worker_env, rtsp_server, redis_server
) -> None:
    prefix = worker_env["FACESTREAM_REDIS__PREFIX"]
    worker = ready_worker("w1")
    _submit_and_wait_running(worker_env, rtsp_server.url, redis_server, "cam-k")
    assert _entry(redis_server, prefix, "cam-k").owner_alive is True
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait(10)
    killed_at = time.monotonic()
    wait_for(lambda: _entry(redis_server, prefix, "cam-k").state == "owner_gone",
              SESSION_TIMEOUT_MS / 1000 + 10, "owner_gone")  # fmt: skip
    gone_after_s = time.monotonic() - killed_at
    print(f"owner_gone shown {gone_after_s:.1f} s after SIGKILL")
    assert gone_after_s <= SESSION_TIMEOUT_MS / 1000 + 5
    shown = _status_json(worker_env, "cam-k")
    assert shown["state"] == "owner_gone" and shown["written_state"] == "running"


@pytest.fixture(scope="module")
def broker_without_auto_create(kafka_home: Path, tmp_path_factory) -> KafkaTestBroker:
    broker = KafkaTestBroker(
        tmp_path_factory.mktemp("kafka-no-create"), kafka_home=kafka_home, auto_create_topics=False
    )
    broker.start()
    yield broker
    broker.stop()


def test_missing_assignments_topic_is_not_ready_and_said_once_per_interval(
    start_worker, broker_without_auto_create: KafkaTestBroker
) -> None:
    topic = f"missing-{time.monotonic_ns()}"
    worker = start_worker(
        "w-missing",
        FACESTREAM_KAFKA__BOOTSTRAP_SERVERS=broker_without_auto_create.bootstrap_servers,
        FACESTREAM_KAFKA__TOPIC=topic,
    )

    def get(path: str) -> tuple[int, str]:
        try:
            return worker.get(path)
        except OSError:  # not listening yet
            return 0, ""

    wait_for(lambda: get("/healthz") == (200, "ok\n"), 120, "models loaded")
    started = time.monotonic()
    wait_for(lambda: topic in worker.get("/readyz")[1], 60, "readiness naming the topic")
    code, body = worker.get("/readyz")
    assert code == 503 and "topic_missing" in body and "does not exist" in body
    time.sleep(max(0.0, 25 - (time.monotonic() - started)))
    assert worker.get("/readyz")[0] == 503
    elapsed_s = time.monotonic() - started
    lines = [json.loads(line) for line in worker.logs().splitlines() if line.startswith("{")]
    ours = [entry for entry in lines if entry.get("event") == "kafka assignments: topic missing"]
    kafka_lines = [entry for entry in lines if str(entry.get("logger", "")).startswith("kafka")]
    print(f"{len(ours)} topic-missing lines and {len(kafka_lines)} kafka-python lines "
          f"in {elapsed_s:.0f} s")  # fmt: skip
    assert ours and all(entry["topic"] == topic for entry in ours)
    assert len(ours) <= elapsed_s / 10 + 2  # at most one per REPEAT_INTERVAL_S (10 s)
    assert len(kafka_lines) <= 3 * (elapsed_s / 10 + 2)  # kafka-python's own, rate-limited

    broker_without_auto_create.create_topic(topic, 1)
    wait_for(lambda: worker.get("/readyz")[0] == 200, 60, "ready once the topic exists")
