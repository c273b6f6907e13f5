"""Where a face's Face-LLaVA crop is cut: the region of the frame, from our detector's box.

`blazeface` mode (the default) cuts from the box of the authors' own detector: BlazeFace
short-range runs beside RetinaFace (`ingest/authors_boxes.py`) and each face's matched
BlazeFace box (`Detections.crop_boxes`) is turned into MediaPipe's pixel box and cut the
authors' way; a face BlazeFace did not find falls back to the `facellava` estimate below.

The authors' crop tool (see `face-llava.md`, Preprocessing) takes MediaPipe BlazeFace's
pixel box (x, y, w, h) and cuts
`[int(max(0, x)), int(max(0, y))]` to `[int(min(x + a, W - 1)), int(min(y + a, H - 1))]`
with `a = (w + h) / 2`. BlazeFace boxes are square and sit lower than RetinaFace's, so
`facellava` mode first estimates BlazeFace's box from the RetinaFace box:

    m = (w + h) / 2 of the RetinaFace box
    centre = (box centre x, box centre y + BLAZEFACE_CENTRE_DY · m)
    side = BLAZEFACE_SIDE_SCALE · m

then turns that square into a pixel box the way MediaPipe does (`mediapipe_pixel_box`:
each of x, y, w, h truncated to whole pixels and held inside [0, W] or [0, H] on its
own, so a box that starts left of the frame starts at 0 with its full width) and applies
the authors' cut.
Two numbers, in face-scale units; no horizontal offset, so a mirrored face gets the
mirrored region. They were fitted by `scripts/crop_geometry_fit.py` on the authors'
detector output for the three test clips (it prints the fit, leave-one-clip-out and
mirrored/rescaled checks).

`box_corner` mode is the previous geometry: the authors' cut applied to the RetinaFace
box as it is. `centered` mode is a square of side max(w, h)·(1 + 2·margin) centred on
the box, for people who look at crops; it is the only mode that may leave the frame
(the caller pads it black).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

CropMode = Literal["blazeface", "facellava", "box_corner", "centered"]
CROP_MODES: tuple[CropMode, ...] = ("blazeface", "facellava", "box_corner", "centered")

BLAZEFACE_CENTRE_DY = 0.03
"""BlazeFace box centre below the RetinaFace box centre, in units of (w + h) / 2."""
BLAZEFACE_SIDE_SCALE = 1.04
"""BlazeFace box side over the RetinaFace box's (w + h) / 2."""


def blazeface_box_xyxy(
    box_xyxy: np.ndarray | tuple[float, ...],
    centre_dy: float = BLAZEFACE_CENTRE_DY,
    side_scale: float = BLAZEFACE_SIDE_SCALE,
) -> tuple[float, float, float, float]:
    """The square box BlazeFace would give for this RetinaFace box (unclipped, float)."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    mean_side = (max(x2 - x1, 1.0) + max(y2 - y1, 1.0)) / 2
    cx = (x1 + x2) / 2
    cy = (y1 + y2) / 2 + centre_dy * mean_side
    half = side_scale * mean_side / 2
    return cx - half, cy - half, cx + half, cy + half


def authors_cut_xyxy(
    box_xyxy: tuple[float, float, float, float], frame_wh: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The authors' cut of a box: (w + h) / 2 square from its top-left, clamped to the frame.

    Exactly their integer arithmetic, so x1/y1 stop at W - 1/H - 1. Empty (x0 >= x1 or
    y0 >= y1) when the box misses the frame.
    """
    x, y, x2, y2 = box_xyxy
    frame_w, frame_h = frame_wh
    side = ((x2 - x) + (y2 - y)) / 2
    return (
        int(max(0.0, x)),
        int(max(0.0, y)),
        int(min(x + side, frame_w - 1)),
        int(min(y + side, frame_h - 1)),
    )


def mediapipe_pixel_box(
    box_xyxy: tuple[float, float, float, float], frame_wh: tuple[int, int]
) -> tuple[float, float, float, float]:
    """A float box as MediaPipe's face detector reports it in pixels, as xyxy.

    MediaPipe (DetectionTransformationCalculator) converts each of origin x, origin y,
    width and height separately: truncated to an int, then held inside [0, W] (x, w) or
    [0, H] (y, h). The width is not shortened when the origin is moved to 0, and the box
    may end past the right or bottom edge (e.g. [495, 44, 157, 157] on a 640-wide frame).
    """
    x1, y1, x2, y2 = box_xyxy
    frame_w, frame_h = frame_wh

    def bounded(value: float, upper: int) -> int:
        return max(min(int(value), upper), 0)

    x, y = bounded(x1, frame_w), bounded(y1, frame_h)
    w, h = bounded(x2 - x1, frame_w), bounded(y2 - y1, frame_h)
    return float(x), float(y), float(x + w), float(y + h)


def has_box(crop_box: np.ndarray | tuple[float, ...] | None) -> bool:
    """Whether a `Detections.crop_boxes` row holds a box (not None, not NaN)."""
    return crop_box is not None and bool(np.all(np.isfinite(np.asarray(crop_box, np.float64))))


def crop_region_xyxy(
    box_xyxy: np.ndarray | tuple[float, ...],
    frame_wh: tuple[int, int],
    mode: CropMode = "blazeface",
    crop_box: np.ndarray | tuple[float, ...] | None = None,
) -> tuple[int, int, int, int]:
    """The frame region (x0, y0, x1, y1) a face's crop is cut from, in pixels inside the frame.

    For `blazeface`, `facellava` and `box_corner` (see the module doc); `crop_box` is the
    face's BlazeFace box for `blazeface` (None or NaN: the `facellava` estimate).
    `centered` crops may leave the frame: use `centered_square_xyxy` for them.
    """
    if mode == "blazeface" and has_box(crop_box):
        assert crop_box is not None
        x1, y1, x2, y2 = (float(v) for v in crop_box)
        return authors_cut_xyxy(mediapipe_pixel_box((x1, y1, x2, y2), frame_wh), frame_wh)
    if mode in ("facellava", "blazeface"):
        return authors_cut_xyxy(
            mediapipe_pixel_box(blazeface_box_xyxy(box_xyxy), frame_wh), frame_wh
        )
    if mode == "box_corner":
        x1, y1, x2, y2 = (float(v) for v in box_xyxy)
        return authors_cut_xyxy((x1, y1, x2, y2), frame_wh)
    if mode == "centered":
        raise ValueError("'centered' crops may leave the frame: use centered_square_xyxy")
    raise ValueError(f"unknown crop mode {mode!r}: use one of {', '.join(CROP_MODES)}")


def centered_square_xyxy(
    box_xyxy: np.ndarray | tuple[float, ...], margin: float = 0.25
) -> tuple[int, int, int, int]:
    """The `centered` square (x0, y0, x1, y1) in whole pixels; it may leave the frame."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    side = max(x2 - x1, y2 - y1, 1.0) * (1 + 2 * margin)
    x0, y0 = round((x1 + x2) / 2 - side / 2), round((y1 + y2) / 2 - side / 2)
    side_px = max(round(side), 1)
    return x0, y0, x0 + side_px, y0 + side_px


def frame_region_xyxy(
    box_xyxy: np.ndarray | tuple[float, ...],
    frame_wh: tuple[int, int],
    mode: CropMode = "blazeface",
    margin: float = 0.25,
    crop_box: np.ndarray | tuple[float, ...] | None = None,
) -> tuple[int, int, int, int]:
    """The part of the frame a face's crop shows, in frame pixels, for any mode.

    `crop_region_xyxy` for the clamped modes; the in-frame part of the square for
    `centered`. Empty (x0 >= x1 or y0 >= y1) when the crop misses the frame.
    """
    if mode != "centered":
        return crop_region_xyxy(box_xyxy, frame_wh, mode, crop_box)
    x0, y0, x1, y1 = centered_square_xyxy(box_xyxy, margin)
    frame_w, frame_h = frame_wh
    return max(x0, 0), max(y0, 0), min(x1, frame_w), min(y1, frame_h)
