"""A throw-away GStreamer RTSP server per test, on a free port, that tests can break.

The server (`tests/services/rtsp_server.py`) runs under Debian's `/usr/bin/python3`, which
has the `gi` bindings. It serves an MP4's H.264 track in an endless loop (or a live test
pattern). `stop()` kills it (a real camera outage), `start()` brings it back on the same
port, `pause()`/`resume()` freeze it with SIGSTOP/SIGCONT (a stall: the TCP connection
stays open but no data flows).

Fixtures: `rtsp_server` (the Hamilton clip at `/cam`) and `rtsp_server_factory(media=...,
pattern=..., mount=...)` for anything else. Both skip where GStreamer is missing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")


class RtspServerError(RuntimeError):
    """The test RTSP server did not come up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gstreamer_missing_reason() -> str | None:
    """Why the RTSP server cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import gi; gi.require_version('GstRtspServer', '1.0'); "
            "from gi.repository import GstRtspServer",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return "GStreamer RTSP server bindings missing (apt: python3-gi gir1.2-gst-rtsp-server-1.0)"
    return None


class RtspServer:
    """One RTSP server process bound to 127.0.0.1 serving `mount`."""

    def __init__(
        self,
        media: Path | None = None,
        mount: str = "/cam",
        port: int | None = None,
        pattern_fps: int = 25,
    ) -> None:
        self.media = media
        self.mount = mount
        self.port = port or free_port()
        self.pattern_fps = pattern_fps
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"facestream-rtsp-{self.port}.log"

    @property
    def url(self) -> str:
        """`rtsp://127.0.0.1:PORT/mount`."""
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def url_with_credentials(self, user: str, password: str) -> str:
        """The URL with a userinfo (the test server ignores it)."""
        userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"rtsp://{userinfo}@127.0.0.1:{self.port}{self.mount}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 20.0) -> None:
        """Start (or restart) the server on its port and wait until it listens."""
        if self.running:
            return
        command = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port)]
        command += ["--mount", self.mount]
        if self.media is not None:
            command += ["--file", str(self.media)]
        else:
            command += ["--pattern", "--fps", str(self.pattern_fps)]
        deadline = time.monotonic() + timeout_s
        while True:
            # Output goes to a file, not a pipe nobody drains (a full pipe would block it).
            with self.log_path.open("w") as log_file:
                process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
            self._process = process
            output = self._wait_ready(process, deadline)
            if output is None:
                return
            # The port may still be held by the previous process for a moment: retry.
            process.kill()
            process.wait()
            self._process = None
            if time.monotonic() > deadline:
                raise RtspServerError(f"RTSP server on port {self.port} did not start: {output}")
            time.sleep(0.2)

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> str | None:
        """None once the server prints READY, else what it printed before failing."""
        while time.monotonic() < deadline:
            printed = self.log_path.read_text(errors="replace")
            if "READY" in printed:
                return None
            if process.poll() is not None:
                break
            time.sleep(0.05)
        return self.log_path.read_text(errors="replace")[-2000:] or "no output"

    def stop(self) -> None:
        """Kill the server (no goodbye to clients: a real outage)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGCONT)  # in case it was paused
            self._process.kill()
        self._process.wait(timeout=10)
        self._process = None

    def pause(self) -> None:
        """Freeze the server: connections stay open, no data flows (a stall)."""
        assert self._process is not None, "server not running"
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on."""
        assert self._process is not None, "server not running"
        os.kill(self._process.pid, signal.SIGCONT)


@pytest.fixture(scope="session")
def _gstreamer_available() -> None:
    reason = gstreamer_missing_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def rtsp_server_factory(_gstreamer_available: None) -> Iterator[Callable[..., RtspServer]]:
    """Make started RTSP servers: `factory(media=path | None, mount="/cam")`; all stopped after."""
    servers: list[RtspServer] = []

    def make(media: Path | None = None, mount: str = "/cam", pattern_fps: int = 25) -> RtspServer:
        server = RtspServer(media=media, mount=mount, pattern_fps=pattern_fps)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def rtsp_server(rtsp_server_factory: Callable[..., RtspServer], hamilton_mp4: Path) -> RtspServer:
    """A started RTSP server looping the Hamilton clip at `rtsp://127.0.0.1:PORT/cam`."""
    return rtsp_server_factory(media=hamilton_mp4)
