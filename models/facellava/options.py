"""`ModelOptions`: which Face-LLaVA checkpoint to load, how, and how to generate."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelOptions(BaseModel):
    """Face-LLaVA loading and generation knobs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        "chaubeyG/FaceLLaVA",
        description="Checkpoint: hub id, original-format folder, or our converted folder.",
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16",
        description="Weight/activation dtype; on CPU float32 unless this is set explicitly.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to run.")
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        "auto", description="auto = flash-attention 2 when installed on CUDA, else SDPA."
    )
    hf_offline: bool = Field(False, description="Never touch the network for towers/tokenizer.")
    hf_cache_dir: str | None = Field(
        None, description="Hugging Face hub cache folder (None = HF_HUB_CACHE / the default)."
    )
    tower_weights: Literal["auto", "tower_repo", "checkpoint"] = Field(
        "auto",
        description=(
            "Original checkpoints: tower weights from the tower repos named in config.json "
            "(tower_repo), from the tower copies inside the checkpoint (checkpoint), or repos "
            "when they hold weights, else copies (auto)."
        ),
    )
    max_new_tokens: int = Field(48, ge=1, le=1024, description="Answer length cap (tokens).")
    max_batch_clips: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description=(
            "Most clips/images in one tower batch (admitted per engine step); auto = as many "
            "as fit in 10% of the free device memory (max 32)."
        ),
    )
    engine_visuals: int | Literal["auto"] = Field(
        "auto",
        description=(
            "Clips and images (each) the engine holds in preallocated KV slots at once; "
            "auto = as many as fit in kv_memory_fraction of the free device memory (max 128)."
        ),
    )
    kv_memory_fraction: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Share of the device memory free at engine start that auto KV slots may use.",
    )
    cuda_graphs: bool = Field(
        False,
        description=(
            "Capture the decode step as CUDA graphs per slot bucket (CUDA only; each graph is "
            "checked against the eager step when captured)."
        ),
    )
    fp8: Literal["off", "weights", "weights_kv"] = Field(
        "off",
        description=(
            "FP8 language-model weights (and KV cache) on Hopper GPUs (compute capability 9.0+); "
            "refused elsewhere; needs dtype bfloat16."
        ),
    )

    @model_validator(mode="after")
    def _fp8_needs_bfloat16(self) -> ModelOptions:
        # Row-wise scaled FP8 matmuls (torch._scaled_mm) write bfloat16 only: refuse the
        # combination here instead of failing at the first forward on the GPU.
        if self.fp8 != "off" and self.dtype != "bfloat16":
            raise ValueError(f"fp8={self.fp8!r} needs dtype 'bfloat16', not {self.dtype!r}")
        return self
