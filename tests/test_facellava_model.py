"""Face-LLaVA model and checkpoint loading, on the tiny checkpoint saved by the authors' code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from structlog.testing import capture_logs

from models.facellava.checkpoint import (
    CheckpointNotFoundError,
    LoadedModel,
    MissingWeightsError,
    convert_checkpoint,
    load_model,
)
from models.facellava.modeling import IMAGE_TOKEN_INDEX, FaceLlava

pytestmark = pytest.mark.timeout(120)


def _load(tiny: Path, **kwargs) -> LoadedModel:
    options = {"dtype": torch.float32, "cache_dir": tiny / "hf_cache", "offline": True}
    options.update(kwargs)
    return load_model(tiny / "checkpoint", **options)


def _ref(tiny: Path, name: str) -> torch.Tensor:
    return torch.load(tiny / "reference" / f"{name}.pt", weights_only=True)


def _logits(model: FaceLlava, tiny: Path) -> torch.Tensor:
    with torch.no_grad():
        return model(_ref(tiny, "video_input_ids"), videos=_ref(tiny, "video_pixel_values"))


def test_video_logits_match_the_authors_outputs(loaded: LoadedModel, tiny: Path) -> None:
    diff = (_logits(loaded.model, tiny) - _ref(tiny, "video_logits")).abs().max().item()
    assert diff < 1e-4


def test_dropping_the_temporal_blocks_changes_video_features(tiny: Path) -> None:
    model = _load(tiny).model
    pixels = _ref(tiny, "video_pixel_values")
    with torch.no_grad():
        with_temporal = model.video_tower_features(pixels)
        for layer in model.video_tower.vision_model.encoder.layers:
            layer.temporal_embedding.zero_()
            layer.temporal_attn.out_proj.weight.zero_()
            layer.temporal_attn.out_proj.bias.zero_()
        without_temporal = model.video_tower_features(pixels)
    assert (with_temporal - _ref(tiny, "video_tower_features")).abs().max() < 1e-4
    assert (with_temporal - without_temporal).abs().max() > 1e-2


def test_a_frame_features_depend_on_the_other_frames(loaded: LoadedModel, tiny: Path) -> None:
    pixels = _ref(tiny, "video_pixel_values")
    changed = pixels.clone()
    changed[:, :, 5] = torch.flip(changed[:, :, 5], dims=[-1])
    with torch.no_grad():
        before = loaded.model.video_tower_features(pixels)[0, 0]
        after = loaded.model.video_tower_features(changed)[0, 0]
    assert (before - after).abs().max() > 1e-3


def test_batched_videos_equal_one_at_a_time(loaded: LoadedModel, tiny: Path) -> None:
    first = _ref(tiny, "video_pixel_values")
    second = torch.roll(first, shifts=3, dims=2)
    with torch.no_grad():
        batched = loaded.model.encode_videos(torch.cat([first, second]))
        alone = loaded.model.encode_videos(second)
    assert batched.shape == (2, 8, 17, 64)
    assert (batched[1] - alone[0]).abs().max() < 1e-5


def test_towers_are_built_only_up_to_the_selected_layer(loaded: LoadedModel) -> None:
    for tower in (loaded.model.image_tower, loaded.model.video_tower):
        assert tower.num_layers == 2
        assert len(tower.vision_model.encoder.layers) == 2
        assert not hasattr(tower.vision_model, "post_layernorm")
    assert loaded.model.image_tower_features(torch.zeros(1, 3, 32, 32)).shape == (1, 16, 32)


def test_unused_checkpoint_keys_are_reported_and_logged(tiny: Path) -> None:
    with capture_logs() as logs:
        report = _load(tiny).report
    unused = set(report.unused_checkpoint_keys)
    landmark_keys = {
        line.split("\t")[0]
        for line in (tiny / "checkpoint_keys.txt").read_text().splitlines()
        if "landmark" in line
    }
    assert landmark_keys and landmark_keys <= unused
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" in unused
    assert "vision_model.post_layernorm.weight" in report.unused_tower_keys["video_tower"]
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert warnings and warnings[0]["count"] == len(unused)


def test_tower_copies_inside_the_checkpoint_give_the_same_model(
    loaded: LoadedModel, tiny: Path
) -> None:
    from_copies = _load(tiny, tower_weights="checkpoint")
    assert "checkpoint copy" in from_copies.report.tower_weights["video_tower"]
    copies_unused = [k for k in from_copies.report.unused_checkpoint_keys if "_tower." in k]
    # Only what never runs stays unused: the last encoder layer and the post-LayerNorm.
    assert copies_unused and all(
        ".encoder.layers.2." in k or ".post_layernorm." in k for k in copies_unused
    )
    assert torch.equal(_logits(from_copies.model, tiny), _logits(loaded.model, tiny))


def test_missing_tower_in_offline_cache_is_a_clear_error(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="LanguageBind"):
        _load(tiny, cache_dir=tmp_path)


def test_missing_checkpoint_tensor_is_an_error(tiny: Path, tmp_path: Path) -> None:
    state = torch.load(tiny / "checkpoint" / "pytorch_model.bin", weights_only=True)
    del state["model.mm_projector.2.weight"]
    broken = tmp_path / "checkpoint"
    shutil.copytree(tiny / "checkpoint", broken, ignore=shutil.ignore_patterns("*.bin"))
    torch.save(state, broken / "pytorch_model.bin")
    with pytest.raises(MissingWeightsError, match=r"mm_projector\.2\.weight"):
        load_model(broken, dtype=torch.float32, cache_dir=tiny / "hf_cache", offline=True)


def test_converted_checkpoint_gives_identical_logits(
    loaded: LoadedModel, tiny: Path, tmp_path: Path
) -> None:
    destination = tmp_path / "converted"
    convert_checkpoint(
        tiny / "checkpoint", destination, dtype="float32", cache_dir=tiny / "hf_cache", offline=True
    )
    converted = load_model(destination, dtype=torch.float32)
    assert converted.report.format == "facestream"
    assert converted.report.unused_checkpoint_keys == ()
    assert torch.equal(_logits(converted.model, tiny), _logits(loaded.model, tiny))
    assert converted.tokenizer.encode_prompt("USER: <image>") == loaded.tokenizer.encode_prompt(
        "USER: <image>"
    )


def test_bfloat16_load_runs_close_to_float32(loaded: LoadedModel, tiny: Path) -> None:
    half = _load(tiny, dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16
    logits = _logits(half.model, tiny)
    assert logits.dtype == torch.bfloat16
    reference = _ref(tiny, "video_logits")
    assert (logits.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_splice_puts_frame_k_at_the_kth_sentinel(loaded: LoadedModel) -> None:
    ids = torch.tensor([1, 5, IMAGE_TOKEN_INDEX, 6, IMAGE_TOKEN_INDEX, 7])
    visual = torch.arange(2 * 3 * 64, dtype=torch.float32).view(2, 3, 64)
    embeds = loaded.model.splice_visual_features(ids, visual)
    assert embeds.shape == (4 + 2 * 3, 64)
    assert torch.equal(embeds[2:5], visual[0])
    assert torch.equal(embeds[6:9], visual[1])
    assert torch.equal(embeds[5], loaded.model.embed_tokens(torch.tensor(6)))
    with pytest.raises(ValueError, match="sentinels"):
        loaded.model.splice_visual_features(ids, visual[:1])


def test_left_padded_batch_gives_the_same_last_logits(loaded: LoadedModel, tiny: Path) -> None:
    model = loaded.model
    ids = _ref(tiny, "image_input_ids")[0]
    with torch.no_grad():
        visual = model.encode_images(_ref(tiny, "image_pixel_values"))
        long = model.splice_visual_features(ids, visual)
        short = long[:-5]
        embeds, mask, positions = model.pad_embeddings([long, short], padding_side="left")
        batched = model.lm_forward(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
        ).logits[:, -1]
        alone = model.lm_forward(inputs_embeds=short[None], use_cache=False).logits[0, -1]
    assert (batched[0] - _ref(tiny, "image_logits")[0, -1]).abs().max() < 1e-4
    assert (batched[1] - alone).abs().max() < 1e-4


def _checkpoint_without_weights(tiny: Path, folder: Path) -> dict[str, torch.Tensor]:
    shutil.copytree(tiny / "checkpoint", folder, ignore=shutil.ignore_patterns("*.bin"))
    return torch.load(tiny / "checkpoint" / "pytorch_model.bin", weights_only=True)


@pytest.mark.parametrize("kind", ["bin", "safetensors"])
def test_sharded_checkpoint_with_an_index_gives_identical_logits(
    loaded: LoadedModel, tiny: Path, tmp_path: Path, kind: str
) -> None:
    # The real chaubeyG/FaceLLaVA ships `pytorch_model-0000N-of-0000M.bin` + index.
    from safetensors.torch import save_file

    folder = tmp_path / "sharded"
    state = _checkpoint_without_weights(tiny, folder)
    keys = list(state)
    weight_map: dict[str, str] = {}
    for number, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :]), start=1):
        shard = {key: state[key].contiguous() for key in part}
        if kind == "bin":
            name = f"pytorch_model-{number:05d}-of-00002.bin"
            torch.save(shard, folder / name)
        else:
            name = f"model-{number:05d}-of-00002.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = "pytorch_model.bin.index.json" if kind == "bin" else "model.safetensors.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "training_args.bin").write_bytes(b"not weights")  # as in real checkpoints
    sharded = load_model(folder, dtype=torch.float32, cache_dir=tiny / "hf_cache", offline=True)
    assert sharded.report.loaded_tensors == loaded.report.loaded_tensors
    assert torch.equal(_logits(sharded.model, tiny), _logits(loaded.model, tiny))


def test_tied_word_embeddings_load_without_an_lm_head(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tied"
    state = _checkpoint_without_weights(tiny, folder)
    del state["lm_head.weight"]
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    torch.save(state, folder / "pytorch_model.bin")
    tied = load_model(folder, dtype=torch.float32, cache_dir=tiny / "hf_cache", offline=True)
    language_model = tied.model.language_model
    assert language_model.lm_head.weight is language_model.model.embed_tokens.weight
    assert torch.equal(language_model.lm_head.weight, state["model.embed_tokens.weight"])


def test_tower_config_reads_each_field_as_its_type_and_names_a_missing_one() -> None:
    import dataclasses

    from models.facellava.modeling import (
        _CLIP_FIELDS,
        _FIELD_CASTS,
        FaceLlavaConfigError,
        TowerConfig,
    )

    fields = {f.name: str(f.type) for f in dataclasses.fields(TowerConfig)}
    assert set(fields.values()) <= set(_FIELD_CASTS)  # every field has a cast
    assert set(_CLIP_FIELDS) <= set(fields)
    vision = {
        "hidden_size": "64",
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
        "layer_norm_eps": "1e-6",
        "num_frames": 8,
        "unrelated": "ignored",
    }
    tower = TowerConfig.from_languagebind({"vision_config": vision})
    assert tower.hidden_size == 64 and tower.layer_norm_eps == 1e-6 and tower.num_frames == 8
    assert tower.num_channels == 3 and tower.hidden_act == "gelu"  # defaults kept
    clip = tower.to_clip(1, "eager")
    assert clip.num_hidden_layers == 1 and clip.hidden_size == 64 and clip.patch_size == 8
    del vision["patch_size"]
    with pytest.raises(FaceLlavaConfigError, match="lacks field 'patch_size'"):
        TowerConfig.from_languagebind(vision)
