"""Video sources: URL policy, PyAV open/decode, timestamp sampling, reconnects, stalls."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SourceOptions(BaseModel):
    """How streams are opened, decoded, sampled and reconnected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_fps: float = Field(5.0, gt=0, description="Frames per second kept for detection.")
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    open_timeout_s: float = Field(10.0, gt=0, description="Give up opening a source after this.")
    read_timeout_s: float = Field(10.0, gt=0, description="Socket read timeout of live sources.")
    allow_file: bool = Field(False, description="Allow local files (file: URLs and paths).")
    decode_threads: int = Field(2, ge=0, description="FFmpeg decoder threads (0 = auto).")
    reconnect_initial_s: float = Field(0.5, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Cap of the exponential backoff.")
    stall_timeout_s: float = Field(10.0, gt=0, description="No frame for this long = stalled.")
    realtime: bool = Field(False, description="Pace files like a live camera (wall = pts).")
