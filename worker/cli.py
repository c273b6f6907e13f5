"""`facestream` command line: one sub-command per module in `worker.commands`.

Command modules import only light things at module level; each `run` imports torch,
Kafka or Redis when it is actually called, so `facestream --help` stays instant.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import signal
import sys
from types import FrameType

from worker.commands import add_command

# SIGTERM before a command installs its own handling: `worker` has started nothing yet and
# exits 0 (as its own handler does while models load); any other command exits 143.
EXIT_TERMINATED = 128 + signal.SIGTERM

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

USER_ERRORS = (
    ("worker.settings", "SettingsError"),
    ("models.weights", "WeightsError"),
    ("models.retinaface", "DetectorCheckpointError"),
    ("models.devices", "DeviceUnavailableError"),
    ("models.facellava.checkpoint", "CheckpointError"),
    ("models.facellava.modeling", "FaceLlavaConfigError"),
    ("models.facellava.prompts", "PromptError"),
    ("models.facellava.prompts", "TokenizerNotFoundError"),
)
"""Exceptions that mean the user's input or setup is wrong, not our code: one line, exit 2.
Named, not imported, so `facestream --help` stays instant: an exception can only be an
instance of a class whose module has been imported."""
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="facestream", description="Face analytics over live video (RetinaFace + Face-LLaVA)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        add_command(sub, name, importlib.import_module(f"worker.commands.{name}"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `facestream` console script; returns the exit status."""
    previous = _handle_sigterm_from_here(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"facestream {args.command}: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        # Every output is closed by now; the interpreter's last collection would walk
        # torch's whole object graph (~0.3 s of a short `analyze`) for nothing.
        gc.freeze()


def is_user_error(exc: BaseException) -> bool:
    """True for the exception types of `USER_ERRORS`."""
    for module_name, class_name in USER_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, getattr(module, class_name)):
            return True
    return False


def one_line(message: str) -> str:
    """A message with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(message.split())


def _handle_sigterm_from_here(argv: list[str]) -> signal.Handlers | None:
    """Install the early SIGTERM handler (the first thing `main` does); returns the old one.

    Importing torch and the models takes seconds; without this a SIGTERM then would kill
    the process by the signal (-15). `worker` replaces it once it can stop gracefully.
    """
    import os
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None  # signals can only be handled in the main thread (an embedding caller)
    is_worker = next((a for a in argv if not a.startswith("-")), None) == "worker"

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        if is_worker:
            os._exit(0)  # nothing started, nothing to flush
        raise SystemExit(EXIT_TERMINATED)

    return signal.signal(signal.SIGTERM, on_sigterm)


if __name__ == "__main__":
    sys.exit(main())
