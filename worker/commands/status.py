"""`facestream status [ID]`: the health of every stream (a table), or of one stream."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from worker.commands.connections import (
    EXIT_REDIS_UNREACHABLE,
    add_redis_arguments,
    report_unreachable,
)

if TYPE_CHECKING:
    from worker.status import StreamStatus

EXIT_NOT_FOUND = 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `status` sub-command."""
    parser = sub.add_parser(
        "status",
        help="show stream health from Redis",
        description="Show the status of every known stream, or of one stream with ID.",
    )
    parser.add_argument("stream_id", nargs="?", metavar="ID", help="one stream's id")
    add_redis_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the status table or one stream's status; 1 if the stream is unknown."""
    import redis

    from worker.redis_keys import RedisKeys
    from worker.settings import Settings
    from worker.status import StatusFormatError, StreamStatusReader

    settings = Settings().redis
    url = args.redis_url or settings.url
    keys = RedisKeys(args.prefix or settings.prefix)
    client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5)
    reader = StreamStatusReader(client, keys)
    try:
        if args.stream_id is not None:
            status = reader.get(args.stream_id)
            if status is None:
                print(
                    f"no status for stream {args.stream_id!r} under prefix {keys.prefix!r} "
                    "(unknown, or its status expired)",
                    file=sys.stderr,
                )
                return EXIT_NOT_FOUND
            _print_one(status, as_json=args.json)
            return 0
        statuses = reader.list_all()
    except redis.RedisError as exc:  # unreachable, timed out, or an unexpected reply
        return report_unreachable(url, exc)
    except StatusFormatError as exc:
        print(f"unreadable status in Redis: {exc}", file=sys.stderr)
        return EXIT_REDIS_UNREACHABLE
    finally:
        client.close()
    if args.json:
        print(json.dumps([asdict(s) for s in statuses], indent=2))
    elif not statuses:
        print(f"no streams known under prefix {keys.prefix!r}", file=sys.stderr)
    else:
        _print_table(statuses)
    return 0


def _print_one(status: StreamStatus, as_json: bool) -> None:
    fields = asdict(status)
    if as_json:
        print(json.dumps(fields, indent=2))
        return
    width = max(len(name) for name in fields)
    for name, value in fields.items():
        print(f"{name:<{width}}  {'' if value is None else value}".rstrip())


def _age(now_s: float, then_s: float | None) -> str:
    return "-" if not then_s else f"{max(0.0, now_s - then_s):.1f}s"


def _print_table(statuses: list[StreamStatus]) -> None:
    now_s = time.time()
    header = ("STREAM", "STATE", "FPS", "LAST FRAME", "UPDATED", "WORKER", "ERROR")
    rows = [
        (
            s.stream_id,
            str(s.state),
            "-" if s.fps is None else f"{s.fps:.1f}",
            _age(now_s, s.last_frame_wall_s),
            _age(now_s, s.updated_s),
            s.worker_id,
            s.error,
        )
        for s in statuses
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
