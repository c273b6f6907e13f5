"""Per-track rolling clip windows that emit `ClipRequest`s and `ImageRequest`s."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WindowOptions(BaseModel):
    """How face crops become clips and images."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_s: float = Field(2.5, gt=0, description="Length of one clip window, stream seconds.")
    stride_s: float = Field(2.0, gt=0, description="Start-to-start distance of windows.")
    frames_per_clip: int = Field(8, ge=1, description="Crops per ClipRequest.")
    crop_size_px: int = Field(256, ge=16, description="Side of the square face crop.")
    crop_mode: Literal["facellava", "centered"] = Field(
        "facellava", description="Authors' top-left-anchored square, or centred with margin."
    )
    crop_margin: float = Field(0.25, ge=0, description="Margin per side for 'centered' crops.")
    min_coverage: float = Field(
        0.6, ge=0, le=1, description="Fraction of expected samples a window needs."
    )
    max_faces: int = Field(10, ge=1, description="Most tracks windowed per stream.")
    min_face_px: int = Field(24, ge=1, description="Smaller faces are not windowed.")
