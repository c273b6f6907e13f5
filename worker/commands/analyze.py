"""PLACEHOLDER: `analyze` command, being written now."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("analyze", help="(not written yet)")
