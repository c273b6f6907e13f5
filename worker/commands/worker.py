"""`facestream worker`: the Kafka → pipeline → Redis service (what Kubernetes runs)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "worker",
        help="Run the worker: Kafka assignments in, Face-LLaVA events to Redis.",
        description=(
            "Every knob is a setting: environment variables FACESTREAM_* (nested with __), "
            "e.g. FACESTREAM_KAFKA__BOOTSTRAP_SERVERS, FACESTREAM_REDIS__URL. See the README."
        ),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from worker.logs import configure_logging
    from worker.service import Worker
    from worker.settings import Settings

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    worker = Worker(settings)
    worker.install_signal_handlers()
    return worker.run()
