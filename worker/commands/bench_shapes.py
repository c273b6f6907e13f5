"""The Face-LLaVA shapes the benchmarks build (`7b`: Vicuna-7B + ViT-L/14 towers at 224 px;
`tiny`: the test fixture's sizes), random weights for them, the tiny fixture's checkpoint,
and the prefill roofline a measured rate is compared with."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.facellava.modeling import FaceLlavaConfig

H100_DENSE_BF16_FLOPS = 800e12
"""Usable dense bf16 matmul rate of one H100 assumed by the facts page's roofline."""


def shape_config(name: str) -> FaceLlavaConfig:
    """Face-LLaVA configuration of the real model (`7b`) or of the test fixture (`tiny`)."""
    from models.facellava.modeling import FaceLlavaConfig, TowerConfig

    if name == "7b":
        llm: dict[str, Any] = {
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
        }
        tower = {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
        }
    else:
        llm = {
            "vocab_size": 480,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
        }
        tower = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        }
    llm |= {
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
    }
    return FaceLlavaConfig(
        llm=llm,
        image_tower=TowerConfig(**tower, hidden_act="gelu"),
        video_tower=TowerConfig(**tower, hidden_act="gelu", add_time_attn=True, num_frames=8),
        mm_hidden_size=tower["hidden_size"],
        projector_type="mlp2x_gelu",
        select_layer=-2,
    )


def random_model(config: FaceLlavaConfig, dtype: str, device: str, attn: str, seed: int):
    """The model with random weights (norm scales 1, the rest N(0, 0.02)), built on device."""
    import torch

    from models.facellava.checkpoint import DTYPES, build_empty_model

    model = build_empty_model(config, DTYPES[dtype], device, attn)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1 and "norm" in name and name.endswith("weight"):
                parameter.fill_(1.0)
            elif parameter.dim() == 1:
                parameter.zero_()
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
    return model


def fixture_checkpoint() -> Path:
    """The tiny test fixture's checkpoint (under `$FACESTREAM_TESTDATA`)."""
    root = Path(os.environ.get("FACESTREAM_TESTDATA", Path.cwd().parent / "shared" / "testdata"))
    return root / "facellava-tiny" / "checkpoint"


def print_roofline(model, tokenizer, emotion_rates: dict[int, float]) -> None:
    """Emotion clips/s against the prefill compute bound of one H100 (facts page)."""
    from models.facellava.answers import Task
    from models.facellava.prompts import DEFAULT_QUESTIONS, IMAGE_TOKEN_INDEX

    ids = tokenizer.encode_question(DEFAULT_QUESTIONS[Task.EMOTION], "video").input_ids
    frames = model.config.video_tower
    visual_tokens = frames.num_frames * (frames.num_patches + 1)
    prompt_tokens = len(ids) - ids.count(IMAGE_TOKEN_INDEX) + visual_tokens
    llm_params = sum(p.numel() for p in model.language_model.parameters())
    flops_per_clip = 2 * llm_params * prompt_tokens
    bound = H100_DENSE_BF16_FLOPS / flops_per_clip
    print(
        f"# prefill roofline: {prompt_tokens} prompt tokens x 2 x {llm_params / 1e9:.2f}e9 "
        f"params = {flops_per_clip / 1e12:.1f} TFLOP/clip -> at most {bound:.1f} clips/s "
        f"at {H100_DENSE_BF16_FLOPS / 1e12:.0f} TFLOP/s (one H100)"
    )
    for batch, rate in sorted(emotion_rates.items()):
        print(
            f"#   emotion batch {batch}: {rate:.2f} clips/s = {100 * rate / bound:.0f}% of roofline"
        )
