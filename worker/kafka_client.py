"""kafka-python client settings built from `KafkaSettings`: brokers, API version, SASL/SSL.

Every Kafka client of the worker (assignment consumer, DLQ/tombstone producer, the
`submit`/`stop` commands) is built from here, so security and version handling live in
one place. kafka is imported inside the builders to keep `facestream --help` fast.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from worker.settings import KafkaSettings

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer

_VERSION_RE = re.compile(r"^\d+(\.\d+){1,2}$")
_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


OLD_BROKER_HINT = (
    "brokers older than 0.10 do not answer the version probe: for them set "
    "FACESTREAM_KAFKA__API_VERSION (e.g. 0.9)"
)


class KafkaConfigError(ValueError):
    """The Kafka settings cannot work; the message names the setting to fix."""


def is_bootstrap_failure(error: BaseException) -> bool:
    """True for kafka-python's "Unable to bootstrap" (no broker answered in time)."""
    from kafka.errors import KafkaTimeoutError

    return isinstance(error, KafkaTimeoutError) and "bootstrap" in str(error).lower()


def explain_bootstrap_failure(settings: KafkaSettings, error: Exception) -> Exception:
    """`error` itself, or, for a bootstrap failure with the API version auto-detected, an
    error of the same type whose message adds `OLD_BROKER_HINT` (such a broker looks
    exactly like one that is down)."""
    if settings.api_version is not None or not is_bootstrap_failure(error):
        return error
    detail = error.args[0] if error.args else ""  # str() of a kafka error adds its class name
    return type(error)(f"{detail}; {OLD_BROKER_HINT}")


def parse_api_version(text: str | None) -> tuple[int, ...] | None:
    """`"0.9"` → `(0, 9)`, `"3.7.1"` → `(3, 7, 1)`; None, `""` or `"auto"` → None (auto-detect)."""
    if text is None or text.strip().lower() in ("", "auto"):
        return None
    cleaned = text.strip()
    if not _VERSION_RE.match(cleaned):
        raise KafkaConfigError(
            f"FACESTREAM_KAFKA__API_VERSION={text!r} is not a version like '0.9' or '3.7'"
        )
    return tuple(int(part) for part in cleaned.split("."))


def client_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Connection, version and security kwargs shared by consumers and producers."""
    protocol = settings.security_protocol.upper()
    if protocol not in _SECURITY_PROTOCOLS:
        raise KafkaConfigError(
            f"FACESTREAM_KAFKA__SECURITY_PROTOCOL={settings.security_protocol!r}: "
            f"use one of {', '.join(_SECURITY_PROTOCOLS)}"
        )
    servers = [s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()]
    if not servers:
        raise KafkaConfigError("FACESTREAM_KAFKA__BOOTSTRAP_SERVERS is empty")
    kwargs: dict[str, Any] = {"bootstrap_servers": servers, "security_protocol": protocol}
    api_version = parse_api_version(settings.api_version)
    if api_version is not None:
        kwargs["api_version"] = api_version
    if protocol.startswith("SASL_"):
        mechanism = (settings.sasl_mechanism or "").upper()
        if mechanism not in _SASL_MECHANISMS:
            raise KafkaConfigError(
                f"FACESTREAM_KAFKA__SASL_MECHANISM={settings.sasl_mechanism!r}: with "
                f"{protocol} use one of {', '.join(_SASL_MECHANISMS)}"
            )
        if not settings.sasl_username or not settings.sasl_password:
            raise KafkaConfigError(
                f"SASL {mechanism} needs FACESTREAM_KAFKA__SASL_USERNAME and "
                "FACESTREAM_KAFKA__SASL_PASSWORD"
            )
        kwargs["sasl_mechanism"] = mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password
    if protocol in ("SSL", "SASL_SSL"):
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(settings, name)
            if value:
                kwargs[name] = value
    return kwargs


def consumer_kwargs(settings: KafkaSettings, *, client_id: str) -> dict[str, Any]:
    """kwargs of the assignment consumer: group membership, manual commits, no auto reset."""
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    request_timeout_ms = max(30000, settings.session_timeout_ms + 5000)
    return {
        **client_kwargs(settings),
        "client_id": client_id,
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        # max_poll_interval_ms stays kafka-python's: 5 min on brokers >= 0.10.1, and equal to
        # the session timeout below (0.9 has no separate poll interval). Our poll loop never
        # waits on stream work, so either is far away.
        "request_timeout_ms": request_timeout_ms,
        # Eager assignors: each assignment callback carries the full set we own.
        "partition_assignment_strategy": (RangePartitionAssignor, RoundRobinPartitionAssignor),
        "reconnect_backoff_max_ms": 5000,
        "bootstrap_timeout_ms": 10000,
    }


def producer_kwargs(settings: KafkaSettings, *, client_id: str) -> dict[str, Any]:
    """kwargs of a producer that waits for all in-sync replicas and never blocks for long."""
    return {
        **client_kwargs(settings),
        "client_id": client_id,
        "acks": "all",
        "max_block_ms": 5000,
        "reconnect_backoff_max_ms": 5000,
        "bootstrap_timeout_ms": 10000,
    }


def make_consumer(settings: KafkaSettings, *, client_id: str) -> KafkaConsumer:
    """A `KafkaConsumer` (not yet subscribed); raises kafka errors when no broker answers
    (a bootstrap failure with the version auto-detected says what old brokers need)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaTimeoutError

    try:
        return KafkaConsumer(**consumer_kwargs(settings, client_id=client_id))
    except KafkaTimeoutError as error:
        raise explain_bootstrap_failure(settings, error) from error


def make_producer(settings: KafkaSettings, *, client_id: str, **overrides: Any) -> KafkaProducer:
    """A `KafkaProducer` (kwargs may override, e.g. `max_block_ms`); raises kafka errors
    when no broker answers (auto version)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    try:
        return KafkaProducer(**{**producer_kwargs(settings, client_id=client_id), **overrides})
    except KafkaTimeoutError as error:
        raise explain_bootstrap_failure(settings, error) from error
