"""Face thumbnails: a window's best face crop as a small JPEG, for dashboards.

Opt-in (`FACESTREAM_REDIS__THUMBNAILS`): nothing of a face is stored by default. A
thumbnail is at most `THUMBNAIL_MAX_PX` on its longer side (typically 2-4 KB), so it
adds little to the publisher's buffer and to Redis.
"""

from __future__ import annotations

import cv2
import numpy as np

THUMBNAIL_MAX_PX = 96
JPEG_QUALITY = 80
JPEG_MAGIC = b"\xff\xd8\xff"  # every JPEG starts so; readers check it before serving
MAX_THUMBNAIL_BYTES = 64 * 1024  # far above a 96 px JPEG: anything larger is not ours


def encode_thumbnail(crop_rgb: np.ndarray, max_px: int = THUMBNAIL_MAX_PX) -> bytes:
    """`crop_rgb` (H, W, 3 uint8 RGB) scaled down to `max_px` on its longer side, as JPEG."""
    height, width = crop_rgb.shape[:2]
    scale = min(1.0, max_px / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(crop_rgb, size, interpolation=cv2.INTER_AREA) if scale < 1 else crop_rgb
    bgr = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding of a face crop failed")
    return encoded.tobytes()


def is_thumbnail(data: bytes) -> bool:
    """Whether `data` looks like a thumbnail we wrote (a JPEG of a sane size)."""
    return 0 < len(data) <= MAX_THUMBNAIL_BYTES and data.startswith(JPEG_MAGIC)
