"""Training losses beyond next-token cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def simctg_loss(hidden: torch.Tensor, margin: float = 0.5, valid: torch.Tensor | None = None) -> torch.Tensor:
    """SimCTG token-level contrastive loss (Su et al. 2022), which spreads a sequence's hidden states apart.

    For the tokens i ≠ j of one sequence, with s the cosine similarity of final hidden states:
    ``max(0, ρ − s(h_i, h_i) + s(h_i, h_j))``, averaged over every ordered pair of real tokens in the batch
    (``valid`` (batch, seq), True for real tokens; pairs never cross sequences). Computed in at least fp32.
    """
    if hidden.dtype != torch.float64:
        hidden = hidden.float()
    unit = F.normalize(hidden, dim=-1)
    sim = unit @ unit.transpose(-1, -2)  # (batch, seq, seq)
    gold = sim.diagonal(dim1=-2, dim2=-1)[..., :, None]
    seq = hidden.shape[-2]
    pairs = ~torch.eye(seq, dtype=torch.bool, device=hidden.device)[None]
    if valid is not None:
        pairs = pairs & valid[:, :, None] & valid[:, None, :]
    pairs = pairs.expand_as(sim)
    losses = (margin - gold + sim).clamp(min=0)
    return losses[pairs].sum() / pairs.sum().clamp(min=1)
