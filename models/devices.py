"""Which torch device a model runs on: one rule for every model and command."""

from __future__ import annotations

import torch


class DeviceUnavailableError(Exception):
    """The requested device (CUDA) is not present on this machine."""


def resolve_device(name: str, what: str = "model") -> str:
    """`auto` → `cuda` when torch sees a GPU, else `cpu`; `cuda` without a GPU is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"{what} device {name!r} requested but torch sees no CUDA GPU; use 'cpu' or 'auto'"
        )
    return name


def model_dtype(configured: str, device: str, explicit: bool) -> str:
    """The dtype a model runs in: float32 on CPU (bf16/fp16 matmuls are slow and less exact
    there) unless one was chosen explicitly; the configured dtype elsewhere."""
    if device == "cpu" and not explicit:
        return "float32"
    return configured
