"""`FaceEvent`: the versioned wire format of one result, as written to Redis."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.facellava.answers import Task, TaskResult

SCHEMA_VERSION = 1
SECONDS_DECIMALS = 3  # stream and wall times: milliseconds, as the window records
PIXEL_DECIMALS = 1
SCORE_DECIMALS = 4


def event_id_for(stream_id: str, track_id: int, window_start_s: float, task: str) -> str:
    """Deterministic id: the same window and task always gives the same id (idempotency)."""
    key = f"{stream_id}\x1f{track_id}\x1f{window_start_s:.3f}\x1f{task}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class FaceEvent(BaseModel):
    """One answer about one person in one window of one stream."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(description="sha256(stream, track, window start, task), 32 hex chars.")
    stream_id: str
    track_id: int
    task: Task
    result: TaskResult | None = Field(
        description="Parsed answer; null when the answer could not be parsed."
    )
    answer_text: str = Field(description="The model's raw answer.")
    window_start_s: float = Field(description="Stream time of the window start, seconds.")
    window_end_s: float = Field(description="Stream time of the window end, seconds.")
    wall_time_s: float = Field(description="Unix time the event was made.")
    frame_wall_time_s: float = Field(description="Unix time the window's newest frame arrived.")
    box_xyxy: tuple[float, float, float, float] = Field(description="Face box, frame pixels.")
    detector_score: float
    model_id: str
    worker_id: str

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
