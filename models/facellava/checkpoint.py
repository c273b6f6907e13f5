"""Loading Face-LLaVA checkpoints (the authors' original format, or ours) and converting.

Original format (`chaubeyG/FaceLLaVA`): `config.json` with `model_type` "llava", `.bin` or
safetensors weights (sharded with an index, or one file), the Llama `tokenizer.model`.
The towers come from their own repos named in the config (`mm_image_tower`,
`mm_video_tower`: hub ids resolved through the Hugging Face cache, or local folders), as
the authors' loader does; the tower copies some checkpoints hold
(`model.image_tower.image_tower.*`) are used instead only when a tower repo has no weights
(or `tower_weights="checkpoint"`).

Our format (written by `convert_checkpoint`): `facestream.json` (the whole
`FaceLlavaConfig`, dtype, source), safetensors shards keyed by our parameter names, the
tokenizer files. `load_model` detects which format a folder holds.

Every load returns a `LoadReport`: keys it did not use are listed and logged as a warning;
a model parameter that no source provides is a `MissingWeightsError`.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog
import torch

from models.devices import model_dtype, resolve_device
from models.facellava.modeling import (
    FaceLlava,
    FaceLlavaConfig,
    reset_non_persistent_buffers,
    resolve_attn_implementation,
)
from models.facellava.options import ModelOptions
from models.facellava.prompts import PromptTokenizer

log = structlog.get_logger(__name__)

DEFAULT_MODEL_ID = "chaubeyG/FaceLLaVA"
OUR_CONFIG_FILE = "facestream.json"
OUR_FORMAT_NAME = "facestream-facellava"
OUR_FORMAT_VERSION = 1
OUR_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "added_tokens.json",
    "generation_config.json",
)
DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
TowerWeights = Literal["auto", "tower_repo", "checkpoint"]
CheckpointFormat = Literal["original", "facestream"]
_TOWER_COPY_PREFIX = {
    "image_tower": "model.image_tower.image_tower.",
    "video_tower": "model.video_tower.video_tower.",
}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as Face-LLaVA."""


class CheckpointNotFoundError(CheckpointError):
    """The checkpoint folder or hub repo (or a tower) is not available."""


class MissingWeightsError(CheckpointError):
    """Model parameters that no checkpoint file provides."""


@dataclass(frozen=True)
class LoadReport:
    """What a load used and what it left out."""

    source: str
    folder: str
    format: CheckpointFormat
    tower_weights: dict[str, str]
    unused_checkpoint_keys: tuple[str, ...]
    unused_tower_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    loaded_tensors: int = 0
    towers_from_checkpoint: frozenset[str] = frozenset()

    @property
    def unused_groups(self) -> dict[str, int]:
        """Unused checkpoint keys counted by the reason they are left out."""
        return group_keys(self.unused_checkpoint_keys, self.towers_from_checkpoint)

    def summary(self) -> str:
        """A few lines for logs and the CLI: counts and grouped unused keys."""
        lines = [
            f"loaded {self.loaded_tensors} tensors from {self.format} checkpoint {self.folder}",
            f"tower weights: {self.tower_weights}",
        ]
        if self.unused_checkpoint_keys:
            lines.append(
                f"checkpoint keys not used ({len(self.unused_checkpoint_keys)}): "
                + "; ".join(f"{k}: {n}" for k, n in self.unused_groups.items())
            )
        for tower, keys in self.unused_tower_keys.items():
            if keys:
                lines.append(
                    f"{tower} repo keys not loaded ({len(keys)}): "
                    + "; ".join(f"{k}: {n}" for k, n in group_keys(keys).items())
                )
        return "\n".join(lines)


@dataclass
class LoadedModel:
    """A ready model with its tokenizer, configuration and load report."""

    model: FaceLlava
    config: FaceLlavaConfig
    tokenizer: PromptTokenizer
    folder: Path
    report: LoadReport
    eos_token_id: int


def key_category(key: str, towers_from_checkpoint: frozenset[str] = frozenset()) -> str:
    """Why a checkpoint or tower key is typically left out, as a short readable label."""
    if key.endswith("rotary_emb.inv_freq"):
        return "rotary inv_freq buffers (recomputed)"
    for tower, prefix in _TOWER_COPY_PREFIX.items():
        if key.startswith(prefix):
            if tower in towers_from_checkpoint:
                return f"{prefix}* layers after select_layer and post_layernorm (never run)"
            return f"{prefix}* (tower copy; tower loaded from its repo)"
    if "landmark" in key:
        return "landmark branch (unused by the released inference)"
    if key.startswith(("text_model.", "text_projection", "visual_projection", "logit_scale")):
        return "CLIP text model and projection heads"
    if key.startswith("vision_model."):
        return "vision layers after select_layer and post_layernorm (never run)"
    return ".".join("N" if part.isdigit() else part for part in key.split(".")[:3])


def group_keys(
    keys: tuple[str, ...] | list[str], towers_from_checkpoint: frozenset[str] = frozenset()
) -> dict[str, int]:
    """Count keys by `key_category`."""
    groups: dict[str, int] = {}
    for key in keys:
        category = key_category(key, towers_from_checkpoint)
        groups[category] = groups.get(category, 0) + 1
    return groups


# ---------------------------------------------------------------------------------------
# Finding files
# ---------------------------------------------------------------------------------------


def resolve_folder(
    source: str | Path,
    *,
    cache_dir: str | Path | None = None,
    offline: bool = False,
    allow_patterns: list[str] | None = None,
) -> Path:
    """A local folder as is; otherwise a hub repo id fetched into (or found in) the HF cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(source).startswith((".", "/")) or str(source).count("/") != 1:
        raise CheckpointNotFoundError(
            f"{source} is neither a checkpoint folder nor a hub repo id (owner/name): "
            "check the path, or give the folder `facestream model convert` wrote"
        )
    from huggingface_hub import constants as hub_constants
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    from models.weights import hub_unreachable_reason

    where = f"the HF cache {cache_dir or hub_constants.HF_HUB_CACHE}"
    offline = offline or bool(hub_constants.HF_HUB_OFFLINE)
    # An unreachable hub: take the cache or fail now, not after the hub client's retries.
    unreachable = None if offline else hub_unreachable_reason()
    try:
        folder = snapshot_download(
            str(source),
            cache_dir=str(cache_dir) if cache_dir else None,
            local_files_only=offline or unreachable is not None,
            allow_patterns=allow_patterns,
        )
    except LocalEntryNotFoundError as exc:
        if offline:
            why = "offline mode is on (FACESTREAM_MODEL__HF_OFFLINE, --offline or HF_HUB_OFFLINE)"
        elif unreachable is not None:
            why = f"the hub {unreachable}"
        else:
            why = f"the hub did not give it ({' '.join(str(exc).split())})"
        raise CheckpointNotFoundError(
            f"hub repo {source} is not in {where} and {why}: fetch it once with network "
            "access into the same cache, or give a local folder"
        ) from exc
    except (HFValidationError, OSError) as exc:
        raise CheckpointNotFoundError(
            f"cannot get hub repo {source} ({where}): {type(exc).__name__}: {exc}"
        ) from exc
    return Path(str(folder))


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder: from an index, one file, or shards; safetensors first."""
    for index_name in (OUR_INDEX_FILE, "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / name for name in names]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found
    return []


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in the files, one file in memory at a time."""
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                    yield name, handle.get_tensor(name)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) torch.save files cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
            yield from state.items()
            del state


def detect_format(folder: Path) -> CheckpointFormat:
    """`facestream` when the folder has our `facestream.json`, `original` for a llava config."""
    if (folder / OUR_CONFIG_FILE).is_file():
        return "facestream"
    config_file = folder / "config.json"
    if config_file.is_file():
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type in ("llava", "llava_llama"):
            return "original"
        raise CheckpointError(
            f"{config_file} has model_type {model_type!r}, not an original Face-LLaVA 'llava'"
        )
    raise CheckpointError(f"{folder} has neither {OUR_CONFIG_FILE} nor a llava config.json")


# ---------------------------------------------------------------------------------------
# Building and filling
# ---------------------------------------------------------------------------------------


def build_empty_model(
    config: FaceLlavaConfig, dtype: torch.dtype, device: str | torch.device, attn: str
) -> FaceLlava:
    """The model with uninitialised parameters on `device` (no random init of 7B weights)."""
    with torch.device("meta"):
        model = FaceLlava(config, resolve_attn_implementation(attn, device, dtype))
    model = model.to(dtype).to_empty(device=device)
    # `to_empty` gives every module its own new tensor, which unties tied embeddings.
    language_model = model.language_model
    if language_model.config.tie_word_embeddings:
        language_model.get_output_embeddings().weight = language_model.get_input_embeddings().weight
    reset_non_persistent_buffers(model)
    return model.eval().requires_grad_(False)


class _Filler:
    """Copies named tensors into a model's parameters and remembers what it filled."""

    def __init__(self, model: FaceLlava) -> None:
        self.params = dict(model.named_parameters())
        self.filled: set[str] = set()

    def put(self, name: str, tensor: torch.Tensor, origin: str) -> bool:
        """Copy into parameter `name`; False when the model has no such parameter."""
        param = self.params.get(name)
        if param is None:
            return False
        if tuple(param.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{origin}: shape {tuple(tensor.shape)} does not fit {name} {tuple(param.shape)}"
            )
        with torch.no_grad():
            param.copy_(tensor)
        self.filled.add(name)
        return True

    def check_complete(self, where: str) -> None:
        """Raise `MissingWeightsError` listing every parameter nothing filled."""
        missing = sorted(set(self.params) - self.filled)
        if missing:
            raise MissingWeightsError(
                f"{len(missing)} model parameters are missing from {where}: "
                + ", ".join(missing[:20])
                + (" ..." if len(missing) > 20 else "")
            )


def _original_key_to_ours(key: str, towers_from_checkpoint: set[str]) -> str | None:
    for tower, prefix in _TOWER_COPY_PREFIX.items():
        if key.startswith(prefix):
            if tower not in towers_from_checkpoint:
                return None
            return f"{tower}.vision_model.{key[len(prefix) :]}"
    if key.startswith("model.mm_projector."):
        return key[len("model.") :]
    if key.startswith(("model.", "lm_head.")):
        return f"language_model.{key}"
    return None


def _resolve_tower(
    name: str, checkpoint_folder: Path, cache_dir: str | Path | None, offline: bool, want: str
) -> tuple[dict[str, Any], list[Path]]:
    """A tower's LanguageBind config and (unless `want` is checkpoint) its weight files."""
    if not name:
        raise CheckpointError("config.json names no mm_image_tower / mm_video_tower")
    local = Path(name).expanduser()
    if not local.is_dir() and (checkpoint_folder / name).is_dir():
        local = checkpoint_folder / name
    patterns = ["config.json"] if want == "checkpoint" else ["*.json", "*.bin", "*.safetensors"]
    try:
        folder = (
            local
            if local.is_dir()
            else resolve_folder(name, cache_dir=cache_dir, offline=offline, allow_patterns=patterns)
        )
    except CheckpointNotFoundError as exc:
        if want != "checkpoint":
            raise
        raise CheckpointNotFoundError(
            f"tower {name}: tower_weights=checkpoint takes the weights from the checkpoint's "
            f"tower copies, but the tower's config.json still comes from its repo, and {exc}"
        ) from exc
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointNotFoundError(f"tower {name}: no config.json in {folder}")
    files = [] if want == "checkpoint" else weight_files(folder)
    return json.loads(config_file.read_text()), files


def _load_original(
    folder: Path,
    source: str,
    *,
    dtype: torch.dtype,
    device: str | torch.device,
    attn: str,
    cache_dir: str | Path | None,
    offline: bool,
    tower_weights: TowerWeights,
) -> tuple[FaceLlava, FaceLlavaConfig, LoadReport]:
    raw = json.loads((folder / "config.json").read_text())
    files = weight_files(folder)
    if not files:
        raise CheckpointNotFoundError(f"no weight files (.bin / .safetensors) in {folder}")
    tower_sources = {
        "image_tower": raw.get("mm_image_tower") or "",
        "video_tower": raw.get("mm_video_tower") or "",
    }
    tower_configs: dict[str, dict[str, Any]] = {}
    tower_files: dict[str, list[Path]] = {}
    for tower, name in tower_sources.items():
        tower_configs[tower], tower_files[tower] = _resolve_tower(
            name, folder, cache_dir, offline, tower_weights
        )
        if tower_weights == "tower_repo" and not tower_files[tower]:
            raise CheckpointNotFoundError(f"tower {name} has no weight files")
    config = FaceLlavaConfig.from_original(
        raw, tower_configs["image_tower"], tower_configs["video_tower"]
    )
    model = build_empty_model(config, dtype, device, attn)
    filler = _Filler(model)

    weights_from: dict[str, str] = {}
    unused_tower: dict[str, tuple[str, ...]] = {}
    for tower, tfiles in tower_files.items():
        if not tfiles:
            continue
        weights_from[tower] = f"{tower_sources[tower]} ({tfiles[0].parent})"
        unused = [
            key
            for key, tensor in iter_tensors(tfiles)
            if not (
                key.startswith("vision_model.")
                and filler.put(f"{tower}.{key}", tensor, f"{tower_sources[tower]}:{key}")
            )
        ]
        unused_tower[tower] = tuple(unused)
    from_checkpoint = {tower for tower in tower_files if tower not in weights_from}
    for tower in from_checkpoint:
        weights_from[tower] = f"checkpoint copy ({_TOWER_COPY_PREFIX[tower]}*)"

    unused_checkpoint: list[str] = []
    for key, tensor in iter_tensors(files):
        ours = _original_key_to_ours(key, from_checkpoint)
        if ours is None or not filler.put(ours, tensor, f"{folder.name}:{key}"):
            unused_checkpoint.append(key)
    filler.check_complete(f"{source} (and its towers {list(tower_sources.values())})")
    report = LoadReport(
        source=source,
        folder=str(folder),
        format="original",
        tower_weights=weights_from,
        unused_checkpoint_keys=tuple(unused_checkpoint),
        unused_tower_keys=unused_tower,
        loaded_tensors=len(filler.filled),
        towers_from_checkpoint=frozenset(from_checkpoint),
    )
    return model, config, report


def _load_ours(
    folder: Path, source: str, *, dtype: torch.dtype, device: str | torch.device, attn: str
) -> tuple[FaceLlava, FaceLlavaConfig, LoadReport]:
    meta = json.loads((folder / OUR_CONFIG_FILE).read_text())
    if meta.get("format") != OUR_FORMAT_NAME or meta.get("format_version") != OUR_FORMAT_VERSION:
        raise CheckpointError(
            f"{folder / OUR_CONFIG_FILE} is format {meta.get('format')} "
            f"v{meta.get('format_version')}; this build reads {OUR_FORMAT_NAME} "
            f"v{OUR_FORMAT_VERSION} (re-run `facestream model convert`)"
        )
    config = FaceLlavaConfig.from_dict(meta["config"])
    model = build_empty_model(config, dtype, device, attn)
    filler = _Filler(model)
    files = weight_files(folder)
    unused = [key for key, tensor in iter_tensors(files) if not filler.put(key, tensor, key)]
    filler.check_complete(str(folder))
    report = LoadReport(
        source=source,
        folder=str(folder),
        format="facestream",
        tower_weights={"image_tower": "converted", "video_tower": "converted"},
        unused_checkpoint_keys=tuple(unused),
        loaded_tensors=len(filler.filled),
    )
    return model, config, report


def load_model(
    source: str | Path = DEFAULT_MODEL_ID,
    *,
    dtype: torch.dtype | str = torch.bfloat16,
    device: str | torch.device = "cpu",
    attn_implementation: str = "auto",
    cache_dir: str | Path | None = None,
    offline: bool = False,
    tower_weights: TowerWeights = "auto",
) -> LoadedModel:
    """Load Face-LLaVA from a folder or hub id, original format or ours (auto-detected)."""
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    folder = resolve_folder(
        source,
        cache_dir=cache_dir,
        offline=offline,
        allow_patterns=["*.json", "*.bin", "*.safetensors", "tokenizer.model"],
    )
    fmt = detect_format(folder)
    load = (
        _load_ours
        if fmt == "facestream"
        else functools.partial(
            _load_original, cache_dir=cache_dir, offline=offline, tower_weights=tower_weights
        )
    )
    model, config, report = load(
        folder, str(source), dtype=torch_dtype, device=device, attn=attn_implementation
    )
    if report.unused_checkpoint_keys:
        log.warning(
            "checkpoint keys not used",
            count=len(report.unused_checkpoint_keys),
            groups=report.unused_groups,
        )
        log.debug("checkpoint keys not used, in full", keys=list(report.unused_checkpoint_keys))
    for tower, keys in report.unused_tower_keys.items():
        log.info(
            "tower repo keys not loaded", tower=tower, count=len(keys), groups=group_keys(keys)
        )
    log.info(
        "model loaded",
        folder=str(folder),
        format=fmt,
        dtype=str(torch_dtype),
        attn=model.attn_implementation,
        tower_weights=report.tower_weights,
    )
    generation = folder / "generation_config.json"
    eos = json.loads(generation.read_text()).get("eos_token_id") if generation.is_file() else None
    tokenizer = PromptTokenizer(folder)
    eos_id = int(eos[0] if isinstance(eos, list) else eos) if eos is not None else tokenizer.eos_id
    return LoadedModel(model, config, tokenizer, folder, report, eos_token_id=eos_id)


def check_model_source(options: ModelOptions) -> Path:
    """Cheap checks before a long load: the folder (or the hub repo's config, from the cache
    or, when reachable, the hub) exists and holds a known format. Raises `CheckpointError`."""
    folder = resolve_folder(
        options.model,
        cache_dir=options.hf_cache_dir,
        offline=options.hf_offline,
        allow_patterns=["config.json", OUR_CONFIG_FILE],
    )
    detect_format(folder)
    return folder


def load_from_options(options: ModelOptions, device: str | None = None) -> LoadedModel:
    """`load_model` with the knobs of a `ModelOptions` (device `auto` → CUDA when present;
    on CPU float32 unless the options set a dtype explicitly, see `model_dtype`)."""
    chosen = resolve_device(device or options.device)
    return load_model(
        options.model,
        dtype=model_dtype(options.dtype, chosen, "dtype" in options.model_fields_set),
        device=chosen,
        attn_implementation=options.attn_implementation,
        cache_dir=options.hf_cache_dir,
        offline=options.hf_offline,
        tower_weights=options.tower_weights,
    )


# ---------------------------------------------------------------------------------------
# Converting
# ---------------------------------------------------------------------------------------


def save_converted(
    loaded: LoadedModel, destination: str | Path, max_shard_bytes: int = 4 * 1024**3
) -> Path:
    """Write `loaded` in our format: safetensors shards, index, `facestream.json`, tokenizer."""
    from safetensors.torch import save_file

    dst = Path(destination)
    if dst.exists() and any(dst.iterdir()):
        raise CheckpointError(f"destination {dst} is not empty; pick a new folder")
    dst.mkdir(parents=True, exist_ok=True)
    state = {name: p.detach().cpu().contiguous() for name, p in loaded.model.named_parameters()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(dst / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file_name))
    (dst / OUR_INDEX_FILE).write_text(json.dumps({"weight_map": weight_map}, indent=1))
    copied = []
    for name in TOKENIZER_FILES:
        if (loaded.folder / name).is_file():
            shutil.copyfile(loaded.folder / name, dst / name)
            copied.append(name)
    dtype = str(loaded.model.dtype).removeprefix("torch.")
    meta = {
        "format": OUR_FORMAT_NAME,
        "format_version": OUR_FORMAT_VERSION,
        "dtype": dtype,
        "source": loaded.report.source,
        "tower_weights": loaded.report.tower_weights,
        "tokenizer_files": copied,
        "config": loaded.config.to_dict(),
    }
    (dst / OUR_CONFIG_FILE).write_text(json.dumps(meta, indent=1))
    return dst


def convert_checkpoint(
    source: str | Path,
    destination: str | Path,
    *,
    dtype: str = "bfloat16",
    cache_dir: str | Path | None = None,
    offline: bool = False,
    tower_weights: TowerWeights = "auto",
) -> LoadReport:
    """Load `source` (either format) and write it to `destination` in our format."""
    loaded = load_model(
        source,
        dtype=dtype,
        device="cpu",
        attn_implementation="sdpa",
        cache_dir=cache_dir,
        offline=offline,
        tower_weights=tower_weights,
    )
    save_converted(loaded, destination)
    return loaded.report
