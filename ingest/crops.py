"""Face crops the Face-LLaVA way, and a quality score to pick a window's best crop.

Where a crop is cut is `ingest/crop_geometry.py`. In `blazeface` (the default),
`facellava` and `box_corner` mode the cut is the authors': clamped at the frame edges
(a cut at an edge is not square and is stretched, never padded) and resized to S×S with bilinear
interpolation (OpenCV's default, as in their tool), whatever the face size. `centered`
crops, for people who look at them, stay square: parts outside the frame are black and
large faces are shrunk with area interpolation. Crops are RGB uint8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ingest.crop_geometry import CropMode, centered_square_xyxy, crop_region_xyxy

# Quality weights (sum to 1) and scales; see `crop_quality`.
_QUALITY_WEIGHTS = {"detector": 0.2, "size": 0.25, "frontal": 0.3, "sharpness": 0.25}
_FULL_SIZE_PX = 112.0  # a face this tall or taller gets the full size score
_SHARPNESS_HALF = 100.0  # variance of Laplacian that scores 0.5


def crop_face(
    image_bgr: np.ndarray,
    box_xyxy: np.ndarray | tuple[float, ...],
    size_px: int = 256,
    mode: CropMode = "blazeface",
    margin: float = 0.25,
    crop_box: np.ndarray | tuple[float, ...] | None = None,
) -> np.ndarray:
    """Cut one face from a BGR frame: (size_px, size_px, 3) uint8 RGB (see the module doc).

    `crop_box`: the face's BlazeFace box for `blazeface` mode (`Detections.crop_boxes`).
    A region that misses the frame gives a black crop.
    """
    if mode == "centered":
        return _centered_crop(image_bgr, box_xyxy, size_px, margin)
    frame_h, frame_w = image_bgr.shape[:2]
    x0, y0, x1, y1 = crop_region_xyxy(box_xyxy, (frame_w, frame_h), mode, crop_box)
    if x0 >= x1 or y0 >= y1:
        return np.zeros((size_px, size_px, 3), np.uint8)
    region = image_bgr[y0:y1, x0:x1]
    resized = cv2.resize(region, (size_px, size_px), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


def _centered_crop(
    image_bgr: np.ndarray, box_xyxy: np.ndarray | tuple[float, ...], size_px: int, margin: float
) -> np.ndarray:
    x0, y0, x1, y1 = centered_square_xyxy(box_xyxy, margin)
    side_px = x1 - x0
    # Intersection with the frame, then pad the rest with black.
    ix0, iy0, ix1, iy1 = _in_frame(x0, y0, x1, y1, image_bgr.shape)
    if ix0 >= ix1 or iy0 >= iy1:
        return np.zeros((size_px, size_px, 3), np.uint8)
    square = image_bgr[iy0:iy1, ix0:ix1]
    if (ix0, iy0, ix1, iy1) != (x0, y0, x1, y1):
        square = cv2.copyMakeBorder(
            square,
            iy0 - y0,
            y1 - iy1,
            ix0 - x0,
            x1 - ix1,
            cv2.BORDER_CONSTANT,
            value=(0, 0, 0),
        )
    interp = cv2.INTER_AREA if side_px > size_px else cv2.INTER_LINEAR
    resized = cv2.resize(square, (size_px, size_px), interpolation=interp)
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


def _in_frame(
    x0: int, y0: int, x1: int, y1: int, frame_shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    frame_h, frame_w = frame_shape[:2]
    return max(x0, 0), max(y0, 0), min(x1, frame_w), min(y1, frame_h)


def crop_in_frame_xyxy(
    frame_shape: tuple[int, ...],
    box_xyxy: np.ndarray | tuple[float, ...],
    size_px: int = 256,
    mode: CropMode = "blazeface",
    margin: float = 0.25,
    crop_box: np.ndarray | tuple[float, ...] | None = None,
) -> tuple[int, int, int, int]:
    """The part of `crop_face`'s output that shows the frame, as (x0, y0, x1, y1) crop pixels.

    All of it for the clamped modes (empty when the region misses the frame). For a
    padded `centered` crop, on a side with black padding the pixels the resize blends
    with the black are left out too (one source pixel and one crop pixel more). Empty
    (x0 >= x1) when the square misses the frame.
    """
    if mode != "centered":
        frame_h, frame_w = frame_shape[:2]
        rx0, ry0, rx1, ry1 = crop_region_xyxy(box_xyxy, (frame_w, frame_h), mode, crop_box)
        return (0, 0, size_px, size_px) if rx0 < rx1 and ry0 < ry1 else (0, 0, 0, 0)
    x0, y0, x1, y1 = centered_square_xyxy(box_xyxy, margin)
    ix0, iy0, ix1, iy1 = _in_frame(x0, y0, x1, y1, frame_shape)
    scale = size_px / (x1 - x0)
    guard = math.ceil(scale) + 1

    def span(start: int, stop: int, in_start: int, in_stop: int) -> tuple[int, int]:
        lo = math.ceil((in_start - start) * scale) + (guard if in_start > start else 0)
        hi = math.floor((in_stop - start) * scale) - (guard if in_stop < stop else 0)
        return max(lo, 0), min(hi, size_px)

    cx0, cx1 = span(x0, x1, ix0, ix1)
    cy0, cy1 = span(y0, y1, iy0, iy1)
    return cx0, cy0, cx1, cy1


@dataclass(frozen=True)
class CropQuality:
    """How good a crop is for the model, each part in [0, 1]; `score` is their weighted sum.

    - `detector`: the detector's face score.
    - `size`: face height / 112 px, capped at 1 (small faces are upscaled and blurry).
    - `frontal`: 1 when the nose tip sits midway between the eyes and midway between the
      mouth corners (measured along each pair's own axis, so head roll does not count),
      falling linearly to 0 when it reaches one side (a profile).
    - `sharpness`: v / (v + 100) with v the variance of the Laplacian of the grey crop's
      in-frame part (the edge of the black padding would count as detail otherwise).
    Weights: detector 0.2, size 0.25, frontal 0.3, sharpness 0.25.
    """

    detector: float
    size: float
    frontal: float
    sharpness: float

    @property
    def score(self) -> float:
        return (
            _QUALITY_WEIGHTS["detector"] * self.detector
            + _QUALITY_WEIGHTS["size"] * self.size
            + _QUALITY_WEIGHTS["frontal"] * self.frontal
            + _QUALITY_WEIGHTS["sharpness"] * self.sharpness
        )


def frontalness(landmarks: np.ndarray) -> float:
    """1 for a frontal face, 0 for a profile, from the 5 RetinaFace landmarks (see CropQuality)."""
    left_eye, right_eye, nose, left_mouth, right_mouth = np.asarray(landmarks, np.float64)

    def centred_on(a: np.ndarray, b: np.ndarray) -> float:
        axis = b - a
        length_sq = float(axis @ axis)
        if length_sq < 1e-6:
            return 0.0
        t = float((nose - a) @ axis) / length_sq  # 0 at a, 1 at b
        return float(np.clip(1.0 - 2.0 * abs(t - 0.5), 0.0, 1.0))

    return 0.5 * (centred_on(left_eye, right_eye) + centred_on(left_mouth, right_mouth))


def sharpness(crop_rgb: np.ndarray, in_frame: tuple[int, int, int, int] | None = None) -> float:
    """Variance of the Laplacian of the grey crop, squashed into [0, 1).

    `in_frame` (x0, y0, x1, y1), from `crop_in_frame_xyxy`, limits it to the part that
    shows the frame; under 3×3 pixels of it scores 0.
    """
    if in_frame is not None:
        x0, y0, x1, y1 = in_frame
        if x1 - x0 < 3 or y1 - y0 < 3:
            return 0.0
        crop_rgb = crop_rgb[y0:y1, x0:x1]
    grey = cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2GRAY)
    variance = float(cv2.Laplacian(grey, cv2.CV_32F).var())
    return variance / (variance + _SHARPNESS_HALF)


def crop_quality(
    crop_rgb: np.ndarray,
    box_xyxy: np.ndarray,
    detector_score: float,
    landmarks: np.ndarray,
    in_frame: tuple[int, int, int, int] | None = None,
) -> CropQuality:
    """Score one crop for 'best image of the window' (see `CropQuality`).

    Pass `in_frame` (`crop_in_frame_xyxy`) for crops that may leave the frame.
    """
    height_px = float(box_xyxy[3] - box_xyxy[1])
    return CropQuality(
        detector=float(np.clip(detector_score, 0.0, 1.0)),
        size=float(np.clip(height_px / _FULL_SIZE_PX, 0.0, 1.0)),
        frontal=frontalness(landmarks),
        sharpness=sharpness(crop_rgb, in_frame),
    )
