"""`facestream stop ID`: write a tombstone so the workers stop and forget a stream.

The tombstone (key = stream id, null value) goes to the assignments topic; the owning
worker stops the stream and compaction forgets it.
"""

from __future__ import annotations

import argparse
import json
import sys

from worker.commands.connections import add_kafka_arguments, kafka_settings_from, produce_assignment

HELP = "Stop watching a stream (writes a tombstone for its id)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `stop`."""
    parser.add_argument("stream_id", help="The id given to `facestream submit --stream-id`.")
    add_kafka_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Validate the id and produce the tombstone; 2 = invalid input, 1 = Kafka failure."""
    from worker.specs import is_stream_id

    if not is_stream_id(args.stream_id):
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
