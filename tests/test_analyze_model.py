"""`facestream analyze --model`: the one-process pipeline with the Face-LLaVA stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from worker.events import FaceEvent, event_id_for


def test_analyze_with_model_writes_one_face_event_per_task_and_window(
    testdata: Path, mnet_weights: Path, tmp_path: Path
) -> None:
    tiny = testdata / "facellava-tiny"
    clip = testdata / "videos" / "facellava_facial_expr_example_1.mp4"
    out = tmp_path / "out.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "analyze",
            str(clip),
            "--out",
            str(out),
            "--weights",
            str(mnet_weights),
            "--model",
            str(tiny / "checkpoint"),
            "--hf-cache",
            str(tiny / "hf_cache"),
            "--offline",
            "--max-new-tokens",
            "8",
            "--tasks",
            "emotion,age",
            "--no-progress",
            "--stream-id",
            "clip-1",
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    windows = [r for r in records if r["type"] == "window"]
    events = [
        FaceEvent.model_validate({k: v for k, v in r.items() if k != "type"})
        for r in records
        if r["type"] == "event"
    ]
    assert windows, "the 2.5 s single-face clip gives at least one window"
    assert len(events) == 2 * len(windows)
    assert {e.task for e in events} == {"emotion", "age"}
    for event in events:
        assert event.stream_id == "clip-1"
        assert event.answer_text
        assert event.event_id == event_id_for(
            "clip-1", event.track_id, event.window_start_s, event.task
        )
        assert event.model_id == str(tiny / "checkpoint")
