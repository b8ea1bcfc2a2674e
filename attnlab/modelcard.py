"""README.md model cards for saved attnlab models, filled from the model config and the run's real metadata.

The fields are those of the DAT-LM model card (size, training tokens, layers, model dimension, SA / RA
heads, relation dimension, context length, tokenizer, date, training setup); any family gets them (a model
without relational heads has n_heads self-attention heads and 0 relational ones).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from torch import nn


def run_metadata(run_dir: str | Path) -> dict[str, Any]:
    """What a run directory knows about its training: ``train_config.json``, ``run_info.json``, the latest
    checkpoint's state (step, tokens seen) and the last validation record of ``metrics.jsonl``."""
    run_dir = Path(run_dir)
    meta: dict[str, Any] = {"model_name": run_dir.resolve().name}
    for key, name in (("train_config", "train_config.json"), ("run_info", "run_info.json")):
        if (value := _json_or_none(run_dir / name)) is not None:
            meta[key] = value
    latest = _json_or_none(run_dir / "checkpoints" / "latest.json")
    path = latest.get("path") if isinstance(latest, dict) else None
    state = _json_or_none(run_dir / "checkpoints" / path / "state.json") if isinstance(path, str) else None
    if state is not None:
        meta["state"] = state
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        records = [_json_or_none_line(line) for line in metrics.read_text(errors="replace").splitlines()]
        vals = [r for r in records if isinstance(r, dict) and "val_loss" in r]
        if vals:
            meta["val"] = {k.removeprefix("val_"): v for k, v in vals[-1].items()}
    return meta


def _json_or_none(path: Path) -> Any:
    """A metadata file's JSON, or None when it is missing or damaged: a model card leaves out what it cannot
    read rather than failing the save or export it belongs to."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _json_or_none_line(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))


def _front_matter(model_type: str, train: dict, tags: tuple[str, ...] = ()) -> str:
    lines = ["library_name: transformers", "pipeline_tag: text-generation", "tags:", "- attnlab", f"- {model_type}"]
    lines += [f"- {tag}" for tag in tags]
    if train.get("data"):
        lines += ["datasets:", f"- {train['data']}"]
    return "\n".join(lines)


def family_name(model: nn.Module) -> str:
    """The family of an attnlab model: the name of its ``modeling_<family>`` module (so it reads the same in
    an exported copy of the code), else its ``model_type``."""
    module = type(model).__module__.rsplit(".", 1)[-1]
    return module.removeprefix("modeling_") if module.startswith("modeling_") else model.config.model_type


def model_name(model: nn.Module, metadata: dict[str, Any] | None = None) -> str:
    """The name a card gives the model: the run's, else family and size (``dat-40K``, ``gpt-tiny`` from a run
    that records its preset)."""
    meta = metadata or {}
    if meta.get("model_name"):
        return meta["model_name"]
    family = meta.get("run_info", {}).get("family") or family_name(model)
    size = meta.get("train_config", {}).get("preset") or _count(sum(p.numel() for p in model.parameters()))
    return f"{family}-{size}"


def attnlab_usage(name: str) -> str:
    """The "Model Usage" section of a model saved by attnlab: load it with attnlab (or transformers after
    ``import attnlab``)."""
    return f"""```python
import attnlab

model = attnlab.load("PATH/TO/{name}")
tok = attnlab.load_tokenizer("PATH/TO/{name}")
ids = tok("Hello", return_tensors="pt").input_ids
print(tok.decode(model.generate(ids, max_new_tokens=50, do_sample=True, top_k=50)[0]))
```

or with plain transformers (after `import attnlab`, which registers the model type):

```python
import attnlab
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("PATH/TO/{name}")
tok = AutoTokenizer.from_pretrained("PATH/TO/{name}")
```

From the command line: `attnlab generate PATH/TO/{name} --prompt "Hello"`."""


def _training_setup(train: dict, info: dict, state: dict, seq: int, tokens_text: str) -> list[str]:
    """The list of training settings of a run, as Markdown items."""
    tokens_per_step = info.get("tokens_per_step")
    return [
        f"- **Data:** {train.get('data')}",
        f"- **Optimizer:** {train.get('optimizer', 'adamw').replace('adamw', 'AdamW')} "
        f"(betas {train.get('beta1')}, {train.get('beta2')}; gradient clipping {train.get('grad_clip')})",
        f"- **Learning Rate:** {train.get('lr')} (peak), warmup {train.get('warmup_steps')} steps, cosine to "
        f"{train.get('min_lr') if train.get('min_lr') is not None else train.get('lr', 0) / 10}",
        f"- **Weight Decay:** {train.get('weight_decay')}",
        f"- **Batch Size:** {tokens_per_step:,} tokens" if tokens_per_step else "- **Batch Size:** -",
        f"- **Sequence Length:** {seq} tokens",
        f"- **Steps:** {state.get('step', train.get('max_steps'))}",
        f"- **Total Training Tokens:** {tokens_text}",
        f"- **Precision / hardware:** {train.get('dtype')} on {info.get('device', '?')} "
        f"× {info.get('world_size', 1)}, torch {info.get('torch', '?')}",
    ]


def _training_details(kind: str, setup: list[str]) -> str:
    """The "Training Details" section: the run's setup, or a plain statement that no run is recorded."""
    if not setup:
        return ("No `attnlab train` run is recorded with this model: it was saved by `save_pretrained` "
                "(created, converted or trained elsewhere), so its data and training setup are not known here.\n"
                f"- **Architecture:** Decoder-only {kind}\n"
                "- **Framework:** PyTorch, Hugging Face transformers")
    return (f"The model was trained with `attnlab train` using the following setup:\n"
            f"- **Architecture:** Decoder-only {kind}\n- **Framework:** PyTorch, Hugging Face transformers\n"
            + "\n".join(setup))


def render_model_card(
    model: nn.Module,
    metadata: dict[str, Any] | None = None,
    *,
    usage: str | None = None,
    tags: tuple[str, ...] = (),
) -> str:
    """README.md text for ``model`` (an attnlab ``PreTrainedModel``); ``metadata`` as from ``run_metadata``.

    ``usage`` replaces the "Model Usage" section (an exported folder is loaded without attnlab); ``tags`` are
    added to the front matter's.
    """
    meta = metadata or {}
    config = model.config
    train, info, state = meta.get("train_config", {}), meta.get("run_info", {}), meta.get("state", {})
    name = model_name(model, meta)
    n_params = info.get("parameters") or sum(p.numel() for p in model.parameters())
    tokens = state.get("tokens_seen")
    tokens_text = f"{tokens:,} ({_count(tokens)})" if tokens else "not recorded (no training run)"
    sa = getattr(config, "n_heads_sa", config.n_heads)
    ra = getattr(config, "n_heads_ra", 0)
    rel_dim = getattr(config, "n_relations", None) if ra else None
    date = meta.get("date") or _dt.date.today().isoformat()
    tokenizer = train.get("tokenizer", "saved beside the model")
    if train.get("tokenizer") == "bpe":
        tokenizer = f"bpe (trained on the data, {train.get('vocab_size')} tokens)"
    kind = "Dual Attention Transformer" if ra else "Transformer"
    seq = train.get("block_size") or config.block_size
    setup = _training_setup(train, info, state, seq, tokens_text) if train else []
    origin = (f"built with attnlab, trained on `{train.get('data', 'unspecified data')}`" if train
              else "built with attnlab; no training run is recorded with it")
    val = meta.get("val")
    evaluation = (
        f"Validation at step {val.get('step')}: loss {val['loss']:.4f}, perplexity {val['ppl']:.2f}, "
        f"bits per byte {val['bpb']:.4f}."
        if val else "No validation recorded."
    )
    return f"""---
{_front_matter(config.model_type, train, tags)}
---

# {name}

This is a {kind} language model ({config.model_type}) {origin}.
The model has {_count(n_params)} parameters ({n_params:,}).

## Model Details

| Size | Training Tokens | Layers | Model Dimension | Self-Attention Heads | Relational Attention Heads | Relation Dimension | Context Length |
|--|--|--|--|--|--|--|--|
| {_count(n_params)} | {_count(tokens) if tokens else '-'} | {config.n_layers} | {config.d_model} | {sa} | {ra} | {rel_dim if rel_dim else '-'} | {config.block_size} |

### Model Description

- **Model type:** Decoder-only {kind} (`{config.model_type}`)
- **Tokenizer:** {tokenizer} (vocabulary {config.vocab_size})
- **Positions / norm / FFN:** {config.pos}, {config.norm}, {config.ffn} (d_ff {config.d_ff})
- **Date:** {date}

## Model Usage

{usage if usage is not None else attnlab_usage(name)}

## Training Details

{_training_details(kind, setup)}

## Evaluation

{evaluation}
"""
