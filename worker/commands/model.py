"""PLACEHOLDER: `model` command, being written now."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("model", help="(not written yet)")
