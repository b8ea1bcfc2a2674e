"""attnlab.analysis: shapes, normalisation and JSON-readiness of what the viz app shows, per family."""

from __future__ import annotations

import json

import pytest
import torch

import attnlab
from attnlab.analysis import analyze, export_json, generate
from attnlab.data import build_tokenizer
from attnlab.errors import ConfigError
from attnlab.ops.relational.forms import contract

PROMPT = "To be, or not to be"
T = len(PROMPT.encode())


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("byte")


def _model(family: str, **overrides):
    torch.manual_seed(0)
    return attnlab.create_model(family, "debug", **overrides).eval()


def _rows_sum_to_one(rows, tol=1e-3):
    t = torch.tensor(rows, dtype=torch.float64)
    assert torch.allclose(t.sum(-1), torch.ones_like(t.sum(-1)), atol=tol)
    assert (t >= 0).all()


def _causal(maps, offset=0):
    """Zero weight on future keys (offset: non-token keys before the tokens, e.g. LSW registers)."""
    t = torch.tensor(maps)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert (t[..., offset:][..., future] == 0).all()


@pytest.mark.parametrize("family", ["gpt", "dat", "leap", "lsw", "moa"])
def test_common_fields(family, tok, tmp_path):
    result = analyze(_model(family), tok, PROMPT, position=3, top_k=5)
    json.loads(json.dumps(result))  # plain JSON data
    assert result["kind"] == "causal_lm" and result["family"] == family
    assert result["tokens"][:2] == ["T", "o"] and len(result["ids"]) == T
    assert result["position"] == 3 and len(result["next_token"]["top"]) == 5
    assert len(result["next_token_all"]) == T
    probs = [p["prob"] for p in result["next_token"]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert len(result["layers"]) == result["n_layers"]
    assert export_json(result, tmp_path / "a.json").is_file()


@pytest.mark.parametrize("family", ["gpt", "dat", "lsw", "moa"])
def test_softmax_attention_maps(family, tok):
    model = _model(family)
    result = analyze(model, tok, PROMPT)
    for layer in result["layers"]:
        att = layer["attention"]
        t = torch.tensor(att["weights"])
        assert t.shape[:2] == (len(att["head_labels"]), T) and t.shape[2] == len(att["key_labels"])
        _rows_sum_to_one(att["weights"])
        offset = model.config.n_registers if family == "lsw" else 0
        assert t.shape[2] == T + offset
        _causal(att["weights"], offset)


def test_lsw_registers_labelled(tok):
    result = analyze(_model("lsw"), tok, PROMPT)
    keys = result["layers"][0]["attention"]["key_labels"]
    assert keys[0].startswith("[reg") and keys[-T:] == result["tokens"]


def test_dat_relations_and_symbols(tok):
    model = _model("dat")
    cfg = model.config
    result = analyze(model, tok, PROMPT)
    for layer in result["layers"]:
        heads = layer["attention"]["head_labels"]
        assert sum(h.startswith("RA") for h in heads) == cfg.n_heads_ra
        rel = layer["relations"]
        values = rel["values"]
        assert (len(values), len(values[0]), len(values[0][0])) == (cfg.n_relations, T, T)
        assert values[0][0][1] is None and values[0][1][0] is not None  # future masked, past present
        sym = layer["symbols"]
        assert sym["kind"] == "symbolic_attention"
        w = torch.tensor(sym["weights"])
        assert w.shape == (cfg.symbol_heads, T, cfg.n_symbols)
        _rows_sum_to_one(sym["weights"])
        chosen = w.gather(-1, torch.tensor(sym["assigned"])[..., None])[..., 0]
        assert torch.allclose(chosen, w.max(-1).values, atol=1e-4)  # the assigned symbol has the top weight


def test_dat_relations_match_direct_form(tok):
    """The recomputed r_ij, weighted by α, reproduce the relational heads' Σ_j α_ij r_ij of the model."""
    model = _model("dat")
    result = analyze(model, tok, PROMPT)
    layer = result["layers"][0]
    r = torch.tensor([[[v if v is not None else 0.0 for v in row] for row in m] for m in layer["relations"]["values"]])
    alpha = torch.tensor(layer["attention"]["weights"])[model.config.n_heads_sa:]  # (RA, T, T)
    mixed = torch.einsum("hij,lij->hil", alpha, r)  # (RA, T, d_r)
    captured = {}
    rel = model.model.layers[0].mixer.relational
    handle = rel.register_forward_hook(lambda m, a, o: captured.update(x=a[0]))
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        model(ids, use_cache=False)
    handle.remove()
    q_rel, k_rel = rel.relation_maps(captured["x"])
    with torch.no_grad():
        expected = contract(q_rel, alpha[None] @ k_rel[:, None], rel.n_relations)[0]
    assert torch.allclose(mixed, expected, atol=1e-3)


def test_dat_positional_symbols(tok):
    result = analyze(_model("dat", symbol_retrieval="positional"), tok, PROMPT)
    assert result["layers"][0]["symbols"]["assigned"] == [list(range(T))]


def test_leap_importance(tok):
    model = _model("leap")
    result = analyze(model, tok, PROMPT)
    for layer, window in zip(result["layers"], model.config.layer_windows):
        imp = layer["importance"]
        t = torch.tensor(imp["weights"])
        assert t.shape == (model.config.n_heads, T, T) and imp["window"] == window
        _rows_sum_to_one(imp["weights"])
        _causal(imp["weights"])
        if window is not None:  # nothing outside the window
            far = torch.ones(T, T, dtype=torch.bool).tril(-window)
            assert (t[:, far] == 0).all()
        assert torch.tensor(layer["focus_logits"]).shape == (model.config.n_heads, T)


def test_moa_routing_and_balls(tok):
    model = _model("moa")
    result = analyze(model, tok, PROMPT)
    reference = model.routing(tok(PROMPT, return_tensors="pt").input_ids)
    for index, layer in enumerate(result["layers"]):
        routing = layer["routing"]
        assert routing["head_types"] == ["conv", "mha", "mqa", "channel"]
        _rows_sum_to_one(routing["heads"])
        assert torch.allclose(torch.tensor(routing["heads"]), reference["heads"][index, 0].float(), atol=1e-4)
        assert torch.tensor(routing["branches"]).shape == (T, 3)
        _rows_sum_to_one(routing["branch_probs"])
        balls = layer["balls"]
        assert len(balls) == model.config.n_heads + model.config.mqa_q_heads
        for ball in balls:
            assert len(ball["inside"]) == T
            assert ball["pruned"] == [j for j, inside in enumerate(ball["inside"]) if not inside]


def test_moa_ball_pruning_recorded(tok):
    """Shrink the balls: every key is pruned, and the metric attention keeps only each query's own key."""
    model = _model("moa")
    with torch.no_grad():
        for layer in model.model.layers:
            for head in layer.mixer.heads.values():
                if hasattr(head, "radius"):
                    head.radius.fill_(1e-6)
    result = analyze(model, tok, PROMPT)
    layer = result["layers"][0]
    assert all(ball["pruned"] == list(range(T)) for ball in layer["balls"])
    assert torch.allclose(torch.tensor(layer["attention"]["weights"]), torch.eye(T).expand(model.config.n_heads, T, T),
                          atol=1e-5)


def test_limits_and_generate(tok):
    model = _model("gpt")
    with pytest.raises(ConfigError, match="limit is 4 tokens"):
        analyze(model, tok, PROMPT, max_tokens=4)
    with pytest.raises(ConfigError, match="outside the prompt"):
        analyze(model, tok, PROMPT, position=T)
    assert analyze(model, tok, PROMPT, position=-1)["position"] == T - 1
    out = generate(model, tok, "ab", max_new_tokens=5)
    assert out["text"].startswith("ab") and out["text"] == out["prompt"] + out["continuation"]
