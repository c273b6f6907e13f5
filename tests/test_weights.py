"""`resolve_weights`: local paths, the hub cache offline, checksums and missing weights."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from huggingface_hub import constants as hub_constants

from models.weights import (
    WeightsChecksumError,
    WeightsNotFoundError,
    resolve_weights,
    sha256_of,
)

MNET_SHA256 = "38ec7bb3c9cbfe2f40edabc05fab970a6d648747cbc534092be85d5eb9b37ed0"


def _hub_cache_with(cache_dir: Path, repo_id: str, filename: str, source: Path) -> None:
    """Lay out a file the way the hub client caches it (refs/main → snapshot)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    target = repo_dir / "snapshots" / commit / filename
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def test_local_path_with_matching_sha256_resolves_to_itself(mnet_weights: Path) -> None:
    assert resolve_weights(str(mnet_weights), MNET_SHA256) == mnet_weights


def test_sha256_mismatch_raises_with_both_checksums(mnet_weights: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(WeightsChecksumError, match=wrong) as info:
        resolve_weights(str(mnet_weights), wrong)
    assert MNET_SHA256 in str(info.value)


def test_missing_local_file_raises_not_found(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        resolve_weights(str(tmp_path / "absent.pth"))


def test_cached_hub_file_resolves_offline(
    tmp_path: Path, mnet_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    _hub_cache_with(tmp_path, "py-feat/retinaface", "mobilenet0.25_Final.pth", mnet_weights)
    path = resolve_weights("py-feat/retinaface:mobilenet0.25_Final.pth", MNET_SHA256, tmp_path)
    assert path.name == "mobilenet0.25_Final.pth"
    assert sha256_of(path) == MNET_SHA256


def test_hub_file_in_a_subfolder_resolves_from_cache(tmp_path: Path, mnet_weights: Path) -> None:
    _hub_cache_with(
        tmp_path, "public-data/ibug-face-detection", "retina_face/mnet.pth", mnet_weights
    )
    path = resolve_weights("public-data/ibug-face-detection:retina_face/mnet.pth", None, tmp_path)
    assert path.parts[-2:] == ("retina_face", "mnet.pth")


def test_uncached_hub_file_offline_raises_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE"):
        resolve_weights("py-feat/retinaface:mobilenet0.25_Final.pth", None, tmp_path)


def test_sha256_of_reads_the_whole_file(tmp_path: Path) -> None:
    data = b"x" * (3 << 20) + b"tail"
    (tmp_path / "blob").write_bytes(data)
    assert sha256_of(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
