"""`facestream ask` on the tiny fixture: a real clip and a face image, offline towers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from models.facellava.answers import Task
from models.facellava.engine import greedy_generate
from models.facellava.preprocess import sample_frame_indices
from models.facellava.prompts import DEFAULT_QUESTIONS
from worker.cli import main
from worker.commands.ask import count_clip_frames, read_clip_rgb

pytestmark = pytest.mark.timeout(180)


def _frames(tiny: Path, name: str) -> torch.Tensor:
    return torch.load(tiny / "reference" / "preprocess" / name, weights_only=True)


def test_ask_on_the_example_clip_prints_the_answer_of_its_eight_linspace_frames(
    testdata, tiny, loaded
):
    clip = testdata / "videos" / "facellava_facial_expr_example_1.mp4"
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tiny / "hf_cache"),
        "HF_HUB_OFFLINE": "1",
        "FACESTREAM_MODEL__MODEL": str(tiny / "checkpoint"),
    }
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "worker.cli", "ask", str(clip), "--task", "emotion"),
            *("--device", "cpu", "--max-new-tokens", "8", "--json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=150,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    output = json.loads(completed.stdout)
    # The authors' frames of this clip (indices linspace(0, 59, 8)) are in the fixture.
    expected = greedy_generate(
        loaded.model,
        loaded.tokenizer,
        _frames(tiny, "video_frames_uint8_THWC.pt").numpy(),
        DEFAULT_QUESTIONS[Task.EMOTION],
        max_new_tokens=8,
    )
    assert output["modality"] == "video" and output["frames_in_source"] == 60
    assert output["question"] == DEFAULT_QUESTIONS[Task.EMOTION]
    assert output["token_ids"] == list(expected.token_ids)
    assert output["answer"] == expected.text
    assert output["stop_reason"] == "length"
    assert "result" in output  # random weights: the parser finds nothing, null


def test_ask_on_a_face_image_with_own_question(tmp_path, tiny, loaded, capsys):
    image = _frames(tiny, "image_rgb_uint8_HWC.pt").numpy()
    path = tmp_path / "face.png"
    Image.fromarray(image).save(path)
    question = "How old is this person?"
    status = main(
        [
            *("ask", str(path), "--task", "age", "--question", question),
            *("--model", str(tiny / "checkpoint"), "--hf-cache", str(tiny / "hf_cache")),
            *("--offline", "--device", "cpu", "--max-new-tokens", "6", "--json"),
        ]
    )
    assert status == 0
    output = json.loads(capsys.readouterr().out)
    expected = greedy_generate(loaded.model, loaded.tokenizer, image, question, max_new_tokens=6)
    assert output["modality"] == "image" and output["question"] == question
    assert output["token_ids"] == list(expected.token_ids)
    assert output["dtype"] == "float32"


def test_ask_prints_the_answer_as_text_and_warns_when_given_a_full_frame(
    tmp_path, testdata, tiny, loaded, mnet_weights, monkeypatch, capsys
):
    # A frame of the Hamilton clip: two small faces, not a face crop.
    with av.open(str(testdata / "videos" / "short_hamilton_clip.mp4")) as container:
        frame = next(iter(container.decode(video=0))).to_ndarray(format="rgb24")
    path = tmp_path / "frame.png"
    Image.fromarray(frame).save(path)
    monkeypatch.setenv("FACESTREAM_DETECTOR__WEIGHTS", str(mnet_weights))
    status = main(
        [
            *("ask", str(path), "--task", "age"),
            *("--model", str(tiny / "checkpoint"), "--hf-cache", str(tiny / "hf_cache")),
            *("--offline", "--device", "cpu", "--max-new-tokens", "6"),
        ]
    )
    assert status == 0
    captured = capsys.readouterr()
    expected = greedy_generate(
        loaded.model, loaded.tokenizer, frame, DEFAULT_QUESTIONS[Task.AGE], max_new_tokens=6
    )
    answer, result = captured.out.rsplit("\n", 2)[:2]
    assert answer == expected.text
    assert result.startswith("result: ")
    assert "does not look like a face crop" in captured.err and "faces in it" in captured.err


def test_ask_reports_a_missing_source(tmp_path, capsys):
    status = main(["ask", str(tmp_path / "nope.mp4"), "--task", "emotion"])
    assert status == 2
    assert "no such file" in capsys.readouterr().err


def test_ask_reports_a_bad_question_and_a_missing_checkpoint(tmp_path, tiny, capsys):
    image = _frames(tiny, "image_rgb_uint8_HWC.pt").numpy()
    path = tmp_path / "face.png"
    Image.fromarray(image).save(path)
    model = ("--model", str(tiny / "checkpoint"), "--hf-cache", str(tiny / "hf_cache"))
    bad_question = ["ask", str(path), "--task", "age", "--question", "<image> how old?"]
    assert main([*bad_question, *model, "--offline", "--device", "cpu"]) == 2
    assert "must not contain" in capsys.readouterr().err
    missing = ("--model", str(tmp_path / "no-such-checkpoint"), "--offline", "--device", "cpu")
    assert main(["ask", str(path), "--task", "age", *missing]) == 2
    assert "no-such-checkpoint" in capsys.readouterr().err


def _write_lossless_clip(path: Path, count: int, side: int) -> None:
    """`count` frames of noise, lossless (ffv1), so decoded frames are exactly known."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width = stream.height = side
        stream.pix_fmt = "bgr0"
        for _ in range(count):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_reading_a_clip_keeps_only_the_sampled_frames(tmp_path):
    import tracemalloc

    path = tmp_path / "long.mkv"
    count, side = 150, 128  # all frames: 7.4 MB of RGB; 8 frames: 0.4 MB
    _write_lossless_clip(path, count, side)
    with av.open(str(path)) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert count_clip_frames(path) == len(every) == count
    indices = sample_frame_indices(count, 8)
    tracemalloc.start()
    try:
        frames = read_clip_rgb(path, indices)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(frames, np.stack([every[i] for i in indices]))
    frame_bytes = side * side * 3
    assert peak < 2 * len(indices) * frame_bytes + 1_000_000, peak
    # A clip shorter than the sample repeats frames, as the plain loop does.
    short = sample_frame_indices(3, 8)
    np.testing.assert_array_equal(read_clip_rgb(path, short), np.stack([every[i] for i in short]))
