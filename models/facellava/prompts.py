"""Face-LLaVA prompts: the `llava_v1` conversation template and the authors' tokenisation.

The prompt is `{system} USER: {visual}\\n{question} ASSISTANT:`. The authors tokenise it
by splitting at the `<image>` placeholders, encoding each piece with the sentencepiece
model (which adds its dummy-prefix space to every piece), keeping BOS only once at the
start, and putting one sentinel id (-200) per placeholder.

We call sentencepiece directly rather than through transformers: transformers 5's
`LlamaTokenizer` is backed by `tokenizers` and encodes a lone `" "` piece (the separator
between video placeholders) as one `▁` where the authors' transformers 4.31 slow
tokenizer, like raw sentencepiece, gives two. Raw sentencepiece reproduces the fixture's
input ids exactly (`tests/test_facellava_prompts.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.facellava.tasks import NUM_VIDEO_FRAMES as NUM_VIDEO_FRAMES
from models.facellava.tasks import TASK_MODALITY as TASK_MODALITY
from models.facellava.tasks import Modality as Modality
from models.facellava.tasks import Task

SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN_INDEX = -200
"""Sentinel id standing for one placeholder: 256 image tokens, or one frame's 257."""

DEFAULT_QUESTIONS: dict[Task, str] = {
    Task.EMOTION: "What emotion is shown in the video?",
    Task.AGE: "Guess the age of the individual shown in the picture; justify your answer.",
    Task.ATTRIBUTES: "Analyze the facial characteristics shown in the picture.",
    Task.ACTION_UNITS: "Identify the active facial action units in the provided image.",
}
"""One question per task, from the authors' prompt lists."""


class PromptError(ValueError):
    """A question or prompt that cannot be turned into model input."""


class TokenizerNotFoundError(FileNotFoundError):
    """The checkpoint has no sentencepiece `tokenizer.model`."""


def visual_placeholders(modality: Modality, num_frames: int = NUM_VIDEO_FRAMES) -> str:
    """The `{visual}` part: one `<image>`, or `num_frames` of them joined by single spaces."""
    if modality == "image":
        return IMAGE_PLACEHOLDER
    if modality == "video":
        if num_frames < 1:
            raise PromptError(f"a video needs at least one frame, got num_frames={num_frames}")
        return " ".join([IMAGE_PLACEHOLDER] * num_frames)
    raise PromptError(f"unknown modality {modality!r}; use 'image' or 'video'")


def _check_question(question: str) -> str:
    if IMAGE_PLACEHOLDER in question:
        raise PromptError(f"the question must not contain {IMAGE_PLACEHOLDER!r}: {question!r}")
    if not question.strip():
        raise PromptError("the question is empty")
    return question


def prompt_prefix(modality: Modality, num_frames: int = NUM_VIDEO_FRAMES) -> str:
    """The shared part of every prompt about one visual: system, `USER:`, placeholders."""
    return f"{SYSTEM_PROMPT} USER: {visual_placeholders(modality, num_frames)}"


def prompt_suffix(question: str) -> str:
    """The per-question part that follows the last placeholder."""
    return f"\n{_check_question(question)} ASSISTANT:"


def build_prompt(question: str, modality: Modality, num_frames: int = NUM_VIDEO_FRAMES) -> str:
    """The full `llava_v1` prompt string for one question about an image or a video."""
    return prompt_prefix(modality, num_frames) + prompt_suffix(question)


@dataclass(frozen=True)
class PromptIds:
    """A tokenised prompt split where the visual prefix ends.

    `prefix_ids` holds BOS, the system text and the sentinels (identical for every question
    about one visual); `suffix_ids` holds `\\n{question} ASSISTANT:`.
    """

    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]

    @property
    def input_ids(self) -> list[int]:
        """The whole prompt, as the authors' `tokenizer_image_token` returns it."""
        return [*self.prefix_ids, *self.suffix_ids]


class PromptTokenizer:
    """The checkpoint's sentencepiece model with the authors' placeholder rules."""

    def __init__(self, model_file: str | Path) -> None:
        import sentencepiece

        path = Path(model_file)
        if path.is_dir():
            path = path / "tokenizer.model"
        if not path.is_file():
            raise TokenizerNotFoundError(
                f"no sentencepiece model at {path}; point at the checkpoint folder that "
                "holds tokenizer.model"
            )
        self.path = path
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.bos_id: int = self._sp.bos_id()
        self.eos_id: int = self._sp.eos_id()
        self.unk_id: int = self._sp.unk_id()
        self.vocab_size: int = self._sp.get_piece_size()

    def encode_piece(self, text: str) -> list[int]:
        """Sentencepiece ids of one placeholder-free piece (dummy prefix space included)."""
        return list(self._sp.encode(text))

    def encode_prompt(self, prompt: str) -> list[int]:
        """A prompt's ids: BOS, each piece's ids, one -200 sentinel per `<image>`."""
        ids = [self.bos_id]
        for index, piece in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
            if index:
                ids.append(IMAGE_TOKEN_INDEX)
            ids.extend(self.encode_piece(piece))
        return ids

    def encode_question(
        self, question: str, modality: Modality, num_frames: int = NUM_VIDEO_FRAMES
    ) -> PromptIds:
        """Ids of the full prompt for `question`, split into visual prefix and suffix."""
        prefix = self.encode_prompt(prompt_prefix(modality, num_frames))
        # The suffix follows the last placeholder, so the authors encode it as its own piece.
        suffix = self.encode_piece(prompt_suffix(question))
        return PromptIds(prefix_ids=tuple(prefix), suffix_ids=tuple(suffix))

    def decode(self, ids: list[int]) -> str:
        """Answer text of generated ids; special tokens (BOS, EOS, UNK) and ids outside this
        tokenizer's vocabulary (a model with a larger embedding table) are skipped."""
        special = {self.bos_id, self.eos_id, self.unk_id}
        return self._sp.decode([i for i in ids if i not in special and 0 <= i < self.vocab_size])
