"""`facestream tail`: follow the events stream in Redis (XREAD BLOCK), one line per event;
new events only unless --from-start.

An entry this version cannot read (no `event` field, bytes that are not UTF-8, JSON of
another schema, a time of 1e300 or NaN) is printed as such and skipped past, so one bad
entry never stops the tail; control characters are printed escaped, as `\\u001b`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import TYPE_CHECKING

from worker.commands.connections import (
    add_redis_arguments,
    decode_text,
    printable,
    report_unreachable,
)

if TYPE_CHECKING:
    import redis

    from worker.events import FaceEvent

BLOCK_MS = 1000  # one XREAD waits at most this long, so Ctrl-C and --count stay responsive
READ_COUNT = 100


HELP = "follow face events in Redis"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `tail`."""
    add_redis_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print each event's raw JSON")
    parser.add_argument(
        "--from-start", action="store_true", help="begin with the oldest event still kept"
    )
    parser.add_argument("--count", type=int, metavar="N", help="exit after N events")
    parser.add_argument(
        "--stream", metavar="ID", help="only events of this stream (others are skipped)"
    )


def run(args: argparse.Namespace) -> int:
    """Print events as they arrive until Ctrl-C (or --count events)."""
    import redis

    from worker.redis_keys import RedisKeys
    from worker.settings import Settings

    settings = Settings().redis
    url = args.redis_url or settings.url
    key = RedisKeys(args.prefix or settings.prefix).events
    client = redis.Redis.from_url(url, socket_connect_timeout=5)  # bytes: see decode_text
    printed = 0
    try:
        last_id = "0-0" if args.from_start else _newest_id(client, key)
        print(
            printable(f"following {key} after {last_id} (Ctrl-C to stop)"),
            file=sys.stderr,
            flush=True,
        )
        while args.count is None or printed < args.count:
            replies = client.xread({key: last_id}, count=READ_COUNT, block=BLOCK_MS)
            for _stream, entries in replies or ():
                for raw_id, raw_fields in entries:
                    last_id = decode_text(raw_id)
                    fields = {decode_text(k): decode_text(v) for k, v in raw_fields.items()}
                    if args.stream is not None and fields.get("stream_id") != args.stream:
                        continue
                    print(printable(entry_line(last_id, fields, args.json)), flush=True)
                    printed += 1
                    if args.count is not None and printed >= args.count:
                        return 0
    except redis.RedisError as exc:  # unreachable, timed out, or an unexpected reply
        return report_unreachable(url, exc)
    finally:
        client.close()
    return 0


def _newest_id(client: redis.Redis, key: str) -> str:
    """The id of the newest entry, so only later events are shown ("0-0" when empty)."""
    newest = client.xrevrange(key, count=1)
    return decode_text(newest[0][0]) if newest else "0-0"


def entry_line(entry_id: str, fields: dict[str, str], as_json: bool) -> str:
    """What to print for one stream entry: its event (raw JSON or a line), or what is wrong."""
    if "event" not in fields:
        names = ", ".join(sorted(fields))[:120]
        return f"{entry_id} (foreign entry without an 'event' field; fields: {names})"
    return fields["event"] if as_json else format_event_line(fields)


def format_event_line(fields: dict[str, str]) -> str:
    """`time stream track task: result [window] worker` for one stream entry."""
    from pydantic import ValidationError

    from worker.events import FaceEvent

    try:
        event = FaceEvent.model_validate_json(fields["event"])
    except (ValidationError, ValueError):  # another schema version or not JSON: show what we can
        return (
            f"{fields.get('stream_id', '?')} track {fields.get('track_id', '?')} "
            f"{fields.get('task', '?')}: (unreadable event) {fields['event'][:120]}"
        )
    return (
        f"{_clock(event.wall_time_s)} {event.stream_id} track {event.track_id} {event.task}: "
        f"{summarize(event)}  [{event.window_start_s:.1f}-{event.window_end_s:.1f}s] "
        f"{event.worker_id}"
    )


def _clock(unix_s: float) -> str:
    """Local `HH:MM:SS`, or `(bad time 1e+300)` for a value that is no time."""
    try:
        if not math.isfinite(unix_s):
            raise ValueError
        return time.strftime("%H:%M:%S", time.localtime(unix_s))
    except (ValueError, OverflowError, OSError):
        return f"(bad time {unix_s:g})"


def summarize(event: FaceEvent) -> str:
    """The result in a few words: a label, an age, attribute or AU names."""
    from models.facellava.answers import (
        ActionUnitsResult,
        AgeResult,
        AttributesResult,
        EmotionResult,
    )

    result = event.result
    if isinstance(result, EmotionResult):
        return result.label
    if isinstance(result, AgeResult):
        if result.range_years is None:
            return f"{result.years:g} years"
        low, high = result.range_years
        return f"{result.years:g} years ({low:g}-{high:g})"
    if isinstance(result, AttributesResult):
        signed = [f"+{name}" for name in result.present] + [f"-{name}" for name in result.absent]
        return " ".join(signed) or "(no attributes)"
    if isinstance(result, ActionUnitsResult):
        return ", ".join(f"AU{u.number} {u.name}" for u in result.units) or "(no action units)"
    text = " ".join(event.answer_text.split())
    return f"(unparsed) {text[:80]}"
