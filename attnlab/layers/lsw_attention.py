"""LSW attention: softmax attention over [registers; XL memory; segment] with reversed RoPE.

Key layout of every layer, left to right:

    R learned register slots | up to mem_len detached keys/values of earlier segments | the current segment

Registers are visible to every query (attention sinks, never queries themselves), a memory slot to the
queries of its document while it holds a real token, and segment keys causally within a document. Keys are
kept *before* RoPE in memory and rotated on every forward with reversed positions (the newest token is
position 0), so the rotary code of recent tokens never depends on how much memory lies behind them.

On the CPU the three parts are attended block by block and merged by log-sum-exp
(``attnlab.ops.attention.blocks``): the segment with the flash kernel's causal flag, the memory behind a
per-slot bias, the registers by two small matmuls. Elsewhere, and when the weights are asked for or dropout
is on, one SDPA call reads the concatenated keys under one boolean mask per forward (``lsw_attention_mask``).
Both compute the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache

from ..ops.attention.blocks import KeyBlock, Registers, block_attention, supported
from .attention import attend, merge_heads, repeat_kv, split_heads
from .context import MixerContext
from .rotary import apply_rotary


def reversed_positions(positions: torch.Tensor, newest: torch.Tensor) -> torch.Tensor:
    """Distance back from the newest token of each row: the newest is 0, the one before it 1, and so on.

    ``positions`` (batch, n) are forward positions (padding-aware), ``newest`` (batch,) the newest one per row.
    RoPE scores depend only on position differences, so this is plain RoPE with the offsets negated; what
    changes is that a token's angles stay small and fixed however long the memory behind it grows.
    """
    return newest[:, None] - positions


def lsw_attention_mask(
    q_len: int,
    n_registers: int,
    memory_valid: torch.Tensor | None,
    query_valid: torch.Tensor | None,
    memory_docs: torch.Tensor | None = None,
    query_docs: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Boolean (batch|1, 1, q_len, R + M + q_len) "may attend" mask over [registers; memory; segment].

    memory_valid (batch, M): the slot holds a real token; query_valid (batch, q_len): the token is not padding;
    *_docs: document ids (a key is visible only to queries of the same document). A query always sees
    itself, so padded rows are never empty. Returns None when plain ``is_causal`` is exact.
    """
    n_memory = 0 if memory_valid is None else memory_valid.shape[1]
    if n_registers == 0 and n_memory == 0 and query_valid is None and query_docs is None:
        return None
    device = (memory_valid if memory_valid is not None else query_valid if query_valid is not None else query_docs)
    device = device.device if device is not None else None
    index = torch.arange(q_len, device=device)
    segment = (index[None, :] <= index[:, None])[None]  # (1, q, q)
    if query_valid is not None:
        segment = segment & query_valid[:, None, :]
    if query_docs is not None:
        segment = segment & (query_docs[:, None, :] == query_docs[:, :, None])
    segment = segment | torch.eye(q_len, dtype=torch.bool, device=device)[None]
    batch = segment.shape[0]
    parts = [torch.ones(batch, q_len, n_registers, dtype=torch.bool, device=device)]
    if n_memory:
        memory = memory_valid[:, None, :].expand(-1, q_len, -1)
        if query_docs is not None and memory_docs is not None:
            memory = memory & (memory_docs[:, None, :] == query_docs[:, :, None])
        batch = max(batch, memory.shape[0])
        parts.append(memory)
    parts.append(segment)
    return torch.cat([p.expand(batch, -1, -1) for p in parts], dim=-1)[:, None]


@dataclass
class LSWContext(MixerContext):
    """``MixerContext`` plus the reversed-RoPE angles of every non-register key and what decides visibility.

    ``rope`` holds the angles of the queries (and of the segment's keys), ``key_rope`` (cos, sin) those of the
    [memory; segment] keys. ``attn_mask`` stays None: the masks are built once per forward when a layer
    first asks, the dense [registers; memory; segment] one (``layout_mask``) or the per-block biases
    (``segment_bias``, ``memory_bias``). ``memory_valid`` (B, M), ``query_valid`` (B, T), ``memory_docs``,
    ``query_docs``: which slots and tokens are real, and their document ids (None: all real, one document).
    """

    key_rope: tuple[torch.Tensor, torch.Tensor] | None = None
    n_registers: int = 0
    memory_valid: torch.Tensor | None = None
    query_valid: torch.Tensor | None = None
    memory_docs: torch.Tensor | None = None
    query_docs: torch.Tensor | None = None

    def layout_mask(self) -> torch.Tensor | None:
        """The boolean [registers; memory; segment] mask of ``lsw_attention_mask`` (None: plain causal)."""
        return self.once("lsw_layout_mask", lambda: lsw_attention_mask(
            self.position_ids.shape[1], self.n_registers, self.memory_valid, self.query_valid, self.memory_docs,
            self.query_docs))

    def segment_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive (B, 1, T, T) mask of the segment's keys, or None when the causal flag is exact."""
        if self.query_valid is None and self.query_docs is None:
            return None

        def build() -> torch.Tensor:
            seq = self.position_ids.shape[1]
            visible = lsw_attention_mask(seq, 0, None, self.query_valid, None, self.query_docs)
            return _bias(visible, dtype)

        return self.once(("lsw_segment_bias", dtype), build)

    def memory_bias(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive mask (B, 1, 1|T, M) of the memory slots and which query rows (B, 1, 1|T) see any."""

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            visible = self.memory_valid[:, None, None, :]
            if self.query_docs is not None and self.memory_docs is not None:
                visible = visible & (self.memory_docs[:, None, None, :] == self.query_docs[:, None, :, None])
            return _bias(visible, dtype), visible.any(-1)

        return self.once(("lsw_memory_bias", dtype), build)


def _bias(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean "may attend" mask as an additive one: 0 where visible, −inf where not."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, float("-inf"))


class XLMemory(Cache):
    """Transformer-XL memory, also the generation cache: per layer the last ``mem_len`` keys and values.

    Keys are stored before RoPE and everything is detached, so no gradient flows into memory. Shared across
    layers: which slots hold real tokens, their forward positions and document ids. ``get_seq_length`` is
    the number of tokens seen (as for transformers' sliding-window caches), not the number kept.
    ``mem_len=None`` keeps everything (a plain KV cache).
    """

    def __init__(self, n_layers: int, mem_len: int | None):
        super().__init__(layers=[])
        self.mem_len = mem_len
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.valid: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.docs: torch.Tensor | None = None
        self.seen = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    @property
    def is_compileable(self) -> bool:
        return False

    def memory(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.keys[layer_idx] is None:
            return None
        return self.keys[layer_idx], self.values[layer_idx]

    def _keep(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if self.mem_len is None:
            return x.detach()
        return x.narrow(dim, max(0, x.shape[dim] - self.mem_len), min(x.shape[dim], self.mem_len)).detach()

    def store(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep the newest slots of [memory; segment] keys (pre-RoPE) and values, shape (B, H, M+T, D)."""
        self.keys[layer_idx], self.values[layer_idx] = self._keep(keys, 2), self._keep(values, 2)

    def append(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """``store`` of [this layer's memory; the segment's keys (pre-RoPE) and values (B, H, T, D)], without
        concatenating when the segment alone fills the memory."""
        old_keys, old_values = self.keys[layer_idx], self.values[layer_idx]
        if old_keys is not None and (self.mem_len is None or keys.shape[2] < self.mem_len):
            keys = torch.cat([old_keys.to(keys.dtype), keys], dim=2)
            values = torch.cat([old_values.to(values.dtype), values], dim=2)
        self.store(layer_idx, keys, values)

    def advance(self, valid: torch.Tensor, positions: torch.Tensor, docs: torch.Tensor) -> None:
        """After all layers stored theirs: append the segment's slot metadata (B, T) and count its tokens."""
        self.seen += positions.shape[1]
        if self.valid is not None:
            valid = torch.cat([self.valid, valid], dim=1)
            positions = torch.cat([self.positions, positions], dim=1)
            docs = torch.cat([self.docs, docs], dim=1)
        self.valid, self.positions, self.docs = self._keep(valid, 1), self._keep(positions, 1), self._keep(docs, 1)

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Forget the memory of the rows where ``rows`` (batch,) is True (a new stream starts there)."""
        if self.valid is not None:
            self.valid = self.valid & ~rows[:, None]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the rows ``beam_idx`` (beam search, contrastive search), in that order."""
        def pick(x):
            return None if x is None else x.index_select(0, beam_idx.to(x.device))

        self.keys, self.values = [pick(k) for k in self.keys], [pick(v) for v in self.values]
        self.valid, self.positions, self.docs = pick(self.valid), pick(self.positions), pick(self.docs)

    def batch_repeat_interleave(self, repeats: int) -> None:
        rows = 0 if self.valid is None else self.valid.shape[0]
        self.reorder_cache(torch.arange(rows).repeat_interleave(repeats))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints only, so a checkpoint can load it with ``torch.load(weights_only=True)``."""
        state: dict[str, Any] = {"seen": self.seen}
        if self.valid is not None:
            state.update(valid=self.valid, positions=self.positions, docs=self.docs,
                         keys=list(self.keys), values=list(self.values))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"]
        if "valid" in state:
            self.valid, self.positions, self.docs = state["valid"], state["positions"], state["docs"]
            self.keys, self.values = list(state["keys"]), list(state["values"])


class LSWAttention(nn.Module):
    """Causal softmax attention with learned register slots and an XL memory, through one SDPA call.

    Registers are ``n_registers`` learned key/value pairs per key/value head: visible to every query, without
    RoPE (they have no position; see ``_rotate_with_registers``), never queries, so they add no output
    position and no loss term.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        *,
        layer_idx: int,
        n_registers: int = 0,
        bias: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.layer_idx, self.dropout = layer_idx, dropout
        kv_dim = n_kv_heads * self.head_dim
        self.qkv = nn.Linear(d_model, d_model + 2 * kv_dim, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)
        self.out.is_residual_projection = True
        self.register_keys = nn.Parameter(torch.zeros(n_kv_heads, n_registers, self.head_dim))
        self.register_values = nn.Parameter(torch.zeros(n_kv_heads, n_registers, self.head_dim))

    @property
    def n_registers(self) -> int:
        return self.register_keys.shape[1]

    def forward(self, x: torch.Tensor, ctx: LSWContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v = split_heads(self.qkv(x), self.n_heads, self.n_kv_heads, self.head_dim)
        # Through ctx.once: a recomputation (activation checkpointing) attends to the memory this forward found
        # and stores nothing twice.
        cache, layer = ctx.cache, self.layer_idx
        memory = ctx.once(("lsw_memory", layer), lambda: cache.memory(layer)) if cache is not None else None
        if cache is not None:
            ctx.once(("lsw_store", layer), lambda: cache.append(layer, k, v))
        dropout = self.dropout if self.training else 0.0
        if not ctx.output_attentions and supported(q, dropout):
            y = self._attend_blocks(q, k, v, memory, ctx)
            return self.out(merge_heads(y)), None
        if memory is not None:
            k, v = torch.cat([memory[0].to(k.dtype), k], dim=2), torch.cat([memory[1].to(v.dtype), v], dim=2)
        if ctx.rope is not None:
            q, k = self._rotate_with_registers(q, k, ctx)
        elif self.n_registers:
            k = torch.cat([self.register_keys.to(k.dtype)[None].expand(x.shape[0], -1, -1, -1), k], dim=2)
        if self.n_registers:
            v = torch.cat([self.register_values.to(v.dtype)[None].expand(x.shape[0], -1, -1, -1), v], dim=2)

        # [q_rot | q] doubles the query width when registers ride along; the scale stays that of one head.
        mask = ctx.layout_mask()
        y, weights = attend(q, k, v, ctx, mask=mask, scale=self.head_dim**-0.5, dropout=dropout)
        return self.out(merge_heads(y)), weights

    def _attend_blocks(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor] | None,
        ctx: LSWContext,
    ) -> torch.Tensor:
        """The same attention block by block (``block_attention``): the segment causally (or under its padding
        and document bias), the memory under its slot bias, the registers with the unrotated query."""
        heads = self.n_heads
        q_tokens = apply_rotary(q, *ctx.rope) if ctx.rope is not None else q
        k_tokens = apply_rotary(k, *ctx.rope) if ctx.rope is not None else k
        bias = ctx.segment_bias(q.dtype)
        blocks = [KeyBlock(repeat_kv(k_tokens, heads), repeat_kv(v, heads), causal=bias is None, bias=bias)]
        if memory is not None:
            k_memory, v_memory = memory[0].to(k.dtype), memory[1].to(v.dtype)
            if ctx.rope is not None:
                slots = k_memory.shape[2]
                cos, sin = ctx.key_rope
                k_memory = apply_rotary(k_memory, cos[:, :slots], sin[:, :slots])
            memory_bias, has_keys = ctx.memory_bias(q.dtype)
            blocks.append(KeyBlock(repeat_kv(k_memory, heads), repeat_kv(v_memory, heads), bias=memory_bias,
                                   has_keys=has_keys))
        registers = None
        if self.n_registers:
            groups = heads // self.n_kv_heads
            registers = Registers(q, self.register_keys.repeat_interleave(groups, dim=0),
                                  self.register_values.repeat_interleave(groups, dim=0))
        return block_attention(q_tokens, blocks, scale=self.head_dim**-0.5, registers=registers)

    def _rotate_with_registers(
        self, q: torch.Tensor, k: torch.Tensor, ctx: LSWContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reversed RoPE on queries and [memory; segment] keys; registers prepended, position-free.

        A register's score must not depend on where the query sits (else a token's output would depend on
        how many tokens follow it in the same forward), so it pairs with the *unrotated* query. One SDPA call
        still does it: queries become [q_rot | q], token keys [k_rot | 0], register keys [0 | k_reg], so
        q'·k' is q_rot·k_rot for tokens and q·k_reg for registers (the scale stays 1/√head_dim).
        """
        q_rot, k_rot = apply_rotary(q, *ctx.rope), apply_rotary(k, *ctx.key_rope)
        if not self.n_registers:
            return q_rot, k_rot
        batch = q.shape[0]
        registers = self.register_keys.to(k.dtype)[None].expand(batch, -1, -1, -1)
        k = torch.cat([
            torch.cat([torch.zeros_like(registers), registers], dim=-1),
            torch.cat([k_rot, torch.zeros_like(k_rot)], dim=-1),
        ], dim=2)
        return torch.cat([q_rot, q], dim=-1), k
