"""Contrastive search (Su et al. 2022), which transformers 5 moved out of core to a hub repository.

At each step, among the ``top_k`` most likely next tokens v pick the one maximising

    (1 − α) · p(v | x<t)  −  α · max_j cos(h_v, h_j)

where h are final hidden states (the LM head's input) and j runs over the context: likely tokens that do not
repeat what was already said. The k candidates run as one batched step on copies of the cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import ConfigError


@torch.no_grad()
def contrastive_search(
    model,
    input_ids: torch.Tensor,
    *,
    penalty_alpha: float,
    top_k: int = 4,
    max_new_tokens: int = 20,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    do_sample: bool = False,
) -> torch.Tensor:
    """Return (batch, prompt + max_new_tokens) ids; rows that emitted ``eos_token_id`` continue with padding."""
    if do_sample or not 0 < penalty_alpha <= 1 or top_k < 1:
        raise ConfigError("contrastive search needs do_sample=False, 0 < penalty_alpha <= 1 and top_k >= 1")
    batch = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    cache = model.make_cache()
    out = model(input_ids, attention_mask=attention_mask, cache=cache, use_cache=True,
                output_hidden_states=True)
    context, context_valid = out.hidden_states[-1], attention_mask.bool()
    logits, sequences = out.logits[:, -1].float(), input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    rows = torch.arange(batch, device=input_ids.device)
    for _ in range(max_new_tokens):
        probs, candidates = logits.softmax(-1).topk(top_k, dim=-1)  # (batch, k)
        cache.batch_repeat_interleave(top_k)
        mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        step = model(candidates.reshape(-1, 1), attention_mask=mask.repeat_interleave(top_k, dim=0),
                     cache=cache, use_cache=True, output_hidden_states=True)
        hidden = step.hidden_states[-1][:, -1].view(batch, top_k, -1)
        similarity = F.cosine_similarity(hidden[:, :, None], context[:, None], dim=-1)
        penalty = similarity.masked_fill(~context_valid[:, None], -1.0).amax(-1)
        best = ((1 - penalty_alpha) * probs - penalty_alpha * penalty).argmax(-1)
        cache.batch_select_indices(rows * top_k + best)
        token = candidates[rows, best]
        if pad_token_id is not None:
            token = token.masked_fill(finished, pad_token_id)
        sequences = torch.cat([sequences, token[:, None]], dim=1)
        attention_mask = mask
        context = torch.cat([context, hidden[rows, best][:, None]], dim=1)
        context_valid = torch.cat([context_valid, torch.ones_like(context_valid[:, :1])], dim=1)
        logits = step.logits[:, -1].float().view(batch, top_k, -1)[rows, best]
        if eos_token_id is not None:
            finished = finished | (token == eos_token_id)
            if bool(finished.all()):
                break
    return sequences
