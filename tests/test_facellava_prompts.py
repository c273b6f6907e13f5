"""The authors' prompt template and placeholder tokenisation, against the tiny fixture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.facellava.answers import Task
from models.facellava.prompts import (
    DEFAULT_QUESTIONS,
    IMAGE_TOKEN_INDEX,
    TASK_MODALITY,
    PromptError,
    PromptTokenizer,
    TokenizerNotFoundError,
    build_prompt,
)


@pytest.fixture(scope="module")
def tokenizer(tiny: Path) -> PromptTokenizer:
    return PromptTokenizer(tiny / "checkpoint")


@pytest.fixture(scope="module")
def reference_prompts(tiny: Path) -> dict[str, str]:
    return json.loads((tiny / "reference" / "prompts.json").read_text())


def _reference_ids(tiny: Path, name: str) -> list[int]:
    ids = torch.load(tiny / "reference" / f"{name}_input_ids.pt", weights_only=True)
    return ids[0].tolist()


def test_build_prompt_reproduces_the_authors_prompt_strings(reference_prompts):
    assert build_prompt(DEFAULT_QUESTIONS[Task.EMOTION], "video", 8) == reference_prompts["video"]
    assert build_prompt(DEFAULT_QUESTIONS[Task.AGE], "image") == reference_prompts["image"]


@pytest.mark.parametrize("name", ["video", "image"])
def test_tokenisation_reproduces_the_fixture_input_ids(tokenizer, reference_prompts, tiny, name):
    assert tokenizer.encode_prompt(reference_prompts[name]) == _reference_ids(tiny, name)


@pytest.mark.parametrize(("task", "name"), [(Task.EMOTION, "video"), (Task.AGE, "image")])
def test_prefix_and_suffix_ids_join_to_the_full_prompt_ids(tokenizer, tiny, task, name):
    ids = tokenizer.encode_question(DEFAULT_QUESTIONS[task], TASK_MODALITY[task])
    assert ids.input_ids == _reference_ids(tiny, name)
    assert ids.prefix_ids[-1] == IMAGE_TOKEN_INDEX
    assert IMAGE_TOKEN_INDEX not in ids.suffix_ids
    assert ids.prefix_ids.count(IMAGE_TOKEN_INDEX) == (8 if name == "video" else 1)


def test_visual_prefix_is_the_same_for_every_question(tokenizer):
    prefixes = {
        tokenizer.encode_question(q, "image").prefix_ids for q in DEFAULT_QUESTIONS.values()
    }
    assert len(prefixes) == 1


def test_decode_matches_the_authors_generated_text(tokenizer, tiny):
    cases = json.loads((tiny / "reference" / "reference.json").read_text())["cases"]
    for case in cases.values():
        assert (
            tokenizer.decode([*case["generated_new_ids"], tokenizer.eos_id])
            == case["generated_text"]
        )


def test_tasks_use_the_authors_recommended_modality():
    assert TASK_MODALITY[Task.EMOTION] == "video"
    assert {TASK_MODALITY[t] for t in (Task.AGE, Task.ATTRIBUTES, Task.ACTION_UNITS)} == {"image"}
    assert set(DEFAULT_QUESTIONS) == set(Task)


def test_question_with_a_placeholder_is_rejected():
    with pytest.raises(PromptError, match="<image>"):
        build_prompt("what is in <image>?", "image")


def test_missing_tokenizer_model_says_where_it_looked(tmp_path):
    with pytest.raises(TokenizerNotFoundError, match=r"tokenizer\.model"):
        PromptTokenizer(tmp_path)
