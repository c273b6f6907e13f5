"""`StreamSpec`: the versioned wire format of one stream assignment (Kafka value JSON),
the stream-id rule, and how validation errors are told to a user."""

from __future__ import annotations

import re
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from models.facellava.tasks import Task

SCHEMA_VERSION = 1
# A stream id is a Kafka key, a Redis key part and a metric label: 1-200 characters of
# this set, the whole text (a trailing newline is refused too).
_STREAM_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,200}")
STREAM_ID_RULE = "1-200 characters of A-Z a-z 0-9 . _ : -"


def is_stream_id(text: str) -> bool:
    """Whether `text` is a valid stream id (the whole of it, see `STREAM_ID_RULE`)."""
    return _STREAM_ID_RE.fullmatch(text) is not None


def dotted_path(loc: tuple[int | str, ...]) -> str:
    """`a.b.0`: a pydantic error location as a field path."""
    return ".".join(str(part) for part in loc) or "value"


def validation_problems(
    error: ValidationError, name: Callable[[tuple[int | str, ...]], str] = dotted_path
) -> str:
    """`field.path: message; ...` of a pydantic error (`name` spells each location), never
    echoing the input values (a misspelt secret or a URL with credentials must not be
    printed)."""
    return "; ".join(
        f"{name(tuple(item['loc']))}: {item['msg']}"
        for item in error.errors(include_url=False, include_input=False, include_context=False)
    )


class StreamSpec(BaseModel):
    """What to watch and what to ask: the value of a `facestream.streams` record.

    Unknown fields are rejected so a typo never silently does nothing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = Field(SCHEMA_VERSION, description="Wire format version; must be 1.")
    stream_id: str = Field(description=f"Stable id: {STREAM_ID_RULE}.")
    url: str = Field(min_length=1, max_length=4096, description="rtsp/rtsps/http/https/file URL.")
    tasks: list[Task] = Field(
        default_factory=lambda: [Task.EMOTION], min_length=1, description="What to ask per face."
    )
    detection_fps: float | None = Field(None, gt=0, le=60, description="Override: detections/s.")
    window_s: float | None = Field(None, gt=0, le=60, description="Override: clip window length.")
    stride_s: float | None = Field(None, gt=0, le=60, description="Override: window stride.")
    max_faces: int | None = Field(None, ge=1, le=100, description="Override: faces tracked.")
    min_face_px: int | None = Field(None, ge=1, le=4096, description="Override: min face side.")
    labels: dict[str, str] = Field(default_factory=dict, description="Free caller labels.")

    # Not on the wire: which assignments record this spec came from ("topic/partition/
    # offset", empty when it was not read from Kafka). It names the run (`worker.sessions`)
    # and is no part of equality: the same value again is the same assignment.
    _origin: str = PrivateAttr("")

    @property
    def origin(self) -> str:
        """`topic/partition/offset` of the record this spec was read from ('' if none)."""
        return self._origin

    def from_record(self, topic: str, partition: int, offset: int) -> StreamSpec:
        """This spec, marked as read from that assignments record."""
        copy = self.model_copy()
        copy._origin = f"{topic}/{partition}/{offset}"
        return copy

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamSpec):
            return NotImplemented
        return self.__dict__ == other.__dict__  # the fields only, never `origin`

    __hash__ = None  # type: ignore[assignment]  # labels (a dict) are not hashable anyway

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is not supported (this worker reads 1)")
        return value

    @field_validator("stream_id")
    @classmethod
    def _valid_stream_id(cls, value: str) -> str:
        if not is_stream_id(value):
            raise ValueError(f"a stream id is {STREAM_ID_RULE}")
        return value

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, value: list[Task]) -> list[Task]:
        return list(dict.fromkeys(value))

    @field_validator("labels")
    @classmethod
    def _small_labels(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 64 or any(len(k) > 200 or len(v) > 2000 for k, v in value.items()):
            raise ValueError("labels: at most 64 entries, keys ≤ 200 and values ≤ 2000 chars")
        return value
