"""`facestream bench dashboard`: many live pages on one dashboard process, under load.

Starts a private Redis (unless `--redis-url`), a `facestream dashboard` subprocess pinned
to one CPU core, `--clients` SSE readers, and publishes `--rate` events/s through the real
`EventPublisher` (the worker's Lua script: XADD + PUBLISH + person hash). Prints the
latency from `publish()` to each reader's receipt (p50/p95/max) and whether every reader
got every event.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HELP = "SSE pages on one dashboard core: publish-to-receipt latency"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bench dashboard`."""
    parser.add_argument("--clients", type=int, default=50, help="SSE readers (default 50)")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second (200)")
    parser.add_argument("--seconds", type=float, default=20.0, help="publishing time (20)")
    parser.add_argument("--streams", type=int, default=100, help="streams the events span")
    parser.add_argument("--redis-url", help="use this Redis instead of a private one")
    parser.add_argument("--cpu", type=int, default=0, help="core the dashboard is pinned to")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench dashboard: redis-server not found; pass --redis-url")
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"redis://127.0.0.1:{port}/0"


class _Reader(threading.Thread):
    """One SSE page: records the latency of every `face` message it receives."""

    def __init__(self, port: int, index: int, stop: threading.Event) -> None:
        super().__init__(name=f"bench-sse-{index}", daemon=True)
        self._port = port
        self._stop_event = stop
        self.latencies_s: list[float] = []
        self.ended_early = False
        self.connected = threading.Event()

    def run(self) -> None:
        from worker.dashboard.sse_client import SseConnection

        conn = SseConnection("127.0.0.1", self._port, timeout_s=30)
        try:
            for message in conn.messages():
                if message.event == "state":
                    self.connected.set()
                elif message.event == "face":
                    sent_s = json.loads(message.data)["wall_time_s"]
                    self.latencies_s.append(time.time() - sent_s)
                if self._stop_event.is_set():
                    return
            self.ended_early = True
        except OSError:
            self.ended_early = not self._stop_event.is_set()
        finally:
            conn.close()


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its figures."""
    from worker.events import FaceEvent
    from worker.publisher import EventPublisher
    from worker.settings import RedisSettings

    workdir = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    redis_proc = None
    url = args.redis_url
    if url is None:
        redis_proc, url = _start_redis(workdir)
    prefix = f"bench{os.getpid()}"
    port = _free_port()
    env = {
        **os.environ,
        "FACESTREAM_REDIS__URL": url,
        "FACESTREAM_REDIS__PREFIX": prefix,
        "FACESTREAM_DASHBOARD__HISTORY_EVENTS": "0",
        "FACESTREAM_DASHBOARD__MAX_CLIENTS": str(max(args.clients + 5, 200)),
    }
    cpu = args.cpu
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "dashboard", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    others = os.sched_getaffinity(0) - {cpu}
    if others:
        os.sched_setaffinity(0, others)  # readers and publisher stay off the dashboard's core
    stop = threading.Event()
    readers: list[_Reader] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or dashboard.poll() is not None:
                    raise SystemExit("bench dashboard: the dashboard did not start") from None
                time.sleep(0.1)
        readers = [_Reader(port, i, stop) for i in range(args.clients)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.connected.wait(30)
        settings = RedisSettings(url=url, prefix=prefix, person_ttl_s=30)
        total = int(args.rate * args.seconds)
        started = time.monotonic()
        with EventPublisher(settings) as publisher:
            for n in range(total):
                target = started + n / args.rate
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                stream_id = f"cam-{n % args.streams:03d}"
                track_id = (n // args.streams) % 5
                now = time.time()
                publisher.publish(
                    FaceEvent.identified(
                        stream_id=stream_id,
                        track_id=track_id,
                        task="emotion",
                        result={"kind": "emotion", "label": "happy", "matched_text": "smiling"},
                        answer_text="The person appears happy, smiling broadly at someone.",
                        window_start_s=float(n),
                        window_end_s=n + 2.5,
                        wall_time_s=now,
                        frame_wall_time_s=now,
                        box_xyxy=(10.0, 20.0, 110.0, 140.0),
                        detector_score=0.97,
                        model_id="bench",
                        worker_id="bench",
                    )
                )
            publish_s = time.monotonic() - started
            publisher.flush(10)
        time.sleep(2.0)  # the last events reach the pages
        stop.set()
        latencies = sorted(x for r in readers for x in r.latencies_s)
        complete = sum(1 for r in readers if len(r.latencies_s) == total)
        print(
            f"dashboard: 1 process pinned to CPU {cpu}; {args.clients} SSE clients; "
            f"{total} events at {total / publish_s:.0f} events/s over {args.streams} streams"
        )
        if latencies:
            p50 = statistics.quantiles(latencies, n=100)[49] * 1000
            p95 = statistics.quantiles(latencies, n=100)[94] * 1000
            print(
                f"publish -> page receipt latency: p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
                f"max {latencies[-1] * 1000:.1f} ms ({len(latencies)} receipts)"
            )
        print(
            f"clients that got every event: {complete}/{args.clients}; "
            f"cut off: {sum(r.ended_early for r in readers)}"
        )
        return 0 if complete == args.clients else 1
    finally:
        stop.set()
        dashboard.terminate()
        try:
            dashboard.wait(15)
        except subprocess.TimeoutExpired:
            dashboard.kill()
        for reader in readers:
            reader.join(5)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
