"""Resumable training checkpoints that verify themselves, written atomically, loaded without unpickling objects.

A checkpoint is a set of named stateful parts (anything with ``state_dict``/``load_state_dict``), one file
each. Layout under ``<run>/checkpoints/``::

    step-000300/model.safetensors   the part "model": weights (safetensors)
    step-000300/optimizer.pt        the part "optimizer" (tensors and numbers only; loaded with weights_only=True)
    step-000300/memories.pt         the part "memories" of a Transformer-XL segment stream, when there is one
    step-000300/adapter.pt          a LoRA run's part "adapter" (PEFT's adapter state) instead of "model", and
    step-000300/base.pt             its part "base": the fingerprint of the frozen base the adapter belongs to
    step-000300/rng.pt              the part "rng": CPU and CUDA generator states
    step-000300/state.json          the trainer's counters: step (the data position), tokens seen, elapsed, best
    step-000300/config.json         the model's config (the run root's copy may be damaged or newer)
    step-000300/manifest.json       size and sha256 of every file above, hashed while it was written
    latest.json                     {"step": 300, "path": "step-000300"}, replaced atomically last

An FSDP run's checkpoints hold the model and optimizer sharded instead (``save_sharded_checkpoint``: a DCP
directory ``dcp/`` and one ``PART.rankR.pt`` per process), with the same manifest, staging and fallback.

A checkpoint directory is complete (staged, then renamed) before ``latest.json`` points at it, so a kill at any
moment leaves the previous checkpoint usable; a write that fails (a full disk) removes what it staged and leaves
the previous checkpoint and ``latest.json`` untouched. A resume verifies the newest checkpoint against its
manifest and falls back to the newest intact one, setting a damaged one aside as ``damaged-step-…`` (never
deleting it). Checkpoints written before manifests existed are verified by reading every file.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pickle
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from ..errors import CorruptFileError, WriteError
from ..io import atomic_path, write_json
from ..loading import checkpoint_dirs, first_line, read_json_object
from ..modelcard import render_model_card, run_metadata

KEEP_LAST = 2
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"


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


# ------------------------------------------------------------------------------------------ writing
class _HashingWriter:
    """A binary file that hashes what goes through it: the manifest costs no second read of the checkpoint."""

    def __init__(self, raw: IO[bytes]):
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += memoryview(data).nbytes
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _write_file(path: Path, fill: Callable[[Any], None]) -> dict[str, Any]:
    """Write ``path`` through ``fill(file)``, synced to disk; return its manifest entry (size and sha256)."""
    with open(path, "wb") as raw:
        out = _HashingWriter(raw)
        fill(out)
        raw.flush()
        os.fsync(raw.fileno())
    return {"size": out.size, "sha256": out.sha256.hexdigest()}


def save_checkpoint(run_dir: Path, parts: dict[str, Any], state: dict[str, Any], config=None) -> Path:
    """Write every part (``model`` as safetensors, the others with ``torch.save``), the trainer state, the model
    ``config`` and the manifest into a staging directory, publish it under its step, then point ``latest.json``
    at it; keep the last two. A failed write (``WriteError``) leaves the previous checkpoint as it was."""
    root = Path(run_dir) / "checkpoints"
    name = f"step-{state['step']:07d}"
    final, staging = root / name, root / f".{name}.partial"
    try:
        _stage(staging, parts, state, config)
        _publish(root, staging, final, state["step"])
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if _pointer_target(root) != final:
            shutil.rmtree(final, ignore_errors=True)
        raise WriteError(_write_failure(root, name, exc)) from exc
    for old in checkpoint_dirs(run_dir)[KEEP_LAST:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _stage(staging: Path, parts: dict[str, Any], state: dict[str, Any], config) -> None:
    """Every file of the checkpoint, and last its manifest, in ``staging``."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = {}
    for part, stateful in parts.items():
        if part == "model":
            files[WEIGHTS] = _write_file(staging / WEIGHTS, _weights_writer(stateful))
        else:
            files[f"{part}.pt"] = _write_file(staging / f"{part}.pt", _torch_writer(stateful.state_dict()))
    files["state.json"] = _write_file(staging / "state.json", _bytes_writer(_json_bytes(state)))
    if config is not None:
        files["config.json"] = _write_file(staging / "config.json", _bytes_writer(config.to_json_string().encode()))
    manifest = {"format": 1, "step": state["step"], "files": files}
    _write_file(staging / MANIFEST, _bytes_writer(_json_bytes(manifest)))


def _publish(root: Path, staging: Path, final: Path, step: int) -> None:
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    write_json(root / "latest.json", {"step": step, "path": final.name})


def _write_failure(root: Path, name: str, exc: OSError) -> str:
    previous = [p.name for p in checkpoint_dirs(root.parent) if p.name != name]
    kept = (f"the previous checkpoint ({previous[0]}) and latest.json are untouched" if previous
            else "no earlier checkpoint exists")
    return (f"cannot write checkpoint {name} in {root} ({exc.strerror or exc}): {kept}; free space (or make "
            "the directory writable) and continue with --resume")


def _weights_writer(model: nn.Module) -> Callable[[Any], None]:
    return _bytes_writer(save_safetensors(_weights(model), metadata={"format": "pt"}))


def _torch_writer(obj: Any) -> Callable[[Any], None]:
    return lambda out: torch.save(obj, out)


def _bytes_writer(data: bytes) -> Callable[[Any], None]:
    return lambda out: out.write(data)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    # Tied weights share storage; safetensors refuses aliases, so store each tensor once (contiguous clone).
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for k in _aliased_keys(model):
        weights.pop(k, None)
    return weights


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


# ------------------------------------------------------------------------------------------ finding
def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint directory, unverified (``intact_checkpoint`` verifies)."""
    found = checkpoint_dirs(run_dir)
    return found[0] if found else None


def _pointer_target(root: Path) -> Path | None:
    try:
        return root / read_json_object(root / "latest.json")["path"]
    except (CorruptFileError, KeyError, TypeError):
        return None


def intact_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> Path | None:
    """The newest checkpoint that passes ``verify_checkpoint``. Newer damaged ones are set aside as
    ``damaged-step-…`` and reported through ``warn``; when none is intact, ``CorruptFileError`` lists why and
    nothing is moved. None when the run has no checkpoint."""
    candidates = checkpoint_dirs(run_dir)
    damaged: list[tuple[Path, str]] = []
    for path in candidates:
        problem = verify_checkpoint(path)
        if problem is None:
            for bad, why in damaged:
                kept = _set_aside(bad)
                warn(f"checkpoint {bad.name} is damaged ({why}): resuming from {path.name} instead; the damaged one "
                     f"is kept as {kept} (delete it when you no longer need it)")
            return path
        damaged.append((path, problem))
    if damaged:
        listed = "; ".join(f"{bad.name}: {why}" for bad, why in damaged)
        raise CorruptFileError(Path(run_dir) / "checkpoints", f"no intact checkpoint to resume from ({listed})",
                               "restore the files, or start afresh with another --out-dir")
    return None


def _set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint out of the way of new ones and of pruning; return its new path."""
    target, n = path.with_name(f"damaged-{path.name}"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"damaged-{path.name}-{n}")
    path.rename(target)
    return target


# ------------------------------------------------------------------------------------------ verifying
def verify_checkpoint(path: Path) -> str | None:
    """What is wrong with a checkpoint directory, in a few words, or None when it is intact: every file of its
    manifest present with its size and sha256; a checkpoint without a manifest (older releases) must read."""
    if not (path / MANIFEST).exists():
        return _read_problem(path)
    try:
        manifest = read_json_object(path / MANIFEST)
        files = manifest["files"]
        entries = [(name, int(e["size"]), str(e["sha256"])) for name, e in files.items()]
    except CorruptFileError as exc:
        return f"{MANIFEST}: {exc.problem}"
    except (KeyError, TypeError, ValueError, AttributeError):
        return f"{MANIFEST}: not a checkpoint manifest"
    for name, size, sha256 in entries:
        problem = _file_problem(path / name, size, sha256)
        if problem:
            return f"{name}: {problem}"
    return None


def _file_problem(file: Path, size: int, sha256: str) -> str | None:
    try:
        actual = file.stat().st_size
        if actual != size:
            return f"{actual:,} bytes, {size:,} expected"
        return None if _sha256(file) == sha256 else "its bytes differ from the checksum written with it"
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"


def _sha256(file: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _read_problem(path: Path) -> str | None:
    """A checkpoint without a manifest is intact when its state and every part file read."""
    try:
        _read_state(path)
        for file in sorted(path.iterdir()):
            if file.suffix == ".pt":
                _read_torch(file)
            elif file.suffix == ".safetensors":
                _read_weights(file)
    except CorruptFileError as exc:
        return f"{Path(exc.path).name}: {exc.problem}"
    return None


# ------------------------------------------------------------------------------------------ loading
def load_checkpoint(path: Path, parts: dict[str, Any]) -> dict[str, Any]:
    """Restore every part in place (tensors go where the part's own state lives); return the trainer state.
    A file that does not read, or a state that does not fit its part, is a ``CorruptFileError`` naming it."""
    for part, stateful in parts.items():
        if part == "model":
            _load_weights(stateful, path / WEIGHTS)
        else:
            _apply(stateful, _load_part(path, part), path / f"{part}.pt")
    return _read_state(path)


def _read_state(path: Path) -> dict[str, Any]:
    state = read_json_object(path / "state.json", "resume from another checkpoint")
    if not isinstance(state.get("step"), int):
        raise CorruptFileError(path / "state.json", "has no step", "resume from another checkpoint")
    return state


def _apply(stateful: Any, state: Any, file: Path) -> None:
    try:
        stateful.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - a state of another shape or kind: the file is not this run's
        raise CorruptFileError(file, f"does not fit this run ({first_line(exc)})", "resume from another "
                               "checkpoint, or check that --out-dir names this run") from None


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except FileNotFoundError:
        raise CorruptFileError(file, "missing", "resume from another checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - SafetensorError: truncated or not safetensors
        raise CorruptFileError(file, f"not readable safetensors ({first_line(exc)})",
                               "resume from another checkpoint") from None


def _read_torch(file: Path) -> Any:
    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CorruptFileError(file, "missing", "resume from another checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, flipped bytes, or objects that are not tensors
        raise CorruptFileError(file, f"cannot be read ({first_line(exc)})", "resume from another checkpoint") from None


def _load_weights(model: nn.Module, path: Path) -> None:
    missing, unexpected = model.load_state_dict(_read_weights(path), strict=False)
    missing = set(missing) - set(_aliased_keys(model))
    if missing or unexpected:
        raise CorruptFileError(path, f"does not match the model: missing {sorted(missing)[:3]}, unexpected "
                                     f"{sorted(unexpected)[:3]}", "check that --out-dir names this run")


def _load_part(path: Path, part: str) -> Any:
    """A part's state, with ``weights_only`` loading; checkpoints of older releases kept a segment stream's
    memories inside ``optimizer.pt`` as {"optimizer", "memories"}."""
    file = path / f"{part}.pt"
    if part in ("optimizer", "memories") and not (path / "memories.pt").is_file():
        bundled = _read_torch(path / "optimizer.pt")
        if isinstance(bundled, dict) and set(bundled) == {"optimizer", "memories"}:
            return bundled[part]
    return _read_torch(file)


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


# ------------------------------------------------------------------------------------------ sharded (FSDP)
# A checkpoint of an FSDP run holds the model and optimizer as a torch.distributed.checkpoint (DCP) directory,
# each process writing its own shards, so nothing is ever gathered on one process; what each process keeps for
# itself (its RNG, its segment streams' memories) is one file per process:
#
#     step-000300/dcp/.metadata, dcp/__0_0.distcp, ...   the part "training": model and optimizer, sharded
#     step-000300/rng.rank0.pt, rng.rank1.pt, ...         each process's generators
#     step-000300/memories.rank0.pt, ...                  each process's Transformer-XL memories, when any
#     step-000300/state.json, config.json, manifest.json  as above; state.json also has the "layout" written
#
# The layout (processes, rows per process, accumulation steps) is what a resume on another number of processes
# needs to hand every process the right rows of the segment-stream memories.
SHARDED = "dcp"
_METADATA_MODULES = {"torch.distributed.checkpoint.metadata"}
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath"),
}


def is_sharded(path: Path) -> bool:
    """Whether a checkpoint directory was written by an FSDP run."""
    return (Path(path) / SHARDED).is_dir()


def rank_file(part: str, rank: int) -> str:
    return f"{part}.rank{rank}.pt"


class ShardedTraining:
    """An FSDP run's model and optimizer as one DCP ``Stateful``: their sharded state dicts (DTensors, keyed by
    parameter names, which ``get_state_dict`` gives the optimizer too), saved shard by shard and resharded on
    load to whatever number of processes loads them."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optimizer_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])


def save_sharded_checkpoint(run_dir: Path, training: ShardedTraining, rank_parts: dict[str, Any],
                            state: dict[str, Any], config, info) -> Path:
    """Every process writes its shards and its own parts into one staging directory; the main process adds the
    state, config and a manifest of every file (each process hashes its share of the shard files), publishes
    it and points ``latest.json`` at it. Collective: every process calls it. A failure on any process
    removes what was staged and raises the same ``WriteError`` everywhere; the previous checkpoint stands."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from .distributed import agree, barrier

    root = Path(run_dir) / "checkpoints"
    name = f"step-{state['step']:07d}"
    final, staging = root / name, root / f".{name}.partial"

    def everyone(step: Callable[[], Any]) -> list[Any]:
        """Run ``step`` here; every process's result, or the first failure raised as a WriteError."""
        try:
            outcome = (None, step())
        except (OSError, CheckpointException) as exc:  # CheckpointException is a BaseException
            outcome = (exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc), None)
        outcomes = agree(info, outcome)
        failures = [why for why, _ in outcomes if why is not None]
        if failures:
            if info.is_main:
                shutil.rmtree(staging, ignore_errors=True)
                if _pointer_target(root) != final:
                    shutil.rmtree(final, ignore_errors=True)
            raise WriteError(_write_failure(root, name, OSError(failures[0])))
        return [result for _, result in outcomes]

    def stage_directory() -> None:
        if info.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)

    def own_files() -> dict[str, Any]:
        files = {rank_file(part, info.rank): _write_file(staging / rank_file(part, info.rank),
                                                          _torch_writer(stateful.state_dict()))
                 for part, stateful in rank_parts.items()}
        shards = sorted(p.relative_to(staging).as_posix() for p in (staging / SHARDED).rglob("*") if p.is_file())
        for relative in shards[info.rank::info.world_size]:
            file = staging / relative
            files[relative] = {"size": file.stat().st_size, "sha256": _sha256(file)}
        return files

    everyone(stage_directory)
    everyone(lambda: dcp.save({"training": training}, checkpoint_id=staging / SHARDED))
    files = {name: entry for share in everyone(own_files) for name, entry in share.items()}

    def publish() -> None:
        if info.is_main:
            files["state.json"] = _write_file(staging / "state.json", _bytes_writer(_json_bytes(state)))
            if config is not None:
                files["config.json"] = _write_file(staging / "config.json",
                                                   _bytes_writer(config.to_json_string().encode()))
            manifest = {"format": 1, "step": state["step"], "files": dict(sorted(files.items()))}
            _write_file(staging / MANIFEST, _bytes_writer(_json_bytes(manifest)))
            _publish(root, staging, final, state["step"])

    everyone(publish)
    if info.is_main:
        for old in checkpoint_dirs(run_dir)[KEEP_LAST:]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(info)
    return final


def load_sharded_checkpoint(path: Path, training: ShardedTraining) -> dict[str, Any]:
    """Load the model and optimizer shards this process needs, whatever the number of processes that wrote
    them (DCP reshards); return the trainer state (with the ``layout`` it was written with). Collective.

    DCP keeps its index (``.metadata``) and the optimizer's numbers as pickles; both are read allowing only
    the types a checkpoint holds, like ``torch.load(weights_only=True)``, never arbitrary objects."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    directory = Path(path) / SHARDED
    try:
        dcp.load({"training": training}, **_safe_reading(directory))
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - any failure: not this run's shards
        raise CorruptFileError(directory, f"does not load into this run ({_checkpoint_problem(exc)})",
                               "resume from another checkpoint, or check that --out-dir names this run") from None
    return _read_state(path)


def read_rank_part(path: Path, part: str, rank: int) -> Any:
    """What process ``rank`` saved of ``part`` (weights_only)."""
    return _read_torch(Path(path) / rank_file(part, rank))


def load_sharded_model(path: Path) -> nn.Module:
    """The plain model of a sharded checkpoint, read on one process without a process group: its config
    builds the model on the meta device, then the model's tensors (not the optimizer's) are read into it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from ..loading import load_config
    from ..models.meta_init import assemble_model
    from ..models.registry import family_of_config

    config = load_config(path)
    model_class = family_of_config(config).model_class
    with torch.device("meta"):
        shapes = model_class(config).state_dict()
    weights = {key: torch.empty_like(t, device="cpu") for key, t in shapes.items()}
    directory = Path(path) / SHARDED
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({"training": {"model": weights}}, **_safe_reading(directory), no_dist=True)
    except (Exception, CheckpointException) as exc:  # noqa: BLE001
        raise CorruptFileError(directory, f"cannot be read ({_checkpoint_problem(exc)})",
                               "export from another checkpoint") from None
    return assemble_model(model_class, config, weights)


def _checkpoint_problem(exc: BaseException) -> str:
    """One line for a DCP failure (a CheckpointException lists every process's exception)."""
    failures = getattr(exc, "failures", None)
    if failures:
        inner = next(iter(failures.values()))
        inner = inner[0] if isinstance(inner, tuple) else inner
        return first_line(inner)
    return first_line(exc)


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's ``.metadata`` is a pickle of its own dataclasses; anything else in it is refused."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = (module in _METADATA_MODULES or (module, name) in _METADATA_GLOBALS
                   or (module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                                     torch.memory_format))))
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not a type a checkpoint index holds")
        return super().find_class(module, name)


@functools.cache
def _safe_reader_class() -> type:
    """DCP's file reader with its index read by ``_MetadataUnpickler`` (built on first use: DCP takes a second to
    import, and only FSDP runs need it)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            with open(Path(self.path) / ".metadata", "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader


@functools.cache
def _safe_planner_class() -> type:
    """DCP's load planner, with the values that are not tensors (the optimizer's hyperparameters) checked by a
    ``weights_only`` load before DCP's own load takes them."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            torch.load(value, weights_only=True)  # refuses anything but tensors and plain values
            value.seek(0)
            super().load_bytes(read_item, value)

    return SafeLoadPlanner


def _safe_reading(directory: Path) -> dict[str, Any]:
    """The storage reader and planner ``dcp.load`` reads a checkpoint with."""
    return {"storage_reader": _safe_reader_class()(directory), "planner": _safe_planner_class()()}
