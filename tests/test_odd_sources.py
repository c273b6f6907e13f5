"""Sources that never end or never start end with a clear state or exit status: a finite
MPEG-TS file over HTTP without Range support, a FIFO, an unreachable camera, and a SIGTERM
before the worker has imported anything."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.sources import SourceOpenError, SourceOptions, SourceState, VideoSource
from ingest.urls import UnsupportedURLError, check_source_url
from tests.media import write_gradient_clip
from tests.services.rtsp import free_port

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIP_FRAMES, CLIP_FPS = 20, 5  # a 4 s MPEG-TS file


class _Server:
    """A real HTTP server on 127.0.0.1 that sends one TS file per GET and counts the GETs."""

    def __init__(self, body: bytes, content_length: bool) -> None:
        self.gets = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # no Range support: always the whole file, status 200
                owner.gets += 1
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                if content_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/clip.ts"
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-http")
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture(scope="module")
def ts_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("ts") / "clip.ts"
    write_gradient_clip(path, 160, 96, frames=CLIP_FRAMES, fps=CLIP_FPS, container="mpegts")
    return path.read_bytes()


@pytest.fixture
def server_factory(ts_bytes: bytes) -> Iterator[type]:
    servers: list[_Server] = []

    def start(content_length: bool) -> _Server:
        servers.append(_Server(ts_bytes, content_length))
        return servers[-1]

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


_HTTP = SourceOptions(open_timeout_s=5, read_timeout_s=5, sample_fps=CLIP_FPS)


def test_mpegts_file_over_http_without_range_support_ends_after_one_pass(server_factory) -> None:
    server = server_factory(content_length=True)
    source = VideoSource(server.url, _HTTP)
    frames = list(source.frames())  # returns: the file ends, it is not replayed
    assert source.state is SourceState.DONE
    assert not source.is_live
    assert server.gets == 1
    assert len(frames) == CLIP_FRAMES
    assert frames[-1].pts_s <= CLIP_FRAMES / CLIP_FPS + 1.0


def test_http_stream_without_a_size_is_live_and_reconnects(server_factory) -> None:
    server = server_factory(content_length=False)
    options = _HTTP.model_copy(update={"reconnect_initial_s": 0.1, "reconnect_max_s": 0.2})
    source = VideoSource(server.url, options)
    for delivered, _frame in enumerate(source.frames(), start=1):
        if server.gets >= 2 and delivered > CLIP_FRAMES:
            source.close()
    assert source.is_live
    assert source.join(5)


def test_fifo_path_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "camera.mp4"
    os.mkfifo(fifo)
    with pytest.raises(UnsupportedURLError, match="not a regular file"):
        check_source_url(str(fifo), allow_file=True)
    with pytest.raises(UnsupportedURLError, match="not a regular file"):
        check_source_url(f"file://{fifo}", allow_file=True)


def test_path_that_becomes_a_fifo_after_the_check_fails_without_hanging(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"")
    source = VideoSource(str(path), SourceOptions(allow_file=True))  # checked: a regular file
    path.unlink()
    os.mkfifo(path)
    threads_before = threading.active_count()
    started = time.monotonic()
    with pytest.raises(SourceOpenError, match="not a regular file"):
        list(source.frames())
    assert time.monotonic() - started < 5
    assert source.state is SourceState.ERROR
    assert source.join(5)
    assert threading.active_count() <= threads_before


def _facestream(*args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    env |= {
        "FACESTREAM_SOURCE__OPEN_TIMEOUT_S": "5",
        "FACESTREAM_SOURCE__RECONNECT_INITIAL_S": "0.2",
    }
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.mark.parametrize("command", ["detect", "analyze"])
def test_command_on_a_fifo_exits_at_once_with_the_reason(
    command: str, tmp_path: Path, mnet_weights: Path
) -> None:
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    done = _facestream(command, str(fifo), "--weights", str(mnet_weights), timeout_s=60)
    assert done.returncode in (1, 2), done.stderr
    assert "not a regular file" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["detect", "analyze"])
def test_command_on_an_unreachable_camera_exits_1_after_its_retries(
    command: str, mnet_weights: Path
) -> None:
    url = f"rtsp://viewer:hunter22@127.0.0.1:{free_port()}/cam"
    started = time.monotonic()
    done = _facestream(command, url, "--weights", str(mnet_weights))
    elapsed_s = time.monotonic() - started
    print(f"{command}: exit {done.returncode} after {elapsed_s:.1f} s")
    assert done.returncode == 1, done.stderr
    reconnects = [line for line in done.stderr.splitlines() if "source.reconnecting" in line]
    assert len(reconnects) == 2  # 3 failed opens = 2 waits in between, one line each
    assert all("warning" in line for line in reconnects)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"facestream {command}: rtsp://***@127.0.0.1")
    assert "hunter22" not in done.stderr and "viewer" not in done.stderr


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler installed (Linux: SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@pytest.mark.parametrize("delay_s", [0.0, 0.3, 1.0])
def test_worker_exits_0_on_sigterm_in_its_first_moments(delay_s: float) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    env |= {
        "FACESTREAM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "FACESTREAM_REDIS__URL": f"redis://127.0.0.1:{free_port()}/0",
        "FACESTREAM_HTTP__PORT": str(free_port()),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "worker"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The first instruction of the entry point installs the handler; before that the
        # interpreter itself is starting, which no Python code can cover.
        deadline = time.monotonic() + 30
        while not _catches_sigterm(process.pid):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        # Caught from the entry point on: before any heavy module (numpy comes with the
        # settings, ~1 s in on a loaded machine) is even mapped.
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "_multiarray_umath" not in maps
        time.sleep(delay_s)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
