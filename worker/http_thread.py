"""`HttpThread`: one `ThreadingHTTPServer` served from one owned, stoppable thread (the
worker's health endpoints and the dashboard)."""

from __future__ import annotations

import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_JOIN_S = 5.0  # how long `stop` waits for the serving thread


class HttpThread:
    """Binds at construction (so `port` is known at once); `start` serves in the background."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: type[BaseHTTPRequestHandler],
        *,
        thread_name: str,
        join_requests: bool,
    ) -> None:
        """`join_requests`: `stop` also waits for the request threads (long-lived pages)
        instead of leaving them as daemons (short probes)."""
        server_class = _IPv6Server if _is_ipv6(host) else ThreadingHTTPServer
        self._server = server_class((host, port), handler)
        self._server.daemon_threads = not join_requests
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=thread_name, daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port (when the settings asked for port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and join the thread (closes the socket even if never started)."""
        if self._thread.ident is not None:
            self._server.shutdown()  # waits for serve_forever: only once it ran
            self._thread.join(timeout=_JOIN_S)
        self._server.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).version == 6
    except ValueError:
        return False  # a host name: resolved as IPv4 by the standard server
