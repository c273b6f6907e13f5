"""`facestream status [ID]`: the health of every known stream (a table), or of one stream.

FPS is the detection rate (frames detected per second), DECODE the decode rate. A stream
whose status needs its worker (`starting`, `running`, ...) is shown `owner_gone` when
that worker's liveness key ({prefix}:worker:{id}) has expired; `--json` carries
the state as written too (`written_state`) and `owner_alive`.

Entries this version did not write (a foreign or broken hash: unknown state, a number that
is not one, a time of 1e300, bytes that are not UTF-8, a key of the wrong type) are shown
as such, row by row: one bad entry never hides the others. Control characters (ANSI
escapes) are printed escaped, as `\\u001b`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from worker.commands.connections import (
    add_redis_arguments,
    decode_text,
    printable,
    report_unreachable,
)

if TYPE_CHECKING:
    import redis

    from worker.redis_keys import RedisKeys
    from worker.status_read import StatusEntry

EXIT_NOT_FOUND = 1

_MAX_LABELS_CHARS = 40  # the table cuts longer labels (the JSON carries them whole)


HELP = "show stream health from Redis"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `status`."""
    parser.add_argument("stream_id", nargs="?", metavar="ID", help="one stream's id")
    add_redis_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def read_statuses(
    client: redis.Redis, keys: RedisKeys, stream_id: str | None = None
) -> list[StatusEntry]:
    """Every stream named in `{p}:streams` that has a status hash (or just `stream_id`),
    sorted by id, each with whether its worker is alive; a hash that cannot be read
    becomes an entry with its problem."""
    import redis as redis_lib

    from worker.status_read import StatusEntry, parse_status, with_owners

    raw_ids: list[bytes] = (
        [stream_id.encode()] if stream_id is not None else list(client.smembers(keys.streams))
    )
    raw_ids.sort()
    pipe = client.pipeline(transaction=False)
    for raw_id in raw_ids:
        pipe.hgetall(keys.stream_raw(raw_id))
    entries = []
    for raw_id, reply in zip(raw_ids, pipe.execute(raise_on_error=False), strict=True):
        shown_id = decode_text(raw_id)
        if isinstance(reply, redis_lib.ResponseError):
            entries.append(StatusEntry(shown_id, None, {}, (f"unreadable: {reply}",)))
            continue
        if not reply:  # the set may still name a stream whose hash expired
            continue
        fields = {decode_text(k): decode_text(v) for k, v in reply.items()}
        entry = parse_status(shown_id, fields)
        if isinstance(raw_id, bytes) and shown_id.encode("utf-8", errors="replace") != raw_id:
            entry = StatusEntry(
                entry.stream_id, entry.status, entry.fields, (*entry.problems, "id is not UTF-8")
            )
        entries.append(entry)
    return with_owners(client, keys, entries)


def run(args: argparse.Namespace) -> int:
    """Print the status table or one stream's status; 1 if the stream is unknown."""
    import redis

    from worker.redis_keys import RedisKeys
    from worker.settings import Settings

    settings = Settings().redis
    url = args.redis_url or settings.url
    keys = RedisKeys(args.prefix or settings.prefix)
    client = redis.Redis.from_url(url, socket_connect_timeout=5)  # bytes: see decode_text
    try:
        entries = read_statuses(client, keys, args.stream_id)
    except redis.RedisError as exc:  # unreachable, timed out, or an unexpected reply
        return report_unreachable(url, exc)
    finally:
        client.close()
    if args.stream_id is not None:
        if not entries:
            print(
                printable(
                    f"no status for stream {args.stream_id!r} under prefix {keys.prefix!r} "
                    "(unknown, or its status expired)"
                ),
                file=sys.stderr,
            )
            return EXIT_NOT_FOUND
        _print_one(entries[0], as_json=args.json)
        return 0
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2))  # ASCII: escapes all
    elif not entries:
        print(printable(f"no streams known under prefix {keys.prefix!r}"), file=sys.stderr)
    else:
        _print_table(entries)
    broken = sum(1 for e in entries if e.problems)
    if broken:
        print(f"{broken} status entr{'y' if broken == 1 else 'ies'} unreadable", file=sys.stderr)
    return 0


def _print_one(entry: StatusEntry, as_json: bool) -> None:
    fields = entry.to_json()
    if as_json:
        print(json.dumps(fields, indent=2))
        return
    flat = {k: v for k, v in fields.items() if k != "raw"} | fields.get("raw", {})
    width = max(len(printable(name)) for name in flat)
    for name, value in flat.items():
        shown = "" if value is None else value
        if isinstance(shown, list):
            shown = "; ".join(shown)
        elif isinstance(shown, dict):
            shown = ", ".join(f"{k}={v}" for k, v in shown.items())
        print(printable(f"{printable(name):<{width}}  {shown}").rstrip())


def _age(now_s: float, then_s: float | None) -> str:
    return "-" if not then_s else f"{max(0.0, now_s - then_s):.1f}s"


def _rate(fps: float | None) -> str:
    return "-" if fps is None else f"{fps:.1f}"


def _labels_text(labels: dict[str, str] | Any) -> str:
    text = ",".join(f"{k}={v}" for k, v in labels.items())
    return text if len(text) <= _MAX_LABELS_CHARS else text[: _MAX_LABELS_CHARS - 1] + "…"


def _detail(entry: StatusEntry) -> str:
    """The last column: the error, or why a stream stopped / was released / has no owner."""
    s = entry.status
    assert s is not None
    if entry.state is not None and entry.state != s.state:
        return f"worker {s.worker_id} is gone (no liveness key); it last wrote {s.state}"
    return s.error or s.reason


def _print_table(entries: list[StatusEntry]) -> None:
    now_s = time.time()
    header = (
        "STREAM", "STATE", "FPS", "DECODE", "LAST FRAME", "UPDATED", "WORKER", "TASKS",
        "LABELS", "ERROR/REASON",
    )  # fmt: skip
    rows = []
    for entry in entries:
        s = entry.status
        if s is None:
            state = "?" + entry.fields.get("state", "")[:20]
            worker = entry.fields.get("worker_id", "")
            row = (entry.stream_id, state, "-", "-", "-", "-", worker, "", "", "")
        else:
            row = (
                s.stream_id,
                str(entry.state),
                _rate(s.fps),
                _rate(s.decode_fps),
                _age(now_s, s.last_frame_wall_s),
                _age(now_s, s.updated_s),
                s.worker_id,
                ",".join(s.tasks) or "-",
                _labels_text(s.labels) or "-",
                _detail(entry),
            )
        if entry.problems:
            note = "[broken entry: " + "; ".join(entry.problems) + "]"
            row = (*row[:-1], f"{note} {row[-1]}".rstrip())
        rows.append(tuple(printable(cell) for cell in row))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
