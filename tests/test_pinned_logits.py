"""Pinned outputs of every family's debug model: refactors of the shared layers must not move a single logit.

The values in ``data/pinned_logits.json`` were computed (fp64, fixed seeds) by the implementation these tests
guard; rerun ``python tests/test_pinned_logits.py --write`` only when a change of the numbers is intended.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import attnlab
from attnlab.models.hf_compat import output_cache

PINNED = Path(__file__).parent / "data" / "pinned_logits.json"

CASES: dict[str, tuple[str, dict]] = {
    "gpt": ("gpt", {}),
    "gpt-rope-gqa": ("gpt", {"pos": "rope", "norm": "rmsnorm", "ffn": "swiglu", "n_kv_heads": 1}),
    "dat": ("dat", {}),
    "dat-relative-per-kind": ("dat", {"symbol_retrieval": "position_relative", "out_proj": "per_kind", "pos": "rope"}),
    "dat-positional-relu-symmetric": ("dat", {"symbol_retrieval": "positional", "rel_activation": "relu",
                                              "symmetric_rels": True}),
    "dat-fused": ("dat", {"rel_form": "fused", "n_kv_heads": 1}),
    "leap": ("leap", {}),
    "leap-fastformer": ("leap", {"mixer": "fastformer"}),
    "lsw": ("lsw", {}),
    "moa": ("moa", {}),
    "moa-maha": ("moa", {"metric": "maha_diag"}),
}


def _inputs(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = (torch.arange(2 * 12).view(2, 12) * 7 + 3) % vocab_size
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # the second row is left-padded
    return ids, mask


def _summary(t: torch.Tensor) -> list[float]:
    """A few exact entries and two moments: enough to catch any change, small enough to check in."""
    flat = t.detach().double().flatten()
    picks = torch.linspace(0, flat.numel() - 1, 16).long()
    return [float(v) for v in flat[picks]] + [float(flat.mean()), float(flat.std())]


@torch.no_grad()
def compute(case: str) -> dict[str, list[float]]:
    family, overrides = CASES[case]
    torch.manual_seed(0)
    model = attnlab.create_model(family, "debug", **overrides).eval().double()
    ids, mask = _inputs(model.config.vocab_size)
    out = model(ids, attention_mask=mask, use_cache=False, output_attentions=True)
    first, second = ids[:, :7], ids[:, 7:]
    cached = model(first, use_cache=True)
    continued = model(second, cache=output_cache(cached), use_cache=True)
    result = {"logits": _summary(out.logits[0]), "padded_row": _summary(out.logits[1, 3:]),
              "continued": _summary(continued.logits)}
    if out.attentions and out.attentions[0] is not None:
        result["attentions"] = _summary(out.attentions[0][0])
    return result


@pytest.mark.parametrize("case", list(CASES))
def test_debug_model_outputs_are_pinned(case):
    expected = json.loads(PINNED.read_text())[case]
    got = compute(case)
    assert set(got) == set(expected)
    for name, values in expected.items():
        torch.testing.assert_close(torch.tensor(got[name]), torch.tensor(values), rtol=1e-9, atol=1e-9,
                                   msg=lambda m, name=name: f"{case}/{name}: {m}")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    PINNED.write_text(json.dumps({case: compute(case) for case in CASES}, indent=1) + "\n")
    print(f"wrote {PINNED}")
