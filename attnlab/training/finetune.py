"""Fine-tuning a saved attnlab model: all its weights (``init_from``) or LoRA adapters through PEFT (``lora_r``).

The source is a run directory, an ``attnlab export`` folder or any Hugging Face directory of an attnlab model:
its config, weights and tokenizer are the starting point. A LoRA run trains PEFT's own adapters, so what it
saves (``adapter/``) loads with ``PeftModel.from_pretrained`` like any other adapter. Its checkpoints hold the
adapter, not the frozen base, which a resume reads again from the source; the base's fingerprint, saved with
the adapter, makes a changed source fail loudly instead of resuming on other weights.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, CorruptFileError, DataError
from ..io import atomic_path
from ..loading import check_weights, first_line, load_config, load_model, read_json_object

PEFT_MISSING = "LoRA needs PEFT, an optional dependency: pip install attnlab[peft]"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def source_directory(path: str | Path) -> Path:
    """The absolute directory of the attnlab model ``path`` names; a one-line ``ConfigError`` for anything else."""
    from ..models.registry import FAMILIES

    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(f"init_from: {path} is not a directory (pass a run, an `attnlab export` folder or an "
                          "attnlab model directory)")
    config = directory / "config.json"
    if not config.is_file():
        raise ConfigError(f"init_from: {path} holds no model (no config.json); a LoRA run keeps one only with merge")
    model_type = read_json_object(config, "pass an intact model directory").get("model_type")
    if model_type not in {family.config_class.model_type for family in FAMILIES.values()}:
        raise ConfigError(f"init_from: {path} holds a {model_type!r} model, not an attnlab one")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"init_from: {path} has no tokenizer saved beside the model")
    return directory.resolve()


def load_source_model(path: str | Path, overrides: dict[str, Any]) -> nn.Module:
    """The source's model in float32 (the trainer's master weights), with config ``overrides`` such as dropout."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    directory = source_directory(path)
    config = load_config(directory)
    check_weights(directory, config)  # damaged or mismatched weights are named before any override
    _override(config, overrides)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a mismatch becomes the one line below, not transformers' loading report
    try:
        return AutoModelForCausalLM.from_pretrained(directory, config=config, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:
        if overrides:
            raise ConfigError(f"init_from: the weights of {path} do not fit its config with {_listed(overrides)}; "
                              "only options that keep the weights' shapes (e.g. dropout) can change") from None
        raise ConfigError(f"init_from: cannot load {path}: {str(exc).strip().splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _listed(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in overrides.items())


def _override(config, overrides: dict[str, Any]) -> None:
    """Set config fields in place and check the result; shapes must stay the source's for its weights to load."""
    unknown = [name for name in overrides if not hasattr(config, name)]
    if unknown:
        raise ConfigError(f"unknown {config.model_type} config option(s): {', '.join(sorted(unknown))}")
    for name, value in overrides.items():
        setattr(config, name, value)
    config.check()


def require_peft() -> None:
    """Fail in one line, before any work, when PEFT is not installed."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError(PEFT_MISSING) from None


def lora_targets(spec: str) -> str | list[str]:
    """``all-linear`` as PEFT reads it, else the comma-separated module names."""
    if spec == "all-linear":
        return spec
    return [name.strip() for name in spec.split(",") if name.strip()]


def apply_lora(model: nn.Module, r: int, alpha: float | None, dropout: float, targets: str) -> nn.Module:
    """``model`` with PEFT LoRA adapters (scale alpha/r, alpha defaults to r); only the adapters train."""
    require_peft()
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha or r, lora_dropout=dropout, target_modules=lora_targets(targets),
                        task_type="CAUSAL_LM")
    try:
        with quiet_peft():
            return get_peft_model(model, config)
    except ValueError as exc:  # e.g. no module matches the targets
        raise ConfigError(f"lora_targets {targets!r}: {str(exc).strip().splitlines()[0]}") from None


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


class AdapterWeights:
    """The LoRA weights of a PEFT model as a checkpoint part: PEFT's own adapter state dict."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, state)
        if result.unexpected_keys:
            raise RuntimeError(f"checkpoint adapter does not match the model: unexpected {result.unexpected_keys}")


class BaseFingerprint:
    """A checkpoint part holding the float64 sum of every frozen tensor, taken when the run starts: restoring it
    on other base weights (the source trained further, or another one) is an error, not a silently different run."""

    def __init__(self, model: nn.Module, source: str):
        self.source = source
        frozen = [p for p in model.parameters() if not p.requires_grad]
        self.sums = torch.stack([p.detach().to("cpu", torch.float64).sum() for p in frozen])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        saved = state["sums"]
        if saved.shape != self.sums.shape or not torch.allclose(saved, self.sums, rtol=1e-9, atol=1e-12):
            raise ConfigError(f"init_from {self.source} is not the model this LoRA run started from: its weights "
                              "changed, so the saved adapter cannot resume on it")


def save_adapter(model: nn.Module, directory: Path) -> None:
    """The adapter in PEFT format (``adapter_config.json``, ``adapter_model.safetensors``), each file replaced
    atomically, so a kill while saving leaves the previous adapter whole."""
    staging = directory.parent / f".{directory.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    for item in staging.iterdir():
        with atomic_path(directory / item.name) as tmp:
            shutil.copyfile(item, tmp)
    shutil.rmtree(staging, ignore_errors=True)


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain attnlab model with the adapters merged into its weights; the training model is left as it is
    (merging in place and unmerging would round the base weights and break exact resume)."""
    return copy.deepcopy(model).merge_and_unload()


def load_adapter_run(adapter_dir: Path) -> nn.Module:
    """The model of a LoRA run saved without merging: its base (named in ``adapter_config.json``) with the
    adapter merged in."""
    try:
        from peft import PeftModel
    except ImportError:
        raise DataError(f"{adapter_dir} is a LoRA adapter; loading it needs PEFT: pip install attnlab[peft]") from None
    adapter_config = read_json_object(adapter_dir / "adapter_config.json", "train the LoRA run again")
    base_path = adapter_config.get("base_model_name_or_path")
    if not isinstance(base_path, str) or not (Path(base_path) / "config.json").is_file():
        raise DataError(f"the base model of the adapter {adapter_dir} is gone: {base_path}")
    base = load_model(base_path)
    try:
        with quiet_peft():
            return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    except Exception as exc:  # noqa: BLE001 - damaged adapter weights, or an adapter of another base
        raise CorruptFileError(adapter_dir, f"the LoRA adapter cannot be applied ({first_line(exc)})",
                               "train the LoRA run again, or resume it to write the adapter anew") from None


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Without the deprecation warning PEFT's wrapper triggers in transformers (it reads
    ``is_gradient_checkpointing``): it concerns neither the user nor attnlab."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield
