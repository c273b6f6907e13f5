"""Checking our Face-LLaVA against the outputs of the authors' own code on a fixture.

A fixture (`facellava-tiny/`) holds an original-format `checkpoint/`, an `hf_cache/` with
the towers under their hub ids, and `reference/` tensors recorded with the authors' code.
`verify_fixture` loads the checkpoint the production way (towers by hub id from that
cache, offline), rebuilds the prompts with `prompts.py`, preprocesses the real inputs
with `preprocess.py`, and compares every stage. Each comparison is one `Check`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.facellava.checkpoint import CheckpointError, LoadedModel, load_model
from models.facellava.engine import greedy_decode

TOWER_TOLERANCE = 1e-4
LOGITS_TOLERANCE = 1e-4
PREPROCESS_TOLERANCE = 1e-5


class FixtureError(FileNotFoundError):
    """A fixture folder without the expected layout."""


@dataclass(frozen=True)
class Check:
    """One comparison: what, whether it passed, and the figure behind it."""

    name: str
    passed: bool
    detail: str


@dataclass
class VerifyResult:
    """All checks of one run."""

    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when there is at least one check and none failed."""
        return bool(self.checks) and all(check.passed for check in self.checks)

    def table(self) -> str:
        """A plain-text table, one row per check, and a verdict line."""
        width = max(len(check.name) for check in self.checks) if self.checks else 5
        lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  ------"]
        for check in self.checks:
            verdict = "ok" if check.passed else "FAIL"
            lines.append(f"{check.name:<{width}}  {verdict:<6}  {check.detail}")
        failed = sum(not check.passed for check in self.checks)
        lines.append(
            f"{len(self.checks) - failed}/{len(self.checks)} checks passed"
            + ("" if self.passed else f"; {failed} FAILED")
        )
        return "\n".join(lines)


def compare_tensors(name: str, ours: torch.Tensor, reference: torch.Tensor, tol: float) -> Check:
    """Shape equality and max |difference| within `tol`."""
    if tuple(ours.shape) != tuple(reference.shape):
        return Check(name, False, f"shape {tuple(ours.shape)} != {tuple(reference.shape)}")
    diff = (
        (ours.detach().float().cpu() - reference.detach().float().cpu()).abs().max().item()
        if ours.numel()
        else 0.0
    )
    passed = diff <= tol
    return Check(name, passed, f"max|Δ| {diff:.2e} {'<=' if passed else '>'} {tol:.0e}")


def compare_ids(name: str, ours: list[int], reference: list[int]) -> Check:
    """Exact equality of id lists; the first difference when they differ."""
    if ours == reference:
        return Check(name, True, f"{len(ours)} ids identical")
    first = next(
        (i for i, (a, b) in enumerate(zip(ours, reference, strict=False)) if a != b),
        min(len(ours), len(reference)),
    )
    return Check(
        name,
        False,
        f"differ at {first}: ours {ours[first : first + 4]} ref {reference[first : first + 4]}"
        f" (lengths {len(ours)} / {len(reference)})",
    )


def _question_of(prompt: str) -> str:
    """The question inside a full `llava_v1` prompt string (it follows the first newline,
    right after the visual placeholders; the question itself may hold newlines)."""
    return prompt.split("\n", 1)[1].removesuffix(" ASSISTANT:")


def _check_modality(
    loaded: LoadedModel, modality: str, prompt: str, ref: Callable[[str], torch.Tensor]
) -> list[Check]:
    from models.facellava.prompts import build_prompt

    model = loaded.model
    num_frames = loaded.config.video_tower.num_frames
    checks: list[Check] = []
    question = _question_of(prompt)
    rebuilt = build_prompt(question, modality, num_frames)  # type: ignore[arg-type]
    checks.append(Check(f"{modality} prompt text", rebuilt == prompt, f"{len(rebuilt)} chars"))
    ids = loaded.tokenizer.encode_question(question, modality, num_frames).input_ids  # type: ignore[arg-type]
    checks.append(compare_ids(f"{modality} input ids", ids, ref("input_ids")[0].tolist()))

    pixels = ref("pixel_values")
    tower = model.video_tower if modality == "video" else model.image_tower
    states = tower.hidden_states(pixels)
    all_ref = ref("tower_all_hidden_states")
    for index, state in enumerate(states):
        checks.append(
            compare_tensors(
                f"{modality} tower hidden state {index}", state, all_ref[index], TOWER_TOLERANCE
            )
        )
    if modality == "video":
        features = model.video_tower_features(pixels)
        projected = model.encode_videos(pixels)
        visual = projected[0]
    else:
        features = model.image_tower_features(pixels)
        projected = model.encode_images(pixels)
        visual = projected
    checks.append(
        compare_tensors(
            f"{modality} tower features", features, ref("tower_features"), TOWER_TOLERANCE
        )
    )
    checks.append(
        compare_tensors(
            f"{modality} projected features", projected, ref("projected_features"), TOWER_TOLERANCE
        )
    )
    embeds = model.splice_visual_features(torch.tensor(ids, device=model.device), visual)[None]
    checks.append(
        compare_tensors(f"{modality} inputs_embeds", embeds, ref("inputs_embeds"), TOWER_TOLERANCE)
    )
    out = model.language_model(inputs_embeds=embeds, output_hidden_states=True, use_cache=False)
    checks.append(
        compare_tensors(f"{modality} logits", out.logits, ref("logits"), LOGITS_TOLERANCE)
    )
    checks.append(
        compare_tensors(
            f"{modality} llm hidden states",
            torch.stack(out.hidden_states),
            ref("llm_hidden_states"),
            LOGITS_TOLERANCE,
        )
    )
    reference_new = ref("generate_new_ids")[0].tolist()
    greedy = greedy_decode(
        model,
        embeds,
        max_new_tokens=len(reference_new),
        eos_token_id=loaded.eos_token_id,
        keep_logits=True,
    )
    # The authors' ids end with `</s>` when they stopped there; ours leave it out.
    new_ids = list(greedy.token_ids) + [loaded.eos_token_id] * (greedy.stop_reason == "eos")
    assert greedy.step_logits is not None
    scores = greedy.step_logits
    checks.append(compare_ids(f"{modality} greedy ids (KV cache)", new_ids, reference_new))
    checks.append(
        compare_tensors(
            f"{modality} greedy step logits",
            scores.unsqueeze(0),
            ref("generate_scores"),
            LOGITS_TOLERANCE,
        )
    )
    return checks


def _check_engine(loaded: LoadedModel, prompts: dict[str, str], reference_dir: Path) -> list[Check]:
    """Both fixture prompts through the batched engine in one call, beside extra questions."""
    from models.facellava.engine import GenerationEngine, GenerationRequest, Question

    requests, expected = [], {}
    for modality in ("video", "image"):
        pixels = torch.load(reference_dir / f"{modality}_pixel_values.pt", weights_only=True)
        new_ids = torch.load(reference_dir / f"{modality}_generate_new_ids.pt", weights_only=True)
        ids = new_ids[0].tolist()
        expected[modality] = ids[:-1] if ids and ids[-1] == loaded.eos_token_id else ids
        questions = (Question(_question_of(prompts[modality])), Question("Describe the face."))
        requests.append(GenerationRequest(key=modality, visual=pixels[0], questions=questions))
    engine = GenerationEngine(
        loaded.model,
        loaded.tokenizer,
        max_new_tokens=max(len(ids) for ids in expected.values()),
        max_visuals=2,
        eos_token_id=loaded.eos_token_id,
    )
    return [
        compare_ids(
            f"{result.key} greedy ids (engine, batched)",
            list(result.answers[0].token_ids),
            expected[str(result.key)],
        )
        for result in engine.generate(requests)
    ]


def _check_preprocess(reference_dir: Path, video_frames: int) -> list[Check]:
    from models.facellava.preprocess import preprocess_images, preprocess_videos

    folder = reference_dir / "preprocess"

    def load(name: str) -> torch.Tensor:
        return torch.load(folder / f"{name}.pt", weights_only=True)

    frames = load("video_frames_uint8_THWC")
    image = load("image_rgb_uint8_HWC")
    checks: list[Check] = []
    for ref_name in ("video_pixel_values_from_pyav", "video_pixel_values_from_decord_processor"):
        expected = load(ref_name)
        ours = preprocess_videos([frames], size_px=expected.shape[-1], num_frames=video_frames)
        checks.append(
            compare_tensors(f"preprocess {ref_name}", ours, expected, PREPROCESS_TOLERANCE)
        )
    for name, source in (
        ("image_pixel_values", image),
        ("frame0_as_image_pixel_values", frames[0]),
    ):
        expected = load(name)
        ours = preprocess_images([source], size_px=expected.shape[-1])
        checks.append(compare_tensors(f"preprocess {name}", ours, expected, PREPROCESS_TOLERANCE))
    return checks


@torch.no_grad()
def verify_fixture(fixture: str | Path, device: str = "cpu") -> VerifyResult:
    """Load `fixture/checkpoint` the production way and compare every stage to `reference/`.

    The tolerances are for float32; `device` "cuda" runs the same float32 checks on a GPU.
    """
    root = Path(fixture)
    reference_dir = root / "reference"
    for needed in (root / "checkpoint", root / "hf_cache", reference_dir / "prompts.json"):
        if not needed.exists():
            raise FixtureError(f"{needed} is missing: {root} is not a Face-LLaVA fixture folder")
    result = VerifyResult()
    try:
        loaded = load_model(
            root / "checkpoint",
            dtype=torch.float32,
            device=device,
            attn_implementation="sdpa",
            cache_dir=root / "hf_cache",
            offline=True,
        )
    except CheckpointError as exc:
        result.checks.append(Check("load checkpoint", False, f"{type(exc).__name__}: {exc}"))
        return result
    result.checks.append(
        Check(
            "load checkpoint",
            True,
            f"{loaded.report.loaded_tensors} tensors; "
            f"{len(loaded.report.unused_checkpoint_keys)} checkpoint keys unused",
        )
    )
    prompts = json.loads((reference_dir / "prompts.json").read_text())
    for modality in ("video", "image"):

        def ref(name: str, modality: str = modality) -> torch.Tensor:
            path = reference_dir / f"{modality}_{name}.pt"
            return torch.load(path, map_location=device, weights_only=True)

        result.checks.extend(_check_modality(loaded, modality, prompts[modality], ref))
    result.checks.extend(_check_engine(loaded, prompts, reference_dir))
    if (reference_dir / "preprocess").is_dir():
        result.checks.extend(_check_preprocess(reference_dir, loaded.config.video_tower.num_frames))
    return result
