"""LSW attention: softmax attention over [registers; XL memory; segment] with reversed RoPE, in one SDPA call.

Key layout of every layer, left to right:

    R learned register slots | up to mem_len detached keys/values of earlier segments | the current segment

One boolean mask per forward (``lsw_attention_mask``) says who sees what: registers are visible to every query
(attention sinks, never queries themselves), a memory slot to the queries of its document while it holds a
real token, and segment keys causally within a document. Keys are kept *before* RoPE in memory and rotated on
every forward with reversed positions (the newest token is position 0), so the rotary code of recent tokens
never depends on how much memory lies behind them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache

from .attention import attend, merge_heads, split_heads
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
    """``MixerContext`` plus the reversed-RoPE angles of every non-register key.

    Here ``attn_mask`` is the full [registers; memory; segment] layout mask of ``lsw_attention_mask`` and
    ``rope`` the angles of the queries; ``key_rope`` (cos, sin) covers [memory; segment] keys.
    """

    key_rope: tuple[torch.Tensor, torch.Tensor] | None = None


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
        if memory is not None:
            k, v = torch.cat([memory[0].to(k.dtype), k], dim=2), torch.cat([memory[1].to(v.dtype), v], dim=2)
        if cache is not None:
            ctx.once(("lsw_store", layer), lambda: cache.store(layer, k, v))
        if ctx.rope is not None:
            q, k = self._rotate_with_registers(q, k, ctx)
        elif self.n_registers:
            k = torch.cat([self.register_keys.to(k.dtype)[None].expand(x.shape[0], -1, -1, -1), k], dim=2)
        if self.n_registers:
            v = torch.cat([self.register_values.to(v.dtype)[None].expand(x.shape[0], -1, -1, -1), v], dim=2)

        # [q_rot | q] doubles the query width when registers ride along; the scale stays that of one head.
        y, weights = attend(q, k, v, ctx, scale=self.head_dim**-0.5, dropout=self.dropout if self.training else 0.0)
        y = merge_heads(y)
        return self.out(y), weights

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
