"""`facestream model convert|verify`: Face-LLaVA checkpoint conversion and verification.

- `convert SRC DST [--dtype]`: an original checkpoint (folder or hub id) → our format
  (safetensors shards + `facestream.json` + tokenizer files), which loads faster.
- `verify FIXTURE`: load `FIXTURE/checkpoint` the production way and compare every stage
  to the authors' recorded outputs in `FIXTURE/reference/`; exits 1 on any miss.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HELP = "Convert or verify Face-LLaVA checkpoints."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `convert` / `verify` actions and their options."""
    actions = parser.add_subparsers(dest="model_action", required=True, metavar="ACTION")

    convert = actions.add_parser(
        "convert", help="Write an original-format checkpoint in our fast-loading format."
    )
    convert.add_argument("source", help="Original checkpoint folder or hub id.")
    convert.add_argument("destination", help="New (empty) folder for the converted model.")
    convert.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    convert.add_argument(
        "--hf-cache", default=None, help="Hugging Face hub cache folder for the towers."
    )
    convert.add_argument("--offline", action="store_true", help="Use only the local HF cache.")
    convert.add_argument(
        "--tower-weights",
        choices=("auto", "tower_repo", "checkpoint"),
        default="auto",
        help="Where tower weights come from (see ModelOptions.tower_weights).",
    )
    convert.add_argument("--log-format", choices=("json", "console"), default="console")

    verify = actions.add_parser(
        "verify", help="Compare our model with the authors' reference outputs on a fixture."
    )
    verify.add_argument("fixture", help="Fixture folder (checkpoint/, hf_cache/, reference/).")
    verify.add_argument(
        "--device", default="cpu", help="cpu (the reference setting) or cuda; float32 either way."
    )
    verify.add_argument("--log-format", choices=("json", "console"), default="console")
    verify.add_argument("--log-level", default="warning")


def run(args: argparse.Namespace) -> int:
    """Dispatch to convert or verify; returns the exit status."""
    from worker.logs import configure_logging

    configure_logging(args.log_format, getattr(args, "log_level", "info"))
    if args.model_action == "convert":
        return _convert(args)
    return _verify(args)


def _convert(args: argparse.Namespace) -> int:
    from models.facellava.checkpoint import CheckpointError, convert_checkpoint

    started = time.monotonic()
    try:
        report = convert_checkpoint(
            args.source,
            args.destination,
            dtype=args.dtype,
            cache_dir=args.hf_cache,
            offline=args.offline,
            tower_weights=args.tower_weights,
        )
    except CheckpointError as exc:
        print(f"convert failed: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"wrote {args.destination} ({args.dtype}) in {time.monotonic() - started:.1f} s")
    return 0


def _verify(args: argparse.Namespace) -> int:
    # The towers are hub ids: resolve them from the fixture's cache only, never the network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    from models.facellava.verify import FixtureError, verify_fixture

    try:
        result = verify_fixture(args.fixture, device=args.device)
    except FixtureError as exc:
        print(f"verify failed: {exc}", file=sys.stderr)
        return 2
    print(result.table())
    return 0 if result.passed else 1
