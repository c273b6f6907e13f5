"""A throw-away `redis-server` per test, on a free port, that tests can stop and restart.

`stop()` kills the process (a real outage for clients); `start()` brings a fresh,
empty server back on the same port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis


class RedisServerError(RuntimeError):
    """The test Redis server did not come up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One `redis-server` process without persistence, bound to 127.0.0.1."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT/0`."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A client that decodes replies to str."""
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def start(self, timeout_s: float = 10.0) -> None:
        """Start (or restart) the server on its port and wait for PONG."""
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--loglevel", "warning",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.workdir
        )
        deadline = time.monotonic() + timeout_s
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self._process.poll() is not None:
                    err = (
                        self._process.stderr.read().decode(errors="replace")
                        if self._process.stderr
                        else ""
                    )
                    raise RedisServerError(f"redis-server on port {self.port} exited: {err}")
                try:
                    if probe.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisServerError(
                        f"redis-server on port {self.port} not ready in {timeout_s} s"
                    )
                time.sleep(0.02)
        finally:
            probe.close()

    def stop(self) -> None:
        """Kill the server (clients see a dropped connection) and wait for it to exit."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait(timeout=10)
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None

    def is_running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty Redis for this test only (skips where redis-server is not installed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    server = RedisServer(binary, tmp_path)
    for _attempt in range(3):  # another process may grab the free port between probe and bind
        try:
            server.start()
            break
        except RedisServerError:
            server.port = free_port()
    else:
        raise RedisServerError("could not start redis-server on a free port after 3 tries")
    try:
        yield server
    finally:
        server.stop()
