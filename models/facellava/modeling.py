"""Face-LLaVA on current transformers: LanguageBind towers → `mlp2x_gelu` projector → Llama.

Read top to bottom: config dataclasses, the video tower's temporal encoder layer, the
vision towers, the model. Module names follow the checkpoints (`vision_model.embeddings`,
`encoder.layers.N.temporal_attn`, `mm_projector.0`, `model.layers.N`, `lm_head`), so a
state dict maps onto them by prefix only (see `checkpoint.py`).

The towers are built only up to the layer whose output is used (hidden states index
`select_layer`, -2 in every released checkpoint): later encoder layers and the
post-LayerNorm are never built, and their weights are reported as not loaded.

API for the generation engine (shapes for the real model; `D` = LLM hidden size 4096):

- `encode_images(pixels (B, 3, H, W)) -> (B, N_img, D)`: projected image features, class
  token dropped (N_img = 256).
- `encode_videos(pixels (B, 3, T, H, W)) -> (B, T, N_frame, D)`: projected video features,
  class token kept per frame (T = 8, N_frame = 257); frame k fills the k-th sentinel.
- `image_tower_features` / `video_tower_features`: the same before projection (raw tower
  hidden states at `select_layer`), for verification.
- `embed_tokens(ids) -> (..., D)`: the LLM's token embeddings (ids must be >= 0).
- `splice_visual_features(ids (L,), visual (S, N, D)) -> (L - S + S*N, D)`: one prompt's
  input embeddings with sentinel k (id -200) replaced by `visual[k]`, the authors' way.
- `pad_embeddings(seqs, padding_side) -> (inputs_embeds, attention_mask, position_ids)`.
- `language_model`: transformers' `LlamaForCausalLM`, callable with `inputs_embeds`,
  `attention_mask`, `position_ids`, the KV cache (`cache` in transformers >= 5.2x,
  `past_key_values` before) and `use_cache`.
- `lm_forward(...) -> LanguageModelStep(logits, cache)`: that call with the cache keyword
  the installed transformers expects, so callers need not care which one it is.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal, NamedTuple

import torch
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM
from transformers.models.clip.modeling_clip import (
    CLIPAttention,
    CLIPEncoderLayer,
    CLIPVisionEmbeddings,
)

from models.facellava.prompts import IMAGE_TOKEN_INDEX

__all__ = ["IMAGE_TOKEN_INDEX", "FaceLlava", "FaceLlavaConfig", "TowerConfig"]

AttnImplementation = Literal["sdpa", "flash_attention_2", "eager"]

LLAMA_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "attention_bias",
    "mlp_bias",
    "head_dim",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "pretraining_tp",
)
"""Fields of an original `config.json` that describe the language model."""


class FaceLlavaConfigError(ValueError):
    """A configuration this implementation cannot build (unknown projector, bad layer...)."""


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------


_FIELD_CASTS: dict[str, Callable[[Any], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
}
"""How a tower config's JSON value becomes the field's type (by the field's annotation)."""

_CLIP_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
)
"""`TowerConfig` fields a transformers `CLIPVisionConfig` takes as they are."""


@dataclass(frozen=True)
class TowerConfig:
    """A LanguageBind vision tower: a CLIP ViT, with temporal blocks when `num_frames` > 1."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    add_time_attn: bool = False
    num_frames: int = 1

    @classmethod
    def from_languagebind(cls, config: Mapping[str, Any]) -> TowerConfig:
        """From a LanguageBind `config.json` (its `vision_config`), or a flat vision config."""
        vision = config.get("vision_config", config)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name in vision:
                values[field.name] = _FIELD_CASTS[str(field.type)](vision[field.name])
            elif field.default is dataclasses.MISSING:
                raise FaceLlavaConfigError(f"tower config lacks field {field.name!r}")
        return cls(**values)

    @property
    def num_patches(self) -> int:
        """Patch tokens per image (class token not counted)."""
        return (self.image_size // self.patch_size) ** 2

    def layers_to_run(self, select_layer: int) -> int:
        """Encoder layers needed for hidden states index `select_layer` (0 = embeddings)."""
        count = self.num_hidden_layers + 1 + select_layer if select_layer < 0 else select_layer
        if not 0 <= count <= self.num_hidden_layers:
            raise FaceLlavaConfigError(
                f"select_layer {select_layer} is outside a tower of {self.num_hidden_layers} layers"
            )
        return count

    def to_clip(self, num_layers: int, attn_implementation: AttnImplementation) -> CLIPVisionConfig:
        """A transformers `CLIPVisionConfig` for the first `num_layers` layers."""
        config = CLIPVisionConfig(
            **{name: getattr(self, name) for name in _CLIP_FIELDS},
            num_hidden_layers=num_layers,
            attention_dropout=0.0,
        )
        config._attn_implementation = attn_implementation
        return config


@dataclass(frozen=True)
class FaceLlavaConfig:
    """Everything needed to build the model: LLM fields, both towers, projector, selection."""

    llm: dict[str, Any]
    image_tower: TowerConfig
    video_tower: TowerConfig
    mm_hidden_size: int
    projector_type: str = "mlp2x_gelu"
    select_layer: int = -2
    select_feature: str = "patch"
    image_tower_name: str = ""
    video_tower_name: str = ""

    @classmethod
    def from_original(
        cls,
        config: Mapping[str, Any],
        image_tower: Mapping[str, Any],
        video_tower: Mapping[str, Any],
    ) -> FaceLlavaConfig:
        """From an original `config.json` (`model_type` "llava") and the towers' configs."""
        llm = {key: config[key] for key in LLAMA_CONFIG_FIELDS if key in config}
        return cls(
            llm=llm,
            image_tower=TowerConfig.from_languagebind(image_tower),
            video_tower=TowerConfig.from_languagebind(video_tower),
            mm_hidden_size=int(config.get("mm_hidden_size", 1024)),
            projector_type=str(config.get("mm_projector_type", "linear")),
            select_layer=int(config.get("mm_vision_select_layer", -2)),
            select_feature=str(config.get("mm_vision_select_feature", "patch")),
            image_tower_name=str(config.get("mm_image_tower") or ""),
            video_tower_name=str(config.get("mm_video_tower") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (stored in `facestream.json`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaceLlavaConfig:
        """Inverse of `to_dict`."""
        values = dict(data)
        values.pop("extra", None)  # an unused field that conversions before 0.2 wrote
        values["image_tower"] = TowerConfig(**values["image_tower"])
        values["video_tower"] = TowerConfig(**values["video_tower"])
        return cls(**values)

    def llama_config(self, attn_implementation: AttnImplementation) -> LlamaConfig:
        """The transformers `LlamaConfig` of the language model."""
        config = LlamaConfig(**self.llm)
        config._attn_implementation = attn_implementation
        return config

    @property
    def llm_hidden_size(self) -> int:
        """Width of the language model (projector output)."""
        return int(self.llm["hidden_size"])


def resolve_attn_implementation(
    requested: str, device: torch.device | str, dtype: torch.dtype
) -> AttnImplementation:
    """`auto` → flash-attention 2 when installed, on CUDA, in half precision; else SDPA."""
    if requested != "auto":
        return requested  # type: ignore[return-value]
    on_cuda = torch.device(device).type == "cuda"
    half = dtype in (torch.float16, torch.bfloat16)
    if on_cuda and half and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


# ---------------------------------------------------------------------------------------
# Towers
# ---------------------------------------------------------------------------------------


class TemporalEncoderLayer(CLIPEncoderLayer):
    """A LanguageBind video encoder layer: temporal block across frames, then CLIP's layer.

    Temporal block: add this layer's `temporal_embedding` (frame k gets row k), then
    `x + temporal_attn(temporal_layer_norm1(x))` where each spatial token position attends
    across the T frames of its clip.
    """

    def __init__(self, config: CLIPVisionConfig, num_frames: int) -> None:
        super().__init__(config)
        self.num_frames = num_frames
        self.temporal_embedding = nn.Parameter(torch.zeros(1, num_frames, config.hidden_size))
        self.temporal_layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.temporal_attn = CLIPAttention(config)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """(B*T, N, D) frame-major per clip → (B*T, N, D)."""
        frames = self.num_frames
        batch_frames, tokens, dim = hidden_states.shape
        clips = batch_frames // frames
        x = hidden_states.view(clips, frames, tokens, dim)
        if frames != 1:
            x = x + self.temporal_embedding[:, :frames].unsqueeze(2)
        # (B, T, N, D) → (B*N, T, D): every spatial position is one sequence over frames.
        x = x.transpose(1, 2).reshape(clips * tokens, frames, dim)
        attended, _ = self.temporal_attn(self.temporal_layer_norm1(x))
        x = x + attended
        x = x.view(clips, tokens, frames, dim).transpose(1, 2).reshape(batch_frames, tokens, dim)
        return super().forward(x, attention_mask)


class VisionEncoder(nn.Module):
    """`encoder.layers`: plain CLIP layers, or temporal ones for the video tower."""

    def __init__(self, clip_config: CLIPVisionConfig, tower: TowerConfig) -> None:
        super().__init__()
        if tower.add_time_attn:
            layers = [
                TemporalEncoderLayer(clip_config, tower.num_frames)
                for _ in range(clip_config.num_hidden_layers)
            ]
        else:
            layers = [CLIPEncoderLayer(clip_config) for _ in range(clip_config.num_hidden_layers)]
        self.layers = nn.ModuleList(layers)


class VisionTransformer(nn.Module):
    """`vision_model`: patch embeddings → pre-LayerNorm → the encoder layers that are used."""

    def __init__(self, tower: TowerConfig, num_layers: int, attn: AttnImplementation) -> None:
        super().__init__()
        clip_config = tower.to_clip(num_layers, attn)
        self.embeddings = CLIPVisionEmbeddings(clip_config)
        self.pre_layrnorm = nn.LayerNorm(tower.hidden_size, eps=tower.layer_norm_eps)
        self.encoder = VisionEncoder(clip_config, tower)

    def forward(self, pixels: torch.Tensor, keep_all: bool = False) -> list[torch.Tensor]:
        """(B', 3, H, W) → hidden states [embeddings output, after layer 1, ...].

        Only the last one unless `keep_all` (the list is large for a batch of clips).
        """
        hidden = self.pre_layrnorm(self.embeddings(pixels))
        states = [hidden]
        for layer in self.encoder.layers:
            hidden = layer(hidden, None)
            states = [*states, hidden] if keep_all else [hidden]
        return states


class VisionTower(nn.Module):
    """A LanguageBind image or video tower, truncated at the selected layer."""

    def __init__(self, tower: TowerConfig, select_layer: int, attn: AttnImplementation) -> None:
        super().__init__()
        self.config = tower
        self.num_layers = tower.layers_to_run(select_layer)
        self.vision_model = VisionTransformer(tower, self.num_layers, attn)

    def hidden_states(self, pixels: torch.Tensor, keep_all: bool = True) -> list[torch.Tensor]:
        """Hidden states 0..num_layers (only the last unless `keep_all`).

        Image input (B, 3, H, W) gives (B, N, D) each; video (B, 3, T, H, W) gives (B, T, N, D).
        """
        dtype = self.vision_model.pre_layrnorm.weight.dtype
        if pixels.dim() == 5:
            clips, channels, frames, height, width = pixels.shape
            if frames != self.config.num_frames:
                raise ValueError(f"video tower takes {self.config.num_frames} frames, got {frames}")
            flat = pixels.transpose(1, 2).reshape(clips * frames, channels, height, width)
            states = self.vision_model(flat.to(dtype), keep_all)
            return [state.view(clips, frames, *state.shape[1:]) for state in states]
        if pixels.dim() != 4:
            raise ValueError(f"expected (B, 3, H, W) or (B, 3, T, H, W), got {tuple(pixels.shape)}")
        return self.vision_model(pixels.to(dtype), keep_all)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Hidden states at the selected layer (all tokens, class token included)."""
        return self.hidden_states(pixels, keep_all=False)[-1]


def build_projector(projector_type: str, in_features: int, out_features: int) -> nn.Module:
    """`mm_projector`: `linear`, or `mlpNx_gelu` (Linear, then (GELU, Linear) N-1 times)."""
    if projector_type == "linear":
        return nn.Linear(in_features, out_features)
    if projector_type.startswith("mlp") and projector_type.endswith("x_gelu"):
        depth = int(projector_type[3 : -len("x_gelu")])
        modules: list[nn.Module] = [nn.Linear(in_features, out_features)]
        for _ in range(depth - 1):
            modules += [nn.GELU(), nn.Linear(out_features, out_features)]
        return nn.Sequential(*modules)
    raise FaceLlavaConfigError(f"unknown mm_projector_type {projector_type!r}")


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class LanguageModelStep(NamedTuple):
    """Logits of one LLM call and its KV cache (None when `use_cache` was False)."""

    logits: torch.Tensor
    cache: Any


@lru_cache(maxsize=1)
def _cache_keyword() -> str:
    """`cache` on current transformers 5.x, `past_key_values` on earlier releases."""
    parameters = inspect.signature(LlamaForCausalLM.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class FaceLlava(nn.Module):
    """Face-LLaVA: image and video towers, a shared projector, and a Llama language model."""

    def __init__(self, config: FaceLlavaConfig, attn_implementation: AttnImplementation) -> None:
        super().__init__()
        if config.select_feature not in ("patch", "cls_patch"):
            raise FaceLlavaConfigError(
                f"unknown mm_vision_select_feature {config.select_feature!r}"
            )
        self.config = config
        self.attn_implementation = attn_implementation
        self.image_tower = VisionTower(config.image_tower, config.select_layer, attn_implementation)
        self.video_tower = VisionTower(config.video_tower, config.select_layer, attn_implementation)
        self.mm_projector = build_projector(
            config.projector_type, config.mm_hidden_size, config.llm_hidden_size
        )
        self.language_model = LlamaForCausalLM(config.llama_config(attn_implementation))

    # -- visual features ---------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype."""
        return next(self.mm_projector.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Parameter device."""
        return next(self.parameters()).device

    def image_tower_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, N_img, D_tower): selected hidden states, class token dropped."""
        features = self.image_tower(pixels)
        return features[:, 1:] if self.config.select_feature == "patch" else features

    def video_tower_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) → (B, T, N_frame, D_tower): class token kept per frame."""
        return self.video_tower(pixels)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, N_img, D_llm) projected image features."""
        return self.mm_projector(self.image_tower_features(pixels))

    def encode_videos(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) → (B, T, N_frame, D_llm) projected video features."""
        return self.mm_projector(self.video_tower_features(pixels))

    # -- text and splicing -------------------------------------------------------------

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (no sentinels) → LLM input embeddings."""
        return self.language_model.get_input_embeddings()(ids)

    def splice_visual_features(self, ids: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """One prompt (L,) with S sentinels, features (S, N, D) → embeddings (L - S + S*N, D).

        As the authors do: embed the text between sentinels and put `visual[k]` in place
        of the k-th sentinel.
        """
        if ids.dim() != 1:
            raise ValueError(f"expected one prompt's ids (L,), got {tuple(ids.shape)}")
        sentinel_at = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
        if len(sentinel_at) != visual.shape[0]:
            raise ValueError(
                f"prompt has {len(sentinel_at)} visual sentinels but {visual.shape[0]} "
                "feature blocks were given"
            )
        text = self.embed_tokens(ids.clamp(min=0))
        pieces: list[torch.Tensor] = []
        start = 0
        for block, position in enumerate(sentinel_at):
            pieces.append(text[start:position])
            pieces.append(visual[block].to(text.dtype))
            start = position + 1
        pieces.append(text[start:])
        return torch.cat(pieces, dim=0)

    def lm_forward(
        self,
        *,
        inputs_embeds: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = True,
        logits_to_keep: int = 0,
    ) -> LanguageModelStep:
        """One language-model call (prefill or decode); `logits_to_keep=1` keeps the last."""
        out = self.language_model(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **{_cache_keyword(): cache},
        )
        new_cache = getattr(out, "cache", None) if _cache_keyword() == "cache" else None
        if new_cache is None and use_cache:
            new_cache = out.past_key_values
        return LanguageModelStep(out.logits, new_cache)

    @staticmethod
    def pad_embeddings(
        sequences: Sequence[torch.Tensor], padding_side: Literal["left", "right"] = "left"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L_i, D) sequences → `inputs_embeds` (B, L, D), `attention_mask`, `position_ids`."""
        if not sequences:
            raise ValueError("no sequences to pad")
        length = max(seq.shape[0] for seq in sequences)
        first = sequences[0]
        embeds = first.new_zeros((len(sequences), length, first.shape[-1]))
        mask = torch.zeros((len(sequences), length), dtype=torch.long, device=first.device)
        for row, seq in enumerate(sequences):
            span = (
                slice(length - seq.shape[0], length)
                if padding_side == "left"
                else slice(0, seq.shape[0])
            )
            embeds[row, span] = seq
            mask[row, span] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        return embeds, mask, position_ids

    def prepare_inputs_embeds(
        self,
        input_ids: Sequence[torch.Tensor],
        visual: Sequence[torch.Tensor],
        padding_side: Literal["left", "right"] = "left",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Splice and pad prompts: `(inputs_embeds, attention_mask, position_ids)`."""
        spliced = [
            self.splice_visual_features(ids, feats)
            for ids, feats in zip(input_ids, visual, strict=True)
        ]
        return self.pad_embeddings(spliced, padding_side)

    def forward(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None = None,
        videos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, L', V) of unpadded prompts with images (1 sentinel) or videos (T)."""
        if images is not None:
            visual = list(self.encode_images(images).unsqueeze(1))
        elif videos is not None:
            visual = list(self.encode_videos(videos))
        else:
            visual = [torch.empty(0, 0, self.config.llm_hidden_size)] * input_ids.shape[0]
        embeds, mask, positions = self.prepare_inputs_embeds(list(input_ids), visual, "right")
        return self.lm_forward(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
        ).logits


def reset_non_persistent_buffers(model: FaceLlava) -> None:
    """Recompute buffers that state dicts do not hold (after building on the meta device)."""
    for module in model.modules():
        if isinstance(module, CLIPVisionEmbeddings):
            module.position_ids = torch.arange(
                module.num_positions, device=module.position_embedding.weight.device
            ).expand((1, -1))
        elif hasattr(module, "inv_freq") and hasattr(module, "rope_type"):
            device = module.inv_freq.device
            init_fn = (
                module.compute_default_rope_parameters
                if module.rope_type == "default"
                else _rope_init_fn(module.rope_type)
            )
            inv_freq, module.attention_scaling = init_fn(module.config, device=device)
            module.inv_freq = inv_freq.to(device=device, dtype=torch.float32)
            module.original_inv_freq = module.inv_freq.clone()


def _rope_init_fn(rope_type: str):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return ROPE_INIT_FUNCTIONS[rope_type]
