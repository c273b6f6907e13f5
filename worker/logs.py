"""structlog set-up: JSON lines in production, readable colours in a terminal.

Our own code logs with structlog. Everything else that writes logs goes through the same
renderer, so in production every stderr line is one JSON object:

- standard-library logging of the dependencies (kafka-python, urllib3, huggingface_hub,
  transformers, ...) at warning and above, each (logger, message) at most once per
  `REPEAT_INTERVAL_S` (the next one that passes says how many were suppressed);
- Python warnings (`warnings.warn`), via the `py.warnings` logger;
- an uncaught exception in the main thread or any other thread (the traceback becomes the
  `exception` field instead of plain-text lines).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

import structlog

from ingest.urls import scrub_secrets

THIRD_PARTY_MIN_LEVEL = logging.WARNING
"""Dependencies' records below this level are dropped (unless our level is higher)."""
REPEAT_INTERVAL_S = 10.0
"""The same logger and message (template) is written at most once per this many seconds."""
REPEAT_KEYS_MAX = 512
"""Most (logger, message) pairs the limiter remembers; the oldest are forgotten first."""
HELD_RECORDS_MAX = 50
"""Most records `hold_logs` keeps (the newest win)."""


class RepeatLimiter(logging.Filter):
    """Passes a record unless the same logger, level and message template passed within
    `interval_s`; the next record that passes carries `suppressed` = how many were held back.

    Bounded: remembers at most `max_keys` templates (oldest forgotten), so a library that
    logs a new f-string every time cannot grow it.
    """

    def __init__(self, interval_s: float = REPEAT_INTERVAL_S, max_keys: int = REPEAT_KEYS_MAX):
        super().__init__()
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._lock = threading.Lock()
        # key -> [monotonic time it last passed, records suppressed since]
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        """True when the record should be written (see the class doc)."""
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.interval_s:
                entry[1] += 1
                return False
            suppressed = int(entry[1]) if entry is not None else 0
            self._seen[key] = [now, 0]
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
        if suppressed:
            record.suppressed = suppressed
        return True


class _Holder(logging.Handler):
    def __init__(self, held: deque[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self.held = held

    def emit(self, record: logging.LogRecord) -> None:
        self.held.append(record)


@contextmanager
def hold_logs(logger_name: str) -> Iterator[deque[logging.LogRecord]]:
    """Keep `logger_name`'s warning-and-above records in a bounded deque instead of writing
    them, for a short command that reports the outcome itself in one line (and may quote
    the first error it finds in the deque)."""
    logger = logging.getLogger(logger_name)
    held: deque[logging.LogRecord] = deque(maxlen=HELD_RECORDS_MAX)
    holder = _Holder(held)
    propagate = logger.propagate
    logger.addHandler(holder)
    logger.propagate = False
    try:
        yield held
    finally:
        logger.removeHandler(holder)
        logger.propagate = propagate


def first_error(held: deque[logging.LogRecord]) -> str | None:
    """The message of the first error-level record held (the cause, usually), else None."""
    for record in held:
        if record.levelno >= logging.ERROR:
            return record.getMessage()
    return None


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    """Route structlog, stdlib logging, warnings and uncaught exceptions to stderr in the
    chosen format (see the module doc)."""
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
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(allow=["suppressed"]),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(RepeatLimiter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, THIRD_PARTY_MIN_LEVEL))
    logging.captureWarnings(True)
    _log_uncaught_exceptions()


def _log_uncaught_exceptions() -> None:
    """An exception nobody caught becomes one log record with its traceback as a field."""
    log = structlog.get_logger("facestream.uncaught")

    def main_hook(
        kind: type[BaseException], value: BaseException, traceback: TracebackType | None
    ) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, traceback)
            return
        log.critical("uncaught exception", exc_info=(kind, value, traceback))

    def thread_hook(hook_args: threading.ExceptHookArgs) -> None:
        if hook_args.exc_type is SystemExit:
            return
        thread = hook_args.thread.name if hook_args.thread is not None else "?"
        log.error(
            "uncaught exception in thread",
            thread=thread,
            exc_info=(hook_args.exc_type, hook_args.exc_value, hook_args.exc_traceback),
        )

    sys.excepthook = main_hook
    threading.excepthook = thread_hook


def redact_secrets(
    _logger: object, _method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """structlog processor: every string in a log line (tracebacks included) goes through
    `ingest.urls.scrub_secrets`, so a URL that slipped into a message shows redacted."""
    return {
        key: scrub_secrets(value) if isinstance(value, str) else value
        for key, value in event_dict.items()
    }
