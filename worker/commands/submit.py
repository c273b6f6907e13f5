"""PLACEHOLDER: `submit` command, being written now."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("submit", help="(not written yet)")
