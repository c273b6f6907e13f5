"""`WorkerLiveness`: the key `{prefix}:worker:{id}` that says this worker is alive.

The thread `worker-liveness` sets the key with a TTL and refreshes it three times per TTL
while the worker's own health check passes; a graceful exit deletes it. A worker that is
killed, hangs or loses Redis stops refreshing, and the key expires within one TTL: status
readers then show its running streams as `owner_gone` (`worker.status.shown_state`). The
TTL is the Kafka group's session timeout, the time its streams take to move to another
worker, so a reader never calls a stream orphaned that is still being handed over.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable

import redis
import structlog

from ingest.urls import redact_url
from worker.redis_keys import RedisKeys
from worker.settings import Settings
from worker.stage import StageThread

log = structlog.get_logger(__name__)

_REFRESHES_PER_TTL = 3
_SOCKET_TIMEOUT_S = 2.0


def liveness_ttl_s(settings: Settings) -> int:
    """The key's TTL: the group's session timeout (whole seconds, at least 2)."""
    return max(2, math.ceil(settings.kafka.session_timeout_ms / 1000))


class WorkerLiveness(StageThread):
    """Thread `worker-liveness`: keeps this worker's liveness key while `healthy()`."""

    def __init__(self, settings: Settings, healthy: Callable[[], bool]) -> None:
        super().__init__("worker-liveness")
        self.worker_id = settings.worker_id
        self.ttl_s = liveness_ttl_s(settings)
        self.key = RedisKeys(settings.redis.prefix).worker(settings.worker_id)
        self._url = settings.redis.url
        self._healthy = healthy
        self._started_s = time.time()
        self._client = redis.Redis.from_url(
            settings.redis.url,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_connect_timeout=_SOCKET_TIMEOUT_S,
        )
        self._failing = False

    def run(self) -> None:
        """Refresh the key every TTL/3 seconds until stopped."""
        interval_s = self.ttl_s / _REFRESHES_PER_TTL
        while not self.stopping.is_set():
            if self._healthy():
                self.refresh()
            self.stopping.wait(interval_s)

    def refresh(self) -> bool:
        """Set the key with its TTL now; False (logged once per outage) when Redis fails."""
        value = {
            "worker_id": self.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_s": self._started_s,
            "refreshed_s": time.time(),
        }
        try:
            self._client.set(self.key, json.dumps(value), ex=self.ttl_s)
        except redis.RedisError as error:
            if not self._failing:
                log.warning(
                    "worker liveness: key not refreshed",
                    url=redact_url(self._url),
                    error=f"{type(error).__name__}: {error}",
                )
            self._failing = True
            return False
        if self._failing:
            log.info("worker liveness: key refreshed again")
        self._failing = False
        return True

    def release(self, timeout_s: float) -> None:
        """Stop refreshing and delete the key (a graceful exit); Redis errors are logged."""
        self.stop()
        self.join(timeout_s)
        try:
            self._client.delete(self.key)
        except redis.RedisError as error:
            log.warning("worker liveness: key not deleted; it expires", error=repr(error))
        finally:
            self._client.close()
