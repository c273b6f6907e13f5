"""PLACEHOLDER: `bench_ingest` command, being written now."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("ingest", help="(not written yet)")
