"""Softmax attention over several blocks of keys at once, each block with the kernel that fits it.

LSW attention reads [registers; memory; segment]: a few learned registers scored by the *unrotated* query,
memory keys (all visible, or behind a padding/document bias) and the segment (causal). One
``scaled_dot_product_attention`` call over the concatenation needs a dense mask and, since the registers pair
with another query than the tokens, a query twice as wide as the values; that takes PyTorch's CPU dispatch
off its flash kernel onto the math path, which materialises the whole T × (R + M + T) score matrix and its
softmax, forward and backward. Here each block is attended on its own and the results are merged:

* the registers by two small matmuls (R keys);
* every key block by the CPU flash kernel (``_scaled_dot_product_flash_attention_for_cpu``), causal blocks
  with its causal flag (the upper triangle is skipped), the others with their additive bias, if any;
* with per-block outputs o_b and log-sum-exps l_b: l = logsumexp_b l_b, o = Σ_b e^{l_b − l} o_b.

The backward needs no per-block state: for any key j of any block, softmax attention's gradient is
dS_ij = P_ij (dO_i·v_j − dO_i·O_i) with P_ij = e^{s_ij − l_i}, a function of the *merged* output O and l
only. The flash backward computes exactly this from the (dO, O, l) it is given, so each block's backward
is one flash-backward call with the merged O and l, and the registers' is written out below.

``supported`` says when this path applies (a CPU tensor, a kernel this torch has, no dropout); callers keep
the one-call SDPA path (``attnlab.layers.attention.attend``) for everything else. ``naive.py`` beside this
file and the LSW tests hold it to the dense reference.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BACKWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
DTYPES = (torch.float32, torch.float64, torch.bfloat16)


class KeyBlock(NamedTuple):
    """Keys and values (B, H, N, D) every query may read, under one visibility rule.

    ``causal``: query i sees keys j ≤ i (the block is the queries' own segment, N = T). ``bias``: an additive
    float mask broadcastable to (B, H, T, N), 0 where visible and −inf where not (None: all visible).
    ``has_keys``: boolean, broadcastable to (B, H, T): the rows with at least one visible key (None: all);
    the kernel reports an empty row as output 0 with log-sum-exp 0, which the merge must not count.
    """

    keys: torch.Tensor
    values: torch.Tensor
    causal: bool = False
    bias: torch.Tensor | None = None
    has_keys: torch.Tensor | None = None


class Registers(NamedTuple):
    """Learned key/value slots (H, R, D) read by every query, scored by ``queries`` (B, H, T, D)."""

    queries: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor


def supported(q: torch.Tensor, dropout: float = 0.0) -> bool:
    """Whether ``block_attention`` can run: CPU, no dropout, a dtype the flash kernel takes, a torch that has
    it (2.2+), and not inside ``torch.compile`` (which gets the one-call SDPA form to optimise)."""
    return (_FLASH is not None and q.device.type == "cpu" and dropout == 0.0 and q.dtype in DTYPES
            and not torch.compiler.is_compiling())


def block_attention(
    q: torch.Tensor, blocks: list[KeyBlock], *, scale: float, registers: Registers | None = None
) -> torch.Tensor:
    """softmax over the keys of every block (and the registers) of q·k·scale, times the values: (B, H, T, D).

    The same function as one SDPA call over the concatenated keys with the combined mask; every query row
    must see at least one key somewhere. Heads must match (repeat grouped key/value heads first).
    """
    if not blocks:
        raise ValueError("block_attention needs at least one key block")
    flat: list[torch.Tensor | None] = []
    for block in blocks:
        flat += [block.keys, block.values, block.bias, block.has_keys]
    causal = tuple(block.causal for block in blocks)
    flat = [t.to(q.dtype) if i % 4 < 2 else t for i, t in enumerate(flat)]  # the kernel wants one dtype
    reg = registers if registers is not None else Registers(None, None, None)
    return _BlockAttention.apply(scale, causal, q, reg.queries, reg.keys, reg.values, *flat)


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _BlockAttention(torch.autograd.Function):
    """Forward: per-block flash attention and the register matmuls, merged by log-sum-exp. Backward: one
    flash backward per block with the merged output and log-sum-exp, and the registers' gradient by hand."""

    @staticmethod
    def forward(ctx, scale, causal, q, q_reg, k_reg, v_reg, *flat):
        blocks = [flat[i : i + 4] for i in range(0, len(flat), 4)]
        stat = _lse_dtype(q.dtype)
        outs, lses = [], []
        with torch.autocast(q.device.type, enabled=False):
            for (k, v, bias, has_keys), is_causal in zip(blocks, causal):
                out, lse = _FLASH(q, k, v, 0.0, is_causal, attn_mask=_bias_like(bias, q), scale=scale)
                lse = lse.to(stat)
                if has_keys is not None:  # an empty row comes back as (0, lse 0): weight it 0
                    lse = lse.masked_fill(~has_keys, float("-inf"))
                outs.append(out)
                lses.append(lse)
            if k_reg is not None:
                scores = (q_reg.to(stat) @ k_reg.to(stat).transpose(-1, -2)) * scale  # (B, H, T, R)
                lse_reg = scores.logsumexp(-1)
                outs.append((scores - lse_reg[..., None]).exp() @ v_reg.to(stat))
                lses.append(lse_reg)
            lse = torch.stack(lses).logsumexp(0)
            merged = None
            for out, block_lse in zip(outs, lses):
                term = out.to(stat) * (block_lse - lse).exp()[..., None]
                merged = term if merged is None else merged.add_(term)
            merged = merged.to(q.dtype)
        ctx.scale, ctx.causal = scale, causal
        ctx.save_for_backward(q, q_reg, k_reg, v_reg, merged, lse, *flat)
        return merged

    @staticmethod
    def backward(ctx, grad):
        q, q_reg, k_reg, v_reg, out, lse, *flat = ctx.saved_tensors
        blocks = [flat[i : i + 4] for i in range(0, len(flat), 4)]
        grad = grad.contiguous()
        grad_q = None
        grads_flat: list[torch.Tensor | None] = []
        with torch.autocast(q.device.type, enabled=False):
            for index, ((k, v, bias, _), is_causal) in enumerate(zip(blocks, ctx.causal)):
                dq, dk, dv = _FLASH_BACKWARD(grad, q, k, v, out, lse, 0.0, is_causal,
                                             attn_mask=_bias_like(bias, q), scale=ctx.scale)
                grad_q = dq if grad_q is None else grad_q.add_(dq)
                needs_k, needs_v = ctx.needs_input_grad[6 + 4 * index : 8 + 4 * index]
                grads_flat += [dk if needs_k else None, dv if needs_v else None, None, None]
            grad_q_reg = grad_k_reg = grad_v_reg = None
            if k_reg is not None:
                stat = lse.dtype
                scores = (q_reg.to(stat) @ k_reg.to(stat).transpose(-1, -2)) * ctx.scale
                probs = (scores - lse[..., None]).exp()  # (B, H, T, R): the registers' share of the softmax
                g = grad.to(stat)
                delta = (g * out.to(stat)).sum(-1, keepdim=True)  # dO_i · O_i
                dscores = probs * (g @ v_reg.to(stat).transpose(-1, -2) - delta) * ctx.scale
                if ctx.needs_input_grad[3]:
                    grad_q_reg = (dscores @ k_reg.to(stat)).to(q_reg.dtype)
                if ctx.needs_input_grad[4]:
                    grad_k_reg = _sum_to(dscores.transpose(-1, -2) @ q_reg.to(stat), k_reg)
                if ctx.needs_input_grad[5]:
                    grad_v_reg = _sum_to(probs.transpose(-1, -2) @ g, v_reg)
        return (None, None, grad_q if ctx.needs_input_grad[2] else None, grad_q_reg, grad_k_reg, grad_v_reg,
                *grads_flat)


def _bias_like(bias: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor | None:
    """The kernel takes a float mask of the queries' dtype."""
    return None if bias is None else bias.to(q.dtype)


def _sum_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a (B, H, ...) gradient over the leading axes ``like`` broadcast over, in ``like``'s dtype."""
    while grad.dim() > like.dim():
        grad = grad.sum(0)
    for axis, size in enumerate(like.shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis, keepdim=True)
    return grad.to(like.dtype)
