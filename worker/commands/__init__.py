"""The `facestream` sub-commands, one module each; `add_command` registers one."""

from __future__ import annotations

import argparse


def add_command(
    sub: argparse._SubParsersAction, name: str, help_text: str, doc: str | None
) -> argparse.ArgumentParser:
    """A sub-command parser whose `--help` shows `doc` (the module docstring) as written."""
    return sub.add_parser(
        name,
        help=help_text,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
