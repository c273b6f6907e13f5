"""PLACEHOLDER: `stop` command, being written now."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("stop", help="(not written yet)")
