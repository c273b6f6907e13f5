"""Per-track rolling clip windows that emit `ClipRequest`s and `ImageRequest`s.

One `WindowBuilder` per stream, fed every sampled frame with that frame's tracked faces.
Each track gets windows [start + k·stride_s, start + k·stride_s + window_s) of stream
time, where `start` is the first time the track was windowed. A window closes when the
stream's time reaches its end; it is emitted when its face samples cover at least
`min_coverage` of the `window_s · sample_fps` samples the sampling rate promises,
otherwise it is skipped and counted. An emitted window gives a clip of `frames_per_clip`
crops at indices floor(linspace(0, n-1, T)) over its n crops (the authors' sampling) and
the best-quality crop as an image.

When a track ends, its open windows are judged the same way against the FULL window's
expectation: a nearly complete last window is emitted, a short tail is dropped (counted).

Memory per track is bounded: only crops from the oldest open window's start onwards are
kept, and never more than `2·ceil(window_s·sample_fps) + 2` (the oldest go first).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ingest.crop_geometry import CropMode
from ingest.crops import crop_face, crop_in_frame_xyxy, crop_quality
from ingest.frames import Frame
from ingest.requests import ClipRequest, ImageRequest, WindowInfo
from ingest.tracking import TrackedFaces
from models.facellava.tasks import NUM_VIDEO_FRAMES, sample_frame_indices


class WindowOptions(BaseModel):
    """How face crops become clips and images."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_s: float = Field(2.5, gt=0, description="Length of one clip window, stream seconds.")
    stride_s: float = Field(2.0, gt=0, description="Start-to-start distance of windows.")
    frames_per_clip: int = Field(
        NUM_VIDEO_FRAMES, ge=1, description="Crops per ClipRequest."
    )
    crop_size_px: int = Field(256, ge=16, description="Side of the square face crop.")
    crop_mode: CropMode = Field(
        "blazeface",
        description="Authors' crop cut from BlazeFace's box for the face (run beside "
        "RetinaFace; estimate when it has none); 'facellava' = estimated from our box; "
        "'box_corner' = their cut of our box as is; 'centered' = centred square with margin.",
    )
    crop_margin: float = Field(0.25, ge=0, description="Margin per side for 'centered' crops.")
    min_coverage: float = Field(
        0.6, ge=0, le=1, description="Fraction of expected samples a window needs."
    )
    max_faces: int = Field(10, ge=1, description="Most tracks windowed per stream.")
    min_face_px: int = Field(24, ge=1, description="Smaller faces are not windowed.")


@dataclass(frozen=True)
class WindowRequests:
    """What one closed window asks of the model: its clip and its best image."""

    clip: ClipRequest
    image: ImageRequest


@dataclass
class WindowStats:
    """Counters of one stream's window builder (nothing is dropped silently)."""

    emitted: int = 0
    skipped_low_coverage: int = 0
    faces_too_small: int = 0
    faces_over_max: int = 0
    crops_evicted: int = 0


@dataclass(frozen=True)
class _Sample:
    pts_s: float
    wall_time_s: float
    crop_rgb: np.ndarray
    box_xyxy: tuple[float, float, float, float]
    detector_score: float
    quality: float


@dataclass
class _TrackWindows:
    window_start_s: float
    samples: deque[_Sample]


class WindowBuilder:
    """Turns one stream's tracked faces into window requests (see the module doc)."""

    def __init__(self, stream_id: str, options: WindowOptions, sample_fps: float) -> None:
        if sample_fps <= 0:
            raise ValueError(f"sample_fps must be > 0, got {sample_fps}")
        self.stream_id = stream_id
        self.options = options
        self.sample_fps = sample_fps
        self.expected_samples = options.window_s * sample_fps
        self.max_samples_per_track = 2 * math.ceil(self.expected_samples) + 2
        self.stats = WindowStats()
        self._tracks: dict[int, _TrackWindows] = {}
        self._newest_pts_s = -math.inf  # a window never ends after the newest frame seen

    @property
    def windowed_track_ids(self) -> list[int]:
        """Tracks that currently hold a window slot."""
        return list(self._tracks)

    def buffered_crops(self, track_id: int) -> int:
        """How many crops are held for a track (for tests and metrics)."""
        state = self._tracks.get(track_id)
        return 0 if state is None else len(state.samples)

    def update(self, frame: Frame, faces: TrackedFaces) -> list[WindowRequests]:
        """Add one frame's tracked faces; return the windows that closed."""
        out: list[WindowRequests] = []
        self._newest_pts_s = max(self._newest_pts_s, frame.pts_s)
        for track_id, state in self._tracks.items():
            out.extend(self._close_until(track_id, state, frame.pts_s))
        self._add_faces(frame, faces)
        out.extend(self.end_tracks(record.track_id for record in faces.ended))
        return out

    def end_tracks(self, track_ids: Iterable[int]) -> list[WindowRequests]:
        """Flush the open windows of ended tracks and free their slots."""
        out: list[WindowRequests] = []
        for track_id in track_ids:
            state = self._tracks.pop(track_id, None)
            if state is None:
                continue
            while state.samples and state.window_start_s <= state.samples[-1].pts_s:
                out.extend(self._close_window(track_id, state))
        return out

    def finish(self) -> list[WindowRequests]:
        """Stream over: flush every track."""
        return self.end_tracks(list(self._tracks))

    def _add_faces(self, frame: Frame, faces: TrackedFaces) -> None:
        opts = self.options
        dets = faces.detections
        boxes = dets.xyxy
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        # Tracks already windowed first, then new ones largest first.
        order = sorted(
            range(len(dets)),
            key=lambda i: (int(faces.track_ids[i]) not in self._tracks, -float(areas[i])),
        )
        for i in order:
            track_id = int(faces.track_ids[i])
            if sides[i] < opts.min_face_px:
                self.stats.faces_too_small += 1
                continue
            state = self._tracks.get(track_id)
            if state is None:
                if len(self._tracks) >= opts.max_faces:
                    self.stats.faces_over_max += 1
                    continue
                state = _TrackWindows(window_start_s=frame.pts_s, samples=deque())
                self._tracks[track_id] = state
            crop_box = None if dets.crop_boxes is None else dets.crop_boxes[i]
            geometry = (boxes[i], opts.crop_size_px, opts.crop_mode, opts.crop_margin, crop_box)
            crop = crop_face(frame.image_bgr, *geometry)
            in_frame = crop_in_frame_xyxy(frame.image_bgr.shape, *geometry)
            quality = crop_quality(
                crop, boxes[i], float(dets.scores[i]), dets.landmarks[i], in_frame
            )
            x1, y1, x2, y2 = (float(v) for v in boxes[i])
            state.samples.append(
                _Sample(
                    pts_s=frame.pts_s,
                    wall_time_s=frame.wall_time_s,
                    crop_rgb=crop,
                    box_xyxy=(x1, y1, x2, y2),
                    detector_score=float(dets.scores[i]),
                    quality=quality.score,
                )
            )
            if len(state.samples) > self.max_samples_per_track:
                state.samples.popleft()
                self.stats.crops_evicted += 1

    def _close_until(
        self, track_id: int, state: _TrackWindows, pts_s: float
    ) -> list[WindowRequests]:
        """Close every window of a track that ends at or before stream time `pts_s`."""
        out: list[WindowRequests] = []
        while state.window_start_s + self.options.window_s <= pts_s:
            if not state.samples:
                # Nothing held: jump to the window containing now, nothing to judge.
                steps = math.floor((pts_s - state.window_start_s) / self.options.stride_s)
                state.window_start_s += max(steps, 1) * self.options.stride_s
                continue
            out.extend(self._close_window(track_id, state))
        return out

    def _close_window(self, track_id: int, state: _TrackWindows) -> list[WindowRequests]:
        """Judge the oldest open window, emit it or count it, and move on one stride."""
        opts = self.options
        start_s = state.window_start_s
        end_s = start_s + opts.window_s
        inside = [s for s in state.samples if start_s <= s.pts_s < end_s]
        # Flushed at a track's or the stream's end: the window ends with the newest frame
        # (the source's end), not window_s after its start.
        end_s = min(end_s, max(self._newest_pts_s, start_s))
        state.window_start_s = start_s + opts.stride_s
        while state.samples and state.samples[0].pts_s < state.window_start_s:
            state.samples.popleft()
        if not inside:
            return []
        if len(inside) < opts.min_coverage * self.expected_samples:
            self.stats.skipped_low_coverage += 1
            return []
        self.stats.emitted += 1
        return [self._requests(track_id, start_s, end_s, inside)]

    def _requests(
        self, track_id: int, start_s: float, end_s: float, samples: list[_Sample]
    ) -> WindowRequests:
        best = max(samples, key=lambda s: s.quality)
        info = WindowInfo(
            stream_id=self.stream_id,
            track_id=track_id,
            window_start_s=start_s,
            window_end_s=end_s,
            last_wall_time_s=max(s.wall_time_s for s in samples),
            box_xyxy=best.box_xyxy,
            detector_score=best.detector_score,
        )
        chosen = sample_frame_indices(len(samples), self.options.frames_per_clip)
        picked = [samples[i] for i in chosen]
        clip = ClipRequest(
            window=info,
            crops_rgb=np.stack([s.crop_rgb for s in picked]),
            frame_pts_s=tuple(s.pts_s for s in picked),
        )
        image = ImageRequest(
            window=info, crop_rgb=best.crop_rgb, frame_pts_s=best.pts_s, quality=best.quality
        )
        return WindowRequests(clip=clip, image=image)
