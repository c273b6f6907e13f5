"""`facestream worker` subprocesses for the end-to-end tests (a pytest plugin, see
tests/conftest.py): the `worker_env`, `start_worker` and `ready_worker` fixtures, and the
helpers those tests share (submit or stop a stream through the CLI, read events and
statuses from Redis, wait for a condition).

Workers run as subprocesses, exactly as Kubernetes runs them, so SIGTERM and SIGKILL are
real.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import redis

from tests.services.kafka_broker import free_port
from worker.events import FaceEvent
from worker.redis_keys import RedisKeys

SESSION_TIMEOUT_MS = 6000


class WorkerProcess:
    """One `facestream worker` subprocess with its own HTTP port and log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.env = {**env, "FACESTREAM_HTTP__PORT": str(self.port)}
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"worker exited early:\n{self.logs()[-3000:]}"
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker not ready in {timeout_s}s:\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


@pytest.fixture
def worker_env(testdata: Path, mnet_weights: Path, kafka_topics, redis_server) -> dict[str, str]:
    tiny = testdata / "facellava-tiny"
    prefix = f"t{os.getpid()}{time.monotonic_ns() % 100000}"
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "FACESTREAM_LOG_FORMAT": "json",
        "FACESTREAM_GRACE_S": "15",
        "FACESTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka_topics.broker.bootstrap_servers,
        "FACESTREAM_KAFKA__TOPIC": kafka_topics.topic,
        "FACESTREAM_KAFKA__DLQ_TOPIC": kafka_topics.dlq_topic,
        "FACESTREAM_KAFKA__GROUP_ID": kafka_topics.group_id,
        "FACESTREAM_KAFKA__API_VERSION": "0.9",
        "FACESTREAM_KAFKA__SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "FACESTREAM_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "FACESTREAM_REDIS__URL": redis_server.url,
        "FACESTREAM_REDIS__PREFIX": prefix,
        "FACESTREAM_HTTP__HOST": "127.0.0.1",
        "FACESTREAM_DETECTOR__WEIGHTS": str(mnet_weights),
        "FACESTREAM_DETECTOR__DEVICE": "cpu",
        "FACESTREAM_MODEL__MODEL": str(tiny / "checkpoint"),
        "FACESTREAM_MODEL__DTYPE": "float32",
        "FACESTREAM_MODEL__DEVICE": "cpu",
        "FACESTREAM_MODEL__HF_OFFLINE": "true",
        "FACESTREAM_MODEL__HF_CACHE_DIR": str(tiny / "hf_cache"),
        "FACESTREAM_MODEL__MAX_NEW_TOKENS": "12",
        "FACESTREAM_SOURCE__SAMPLE_FPS": "5",
        "FACESTREAM_SOURCE__STALL_TIMEOUT_S": "5",
    }


@pytest.fixture
def start_worker(
    worker_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(worker_id: str, **extra_env: str) -> WorkerProcess:
        env = {**worker_env, "FACESTREAM_WORKER_ID": worker_id, **extra_env}
        proc = WorkerProcess(env, tmp_path / f"{worker_id}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def ready_worker(start_worker: Callable[..., WorkerProcess]) -> Callable[..., WorkerProcess]:
    """`start_worker`, then wait until that worker is ready (`/readyz` answers 200)."""

    def start_ready(worker_id: str, **extra_env: str) -> WorkerProcess:
        worker = start_worker(worker_id, **extra_env)
        worker.wait_ready()
        return worker

    return start_ready


def facestream_cli(env: dict[str, str], *args: str) -> None:
    """Run `facestream ARGS` (as an operator would) and require it to succeed."""
    subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def submit(env: dict[str, str], url: str, stream_id: str, *extra: str) -> None:
    """`facestream submit URL --stream-id ID EXTRA...`."""
    facestream_cli(env, "submit", url, "--stream-id", stream_id, *extra)


def stop_stream(env: dict[str, str], stream_id: str) -> None:
    """`facestream stop ID`."""
    facestream_cli(env, "stop", stream_id)


def read_events(client: redis.Redis, prefix: str) -> list[FaceEvent]:
    """Every event in the stream `PREFIX:events`, oldest first."""
    entries = client.xrange(f"{prefix}:events")
    return [FaceEvent.model_validate_json(fields["event"]) for _id, fields in entries]


def wait_for(
    predicate: Callable[[], object], timeout_s: float, what: str, *, poll_s: float = 0.5
) -> object:
    """`predicate()`'s first truthy value, polled every `poll_s` for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def stream_status(client: redis.Redis, prefix: str, stream_id: str) -> dict[str, str]:
    """The status hash of one stream (empty when there is none)."""
    return client.hgetall(RedisKeys(prefix).stream(stream_id))


class WorkerOutput(NamedTuple):
    """Where the workers of one test write: their Redis key prefix, and a client."""

    prefix: str
    client: redis.Redis


@pytest.fixture
def worker_output(worker_env: dict[str, str], redis_server) -> WorkerOutput:
    """The Redis prefix of `worker_env` and a client of the test's redis-server."""
    return WorkerOutput(worker_env["FACESTREAM_REDIS__PREFIX"], redis_server.client())
