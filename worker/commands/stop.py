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
    from pydantic import ValidationError

    from worker.kafka_client import KafkaConfigError, client_kwargs
    from worker.logs import configure_logging
    from worker.settings import Settings

    try:
        settings = Settings()
    except ValidationError as error:
        # Without the input values: a misspelt secret variable must not be echoed.
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors(include_url=False, include_input=False, include_context=False)
        )
        print(f"facestream: invalid FACESTREAM_* settings: {problems}", file=sys.stderr)
        return None
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

    producer = None
    try:
        producer = make_producer(
            settings, client_id="facestream-cli", max_block_ms=int(timeout_s * 1000)
        )
        future = producer.send(settings.topic, key=stream_id.encode("utf-8"), value=value)
        metadata = future.get(timeout=timeout_s)
    except KafkaError as error:
        print(
            f"facestream: could not write to Kafka at {settings.bootstrap_servers} "
            f"(topic {settings.topic}): {error!r}",
            file=sys.stderr,
        )
        return None
    finally:
        if producer is not None:
            producer.close(timeout=5)
    return {"topic": metadata.topic, "partition": metadata.partition, "offset": metadata.offset}


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
