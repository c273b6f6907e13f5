"""Per-stream face tracking: stable track ids, ByteTrack-style two-stage association."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TrackerOptions(BaseModel):
    """How detections are associated into tracks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    high_score: float = Field(0.6, ge=0, le=1, description="First-stage detection score.")
    low_score: float = Field(0.1, ge=0, le=1, description="Second-stage floor (ByteTrack).")
    match_iou: float = Field(0.3, gt=0, le=1, description="Minimum IoU to match a track.")
    lost_buffer_s: float = Field(1.5, gt=0, description="Keep an unseen track this long.")
    min_hits: int = Field(2, ge=1, description="Detections before a track is confirmed.")
