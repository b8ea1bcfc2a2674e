"""Resumable training checkpoints, written atomically and loaded without unpickling arbitrary objects.

A checkpoint is a set of named stateful parts (anything with ``state_dict``/``load_state_dict``), one file
each. Layout under ``<run>/checkpoints/``::

    step-000300/model.safetensors   the part "model": weights (safetensors)
    step-000300/optimizer.pt        the part "optimizer" (tensors and numbers only; loaded with weights_only=True)
    step-000300/memories.pt         the part "memories" of a Transformer-XL segment stream, when there is one
    step-000300/adapter.pt          a LoRA run's part "adapter" (PEFT's adapter state) instead of "model", and
    step-000300/base.pt             its part "base": the fingerprint of the frozen base the adapter belongs to
    step-000300/rng.pt              the part "rng": CPU and CUDA generator states
    step-000300/state.json          the trainer's counters: step (the data position), tokens seen, elapsed, best
    latest.json                     {"step": 300, "path": "step-000300"}, replaced atomically last

A checkpoint directory is complete before ``latest.json`` points at it, so a kill at any moment leaves
the previous checkpoint usable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..io import atomic_path, write_json
from ..modelcard import render_model_card, run_metadata

KEEP_LAST = 2


class RNGState:
    """The CPU and CUDA generators as a checkpoint part (dropout streams continue exactly on resume)."""

    def state_dict(self) -> dict[str, Any]:
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, parts: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write every part (``model`` as safetensors, the others with ``torch.save``) and the trainer state into a
    staging directory, publish it under its step, then point ``latest.json`` at it; keep the last two."""
    root = Path(run_dir) / "checkpoints"
    name = f"step-{state['step']:07d}"
    final = root / name
    staging = root / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for part, stateful in parts.items():
        if part == "model":
            _save_weights(stateful, staging / "model.safetensors")
        else:
            torch.save(stateful.state_dict(), staging / f"{part}.pt")
    write_json(staging / "state.json", state)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    write_json(root / "latest.json", {"step": state["step"], "path": name})
    for old in sorted(root.glob("step-*"))[:-KEEP_LAST]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _save_weights(model: nn.Module, path: Path) -> None:
    # Tied weights share storage; safetensors refuses aliases, so store each tensor once (contiguous clone).
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for k in _aliased_keys(model):
        weights.pop(k, None)
    save_file(weights, str(path))


def _aliased_keys(model: nn.Module) -> list[str]:
    """State-dict keys that alias an earlier key (tied embeddings); restored by tying on load."""
    seen, aliases = {}, []
    for key, tensor in model.state_dict().items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            aliases.append(key)
        else:
            seen[ptr] = key
    return aliases


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    path = pointer.parent / json.loads(pointer.read_text())["path"]
    return path if path.is_dir() else None


def load_checkpoint(path: Path, parts: dict[str, Any]) -> dict[str, Any]:
    """Restore every part in place (tensors go where the part's own state lives); return the trainer state."""
    for part, stateful in parts.items():
        if part == "model":
            _load_weights(stateful, path / "model.safetensors")
        else:
            stateful.load_state_dict(_load_part(path, part))
    return json.loads((path / "state.json").read_text())


def _load_weights(model: nn.Module, path: Path) -> None:
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    missing = set(missing) - set(_aliased_keys(model))
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {path.parent} does not match the model: missing {missing}, unexpected {unexpected}")


def _load_part(path: Path, part: str) -> Any:
    """A part's state, with ``weights_only`` loading; checkpoints of older releases kept a segment stream's
    memories inside ``optimizer.pt`` as {"optimizer", "memories"}."""
    file = path / f"{part}.pt"
    if part in ("optimizer", "memories") and not (path / "memories.pt").is_file():
        bundled = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        if isinstance(bundled, dict) and set(bundled) == {"optimizer", "memories"}:
            return bundled[part]
    return torch.load(file, weights_only=True, map_location="cpu")


def export_model(run_dir: Path, model, tokenizer) -> None:
    """Save the model and tokenizer in Hugging Face format at the run root, one file at a time atomically;
    ``model=None`` (a LoRA run that keeps only its adapter) saves the tokenizer alone."""
    run_dir = Path(run_dir)
    staging = run_dir / ".export.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if model is not None:
        model.save_pretrained(staging)
        (staging / "README.md").write_text(render_model_card(model, run_metadata(run_dir)))
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    for item in staging.iterdir():
        with atomic_path(run_dir / item.name) as tmp:
            shutil.copyfile(item, tmp)
    shutil.rmtree(staging, ignore_errors=True)
