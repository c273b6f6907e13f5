"""HTTP endpoints: `/healthz` (every loop alive), `/readyz` (ready for work), `/metrics`."""

from __future__ import annotations

from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from worker.http_thread import HttpThread

Check = Callable[[], tuple[bool, str]]


class HealthServer:
    """A small threaded HTTP server owned by the worker; `stop()` ends its thread."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, alive: Check, ready: Check
    ) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a client that sends nothing does not hold a thread forever

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(owner._registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, why = (owner._alive if path == "/healthz" else owner._ready)()
                    self._reply(200 if ok else 503, (why + "\n").encode(), "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # probes every few seconds would flood the logs

        self._registry = registry
        self._alive = alive
        self._ready = ready
        self._http = HttpThread(host, port, Handler, thread_name="http-health", join_requests=False)

    @property
    def port(self) -> int:
        """The bound port (useful when the settings asked for port 0)."""
        return self._http.port

    def start(self) -> None:
        """Serve in the background."""
        self._http.start()

    def stop(self) -> None:
        """Stop serving and join the thread (closes the socket even if never started)."""
        self._http.stop()
