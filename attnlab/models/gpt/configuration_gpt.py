"""The GPT baseline: the shared skeleton with causal softmax attention and nothing else."""

from __future__ import annotations

from ..config import AttnLabConfig


class GPTConfig(AttnLabConfig):
    """GPT-2-style defaults (learned positions, LayerNorm, GELU MLP, tied head); every skeleton option works."""

    model_type = "attnlab_gpt"


# Named sizes; vocab_size is filled in from the tokenizer at training time. "small" is nanoGPT's
# Shakespeare model, "medium" is GPT-2 small (124M with the GPT-2 vocabulary).
PRESETS: dict[str, dict] = {
    "debug": dict(d_model=32, n_layers=2, n_heads=4, block_size=64),
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, block_size=256),
    "small": dict(d_model=384, n_layers=6, n_heads=6, block_size=256, dropout=0.2),
    "medium": dict(d_model=768, n_layers=12, n_heads=12, block_size=1024, vocab_size=50257),
}
