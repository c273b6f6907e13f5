"""A small blocking server-sent-events reader (for `facestream bench dashboard` and tests)."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SseMessage:
    """One dispatched message: its event type, data (lines joined by `\\n`) and id."""

    event: str
    data: str
    id: str | None


class SseConnection:
    """`GET path` on a dashboard and iterate over its messages until the server closes."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str = "/events",
        *,
        last_event_id: str | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self._conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        sent = {"Accept": "text/event-stream", **(headers or {})}
        if last_event_id is not None:
            sent["Last-Event-ID"] = last_event_id
        self._conn.request("GET", path, headers=sent)
        self.response = self._conn.getresponse()
        self.status = self.response.status

    def messages(self) -> Iterator[SseMessage]:
        """Messages as they arrive (comments skipped); ends when the connection closes."""
        event, data, last_id = "message", [], None
        while True:
            raw = self.response.readline()
            if not raw:
                return
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:
                if data:
                    yield SseMessage(event, "\n".join(data), last_id)
                event, data = "message", []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                last_id = value

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()
