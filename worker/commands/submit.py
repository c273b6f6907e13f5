"""`facestream submit URL --stream-id ID`: validate a StreamSpec and write it to Kafka.

The spec goes to the assignments topic under key = stream id; submitting the same id
again replaces the spec.
"""

from __future__ import annotations

import argparse
import json
import sys

from worker.commands.connections import add_kafka_arguments, kafka_settings_from, produce_assignment

HELP = "Ask the workers to watch a stream (writes a StreamSpec to the assignments topic)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `submit`."""
    parser.add_argument("url", help="rtsp://, rtsps://, http(s):// URL (file only if allowed).")
    parser.add_argument("--stream-id", required=True, help="Stable id: A-Z a-z 0-9 . _ : -")
    parser.add_argument(
        "--tasks", default="emotion", help="Comma-separated: emotion,age,attributes,action_units."
    )
    parser.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="Free label (repeat)."
    )
    parser.add_argument("--detection-fps", type=float, help="Override: detections per second.")
    parser.add_argument("--window-s", type=float, help="Override: clip window length.")
    parser.add_argument("--stride-s", type=float, help="Override: window stride.")
    parser.add_argument("--max-faces", type=int, help="Override: faces tracked.")
    parser.add_argument("--min-face-px", type=int, help="Override: minimum face side in pixels.")
    parser.add_argument(
        "--allow-file",
        action="store_true",
        help="Accept file: URLs / local paths (the workers must allow them too; on by "
        "default where FACESTREAM_SOURCE__ALLOW_FILE=true).",
    )
    add_kafka_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Build and validate the spec, produce it, print where it went; 2 = invalid, 1 = Kafka."""
    from pydantic import ValidationError

    from ingest.urls import UnsupportedURLError, check_source_url
    from worker.settings import Settings
    from worker.specs import StreamSpec, validation_problems

    # The same setting the workers read: where they allow files, submit does too.
    allow_file = args.allow_file or Settings().source.allow_file

    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"facestream submit: --label {item!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        labels[key] = value
    overrides = {
        name: getattr(args, name)
        for name in ("detection_fps", "window_s", "stride_s", "max_faces", "min_face_px")
        if getattr(args, name) is not None
    }
    try:
        spec = StreamSpec(
            stream_id=args.stream_id,
            url=args.url,
            tasks=[task.strip() for task in args.tasks.split(",") if task.strip()],
            labels=labels,
            **overrides,
        )
        check_source_url(spec.url, allow_file=allow_file)
    except ValidationError as error:
        problems = validation_problems(error)
        print(f"facestream submit: invalid stream spec: {problems}", file=sys.stderr)
        return 2
    except UnsupportedURLError as error:
        hint = (
            ""
            if allow_file
            else " (for a file the workers can read: --allow-file, with "
            "FACESTREAM_SOURCE__ALLOW_FILE=true on the workers)"
        )
        print(f"facestream submit: {error}{hint}", file=sys.stderr)
        return 2
    settings = kafka_settings_from(args)
    if settings is None:
        return 2
    value = spec.model_dump_json(exclude_none=True).encode("utf-8")
    where = produce_assignment(settings, spec.stream_id, value, timeout_s=args.timeout_s)
    if where is None:
        return 1
    print(json.dumps({"submitted": spec.stream_id, **where}))
    return 0
