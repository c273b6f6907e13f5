"""`DetectorOptions`: RetinaFace knobs, kept free of torch so settings load fast."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DetectorOptions(BaseModel):
    """Which RetinaFace weights to run, where, and with which thresholds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: str = Field(
        "py-feat/retinaface:mobilenet0.25_Final.pth",
        description="Local .pth path, or hub REPO:FILE fetched once into the cache.",
    )
    weights_sha256: str | None = Field(None, description="Expected sha256 of the weights file.")
    score_threshold: float = Field(0.5, ge=0, le=1, description="Minimum face score kept.")
    nms_threshold: float = Field(0.4, gt=0, le=1, description="NMS IoU threshold.")
    max_side_px: int | None = Field(
        640, ge=32, description="Scale frames down so the longer side ≤ this; null = native size."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to run.")
    max_batch: int = Field(16, ge=1, description="Most frames detected in one batch.")
    cache_dir: str | None = Field(
        None, description="Hub download cache for the weights; unset = the hub's default."
    )
