"""`facestream worker`: the Kafka → pipeline → Redis service (what Kubernetes runs).

Every knob is a setting: environment variables FACESTREAM_* (nested with __), e.g.
FACESTREAM_KAFKA__BOOTSTRAP_SERVERS, FACESTREAM_REDIS__URL. See the README.
"""

from __future__ import annotations

import argparse

EXIT_SETUP = 2
"""Exit status when the settings, weights or model cannot work (nothing was started)."""


HELP = "Run the worker: Kafka assignments in, Face-LLaVA events to Redis."


def run(args: argparse.Namespace) -> int:
    """Check the setup, then run the worker until it is stopped; returns the exit status.

    Before anything connects: the settings (a bad one is one plain line from the CLI),
    the model's source (folder format, or the hub repo in the cache / the hub reachable)
    and the detector (loaded here: small and fast). A mistake in those is one JSON log
    line and exit 2; the long model load itself happens in the worker, with `/healthz` up.
    """
    import structlog

    from models.devices import DeviceUnavailableError
    from models.facellava.checkpoint import CheckpointError, check_model_source
    from models.retinaface import DetectorCheckpointError
    from models.weights import WeightsError
    from worker.detection import load_detector
    from worker.logs import configure_logging
    from worker.settings import Settings

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    log = structlog.get_logger("facestream.worker")
    try:
        check_model_source(settings.model)
    except (CheckpointError, DeviceUnavailableError) as exc:
        log.error("cannot start: model", error=" ".join(str(exc).split()))
        return EXIT_SETUP

    try:
        detector = load_detector(settings)
    except (WeightsError, DetectorCheckpointError, DeviceUnavailableError) as exc:
        log.error("cannot start: detector weights", error=" ".join(str(exc).split()))
        return EXIT_SETUP
    from worker.service import Worker

    worker = Worker(settings, detector_factory=lambda: detector)
    worker.install_signal_handlers()
    return worker.run()
