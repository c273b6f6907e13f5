"""How the command-line tools reach Kafka and Redis: their flags, the settings with those
flags applied, one assignments write, and the message when Redis does not answer."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.settings import KafkaSettings

EXIT_REDIS_UNREACHABLE = 2


def add_kafka_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that override `FACESTREAM_KAFKA__*` for one command."""
    parser.add_argument("--bootstrap-servers", help="Override FACESTREAM_KAFKA__BOOTSTRAP_SERVERS.")
    parser.add_argument("--topic", help="Override FACESTREAM_KAFKA__TOPIC.")
    parser.add_argument("--api-version", help="Override FACESTREAM_KAFKA__API_VERSION (e.g. 0.9).")
    parser.add_argument(
        "--timeout-s", type=float, default=15.0, help="Give up writing after this long."
    )


def kafka_settings_from(args: argparse.Namespace) -> KafkaSettings | None:
    """`Settings().kafka` with the command's flags applied; None (after a message) if invalid."""
    from models.overrides import with_overrides
    from worker.kafka_client import KafkaConfigError, client_kwargs
    from worker.logs import configure_logging
    from worker.settings import Settings

    settings = Settings()  # a SettingsError is reported by the CLI as one line, exit 2
    configure_logging(settings.log_format, settings.log_level)
    updates = {
        name: getattr(args, name)
        for name in ("bootstrap_servers", "topic", "api_version")
        if getattr(args, name, None)
    }
    kafka = with_overrides(settings.kafka, updates)
    try:
        client_kwargs(kafka)
    except KafkaConfigError as error:
        print(f"facestream: {error}", file=sys.stderr)
        return None
    return kafka


def produce_assignment(
    settings: KafkaSettings, stream_id: str, value: bytes | None, *, timeout_s: float
) -> dict[str, Any] | None:
    """Write one assignments record and wait for the ack: `{topic, partition, offset}`,
    or None after printing why it failed."""
    from kafka.errors import KafkaError

    from worker.kafka_client import make_producer
    from worker.logs import first_error, hold_logs

    producer = None
    # kafka-python logs every failed attempt; the one line below says what happened.
    with hold_logs("kafka") as held:
        try:
            producer = make_producer(
                settings, client_id="facestream-cli", max_block_ms=int(timeout_s * 1000)
            )
            future = producer.send(settings.topic, key=stream_id.encode("utf-8"), value=value)
            metadata = future.get(timeout=timeout_s)
        except KafkaError as error:
            print(kafka_failure_line(settings, error, first_error(held)), file=sys.stderr)
            return None
        finally:
            if producer is not None:
                producer.close(timeout=5)
    return {"topic": metadata.topic, "partition": metadata.partition, "offset": metadata.offset}


def kafka_failure_line(settings: KafkaSettings, error: Exception, cause: str | None) -> str:
    """One line: where the write failed, why, the first broker error, and what to check."""
    message = str(error)  # kafka errors start with their class name, others do not
    if not message.startswith(type(error).__name__):
        message = f"{type(error).__name__}: {message}"
    line = (
        f"facestream: could not write to Kafka at {settings.bootstrap_servers} "
        f"(topic {settings.topic}): {message}"
    )
    if cause:
        line += f" (first broker error: {cause})"
    if cause is None and "metadata" in message.lower():  # brokers answer: topic missing?
        line += f"; does the topic {settings.topic} exist? (set --topic or FACESTREAM_KAFKA__TOPIC)"
    return " ".join(line.split())


def add_redis_arguments(parser: argparse.ArgumentParser) -> None:
    """`--redis-url` and `--prefix`, overriding `FACESTREAM_REDIS__URL` / `__PREFIX`."""
    parser.add_argument("--redis-url", help="Redis URL (default: settings' redis.url)")
    parser.add_argument("--prefix", help="key prefix (default: settings' redis.prefix)")


def printable(text: str) -> str:
    """`text` with every non-printable character (ESC, CR, bidi overrides, ...) written as a
    `\\uXXXX` escape, so nothing read from Redis can move the cursor or recolour a terminal."""
    return "".join(
        ch
        if ch.isprintable()
        else (f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        for ch in text
    )


def decode_text(raw: bytes | str) -> str:
    """Bytes from Redis as text; bytes that are not UTF-8 show as `\\xNN`."""
    return raw.decode("utf-8", errors="backslashreplace") if isinstance(raw, bytes) else raw


def report_unreachable(url: str, error: Exception) -> int:
    """Say (redacted) that Redis did not answer or answered with an error; its exit status."""
    import redis

    from ingest.urls import redact_url, scrub_secrets

    what = (
        "cannot reach Redis at"
        if isinstance(error, redis.ConnectionError | redis.TimeoutError)
        else "error reply from Redis at"
    )
    message = f"{what} {redact_url(url)}: {scrub_secrets(str(error), url)}"
    print(
        printable(f"{message} (set --redis-url or FACESTREAM_REDIS__URL)"),
        file=sys.stderr,
    )
    return EXIT_REDIS_UNREACHABLE
