"""Small synthetic videos written with PyAV's own encoder (libx264), for tests and benches."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def write_gradient_clip(
    path: Path, width: int, height: int, frames: int, fps: int = 5, container: str = "mp4"
) -> Path:
    """An H.264 clip of `frames` moving-gradient frames of `width`×`height`, fast to encode.

    Rows are built once and shifted per frame, so even a 16000×8000 clip costs little
    memory and time to make (libx264 `ultrafast`, no B-frames).
    """
    import av

    base = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)
    with av.open(str(path), mode="w", format=container) as output:
        stream = output.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for index in range(frames):
            row = np.roll(base, index * max(1, width // 50))
            luma = np.broadcast_to(row, (height, width))
            planes = np.empty((height * 3 // 2, width), dtype=np.uint8)
            planes[:height] = luma
            planes[height:] = 128
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = index
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    return path
