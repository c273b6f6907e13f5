"""The batched generation engine against the plain single-request loop, on the tiny fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.facellava.answers import Task
from models.facellava.checkpoint import LoadedModel
from models.facellava.engine import (
    EngineRequestError,
    GenerationEngine,
    GenerationRequest,
    Question,
    greedy_generate,
)
from models.facellava.prompts import DEFAULT_QUESTIONS

pytestmark = pytest.mark.timeout(120)

QUESTIONS = [DEFAULT_QUESTIONS[task] for task in Task] + ["Describe the face briefly."]


@pytest.fixture(scope="module")
def reference(tiny: Path):
    def load(name: str) -> torch.Tensor:
        return torch.load(tiny / "reference" / name, weights_only=True)

    return load


@pytest.fixture(scope="module")
def real_clip(reference) -> np.ndarray:
    return reference("preprocess/video_frames_uint8_THWC.pt").numpy()


@pytest.fixture(scope="module")
def real_image(reference) -> np.ndarray:
    return reference("preprocess/image_rgb_uint8_HWC.pt").numpy()


def _engine(loaded: LoadedModel, **kwargs) -> GenerationEngine:
    return GenerationEngine(
        loaded.model, loaded.tokenizer, eos_token_id=loaded.eos_token_id, **kwargs
    )


def _alone(loaded: LoadedModel, request: GenerationRequest, question: Question, **kwargs):
    return greedy_generate(
        loaded.model,
        loaded.tokenizer,
        request.visual,
        question.text,
        eos_token_id=loaded.eos_token_id,
        **kwargs,
    )


def test_engine_reproduces_the_authors_generated_ids(loaded, tiny, reference):
    cases = json.loads((tiny / "reference" / "reference.json").read_text())["cases"]
    requests = [
        GenerationRequest(
            name,
            reference(f"{name}_pixel_values.pt")[0],
            (Question(cases[name]["question"]),),
        )
        for name in ("video", "image")
    ]
    results = _engine(loaded, max_new_tokens=12).generate(requests)
    for name, result in zip(("video", "image"), results, strict=True):
        expected = reference(f"{name}_generate_new_ids.pt")[0].tolist()
        assert result.key == name
        assert list(result.answers[0].token_ids) == expected
        assert result.answers[0].text == cases[name]["generated_text"]


def test_plain_loop_reproduces_the_authors_generated_ids(loaded, tiny, reference):
    cases = json.loads((tiny / "reference" / "reference.json").read_text())["cases"]
    for name in ("video", "image"):
        answer = greedy_generate(
            loaded.model,
            loaded.tokenizer,
            reference(f"{name}_pixel_values.pt")[0],
            cases[name]["question"],
            max_new_tokens=12,
        )
        assert list(answer.token_ids) == reference(f"{name}_generate_new_ids.pt")[0].tolist()


def test_mixed_batch_matches_each_request_run_alone(loaded, real_clip, real_image):
    rng = np.random.default_rng(7)
    requests = [
        GenerationRequest("clip", real_clip, tuple(map(Question, QUESTIONS[:2]))),
        GenerationRequest("image", real_image, tuple(map(Question, QUESTIONS))),
        GenerationRequest(
            "long-clip", rng.integers(0, 256, (30, 64, 48, 3), dtype=np.uint8), (Question("Why?"),)
        ),
        GenerationRequest(
            "small-image",
            rng.integers(0, 256, (50, 40, 3), dtype=np.uint8),
            tuple(map(Question, QUESTIONS[1:4])),
        ),
        GenerationRequest("reversed", real_clip[::-1].copy(), tuple(map(Question, QUESTIONS[:3]))),
    ]
    engine = _engine(loaded, max_new_tokens=12, max_batch_clips=2)
    results = engine.generate(requests)

    assert [r.key for r in results] == [r.key for r in requests]
    seen = set()
    for request, result in zip(requests, results, strict=True):
        assert result.modality == request.modality
        assert [a.question for a in result.answers] == list(request.questions)
        for answer in result.answers:
            alone = _alone(loaded, request, answer.question, max_new_tokens=12)
            assert answer.token_ids == alone.token_ids, (request.key, answer.question.text)
            assert answer.text == alone.text
            seen.add(answer.token_ids)
    assert len(seen) > 2, "inputs should lead to different answers"
    # 3 clips in tower batches of ≤ 2, 2 images in one; one decode row per question.
    assert engine.counters.tower_batch_sizes == {2: 2, 1: 1}
    assert engine.counters.clips == 3 and engine.counters.images == 2
    assert engine.counters.questions == 2 + 5 + 1 + 3 + 3
    assert max(engine.counters.decode_batch_sizes) == 8  # 5 + 3 image questions
    assert engine.counters.tokens_generated == 14 * 12
    # Each visual prefix is prefilled once, however many questions are asked of it.
    tokenizer, config = loaded.tokenizer, loaded.model.config
    video_prefix = tokenizer.encode_question("?", "video").prefix_ids
    image_prefix = tokenizer.encode_question("?", "image").prefix_ids
    video_tokens = len(video_prefix) - 8 + 8 * (config.video_tower.num_patches + 1)
    image_tokens = len(image_prefix) - 1 + config.image_tower.num_patches
    suffix_tokens = sum(
        len(tokenizer.encode_question(q.text, "image").suffix_ids)
        for request in requests
        for q in request.questions
    )
    assert engine.counters.prefill_tokens == 3 * video_tokens + 2 * image_tokens + suffix_tokens


def test_rows_stop_at_eos_while_the_others_go_on(loaded, real_clip, real_image):
    # Make the video answer's 4th token (147) the stop token: that row stops, others go on.
    stop_token = 147
    requests = [
        GenerationRequest("clip", real_clip, (Question(QUESTIONS[0]),)),
        GenerationRequest("image", real_image, tuple(map(Question, QUESTIONS[1:3]))),
    ]
    engine = GenerationEngine(
        loaded.model, loaded.tokenizer, max_new_tokens=12, eos_token_id=stop_token
    )
    results = engine.generate(requests)
    clip_answer = results[0].answers[0]
    assert clip_answer.stop_reason == "eos"
    assert stop_token not in clip_answer.token_ids
    for request, result in zip(requests, results, strict=True):
        for answer in result.answers:
            alone = greedy_generate(
                loaded.model,
                loaded.tokenizer,
                request.visual,
                answer.question.text,
                max_new_tokens=12,
                eos_token_id=stop_token,
            )
            assert (answer.token_ids, answer.stop_reason) == (alone.token_ids, alone.stop_reason)


def test_answers_stop_at_max_new_tokens_and_ignore_eos_forces_length(loaded, real_image):
    engine = GenerationEngine(
        loaded.model, loaded.tokenizer, max_new_tokens=5, eos_token_id=407, ignore_eos=True
    )
    (result,) = engine.generate(
        [GenerationRequest.for_tasks("face", real_image, [Task.AGE, Task.ATTRIBUTES])]
    )
    for answer in result.answers:
        assert len(answer.token_ids) == 5 and answer.stop_reason == "length"
    assert [a.question.task for a in result.answers] == [Task.AGE, Task.ATTRIBUTES]


def test_bad_requests_are_rejected_with_the_key(loaded):
    engine = _engine(loaded)
    with pytest.raises(EngineRequestError, match="grey"):
        engine.generate([GenerationRequest("grey", np.zeros((32, 32), np.uint8), (Question("?"),))])
    with pytest.raises(EngineRequestError, match="no question"):
        engine.generate([GenerationRequest("none", np.zeros((32, 32, 3), np.uint8), ())])


def test_finished_rows_leave_the_batch_and_the_rest_stay_exact(loaded, real_image):
    # On the fixture, 465 is the 6th token of 8 of these 13 image answers: once they stop,
    # more than half the batch is done, so the engine drops them (cache rows, masks,
    # positions) and the 5 others must go on exactly as when run alone.
    stop_token = 465
    rng = np.random.default_rng(1)
    questions = tuple(map(Question, [*QUESTIONS[:4], "Why?", "Describe the face.", "How old?"]))
    requests = [
        GenerationRequest("face", real_image, (*questions, Question("Is it happy?"))),
        GenerationRequest(
            "noise", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), questions[:5]
        ),
    ]
    engine = GenerationEngine(
        loaded.model, loaded.tokenizer, max_new_tokens=12, eos_token_id=stop_token
    )
    results = engine.generate(requests)
    assert engine.counters.decode_batch_sizes == {13: 6, 5: 6}
    stops = [a.stop_reason for result in results for a in result.answers]
    assert stops.count("eos") == 8 and stops.count("length") == 5
    for request, result in zip(requests, results, strict=True):
        for answer in result.answers:
            alone = greedy_generate(
                loaded.model,
                loaded.tokenizer,
                request.visual,
                answer.question.text,
                max_new_tokens=12,
                eos_token_id=stop_token,
            )
            assert (answer.token_ids, answer.stop_reason) == (alone.token_ids, alone.stop_reason)
