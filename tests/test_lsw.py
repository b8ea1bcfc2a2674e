"""LSW Transformer: XL memory, reversed RoPE, registers, document masking, presets, contrastive search, warm start."""

import math

import pytest
import torch
import torch.nn.functional as F

import attnlab
from attnlab.errors import ConfigError
from attnlab.summary import describe
from attnlab.layers.lsw_attention import lsw_attention_mask
from attnlab.layers.rotary import apply_rotary
from attnlab.ops.attention.naive import naive_rope


def make(**overrides):
    torch.manual_seed(0)
    return attnlab.create_model("lsw", "debug", **overrides).eval().double()


@torch.no_grad()
def reference_logits(model, ids: torch.Tensor, visible) -> torch.Tensor:
    """One sequence through the model's weights with loops: registers, reversed RoPE, ``visible(i, j)`` keys."""
    cfg, backbone = model.config, model.model
    heads, kv_heads, dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    seq = len(ids)
    h = backbone.input_proj(backbone.embed_tokens(ids))
    for block in backbone.layers:
        attn = block.mixer
        q, k, v = attn.qkv(block.mixer_norm(h)).split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
        q, k, v = q.view(seq, heads, dim), k.view(seq, kv_heads, dim), v.view(seq, kv_heads, dim)
        out = torch.zeros(seq, heads, dim, dtype=h.dtype)
        for i in range(seq):
            for head in range(heads):
                g = head // (heads // kv_heads)
                scores = [q[i, head] @ attn.register_keys[g, r] for r in range(cfg.n_registers)]
                values = [attn.register_values[g, r] for r in range(cfg.n_registers)]
                qi = naive_rope(q[i, head], -i, cfg.rope_theta)  # reversed: positions decrease towards the past
                for j in range(seq):
                    if visible(i, j):
                        scores.append(qi @ naive_rope(k[j, g], -j, cfg.rope_theta))
                        values.append(v[j, g])
                weights = torch.softmax(torch.stack(scores) / math.sqrt(dim), dim=0)
                out[i, head] = sum(w * val for w, val in zip(weights, values))
        h = h + attn.out(out.reshape(seq, -1))
        h = h + block.ffn(block.ffn_norm(h))
    return model.lm_head(backbone.output_proj(backbone.norm(h)))


def test_one_pass_matches_the_loop_reference():
    model = make(n_kv_heads=2)
    ids = torch.randint(0, 256, (20,))
    torch.testing.assert_close(model(ids[None]).logits[0], reference_logits(model, ids, lambda i, j: j <= i))


@pytest.mark.parametrize("mem_len", [6, 13])
def test_segments_with_memory_equal_one_pass_with_the_xl_window(mem_len):
    """Segments of 6 with memory M see keys [segment start - M, i]: exactly Transformer-XL's window."""
    model = make(mem_len=mem_len)
    ids, segment = torch.randint(0, 256, (24,)), 6
    memory = model.make_cache()
    logits = torch.cat([
        model(ids[None, s:s + segment], cache=memory, use_cache=True).logits[0]
        for s in range(0, len(ids), segment)
    ])
    window = reference_logits(model, ids, lambda i, j: i - i % segment - mem_len <= j <= i)
    torch.testing.assert_close(logits, window)
    assert memory.get_seq_length() == 24 and memory.keys[0].shape[2] == mem_len


def test_validation_with_memory_scores_each_stream_as_one_long_context():
    """evaluate(memory=True) with mem_len ≥ the stream: each segment sees its whole stream so far, so the
    loss equals one forward pass over every stream; without memory each segment starts from nothing."""
    import numpy as np

    from attnlab.data.split import TokenSplit
    from attnlab.evaluation import evaluate

    model = make(mem_len=64)
    tokens = np.random.default_rng(0).integers(0, 256, 61).astype(np.uint16)  # 60 targets: 2 streams of 30
    split = TokenSplit(tokens, np.ones(256, dtype=np.int64))
    streams = torch.from_numpy(tokens.astype(np.int64))[:60].view(2, 30)
    targets = torch.from_numpy(tokens.astype(np.int64))[1:].view(2, 30)
    one_pass = F.cross_entropy(model(streams).logits.flatten(0, 1), targets.flatten()).item()
    kwargs = dict(byte_lengths=np.ones(256), batch_size=2, block_size=8, device="cpu")
    with_memory = evaluate(model, split, memory=True, **kwargs)
    assert with_memory["tokens"] == 60 and with_memory["loss"] == pytest.approx(one_pass, rel=1e-6)  # fp32 CE
    assert evaluate(model, split, **kwargs)["loss"] != pytest.approx(one_pass, rel=1e-5)


def test_generation_reads_memory_beyond_one_segment():
    """A 10-token prompt, then 12 greedy tokens with an 8-token memory: each new token sees 8 back + itself."""
    model = make(mem_len=8)
    prompt = torch.randint(0, 256, (1, 10))
    out = model.generate(prompt, max_new_tokens=12, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0)
    seq = out.sequences[0]
    want = reference_logits(model, seq, lambda i, j: j <= i and (i < 10 or j >= i - 8))
    got = torch.stack(out.logits, dim=1)[0]
    torch.testing.assert_close(got, want[9:-1].float(), rtol=1e-6, atol=1e-6)


def test_no_gradient_flows_into_memory():
    model = make(mem_len=8).train()
    ids = torch.randint(0, 256, (2, 16))
    memory = model.make_cache()
    model(ids[:, :8], cache=memory, use_cache=True)
    assert all(not k.requires_grad and k.grad_fn is None for k in memory.keys + memory.values)
    loss = model(ids[:, 8:], shift_labels=ids[:, 8:], cache=memory, use_cache=True).loss
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    # The same step with the memory as a constant from a no-grad pass gives the same gradients.
    model.zero_grad()
    constant = model.make_cache()
    with torch.no_grad():
        model(ids[:, :8], cache=constant, use_cache=True)
    model(ids[:, 8:], shift_labels=ids[:, 8:], cache=constant, use_cache=True).loss.backward()
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))


def test_reversed_rope_scores_do_not_depend_on_the_memory_behind():
    """With memory prepended, the segment's query and key angles, hence its scores, are bit-identical."""
    model = attnlab.create_model("lsw", "debug", mem_len=32).eval()
    bare = model.model.context(torch.arange(8)[None], None, None, False)
    memory = model.make_cache()
    model(torch.randint(0, 256, (1, 20)), cache=memory, use_cache=True)
    after = model.model.context(torch.arange(20, 28)[None], None, memory, False)
    q, k = torch.randn(2, 1, 1, 8, model.config.head_dim).unbind(0)

    def scores(ctx, keys_from):
        cos, sin = ctx.key_rope
        return apply_rotary(q, *ctx.rope) @ apply_rotary(k, cos[:, keys_from:], sin[:, keys_from:]).transpose(-1, -2)

    assert torch.equal(scores(bare, 0), scores(after, 20))
    assert torch.equal(after.rope[0], bare.rope[0]) and after.rope[0][0, -1].eq(1).all()  # newest token: angle 0


def test_attention_mask_layout():
    mask = lsw_attention_mask(
        3, 2,
        memory_valid=torch.tensor([[False, True]]),
        query_valid=torch.tensor([[True, False, True]]),
        memory_docs=torch.tensor([[0, 0]]),
        query_docs=torch.tensor([[0, 1, 1]]),
    )
    want = torch.tensor([
        # registers | memory | segment
        [1, 1, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 1, 0],  # padded query: registers and itself, nothing of another document
        [1, 1, 0, 0, 0, 0, 1],  # document 1 starts at the padded token, which it must not see
    ], dtype=torch.bool)
    assert torch.equal(mask[0, 0], want)
    assert lsw_attention_mask(4, 0, None, None) is None  # plain causal: SDPA's is_causal fast path


def test_registers_are_sinks_not_positions():
    model = make()
    ids = torch.randint(0, 256, (2, 10))
    out = model(ids, output_attentions=True)
    assert out.logits.shape == (2, 10, 256)
    weights = out.attentions[0]
    assert weights.shape == (2, 4, 10, 2 + 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 10, dtype=weights.dtype))
    assert bool((weights[..., :2] > 0).all())  # every query puts mass on the registers
    torch.testing.assert_close(out.logits, model(ids).logits)  # explicit path == SDPA path


def test_document_ids_reset_memory_and_segment_context():
    model = make()
    a, b = torch.randint(0, 256, (1, 5)), torch.randint(0, 256, (1, 7))
    memory = model.make_cache()
    model(torch.randint(0, 256, (1, 6)), document_ids=torch.zeros(1, 6, dtype=torch.long),
          cache=memory, use_cache=True)
    docs = torch.tensor([[0] * 5 + [1] * 7])
    mixed = model(torch.cat([a, b], dim=1), document_ids=docs, cache=memory, use_cache=True).logits
    torch.testing.assert_close(mixed[:, 5:], model(b).logits)


def test_bf16_autocast_trains():
    model = attnlab.create_model("lsw", "debug", simctg_weight=1.0).train()
    ids = torch.randint(0, 256, (2, 16))
    memory = model.make_cache()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for s in (0, 8):
            out = model(ids[:, s:s + 8], labels=ids[:, s:s + 8], cache=memory, use_cache=True)
            out.loss.backward()
    assert out.contrastive_loss is not None and torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_simctg_only_in_training_mode():
    model = make(simctg_weight=0.5)
    ids = torch.randint(0, 256, (2, 12))
    assert model(ids, labels=ids).contrastive_loss is None
    out = model.train()(ids, labels=ids)
    torch.testing.assert_close(out.loss, out.lm_loss + 0.5 * out.contrastive_loss)


# The specification's table (rounded as printed there).
TABLE = {"tiny": 153e6, "small": 343e6, "medium": 949e6, "large": 2.5e9, "xl": 7.3e9, "xxl": 13e9}


@pytest.mark.parametrize("preset", list(TABLE))
def test_preset_parameter_counts_match_the_table(preset):
    count = describe(None, "lsw", preset, {})["parameters"]
    assert float(f"{count:.2g}") == float(f"{TABLE[preset]:.2g}")  # the table's precision
    tolerance = 0.017 if preset == "large" else 0.01  # 2.458B prints as 2.5B: 1.7% at 2 significant digits
    assert abs(count - TABLE[preset]) / TABLE[preset] < tolerance


@pytest.mark.parametrize(
    "overrides, message",
    [({"mem_len": -1}, "mem_len"), ({"n_registers": -2}, "n_registers"), ({"d_emb": 0}, "d_emb"),
     ({"simctg_margin": -1.0}, "simctg"), ({"rope_theta": 0.0}, "rope_theta")],
)
def test_impossible_configs(overrides, message):
    with pytest.raises(ConfigError, match=message):
        attnlab.create_model("lsw", "debug", **overrides)


@torch.no_grad()
def naive_contrastive_search(model, ids, alpha, k, steps):
    """Su et al.'s rule with every candidate recomputed from scratch (no cache)."""
    seq = ids[0]
    for _ in range(steps):
        out = model(seq[None], output_hidden_states=True)
        probs = out.logits[0, -1].float().softmax(-1)
        top_p, top = probs.topk(k)
        context = out.hidden_states[-1][0]
        best, best_score = None, -float("inf")
        for p, v in zip(top_p, top):
            h = model(torch.cat([seq, v[None]])[None], output_hidden_states=True).hidden_states[-1][0, -1]
            penalty = max(F.cosine_similarity(h, c, dim=0) for c in context)
            score = (1 - alpha) * p - alpha * penalty
            if score > best_score:
                best, best_score = v, score
        seq = torch.cat([seq, best[None]])
    return seq


def test_contrastive_search_matches_the_naive_rule():
    model = make()
    ids = torch.randint(0, 256, (1, 6))
    got = model.generate(ids, penalty_alpha=0.6, top_k=4, max_new_tokens=8)
    assert torch.equal(got[0], naive_contrastive_search(model, ids, 0.6, 4, 8))
    batch = model.generate(torch.cat([ids, ids.flip(-1)]), penalty_alpha=0.6, top_k=4, max_new_tokens=8)
    assert torch.equal(batch[0], got[0])


def test_warm_start_copies_embeddings_and_tokenizer(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from attnlab.data import build_tokenizer
    from attnlab.models.warm_start import warm_start_embeddings

    donor = GPT2LMHeadModel(GPT2Config(vocab_size=257, n_embd=24, n_layer=1, n_head=2, n_positions=32))
    donor.save_pretrained(tmp_path)
    build_tokenizer("byte", lambda: iter(())).save_pretrained(tmp_path)
    model = attnlab.create_model("lsw", "debug", vocab_size=257)
    tokenizer = warm_start_embeddings(model, str(tmp_path))
    assert torch.equal(model.model.embed_tokens.weight, donor.transformer.wte.weight)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tokenizer is not None and len(tokenizer) == 257
    with pytest.raises(ConfigError, match="d_emb=24"):
        warm_start_embeddings(attnlab.create_model("lsw", "debug", d_emb=16), str(tmp_path))


def test_segment_stream_rows_continue_their_own_streams():
    import numpy as np

    from attnlab.data import TokenSplit

    tokens = np.arange(101, dtype=np.uint16) % 10  # token 0 is eos, at 0, 10, 20...: a document ends there
    split = TokenSplit(tokens, np.ones(10, dtype=np.int64))
    x0, y0, d0 = split.stream_batch(0, 2, 8, eos_id=0)
    x1, _, d1 = split.stream_batch(1, 2, 8, eos_id=0)
    assert torch.equal(x1[:, 0], y0[:, -1])  # step 1 reads on where step 0 stopped
    assert torch.equal(x0[0], torch.arange(8)) and torch.equal(x0[1], torch.arange(48, 56) % 10)
    assert d0[0].tolist() == [0] + [1] * 7 and d0[1].tolist() == [5, 5, 5, 6, 6, 6, 6, 6]  # eos at 50 ends doc 5
    wrapped = split.stream_batch(12, 2, 8, eos_id=0)[2]  # 12 windows: row 0 is back at the start, next pass
    assert wrapped[0, 0] > d1.max()
