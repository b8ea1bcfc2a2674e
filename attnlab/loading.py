"""Reading saved models, tokenizers and run files, checked before anything trusts them.

Every command that reads what attnlab (or ``save_pretrained``) wrote — ``eval``, ``generate``, ``info``,
``viz``, ``export``, ``train --resume`` and ``--init-from`` — and ``attnlab.load`` / ``attnlab.load_tokenizer``
read through here. So a damaged file is reported the same way everywhere: one line with the file, what is
wrong with it and what to do (``CorruptFileError``), never a traceback from inside json, safetensors or
transformers. The checks are cheap: JSON is parsed once, weights are checked from the safetensors header
(names, shapes, the file covering every tensor) against a model built on the meta device, without reading
a single weight.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any

import torch

from .errors import CorruptFileError, DataError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# what transformers itself writes into (or reads from) any config.json, beside a model's own fields
TRANSFORMERS_KEYS = frozenset({"architectures", "auto_map", "dtype", "torch_dtype", "transformers_version",
                               "model_type", "id2label", "label2id", "problem_type", "is_encoder_decoder",
                               "output_attentions", "output_hidden_states", "return_dict",
                               "chunk_size_feed_forward", "tokenizer_class", "task_specific_params"})


# ------------------------------------------------------------------------------------------ plain files
def read_json(path: str | Path, fix: str = "") -> Any:
    """The JSON value in ``path``; ``CorruptFileError`` when it is missing, unreadable, empty, not text or not
    JSON (the message carries ``fix``, the advice for this file)."""
    path = Path(path)
    data = _read_bytes(path, fix)
    if not data.strip():
        raise CorruptFileError(path, f"empty ({len(data)} bytes)", fix)
    try:
        text = data.decode("utf-8")
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise CorruptFileError(path, f"not text (byte {exc.start} is not UTF-8): damaged, or not a JSON file",
                               fix) from None
    except json.JSONDecodeError as exc:
        ends_early = exc.pos >= len(text.rstrip())
        what = "it ends early, truncated" if ends_early else exc.msg
        raise CorruptFileError(path, f"not valid JSON ({what} at line {exc.lineno}, column {exc.colno})",
                               fix) from None


def read_json_object(path: str | Path, fix: str = "") -> dict[str, Any]:
    """``read_json`` for files that hold one JSON object (every config and state file attnlab writes)."""
    value = read_json(path, fix)
    if not isinstance(value, dict):
        raise CorruptFileError(path, f"holds a JSON {type(value).__name__}, not an object", fix)
    return value


def _read_bytes(path: Path, fix: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CorruptFileError(path, "missing", fix) from None
    except IsADirectoryError:
        raise CorruptFileError(path, "a directory, not a file", fix) from None
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror or exc})"
        raise CorruptFileError(path, problem, fix or "check its permissions") from None


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as ``Type: first line``, for messages that must stay on one line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit] if lines else ''}".rstrip(": ")


# ------------------------------------------------------------------------------------------ directories
def model_directory(path: str | Path) -> Path:
    """``path`` as a directory that holds a saved model (its ``config.json``); ``DataError`` otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} is not a saved model: it does not exist (pass a run directory)")
    if not path.is_dir():
        raise DataError(f"{path} is not a saved model: it is a file (pass a run directory)")
    if not (path / CONFIG).exists():
        raise DataError(f"{path} is not a saved model: no config.json there (pass a run directory)")
    return path


def restore_hint(directory: Path, name: str) -> str:
    """What to do about a damaged ``name`` in a model directory: copy it from the run's newest checkpoint that
    has it (checkpoints carry the weights and config the run root was exported from), else save it again."""
    for step_dir in checkpoint_dirs(directory):
        if (step_dir / name).is_file():
            return f"the run's checkpoint has an intact copy: cp {step_dir / name} {directory / name}"
    return "save the model again (save_pretrained), or copy the directory again from where it came from"


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """A run's published checkpoint directories, newest first (staging and set-aside ones excluded)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    steps = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(steps, key=lambda p: int(p.name[5:]), reverse=True)


# ------------------------------------------------------------------------------------------ configs
def load_config(path: str | Path, *, causal_only: bool = True):
    """The config of the model saved in ``path``, checked: valid JSON, an attnlab ``model_type`` (a causal LM
    family, or with ``causal_only=False`` any model kind), no unknown fields, values the model accepts."""
    from transformers import AutoConfig

    directory = model_directory(path)
    file = directory / CONFIG
    fix = restore_hint(directory, CONFIG)
    values = read_json_object(file, fix)
    kind = model_kind_of_values(file, values, causal_only)
    _check_fields(file, values, kind)
    try:
        return AutoConfig.from_pretrained(directory)
    except Exception as exc:  # noqa: BLE001 - whatever the config class refuses is the file's problem
        raise CorruptFileError(file, f"does not describe a valid {kind.name} model ({first_line(exc)})", fix) from None


def known_model_types(causal_only: bool = True) -> dict[str, Any]:
    """model_type → family (or, without ``causal_only``, any model kind) of every registered attnlab model."""
    from .models.registry import FAMILIES, MODEL_KINDS

    kinds = list(FAMILIES.values()) + ([] if causal_only else list(MODEL_KINDS.values()))
    return {kind.config_class.model_type: kind for kind in kinds}


def model_kind_of_values(file: Path, values: dict[str, Any], causal_only: bool = True):
    """The family (or model kind) a config's ``model_type`` names; a clear error for any other."""
    model_type = values.get("model_type")
    known = known_model_types(causal_only)
    if model_type in known:
        return known[model_type]
    others = known_model_types(causal_only=False)
    if model_type in others:
        raise CorruptFileError(file, f"a {others[model_type].name} model ({model_type}) is not a causal language "
                                     "model", "`attnlab info` describes it; load it with its own Auto class")
    problem = "no model_type" if model_type is None else f"unknown model_type {model_type!r}"
    raise CorruptFileError(file, f"{problem}: not an attnlab model (known: {', '.join(sorted(known))})",
                           "attnlab reads the models it trains, converts or exports; load other models with "
                           "transformers directly")


def _check_fields(file: Path, values: dict[str, Any], kind) -> None:
    """Unknown fields are refused: a misspelt option would otherwise be dropped silently and its default used."""
    allowed = config_fields(kind.config_class)
    unknown = sorted(k for k in values if k not in allowed and not k.startswith("_"))
    if not unknown:
        return
    described = ", ".join(_with_suggestion(name, allowed) for name in unknown)
    raise CorruptFileError(file, f"unknown field{'s' if len(unknown) > 1 else ''} for a {kind.name} config: "
                                 f"{described}", f"correct or remove {'them' if len(unknown) > 1 else 'it'} "
                                 f"(`attnlab models --options {kind.name}` lists the fields)")


def config_fields(config_class: type) -> set[str]:
    """Every key a saved config of ``config_class`` may hold."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return (names | set(config_class.attribute_map) | set(getattr(config_class, "keyword_options", ()))
            | TRANSFORMERS_KEYS)


def _with_suggestion(name: str, allowed: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.75)
    return f"{name} (did you mean {close[0]}?)" if close else name


# ------------------------------------------------------------------------------------------ weights
def check_weights(path: str | Path, config, kind=None) -> None:
    """The saved weights fit ``config``: every safetensors file readable and complete, and the tensor names
    and shapes those of the model the config builds (tied weights may be stored once). Reads headers only."""
    directory = Path(path)
    kind = kind or known_model_types(causal_only=False)[config.model_type]
    fix = restore_hint(directory, WEIGHTS)
    stored = stored_tensors(directory, fix)
    if stored is None:
        return  # weights in another format (pytorch_model.bin): transformers checks them as it loads
    problems = weight_mismatches(*expected_tensors(kind.model_class, config), stored)
    if problems:
        lacking = _defaulted_fields(directory, kind)
        hint = f" (config.json lacks {', '.join(lacking)}: their defaults may not be the model's)" if lacking else ""
        raise CorruptFileError(directory / WEIGHTS, f"the weights do not fit config.json: {problems}{hint}", fix)


def has_weights(directory: str | Path) -> bool:
    """Whether a model directory holds weights (a config alone describes a model too, e.g. for ``info``)."""
    names = (WEIGHTS, WEIGHTS_INDEX, "pytorch_model.bin", "pytorch_model.bin.index.json")
    return any((Path(directory) / name).exists() for name in names)


def stored_tensors(directory: Path, fix: str = "") -> dict[str, tuple[int, ...]] | None:
    """name → shape of every tensor in the directory's safetensors weights (one file or an index of shards);
    None when the weights are only in another format; ``CorruptFileError`` when there are none or one is bad."""
    if (directory / WEIGHTS_INDEX).exists():
        index = read_json_object(directory / WEIGHTS_INDEX, fix)
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            raise CorruptFileError(directory / WEIGHTS_INDEX, "lists no weight files", fix)
        stored: dict[str, tuple[int, ...]] = {}
        for shard in shards:
            stored.update(safetensors_header(directory / shard, fix))
        return stored
    if (directory / WEIGHTS).exists():
        return safetensors_header(directory / WEIGHTS, fix)
    if any((directory / name).exists() for name in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        return None
    raise CorruptFileError(directory / WEIGHTS, "missing: the directory holds a config but no weights", fix)


def safetensors_header(file: Path, fix: str = "") -> dict[str, tuple[int, ...]]:
    """name → shape from a safetensors header; safetensors itself checks that the file covers every tensor."""
    from safetensors import safe_open

    size = _file_size(file, fix)
    if size == 0:
        raise CorruptFileError(file, "empty (0 bytes)", fix)
    try:
        with safe_open(str(file), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends: the file is not what it claims
        raise CorruptFileError(file, _safetensors_problem(str(exc), size), fix) from None


def _file_size(file: Path, fix: str) -> int:
    try:
        return file.stat().st_size
    except FileNotFoundError:
        raise CorruptFileError(file, "missing", fix) from None
    except OSError as exc:
        raise CorruptFileError(file, f"cannot be read ({exc.strerror or exc})", fix) from None


def _safetensors_problem(message: str, size: int) -> str:
    """safetensors' error in words a user can act on."""
    detail = message.strip().splitlines()[0] if message.strip() else "unreadable"
    if "not fully covered" in detail:
        return f"truncated: the header describes more tensor data than the file's {size:,} bytes"
    if "header too small" in detail or "header too large" in detail:
        return f"not a safetensors file, or damaged at its start ({size:,} bytes; {detail.split(': ')[-1]})"
    return f"not a readable safetensors file ({detail})"


def expected_tensors(model_class: type, config) -> tuple[dict[str, tuple[int, ...]], list[tuple[str, ...]]]:
    """name → shape of the state dict ``config`` builds (on the meta device: no memory, no initialisation), and
    the groups of names that share one tensor (tied embeddings: a file stores such a group once)."""
    with torch.device("meta"):
        model = model_class(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}, _tied_groups(model)


def _tied_groups(model: torch.nn.Module) -> list[tuple[str, ...]]:
    """Names that share one tensor, e.g. the token embedding and the LM head."""
    groups: dict[int, list[str]] = {}
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, tensor in named:
        groups.setdefault(id(tensor), []).append(name)
    return [tuple(g) for g in groups.values() if len(g) > 1]


def weight_mismatches(expected: dict[str, tuple[int, ...]], tied: list[tuple[str, ...]],
                      stored: dict[str, tuple[int, ...]]) -> str:
    """What differs between the expected and the stored tensors, in a few words ("" when they agree)."""
    optional = {name for group in tied if any(n in stored for n in group) for name in group}
    missing = sorted(n for n in expected if n not in stored and n not in optional)
    unexpected = sorted(n for n in stored if n not in expected)
    reshaped = sorted(n for n in stored if n in expected and tuple(stored[n]) != tuple(expected[n]))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
    if reshaped:
        name = reshaped[0]
        parts.append(f"{len(reshaped)} of another shape ({name}: {list(stored[name])} stored, "
                     f"{list(expected[name])} expected)")
    return "; ".join(parts)


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", …" if len(names) > n else "")


def _defaulted_fields(directory: Path, kind) -> list[str]:
    """The config options missing from config.json (so taken from the class defaults)."""
    from .models.config import declared_options

    try:
        values = read_json_object(directory / CONFIG)
    except CorruptFileError:
        return []
    return [name for name in declared_options(kind.config_class) if name not in values][:5]


# ------------------------------------------------------------------------------------------ models
def load_model(path: str | Path, *, device: str | None = None):
    """The causal LM saved in ``path`` (a run or any HF directory of an attnlab model), checked, in eval mode;
    a LoRA run kept as an adapter loads as its base with the adapter merged in."""
    path = Path(path)
    if (path / "adapter" / "adapter_config.json").is_file() and not (path / CONFIG).exists():
        model = _load_adapter_run(path / "adapter")
    else:
        model = _load_checked(path)
    if device is not None:
        model = model.to(device)
    return model.eval()


def _load_checked(path: Path):
    """Config and weights checked, then ``from_pretrained``; anything it still refuses is one line too."""
    from transformers import AutoModelForCausalLM

    config = load_config(path)
    check_weights(path, config)
    try:
        return AutoModelForCausalLM.from_pretrained(path, config=config)
    except Exception as exc:  # noqa: BLE001 - the checks above passed, so this is the directory's content
        problem = f"the model cannot be loaded ({first_line(exc)})"
        raise CorruptFileError(path, problem, restore_hint(path, WEIGHTS)) from None


def _load_adapter_run(adapter_dir: Path):
    from .training.finetune import load_adapter_run

    read_json_object(adapter_dir / "adapter_config.json", "train the LoRA run again, or restore the file")
    return load_adapter_run(adapter_dir)


def check_model_files(path: str | Path, *, causal_only: bool = True):
    """Everything a model directory holds, checked without loading a weight: config, weights header and
    tokenizer. For commands that open a model later (``attnlab viz`` at start-up). Returns the config."""
    directory = Path(path)
    if (directory / "adapter" / "adapter_config.json").is_file() and not (directory / CONFIG).exists():
        read_json_object(directory / "adapter" / "adapter_config.json", "train the LoRA run again")
        load_tokenizer(directory)
        return None
    config = load_config(directory, causal_only=causal_only)
    check_weights(directory, config)
    if any((directory / name).exists() for name in TOKENIZER_FILES):
        load_tokenizer(directory)
    return config


# ------------------------------------------------------------------------------------------ tokenizers
def load_tokenizer(path: str | Path):
    """The tokenizer saved in ``path``, checked: its JSON files parse, transformers can build it, and it has no
    more tokens than the model beside it (a tokenizer of another model would index past its embeddings)."""
    from transformers import AutoTokenizer

    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory (pass a run directory or a saved model directory)")
    fix = _tokenizer_hint(directory)
    if not any((directory / name).exists() for name in TOKENIZER_FILES):
        raise CorruptFileError(directory / "tokenizer.json", "missing: no tokenizer saved in this directory", fix)
    for name in TOKENIZER_JSON_FILES:
        if (directory / name).exists():
            read_json_object(directory / name, fix)
    _check_tokenizer_json(directory / "tokenizer.json", fix)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, **_config_if_damaged(directory))
    except Exception as exc:  # noqa: BLE001 - the files parse, so what transformers refuses is their content
        raise CorruptFileError(directory / "tokenizer.json", f"cannot be read as a tokenizer ({first_line(exc)})",
                               fix) from None
    _check_fits_model(directory, tokenizer, fix)
    return tokenizer


def _config_if_damaged(directory: Path) -> dict[str, Any]:
    """A stand-in model config for ``AutoTokenizer`` when the directory's own is damaged: the tokenizer files
    alone name the tokenizer class, and a damaged config is reported where the model is loaded."""
    from transformers import PreTrainedConfig

    try:
        if (directory / CONFIG).exists():
            read_json_object(directory / CONFIG)
        return {}
    except CorruptFileError:
        return {"config": PreTrainedConfig()}


def _tokenizer_hint(directory: Path) -> str:
    return ("save the tokenizer again (tokenizer.save_pretrained), or copy it from the data's tokenizer; a run "
            f"trained with --tokenizer byte gets one from attnlab.data.build_tokenizer('byte').save_pretrained"
            f"('{directory}')")


def _check_tokenizer_json(file: Path, fix: str) -> None:
    if not file.exists():
        return
    value = read_json_object(file, fix)
    if not isinstance(value.get("model"), dict):
        raise CorruptFileError(file, "not a tokenizers file (no 'model' section)", fix)


def _check_fits_model(directory: Path, tokenizer, fix: str) -> None:
    try:
        vocab_size = read_json_object(directory / CONFIG).get("vocab_size")
    except CorruptFileError:
        return  # no model here, or its config is reported where the model is loaded
    special = sum(1 for token in tokenizer.added_tokens_decoder.values() if token.special)
    regular = len(tokenizer) - special  # text encodes to these; a special id past the model is never produced
    if isinstance(vocab_size, int) and regular > vocab_size:
        raise CorruptFileError(directory / "tokenizer.json", f"has {regular:,} text tokens, more than the model's "
                               f"vocab_size {vocab_size:,}: it belongs to another model", fix)


# ------------------------------------------------------------------------------------------ run files
def read_run_file(run: str | Path, name: str) -> dict[str, Any]:
    """A JSON file of a run directory (``train_config.json``, ``run_info.json``), checked."""
    return read_json_object(Path(run) / name, f"restore {name}, or start a new run with another --out-dir")
