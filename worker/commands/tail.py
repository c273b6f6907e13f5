"""PLACEHOLDER: `tail` command, being written now."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("tail", help="(not written yet)")
