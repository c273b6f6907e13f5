"""Shared fixtures: where the test data lives, and the real services the tests start."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = [
    "tests.services.redis_server",
    "tests.services.rtsp",
    "tests.services.kafka_broker",
    "tests.workers",
]


def testdata_dir() -> Path:
    """`FACESTREAM_TESTDATA`, else `../shared/testdata` beside the checkout."""
    return Path(os.environ.get("FACESTREAM_TESTDATA", REPO_ROOT.parent / "shared" / "testdata"))


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The shared test data folder; skips (with the reason) where it is absent."""
    path = testdata_dir()
    if not path.is_dir():
        pytest.skip(f"test data not found at {path} (set FACESTREAM_TESTDATA)")
    return path


@pytest.fixture(scope="session")
def hamilton_mp4(testdata: Path) -> Path:
    return testdata / "videos" / "short_hamilton_clip.mp4"


@pytest.fixture(scope="session")
def mnet_weights(testdata: Path) -> Path:
    return testdata / "weights" / "retinaface_mobilenet0.25_Final.pth"


@pytest.fixture(scope="session")
def tiny(testdata: Path) -> Path:
    """The authors' tiny Face-LLaVA fixture (checkpoint, hf_cache, reference outputs)."""
    path = testdata / "facellava-tiny"
    if not path.is_dir():
        pytest.skip(f"Face-LLaVA tiny fixture not found at {path}")
    return path


@pytest.fixture(scope="module")
def loaded(tiny: Path):  # -> LoadedModel; one per test module, so no test sees another's
    """The tiny checkpoint loaded the production way (towers by hub id, offline), float32."""
    from models.facellava.checkpoint import load_model

    return load_model(
        tiny / "checkpoint", dtype="float32", cache_dir=tiny / "hf_cache", offline=True
    )


@pytest.fixture(autouse=True)
def _isolated_structlog() -> Iterator[None]:
    """A command run in-process points structlog at that test's captured stderr, which
    closes when the test ends; later log calls from any thread would then fail. Each test
    starts from structlog's defaults and leaves the configuration as it found it."""
    import structlog

    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)
