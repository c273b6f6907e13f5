"""`facestream` command line: one sub-command per module in `worker.commands`.

Command modules import only light things at module level; each `run` imports torch,
Kafka or Redis when it is actually called, so `facestream --help` stays instant.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys

COMMAND_MODULES = (
    "detect",
    "analyze",
    "ask",
    "model",
    "bench",
    "worker",
    "submit",
    "stop",
    "status",
    "tail",
    "dashboard",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="facestream", description="Face analytics over live video (RetinaFace + Face-LLaVA)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"worker.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `facestream` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    finally:
        # Every output is closed by now; the interpreter's last collection would walk
        # torch's whole object graph (~0.3 s of a short `analyze`) for nothing.
        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
