"""`facestream bench ingest|model|worker|dashboard`: benchmarks that print their figures."""

from __future__ import annotations

import argparse

from worker.commands import (
    add_command,
    bench_dashboard,
    bench_ingest,
    bench_model,
    bench_worker,
)

HELP = "Benchmarks (ingest, Face-LLaVA model, whole worker, dashboard)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`bench WHAT`: one sub-command per benchmark."""
    which = parser.add_subparsers(dest="bench", required=True, metavar="WHAT")
    add_command(which, "ingest", bench_ingest)
    add_command(which, "model", bench_model)
    add_command(which, "worker", bench_worker)
    add_command(which, "dashboard", bench_dashboard)
