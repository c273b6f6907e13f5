"""The Face-LLaVA authors' face box for each of our faces: BlazeFace beside RetinaFace.

In `crop_mode=blazeface` the detector the pipeline gets is `BlazeFaceCropDetector`:
RetinaFace finds and tracks the faces as always, and BlazeFace short-range
(`models/blazeface.py`, the authors' crop tool's detector) runs on the same batch of
frames. Each RetinaFace face is paired with at most one BlazeFace face of the same frame
(`match_blazeface`), whose box becomes the face's `Detections.crop_boxes` row: the crop
is then cut from it exactly as the authors' tool does. Faces with no BlazeFace partner
keep a NaN row and fall back to the `facellava` estimate from the RetinaFace box.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ingest.crop_geometry import CropMode
from ingest.pipeline import FaceDetector
from ingest.tracking import box_iou
from models.blazeface import BlazeFaceDetector, BlazeFaces
from models.detections import Detections

MATCH_MIN_BOX_IOU = 0.3
"""A BlazeFace box and a RetinaFace box overlapping at least this much are the same face."""
_INNER_KEYPOINTS = slice(0, 3)  # BlazeFace's two eyes and nose tip


def match_blazeface(faces: Detections, blaze: BlazeFaces) -> np.ndarray:
    """(N, 4) float32: the BlazeFace box paired with each RetinaFace face, NaN if none.

    One to one, in two passes: first by box IoU (≥ `MATCH_MIN_BOX_IOU`, highest pairs
    first); then a BlazeFace face left over whose eyes and nose tip all lie inside a
    RetinaFace box left over is paired with it (BlazeFace's box can be much larger
    than RetinaFace's for a turned head), nearest nose to the box centre first.
    """
    out = np.full((len(faces), 4), np.nan, np.float32)
    if not len(faces) or not len(blaze):
        return out
    ious = box_iou(faces.xyxy.astype(np.float64), blaze.xyxy.astype(np.float64))
    used_ours: set[int] = set()
    used_theirs: set[int] = set()
    rows, cols = np.nonzero(ious >= MATCH_MIN_BOX_IOU)
    pairs = [(float(ious[i, j]), int(i), int(j)) for i, j in zip(rows, cols, strict=True)]
    for _, i, j in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
        if i not in used_ours and j not in used_theirs:
            used_ours.add(i)
            used_theirs.add(j)
            out[i] = blaze.xyxy[j]
    contained = []
    for i in set(range(len(faces))) - used_ours:
        x1, y1, x2, y2 = faces.xyxy[i]
        centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
        for j in set(range(len(blaze))) - used_theirs:
            points = blaze.keypoints[j, _INNER_KEYPOINTS]
            inside = (
                (points[:, 0] >= x1) & (points[:, 0] <= x2)
                & (points[:, 1] >= y1) & (points[:, 1] <= y2)
            )  # fmt: skip
            if inside.all():
                gap = float(np.linalg.norm(blaze.keypoints[j, 2] - centre))
                contained.append((gap, i, j))
    for _, i, j in sorted(contained):
        if i not in used_ours and j not in used_theirs:
            used_ours.add(i)
            used_theirs.add(j)
            out[i] = blaze.xyxy[j]
    return out


class BlazeFaceCropDetector:
    """A `FaceDetector`: the wrapped detector's faces, each with its BlazeFace crop box."""

    def __init__(self, detector: FaceDetector, blazeface: BlazeFaceDetector) -> None:
        self.detector = detector
        self.blazeface = blazeface

    def detect(self, images_bgr: list[np.ndarray]) -> list[Detections]:
        """Both detectors on the same batch; see the module doc."""
        faces = self.detector.detect(images_bgr)
        # BlazeFace only on the frames with a face to pair (most frames of an empty scene).
        with_faces = [i for i, ours in enumerate(faces) if len(ours)]
        blaze = (
            self.blazeface.detect([images_bgr[i] for i in with_faces], bgr=True)
            if with_faces
            else []
        )
        crop_boxes = [np.full((0, 4), np.nan, np.float32) for _ in faces]  # no face: no row
        for i, theirs in zip(with_faces, blaze, strict=True):
            crop_boxes[i] = match_blazeface(faces[i], theirs)
        return [
            replace(ours, crop_boxes=boxes) for ours, boxes in zip(faces, crop_boxes, strict=True)
        ]


def with_crop_boxes(detector: FaceDetector, mode: CropMode, device: str = "cpu") -> FaceDetector:
    """The detector the pipeline should use for `mode`: wrapped for `blazeface`, else as is.

    Loads the shipped BlazeFace weights (`models.blazeface.WEIGHTS_PATH`) on `device`
    (`auto` as for the detector); raises `BlazeFaceWeightsError` (a `WeightsError`).
    """
    if mode != "blazeface":
        return detector
    return BlazeFaceCropDetector(detector, BlazeFaceDetector.load(device=device))
