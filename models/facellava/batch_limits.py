"""How many visuals one engine step admits (`max_batch_clips`), "auto" = sized from memory.

An admission runs the vision tower over the new clips and prefills their prefixes in one
batch; its activations are the memory it needs beyond the weights and the KV slots. The
engine holds as many KV slots as fit in free memory ("auto" `engine_visuals`); this sizes
the admission batch the same way, so neither default is a constant tuned for one card.

Estimate per clip, in the compute dtype: tower tokens × (6 hidden + 2 MLP widths) plus
prefix tokens × (6 hidden + 3 MLP widths) of the language model (hidden, residual, q/k/v,
attention output; MLP gate, up and their product). For the 7B model in bf16 that is
≈ 0.3 GB a clip, so `AUTO_WORKSPACE_FRACTION` (10 %) of the ≈ 65 GB an 80 GB card has
free after the weights admits ≈ 21 clips a step; the cap `AUTO_MAX_BATCH_CLIPS` bounds the
time one admission stalls the rows that are decoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from models.facellava.kv_slots import free_device_bytes

if TYPE_CHECKING:
    from models.facellava.modeling import FaceLlava, FaceLlavaConfig

AUTO_MAX_BATCH_CLIPS = 32
"""Most visuals an "auto" admission takes, however much memory is free."""
AUTO_WORKSPACE_FRACTION = 0.1
"""Share of the free device memory that one admission's activations may take."""
PREFIX_TEXT_TOKENS = 64
"""Upper estimate of a clip prefix's text tokens (system prompt, `USER:`) around its frames."""


def admission_bytes_per_clip(config: FaceLlavaConfig, element_bytes: int) -> int:
    """Activation bytes one clip adds to an admission (its tower pass and prefix prefill)."""
    tower = config.video_tower
    hidden, mlp = config.llm["hidden_size"], config.llm["intermediate_size"]
    tower_tokens = tower.num_frames * (tower.num_patches + 1)
    prefix_tokens = tower_tokens + PREFIX_TEXT_TOKENS
    return element_bytes * (
        tower_tokens * (6 * tower.hidden_size + 2 * tower.intermediate_size)
        + prefix_tokens * (6 * hidden + 3 * mlp)
    )


def auto_batch_clips(config: FaceLlavaConfig, element_bytes: int, free_bytes: int) -> int:
    """The admission batch whose activations fit in `AUTO_WORKSPACE_FRACTION` of
    `free_bytes`; at least 1, at most `AUTO_MAX_BATCH_CLIPS`."""
    per_clip = admission_bytes_per_clip(config, element_bytes)
    fit = int(free_bytes * AUTO_WORKSPACE_FRACTION) // per_clip
    return max(1, min(fit, AUTO_MAX_BATCH_CLIPS))


def resolve_batch_clips(setting: int | Literal["auto"], model: FaceLlava) -> int:
    """`max_batch_clips` as the engine takes it: an explicit integer as is, "auto" sized
    from the memory free on the model's device now."""
    if setting != "auto":
        return int(setting)
    free = free_device_bytes(model.device)
    return auto_batch_clips(model.config, model.dtype.itemsize, free)
