"""PLACEHOLDER: `ask` command, being written now."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("ask", help="(not written yet)")
