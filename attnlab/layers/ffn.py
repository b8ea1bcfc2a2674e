"""Position-wise feed-forward networks: the GPT-2 GELU MLP, the gated SwiGLU of LLaMA/PaLM, and the ReLU MLP of
the original Transformer (what the DAT authors' sequence-to-sequence models use)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FFNS = ("gelu", "swiglu")  # what the causal-LM families take; build_ffn also builds "relu"


class MLP(nn.Module):
    """d_model → d_ff → GELU → d_model."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x), approximate="tanh")))


class ReLUMLP(MLP):
    """d_model → d_ff → ReLU → d_model (the original Transformer's FFN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.relu(self.up(x))))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); gate and up share one matmul."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.dropout(self.down(F.silu(gate) * up))


def build_ffn(kind: str, d_model: int, d_ff: int, bias: bool, dropout: float) -> nn.Module:
    if kind == "gelu":
        return MLP(d_model, d_ff, bias=bias, dropout=dropout)
    if kind == "swiglu":
        return SwiGLU(d_model, d_ff, bias=bias, dropout=dropout)
    if kind == "relu":
        return ReLUMLP(d_model, d_ff, bias=bias, dropout=dropout)
    raise ValueError(f"unknown ffn {kind!r}; choose one of {FFNS + ('relu',)}")
