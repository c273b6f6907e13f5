"""Finding model weights: a local path, or a hub `REPO:FILE` fetched once into a cache.

`resolve_weights` is shared by every model loader (RetinaFace, Face-LLaVA): it returns a
local file path, downloads from the Hugging Face hub only when the file is not cached
yet (so it works offline once cached), and checks the sha256 when one is given.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

# "owner/name:path/inside/repo.pth"; the repo part is what the hub accepts as a repo id.
_HUB_SPEC = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<file>[^:]+)$")
_HASH_CHUNK_BYTES = 1 << 20


class WeightsError(Exception):
    """Base class of every weights problem."""


class WeightsNotFoundError(WeightsError):
    """The weights are neither a local file nor obtainable from the hub (or its cache)."""


class WeightsChecksumError(WeightsError):
    """The weights file's sha256 is not the expected one."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights(
    spec: str, sha256: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """Local path of the weights named by `spec` (a path or hub `REPO:FILE`), sha256-checked.

    Raises `WeightsNotFoundError` when the file cannot be found or fetched and
    `WeightsChecksumError` when `sha256` is given and differs.
    """
    local = Path(spec).expanduser()
    if local.is_file():
        path = local
    elif match := _HUB_SPEC.match(spec):
        path = _from_hub(match["repo"], match["file"], cache_dir)
    else:
        raise WeightsNotFoundError(
            f"weights {spec!r}: no such file, and not a hub reference of the form "
            "'owner/repo:path/in/repo.pth'"
        )
    if sha256 is not None:
        actual = sha256_of(path)
        if actual.lower() != sha256.strip().lower():
            raise WeightsChecksumError(
                f"weights {path} have sha256 {actual}, expected {sha256}: the file is "
                "corrupt or a different release; replace it (or delete the cached copy "
                "so it is fetched again) or correct the expected checksum"
            )
    return path


def _from_hub(repo_id: str, filename: str, cache_dir: str | Path | None) -> Path:
    """The cached hub file, downloading it only when it is not cached yet."""
    # Imported here: the hub client is only needed for hub references.
    import huggingface_hub
    from huggingface_hub import constants as hub_constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = str(cache_dir) if cache_dir is not None else None
    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repo_id, filename, cache_dir=cache, local_files_only=True
            )
        )
    except LocalEntryNotFoundError:
        pass
    if hub_constants.HF_HUB_OFFLINE:
        raise WeightsNotFoundError(
            f"weights {repo_id}:{filename} are not in the hub cache ({cache or 'default'}) and "
            "HF_HUB_OFFLINE is set: download them once with network access, or give a "
            "local path"
        )
    log.info("weights_download", repo=repo_id, file=filename)
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, cache_dir=cache))
    except Exception as exc:  # the hub client raises many types (HTTP, OS, offline)
        raise WeightsNotFoundError(
            f"weights {repo_id}:{filename} could not be fetched from the hub "
            f"({type(exc).__name__}: {exc}); check the name and network access, or give "
            "a local path"
        ) from exc
