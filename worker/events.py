"""`FaceEvent`: the versioned wire format of one result, as written to Redis (and Kafka).

Identity: `event_id = sha256(stream, session, track, window start, task)`. The session
names one run of a stream (`worker.sessions`): the same for a replay that is exact (a
file or VOD re-run after a failover), new for every run of a live source. So the ids
of a replay repeat and are deduplicated, and a new live session can never hit an id
(or a person hash) of an earlier one.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from models.facellava.answers import Task, TaskResult

SCHEMA_VERSION = 1
SECONDS_DECIMALS = 3  # stream and wall times: milliseconds, as the window records
PIXEL_DECIMALS = 1
SCORE_DECIMALS = 4

# Why the model's answer ended: its end-of-sequence token, or the token cap
# (`FACESTREAM_MODEL__MAX_NEW_TOKENS`). The same values as the engine's `StopReason`
# (not imported: readers of events must not load torch).
StopReason = Literal["eos", "length"]


def event_id_for(
    stream_id: str, track_id: int, window_start_s: float, task: str, *, session: str = ""
) -> str:
    """Deterministic id: the same session, window and task always give the same id."""
    key = f"{stream_id}\x1f{session}\x1f{track_id}\x1f{window_start_s:.3f}\x1f{task}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class FaceEvent(BaseModel):
    """One answer about one person in one window of one stream.

    Fields added after the first release (`session`, `labels`, `stop_reason`) have
    defaults, so events written before them still parse (schema_version stays 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(
        description="sha256(stream, session, track, window start, task), 32 hex chars."
    )
    stream_id: str
    session: str = Field(
        "", description="The run of the stream this event belongs to (see README 'Sessions')."
    )
    track_id: int = Field(description="Person within the session (restarts with a session).")
    task: Task
    result: TaskResult | None = Field(
        description="Parsed answer; null when the answer could not be parsed."
    )
    answer_text: str = Field(description="The model's raw answer.")
    stop_reason: StopReason | None = Field(
        None, description="eos = the model ended its answer; length = cut at the token cap."
    )
    window_start_s: float = Field(description="Stream time of the window start, seconds.")
    window_end_s: float = Field(description="Stream time of the window end, seconds.")
    wall_time_s: float = Field(description="Unix time the event was made.")
    frame_wall_time_s: float = Field(description="Unix time the window's newest frame arrived.")
    box_xyxy: tuple[float, float, float, float] = Field(description="Face box, frame pixels.")
    detector_score: float
    model_id: str
    worker_id: str
    labels: dict[str, str] = Field(
        default_factory=dict, description="The stream's `labels` from its StreamSpec."
    )

    # Not on the wire: the person's face as a small JPEG, set only when thumbnails are on.
    _thumbnail_jpeg: bytes | None = PrivateAttr(None)

    @classmethod
    def identified(cls, **fields: Any) -> FaceEvent:
        """An event whose `event_id` is made from its own stream, session, track, window
        start and task (`event_id_for`): how every producer makes one."""
        event_id = event_id_for(
            fields["stream_id"],
            fields["track_id"],
            fields["window_start_s"],
            fields["task"],
            session=fields.get("session", ""),
        )
        return cls(event_id=event_id, **fields)

    @property
    def thumbnail_jpeg(self) -> bytes | None:
        """The window's best face crop as a small JPEG, if one was attached."""
        return self._thumbnail_jpeg

    def with_thumbnail(self, jpeg: bytes | None) -> FaceEvent:
        """This event with `jpeg` attached for the publisher (never serialized)."""
        if jpeg is None:
            return self
        copy = self.model_copy()
        copy._thumbnail_jpeg = jpeg
        return copy

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FaceEvent):
            return NotImplemented
        return self.__dict__ == other.__dict__  # the wire fields only, never the thumbnail

    __hash__ = None  # type: ignore[assignment]  # labels (a dict) are not hashable anyway

    # Rounded when made, so an event equals what is read back from the wire.
    @field_validator("window_start_s", "window_end_s", "wall_time_s", "frame_wall_time_s")
    @classmethod
    def _round_seconds(cls, value: float) -> float:
        return round(value, SECONDS_DECIMALS)

    @field_validator("box_xyxy")
    @classmethod
    def _round_box(
        cls, value: tuple[float, float, float, float]
    ) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = (round(v, PIXEL_DECIMALS) for v in value)
        return (x1, y1, x2, y2)

    @field_validator("detector_score")
    @classmethod
    def _round_score(cls, value: float) -> float:
        return round(value, SCORE_DECIMALS)
