"""The Llama of Face-LLaVA run over KV slots: prefix prefill, suffix prefill, decode step.

Three calls, all through the same layer loop (`_layers`: the model's own norms,
projections, rotary embedding and MLP; only the attention is ours):

- `prefill_prefix`: the visual prefixes of newly admitted visuals (one modality, same
  length), causal attention among themselves; their keys/values go to their slots.
- `prefill_suffix`: the question suffixes of rows that take a free lane (right-padded),
  each attending over its slot's prefix plus its own lane; returns each row's first token.
- `decode_step`: one token for every lane of every occupied slot, video and image rows
  in one batch. Its shapes depend only on its key, per pool the slot bucket
  (`kv_slots.bucket_sizes`) and the lane-length bucket (`kv_slots.lane_length_buckets`);
  its inputs live in preallocated tensors, and it allocates no KV: on CUDA it can be
  captured as a CUDA graph per key (`cuda_graphs=True`); elsewhere the very same
  function runs eagerly.

Attention is `torch.nn.functional.scaled_dot_product_attention` with an explicit boolean
mask: the queries of a slot's lanes form one SDPA batch entry, whose keys are the used
front of the slot's buffer (`(slots, kv_heads, prefix + lanes × lane bucket, head_dim)`,
a view, no gather; lanes interleave token by token, see `kv_slots`): a lane sees the
prefix and its own tokens, nothing else. The causal prefix prefill calls SDPA without a
mask, so on CUDA in half precision SDPA picks its FlashAttention-2 kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from models.facellava.kv_slots import (
    SlotPool,
    attention_head_dim,
    bucket_for,
    lane_length_buckets,
)
from models.facellava.prompts import Modality

MODALITY_ORDER: tuple[Modality, ...] = ("video", "image")
"""Row order inside a decode batch: every video row, then every image row."""


class GraphMismatchError(RuntimeError):
    """A captured CUDA graph gave other tokens than the eager step on the same inputs."""


@dataclass
class LaneState:
    """Host-side inputs of the next decode step for one pool (numpy, full capacity).

    `stored[s, l]`: tokens already in lane `l` of slot `s`; `token`/`position`: the token
    the lane feeds next and its position id. Free lanes and free slots hold zeros: they
    run as dummy rows whose outputs are ignored.
    """

    prefix_len: np.ndarray  # (S,)
    stored: np.ndarray  # (S, Q)
    token: np.ndarray  # (S, Q)
    position: np.ndarray  # (S, Q)

    @classmethod
    def empty(cls, slots: int, lanes: int) -> LaneState:
        """All slots free."""
        return cls(
            prefix_len=np.zeros(slots, np.int64),
            stored=np.zeros((slots, lanes), np.int64),
            token=np.zeros((slots, lanes), np.int64),
            position=np.zeros((slots, lanes), np.int64),
        )

    def clear_lane(self, slot: int, lane: int) -> None:
        """Back to a dummy lane."""
        self.stored[slot, lane] = self.token[slot, lane] = self.position[slot, lane] = 0


@dataclass(frozen=True)
class NewRow:
    """A question taking lane `lane` of slot `slot` of `modality`: its suffix token ids."""

    modality: Modality
    slot: int
    lane: int
    suffix_ids: Sequence[int]


class _DeviceInputs:
    """The device copy of a `LaneState`: fixed tensors a CUDA graph can read."""

    def __init__(self, state: LaneState, device: torch.device) -> None:
        self.prefix_len = torch.zeros(state.prefix_len.shape, dtype=torch.long, device=device)
        self.stored = torch.zeros(state.stored.shape, dtype=torch.long, device=device)
        self.token = torch.zeros(state.token.shape, dtype=torch.long, device=device)
        self.position = torch.zeros(state.position.shape, dtype=torch.long, device=device)

    def upload(self, state: LaneState) -> None:
        for name in ("prefix_len", "stored", "token", "position"):
            getattr(self, name).copy_(torch.from_numpy(getattr(state, name)))


class SlotDecoder:
    """Prefill and decode for one `LlamaForCausalLM` over per-modality `SlotPool`s."""

    def __init__(
        self,
        language_model: torch.nn.Module,
        pools: Mapping[Modality, SlotPool],
        *,
        cuda_graphs: bool = False,
    ) -> None:
        config = language_model.config
        self.language_model = language_model
        self.body = language_model.model
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = attention_head_dim(config)
        self.scaling = self.head_dim**-0.5
        self.device = self.body.embed_tokens.weight.device
        self.dtype = self.body.embed_tokens.weight.dtype
        self.pools = {m: pools[m] for m in MODALITY_ORDER if m in pools}
        self.states = {
            m: LaneState.empty(p.shape.slots, p.shape.lanes) for m, p in self.pools.items()
        }
        self.lane_buckets = {
            m: lane_length_buckets(p.shape.lane_tokens) for m, p in self.pools.items()
        }
        self._rotary_table = self._build_rotary_table()
        # Row r of a pool's decode batch is lane r % lanes of slot r // lanes.
        self._slot_of_row = {
            m: torch.arange(p.shape.slots, device=self.device).repeat_interleave(p.shape.lanes)
            for m, p in self.pools.items()
        }
        self._inputs = {m: _DeviceInputs(self.states[m], self.device) for m in self.pools}
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the model is on {self.device}")
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._graph_pool = torch.cuda.graph_pool_handle() if cuda_graphs else None

    # -- the layer loop -----------------------------------------------------------------

    def _build_rotary_table(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """cos and sin of every position a slot can hold, computed once by the model's own
        rotary embedding (elementwise in the position, so a lookup gives the same values);
        None for rope types whose values depend on more than the position."""
        rotary = self.body.rotary_emb
        if getattr(rotary, "rope_type", "default") != "default":
            return None
        longest = max(pool.shape.tokens_per_slot for pool in self.pools.values())
        positions = torch.arange(longest, device=self.device)[None]
        probe = torch.empty((), dtype=self.dtype, device=self.device)
        cos, sin = rotary(probe, positions)
        return cos[0], sin[0]

    def _rotary(
        self, hidden: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rotary_table is None:
            return self.body.rotary_emb(hidden, positions)
        cos, sin = self._rotary_table
        return cos[positions], sin[positions]

    def _sdpa(self, q, k, v, **kwargs) -> torch.Tensor:
        if self.kv_heads != self.heads:
            kwargs["enable_gqa"] = True
        return F.scaled_dot_product_attention(q, k, v, scale=self.scaling, **kwargs)

    def _layers(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """(B, L, D) → final-normed (B, L, D); `attend(layer, q, k, v)` → (B, L, H*Dh)."""
        cos, sin = self._rotary(hidden, positions)
        for index, layer in enumerate(self.body.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            shape = (*x.shape[:-1], -1, self.head_dim)
            q = attn.q_proj(x).view(shape).transpose(1, 2)
            k = attn.k_proj(x).view(shape).transpose(1, 2)
            v = attn.v_proj(x).view(shape).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            hidden = hidden + attn.o_proj(attend(index, q, k, v))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.body.norm(hidden)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.lm_head(hidden)

    def _mask(
        self,
        pool: SlotPool,
        prefix_len: torch.Tensor,
        stored: torch.Tensor,
        queries: int,
        length: int,
    ) -> torch.Tensor:
        """(k, 1, Q*queries, length): query t of lane l sees the prefix and the first
        `stored + t + 1` tokens of lane l, over the first `length` token indices."""
        step = torch.arange(queries, device=self.device)
        mine = pool.token_lane[:length] == pool.lane_ids[:, None]  # (Q, length)
        reach = (stored[:, :, None] + step)[..., None]  # (k, Q, queries, 1)
        own = mine[None, :, None, :] & (pool.token_step[:length] <= reach)
        prefix = (pool.token_positions[:length] < prefix_len[:, None])[:, None, None, :]
        slots, lanes = stored.shape
        return (own | prefix).reshape(slots, 1, lanes * queries, length)

    def _pool_attention(
        self, pool: SlotPool, layer: int, q: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """q (k, H, Q*Lq, Dh) over slots [0, k) of `pool`, keys [0, mask length)."""
        count, length = q.shape[0], mask.shape[-1]
        keys = pool.read(pool.keys[layer][:count, :, :length], q.dtype)
        values = pool.read(pool.values[layer][:count, :, :length], q.dtype)
        return self._sdpa(q, keys, values, attn_mask=mask)

    # -- prefills -----------------------------------------------------------------------

    def prefill_prefix(
        self, modality: Modality, slots: Sequence[int], embeds: torch.Tensor
    ) -> None:
        """Run the prefixes `embeds` (N, Lp, D) and store their KV in `slots` of `modality`."""
        pool = self.pools[modality]
        count, length, _ = embeds.shape
        if length != pool.shape.prefix_tokens:
            raise ValueError(
                f"{modality} prefix has {length} tokens, the pool {pool.shape.prefix_tokens}"
            )
        slot_index = torch.tensor(list(slots), device=self.device)
        positions = torch.arange(length, device=self.device).expand(count, length)

        def attend(layer: int, q, k, v) -> torch.Tensor:
            pool.keys[layer][slot_index, :, :length] = pool.store(k)
            pool.values[layer][slot_index, :, :length] = pool.store(v)
            out = self._sdpa(q, k, v, is_causal=True)
            return out.transpose(1, 2).reshape(count, length, -1)

        self._layers(embeds.to(self.dtype), positions, attend)
        self.states[modality].prefix_len[list(slots)] = length

    def prefill_suffix(self, rows: Sequence[NewRow]) -> list[int]:
        """Run the suffixes of `rows` (ordered by `MODALITY_ORDER`), store their KV in
        their lanes and return each row's first generated token."""
        if not rows:
            return []
        order = [MODALITY_ORDER.index(row.modality) for row in rows]
        if order != sorted(order):
            raise ValueError("new rows must be grouped by modality in MODALITY_ORDER")
        longest = max(len(row.suffix_ids) for row in rows)
        ids = np.zeros((len(rows), longest), np.int64)
        positions = np.zeros((len(rows), longest), np.int64)
        for r, row in enumerate(rows):
            ids[r, : len(row.suffix_ids)] = row.suffix_ids
            start = self.states[row.modality].prefix_len[row.slot]
            positions[r] = start + np.arange(longest)
        step = torch.arange(longest, device=self.device)
        groups = []
        begin = 0
        for modality in self.pools:
            members = [row for row in rows if row.modality == modality]
            if not members:
                continue
            pool = self.pools[modality]
            end = begin + len(members)
            slot_index = torch.tensor([row.slot for row in members], device=self.device)
            lane_index = torch.tensor([row.lane for row in members], device=self.device)
            used = max(row.slot for row in members) + 1
            prefix_len = torch.from_numpy(self.states[modality].prefix_len[:used]).to(self.device)
            stored = torch.zeros((used, pool.shape.lanes), dtype=torch.long, device=self.device)
            lanes = pool.shape.lanes
            write_at = pool.shape.prefix_tokens + step * lanes + lane_index[:, None]  # (n, Lq)
            length = pool.shape.attended_tokens(longest)
            mask = self._mask(pool, prefix_len, stored, longest, length)
            groups.append((pool, begin, end, slot_index, lane_index, used, write_at, mask))
            begin = end

        def attend(layer: int, q, k, v) -> torch.Tensor:
            outputs = []
            for pool, start, end, slot_index, lane_index, used, write_at, mask in groups:
                slot_rows = slot_index[:, None]
                pool.keys[layer][slot_rows, :, write_at] = pool.store(k[start:end].transpose(1, 2))
                pool.values[layer][slot_rows, :, write_at] = pool.store(
                    v[start:end].transpose(1, 2)
                )
                lanes = pool.shape.lanes
                dense = q.new_zeros((used, lanes, longest, self.heads, self.head_dim))
                dense[slot_index, lane_index] = q[start:end].transpose(1, 2)
                dense = dense.view(used, lanes * longest, self.heads, self.head_dim).transpose(1, 2)
                out = self._pool_attention(pool, layer, dense, mask)
                out = out.transpose(1, 2).reshape(used, lanes, longest, -1)
                outputs.append(out[slot_index, lane_index])
            return torch.cat(outputs)

        embeds = self.body.embed_tokens(torch.from_numpy(ids).to(self.device))
        hidden = self._layers(embeds, torch.from_numpy(positions).to(self.device), attend)
        lengths = torch.tensor([len(row.suffix_ids) for row in rows], device=self.device)
        last = hidden[torch.arange(len(rows), device=self.device), lengths - 1]
        tokens = self._logits(last).argmax(dim=-1).tolist()
        for row, length in zip(rows, lengths.tolist(), strict=True):
            state = self.states[row.modality]
            state.stored[row.slot, row.lane] = length
            state.position[row.slot, row.lane] = state.prefix_len[row.slot] + length
        return tokens

    # -- decode -------------------------------------------------------------------------

    def decode_step(self, buckets: Mapping[Modality, int]) -> np.ndarray:
        """One token for every lane of slots [0, buckets[m]) of each pool, rows in
        `MODALITY_ORDER`, slot-major: row `s * lanes + l`. Returns the tokens (host)."""
        key = self.step_key(buckets)
        for modality, inputs in self._inputs.items():
            if buckets.get(modality, 0):
                inputs.upload(self.states[modality])
        if not self.cuda_graphs:
            return self._decode_forward(key).cpu().numpy()
        return self._graph_replay(key).cpu().numpy()

    def step_key(self, buckets: Mapping[Modality, int]) -> tuple[int, ...]:
        """The static shape of a decode step over slots [0, buckets[m]) of each pool: the
        slot buckets, then per pool the lane-length bucket (0 for an empty pool) that
        holds every lane's tokens after this step's write."""
        slots = tuple(buckets.get(m, 0) for m in self.pools)
        lengths = tuple(
            bucket_for(int(self.states[m].stored[:used].max()) + 1, self.lane_buckets[m])
            if used
            else 0
            for m, used in zip(self.pools, slots, strict=True)
        )
        return slots + lengths

    def _decode_forward(self, key: tuple[int, ...]) -> torch.Tensor:
        """The static decode step for `key` (`step_key`: slots, then lane lengths per pool)."""
        tokens, positions, groups = [], [], []
        begin = 0
        count = len(self.pools)
        for (modality, pool), used, lane_length in zip(
            self.pools.items(), key[:count], key[count:], strict=True
        ):
            if used == 0:
                continue
            inputs = self._inputs[modality]
            lanes = pool.shape.lanes
            stored = inputs.stored[:used]
            tokens.append(inputs.token[:used].reshape(-1))
            positions.append(inputs.position[:used].reshape(-1))
            slot_index = self._slot_of_row[modality][: used * lanes]
            write_at = (pool.shape.prefix_tokens + stored * lanes + pool.lane_ids).reshape(-1)
            length = pool.shape.attended_tokens(lane_length)
            mask = self._mask(pool, inputs.prefix_len[:used], stored, 1, length)
            end = begin + used * lanes
            groups.append((pool, begin, end, used, slot_index, write_at, mask))
            begin = end
        if not groups:
            raise ValueError("a decode step needs at least one occupied slot")

        def attend(layer: int, q, k, v) -> torch.Tensor:
            outputs = []
            for pool, start, end, used, slot_index, write_at, mask in groups:
                pool.keys[layer][slot_index, :, write_at] = pool.store(k[start:end, :, 0])
                pool.values[layer][slot_index, :, write_at] = pool.store(v[start:end, :, 0])
                lanes = pool.shape.lanes
                dense = q[start:end, :, 0].reshape(used, lanes, self.heads, self.head_dim)
                out = self._pool_attention(pool, layer, dense.transpose(1, 2), mask)
                outputs.append(out.transpose(1, 2).reshape(end - start, 1, -1))
            return torch.cat(outputs)

        ids = torch.cat(tokens)
        hidden = self._layers(
            self.body.embed_tokens(ids)[:, None], torch.cat(positions)[:, None], attend
        )
        return self._logits(hidden[:, -1]).argmax(dim=-1)

    def _graph_replay(self, key: tuple[int, ...]) -> torch.Tensor:
        """Replay the graph of `key`, capturing it first (checked against the eager step)."""
        if key in self._graphs:
            graph, output = self._graphs[key]
            graph.replay()
            return output.clone()
        eager = self._decode_forward(key).clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._decode_forward(key)  # warm-up outside the capture, as CUDA graphs require
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool):
            output = self._decode_forward(key)
        # The eager step, the warm-up and the replay write the same KV (same inputs).
        graph.replay()
        if not torch.equal(output, eager):
            raise GraphMismatchError(
                f"CUDA graph for step key {key} gave other tokens than the eager step"
            )
        self._graphs[key] = (graph, output)
        return output.clone()
