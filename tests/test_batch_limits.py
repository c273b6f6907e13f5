"""Worker batch limits: "auto" sized from free device memory, an explicit integer kept."""

from __future__ import annotations

import pytest

from models.facellava.batch_limits import (
    AUTO_MAX_BATCH_CLIPS,
    admission_bytes_per_clip,
    auto_batch_clips,
)
from models.facellava.options import ModelOptions
from worker.answering import FaceAnswerer
from worker.commands.bench_model import shape_config
from worker.model_stage import EngineWindows
from worker.settings import Settings, SettingsError

GB = 1_000_000_000


def test_auto_admission_batch_follows_free_memory_and_is_capped() -> None:
    config = shape_config("7b")
    per_clip = admission_bytes_per_clip(config, element_bytes=2)  # bf16
    assert 0.25 * GB < per_clip < 0.35 * GB  # tower pass + ~2.1k-token prefix prefill
    assert auto_batch_clips(config, 2, free_bytes=1 * GB) == 1  # never zero
    assert auto_batch_clips(config, 2, free_bytes=65 * GB) == int(6.5 * GB) // per_clip
    assert auto_batch_clips(config, 2, free_bytes=10_000 * GB) == AUTO_MAX_BATCH_CLIPS


def test_worker_engine_is_sized_from_memory_by_default_and_an_integer_overrides(
    loaded, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings().model.max_batch_clips == "auto"
    auto = FaceAnswerer.from_loaded(loaded, ModelOptions(), worker_id="w")
    # the tiny model needs < 1 MB a clip: 10 % of any machine's free memory fits the cap
    assert auto.engine.max_batch_clips == AUTO_MAX_BATCH_CLIPS
    stage_limits = EngineWindows(auto)
    assert stage_limits.max_windows == auto.engine.max_visuals > 8  # slots, also from memory
    assert stage_limits.room() == AUTO_MAX_BATCH_CLIPS

    monkeypatch.setenv("FACESTREAM_MODEL__MAX_BATCH_CLIPS", "3")
    explicit = FaceAnswerer.from_loaded(loaded, Settings().model, worker_id="w")
    assert explicit.engine.max_batch_clips == 3
    monkeypatch.setenv("FACESTREAM_MODEL__MAX_BATCH_CLIPS", "0")
    with pytest.raises(SettingsError, match="MAX_BATCH_CLIPS"):
        Settings()
