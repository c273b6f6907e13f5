"""Batched greedy generation for Face-LLaVA: many (visual, questions) requests at once.

How one `generate` call runs, per chunk of at most `max_batch_clips` requests of one
modality (clips together, images together):

1. Preprocess and run the tower on the whole chunk (`encode_videos` / `encode_images`).
2. Prefill the shared visual prefix `{system} USER: {visual}` of every request in one
   LLM pass. Within a modality every prefix has the same length, so no padding.
3. One row per (request, question): the row's KV cache is a copy of its request's prefix
   cache (the prefix is computed once however many questions are asked of it).
4. Prefill the suffixes `\\n{question} ASSISTANT:` of all rows in one pass. Suffixes differ
   in length: they are left-padded (the gap sits between prefix and suffix, masked out),
   so every row's newest token is in the last column; positions are per row.
5. Greedy decode with the cache (preallocated, no per-step concatenation), one token per
   row per step, until every row has produced `</s>` or `max_new_tokens`. Finished rows are
   dropped from the batch once they make up half of it.

The result of every row is the same token sequence as `greedy_generate`, the plain
single-request loop of the authors (one request, full prompt, argmax, stop at `</s>`);
`tests/test_facellava_engine.py` checks it on the tiny fixture model.

Not thread-safe: one model thread owns an engine.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from models.facellava.answers import Task
from models.facellava.preprocess import preprocess_images, preprocess_videos
from models.facellava.prompts import (
    DEFAULT_QUESTIONS,
    TASK_MODALITY,
    Modality,
    PromptTokenizer,
    prompt_suffix,
)

if TYPE_CHECKING:
    from models.facellava.modeling import FaceLlava

StopReason = Literal["eos", "length"]


class EngineRequestError(ValueError):
    """A request the engine cannot serve (wrong pixel shape, no questions...)."""


@dataclass(frozen=True)
class Question:
    """One question about a visual; `task` says which parser its answer goes to, if any."""

    text: str
    task: Task | None = None

    @classmethod
    def for_task(cls, task: Task) -> Question:
        """The authors' default question for `task`."""
        return cls(text=DEFAULT_QUESTIONS[task], task=task)


@dataclass(frozen=True, eq=False)  # arrays inside: compare and hash by identity
class GenerationRequest:
    """One visual and its questions; `key` is opaque and comes back with the result.

    `visual` is uint8 RGB, an image crop (H, W, 3) or a clip (T, H, W, 3) that the engine
    preprocesses; or float tower input already preprocessed, (3, S, S) or (3, T, S, S).
    """

    key: Hashable
    visual: np.ndarray | torch.Tensor
    questions: tuple[Question, ...]

    @property
    def modality(self) -> Modality:
        """`image` for a 3-D visual, `video` for a 4-D one."""
        return "video" if self.visual.ndim == 4 else "image"

    @property
    def is_preprocessed(self) -> bool:
        """True when `visual` is float tower input rather than uint8 RGB."""
        return self.visual.dtype not in (np.uint8, torch.uint8)

    @classmethod
    def for_tasks(
        cls, key: Hashable, visual: np.ndarray | torch.Tensor, tasks: Sequence[Task]
    ) -> GenerationRequest:
        """A request asking each task's default question."""
        return cls(key=key, visual=visual, questions=tuple(map(Question.for_task, tasks)))


@dataclass(frozen=True)
class Answer:
    """The model's answer to one question: text, new token ids (no `</s>`), why it stopped."""

    question: Question
    text: str
    token_ids: tuple[int, ...]
    stop_reason: StopReason


@dataclass(frozen=True)
class GenerationResult:
    """All answers of one request, in the order of its questions."""

    key: Hashable
    modality: Modality
    answers: tuple[Answer, ...]


@dataclass
class EngineCounters:
    """Running totals for metrics; read them, never reset them from outside."""

    requests: int = 0
    images: int = 0
    clips: int = 0
    questions: int = 0
    prefill_tokens: int = 0
    tokens_generated: int = 0
    decode_steps: int = 0
    tower_batch_sizes: Counter[int] = field(default_factory=Counter)
    decode_batch_sizes: Counter[int] = field(default_factory=Counter)


class _PreallocatedLayer(DynamicLayer):
    """A KV cache layer whose buffers are allocated once: appending writes in place."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        super().__init__()
        batch, heads, length, head_dim = keys.shape
        capacity = max(capacity, length)
        self._key_buffer = keys.new_empty((batch, heads, capacity, head_dim))
        self._value_buffer = values.new_empty((batch, heads, capacity, values.shape[-1]))
        self._key_buffer[:, :, :length] = keys
        self._value_buffer[:, :, :length] = values
        self.length = length
        self.device = keys.device
        self.is_initialized = True
        self._refresh_views()

    def _refresh_views(self) -> None:
        self.keys = self._key_buffer[:, :, : self.length]
        self.values = self._value_buffer[:, :, : self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        """Append new keys/values and return everything cached so far."""
        end = self.length + key_states.shape[-2]
        if end > self._key_buffer.shape[-2]:
            grow = end - self._key_buffer.shape[-2]
            self._key_buffer = torch.cat([self._key_buffer, self._key_buffer[:, :, :grow]], dim=2)
            self._value_buffer = torch.cat(
                [self._value_buffer, self._value_buffer[:, :, :grow]], dim=2
            )
        self._key_buffer[:, :, self.length : end] = key_states
        self._value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._refresh_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """Tokens cached."""
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows `indices`."""
        self._key_buffer = self._key_buffer[indices]
        self._value_buffer = self._value_buffer[indices]
        self._refresh_views()


def _cache_kwarg(language_model: torch.nn.Module) -> str:
    # transformers renamed `past_key_values` to `cache` (the old name is deprecated).
    parameters = inspect.signature(language_model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _layer_kv(cache: Cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


@dataclass
class _Row:
    request_index: int
    question_index: int
    source: int  # index of the request inside its chunk
    suffix_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    stop_reason: StopReason | None = None


class GenerationEngine:
    """Serves many Face-LLaVA requests per call with shared-prefix batched greedy decoding."""

    def __init__(
        self,
        model: FaceLlava,
        tokenizer: PromptTokenizer,
        *,
        max_new_tokens: int = 48,
        max_batch_clips: int = 8,
        ignore_eos: bool = False,
        eos_token_id: int | None = None,
    ) -> None:
        if max_new_tokens < 1 or max_batch_clips < 1:
            raise ValueError("max_new_tokens and max_batch_clips must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.max_batch_clips = max_batch_clips
        self.ignore_eos = ignore_eos
        self.eos_token_id = tokenizer.eos_id if eos_token_id is None else eos_token_id
        self.counters = EngineCounters()
        self.num_frames = model.config.video_tower.num_frames
        self._cache_kwarg = _cache_kwarg(model.language_model)
        self._prefix_ids: dict[Modality, torch.Tensor] = {}

    # -- public -----------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Answer every question of every request; results come back in request order."""
        for request in requests:
            self._check(request)
        rows: list[_Row] = []
        for modality in ("video", "image"):
            indices = [i for i, r in enumerate(requests) if r.modality == modality]
            for start in range(0, len(indices), self.max_batch_clips):
                chunk = indices[start : start + self.max_batch_clips]
                rows.extend(self._run_chunk(modality, [requests[i] for i in chunk], chunk))
        return self._results(requests, rows)

    # -- steps ------------------------------------------------------------------------

    def _check(self, request: GenerationRequest) -> None:
        shape = tuple(request.visual.shape)
        channels = shape[0] if request.is_preprocessed else shape[-1]
        if len(shape) not in (3, 4) or channels != 3:
            raise EngineRequestError(
                f"request {request.key!r}: visual must be uint8 (H, W, 3) or (T, H, W, 3) RGB, "
                "or float (3, S, S) or (3, T, S, S) tower input; "
                f"got {shape} {request.visual.dtype}"
            )
        if not request.questions:
            raise EngineRequestError(f"request {request.key!r} asks no question")
        for question in request.questions:
            prompt_suffix(question.text)  # raises PromptError on a bad question

    def _prefix(self, modality: Modality) -> torch.Tensor:
        if modality not in self._prefix_ids:
            ids = self.tokenizer.encode_question("?", modality, self.num_frames).prefix_ids
            self._prefix_ids[modality] = torch.tensor(ids, device=self.model.device)
        return self._prefix_ids[modality]

    def _visual_features(
        self, modality: Modality, requests: Sequence[GenerationRequest]
    ) -> torch.Tensor:
        """(B, S, N, D): S feature blocks per request, one per sentinel."""
        model = self.model
        self.counters.tower_batch_sizes[len(requests)] += 1
        pixels = tower_input(model, modality, [r.visual for r in requests])
        if modality == "video":
            self.counters.clips += len(requests)
            return model.encode_videos(pixels)
        self.counters.images += len(requests)
        return model.encode_images(pixels).unsqueeze(1)

    def _run_chunk(
        self, modality: Modality, requests: Sequence[GenerationRequest], indices: list[int]
    ) -> list[_Row]:
        model = self.model
        features = self._visual_features(modality, requests)
        prefix_ids = self._prefix(modality)
        prefix_embeds = torch.stack(
            [model.splice_visual_features(prefix_ids, blocks) for blocks in features]
        )
        prefix_cache = DynamicCache()
        model.language_model.model(
            inputs_embeds=prefix_embeds, use_cache=True, **{self._cache_kwarg: prefix_cache}
        )
        prefix_length = prefix_embeds.shape[1]
        self.counters.prefill_tokens += prefix_embeds.shape[0] * prefix_length
        self.counters.requests += len(requests)

        rows = [
            _Row(
                request_index=request_index,
                question_index=q,
                source=source,
                suffix_ids=self.tokenizer.encode_piece(prompt_suffix(question.text)),
            )
            for source, (request_index, request) in enumerate(zip(indices, requests, strict=True))
            for q, question in enumerate(request.questions)
        ]
        self.counters.questions += len(rows)
        prefix_kv = _layer_kv(prefix_cache)
        del prefix_cache, prefix_embeds, features
        self._decode(rows, prefix_kv, prefix_length)
        return rows

    def _decode(
        self,
        rows: list[_Row],
        prefix_kv: list[tuple[torch.Tensor, torch.Tensor]],
        prefix_length: int,
    ) -> None:
        model = self.model
        device = model.device
        suffix_max = max(len(row.suffix_ids) for row in rows)
        capacity = prefix_length + suffix_max + self.max_new_tokens
        source = torch.tensor([row.source for row in rows], device=device)
        # One copy of the shared prefix cache per question; each prefix layer is released
        # as soon as it is copied, so the peak is one layer above the rows' own cache.
        layers = []
        while prefix_kv:
            keys, values = prefix_kv.pop(0)
            layers.append(_PreallocatedLayer(keys[source], values[source], capacity))
            del keys, values
        cache = Cache(layers=layers)

        count = len(rows)
        suffix_ids = torch.zeros((count, suffix_max), dtype=torch.long, device=device)
        mask = torch.zeros((count, capacity), dtype=torch.long, device=device)
        mask[:, :prefix_length] = 1
        for r, row in enumerate(rows):
            length = len(row.suffix_ids)
            suffix_ids[r, suffix_max - length :] = torch.tensor(row.suffix_ids, device=device)
            mask[r, prefix_length + suffix_max - length : prefix_length + suffix_max] = 1
        suffix_lengths = torch.tensor([len(row.suffix_ids) for row in rows], device=device)
        steps = torch.arange(suffix_max, device=device)
        # Real suffix tokens get positions prefix_length.. per row; pads (masked) reuse the first.
        position_ids = prefix_length + (steps - (suffix_max - suffix_lengths)[:, None]).clamp(min=0)
        self.counters.prefill_tokens += int(suffix_lengths.sum())

        active = list(range(count))  # batch row → index into `rows`
        next_positions = prefix_length + suffix_lengths
        width = prefix_length + suffix_max
        inputs_embeds = model.embed_tokens(suffix_ids)
        for step in range(self.max_new_tokens):
            self.counters.decode_batch_sizes[len(active)] += 1
            self.counters.decode_steps += 1
            logits = model.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=mask[:, :width],
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kwarg: cache},
            ).logits[:, -1]
            next_tokens = logits.argmax(dim=-1)
            finished = self._record(rows, active, next_tokens.tolist(), step)
            if len(finished) == len(active):
                break
            mask[:, width] = 1
            width += 1
            position_ids = next_positions[:, None].clone()
            next_positions = next_positions + 1
            inputs_embeds = model.embed_tokens(next_tokens[:, None])
            if finished and 2 * len(finished) >= len(active):
                keep = torch.tensor(
                    [b for b, r in enumerate(active) if r not in finished], device=device
                )
                cache.batch_select_indices(keep)
                mask, position_ids = mask[keep], position_ids[keep]
                next_positions, inputs_embeds = next_positions[keep], inputs_embeds[keep]
                active = [r for r in active if r not in finished]

    def _record(self, rows: list[_Row], active: list[int], tokens: list[int], step: int) -> set:
        """Append each active row's new token; return the rows that are now done."""
        finished: set[int] = set()
        for r, token in zip(active, tokens, strict=True):
            row = rows[r]
            if row.stop_reason is not None:
                finished.add(r)
                continue
            if token == self.eos_token_id and not self.ignore_eos:
                row.stop_reason = "eos"
                finished.add(r)
                continue
            row.token_ids.append(token)
            self.counters.tokens_generated += 1
            if step + 1 >= self.max_new_tokens:
                row.stop_reason = "length"
                finished.add(r)
        return finished

    def _results(
        self, requests: Sequence[GenerationRequest], rows: list[_Row]
    ) -> list[GenerationResult]:
        by_request: dict[int, list[_Row]] = {}
        for row in rows:
            by_request.setdefault(row.request_index, []).append(row)
        results = []
        for index, request in enumerate(requests):
            answers = tuple(
                Answer(
                    question=request.questions[row.question_index],
                    text=self.tokenizer.decode(row.token_ids),
                    token_ids=tuple(row.token_ids),
                    stop_reason=row.stop_reason or "length",
                )
                for row in sorted(by_request[index], key=lambda row: row.question_index)
            )
            results.append(GenerationResult(request.key, request.modality, answers))
        return results


def tower_input(
    model: FaceLlava, modality: Modality, visuals: Sequence[np.ndarray | torch.Tensor]
) -> torch.Tensor:
    """Batched tower input: uint8 RGB visuals preprocessed, float ones taken as they are."""
    device = model.device
    if modality == "video":
        tower = model.config.video_tower
        frames = tower.num_frames
        shape = (len(visuals), 3, frames, tower.image_size, tower.image_size)
    else:
        tower = model.config.image_tower
        shape = (len(visuals), 3, tower.image_size, tower.image_size)
    pixels = torch.empty(shape, dtype=torch.float32, device=device)
    raw = [i for i, v in enumerate(visuals) if v.dtype in (np.uint8, torch.uint8)]
    if raw:
        chosen = [visuals[i] for i in raw]
        if modality == "video":
            pixels[raw] = preprocess_videos(chosen, tower.image_size, frames, device=device)
        else:
            pixels[raw] = preprocess_images(chosen, tower.image_size, device=device)
    for i, visual in enumerate(visuals):
        if i not in raw:
            tensor = torch.as_tensor(visual)
            if tuple(tensor.shape) != shape[1:]:
                raise EngineRequestError(
                    f"preprocessed {modality} input must be {shape[1:]}, got {tuple(tensor.shape)}"
                )
            pixels[i] = tensor.to(device=device, dtype=torch.float32)
    return pixels


@torch.inference_mode()
def greedy_generate(
    model: FaceLlava,
    tokenizer: PromptTokenizer,
    visual: np.ndarray | torch.Tensor,
    question: str,
    *,
    max_new_tokens: int = 48,
    ignore_eos: bool = False,
    eos_token_id: int | None = None,
) -> Answer:
    """The authors' loop: one request, one question, full prompt, argmax until `</s>`.

    `visual` as in `GenerationRequest`.
    """
    eos_token_id = tokenizer.eos_id if eos_token_id is None else eos_token_id
    modality: Modality = "image" if visual.ndim == 3 else "video"
    num_frames = model.config.video_tower.num_frames
    ids = tokenizer.encode_question(question, modality, num_frames).input_ids
    pixels = tower_input(model, modality, [visual])
    if modality == "image":
        features = model.encode_images(pixels)
    else:
        features = model.encode_videos(pixels)[0]
    embeds = model.splice_visual_features(torch.tensor(ids, device=model.device), features)
    cache = DynamicCache()
    cache_kwarg = _cache_kwarg(model.language_model)
    inputs_embeds = embeds[None]
    tokens: list[int] = []
    stop_reason: StopReason = "length"
    for _ in range(max_new_tokens):
        logits = model.language_model(
            inputs_embeds=inputs_embeds, use_cache=True, logits_to_keep=1, **{cache_kwarg: cache}
        ).logits
        token = int(logits[0, -1].argmax())
        if token == eos_token_id and not ignore_eos:
            stop_reason = "eos"
            break
        tokens.append(token)
        inputs_embeds = model.embed_tokens(torch.tensor([[token]], device=model.device))
    return Answer(
        question=Question(question, _task_of(question)),
        text=tokenizer.decode(tokens),
        token_ids=tuple(tokens),
        stop_reason=stop_reason,
    )


def _task_of(question: str) -> Task | None:
    return next((task for task, text in DEFAULT_QUESTIONS.items() if text == question), None)


def default_requests_for(
    key: Hashable,
    clip_rgb: np.ndarray | None,
    image_rgb: np.ndarray | None,
    tasks: Sequence[Task],
) -> list[GenerationRequest]:
    """Requests for `tasks` on one face: each task goes to its recommended modality."""
    requests = []
    for modality, visual in (("video", clip_rgb), ("image", image_rgb)):
        wanted = [task for task in tasks if TASK_MODALITY[task] == modality]
        if wanted and visual is not None:
            requests.append(GenerationRequest.for_tasks((key, modality), visual, wanted))
    return requests
