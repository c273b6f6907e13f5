"""Files a person can look at: window clips (mp4 + best png), annotated overview video and
contact sheet. Used by `facestream analyze --save-clips DIR`.

On the overview every box the detector found is drawn: confirmed tracks in their colour
with `#id` and, beside the box, the answer of the newest window that had started by that
frame (emotion, age); detections that are not (yet) a confirmed track as thin grey boxes.
Frames carry their stream time, and the contact sheet a legend. To draw a window's answer
on the frames it covers, the overview is drawn `window_s` behind the input (bounded in
bytes; beyond that frames are drawn earlier, with the answers known by then).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from ingest.frames import Frame
from ingest.tracking import TrackedFaces, box_iou
from ingest.windows import WindowRequests
from models.detections import Detections
from worker.events import FaceEvent

CONTACT_SHEET_FRAMES = 24
CONTACT_SHEET_COLUMNS = 4
CONTACT_THUMB_WIDTH_PX = 320
# Frames held back so a window's answer can be drawn on the frames it covers.
OVERVIEW_LAG_MAX_BYTES = 256 * 1024 * 1024
UNCONFIRMED_BGR = (200, 200, 200)
LEGEND = (
    "coloured box #id: tracked face, newest answer (emotion, age)   "
    "thin grey box: detection, not (yet) a confirmed track   t: stream time"
)


class AnnotationError(Exception):
    """A clip or overview file could not be written (disk full, bad folder, codec)."""


def track_colour_bgr(track_id: int) -> tuple[int, int, int]:
    """A stable, well-separated colour per track id."""
    hue = (track_id * 47) % 180  # golden-ish steps around the hue circle
    hsv = np.uint8([[[hue, 220, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


@dataclass(frozen=True)
class TrackLabel:
    """What is known about one track at one moment: its newest emotion and age, as text
    (`?` when the model answered but the answer could not be parsed)."""

    emotion: str | None = None
    age: str | None = None

    def text(self) -> str:
        """`happy, 34 y` (only the parts that are known)."""
        parts = []
        if self.emotion:
            parts.append(self.emotion if self.emotion != "?" else "emotion ?")
        if self.age:
            parts.append(self.age if self.age != "?" else "age ?")
        return ", ".join(parts)


class TrackAnswers:
    """Answers per track over stream time: the label a track had at a given `pts_s` is
    the answer of its newest window that started by then. Pruned as frames are drawn."""

    def __init__(self) -> None:
        self._answers: dict[tuple[int, str], list[tuple[float, str]]] = {}

    def add(self, event: FaceEvent) -> None:
        """Keep an event's emotion label or age (`?` if unparsed); other tasks are not drawn."""
        task = str(event.task)
        if task not in ("emotion", "age"):
            return
        result = event.result
        if result is None:
            text = "?"
        elif result.kind == "emotion":
            text = result.label
        elif result.kind == "age":
            text = f"{result.years:.0f} y"
        else:
            return
        entries = self._answers.setdefault((event.track_id, task), [])
        entries.append((event.window_start_s, text))
        entries.sort(key=lambda entry: entry[0])

    def label_at(self, track_id: int, pts_s: float) -> TrackLabel:
        """The track's label at `pts_s`; drops answers that later frames can no longer use."""
        found: dict[str, str] = {}
        for task in ("emotion", "age"):
            entries = self._answers.get((track_id, task))
            if not entries:
                continue
            while len(entries) > 1 and entries[1][0] <= pts_s:
                entries.pop(0)  # frames come in order: an older answer is never needed again
            if entries[0][0] <= pts_s:
                found[task] = entries[0][1]
        return TrackLabel(emotion=found.get("emotion"), age=found.get("age"))

    def forget(self, track_id: int) -> None:
        """Drop an ended track's answers."""
        for task in ("emotion", "age"):
            self._answers.pop((track_id, task), None)


def _put_label(
    out: np.ndarray,
    text: str,
    origin: tuple[int, int],
    scale: float,
    thickness: int,
    background: tuple[int, int, int],
    foreground: tuple[int, int, int] = (0, 0, 0),
) -> None:
    """Text on a filled box whose top-left corner is `origin` (clamped inside the image)."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x = min(max(origin[0], 0), max(out.shape[1] - tw - 6, 0))
    y = min(max(origin[1], 0), max(out.shape[0] - th - base - 6, 0))
    cv2.rectangle(out, (x, y), (x + tw + 6, y + th + base + 6), background, -1)
    cv2.putText(
        out,
        text,
        (x + 3, y + th + 3),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        foreground,
        thickness,
        cv2.LINE_AA,
    )


def draw_faces(
    image_bgr: np.ndarray,
    faces: TrackedFaces,
    detections: Detections | None = None,
    labels: dict[int, TrackLabel] | None = None,
) -> np.ndarray:
    """A copy of the frame with each tracked face's box, landmarks and `#id`, its label
    (emotion, age) beside the box, and every other detection as a thin grey box."""
    out = image_bgr.copy()
    scale = max(out.shape[0] / 360.0, 0.5)
    thickness = max(1, round(2 * scale))
    font_scale = 0.6 * scale
    if detections is not None and len(detections) and len(faces):
        tracked = box_iou(detections.xyxy, faces.detections.xyxy).max(axis=1) >= 0.999
    else:
        tracked = np.zeros((len(detections) if detections is not None else 0,), bool)
    if detections is not None:
        for box, is_tracked in zip(detections.xyxy, tracked, strict=True):
            if not is_tracked:
                x1, y1, x2, y2 = (round(float(v)) for v in box)
                cv2.rectangle(out, (x1, y1), (x2, y2), UNCONFIRMED_BGR, 1, cv2.LINE_AA)
    for box, lms, track_id in zip(
        faces.detections.xyxy, faces.detections.landmarks, faces.track_ids, strict=True
    ):
        colour = track_colour_bgr(int(track_id))
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        for x, y in lms:
            cv2.circle(out, (round(float(x)), round(float(y))), thickness, colour, -1)
        tag = f"#{int(track_id)}"
        (_, th), _ = cv2.getTextSize(tag, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        _put_label(out, tag, (x1, y1 - th - 6), font_scale, thickness, colour)
        label = (labels or {}).get(int(track_id))
        text = label.text() if label is not None else ""
        if text:
            (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
            # Beside the box: right of it where it fits, else left of it.
            left = x2 + 4 if x2 + 4 + tw + 6 <= out.shape[1] else x1 - tw - 10
            _put_label(out, text, (left, y1), font_scale, thickness, (30, 30, 30), colour)
    return out


def draw_time(image_bgr: np.ndarray, pts_s: float) -> None:
    """Stream time in the top-left corner, in place."""
    scale = max(image_bgr.shape[0] / 360.0, 0.5)
    _put_label(
        image_bgr,
        f"t={pts_s:.2f}s",
        (4, 4),
        0.5 * scale,
        max(1, round(scale)),
        (0, 0, 0),
        (255, 255, 255),
    )


def legend_band(width_px: int) -> np.ndarray:
    """A dark band with the legend, to put under a picture of that width."""
    scale = min(0.5, width_px / 2400)
    (_, th), base = cv2.getTextSize(LEGEND, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    band = np.full((th + base + 12, width_px, 3), 24, np.uint8)
    cv2.rectangle(band, (6, 5), (18, 5 + th), track_colour_bgr(1), 2)
    cv2.rectangle(band, (24, 5), (36, 5 + th), UNCONFIRMED_BGR, 1)
    cv2.putText(
        band,
        LEGEND,
        (44, 5 + th),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (235, 235, 235),
        1,
        cv2.LINE_AA,
    )
    return band


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
    """The whole stream with boxes, ids and answers: `overview.mp4` (every sampled frame,
    time-stamped, with the legend) and `contact_sheet.png` (up to 24 frames spread over the
    stream, time-stamped, legend below)."""

    def __init__(self, out_dir: Path, sample_fps: float, lag_s: float = 0.0) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.video_path = out_dir / "overview.mp4"
        self.sheet_path = out_dir / "contact_sheet.png"
        self.answers = TrackAnswers()
        self._sample_fps = sample_fps
        self._lag_s = lag_s
        self._held: deque[tuple[Frame, TrackedFaces, Detections | None]] = deque()
        self._held_bytes = 0
        self._video: Mp4Writer | None = None
        self._thumbs: list[np.ndarray] = []
        self._keep_every = 1
        self._seen = 0

    def add(self, frame: Frame, faces: TrackedFaces, detections: Detections | None = None) -> None:
        """Queue one frame with its tracked faces and every detection; it is drawn once
        `lag_s` of newer stream time arrived (answers known by then), or earlier when the
        held frames exceed `OVERVIEW_LAG_MAX_BYTES`."""
        self._held.append((frame, faces, detections))
        self._held_bytes += frame.image_bgr.nbytes
        while self._held and (
            frame.pts_s - self._held[0][0].pts_s > self._lag_s
            or self._held_bytes > OVERVIEW_LAG_MAX_BYTES
        ):
            self._draw_oldest()

    def _draw_oldest(self) -> None:
        frame, faces, detections = self._held.popleft()
        self._held_bytes -= frame.image_bgr.nbytes
        labels = {
            int(track_id): self.answers.label_at(int(track_id), frame.pts_s)
            for track_id in faces.track_ids
        }
        drawn = draw_faces(frame.image_bgr, faces, detections, labels)
        for record in faces.ended:
            self.answers.forget(record.track_id)
        if self._seen % self._keep_every == 0:
            self._thumbs.append(self._thumbnail(drawn, frame.pts_s))
            if len(self._thumbs) >= 2 * CONTACT_SHEET_FRAMES:
                # Bounded memory on long streams: keep every other and sample half as often.
                self._thumbs = self._thumbs[::2]
                self._keep_every *= 2
        self._seen += 1
        draw_time(drawn, frame.pts_s)
        band = legend_band(drawn.shape[1])
        drawn[-band.shape[0] :] = band
        if self._video is None:
            self._video = Mp4Writer(
                self.video_path, self._sample_fps, frame.width_px, frame.height_px
            )
        self._video.write(cv2.cvtColor(drawn, cv2.COLOR_BGR2RGB))

    def close(self) -> list[Path]:
        """Draw the held frames, finish the video and write the contact sheet; returns the
        files written."""
        while self._held:
            self._draw_oldest()
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
            sheet = np.vstack([sheet, legend_band(sheet.shape[1])])
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
