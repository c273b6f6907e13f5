"""The `facestream` sub-commands, one module each; `add_command` registers one.

A command module has `HELP` (its line in the parent's `--help`), a docstring (its own
`--help` text, shown as written), optionally `add_arguments(parser)`, and `run(args)`
returning the exit status. A module grouping sub-commands adds them in `add_arguments`;
`bench` has no `run` (each benchmark has its own), `model`'s `run` dispatches its actions.
"""

from __future__ import annotations

import argparse
from types import ModuleType


def add_command(
    sub: argparse._SubParsersAction, name: str, module: ModuleType
) -> argparse.ArgumentParser:
    """Register `module` as the sub-command `name` (see the module docstring)."""
    parser = sub.add_parser(
        name,
        help=module.HELP,
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments = getattr(module, "add_arguments", None)
    if add_arguments is not None:
        add_arguments(parser)
    run = getattr(module, "run", None)
    if run is not None:
        parser.set_defaults(func=run)
    return parser
