"""Properties every registered family must have: causality, cache == recompute, padding, save/load."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import attnlab
from attnlab.errors import ConfigError

FAMILIES = attnlab.list_models()
SKELETON_VARIANTS = [
    {},
    {"pos": "rope", "norm": "rmsnorm", "ffn": "swiglu", "bias": False},
    {"pos": "none", "tie_word_embeddings": False},
    {"n_kv_heads": 1, "pos": "rope"},
]


def make(family, **overrides):
    torch.manual_seed(0)
    return attnlab.create_model(family, "debug", **overrides).eval().double()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("overrides", SKELETON_VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_causal_changing_a_token_never_changes_earlier_outputs(family, overrides):
    model = make(family, **overrides)
    x = torch.randint(0, model.config.vocab_size, (2, 24))
    base = model(x).logits
    for t in (0, 11, 23):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % model.config.vocab_size
        out = model(y).logits
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-12)
        assert not torch.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("overrides", SKELETON_VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_cached_generation_equals_recomputing_the_prefix(family, overrides):
    model = make(family, **overrides)
    prompt = torch.randint(1, model.config.vocab_size, (2, 5))  # 0 is pad_token_id: generate() would mask it
    out = model.generate(prompt, max_new_tokens=12, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0)
    full = model(out.sequences, use_cache=False).logits
    for i, step_logits in enumerate(out.logits):  # generate hands logits back in fp32
        torch.testing.assert_close(step_logits, full[:, prompt.shape[1] - 1 + i].float(), rtol=1e-6, atol=1e-6)
    # and the greedy tokens are the argmax of the recomputed logits
    assert torch.equal(out.sequences[:, 5:], full[:, 4:-1].argmax(-1))


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_generation_is_seeded_and_in_vocab(family):
    model = make(family)
    prompt = torch.randint(0, model.config.vocab_size, (1, 4))
    torch.manual_seed(1)
    a = model.generate(prompt, max_new_tokens=10, do_sample=True, top_k=20, top_p=0.9, pad_token_id=0)
    torch.manual_seed(1)
    b = model.generate(prompt, max_new_tokens=10, do_sample=True, top_k=20, top_p=0.9, pad_token_id=0)
    assert torch.equal(a, b) and a.shape == (1, 14) and int(a.max()) < model.config.vocab_size


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_padded_batch_equals_one_by_one(family, side, pos):
    model = make(family, pos=pos)
    lengths = [9, 4, 6]
    seqs = [torch.randint(1, model.config.vocab_size, (n,)) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        span = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[row, span], mask[row, span] = s, 1
    batched = model(ids, attention_mask=mask).logits
    for row, s in enumerate(seqs):
        single = model(s[None]).logits[0]
        got = batched[row][mask[row].bool()]
        torch.testing.assert_close(got, single, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_cached_generation_matches_single(family):
    model = make(family, pos="rope")
    short, long = torch.randint(1, 200, (3,)), torch.randint(1, 200, (6,))
    ids = torch.stack([torch.cat([torch.zeros(3, dtype=torch.long), short]), long])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    alone = model.generate(short[None], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(batched[0, 3:], alone[0])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_save_load_round_trip_through_auto_classes(family, pos, tmp_path):
    model = make(family, tie_word_embeddings=True, pos=pos).float()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "README.md").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == model.config.model_type
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
    again = attnlab.load(tmp_path)
    torch.testing.assert_close(again(x).logits, model(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_from_labels_is_shifted_cross_entropy(family):
    model = make(family)
    x = torch.randint(0, model.config.vocab_size, (2, 10))
    out = model(x, labels=x)
    logits = out.logits[:, :-1].reshape(-1, model.config.vocab_size)
    want = torch.nn.functional.cross_entropy(logits, x[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, want)
    aligned = model(x[:, :-1], shift_labels=x[:, 1:]).loss
    torch.testing.assert_close(aligned, want)


def test_fresh_model_predicts_uniformly():
    model = attnlab.create_model("gpt", "debug")
    x = torch.randint(0, 256, (4, 32))
    loss = model(x, labels=x).loss.item()
    assert abs(loss - torch.log(torch.tensor(256.0)).item()) < 0.1


def test_learned_positions_refuse_sequences_longer_than_block_size():
    model = attnlab.create_model("gpt", "debug")
    with pytest.raises(ValueError, match="exceeds block_size=64"):
        model(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"d_model": 30}, "divisible by n_heads"),
        ({"n_kv_heads": 3}, "divisible by n_kv_heads"),
        ({"block_size": 0}, "block_size must be a positive integer"),
        ({"pos": "alibi"}, "pos must be one of"),
        ({"dropout": 1.5}, "dropout"),
        ({"no_such_option": 1}, "unknown gpt config option"),
    ],
)
def test_impossible_configs_raise_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        attnlab.create_model("gpt", "debug", **overrides)


def test_unknown_family_and_preset():
    with pytest.raises(ConfigError, match="unknown model family"):
        attnlab.create_model("nope")
    with pytest.raises(ConfigError, match="unknown preset"):
        attnlab.create_model("gpt", "huge")


def test_output_attentions_and_hidden_states_shapes():
    model = make("gpt")
    out = model(torch.randint(0, 256, (1, 8)), output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == model.config.n_layers and out.attentions[0].shape == (1, 4, 8, 8)
    assert len(out.hidden_states) == model.config.n_layers + 1


def test_generate_uses_the_family_cache_factory():
    """Families with recurrent or conv state override ``make_cache``; generate() must call it."""
    model = make("gpt")
    calls = []
    original = model.make_cache

    def counting_cache():
        calls.append(1)
        return original()

    model.make_cache = counting_cache
    model.generate(torch.randint(0, 256, (1, 4)), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert calls == [1]
