"""`facestream stop ID`: write a tombstone so the workers stop and forget a stream."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.settings import KafkaSettings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `stop` sub-command."""
    parser = sub.add_parser(
        "stop",
        help="Stop watching a stream (writes a tombstone for its id).",
        description="Write a tombstone (key = stream id, null value) to the assignments topic; "
        "the owning worker stops the stream and compaction forgets it.",
    )
    parser.add_argument("stream_id", help="The id given to `facestream submit --stream-id`.")
    add_kafka_arguments(parser)
    parser.set_defaults(func=run)


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
    kafka = settings.kafka.model_validate({**settings.kafka.model_dump(), **updates})
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


def run(args: argparse.Namespace) -> int:
    """Validate the id and produce the tombstone; 2 = invalid input, 1 = Kafka failure."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,200}", args.stream_id):
        print(
            f"facestream stop: {args.stream_id!r} is not a stream id (A-Z a-z 0-9 . _ : -)",
            file=sys.stderr,
        )
        return 2
    settings = kafka_settings_from(args)
    if settings is None:
        return 2
    where = produce_assignment(settings, args.stream_id, None, timeout_s=args.timeout_s)
    if where is None:
        return 1
    print(json.dumps({"stopped": args.stream_id, **where}))
    return 0
