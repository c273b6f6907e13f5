"""`facestream bench ingest|model|worker|dashboard`: benchmarks that print their figures."""

from __future__ import annotations

import argparse

from worker.commands import bench_dashboard, bench_ingest, bench_model, bench_worker


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench", help="Benchmarks (ingest, Face-LLaVA model, whole worker, dashboard)."
    )
    which = parser.add_subparsers(dest="bench", required=True, metavar="WHAT")
    bench_ingest.register(which)
    bench_model.register(which)
    bench_worker.register(which)
    bench_dashboard.register(which)
