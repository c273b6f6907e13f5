"""FP8 path: refused off Hopper (here: CPU), and its weight quantisation arithmetic.

The FP8 matmul itself (`torch._scaled_mm`) needs a Hopper GPU and is not exercised here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.facellava.fp8 import (
    Fp8Linear,
    Fp8UnavailableError,
    quantize_language_model,
    quantize_rows,
    require_fp8_device,
)


def test_fp8_is_refused_on_cpu_with_a_clear_message(loaded):
    with pytest.raises(Fp8UnavailableError, match="Hopper"):
        require_fp8_device("cpu")
    before = type(loaded.model.language_model.model.layers[0].self_attn.q_proj)
    with pytest.raises(Fp8UnavailableError, match="FACESTREAM_MODEL__FP8=off"):
        quantize_language_model(loaded.model.language_model)
    assert type(loaded.model.language_model.model.layers[0].self_attn.q_proj) is before


def test_row_scaled_fp8_weights_stay_within_e4m3_precision():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 96, generator=generator) * torch.logspace(-3, 1, 64)[:, None]
    quantized, scale = quantize_rows(weight)
    assert quantized.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    restored = quantized.float() * scale
    # e4m3 keeps 3 mantissa bits: relative error ≤ 2^-4 for normal values; each row uses
    # its own scale, so rows of very different magnitude all keep that precision.
    relative = (restored - weight).abs() / weight.abs().amax(dim=1, keepdim=True)
    assert relative.max() <= 2**-4
    torch.testing.assert_close(restored.abs().amax(dim=1), weight.abs().amax(dim=1))  # max kept


def test_fp8_linear_keeps_shapes_and_bias():
    linear = nn.Linear(32, 16)
    fp8 = Fp8Linear(linear)
    assert fp8.weight_fp8.shape == (16, 32) and fp8.weight_scale.shape == (1, 16)
    assert fp8.bias is linear.bias
    assert (
        fp8.dequantized_weight() - linear.weight
    ).abs().max() <= 2**-4 * linear.weight.abs().max()


def test_fp8_with_a_dtype_other_than_bfloat16_is_refused_when_configured() -> None:
    from pydantic import ValidationError

    from models.facellava.options import ModelOptions

    assert ModelOptions(fp8="weights_kv").dtype == "bfloat16"
    with pytest.raises(ValidationError, match="needs dtype 'bfloat16'"):
        ModelOptions(fp8="weights", dtype="float16")
