"""Files a person can look at: window clips (mp4 + best png), annotated overview video and
contact sheet with boxes and track ids. Used by `facestream analyze --save-clips DIR`.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from ingest.frames import Frame
from ingest.tracking import TrackedFaces
from ingest.windows import WindowRequests

CONTACT_SHEET_FRAMES = 24
CONTACT_SHEET_COLUMNS = 4
CONTACT_THUMB_WIDTH_PX = 320


class AnnotationError(Exception):
    """A clip or overview file could not be written (disk full, bad folder, codec)."""


def track_colour_bgr(track_id: int) -> tuple[int, int, int]:
    """A stable, well-separated colour per track id."""
    hue = (track_id * 47) % 180  # golden-ish steps around the hue circle
    hsv = np.uint8([[[hue, 220, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_faces(image_bgr: np.ndarray, faces: TrackedFaces) -> np.ndarray:
    """A copy of the frame with each tracked face's box, landmarks and `#id` drawn."""
    out = image_bgr.copy()
    scale = max(out.shape[0] / 360.0, 0.5)
    thickness = max(1, round(2 * scale))
    for box, lms, track_id in zip(
        faces.detections.xyxy, faces.detections.landmarks, faces.track_ids, strict=True
    ):
        colour = track_colour_bgr(int(track_id))
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        for x, y in lms:
            cv2.circle(out, (round(float(x)), round(float(y))), thickness, colour, -1)
        label = f"#{int(track_id)}"
        font_scale = 0.6 * scale
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        top = max(y1 - th - 6, 0)
        cv2.rectangle(out, (x1, top), (x1 + tw + 6, top + th + 6), colour, -1)
        cv2.putText(
            out,
            label,
            (x1 + 3, top + th + 3),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            thickness,
            cv2.LINE_AA,
        )
    return out


class Mp4Writer:
    """Writes RGB frames to an H.264 mp4 (libx264, mpeg4 where libx264 is missing)."""

    def __init__(self, path: Path, rate_fps: float, width_px: int, height_px: int) -> None:
        self.path = path
        # yuv420p needs even sides.
        self.width_px, self.height_px = width_px - width_px % 2, height_px - height_px % 2
        try:
            self._container = av.open(str(path), mode="w")
            rate = Fraction(rate_fps).limit_denominator(1000)
            try:
                self._stream = self._container.add_stream("libx264", rate=rate)
                self._stream.options = {"crf": "23", "preset": "veryfast"}
            except (av.FFmpegError, ValueError):
                self._stream = self._container.add_stream("mpeg4", rate=rate)
            self._stream.width = self.width_px
            self._stream.height = self.height_px
            self._stream.pix_fmt = "yuv420p"
        except (OSError, av.FFmpegError) as exc:
            raise AnnotationError(f"cannot write {path}: {exc}") from exc

    def write(self, image_rgb: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame (cut to the writer's even size)."""
        image = np.ascontiguousarray(image_rgb[: self.height_px, : self.width_px])
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and close the file."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


def window_basename(requests: WindowRequests) -> str:
    """`<stream>_track<id>_<start ms>ms`: sortable, unique per window."""
    info = requests.clip.window
    stream = "".join(c if c.isalnum() or c in "-_." else "_" for c in info.stream_id)
    return f"{stream}_track{info.track_id:04d}_{round(info.window_start_s * 1000):08d}ms"


def save_window(requests: WindowRequests, out_dir: Path) -> tuple[Path, Path]:
    """Write a window's clip (mp4, its 8 crops over the window's span) and best image (png)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = window_basename(requests)
    crops = requests.clip.crops_rgb
    span_s = max(requests.clip.window.window_end_s - requests.clip.window.window_start_s, 1e-3)
    clip_path = out_dir / f"{base}.mp4"
    writer = Mp4Writer(clip_path, len(crops) / span_s, crops.shape[2], crops.shape[1])
    try:
        for crop in crops:
            writer.write(crop)
    finally:
        writer.close()
    image_path = out_dir / f"{base}.png"
    if not cv2.imwrite(str(image_path), cv2.cvtColor(requests.image.crop_rgb, cv2.COLOR_RGB2BGR)):
        raise AnnotationError(f"cannot write {image_path}")
    return clip_path, image_path


class OverviewWriter:
    """The whole stream with boxes and ids: `overview.mp4` (every sampled frame) and
    `contact_sheet.png` (up to 24 frames spread over the stream, time-stamped)."""

    def __init__(self, out_dir: Path, sample_fps: float) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.video_path = out_dir / "overview.mp4"
        self.sheet_path = out_dir / "contact_sheet.png"
        self._sample_fps = sample_fps
        self._video: Mp4Writer | None = None
        self._thumbs: list[np.ndarray] = []
        self._keep_every = 1
        self._seen = 0

    def add(self, frame: Frame, faces: TrackedFaces) -> None:
        """Draw one frame's faces and append it."""
        drawn = draw_faces(frame.image_bgr, faces)
        if self._video is None:
            self._video = Mp4Writer(
                self.video_path, self._sample_fps, frame.width_px, frame.height_px
            )
        self._video.write(cv2.cvtColor(drawn, cv2.COLOR_BGR2RGB))
        if self._seen % self._keep_every == 0:
            self._thumbs.append(self._thumbnail(drawn, frame.pts_s))
            if len(self._thumbs) >= 2 * CONTACT_SHEET_FRAMES:
                # Bounded memory on long streams: keep every other and sample half as often.
                self._thumbs = self._thumbs[::2]
                self._keep_every *= 2
        self._seen += 1

    def close(self) -> list[Path]:
        """Finish the video and write the contact sheet; returns the files written."""
        written: list[Path] = []
        if self._video is not None:
            self._video.close()
            written.append(self.video_path)
        if self._thumbs:
            picks = np.linspace(
                0, len(self._thumbs) - 1, min(CONTACT_SHEET_FRAMES, len(self._thumbs))
            )
            thumbs = [self._thumbs[round(i)] for i in picks]
            cols = min(CONTACT_SHEET_COLUMNS, len(thumbs))
            rows = -(-len(thumbs) // cols)
            h, w = thumbs[0].shape[:2]
            sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
            for i, thumb in enumerate(thumbs):
                r, c = divmod(i, cols)
                if thumb.shape[:2] != (h, w):  # the stream changed resolution
                    thumb = cv2.resize(thumb, (w, h), interpolation=cv2.INTER_AREA)
                sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = thumb
            if not cv2.imwrite(str(self.sheet_path), sheet):
                raise AnnotationError(f"cannot write {self.sheet_path}")
            written.append(self.sheet_path)
        return written

    @staticmethod
    def _thumbnail(drawn_bgr: np.ndarray, pts_s: float) -> np.ndarray:
        h, w = drawn_bgr.shape[:2]
        height = max(round(h * CONTACT_THUMB_WIDTH_PX / w), 1)
        thumb = cv2.resize(
            drawn_bgr, (CONTACT_THUMB_WIDTH_PX, height), interpolation=cv2.INTER_AREA
        )
        cv2.putText(
            thumb,
            f"{pts_s:.2f}s",
            (6, 18),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        return thumb
