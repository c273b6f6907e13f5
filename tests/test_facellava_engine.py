"""The batched generation engine against the plain single-request loop, on the tiny fixture."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

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
    engine = _engine(loaded, max_new_tokens=12, max_batch_clips=2, max_visuals=4)
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
    # Video and image rows decode together: 3 clips x 1 lane + 2 images x 3 lanes.
    assert max(engine.counters.decode_batch_sizes) == 9
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


def _random_tiny(tiny: Path) -> SimpleNamespace:
    """The tiny shapes with random float32 weights (no checkpoint), and the fixture tokenizer."""
    from models.facellava.prompts import PromptTokenizer
    from worker.commands.bench_model import random_model, shape_config

    model = random_model(shape_config("tiny"), "float32", "cpu", "sdpa", seed=3).eval()
    tokenizer = PromptTokenizer(tiny / "checkpoint")
    return SimpleNamespace(model=model, tokenizer=tokenizer, eos_token_id=tokenizer.eos_id)


@pytest.fixture(scope="module", params=["checkpoint", "random"])
def any_model(request, loaded, tiny):
    return loaded if request.param == "checkpoint" else _random_tiny(tiny)


def test_requests_join_and_leave_mid_decode_and_match_the_plain_loop(
    any_model, real_clip, real_image
):
    # 2 slots per modality, 1 lane per clip and 2 per image: more questions than lanes
    # wait for a lane of their own visual; more visuals than slots wait for a slot.
    # Questions of different lengths; a stop token common on the fixture (465) ends some
    # rows early while others reach the 7-token cap.
    rng = np.random.default_rng(5)
    loaded = any_model
    stop_token = 465
    noise_image = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    noise_clip = rng.integers(0, 256, (12, 48, 40, 3), dtype=np.uint8)
    first = [
        GenerationRequest("clip", real_clip, tuple(map(Question, QUESTIONS[:2]))),
        GenerationRequest("image", real_image, tuple(map(Question, QUESTIONS))),
    ]
    later = [
        GenerationRequest("noise-image", noise_image, (Question("Why?"), Question(QUESTIONS[2]))),
        GenerationRequest("noise-clip", noise_clip, (Question(QUESTIONS[0]),)),
        GenerationRequest("reversed", real_clip[::-1].copy(), (Question("How old?"),)),
        GenerationRequest("image-2", real_image[::-1].copy(), tuple(map(Question, QUESTIONS[1:4]))),
    ]
    engine = GenerationEngine(
        loaded.model,
        loaded.tokenizer,
        max_new_tokens=7,
        max_visuals=2,
        lanes={"video": 1, "image": 2},
        eos_token_id=stop_token,
    )
    handles = [engine.submit(r) for r in first]
    done = []
    for _ in range(3):
        done += engine.step()
    assert engine.active > 0  # the first requests are mid-decode...
    joined_while_active = engine.active
    handles += [engine.submit(r) for r in later]  # ...when the others arrive
    steps = 3
    while not engine.idle:
        done += engine.step()
        steps += 1
    assert joined_while_active and engine.pending == 0 and engine.active == 0
    assert sorted(r.key for r in done) == sorted(h.request.key for h in handles)
    assert engine.counters.tokens_generated > 0
    stops = set()
    for handle in handles:
        result = handle.result()
        for answer in result.answers:
            alone = greedy_generate(
                loaded.model,
                loaded.tokenizer,
                handle.request.visual,
                answer.question.text,
                max_new_tokens=7,
                eos_token_id=stop_token,
            )
            assert (answer.token_ids, answer.stop_reason) == (alone.token_ids, alone.stop_reason), (
                handle.request.key,
                answer.question.text,
            )
            stops.add(answer.stop_reason)
    assert "length" in stops
    # Some decode steps ran clip and image rows together.
    assert any(size > 2 for size in engine.counters.decode_batch_sizes)


def test_answers_with_and_without_bucket_padding_are_identical(loaded, real_clip, real_image):
    # max_visuals=3 pads 3 occupied slots to no bucket (3 is one); 8 pads them to 4: the
    # padded slots run as dummy rows. Both must give the plain loop's tokens.
    requests = [
        GenerationRequest(f"clip{i}", real_clip[i:].copy(), (Question(QUESTIONS[i]),))
        for i in range(3)
    ] + [GenerationRequest("image", real_image, tuple(map(Question, QUESTIONS[:3])))]
    answers = {}
    for max_visuals in (3, 8):
        engine = _engine(loaded, max_new_tokens=6, max_visuals=max_visuals)
        results = engine.generate(requests)
        answers[max_visuals] = [a.token_ids for r in results for a in r.answers]
        padded, real = engine.counters.decode_padded_sizes, engine.counters.decode_batch_sizes
        if max_visuals == 8:
            assert max(padded) > max(real)  # dummy rows ran
    assert answers[3] == answers[8]
    for request, tokens in zip(requests, answers[8][:3], strict=False):
        assert tokens == _alone(loaded, request, request.questions[0], max_new_tokens=6).token_ids


def test_bucket_sizes_cover_every_slot_count():
    from models.facellava.kv_slots import bucket_for, bucket_sizes

    assert bucket_sizes(1) == (0, 1)
    assert bucket_sizes(12) == (0, 1, 2, 4, 8, 12)
    for capacity in (1, 5, 8, 33):
        buckets = bucket_sizes(capacity)
        for used in range(capacity + 1):
            size = bucket_for(used, buckets)
            assert used <= size <= capacity and (used == 0) == (size == 0)
            assert size < 2 * used or size == capacity or used == 0
    with pytest.raises(ValueError):
        bucket_for(13, bucket_sizes(12))


def test_kv_slots_hold_each_prefix_once_and_each_question_only_its_lane(loaded, real_image):
    engine = _engine(loaded, max_new_tokens=5, max_visuals=2, max_question_tokens=40)
    config = loaded.model.language_model.config
    per_token = 2 * config.num_hidden_layers * config.hidden_size * 4  # float32 K and V
    image = engine.pools["image"].shape
    assert image.lane_tokens == 45 and image.lanes == 3
    assert engine.pools["image"].nbytes == 2 * (image.prefix_tokens + 3 * 45) * per_token
    pointers = [t.data_ptr() for t in engine.pools["image"].keys]
    engine.generate([GenerationRequest("face", real_image, tuple(map(Question, QUESTIONS)))])
    assert [t.data_ptr() for t in engine.pools["image"].keys] == pointers  # nothing reallocated
    assert engine.counters.requests == 1  # one prefix prefill for 5 questions


def test_auto_sizing_fills_the_free_memory_share():
    from models.facellava.kv_slots import size_visual_slots

    gib = 1 << 30
    budget = size_visual_slots(
        free_bytes=120 * gib,
        video_slot_bytes=int(1.1 * gib),
        image_slot_bytes=int(0.4 * gib),
        workspace_bytes=4 * gib,
        memory_fraction=0.6,
        max_visuals=128,
    )
    assert budget.visuals == (72 * gib - 4 * gib) // int(1.5 * gib)  # 45
    tiny = size_visual_slots(
        free_bytes=gib,
        video_slot_bytes=2 * gib,
        image_slot_bytes=gib,
        workspace_bytes=0,
        memory_fraction=0.5,
        max_visuals=8,
    )
    assert tiny.visuals == 1  # never zero: one visual of each still runs
    capped = size_visual_slots(
        free_bytes=1000 * gib,
        video_slot_bytes=1,
        image_slot_bytes=1,
        workspace_bytes=0,
        memory_fraction=1.0,
        max_visuals=8,
    )
    assert capped.visuals == 8 and capped.capped


def test_auto_sized_engine_reports_its_budget(loaded):
    engine = _engine(loaded, max_visuals="auto")
    assert engine.slot_budget is not None
    assert 1 <= engine.max_visuals == engine.slot_budget.visuals <= 128


def test_cuda_graphs_are_refused_off_cuda(loaded):
    with pytest.raises(ValueError, match="CUDA"):
        _engine(loaded, max_visuals=1, cuda_graphs=True)


def test_a_full_pending_queue_refuses_and_a_long_question_is_rejected(loaded, real_image):
    from models.facellava.engine import EngineFullError

    engine = _engine(loaded, max_visuals=1, max_pending=1, max_question_tokens=24)
    engine.submit(GenerationRequest("a", real_image, (Question("Why?"),)))
    with pytest.raises(EngineFullError):
        engine.submit(GenerationRequest("b", real_image, (Question("Why?"),)))
    with pytest.raises(EngineRequestError, match="max_question_tokens"):
        engine.submit(GenerationRequest("c", real_image, (Question("Why " * 20 + "?"),)))


def test_lane_length_buckets_cover_every_lane_length():
    from models.facellava.kv_slots import bucket_for, lane_length_buckets

    assert lane_length_buckets(144) == (16, 32, 48, 64, 96, 128, 144)
    assert lane_length_buckets(10) == (10,)
    for lane_tokens in (1, 15, 16, 17, 144, 1000):
        buckets = lane_length_buckets(lane_tokens)
        assert list(buckets) == sorted(set(buckets)) and buckets[-1] == lane_tokens
        assert len(buckets) <= 2 * lane_tokens.bit_length()
        for length in range(1, lane_tokens + 1):
            size = bucket_for(length, buckets)
            assert length <= size <= lane_tokens
            assert size <= max(16, 2 * length)
        with pytest.raises(ValueError):
            bucket_for(lane_tokens + 1, buckets)


def test_lanes_interleave_and_a_step_reads_only_the_used_front_of_its_slots(loaded, real_image):
    engine = _engine(loaded, max_new_tokens=20, max_visuals=2)
    pool = engine.pools["image"]
    shape = pool.shape
    assert shape.token_index(0, 0) == shape.prefix_tokens
    assert shape.token_index(2, 1) == shape.prefix_tokens + 1 * 3 + 2
    # Every token index after the prefix belongs to exactly one (lane, step).
    owners = {(lane, step) for lane in range(3) for step in range(shape.lane_tokens)}
    indices = {shape.token_index(lane, step) for lane, step in owners}
    assert indices == set(range(shape.prefix_tokens, shape.tokens_per_slot))
    assert pool.token_lane[: shape.prefix_tokens].eq(-1).all()

    engine.submit(GenerationRequest("face", real_image, tuple(map(Question, QUESTIONS[:3]))))
    keys = []
    while not engine.idle:
        stored = engine.decoder.states["image"].stored.max()
        if engine.active:
            keys.append((int(stored), engine.decoder.step_key({"video": 0, "image": 1})))
        engine.step()
    assert keys
    for stored, (video_slots, image_slots, video_length, image_length) in keys:
        assert (video_slots, image_slots, video_length) == (0, 1, 0)
        assert stored < image_length <= max(16, 2 * (stored + 1))
        attended = shape.attended_tokens(image_length)
        assert attended < shape.tokens_per_slot  # never the whole preallocated slot


def test_answers_are_identical_whether_steps_read_the_used_front_or_the_whole_slot(
    any_model, real_clip
):
    # EOS ignored: 40-token answers cross the 32, 48 and 64 lane buckets.
    loaded = any_model
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    requests = [
        GenerationRequest("clip", real_clip, (Question(QUESTIONS[0]),)),
        GenerationRequest("image", image, (Question("Why?"), *map(Question, QUESTIONS[1:3]))),
    ]
    answers = {}
    for attend in ("front", "whole"):
        engine = _engine(loaded, max_new_tokens=40, max_visuals=2, ignore_eos=True)
        if attend == "whole":
            engine.decoder.lane_buckets = {
                m: (pool.shape.lane_tokens,) for m, pool in engine.pools.items()
            }
        answers[attend] = [a.token_ids for r in engine.generate(requests) for a in r.answers]
    assert answers["front"] == answers["whole"]
    expected = [
        _alone(loaded, r, q, max_new_tokens=40, ignore_eos=True).token_ids
        for r in requests
        for q in r.questions
    ]
    assert answers["front"] == expected
