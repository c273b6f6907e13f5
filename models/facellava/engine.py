"""Continuous-batching greedy generation for Face-LLaVA: requests join and leave per step.

A request is one visual (a clip or a face image) and its questions. The engine holds a
fixed number of visuals per modality in preallocated KV slots (`kv_slots.py`); each
visual's questions run on that slot's lanes and read its prefix KV in place.

One `step()`:

1. **Admit**: pending requests take free slots (at most `max_batch_clips` per modality
   and step); their tower runs as one batch, their shared prefix `{system} USER: {visual}`
   is prefilled once per visual into its slot.
2. **Start questions**: questions waiting for a lane of their visual take free lanes;
   their suffixes `\\n{question} ASSISTANT:` are prefilled together (video and image
   rows in one pass), each attending over its slot's prefix; that gives their first token.
3. **Decode**: one token for every lane of every occupied slot, video and image rows in
   one batch (`SlotDecoder.decode_step`: static shapes per slot bucket, a CUDA graph per
   bucket on CUDA when enabled).
4. **Leave**: a row that says `</s>` or reaches `max_new_tokens` frees its lane at once
   (the next waiting question of the same visual may take it); a visual whose questions
   are all answered frees its slot, and its `GenerationResult` is returned by `step()`.

A model stage drives it with `submit(request) -> RequestHandle` and `step()`;
`generate(requests)` runs a list to completion (what `ask`, `analyze`, the worker's
model loop and `bench model` call). Every answer is the token sequence of the authors'
plain one-request loop (`greedy_generate`: full prompt, argmax, stop at `</s>`), which
`tests/test_facellava_engine.py` checks with requests joining and leaving mid-decode.

Not thread-safe: one model thread owns an engine.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from models.facellava.answers import Task
from models.facellava.batch_limits import admission_bytes_per_clip
from models.facellava.kv_slots import (
    PoolShape,
    SlotBudget,
    SlotPool,
    attention_head_dim,
    bucket_for,
    bucket_sizes,
    free_device_bytes,
    kv_bytes_per_token,
    size_visual_slots,
)
from models.facellava.preprocess import preprocess_images, preprocess_videos
from models.facellava.prompts import (
    DEFAULT_QUESTIONS,
    TASK_MODALITY,
    Modality,
    PromptTokenizer,
    prompt_suffix,
)
from models.facellava.slot_decoder import MODALITY_ORDER, NewRow, SlotDecoder

if TYPE_CHECKING:
    from models.facellava.modeling import FaceLlava
    from models.facellava.options import ModelOptions

StopReason = Literal["eos", "length"]
"""Why an answer ended: `eos` (the model said `</s>`) or `length` (`max_new_tokens`)."""

AUTO_MAX_VISUALS = 128
"""Most visuals per modality an "auto"-sized engine holds, however much memory is free."""
DEFAULT_LANES: dict[Modality, int] = {
    modality: sum(1 for m in TASK_MODALITY.values() if m == modality) for modality in MODALITY_ORDER
}
"""Lanes (questions decoding at once) per visual: the tasks the authors send to that
modality (video: emotion; image: age, attributes, action units). More questions of one
visual wait for a lane of their own visual; they never copy its prefix."""


class EngineRequestError(ValueError):
    """A request the engine cannot serve (wrong pixel shape, no questions...)."""


class EngineFullError(RuntimeError):
    """`submit` on an engine whose pending queue is full: step it first."""


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
    """Active rows per decode step."""
    decode_padded_sizes: Counter[int] = field(default_factory=Counter)
    """Rows the step ran, padded to its slot buckets (free lanes run as dummy rows)."""


class RequestHandle:
    """A submitted request; `answers` fill in as its questions finish, `done` when all have."""

    def __init__(self, request: GenerationRequest, suffix_ids: list[list[int]]) -> None:
        self.request = request
        self.suffix_ids = suffix_ids
        self.answers: list[Answer | None] = [None] * len(request.questions)

    @property
    def done(self) -> bool:
        """Every question answered."""
        return all(answer is not None for answer in self.answers)

    def result(self) -> GenerationResult:
        """The finished request's answers in question order."""
        if not self.done:
            raise RuntimeError(f"request {self.request.key!r} is not finished")
        answers = tuple(answer for answer in self.answers if answer is not None)
        return GenerationResult(self.request.key, self.request.modality, answers)


@dataclass
class _Row:
    """A question decoding on a lane (its tokens so far sit in the engine's answer buffer)."""

    question_index: int


@dataclass
class _Visual:
    """A request that holds a slot: its waiting questions and its lanes."""

    handle: RequestHandle
    waiting: deque[int]
    lanes: list[_Row | None]


class GenerationEngine:
    """Continuous batching over preallocated KV slots with shared-prefix greedy decoding."""

    def __init__(
        self,
        model: FaceLlava,
        tokenizer: PromptTokenizer,
        *,
        max_new_tokens: int = 48,
        max_batch_clips: int = 8,
        max_visuals: int | Literal["auto"] = "auto",
        lanes: Mapping[Modality, int] | None = None,
        max_question_tokens: int = 96,
        memory_fraction: float = 0.6,
        max_pending: int | None = None,
        ignore_eos: bool = False,
        eos_token_id: int | None = None,
        cuda_graphs: bool = False,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        """`max_visuals`: slots per modality ("auto": sized from free device memory, see
        `kv_slots.size_visual_slots`); `max_batch_clips`: most visuals of one modality
        admitted (one tower batch) per step; `max_pending`: submitted requests waiting for
        a slot (default 4 × `max_visuals`), beyond which `submit` refuses."""
        if min(max_new_tokens, max_batch_clips, max_question_tokens) < 1:
            raise ValueError("max_new_tokens, max_batch_clips, max_question_tokens must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.max_batch_clips = max_batch_clips
        self.max_question_tokens = max_question_tokens
        self.ignore_eos = ignore_eos
        self.eos_token_id = tokenizer.eos_id if eos_token_id is None else eos_token_id
        self.counters = EngineCounters()
        self.num_frames = model.config.video_tower.num_frames
        self._prefix_ids: dict[Modality, torch.Tensor] = {}
        self.lanes = dict(DEFAULT_LANES if lanes is None else lanes)
        kv_dtype = kv_dtype or model.dtype
        lane_tokens = max_question_tokens + max_new_tokens
        shapes = {
            m: PoolShape(1, self.lanes[m], self._prefix_tokens(m), lane_tokens)
            for m in MODALITY_ORDER
        }
        self.slot_budget: SlotBudget | None = None
        if max_visuals == "auto":
            self.slot_budget = self._size_slots(shapes, kv_dtype, memory_fraction)
            max_visuals = self.slot_budget.visuals
        if max_visuals < 1:
            raise ValueError(f"max_visuals must be >= 1 or 'auto', got {max_visuals}")
        self.max_visuals = max_visuals
        self.max_pending = 4 * max_visuals if max_pending is None else max_pending
        config = model.language_model.config
        head_dim = attention_head_dim(config)
        self.pools = {
            m: SlotPool(
                PoolShape(max_visuals, shape.lanes, shape.prefix_tokens, shape.lane_tokens),
                layers=config.num_hidden_layers,
                kv_heads=config.num_key_value_heads,
                head_dim=head_dim,
                dtype=kv_dtype,
                device=model.device,
            )
            for m, shape in shapes.items()
        }
        self.decoder = SlotDecoder(model.language_model, self.pools, cuda_graphs=cuda_graphs)
        self.buckets = bucket_sizes(max_visuals)
        self._slots: dict[Modality, list[_Visual | None]] = {
            m: [None] * max_visuals for m in MODALITY_ORDER
        }
        self._pending: dict[Modality, deque[RequestHandle]] = {m: deque() for m in MODALITY_ORDER}
        # Bookkeeping kept in step with `_slots` so a step never scans every slot in
        # Python: which lanes hold a decoding row, and which slots still have questions
        # waiting for a lane (a slot leaves the set when its last question got one).
        self._live = {m: np.zeros((max_visuals, self.lanes[m]), bool) for m in MODALITY_ORDER}
        self._waiting_slots: dict[Modality, set[int]] = {m: set() for m in MODALITY_ORDER}
        # Tokens each lane's answer has so far, written for all rows of a step at once.
        self._answer_tokens = {
            m: np.zeros((max_visuals, self.lanes[m], max_new_tokens), np.int64)
            for m in MODALITY_ORDER
        }
        self._answer_lengths = {
            m: np.zeros((max_visuals, self.lanes[m]), np.int64) for m in MODALITY_ORDER
        }

    @classmethod
    def from_options(
        cls, model: FaceLlava, tokenizer: PromptTokenizer, options: ModelOptions, eos_token_id: int
    ) -> GenerationEngine:
        """An engine with the generation knobs of `options` (FP8 applied to `model` in place)."""
        kv_dtype = None
        if options.fp8 != "off":
            from models.facellava.fp8 import FP8_KV_DTYPE, quantize_language_model

            quantize_language_model(model.language_model)
            if options.fp8 == "weights_kv":
                kv_dtype = FP8_KV_DTYPE
        return cls(
            model,
            tokenizer,
            max_new_tokens=options.max_new_tokens,
            max_batch_clips=options.max_batch_clips,
            max_visuals=options.engine_visuals,
            memory_fraction=options.kv_memory_fraction,
            eos_token_id=eos_token_id,
            cuda_graphs=options.cuda_graphs,
            kv_dtype=kv_dtype,
        )

    # -- sizes --------------------------------------------------------------------------

    def _prefix(self, modality: Modality) -> torch.Tensor:
        if modality not in self._prefix_ids:
            ids = self.tokenizer.encode_question("?", modality, self.num_frames).prefix_ids
            self._prefix_ids[modality] = torch.tensor(ids, device=self.model.device)
        return self._prefix_ids[modality]

    def _prefix_tokens(self, modality: Modality) -> int:
        """Length of a modality's prefix once its sentinels became visual tokens."""
        config = self.model.config
        ids = self._prefix(modality)
        sentinels = int((ids < 0).sum())
        if modality == "video":
            per_sentinel = config.video_tower.num_patches + 1
        else:
            per_sentinel = config.image_tower.num_patches + (config.select_feature == "cls_patch")
        return len(ids) - sentinels + sentinels * per_sentinel

    def _size_slots(
        self, shapes: Mapping[Modality, PoolShape], kv_dtype: torch.dtype, fraction: float
    ) -> SlotBudget:
        config = self.model.language_model.config
        head_dim = attention_head_dim(config)
        element = torch.empty((), dtype=kv_dtype).element_size()
        per_token = kv_bytes_per_token(
            config.num_hidden_layers, config.num_key_value_heads, head_dim, element
        )
        # Activations of one admission (`batch_limits` has the estimate), in the compute dtype.
        act = self.model.dtype.itemsize if hasattr(self.model.dtype, "itemsize") else 2
        workspace = self.max_batch_clips * admission_bytes_per_clip(self.model.config, act)
        return size_visual_slots(
            free_bytes=free_device_bytes(self.model.device),
            video_slot_bytes=shapes["video"].tokens_per_slot * per_token,
            image_slot_bytes=shapes["image"].tokens_per_slot * per_token,
            workspace_bytes=workspace,
            memory_fraction=fraction,
            max_visuals=AUTO_MAX_VISUALS,
        )

    # -- public -------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Questions decoding now (rows on a lane)."""
        return int(sum(live.sum() for live in self._live.values()))

    @property
    def pending(self) -> int:
        """Submitted requests waiting for a slot."""
        return sum(len(queue) for queue in self._pending.values())

    @property
    def in_flight(self) -> int:
        """Requests that hold a slot (some of their questions may still wait for a lane)."""
        return sum(v is not None for visuals in self._slots.values() for v in visuals)

    @property
    def idle(self) -> bool:
        """Nothing pending, nothing in flight."""
        return not self.pending and not self.in_flight

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a request; it joins the decode batch at a coming `step()`.

        Raises `EngineRequestError` for a request it cannot serve and `EngineFullError`
        when `max_pending` requests already wait (policy: refuse, the caller keeps it).
        """
        suffix_ids = self._check(request)
        if self.pending >= self.max_pending:
            raise EngineFullError(f"{self.pending} requests already wait for a slot")
        handle = RequestHandle(request, suffix_ids)
        self._pending[request.modality].append(handle)
        return handle

    def step(self) -> list[GenerationResult]:
        """Admit, start questions, decode one token; return the requests that finished.

        If a step fails, every request in the engine is dropped (`reset`) and the error is
        raised: their KV state is no longer trustworthy.
        """
        finished: list[GenerationResult] = []
        try:
            with torch.inference_mode():
                self._admit()
                self._start_questions(finished)
                self._decode(finished)
        except BaseException:
            self.reset()
            raise
        return finished

    def reset(self) -> None:
        """Drop every pending and in-flight request."""
        for modality in MODALITY_ORDER:
            self._pending[modality].clear()
            for slot in range(self.max_visuals):
                self._release_slot(modality, slot)

    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Answer every question of every request; results come back in request order."""
        for request in requests:
            self._check(request)
        if not self.idle:
            raise RuntimeError("generate() runs on an idle engine; this one has requests in it")
        waiting = deque(requests)
        handles: list[RequestHandle] = []
        while waiting or not all(handle.done for handle in handles):
            while waiting and self.pending < self.max_pending:
                handles.append(self.submit(waiting.popleft()))
            self.step()
        return [handle.result() for handle in handles]

    # -- steps --------------------------------------------------------------------------

    def _check(self, request: GenerationRequest) -> list[list[int]]:
        """Validate `request`; its questions' suffix token ids."""
        shape = tuple(request.visual.shape)
        channels = shape[0] if request.is_preprocessed else shape[-1]
        if len(shape) not in (3, 4) or channels != 3:
            raise EngineRequestError(
                f"request {request.key!r}: visual must be uint8 (H, W, 3) or (T, H, W, 3) RGB, "
                "or float (3, S, S) or (3, T, S, S) tower input; "
                f"got {shape} {request.visual.dtype}"
            )
        if request.is_preprocessed:
            expected = tower_input_shape(self.model, request.modality)
            if shape != expected:
                raise EngineRequestError(
                    f"request {request.key!r}: preprocessed {request.modality} input must be "
                    f"{expected}, got {shape}"
                )
        if not request.questions:
            raise EngineRequestError(f"request {request.key!r} asks no question")
        suffixes = []
        for question in request.questions:
            ids = self.tokenizer.encode_piece(prompt_suffix(question.text))
            if len(ids) > self.max_question_tokens:
                raise EngineRequestError(
                    f"request {request.key!r}: question of {len(ids)} tokens is longer than "
                    f"max_question_tokens {self.max_question_tokens}"
                )
            suffixes.append(ids)
        return suffixes

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

    def _admit(self) -> None:
        """Pending requests into free slots: one tower batch and prefix prefill per modality."""
        for modality in MODALITY_ORDER:
            queue = self._pending[modality]
            if not queue:
                continue  # most steps: nothing waits, so the slots are not scanned
            free = [s for s, visual in enumerate(self._slots[modality]) if visual is None]
            count = min(len(free), len(queue), self.max_batch_clips)
            if count == 0:
                continue
            handles = [queue.popleft() for _ in range(count)]
            slots = free[:count]
            features = self._visual_features(modality, [h.request for h in handles])
            prefix_ids = self._prefix(modality)
            embeds = torch.stack(
                [self.model.splice_visual_features(prefix_ids, blocks) for blocks in features]
            )
            self.decoder.prefill_prefix(modality, slots, embeds)
            self.counters.requests += count
            self.counters.prefill_tokens += embeds.shape[0] * embeds.shape[1]
            lanes = self.lanes[modality]
            for slot, handle in zip(slots, handles, strict=True):
                waiting = deque(range(len(handle.request.questions)))
                self._slots[modality][slot] = _Visual(handle, waiting, [None] * lanes)
                self._waiting_slots[modality].add(slot)

    def _start_questions(self, finished: list[GenerationResult]) -> None:
        """Waiting questions onto free lanes of their visual; prefill their suffixes."""
        new_rows: list[NewRow] = []
        for modality in MODALITY_ORDER:
            waiting_slots = self._waiting_slots[modality]
            for slot in sorted(waiting_slots):
                visual = self._slots[modality][slot]
                assert visual is not None
                for lane, row in enumerate(visual.lanes):
                    if row is None and visual.waiting:
                        question = visual.waiting.popleft()
                        visual.lanes[lane] = _Row(question)
                        self._live[modality][slot, lane] = True
                        suffix = visual.handle.suffix_ids[question]
                        new_rows.append(NewRow(modality, slot, lane, suffix))
                if not visual.waiting:
                    waiting_slots.discard(slot)
        if not new_rows:
            return
        tokens = np.asarray(self.decoder.prefill_suffix(new_rows), np.int64)
        self.counters.questions += len(new_rows)
        self.counters.prefill_tokens += sum(len(row.suffix_ids) for row in new_rows)
        for modality in MODALITY_ORDER:
            members = [i for i, row in enumerate(new_rows) if row.modality == modality]
            if members:
                slots = np.array([new_rows[i].slot for i in members], np.int64)
                lanes = np.array([new_rows[i].lane for i in members], np.int64)
                self._record(modality, slots, lanes, tokens[members], finished)

    def _decode(self, finished: list[GenerationResult]) -> None:
        """One token for every active lane, all modalities in one batch."""
        used: dict[Modality, int] = {}
        rows: dict[Modality, tuple[np.ndarray, np.ndarray]] = {}
        for modality in MODALITY_ORDER:
            # Live (slot, lane) pairs in slot order: the last one is the highest slot.
            slots, lanes = rows[modality] = np.nonzero(self._live[modality])
            used[modality] = bucket_for(int(slots[-1]) + 1 if slots.size else 0, self.buckets)
        if not any(used.values()):
            return
        active = sum(len(slots) for slots, _ in rows.values())
        tokens = self.decoder.decode_step(used)
        self.counters.decode_steps += 1
        self.counters.decode_batch_sizes[active] += 1
        self.counters.decode_padded_sizes[
            sum(count * self.lanes[m] for m, count in used.items())
        ] += 1
        offset = 0
        for modality in MODALITY_ORDER:
            count, lanes = used[modality], self.lanes[modality]
            if count == 0:
                continue
            slots, row_lanes = rows[modality]
            state = self.decoder.states[modality]
            state.stored[slots, row_lanes] += 1
            state.position[slots, row_lanes] += 1
            step_tokens = tokens[offset : offset + count * lanes].reshape(count, lanes)
            self._record(modality, slots, row_lanes, step_tokens[slots, row_lanes], finished)
            offset += count * lanes

    def _record(
        self,
        modality: Modality,
        slots: np.ndarray,
        lanes: np.ndarray,
        tokens: np.ndarray,
        finished: list[GenerationResult],
    ) -> None:
        """Append each row's new token, or end the row (`eos` / `length`); the rows are
        distinct (slot, lane) pairs of `modality`, handled with numpy all at once."""
        eos = None if self.ignore_eos else tokens == self.eos_token_id
        if eos is not None and eos.any():
            for index in np.flatnonzero(eos):
                self._finish(modality, int(slots[index]), int(lanes[index]), "eos", finished)
            keep = ~eos
            slots, lanes, tokens = slots[keep], lanes[keep], tokens[keep]
        lengths = self._answer_lengths[modality][slots, lanes]
        self._answer_tokens[modality][slots, lanes, lengths] = tokens
        lengths += 1
        self._answer_lengths[modality][slots, lanes] = lengths
        self.decoder.states[modality].token[slots, lanes] = tokens
        self.counters.tokens_generated += len(tokens)
        for index in np.flatnonzero(lengths >= self.max_new_tokens):
            self._finish(modality, int(slots[index]), int(lanes[index]), "length", finished)

    def _finish(
        self,
        modality: Modality,
        slot: int,
        lane: int,
        reason: StopReason,
        finished: list[GenerationResult],
    ) -> None:
        visual = self._slots[modality][slot]
        assert visual is not None
        row = visual.lanes[lane]
        assert row is not None
        handle = visual.handle
        length = self._answer_lengths[modality][slot, lane]
        token_ids = self._answer_tokens[modality][slot, lane, :length].tolist()
        handle.answers[row.question_index] = Answer(
            question=handle.request.questions[row.question_index],
            text=self.tokenizer.decode(token_ids),
            token_ids=tuple(token_ids),
            stop_reason=reason,
        )
        visual.lanes[lane] = None
        self._live[modality][slot, lane] = False
        self._answer_lengths[modality][slot, lane] = 0
        self.decoder.states[modality].clear_lane(slot, lane)
        if handle.done:
            self._release_slot(modality, slot)
            finished.append(handle.result())

    def _release_slot(self, modality: Modality, slot: int) -> None:
        self._slots[modality][slot] = None
        self._live[modality][slot] = False
        self._answer_lengths[modality][slot] = 0
        self._waiting_slots[modality].discard(slot)
        state = self.decoder.states[modality]
        state.prefix_len[slot] = 0
        for lane in range(self.lanes[modality]):
            state.clear_lane(slot, lane)


def tower_input_shape(model: FaceLlava, modality: Modality) -> tuple[int, ...]:
    """Shape of one preprocessed visual: (3, S, S) for an image, (3, T, S, S) for a clip."""
    if modality == "video":
        tower = model.config.video_tower
        return (3, tower.num_frames, tower.image_size, tower.image_size)
    tower = model.config.image_tower
    return (3, tower.image_size, tower.image_size)


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


@dataclass(frozen=True)
class GreedyOutput:
    """One prompt's greedy continuation: new tokens (no `</s>`), why it stopped, and the
    logits of every step (float32, (n, V)) when asked for."""

    token_ids: tuple[int, ...]
    stop_reason: StopReason
    step_logits: torch.Tensor | None = None


@torch.inference_mode()
def greedy_decode(
    model: FaceLlava,
    inputs_embeds: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    ignore_eos: bool = False,
    keep_logits: bool = False,
) -> GreedyOutput:
    """The authors' loop on one prompt's embeddings (1, L, D): prefill, then argmax one
    token at a time with the transformers KV cache, until `</s>` or `max_new_tokens`."""
    step = model.lm_forward(inputs_embeds=inputs_embeds, logits_to_keep=1)
    tokens: list[int] = []
    scores: list[torch.Tensor] = []
    stop_reason: StopReason = "length"
    while len(tokens) < max_new_tokens:
        logits = step.logits[0, -1]
        if keep_logits:
            scores.append(logits.float())
        token = int(logits.argmax())
        if token == eos_token_id and not ignore_eos:
            stop_reason = "eos"
            break
        tokens.append(token)
        if len(tokens) == max_new_tokens:
            break
        ids = torch.tensor([[token]], device=inputs_embeds.device)
        step = model.lm_forward(input_ids=ids, cache=step.cache, logits_to_keep=1)
    return GreedyOutput(
        token_ids=tuple(tokens),
        stop_reason=stop_reason,
        step_logits=torch.stack(scores) if keep_logits and scores else None,
    )


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
    output = greedy_decode(
        model,
        embeds[None],
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        ignore_eos=ignore_eos,
    )
    return Answer(
        question=Question(question, _task_of(question)),
        text=tokenizer.decode(list(output.token_ids)),
        token_ids=output.token_ids,
        stop_reason=output.stop_reason,
    )


def _task_of(question: str) -> Task | None:
    return next((task for task, text in DEFAULT_QUESTIONS.items() if text == question), None)
