"""Preallocated KV slots: one per visual, its prefix read in place by all its questions.

Layout of one pool (one per modality; every prefix of a modality has the same length):
per language-model layer, a key and a value buffer of shape
`(slots, kv_heads, prefix_tokens + lanes * lane_tokens, head_dim)`. Slot `s` holds one
visual: its shared prefix `{system} USER: {visual}` at `[0, prefix_tokens)`, then its
lanes (a lane is one question being answered: its suffix `\\n{question} ASSISTANT:` and
the tokens it generates) interleaved token by token: token `t` of lane `l` sits at
`prefix_tokens + t * lanes + l` (`PoolShape.token_index`). A question attends over its
slot's prefix plus its own lane's tokens (a mask built from the lengths), so the prefix
is never copied, and it is read once per decode step for all the questions of that visual.

Interleaving keeps every lane's used tokens in one short run after the prefix: a step
attends over `prefix_tokens + lanes * u` keys, `u` the longest lane rounded up to a
bucket (`lane_length_buckets`), not over the whole preallocated slot.

Memory arithmetic (`kv_bytes_per_token`): a token costs
`2 (K and V) × layers × kv_heads × head_dim × bytes per element`. For the 7B model in
bf16: 2 × 32 × 32 × 128 × 2 B = 512 KiB a token. So with `lane_tokens` = 96 question
tokens + 48 answer tokens = 144:

- a video slot: (2056 visual + ~40 text prefix tokens + 1 lane × 144) × 512 KiB ≈ 1.1 GiB;
- an image slot: (256 + ~40 + 3 lanes × 144) × 512 KiB ≈ 0.36 GiB;
- every further question asked of a visual costs one lane, 144 × 512 KiB = 72 MiB, not
  another copy of its prefix (1.0 GiB for a clip, 0.15 GiB for an image).

All of it is allocated once when the engine is built (`SlotPool`), so decode steps have
static shapes and never allocate KV; `size_visual_slots` picks how many slots fit in the
free device memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

FP8_KV_DTYPE = torch.float8_e4m3fn
"""Storage dtype of an FP8 KV cache (values stored unscaled, clamped to its ±448 range)."""
FP8_MAX = float(torch.finfo(FP8_KV_DTYPE).max)  # 448


def attention_head_dim(config: Any) -> int:
    """Per-head width of a Llama-style language model config (`head_dim`, else hidden ÷ heads)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@dataclass(frozen=True)
class PoolShape:
    """Sizes of one modality's slot pool, in tokens."""

    slots: int
    lanes: int
    prefix_tokens: int
    lane_tokens: int

    def __post_init__(self) -> None:
        if min(self.slots, self.lanes, self.prefix_tokens, self.lane_tokens) < 1:
            raise ValueError(f"every size of a slot pool must be at least 1: {self}")

    @property
    def tokens_per_slot(self) -> int:
        """Prefix plus every lane region."""
        return self.prefix_tokens + self.lanes * self.lane_tokens

    def token_index(self, lane: int, step: int) -> int:
        """Index inside a slot of token `step` of lane `lane` (lanes interleave)."""
        return self.prefix_tokens + step * self.lanes + lane

    def attended_tokens(self, lane_length: int) -> int:
        """Keys a step reads when no lane holds more than `lane_length` tokens."""
        return self.prefix_tokens + self.lanes * lane_length


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, element_bytes: int) -> int:
    """K and V of one token over all layers."""
    return 2 * layers * kv_heads * head_dim * element_bytes


class SlotPool:
    """The KV buffers of one modality: per layer, keys and values (slots, kv_heads, C, head_dim)."""

    def __init__(
        self,
        shape: PoolShape,
        *,
        layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        self.shape = shape
        self.dtype = dtype
        size = (shape.slots, kv_heads, shape.tokens_per_slot, head_dim)
        # zeros, not empty: dummy rows read free regions (masked out, but never NaN).
        self.keys = [torch.zeros(size, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(size, dtype=dtype, device=device) for _ in range(layers)]
        # Per token index of a slot: which lane owns it (-1: the prefix) and which of the
        # lane's tokens it is (past every lane length for the prefix); masks compare these.
        index = torch.arange(shape.tokens_per_slot, device=device)
        self.token_positions = index
        lane_part = index - shape.prefix_tokens
        in_lanes = lane_part >= 0
        self.token_lane = torch.where(in_lanes, lane_part % shape.lanes, -1)
        self.token_step = torch.where(in_lanes, lane_part // shape.lanes, shape.tokens_per_slot)
        self.lane_ids = torch.arange(shape.lanes, device=device)

    @property
    def nbytes(self) -> int:
        """Bytes held by all the buffers."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    @property
    def is_fp8(self) -> bool:
        """True when the buffers store float8 (values are cast on write and read)."""
        return self.dtype == FP8_KV_DTYPE

    def store(self, tensor: torch.Tensor) -> torch.Tensor:
        """A key/value tensor in the pool's storage dtype."""
        if self.is_fp8:
            return tensor.clamp(-FP8_MAX, FP8_MAX).to(FP8_KV_DTYPE)
        return tensor.to(self.dtype)

    def read(self, buffer: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
        """A buffer (or a slice of one) in the compute dtype."""
        return buffer.to(compute_dtype) if self.is_fp8 else buffer


@dataclass(frozen=True)
class SlotBudget:
    """How many visuals of each modality fit, and the figures behind the choice."""

    visuals: int
    free_bytes: int
    usable_bytes: int
    bytes_per_visual_pair: int
    capped: bool


def size_visual_slots(
    *,
    free_bytes: int,
    video_slot_bytes: int,
    image_slot_bytes: int,
    workspace_bytes: int,
    memory_fraction: float,
    max_visuals: int,
) -> SlotBudget:
    """Slots per modality (the same number of clips and images: a face window brings one
    of each) that fit in `memory_fraction` of `free_bytes` after `workspace_bytes` for
    activations; at least 1, at most `max_visuals`."""
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    usable = int(free_bytes * memory_fraction) - workspace_bytes
    pair = video_slot_bytes + image_slot_bytes
    fit = max(usable // pair, 0)
    visuals = int(min(max(fit, 1), max_visuals))
    return SlotBudget(
        visuals=visuals,
        free_bytes=free_bytes,
        usable_bytes=max(usable, 0),
        bytes_per_visual_pair=pair,
        capped=fit > max_visuals,
    )


def free_device_bytes(device: torch.device | str) -> int:
    """Free memory of a CUDA device, or the host's available memory for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def bucket_sizes(capacity: int) -> tuple[int, ...]:
    """Slot counts a decode step is padded to: 0, powers of two below `capacity`, `capacity`.

    A step over `k` occupied slots runs at the smallest bucket ≥ `k`; CUDA graphs are
    captured per bucket pair, so their number stays logarithmic in the capacity.
    """
    sizes = {0, capacity}
    power = 1
    while power < capacity:
        sizes.add(power)
        power *= 2
    return tuple(sorted(sizes))


def bucket_for(used: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `used` (slots, or tokens of a lane)."""
    for size in buckets:
        if size >= used:
            return size
    raise ValueError(f"{used} exceeds the largest bucket {buckets[-1]}")


LANE_BUCKET_MIN_TOKENS = 16
"""Smallest attended lane length: shorter lanes still read this many tokens each."""


def lane_length_buckets(lane_tokens: int) -> tuple[int, ...]:
    """Lane lengths a step's attention is padded to: 16, 32, 48, 64, 96, 128, 192, ...
    (powers of two, and from 32 on also 1.5 × powers of two), capped by `lane_tokens`.

    CUDA graphs are captured per (slot bucket, lane-length bucket) of each pool, so their
    number stays logarithmic in the lane capacity.
    """
    sizes = {lane_tokens}
    power = LANE_BUCKET_MIN_TOKENS
    while power < lane_tokens:
        sizes.add(power)
        if power * 3 // 2 < lane_tokens and power >= 32:
            sizes.add(power * 3 // 2)
        power *= 2
    return tuple(sorted(sizes))
