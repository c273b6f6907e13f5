"""`Frame`: one decoded, sampled video frame with its stream time and wall time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """A decoded frame.

    `index` is the 0-based decode-order index within the source (counting every decoded
    frame, sampled or not); `pts_s` the stream time in seconds (monotonic per source
    connection); `wall_time_s` the Unix time it was decoded; `image_bgr` an (H, W, 3)
    uint8 array in OpenCV's BGR order.
    """

    index: int
    pts_s: float
    wall_time_s: float
    image_bgr: np.ndarray

    @property
    def height_px(self) -> int:
        return int(self.image_bgr.shape[0])

    @property
    def width_px(self) -> int:
        return int(self.image_bgr.shape[1])
