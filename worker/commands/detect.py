"""PLACEHOLDER: `detect` command, being written now."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("detect", help="(not written yet)")
