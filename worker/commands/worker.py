"""PLACEHOLDER: `worker` command, being written now."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("worker", help="(not written yet)")
