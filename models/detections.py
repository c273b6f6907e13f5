"""`Detections`: the face detector's output for one frame, shared by every later stage."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Faces found in one frame, as parallel numpy arrays in original-frame pixels.

    `xyxy` is (N, 4) float32 boxes, `scores` (N,) float32 face probabilities and
    `landmarks` (N, 5, 2) float32 points: left eye, right eye, nose tip, left and right
    mouth corners (RetinaFace order). `crop_boxes`, when a crop detector ran
    (`ingest/authors_boxes.py`), is (N, 4) float32: the box of the Face-LLaVA authors'
    detector (BlazeFace) matched to each face, NaN where it found none for that face.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    crop_boxes: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.xyxy.shape[0]
        expected = ((n, 4), (n,), (n, 5, 2))
        if (self.xyxy.shape, self.scores.shape, self.landmarks.shape) != expected:
            raise ValueError(
                "Detections arrays disagree: "
                f"xyxy {self.xyxy.shape}, scores {self.scores.shape}, "
                f"landmarks {self.landmarks.shape}"
            )
        if self.crop_boxes is not None and self.crop_boxes.shape != (n, 4):
            raise ValueError(f"Detections crop_boxes {self.crop_boxes.shape} for {n} faces")

    @classmethod
    def empty(cls) -> Detections:
        """No faces."""
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            landmarks=np.zeros((0, 5, 2), np.float32),
        )

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def select(self, keep: np.ndarray) -> Detections:
        """The subset picked by a boolean mask or index array."""
        crop_boxes = None if self.crop_boxes is None else self.crop_boxes[keep]
        return Detections(self.xyxy[keep], self.scores[keep], self.landmarks[keep], crop_boxes)
