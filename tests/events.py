"""Face events for the dashboard tests: an `emotion` answer about one person, made now."""

from __future__ import annotations

import time
from typing import Any

from worker.events import FaceEvent


def emotion_event(
    stream_id: str, track_id: int, window_start_s: float, label: str = "happy", **overrides: Any
) -> FaceEvent:
    """Person `track_id` of `stream_id` looks `label` in the window from `window_start_s`;
    `overrides` replace any field; the id is made from the event's stream, session, track,
    window start and task (`FaceEvent.identified`)."""
    now = time.time()
    fields: dict[str, Any] = {
        "stream_id": stream_id,
        "track_id": track_id,
        "task": "emotion",
        "result": {"kind": "emotion", "label": label, "matched_text": label},
        "answer_text": f"The person looks {label}.",
        "window_start_s": float(window_start_s),
        "window_end_s": window_start_s + 2.5,
        "wall_time_s": now,
        "frame_wall_time_s": now,
        "box_xyxy": (10.0, 10.0, 50.0, 60.0),
        "detector_score": 0.9,
        "model_id": "test",
        "worker_id": "w-test",
    }
    return FaceEvent.identified(**{**fields, **overrides})
