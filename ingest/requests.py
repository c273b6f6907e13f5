"""What a per-track window asks of the model: a clip (8 crops) and one best image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowInfo:
    """Where a window sits: stream, person, stream-time span, and the face seen in it.

    `box_xyxy` and `detector_score` are those of the window's best-quality crop, in
    original-frame pixels; `last_wall_time_s` is the wall time of the newest frame of the
    window (the start of the frame-to-event latency).
    """

    stream_id: str
    track_id: int
    window_start_s: float
    window_end_s: float
    last_wall_time_s: float
    box_xyxy: tuple[float, float, float, float]
    detector_score: float


@dataclass(frozen=True)
class ClipRequest:
    """A window's video clip: `crops_rgb` is (T, S, S, 3) uint8 RGB, T = 8, S = crop size."""

    window: WindowInfo
    crops_rgb: np.ndarray
    frame_pts_s: tuple[float, ...]


@dataclass(frozen=True)
class ImageRequest:
    """A window's best single face crop: `crop_rgb` is (S, S, 3) uint8 RGB."""

    window: WindowInfo
    crop_rgb: np.ndarray
    frame_pts_s: float
    quality: float
