"""The dashboard's HTTP side: the page, its assets, `/events` (server-sent events),
`/api/state` and `/healthz`, on the standard library's `ThreadingHTTPServer`.

Read-only: only GET is served. Protection: without a token the server binds loopback
only and answers only requests whose `Host` is a loopback name (so a web page elsewhere
cannot reach it through DNS rebinding); with a token every request but `/healthz` must
carry it (cookie set by opening `/?token=...` once, or `Authorization: Bearer`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import redis
import structlog

from worker.dashboard.feed import EntryId, sse_message
from worker.dashboard.hub import DashboardHub
from worker.http_thread import HttpThread

log = structlog.get_logger(__name__)

COOKIE_NAME = "facestream_dashboard"
# A page that receives nothing for this long gets a comment line (finds dead sockets).
KEEPALIVE_S = 15.0
# A socket write that blocks longer than this ends that page's connection.
SOCKET_TIMEOUT_S = 30.0
# How long a browser waits before reconnecting a dropped feed.
RECONNECT_MS = 2000

_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class DashboardConfigError(ValueError):
    """The dashboard settings are unsafe or invalid (e.g. public bind without a token)."""


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP addresses (127.0.0.0/8, ::1)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token (the page shows people's emotions)."""
    if not is_loopback(host) and not token:
        raise DashboardConfigError(
            f"refusing to serve the dashboard on {host!r} without a token: set "
            "FACESTREAM_DASHBOARD__TOKEN (e.g. from a Secret), or bind 127.0.0.1 and reach "
            "it through an SSH tunnel or `kubectl port-forward`"
        )


def load_assets() -> dict[str, tuple[bytes, str]]:
    """The page's files from the installed package (no build step), by URL path."""
    folder = resources.files("worker.dashboard") / "static"
    return {
        path: ((folder / name).read_bytes(), content_type)
        for path, (name, content_type) in _ASSETS.items()
    }


class DashboardServer:
    """Serves the page and the live feed of one `DashboardHub`; `stop()` ends every thread."""

    def __init__(self, hub: DashboardHub, host: str, port: int, token: str | None) -> None:
        check_bind(host, token)
        self.hub = hub
        self._token = token or None
        # The cookie holds a digest of the token, not the token (any characters are safe).
        self._cookie_value = hashlib.sha256(f"facestream-dashboard\x1f{token}".encode()).hexdigest()
        self._bind_host = host
        self._assets = load_assets()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = SOCKET_TIMEOUT_S
            server_version = "facestream-dashboard"
            sys_version = ""

            def do_GET(self) -> None:
                owner._handle(self)

            def do_POST(self) -> None:
                owner._reply(self, HTTPStatus.METHOD_NOT_ALLOWED, b"read-only\n", "text/plain")

            do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815 - http.server's names

            def log_message(self, format: str, *args: object) -> None:
                return  # one line per request (and per reconnect) would flood the logs

        # stop() joins the page threads too
        self._http = HttpThread(
            host, port, Handler, thread_name="dashboard-http", join_requests=True
        )

    @property
    def port(self) -> int:
        """The bound port (when the settings asked for port 0)."""
        return self._http.port

    def start(self) -> DashboardServer:
        """Start the hub's threads and serve in the background."""
        self.hub.start()
        self._http.start()
        return self

    def stop(self) -> None:
        """Close every page, stop serving, join all threads."""
        self.hub.stop()  # closes the subscribers: page threads return from their wait
        self._http.stop()

    # -- requests --------------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        url = urlsplit(req.path)
        query = parse_qs(url.query)
        if url.path == "/healthz":
            ok = self.hub.is_alive()
            stats = self.hub.stats()
            body = json.dumps({"ok": ok, "redis_up": stats.redis_up}).encode()
            self._reply(
                req,
                HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                body,
                "application/json",
            )
            return
        if not self._host_allowed(req):
            self._reply(
                req,
                HTTPStatus.MISDIRECTED_REQUEST,
                b"this dashboard answers loopback host names only\n",
                "text/plain",
            )
            return
        if self._token is not None:
            offered = query.get("token", [None])[0]
            if url.path == "/" and offered is not None:
                self._login(req, offered)
                return
            if not self._authorized(req):
                self._reply(
                    req,
                    HTTPStatus.UNAUTHORIZED,
                    b"token required: open /?token=YOUR_TOKEN once\n",
                    "text/plain",
                )
                return
        if url.path in self._assets:
            body, content_type = self._assets[url.path]
            self._reply(req, HTTPStatus.OK, body, content_type)
        elif url.path == "/events":
            self._serve_events(req, query)
        elif url.path == "/api/state":
            self._reply(
                req, HTTPStatus.OK, json.dumps(self.hub.state()).encode(), "application/json"
            )
        elif url.path == "/api/thumbnail":
            # Only a person the hub follows, only bytes that are a JPEG of ours; served as
            # an image (nosniff), never inlined into the page.
            jpeg = self.hub.thumbnail(query.get("person", [""])[0])
            if jpeg is None:
                self._reply(req, HTTPStatus.NOT_FOUND, b"no thumbnail\n", "text/plain")
            else:
                self._reply(req, HTTPStatus.OK, jpeg, "image/jpeg")
        else:
            self._reply(req, HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _host_allowed(self, req: BaseHTTPRequestHandler) -> bool:
        if self._token is not None:
            return True  # the token protects it; any Host may carry it
        host = req.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return is_loopback(name) or name.strip("[]") == self._bind_host

    def _authorized(self, req: BaseHTTPRequestHandler) -> bool:
        assert self._token is not None
        auth = req.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and _same(auth[len("Bearer ") :], self._token):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(req.headers.get("Cookie", ""))
        except Exception:  # a malformed Cookie header is just no cookie
            return False
        morsel = cookie.get(COOKIE_NAME)
        return morsel is not None and _same(morsel.value, self._cookie_value)

    def _login(self, req: BaseHTTPRequestHandler, offered: str) -> None:
        assert self._token is not None
        if not _same(offered, self._token):
            self._reply(req, HTTPStatus.UNAUTHORIZED, b"wrong token\n", "text/plain")
            return
        req.send_response(HTTPStatus.SEE_OTHER)
        req.send_header("Location", "/")  # the token leaves the address bar and history
        req.send_header(
            "Set-Cookie",
            f"{COOKIE_NAME}={self._cookie_value}; Path=/; HttpOnly; SameSite=Strict",
        )
        for name, value in _SECURITY_HEADERS.items():
            req.send_header(name, value)
        req.send_header("Content-Length", "0")
        req.end_headers()

    def _serve_events(self, req: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        since_text = req.headers.get("Last-Event-ID") or query.get("since", [""])[0]
        try:
            since = EntryId.parse(since_text) if since_text else None
        except ValueError:
            self._reply(req, HTTPStatus.BAD_REQUEST, b"bad Last-Event-ID\n", "text/plain")
            return
        registered = self.hub.subscribe()
        if registered is None:
            self._reply(
                req,
                HTTPStatus.SERVICE_UNAVAILABLE,
                b"too many dashboard pages open (max_clients)\n",
                "text/plain",
            )
            return
        sub, state = registered
        try:
            req.send_response(HTTPStatus.OK)
            req.send_header("Content-Type", "text/event-stream; charset=utf-8")
            req.send_header("X-Accel-Buffering", "no")
            for name, value in _SECURITY_HEADERS.items():
                req.send_header(name, value)
            req.end_headers()
            req.wfile.write(f"retry: {RECONNECT_MS}\n\n".encode() + state)
            req.wfile.flush()
            # Registered first, replayed second: an event is in the replay, in the queue,
            # or in both; `last` drops the second copy at the seam.
            try:
                events, gap = self.hub.replay(since)
            except redis.RedisError:
                return  # the browser retries in RECONNECT_MS with the same Last-Event-ID
            if gap is not None:
                req.wfile.write(sse_message("gap", json.dumps({"reason": gap})))
            last = since
            for start in range(0, len(events), 200):
                chunk = events[start : start + 200]
                req.wfile.write(
                    b"".join(sse_message("face", e.event_json, e.entry_id) for e in chunk)
                )
                last = chunk[-1].entry_id
            req.wfile.flush()
            while not self.hub.stopping and not sub.closed_reason:
                items = sub.take(KEEPALIVE_S)
                out = []
                for entry_id, message in items:
                    if entry_id is not None:
                        if last is not None and entry_id <= last:
                            continue
                        last = entry_id
                    out.append(message)
                if not items and not sub.closed_reason:
                    out.append(b": keepalive\n\n")
                if out:
                    req.wfile.write(b"".join(out))
                    req.wfile.flush()
        except OSError:
            pass  # the page went away (or stopped reading for SOCKET_TIMEOUT_S)
        finally:
            self.hub.unsubscribe(sub)
            sub.close("connection ended")

    def _reply(
        self, req: BaseHTTPRequestHandler, code: int, body: bytes, content_type: str
    ) -> None:
        req.send_response(code)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(body)))
        for name, value in _SECURITY_HEADERS.items():
            req.send_header(name, value)
        req.end_headers()
        req.wfile.write(body)


def _same(offered: str, token: str) -> bool:
    return hmac.compare_digest(offered.encode(), token.encode())
