"""All operator settings in one place: env `FACESTREAM_*`, nested with `__`.

Each part of the pipeline owns a small options model (ingest, models); this class
composes them with the worker's own knobs so an operator finds everything here.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.sources import SourceOptions
from ingest.tracking import TrackerOptions
from ingest.windows import WindowOptions
from models.facellava.options import ModelOptions
from models.retinaface_options import DetectorOptions
from worker.specs import validation_problems

ENV_PREFIX = "FACESTREAM_"
ENV_NESTED_DELIMITER = "__"
NOT_SETTINGS: dict[str, str] = {
    "FACESTREAM_TESTDATA": "folder of the test data, read by the tests and `bench`",
    "FACESTREAM_KAFKA_CACHE": "where the tests keep their Kafka 0.9 test broker",
    "FACESTREAM_PLAYWRIGHT_CACHE": "where the browser tests keep playwright-core",
    "FACESTREAM_CHROMIUM": "the Chromium binary the browser tests drive",
    "FACESTREAM_ARTIFACTS": "where the browser tests keep their screenshots",
    "FACESTREAM_UPDATE_DOCS_SCREENSHOT": "the browser test rewrites docs/dashboard.png",
}
"""`FACESTREAM_*` variables that are legitimately not settings (the README lists them)."""
# What Kubernetes injects for a Service named facestream-*: FACESTREAM_WORKER_SERVICE_HOST,
# FACESTREAM_WORKER_PORT_8080_TCP_ADDR, ...
_SERVICE_LINK = re.compile(r"_SERVICE_(HOST|PORT)|_PORT(_\d+_(TCP|UDP|SCTP)\w*)?$")


class SettingsError(Exception):
    """The `FACESTREAM_*` environment names no setting or holds an invalid value.

    The message is one line that names the variable (never its value: it may be a secret).
    """


class KafkaSettings(BaseModel):
    """Where stream assignments come from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated brokers.")
    topic: str = Field("facestream.streams", description="Compacted assignments topic.")
    dlq_topic: str = Field("facestream.streams.dlq", description="Where bad records go.")
    group_id: str = Field("facestream-workers", description="Consumer group of the workers.")
    api_version: str | None = Field(
        None, description="Broker API version like '0.9' or '3.7'; unset = auto-detect."
    )
    session_timeout_ms: int = Field(10000, ge=1000, description="Group session timeout.")
    heartbeat_interval_ms: int = Field(3000, ge=100, description="Group heartbeat interval.")
    security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_SSL, ...")
    sasl_mechanism: str | None = Field(None, description="e.g. PLAIN or SCRAM-SHA-512.")
    sasl_username: str | None = Field(None, description="SASL user (from a Secret).")
    sasl_password: str | None = Field(None, description="SASL password (from a Secret).")
    ssl_cafile: str | None = Field(None, description="CA bundle for SSL; unset = system CAs.")
    ssl_certfile: str | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_keyfile: str | None = Field(None, description="Private key of the client certificate.")
    retry_initial_s: float = Field(
        0.5, gt=0, description="First delay before reconnecting after a Kafka failure."
    )
    retry_max_s: float = Field(10.0, gt=0, description="Cap of the Kafka reconnect backoff.")
    events_topic: str = Field(
        "", description="Also write every event to this topic (key = stream id); empty = off."
    )
    events_buffer_events: int = Field(
        10000, ge=1, description="Events held for the events topic while Kafka is down."
    )
    events_buffer_bytes: int = Field(
        16 * 1024 * 1024, ge=4096, description="Bytes of event JSON held for the events topic."
    )


class RedisSettings(BaseModel):
    """Where events and status go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (password from a Secret).")
    prefix: str = Field("facestream", description="Prefix of every key and channel.")
    events_maxlen: int = Field(100000, ge=1, description="Approximate cap of the events stream.")
    person_ttl_s: int = Field(30, ge=1, description="Person hash expires after this idle time.")
    status_ttl_s: int = Field(86400, ge=1, description="Stream status hash TTL after updates.")
    buffer_max_events: int = Field(10000, ge=1, description="Events held while Redis is down.")
    retry_initial_s: float = Field(0.2, gt=0, description="First retry delay when Redis fails.")
    retry_max_s: float = Field(5.0, gt=0, description="Cap of the retry backoff.")
    dedup_ttl_s: int = Field(
        3600, ge=1, description="How long an event id is remembered to drop repeats after failover."
    )
    thumbnails: bool = Field(
        False, description="Store each person's best face crop as a small JPEG (person TTL)."
    )


class SchedulerSettings(BaseModel):
    """Queues between the stages and what happens when they are full."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_queue_windows: int = Field(64, ge=1, description="Windows waiting for the model.")
    model_queue_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1,
        description="Bytes of face crops waiting for the model (one window always fits); "
        "when full the oldest windows are dropped.",
    )
    max_detector_load: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Streams are admitted in start order while their detection fps stay "
        "within this fraction of the measured detector capacity; the rest are shed "
        "(state degraded).",
    )
    detector_max_fps: float | None = Field(
        None,
        gt=0,
        description="Plan the detector for at most this many frames/s even when it measures "
        "faster (a GPU shared with other work, or headroom kept); unset = as measured.",
    )
    max_window_age_s: float = Field(30.0, gt=0, description="Older waiting windows are dropped.")
    batch_wait_ms: int = Field(
        20, ge=0, description="How long an idle model waits for more windows to join at once."
    )


class StaticTaskSettings(BaseModel):
    """Age and attributes: asked once per person, not every window (`worker/static_tasks.py`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    refresh_interval_s: float = Field(
        60.0,
        ge=0,
        description="Ask a person's age and attributes again after this many stream seconds; "
        "0 = every window.",
    )
    quality_margin: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Ask them again sooner when a window's best crop scores this much higher "
        "(crop quality 0..1) than the crop they were answered on.",
    )


class HttpSettings(BaseModel):
    """Health, readiness and metrics endpoints."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("0.0.0.0", description="Bind address of the HTTP server.")
    port: int = Field(8080, ge=0, le=65535, description="Port of /healthz, /readyz, /metrics.")


class DashboardSettings(BaseModel):
    """`facestream dashboard`: the read-only live web page over Redis."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(
        "127.0.0.1", description="Bind address; a non-loopback address needs a token."
    )
    port: int = Field(8090, ge=0, le=65535, description="Port of the dashboard page.")
    token: SecretStr | None = Field(
        None, description="Access token (from a Secret); required to bind beyond loopback."
    )
    poll_interval_s: float = Field(
        1.0, gt=0, description="How often the one reader polls stream and person hashes."
    )
    client_buffer_bytes: int = Field(
        1_048_576, ge=4096, description="Unsent bytes per page; a slower page is cut off."
    )
    max_clients: int = Field(200, ge=1, description="Most live pages at once; more get 503.")
    history_events: int = Field(
        300, ge=0, le=10000, description="Recent events a newly opened page starts with."
    )
    timeline_s: int = Field(300, ge=10, description="Span of the per-person emotion timeline.")


class Settings(BaseSettings):
    """Every knob of a facestream worker, with its default."""

    model_config = SettingsConfigDict(
        env_prefix="FACESTREAM_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    worker_id: str = Field(default_factory=socket.gethostname, description="Name in events.")
    log_format: Literal["json", "console"] = Field("json", description="Log rendering.")
    log_level: str = Field("info", description="Minimum log level.")
    grace_s: float = Field(25.0, gt=0, description="SIGTERM: finish within this many seconds.")
    source: SourceOptions = Field(default_factory=SourceOptions)
    detector: DetectorOptions = Field(default_factory=DetectorOptions)
    tracker: TrackerOptions = Field(default_factory=TrackerOptions)
    windows: WindowOptions = Field(default_factory=WindowOptions)
    model: ModelOptions = Field(default_factory=ModelOptions)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    static_tasks: StaticTaskSettings = Field(default_factory=StaticTaskSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)

    def __init__(self, **values: Any) -> None:
        """Read the environment; raise `SettingsError` (one line) on any unknown or bad value."""
        check_environment(os.environ)
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise SettingsError(describe_validation_error(error)) from None


def setting_variable_names() -> frozenset[str]:
    """Every `FACESTREAM_*` name `Settings` reads, nested with `__`; a sub-model's own name
    (which takes JSON) included."""
    names: set[str] = set()

    def walk(model: type[BaseModel], path: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{path}{ENV_NESTED_DELIMITER}{name}" if path else name
            names.add(f"{ENV_PREFIX}{key}".upper())
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, key)

    walk(Settings, "")
    return frozenset(names)


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse every `FACESTREAM_*` variable that is not a setting (nor in `NOT_SETTINGS`),
    naming the closest real setting. pydantic-settings silently ignores such a variable,
    so a typo would otherwise run with the default (e.g. another Redis)."""
    known = setting_variable_names()
    unknown = sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in known
        and name.upper() not in NOT_SETTINGS
    )
    if not unknown:
        return
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}
    problems = []
    for name in unknown:
        # Compared without the shared prefix, which would make every name look close.
        close = difflib.get_close_matches(
            name.upper().removeprefix(ENV_PREFIX), sorted(suffixes), n=1, cutoff=0.6
        )
        if _SERVICE_LINK.search(name.upper()):
            hint = " (a Kubernetes service link? set enableServiceLinks: false on the pod)"
        elif close:
            hint = f" (did you mean {suffixes[close[0]]}?)"
        else:
            hint = ""
        problems.append(f"{name} is not a setting{hint}")
    raise SettingsError(
        "; ".join(problems) + " -- settings are listed in the README's Settings table"
    )


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each bad variable and what is wrong, without the values."""
    def variable(loc: tuple[int | str, ...]) -> str:
        return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(part) for part in loc).upper()

    return "invalid settings: " + validation_problems(error, variable)
