"""Optional FP8 (e4m3) language-model weights for Hopper GPUs; off unless asked for.

`quantize_language_model` replaces every projection of the Llama decoder layers
(q/k/v/o, gate/up/down; not the embeddings or `lm_head`) with `Fp8Linear`: weights stored
as float8 e4m3 with one float32 scale per output row, activations quantised per row on
the fly, the product by `torch._scaled_mm` with row-wise scales, output in the model's
dtype. The FP8 KV cache is `kv_slots.FP8_KV_DTYPE` (values cast, clamped to ±448).

Status: this path needs a GPU with FP8 tensor cores (compute capability 9.0, Hopper) and
is refused anywhere else with `Fp8UnavailableError`. Its deviation from bf16 on the verify
fixture has NOT been measured (no such GPU was available when it was written); only the
quantisation arithmetic is tested, on CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from models.facellava.kv_slots import FP8_KV_DTYPE, FP8_MAX  # FP8_KV_DTYPE re-exported

FP8_DTYPE = FP8_KV_DTYPE  # one FP8 format for weights and KV: e4m3, ±448
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


__all__ = [
    "FP8_KV_DTYPE",
    "Fp8Linear",
    "Fp8UnavailableError",
    "quantize_language_model",
    "quantize_rows",
    "require_fp8_device",
]


class Fp8UnavailableError(RuntimeError):
    """FP8 was asked for on a device without FP8 matrix multiplication."""


def require_fp8_device(device: torch.device | str) -> None:
    """Raise `Fp8UnavailableError` unless `device` is a CUDA GPU of compute capability ≥ 9.0."""
    device = torch.device(device)
    if device.type != "cuda":
        raise Fp8UnavailableError(
            f"FP8 needs a Hopper GPU (compute capability 9.0+); the model is on {device}. "
            "Set FACESTREAM_MODEL__FP8=off."
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < (9, 0):
        raise Fp8UnavailableError(
            f"FP8 needs compute capability 9.0+ (Hopper); {torch.cuda.get_device_name(device)} "
            f"has {capability[0]}.{capability[1]}. Set FACESTREAM_MODEL__FP8=off."
        )


def quantize_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) → float8 (N, K) and float32 scales (N, 1) with `matrix ≈ fp8 * scale`."""
    scale = matrix.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (matrix.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


class Fp8Linear(nn.Module):
    """A linear layer with row-scaled float8 weights, multiplied by `torch._scaled_mm`."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight, scale = quantize_rows(linear.weight.detach())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_fp8", weight)
        self.register_buffer("weight_scale", scale.reshape(1, -1))  # (1, N) for _scaled_mm
        self.bias = linear.bias
        self.out_dtype = linear.weight.dtype

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the FP8 matmul effectively uses, in float32 (for checks)."""
        return self.weight_fp8.float() * self.weight_scale.reshape(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x @ W.T + b` with x quantised per row to float8."""
        rows = x.reshape(-1, self.in_features)
        x_fp8, x_scale = quantize_rows(rows)
        out = torch._scaled_mm(
            x_fp8,
            self.weight_fp8.t(),
            scale_a=x_scale,
            scale_b=self.weight_scale,
            out_dtype=self.out_dtype,
        )
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def quantize_language_model(language_model: nn.Module) -> int:
    """Swap the decoder layers' projections for `Fp8Linear` in place; returns how many.

    Refuses (before changing anything) unless the model sits on an FP8-capable GPU.
    """
    require_fp8_device(language_model.get_input_embeddings().weight.device)
    count = 0
    for layer in language_model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in PROJECTIONS:
                linear = getattr(parent, name, None)
                if isinstance(linear, nn.Linear):
                    setattr(parent, name, Fp8Linear(linear))
                    count += 1
    return count
