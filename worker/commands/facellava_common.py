"""Shared by `facestream ask` and `facestream bench model`: model options on the CLI.

Defaults come from `Settings().model` (env `FACESTREAM_MODEL__*`); flags override them.
Heavy imports happen inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.facellava.checkpoint import LoadedModel
    from models.facellava.options import ModelOptions


def add_model_arguments(parser: argparse.ArgumentParser, *, model_help: str | None = None) -> None:
    """`--model --device --dtype --max-new-tokens --hf-cache --offline --log-*` flags."""
    parser.add_argument(
        "--model",
        default=None,
        help=model_help or "Checkpoint folder or hub id (default: FACESTREAM_MODEL__MODEL).",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    parser.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        default=None,
        help="Default: float32 on CPU, the configured dtype (bfloat16) on CUDA.",
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="Answer length cap.")
    parser.add_argument(
        "--hf-cache", default=None, help="Hugging Face hub cache folder (towers, hub ids)."
    )
    parser.add_argument(
        "--offline", action="store_true", default=None, help="Use only the local HF cache."
    )
    parser.add_argument("--log-format", choices=("json", "console"), default="console")
    parser.add_argument("--log-level", default="warning")


def model_options(args: argparse.Namespace) -> ModelOptions:
    """`Settings().model` with the command-line flags applied."""
    from models.overrides import with_overrides
    from worker.settings import Settings

    options = Settings().model
    overrides = {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "max_new_tokens": args.max_new_tokens,
        "hf_cache_dir": args.hf_cache,
        "hf_offline": args.offline,
    }
    return with_overrides(options, {k: v for k, v in overrides.items() if v is not None})


def resolve_device(name: str) -> str:
    """`auto` → `cuda` when a GPU is visible, else `cpu`; exits when CUDA is asked for
    but absent."""
    from models.devices import DeviceUnavailableError
    from models.devices import resolve_device as resolve

    try:
        return resolve(name)
    except DeviceUnavailableError as exc:
        raise SystemExit(f"--device: {exc}") from None


def resolve_dtype(args: argparse.Namespace, options: ModelOptions, device: str) -> str:
    """The explicit `--dtype`, else the one device/dtype rule (`models.devices.model_dtype`:
    float32 on CPU unless FACESTREAM_MODEL__DTYPE is set)."""
    from models.devices import model_dtype

    if args.dtype is not None:
        return args.dtype
    return model_dtype(options.dtype, device, "dtype" in options.model_fields_set)


def load_for_cli(args: argparse.Namespace) -> tuple[LoadedModel, ModelOptions, str]:
    """Load the model the flags name: (loaded model, effective options, device)."""
    from models.facellava.checkpoint import load_from_options
    from models.overrides import with_overrides

    options = model_options(args)
    device = resolve_device(options.device)
    options = with_overrides(options, {"dtype": resolve_dtype(args, options, device)})
    return load_from_options(options, device=device), options, device
