"""Model cards carry the real numbers of the run they describe, and their usage code runs."""

import re

import attnlab
from attnlab.modelcard import render_model_card, run_metadata
from attnlab.training import TrainConfig, train


def test_model_card_of_a_real_dat_run(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat on the mat. the dog sat on the log. " * 200)
    run = tmp_path / "run"
    result = train(TrainConfig(
        model="dat", preset="debug", data=str(text), max_steps=4, batch_size=2, block_size=32, warmup_steps=1,
        eval_interval=4, eval_tokens=512, sample_tokens=0, progress=False, tensorboard=False, out_dir=str(run),
        model_overrides={"n_relations": 4},
    ))
    model = attnlab.load(run)
    card = render_model_card(model, run_metadata(run))
    n_params = sum(p.numel() for p in model.parameters())
    row = re.search(r"^\| ([^|]+) \| ([^|]+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\S+) \| (\d+) \|$", card, re.M)
    assert row is not None, card
    size, tokens, layers, d_model, sa, ra, rel_dim, context = (g.strip() for g in row.groups())
    assert (layers, d_model, sa, ra, rel_dim, context) == ("2", "32", "2", "2", "4", "32")
    assert result.tokens_seen == 4 * 2 * 32 and tokens == "256" and f"{result.tokens_seen:,} (256)" in card
    assert f"({n_params:,})" in card
    assert "**Tokenizer:** byte" in card and "**Learning Rate:** 0.001 (peak)" in card
    assert f"bits per byte {result.val['bpb']:.4f}" in card
    assert re.search(r"\*\*Date:\*\* \d{4}-\d{2}-\d{2}", card)
    assert card.startswith("---\nlibrary_name: transformers") and "- attnlab_dat" in card


def test_usage_code_in_the_card_runs(tmp_path):
    from attnlab.data.tokenizer import byte_tokenizer

    model = attnlab.create_model("gpt", "debug").eval()
    model.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    card = render_model_card(model, {"model_name": "m"})
    assert "| 0 | - | 64 |" in card and "No `attnlab train` run is recorded" in card
    printed = []
    for code in re.findall(r"```python\n(.*?)```", card, re.S):
        exec(code.replace("PATH/TO/m", str(tmp_path)), {"print": printed.append})
    assert len(printed) == 1 and printed[0].startswith("Hello")


def test_a_card_without_a_run_names_the_model_and_claims_no_training(tmp_path):
    model = attnlab.create_model("dat", "debug")
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    n_params = sum(p.numel() for p in model.parameters())
    assert re.search(r"^# dat-40K$", card, re.M) and f"({n_params:,})" in card
    assert "No `attnlab train` run is recorded" in card and "no training run is recorded" in card
    assert "trained with `attnlab train`" not in card and "trained on `" not in card
