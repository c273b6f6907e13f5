"""structlog set-up: JSON lines in production, readable colours in a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

from ingest.urls import scrub_secrets


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    """Route structlog and stdlib logging to stderr in the chosen format."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact_secrets, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)


def redact_secrets(
    _logger: object, _method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """structlog processor: every string in a log line (tracebacks included) goes through
    `ingest.urls.scrub_secrets`, so a URL that slipped into a message shows redacted."""
    return {
        key: scrub_secrets(value) if isinstance(value, str) else value
        for key, value in event_dict.items()
    }
