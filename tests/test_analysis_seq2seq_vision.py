"""attnlab.analysis for DAT's sequence-to-sequence and vision models: every map against an fp64 recomputation from
the model's own weights, padding left out, cross-attention rows summing to 1, top-k against the model's logits,
patch maps on the patch grid."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import attnlab
from attnlab.analysis import (
    analysis_kind,
    analyze,
    analyze_image,
    analyze_seq2seq,
    generate,
    generate_seq2seq,
)
from attnlab.data import build_tokenizer
from attnlab.errors import ConfigError

PAD, START = 0, 256  # byte 0 pads the sources below; the byte tokenizer's end-of-text token starts the decoder
SOURCE, TARGET = "relations: abc", "cab"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("byte")


def seq2seq(**overrides):
    torch.manual_seed(0)
    options = dict(vocab_size=257, pad_token_id=PAD, eos_token_id=256, decoder_start_token_id=START)
    return attnlab.create_model("dat-seq2seq", "debug", **{**options, **overrides}).eval().double()


def vision(**overrides):
    torch.manual_seed(0)
    return attnlab.create_model("dat-vision", "debug", **overrides).eval().double()


def tensor(values) -> torch.Tensor:
    """JSON heatmap values (null where not shown) as fp64, NaN for null."""
    def clean(v):
        return [clean(x) for x in v] if isinstance(v, list) else (math.nan if v is None else v)
    return torch.tensor(clean(values), dtype=torch.float64)


def inputs_of(module: torch.nn.Module, run) -> tuple:
    """The positional arguments ``module`` was called with during ``run()``."""
    seen = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen[0]


def softmax_heads(x_q: torch.Tensor, x_k: torch.Tensor, w_q, b_q, w_k, b_k, n_heads: int, head_dim: int,
                  causal: bool = False) -> torch.Tensor:
    """softmax(q kᵀ / √d) per head, in fp64, from projection weights: (heads, queries, keys)."""
    q = F.linear(x_q, w_q, b_q).view(x_q.shape[0], n_heads, head_dim).transpose(0, 1)
    k = F.linear(x_k, w_k, b_k).view(x_k.shape[0], n_heads, head_dim).transpose(0, 1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
    if causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), -math.inf)
    return scores.softmax(-1)


def dual_attention_reference(mixer, x: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A dual-attention layer's maps recomputed by hand: [SA heads; RA heads' α] and the relations (d_r, T, T)."""
    h = mixer.norm(x) if mixer.owns_norm else x
    D = mixer.head_dim
    w, b = mixer.qkv.weight, mixer.qkv.bias
    sa = softmax_heads(h, h, w[: mixer.n_sa * D], b[: mixer.n_sa * D], w[mixer.n_sa * D: 2 * mixer.n_sa * D],
                       b[mixer.n_sa * D: 2 * mixer.n_sa * D], mixer.n_sa, D, causal)
    rel = mixer.relational
    w, b = rel.qk.weight, rel.qk.bias
    ra = softmax_heads(h, h, w[: rel.n_heads * D], b[: rel.n_heads * D], w[rel.n_heads * D:], b[rel.n_heads * D:],
                       rel.n_heads, D, causal)
    maps = F.linear(h, rel.rel.weight, rel.rel.bias)
    q_rel, k_rel = (maps, maps) if rel.symmetric else maps.chunk(2, -1)
    q_l = q_rel.view(len(h), rel.n_relations, rel.rel_proj_dim).transpose(0, 1)
    k_l = k_rel.view(len(h), rel.n_relations, rel.rel_proj_dim).transpose(0, 1)
    relations = q_l @ k_l.transpose(-2, -1) / math.sqrt(rel.rel_proj_dim)
    return torch.cat([sa, ra]), relations


# ------------------------------------------------------------------------------------------ seq2seq
def forward_seq2seq(model, tok, source=SOURCE, target=TARGET):
    src = torch.tensor([tok(source).input_ids])
    tgt = torch.tensor([[START] + tok(target).input_ids])
    return lambda: model(input_ids=src, decoder_input_ids=tgt, use_cache=False), src, tgt


def test_seq2seq_result_is_json_with_a_map_per_layer(tok):
    model = seq2seq()
    result = analyze_seq2seq(model, tok, SOURCE, TARGET, top_k=4)
    json.loads(json.dumps(result))
    S, T = len(SOURCE), len(TARGET) + 1
    assert result["kind"] == "seq2seq" and result["family"] == "dat-seq2seq"
    assert result["source_tokens"] == list(SOURCE) and result["target_tokens"] == ["<|endoftext|>", *TARGET]
    assert len(result["encoder_layers"]) == model.config.n_layers
    assert len(result["decoder_layers"]) == model.config.decoder_layers
    for layer in result["encoder_layers"]:
        assert tensor(layer["attention"]["weights"]).shape == (4, S, S)
        assert layer["attention"]["head_labels"] == ["SA 0", "SA 1", "RA 0", "RA 1"]
        assert tensor(layer["relations"]["values"]).shape == (model.config.n_relations, S, S)
        assert not tensor(layer["relations"]["values"]).isnan().any()  # the encoder is not causal
        assert tensor(layer["symbols"]["weights"]).shape == (model.config.symbol_heads, S, model.config.n_symbols)
    for layer in result["decoder_layers"]:
        assert tensor(layer["attention"]["weights"]).shape == (4, T, T)
        assert tensor(layer["cross_attention"]["weights"]).shape == (model.config.cross_heads, T, S)
        assert layer["cross_attention"]["key_labels"] == list(SOURCE)


@pytest.mark.parametrize("index", [0, 1])
def test_encoder_maps_and_relations_match_an_fp64_recomputation(tok, index):
    model = seq2seq()
    result = analyze_seq2seq(model, tok, SOURCE, TARGET)
    run, _, _ = forward_seq2seq(model, tok)
    mixer = model.encoder.layers[index].mixer
    x = inputs_of(mixer, run)[0][0]
    maps, relations = dual_attention_reference(mixer, x, causal=False)
    layer = result["encoder_layers"][index]
    torch.testing.assert_close(tensor(layer["attention"]["weights"]), maps, rtol=0, atol=1e-5)
    torch.testing.assert_close(tensor(layer["relations"]["values"]), relations, rtol=0, atol=1e-5)


@pytest.mark.parametrize("index", [0, 1])
def test_decoder_and_cross_attention_match_an_fp64_recomputation(tok, index):
    model = seq2seq()
    result = analyze_seq2seq(model, tok, SOURCE, TARGET)
    run, _, _ = forward_seq2seq(model, tok)
    block = model.decoder.layers[index]
    x = inputs_of(block.mixer, run)[0][0]
    maps, relations = dual_attention_reference(block.mixer, x, causal=True)
    layer = result["decoder_layers"][index]
    got = tensor(layer["attention"]["weights"])
    torch.testing.assert_close(got, maps, rtol=0, atol=1e-5)
    T = got.shape[-1]
    assert (got[..., torch.ones(T, T, dtype=torch.bool).triu(1)] == 0).all()  # no weight on future tokens
    shown = tensor(layer["relations"]["values"])
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert shown[:, future].isnan().all()  # future relations are null
    torch.testing.assert_close(shown[:, ~future], relations[:, ~future], rtol=0, atol=1e-5)

    query, memory = inputs_of(block.cross, run)[:2]
    cross = block.cross
    k_weight, _ = cross.kv.weight.chunk(2, 0)
    k_bias, _ = cross.kv.bias.chunk(2, 0)
    expected = softmax_heads(query[0], memory[0], cross.q.weight, cross.q.bias, k_weight, k_bias, cross.n_heads,
                             cross.head_dim)
    weights = tensor(layer["cross_attention"]["weights"])
    torch.testing.assert_close(weights, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2], dtype=torch.float64), rtol=0,
                               atol=1e-4)
    # the memory is the encoder's final states of that same source
    torch.testing.assert_close(memory, model.get_encoder()(inputs_of(model.encoder, run)[0]).last_hidden_state)


@pytest.mark.parametrize("retrieval", ["symbolic_attention", "positional", "position_relative"])
def test_source_padding_is_not_shown(tok, retrieval):
    """A source given as a padded row (pad ids on both sides) is analysed as the bare source: the same labels and
    maps, nothing for the padding, and positional symbols counted over real tokens only."""
    model = seq2seq(symbol_retrieval=retrieval)
    ids = tok(SOURCE).input_ids
    bare = analyze_seq2seq(model, tok, SOURCE, TARGET)
    padded = analyze_seq2seq(model, tok, [PAD, PAD, *ids, PAD, PAD, PAD], TARGET)
    assert padded["source_tokens"] == bare["source_tokens"] == list(SOURCE)
    assert padded["source_ids"] == ids and padded["source"] == SOURCE
    for side in ("encoder_layers", "decoder_layers"):
        for a, b in zip(padded[side], bare[side]):
            for name in ("attention", "cross_attention"):
                if name in b:
                    torch.testing.assert_close(tensor(a[name]["weights"]), tensor(b[name]["weights"]), rtol=0,
                                               atol=2e-5)
            torch.testing.assert_close(tensor(a["relations"]["values"]), tensor(b["relations"]["values"]), rtol=0,
                                       atol=2e-5, equal_nan=True)
            assert a["symbols"].keys() == b["symbols"].keys()
    for layer in padded["decoder_layers"]:
        cross = tensor(layer["cross_attention"]["weights"])
        assert cross.shape[-1] == len(SOURCE)
        torch.testing.assert_close(cross.sum(-1), torch.ones(cross.shape[:2], dtype=torch.float64), rtol=0, atol=1e-4)
    if retrieval == "positional":
        assert padded["encoder_layers"][0]["symbols"]["assigned"] == [list(range(len(SOURCE)))]


def test_next_token_top_k_at_every_target_position_is_the_models_softmax(tok):
    model = seq2seq()
    result = analyze_seq2seq(model, tok, SOURCE, TARGET, top_k=5, position=1)
    run, _, _ = forward_seq2seq(model, tok)
    with torch.no_grad():
        probs = run().logits[0].softmax(-1)
    assert result["position"] == 1 and result["next_token"]["top"] == result["next_token_all"][1]
    assert len(result["next_token_all"]) == len(TARGET) + 1
    for row, expected in zip(result["next_token_all"], probs):
        top = expected.topk(5)
        assert [t["id"] for t in row] == top.indices.tolist()
        torch.testing.assert_close(torch.tensor([t["prob"] for t in row], dtype=torch.float64), top.values,
                                   rtol=0, atol=1e-5)
    empty = analyze_seq2seq(model, tok, SOURCE)  # no target: the start token alone
    assert empty["target_tokens"] == ["<|endoftext|>"] and empty["position"] == 0 and empty["target"] == ""


def test_seq2seq_generation_is_the_models_greedy_output(tok):
    model = seq2seq()
    out = generate_seq2seq(model, tok, SOURCE, max_new_tokens=6)
    expected = model.generate(input_ids=torch.tensor([tok(SOURCE).input_ids]), max_new_tokens=6, do_sample=False)
    assert out["target"] == tok.decode(expected[0, 1:], skip_special_tokens=True) == out["text"]


def test_seq2seq_errors_are_clear(tok):
    model = seq2seq()
    with pytest.raises(ConfigError, match="source is 14 tokens long; the limit is 4"):
        analyze_seq2seq(model, tok, SOURCE, max_tokens=4)
    with pytest.raises(ConfigError, match="no tokens"):
        analyze_seq2seq(model, tok, "")
    with pytest.raises(ConfigError, match="outside the model's source vocabulary"):
        analyze_seq2seq(seq2seq(source_vocab_size=64), tok, "ž")
    with pytest.raises(ConfigError, match="outside the target prefix"):
        analyze_seq2seq(model, tok, SOURCE, "ab", position=3)
    with pytest.raises(ConfigError, match="no decoder_start_token_id"):
        analyze_seq2seq(seq2seq(decoder_start_token_id=None), tok, SOURCE)
    with pytest.raises(ConfigError, match="target is 40 tokens; this model's target context is 32"):
        analyze_seq2seq(seq2seq(pos="learned"), tok, SOURCE, "x" * 39)
    with pytest.raises(ConfigError, match="seq2seq model: analyse it with attnlab.analysis.analyze_seq2seq"):
        analyze(model, tok, SOURCE)
    with pytest.raises(ConfigError, match="analyze_seq2seq"):
        generate(model, tok, SOURCE)
    assert analysis_kind(model).generate is generate_seq2seq and analysis_kind(vision()).generate is None


# ------------------------------------------------------------------------------------------ vision
def image(height: int = 16, width: int = 16, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


@pytest.mark.parametrize("index", [0, 1])
def test_vision_maps_and_relations_match_an_fp64_recomputation(index):
    model = vision()
    result = analyze_image(model, image())
    pixel_values = model.default_image_processor()(Image.fromarray(image()), return_tensors="pt")["pixel_values"]
    mixer = model.encoder.layers[index].mixer
    x = inputs_of(mixer, lambda: model(pixel_values))[0][0]
    maps, relations = dual_attention_reference(mixer, x, causal=False)
    layer = result["layers"][index]
    assert layer["attention"]["key_labels"] == result["tokens"] == ["cls"] + [f"p({r},{c})" for r in range(4)
                                                                              for c in range(4)]
    torch.testing.assert_close(tensor(layer["attention"]["weights"]), maps, rtol=0, atol=1e-5)
    torch.testing.assert_close(tensor(layer["relations"]["values"]), relations, rtol=0, atol=1e-5)


def test_predicted_classes_are_the_softmax_of_the_logits():
    names = {0: "circle", 1: "square", 2: "triangle"}
    model = vision(num_labels=3)
    model.config.id2label, model.config.label2id = names, {v: k for k, v in names.items()}
    result = analyze_image(model, image(), top_k=2)
    pixel_values = model.default_image_processor()(Image.fromarray(image()), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = model(pixel_values).logits[0].softmax(-1)
    top = probs.topk(2)
    shown = result["prediction"]["top"]
    assert [c["id"] for c in shown] == top.indices.tolist() and result["top_k"] == 2
    assert [c["label"] for c in shown] == [names[i] for i in top.indices.tolist()]
    torch.testing.assert_close(torch.tensor([c["prob"] for c in shown], dtype=torch.float64), top.values, rtol=0,
                               atol=1e-5)
    assert result["prediction"]["id"] == shown[0]["id"] and result["prediction"]["label"] == shown[0]["label"]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_patch_maps_lie_on_the_patch_grid(pooling):
    """An 8×16 image in 4×4 patches: a 2×4 grid; each map is the pooled query's row over the patch keys."""
    model = vision(image_size=[8, 16], pooling=pooling)
    result = analyze_image(model, image(8, 16))
    assert result["grid"] == [2, 4] and result["tokens"][1:] == [f"p({r},{c})" for r in range(2) for c in range(4)]
    for layer in result["layers"]:
        weights = tensor(layer["attention"]["weights"])  # (heads, 9, 9)
        rows = weights[:, 0, 1:] if pooling == "cls" else weights.mean(1)[:, 1:]
        patch = layer["patch_attention"]
        maps = tensor(patch["maps"])
        assert patch["query"] == pooling and maps.shape == (4, 8 // 4, 16 // 4)
        for r in range(2):
            for c in range(4):
                torch.testing.assert_close(maps[:, r, c], rows[:, r * 4 + c], rtol=0, atol=2e-5)
        torch.testing.assert_close(tensor(patch["mean"]), maps.mean(0), rtol=0, atol=2e-5)
        relations = tensor(layer["relations"]["values"])
        pooled = relations[:, 0, 1:] if pooling == "cls" else relations.mean(1)[:, 1:]
        torch.testing.assert_close(tensor(layer["patch_relations"]["maps"]), pooled.reshape(-1, 2, 4), rtol=0,
                                   atol=2e-5)


def test_pil_numpy_and_tensor_images_agree_and_the_shown_image_is_the_input():
    model = vision()
    pixels = image()
    results = [analyze_image(model, x) for x in (Image.fromarray(pixels), pixels,
                                                  torch.from_numpy(pixels).permute(2, 0, 1).double() / 255)]
    for other in results[1:]:
        assert other["prediction"] == results[0]["prediction"]
        assert other["layers"][1]["attention"] == results[0]["layers"][1]["attention"]
    assert results[0]["image"]["pixels"] == pixels.tolist()  # model-sized: no resize, the normalisation undone
    gray = analyze_image(vision(num_channels=1), pixels)  # RGB into a one-channel model: PIL's luminance
    luminance = np.asarray(Image.fromarray(pixels).convert("L"))
    assert gray["image"]["channels"] == 1 and gray["image"]["pixels"] == luminance[..., None].tolist()
    resized = analyze_image(model, image(40, 24))
    assert (resized["image"]["height"], resized["image"]["width"]) == (16, 16)


def test_vision_positional_symbols_and_errors():
    result = analyze_image(vision(symbol_retrieval="positional"), image())
    assert result["layers"][0]["symbols"]["assigned"] == [list(range(17))]
    model = vision()
    with pytest.raises(ConfigError, match="float image must hold values in"):
        analyze_image(model, np.full((16, 16, 3), 2.0))
    with pytest.raises(ConfigError, match="must be \\(H, W\\)"):
        analyze_image(model, np.zeros((2, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(ConfigError, match="PIL image, a numpy array or a tensor"):
        analyze_image(model, "cat.png")
    with pytest.raises(ConfigError, match="image model: analyse it with attnlab.analysis.analyze_image"):
        analyze_seq2seq(model, build_tokenizer("byte"), SOURCE)
