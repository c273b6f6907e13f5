"""PLACEHOLDER: `status` command, being written now."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("status", help="(not written yet)")
