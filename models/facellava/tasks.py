"""What we ask of a face and which visual each question takes.

`Task` is part of the wire formats (`StreamSpec.tasks`, `FaceEvent.task`); the prompts,
the answer parsers, the engine and the worker all import it from here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

import numpy as np


class Task(StrEnum):
    """A question we ask of a face."""

    EMOTION = "emotion"
    AGE = "age"
    ATTRIBUTES = "attributes"
    ACTION_UNITS = "action_units"


Modality = Literal["image", "video"]

TASK_MODALITY: dict[Task, Modality] = {
    Task.EMOTION: "video",
    Task.AGE: "image",
    Task.ATTRIBUTES: "image",
    Task.ACTION_UNITS: "image",
}
"""The input the authors recommend for each task."""

NUM_VIDEO_FRAMES = 8
"""Frames of one video clip as the model sees it (the authors' `num_frames`)."""


def sample_frame_indices(num_available: int, num_frames: int = NUM_VIDEO_FRAMES) -> list[int]:
    """The authors' frame choice `floor(linspace(0, n-1, num_frames))`: first and last kept."""
    if num_available < 1:
        raise ValueError("cannot sample frames from an empty clip")
    return [int(i) for i in np.linspace(0, num_available - 1, num_frames, dtype=int)]
