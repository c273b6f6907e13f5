"""Finding model weights: a local path, or a hub `REPO:FILE` fetched once into a cache.

`resolve_weights` is shared by every model loader (RetinaFace, Face-LLaVA): it returns a
local file path, downloads from the Hugging Face hub only when the file is not cached
yet (so it works offline once cached), and checks the sha256 when one is given.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import warnings
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

log = structlog.get_logger(__name__)

# "owner/name:path/inside/repo.pth"; the repo part is what the hub accepts as a repo id.
_HUB_SPEC = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<file>[^:]+)$")
_HASH_CHUNK_BYTES = 1 << 20
HUB_PROBE_TIMEOUT_S = 3.0
"""How long the reachability check of the hub waits before a download is attempted."""
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")


class WeightsError(Exception):
    """Base class of every weights problem."""


class WeightsNotFoundError(WeightsError):
    """The weights are neither a local file nor obtainable from the hub (or its cache)."""


class WeightsChecksumError(WeightsError):
    """The weights file's sha256 is not the expected one."""


class WeightsFormatError(WeightsError):
    """The file is not a PyTorch weights file of plain tensors."""


def load_torch_weights(path: Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)` on CPU, with an error that says what the file
    should be. Never falls back to unpickling arbitrary objects (code execution)."""
    import torch

    try:
        with warnings.catch_warnings():  # torch's pickle-protocol note is not for users
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, KeyError, ...
        # torch.save files are zip archives; the unpickler's refusal only means something
        # for them (for any other file it is just where reading failed).
        if zipfile.is_zipfile(path) and "weights only" in str(exc).lower():
            why = "it holds pickled Python objects, not only tensors (never loaded: unsafe)"
        else:
            why = f"it is not a PyTorch weights file ({type(exc).__name__})"
        raise WeightsFormatError(
            f"{path} cannot be read as {what}: {why}; give the .pth state dict file"
        ) from None


def hub_unreachable_reason(endpoint: str | None = None) -> str | None:
    """Why the Hugging Face hub cannot be reached from here (name lookup or TCP connect,
    at most `HUB_PROBE_TIMEOUT_S`), or None when it answers or a proxy is configured (the
    proxy decides). Lets a missing download fail in seconds instead of after the hub
    client's retries (≈ 25 s)."""
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    if endpoint is None:
        from huggingface_hub import constants as hub_constants

        endpoint = hub_constants.ENDPOINT
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{host}:{port} is unreachable ({exc.strerror or type(exc).__name__})"


def hub_unavailable_hint(what: str, cache: str | None) -> str | None:
    """A one-line refusal when `what` is not cached and the hub cannot give it now (offline
    mode, or unreachable); None when a download may be tried."""
    from huggingface_hub import constants as hub_constants

    where = f"the hub cache ({cache or 'default'})"
    if hub_constants.HF_HUB_OFFLINE:
        return (
            f"{what} is not in {where} and HF_HUB_OFFLINE is set: download it once with "
            "network access, or give a local path"
        )
    reason = hub_unreachable_reason()
    if reason is not None:
        return (
            f"{what} is not in {where} and the hub {reason}: download it once where the "
            "network allows (same cache), or give a local path"
        )
    return None


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


def cached_weights(spec: str, cache_dir: str | Path | None = None) -> Path | None:
    """The weights named by `spec` when they are here already (a local file, or a hub file
    in the cache), without any network access; None otherwise."""
    local = Path(spec).expanduser()
    if local.is_file():
        return local
    match = _HUB_SPEC.match(spec)
    if match is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        match["repo"], match["file"], cache_dir=str(cache_dir) if cache_dir else None
    )
    return Path(found) if isinstance(found, str) else None


def _from_hub(repo_id: str, filename: str, cache_dir: str | Path | None) -> Path:
    """The cached hub file, downloading it only when it is not cached yet."""
    # Imported here: the hub client is only needed for hub references.
    import huggingface_hub
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
    refusal = hub_unavailable_hint(f"weights {repo_id}:{filename}", cache)
    if refusal is not None:
        raise WeightsNotFoundError(refusal)
    log.info("weights_download", repo=repo_id, file=filename)
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, cache_dir=cache))
    except Exception as exc:  # the hub client raises many types (HTTP, OS, offline)
        raise WeightsNotFoundError(
            f"weights {repo_id}:{filename} could not be fetched from the hub "
            f"({type(exc).__name__}: {exc}); check the name and network access, or give "
            "a local path"
        ) from exc
