"""`facestream model verify`: passes on the authors' fixture, fails on corrupted checkpoints."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.facellava.verify import verify_fixture

pytestmark = pytest.mark.timeout(180)


def _fixture_copy(tiny: Path, root: Path, state: dict[str, torch.Tensor]) -> Path:
    """A fixture folder sharing towers and references, with its own checkpoint weights."""
    (root / "checkpoint").mkdir(parents=True)
    for name in ("hf_cache", "reference"):
        (root / name).symlink_to(tiny / name)
    for item in (tiny / "checkpoint").iterdir():
        if item.suffix != ".bin":
            (root / "checkpoint" / item.name).symlink_to(item)
    torch.save(state, root / "checkpoint" / "pytorch_model.bin")
    return root


def _run_verify(fixture: Path) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("facestream")
    return subprocess.run(
        [str(cli), "model", "verify", str(fixture)],
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_verify_passes_on_the_authors_fixture(tiny: Path) -> None:
    done = _run_verify(tiny)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
    for row in ("video input ids", "video logits", "image greedy ids", "preprocess"):
        assert row in done.stdout
    if importlib.util.find_spec("models.facellava.engine") is not None:
        assert "video greedy ids (engine, batched)" in done.stdout


def test_verify_fails_on_a_perturbed_weight(tiny: Path, tmp_path: Path) -> None:
    state = torch.load(tiny / "checkpoint" / "pytorch_model.bin", weights_only=True)
    state["model.layers.1.mlp.down_proj.weight"] += 1e-3
    done = _run_verify(_fixture_copy(tiny, tmp_path / "fixture", state))
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if "FAIL" in line]
    assert any(line.startswith("video logits") for line in failed)
    assert not any("tower" in line for line in failed)


def test_verify_fails_on_a_missing_tensor(tiny: Path, tmp_path: Path) -> None:
    state = torch.load(tiny / "checkpoint" / "pytorch_model.bin", weights_only=True)
    del state["model.layers.0.self_attn.q_proj.weight"]
    result = verify_fixture(_fixture_copy(tiny, tmp_path / "fixture", state))
    assert not result.passed
    assert "MissingWeightsError" in result.table()
    assert "model.layers.0.self_attn.q_proj.weight" in result.table()


def test_the_question_is_read_back_from_any_prompt() -> None:
    from models.facellava.prompts import build_prompt
    from models.facellava.verify import _question_of

    for question in ("What emotion is shown?", "Look closely.\nHow old is this person?"):
        for modality, frames in (("image", 1), ("video", 8), ("video", 3)):
            assert _question_of(build_prompt(question, modality, frames)) == question
