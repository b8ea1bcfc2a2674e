"""``attnlab train``: one loop for every family, on one CPU or many GPUs (torchrun + DDP or FSDP).

Determinism is by construction: the batch of (step, micro-step) is a pure function of the seed, the learning
rate is a pure function of the step, and a checkpoint holds the named stateful parts of the run (model,
optimizer, Transformer-XL memories of a segment stream, RNG) and the step, which is the data position. So a
run killed at step k and resumed with ``resume=True`` computes exactly what the uninterrupted run computes.

The loop reads: batch → forward/backward → optimizer (and what it needs between steps, such as SophiaG's
Hessian refresh) → log / validate / checkpoint.

With ``parallel="fsdp"`` (``fsdp.py``) the model's parameters, gradients and optimizer state are sharded over
the processes; its forward is then collective, so every process validates and samples (the same text), its
checkpoints are sharded (each process writes its part, DCP reshards on resume) and the run's HF model is
gathered once, when the run stops.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.nn.parallel import DistributedDataParallel
from transformers.utils import logging as hf_logging

from ..errors import AttnlabError, ConfigError, CorruptFileError, TrainingInterrupted, WriteError
from ..evaluation import autocast_context, evaluate
from ..precision import dtype_name, resolve_dtype
from ..io import write_json
from ..loading import load_config, load_tokenizer, read_run_file
from ..models import build_config, get_family
from ..models.checkpointing import enable_activation_checkpointing
from ..models.registry import family_of_config
from . import distributed, fsdp
from .checkpoint import (
    RNGState,
    ShardedTraining,
    export_model,
    intact_checkpoint,
    is_sharded,
    latest_checkpoint,
    load_checkpoint,
    load_sharded_checkpoint,
    read_rank_part,
    save_checkpoint,
    save_sharded_checkpoint,
)
from .config import TrainConfig, schedule_changes
from .finetune import (
    AdapterWeights,
    BaseFingerprint,
    apply_lora,
    is_peft_model,
    load_source_model,
    merged_copy,
    require_peft,
    save_adapter,
    source_directory,
)
from .optim import build_optimizer, curvature_refresh, lr_at
from .preemption import StopSignals


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens_seen: int
    train_loss: float
    val: dict[str, float] = field(default_factory=dict)
    best_val_bpb: float | None = None
    elapsed_s: float = 0.0
    prompt: str = "\n"  # the opening words of the run's validation text: a prompt in the style of its data


def train(cfg: TrainConfig, console: Console | None = None) -> TrainResult:
    """Run (or resume) a training run described by ``cfg``; returns the final metrics."""
    info = distributed.init_distributed(single_process_group=cfg.parallel == "fsdp")
    try:
        return Trainer(cfg, info, console).fit()
    finally:
        distributed.shutdown(info)


class Trainer:
    def __init__(self, cfg: TrainConfig, info: distributed.DistInfo, console: Console | None = None):
        hf_logging.disable_progress_bar()
        self.cfg, self.info = cfg, info
        self.console = console or Console(stderr=True)
        self.device = distributed.pick_device(cfg.device, info)
        self.fsdp = cfg.parallel == "fsdp"
        if self.fsdp and self.device.type not in ("cpu", "cuda"):
            raise ConfigError(f"parallel fsdp runs on CUDA GPUs or the CPU, not {self.device.type}")
        self.run_dir = cfg.run_dir
        self.signals, self.interrupted_by = StopSignals(), None
        self._check_out_dir()
        self.checkpoint = self._find_checkpoint()
        self._check_checkpoint_kind()
        self._check_schedule()
        self.source = self._source()
        if cfg.lora_r is not None:
            require_peft()
        self.data = self._prepare_data()
        self.init_route: str | None = None  # FSDP: how the sharded weights were made (fsdp.init_route)
        self.model = self._build_model()
        self.base_fingerprint = BaseFingerprint(self.model, cfg.init_from) if is_peft_model(self.model) else None
        self.block_size = cfg.block_size or self.model.config.block_size
        if self.block_size > self.model.config.block_size and self.model.config.pos == "learned":
            raise ConfigError(
                f"block_size {self.block_size} exceeds the model's {self.model.config.block_size} learned positions"
            )
        self.optimizer = build_optimizer(self.model, cfg)
        self.curvature = curvature_refresh(self.optimizer, cfg, info.rank, info.world_size)
        self.accum_steps = self._accumulation_steps()
        self.streams = self._streams()
        self.state: dict[str, Any] = {"step": 0, "tokens_seen": 0, "elapsed_s": 0.0, "best_val_bpb": None}
        self.exported_step: int | None = None  # FSDP: the step of the HF model last gathered to the run root
        if self.checkpoint is not None:
            self.state = self._load_sharded() if self.fsdp else load_checkpoint(self.checkpoint, self._checkpoint_parts())
        else:
            torch.manual_seed(cfg.seed + info.rank)  # dropout streams; weights were seeded identically
        self.step_model = self._wrap_model()

    # ----------------------------------------------------------------------------------------- setup
    def _check_out_dir(self) -> None:
        """The run directory is (or can become) a writable directory: checked before any data is prepared."""
        existing = next(p for p in (self.run_dir, *self.run_dir.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"--out-dir {self.run_dir}: {existing} is a file, not a directory; pick another "
                              "--out-dir")
        if self.info.is_main and self.run_dir.is_dir() and not os.access(self.run_dir, os.W_OK | os.X_OK):
            raise WriteError(f"cannot write to {self.run_dir} (permission denied): make it writable or pick another "
                             "--out-dir")

    def _find_checkpoint(self) -> Path | None:
        """A resume's checkpoint: the newest intact one (damaged newer ones are set aside, with a warning).

        Under torchrun the main process alone verifies (hashing every file once, not once per process) and
        sets damaged checkpoints aside; the others take its answer, or its error."""
        found: Path | Exception | None = None
        if self.info.is_main:
            try:
                found = self._find_checkpoint_here()
            except AttnlabError as exc:
                found = exc
        found = distributed.from_main(self.info, found)
        if isinstance(found, Exception):
            raise found
        return found

    def _find_checkpoint_here(self) -> Path | None:
        found = intact_checkpoint(self.run_dir, self._warn) if self.cfg.resume else latest_checkpoint(self.run_dir)
        if self.cfg.resume and found is None:
            raise ConfigError(f"--resume: no checkpoint in {self.run_dir}")
        if not self.cfg.resume and found is not None:
            raise ConfigError(f"{self.run_dir} already holds a run; pass --resume to continue it or pick --out-dir")
        return found

    def _check_checkpoint_kind(self) -> None:
        """A sharded (FSDP) checkpoint resumes under FSDP only, on any number of processes; a plain one without."""
        if self.checkpoint is None or is_sharded(self.checkpoint) == self.fsdp:
            return
        if self.fsdp:
            raise ConfigError(f"checkpoint {self.checkpoint.name} was written without FSDP; resume it with "
                              "--parallel ddp")
        raise ConfigError(f"checkpoint {self.checkpoint.name} was written by an FSDP run (sharded); resume it with "
                          "--parallel fsdp (any number of processes, one included)")

    def _warn(self, message: str) -> None:
        if self.info.is_main:
            self.console.print(f"[yellow]warning:[/] {escape(message)}")

    def _source(self) -> Path | None:
        """The model fine-tuned from, where this start reads it: a new run, or any LoRA run (its frozen base is
        there); a full fine-tuning run resumes from its own checkpoint alone."""
        cfg = self.cfg
        if not cfg.init_from or (self.checkpoint is not None and cfg.lora_r is None):
            return None
        return source_directory(cfg.init_from)

    def _check_schedule(self) -> None:
        """A resume keeps the run's learning-rate schedule unless ``allow_schedule_change`` confirms a new one."""
        if self.checkpoint is None or not (self.run_dir / "train_config.json").exists():
            return
        changes = ", ".join(schedule_changes(read_run_file(self.run_dir, "train_config.json"), self.cfg))
        if not changes:
            return
        if not self.cfg.allow_schedule_change:
            raise ConfigError(f"--resume with another schedule than the run's ({changes}); pass "
                              "--allow-schedule-change to resume with the new one")
        if self.info.is_main:
            self.console.print(f"[yellow]warning:[/] resuming with a changed schedule ({escape(changes)}): the "
                               "learning rate follows the new one from the checkpoint's step on")

    def _prepare_data(self):
        from ..data import prepare_data

        cfg = self.cfg
        # a source's or warm-started embeddings only mean something with their own ids
        tokenizer = str(self.source) if self.source is not None else cfg.warm_start or cfg.tokenizer
        if self.checkpoint is not None and (self.run_dir / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(self.run_dir)  # the run's own tokenizer, exactly as trained (checked)
        kwargs = dict(
            vocab_size=cfg.vocab_size,
            val_fraction=cfg.val_fraction,
            text_field=cfg.text_field,
            hf_config=cfg.hf_config,
            hf_split=cfg.hf_split,
            max_docs=cfg.max_docs,
        )
        # The main process tokenizes and fills the cache; the others then read it.
        if self.info.is_main:
            data = prepare_data(cfg.data, tokenizer, progress=cfg.progress, **kwargs)
        distributed.barrier(self.info)
        if not self.info.is_main:
            data = prepare_data(cfg.data, tokenizer, progress=False, **kwargs)
        return data

    def _build_model(self):
        """The model to train: ``_base_model``, with LoRA adapters when the run trains those; under FSDP sharded."""
        cfg, vocab = self.cfg, len(self.data.tokenizer)
        if self.fsdp:
            return self._sharded_model()
        model = self._base_model()
        if model.config.vocab_size < vocab:
            raise ConfigError(f"vocab_size {model.config.vocab_size} is smaller than the tokenizer's {vocab} tokens")
        enable_activation_checkpointing(model, cfg.activation_checkpointing)
        if cfg.lora_r is not None:
            torch.manual_seed(cfg.seed)  # identical adapters on every rank
            model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        return model.to(self.device)

    def _base_model(self):
        """The source's weights (fine-tuning; a LoRA resume too, its base is frozen), else the run's or a new
        config's model with fresh weights (a resume then loads its checkpoint into them)."""
        cfg = self.cfg
        if self.source is not None:
            return load_source_model(self.source, cfg.model_overrides)
        model_class, config = self._model_class_and_config()
        torch.manual_seed(self.cfg.seed)  # identical initial weights on every rank
        model = model_class(config)
        if cfg.warm_start and self.checkpoint is None:
            from ..models.warm_start import warm_start_embeddings

            warm_start_embeddings(model, cfg.warm_start)
        return model

    def _model_class_and_config(self):
        """The class and config of the model trained from scratch or resumed (not a fine-tuning source's)."""
        cfg, tok = self.cfg, self.data.tokenizer
        if self.checkpoint is not None:
            config = self._run_config()
            return family_of_config(config).model_class, config
        overrides = dict(cfg.model_overrides)
        overrides.setdefault("vocab_size", len(tok))
        if cfg.block_size is not None:
            overrides.setdefault("block_size", cfg.block_size)
        overrides.setdefault("eos_token_id", tok.eos_token_id)
        overrides.setdefault("pad_token_id", tok.pad_token_id)
        return get_family(cfg.model).model_class, build_config(cfg.model, cfg.preset, **overrides)

    def _sharded_model(self):
        """The FSDP model: one unit per block, then the root. A new run's weights are seeded as one process's
        (then sharded) or drawn shard by shard on the meta route (``fsdp.init_route``); a resume builds on the
        meta device, materialises the shards empty and loads the checkpoint into them."""
        cfg, vocab = self.cfg, len(self.data.tokenizer)
        resuming = self.checkpoint is not None
        meta_model = None
        if self.source is None:
            model_class, config = self._model_class_and_config()
            with torch.device("meta"):
                meta_model = model_class(config)
        parameters = sum(p.numel() for p in meta_model.parameters()) if meta_model is not None else 0
        route = fsdp.init_route(cfg.fsdp_init, parameters, resuming=resuming,
                                brings_weights=bool(self.source or cfg.warm_start))
        model = self._base_model() if route == "seeded" else meta_model
        if model.config.vocab_size < vocab:
            raise ConfigError(f"vocab_size {model.config.vocab_size} is smaller than the tokenizer's {vocab} tokens")
        enable_activation_checkpointing(model, cfg.activation_checkpointing)
        fsdp.shard(model, self.device, mixed_precision=cfg.fsdp_mixed_precision, cpu_offload=cfg.fsdp_cpu_offload)
        if route == "meta":
            from ..models.meta_init import materialize_sharded

            where = torch.device("cpu") if cfg.fsdp_cpu_offload else self.device
            materialize_sharded(model, where, None if resuming else cfg.seed)
        self.init_route = route
        return model

    def _run_config(self):
        """The config a resume rebuilds the model from: the checkpoint's own copy (older checkpoints have none:
        then the run root's), checked."""
        if (self.checkpoint / "config.json").is_file():
            return load_config(self.checkpoint)
        return load_config(self.run_dir)

    @property
    def family(self) -> str:
        """The family trained, from the model itself (a fine-tuning run's is its source's, whatever ``model`` says)."""
        return family_of_config(self.model.config).name

    def _streams(self) -> StreamMemories | None:
        """Transformer-XL segment streams: one memory per micro-step (each holds its own rows' streams)."""
        if not self.cfg.segment_stream:
            return None
        config = self.model.config
        if not config.carries_memory:
            raise ConfigError(f"segment_stream needs a model with XL memory (mem_len > 0); {self.family} has none")
        if config.pos == "learned":
            raise ConfigError("segment_stream needs relative positions (pos='rope'): streams outgrow learned ones")
        return StreamMemories([self.model.make_cache() for _ in range(self.accum_steps)], self.device)

    def _rank_parts(self) -> dict[str, Any]:
        """What each process of an FSDP run saves for itself beside the shards: its RNG and its streams' memories."""
        parts: dict[str, Any] = {"rng": RNGState()}
        if self.streams is not None:
            parts["memories"] = self.streams
        return parts

    def _load_sharded(self) -> dict[str, Any]:
        """Resume an FSDP run: shards through DCP (any number of processes), then each process's own parts. Run
        on as many processes as wrote the checkpoint, each takes its own RNG and memories back; on another
        number, the RNG streams restart from (seed, rank, step) and the memories are regrouped by rows."""
        state = load_sharded_checkpoint(self.checkpoint, ShardedTraining(self.model, self.optimizer))
        saved = state.pop("layout", None) or {}
        now = self._layout()
        if saved.get("world_size") == now["world_size"]:
            RNGState().load_state_dict(read_rank_part(self.checkpoint, "rng", self.info.rank))
        else:
            torch.manual_seed(self.cfg.seed + self.info.rank + 1_000_003 * state["step"])
            self._warn(f"checkpoint {self.checkpoint.name} was written by {saved.get('world_size', '?')} "
                       f"process(es), resumed on {now['world_size']}: each process's random stream (dropout) "
                       "restarts from the seed and step")
        if self.streams is not None:
            self._load_memories(saved, now)
        return state

    def _load_memories(self, saved: dict[str, int], now: dict[str, int]) -> None:
        """The segment streams' memories of this process: its own file, or regrouped from every process's when
        the number of processes changed but not the global rows; otherwise they start empty (warned)."""
        if saved == now:
            self.streams.load_state_dict(read_rank_part(self.checkpoint, "memories", self.info.rank))
            return
        if _global_rows(saved) != _global_rows(now):
            self._warn(f"checkpoint {self.checkpoint.name} has {_global_rows(saved)} segment streams per step, this "
                       f"run {_global_rows(now)}: the streams change, so their memories start empty")
            return
        per_rank = [read_rank_part(self.checkpoint, "memories", r) for r in range(saved["world_size"])]
        self.streams.load_state_dict(regroup_memories(per_rank, saved, now, self.info.rank))

    def _layout(self) -> dict[str, int]:
        """How the global batch's rows are spread: what a resume on another number of processes must know."""
        return {"world_size": self.info.world_size, "batch_size": self.cfg.batch_size,
                "accumulation_steps": self.accum_steps}

    def _checkpoint_parts(self) -> dict[str, Any]:
        """The named stateful parts a checkpoint saves and a resume restores, in restore order."""
        parts = {**self._weight_parts(), "optimizer": self.optimizer}
        if self.streams is not None:
            parts["memories"] = self.streams
        return {**parts, "rng": RNGState()}

    def _weight_parts(self) -> dict[str, Any]:
        """The weights a checkpoint holds: the whole model, or a LoRA run's adapter (its frozen base is the
        source's, checked against the fingerprint first)."""
        if self.base_fingerprint is None:
            return {"model": self.model}
        return {"base": self.base_fingerprint, "adapter": AdapterWeights(self.model)}

    def _accumulation_steps(self) -> int:
        per_micro = self.cfg.batch_size * self.block_size * self.info.world_size
        if self.cfg.tokens_per_step is None:
            return 1
        return max(1, round(self.cfg.tokens_per_step / per_micro))

    def _wrap_model(self):
        model = self.model
        if self.info.enabled and not self.fsdp:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        if self.cfg.compile:
            model = torch.compile(model)
        return model

    @property
    def tokens_per_step(self) -> int:
        return self.accum_steps * self.cfg.batch_size * self.block_size * self.info.world_size

    # ------------------------------------------------------------------------------------------ loop
    def fit(self) -> TrainResult:
        cfg, main = self.cfg, self.info.is_main
        self._resolve_precision()
        if main:
            self._write_run_files()
            self._announce()
        start_step = self.state["step"]
        started = time.perf_counter() - self.state["elapsed_s"]
        last_loss, val = float("nan"), {}
        progress = self._progress(start_step) if main else contextlib.nullcontext()
        with progress as bar, self._tensorboard() as tb, self.signals.installed():
            task = bar.add_task("train", total=cfg.max_steps, completed=start_step, loss="", tps="") if bar else None
            window_start, window_tokens = time.perf_counter(), 0
            step = start_step
            while step < cfg.max_steps and not self._should_stop(step, started):
                last_loss = self._train_step(step)
                step += 1
                self.state["step"] = step
                self.state["tokens_seen"] += self.tokens_per_step
                window_tokens += self.tokens_per_step
                if step % cfg.log_interval == 0 or step == cfg.max_steps:
                    now = time.perf_counter()
                    tps = window_tokens / max(now - window_start, 1e-9)
                    window_start, window_tokens = now, 0
                    self._log({"step": step, "loss": last_loss, "lr": lr_at(step - 1, cfg), "tok_per_s": tps}, tb)
                    if bar:
                        bar.update(task, completed=step, loss=f"{last_loss:.4f}", tps=f"{tps:,.0f}")
                if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                    val = self._validate(step, tb, bar)
                if step % cfg.save_every == 0 or step == cfg.max_steps:
                    self.state["elapsed_s"] = time.perf_counter() - started
                    self._save()
            if step > start_step and step % cfg.save_every and step != cfg.max_steps:
                if step % cfg.eval_interval and self.interrupted_by is None:  # a signal's grace time is short
                    val = self._validate(step, tb, bar)
                self.state["elapsed_s"] = time.perf_counter() - started
                self._save()
            if self.fsdp and self.interrupted_by is None and self.exported_step != step:
                self._export_gathered()  # the run stops here: its HF model, gathered once
        self.state["elapsed_s"] = time.perf_counter() - started
        if self.interrupted_by is not None:
            resumable = latest_checkpoint(self.run_dir) is not None
            raise TrainingInterrupted(self.interrupted_by, self.state["step"], self.run_dir, resumable)
        return TrainResult(
            run_dir=self.run_dir,
            step=self.state["step"],
            tokens_seen=self.state["tokens_seen"],
            train_loss=last_loss,
            val=val,
            best_val_bpb=self.state["best_val_bpb"],
            elapsed_s=self.state["elapsed_s"],
            prompt=opening_words(self.data.val, self.data.tokenizer),
        )

    def _should_stop(self, step: int, started: float) -> bool:
        cfg = self.cfg
        if cfg.stop_at_step is not None and step >= cfg.stop_at_step:
            return True
        over = cfg.max_minutes is not None and time.perf_counter() - started > 60 * cfg.max_minutes
        signum = self.signals.received or 0
        if self.info.enabled:  # every rank agrees (on the time, on a signal only some received), or DDP deadlocks
            flags = torch.tensor([float(over), float(signum)], device=self.device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            over, signum = bool(flags[0].item()), int(flags[1].item())
        if signum:
            self.interrupted_by = signum
        return over or bool(signum)

    def _train_step(self, step: int) -> float:
        """One optimizer step on the global batch of ``step``; returns the loss averaged over processes."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, self.cfg)
        batch = self._global_batch(step)
        loss = self._forward_backward(batch)
        self._optimizer_step(step, batch)
        return loss

    def _global_batch(self, step: int) -> dict[str, torch.Tensor]:
        """One global batch per step, whatever the accumulation and world size; each (micro-step, rank) takes
        its own rows. So 2 processes or 2 micro-steps of B rows train exactly like one of 2B."""
        rows = self.cfg.batch_size * self.info.world_size * self.accum_steps
        if self.streams is not None:
            eos = self.data.tokenizer.eos_token_id
            inputs, targets, documents = self.data.train.stream_batch(step, rows, self.block_size, eos)
            return {"input_ids": inputs, "shift_labels": targets, "document_ids": documents}
        inputs, targets = self.data.train.batch(step, rows, self.block_size, self.cfg.seed)
        return {"input_ids": inputs, "shift_labels": targets}

    def _micro_batch(self, batch: dict[str, torch.Tensor], micro: int) -> dict[str, Any]:
        """This process's rows of micro-step ``micro``, on the device, with the stream's memory if any."""
        first = (micro * self.info.world_size + self.info.rank) * self.cfg.batch_size
        rows = slice(first, first + self.cfg.batch_size)
        inputs = {name: t[rows].to(self.device) for name, t in batch.items()}
        if self.streams is None:
            return {**inputs, "use_cache": False}
        return {**inputs, "cache": self.streams.memories[micro], "use_cache": True}

    def _forward_backward(self, batch: dict[str, torch.Tensor]) -> float:
        total = 0.0
        for micro in range(self.accum_steps):
            # FSDP reduce-scatters every micro-step's gradients into the shards (holding whole ones would
            # defeat it); DDP all-reduces only on the last
            sync = micro == self.accum_steps - 1 or not self.info.enabled or self.fsdp
            with contextlib.nullcontext() if sync else self.step_model.no_sync():
                with autocast_context(self.device, self.cfg.dtype):
                    loss = self.step_model(**self._micro_batch(batch, micro)).loss
                (loss / self.accum_steps).backward()
            total += loss.detach()
        mean = total / self.accum_steps
        if self.info.enabled:
            torch.distributed.all_reduce(mean, op=torch.distributed.ReduceOp.AVG)
        return float(mean)

    def _optimizer_step(self, step: int, batch: dict[str, torch.Tensor]) -> None:
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.curvature is not None:
            inputs = self._micro_batch(batch, 0)["input_ids"]
            self.curvature.after_step(step, self._logits, inputs)

    def _logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        with autocast_context(self.device, self.cfg.dtype):
            return self.step_model(input_ids=input_ids, use_cache=False).logits

    # ------------------------------------------------------------------------------- eval and output
    def _validate(self, step: int, tb, bar) -> dict[str, float]:
        """Validation loss and bits per byte, and a sample, on the main process. An FSDP model's forward gathers
        weights from every process, so under FSDP every process evaluates the same windows and samples the
        same text (in step with each other); the main process alone reports them."""
        if not (self.info.is_main or self.fsdp):
            distributed.barrier(self.info)
            return {}
        cfg = self.cfg
        val = evaluate(
            self.model,
            self.data.val,
            byte_lengths=self.data.byte_lengths,
            batch_size=cfg.batch_size,
            block_size=self.block_size,
            max_tokens=cfg.eval_tokens,
            device=self.device,
            dtype=cfg.dtype,
            memory=self.streams is not None,  # a segment-stream run is validated the way it reads text
            eos_token_id=self.data.tokenizer.eos_token_id,
        )
        best = self.state["best_val_bpb"]
        self.state["best_val_bpb"] = val["bpb"] if best is None else min(best, val["bpb"])
        self._log({"step": step, **{f"val_{k}": v for k, v in val.items()}}, tb)
        sample = self.sample() if cfg.sample_tokens else ""
        if not self.info.is_main:
            distributed.barrier(self.info)
            return val
        printer = bar.console if bar else self.console
        printer.print(
            f"[bold]step {step:>6}[/] val loss {val['loss']:.4f}  ppl {val['ppl']:.2f}  "
            f"[bold green]bits/byte {val['bpb']:.4f}[/]"
        )
        if sample:
            printer.print(f"[dim]{escape((cfg.sample_prompt + sample).strip())}[/]", highlight=False)
            self._append_sample(step, sample)
        distributed.barrier(self.info)
        return val

    @torch.no_grad()
    def sample(self, max_new_tokens: int | None = None, seed: int | None = None) -> str:
        """Generate from ``sample_prompt`` without touching the training RNG streams."""
        tok, cfg = self.data.tokenizer, self.cfg
        ids = tok(cfg.sample_prompt, return_tensors="pt").input_ids
        if ids.numel() == 0:
            ids = torch.tensor([[tok.eos_token_id or 0]])
        n_new = min(max_new_tokens or cfg.sample_tokens, self.model.config.block_size - ids.shape[1])
        if n_new <= 0:
            return ""
        was_training = self.model.training
        self.model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(cfg.seed if seed is None else seed)
            out = self.model.generate(
                ids.to(self.device), max_new_tokens=n_new, do_sample=True, top_k=50, temperature=0.8,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                synced_gpus=self.fsdp and self.info.enabled,  # FSDP: every process runs each forward step
            )
        self.model.train(was_training)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def _append_sample(self, step: int, text: str) -> None:
        with open(self.run_dir / "samples.txt", "a") as f:
            f.write(f"===== step {step} =====\n{text}\n\n")

    def _save(self) -> None:
        if self.fsdp:
            save_sharded_checkpoint(self.run_dir, ShardedTraining(self.model, self.optimizer), self._rank_parts(),
                                    {**self.state, "layout": self._layout()}, self.model.config, self.info)
            if self.state["step"] == self.cfg.max_steps:
                self._export_gathered()
            return
        if self.info.is_main:
            config = self.model.config if self.base_fingerprint is None else None
            path = save_checkpoint(self.run_dir, self._checkpoint_parts(), dict(self.state), config)
            try:
                self._export()
            except OSError as exc:
                raise WriteError(f"cannot update the model files in {self.run_dir} ({exc.strerror or exc}): checkpoint "
                                 f"{path.name} is complete; free space and continue with --resume") from exc
        distributed.barrier(self.info)

    def _export_gathered(self) -> None:
        """An FSDP run's HF model at the run root: the weights gathered once onto the main process's CPU (every
        process takes part), saved there as a plain model (``model.safetensors``, ``config.json``...)."""
        from ..models.meta_init import assemble_model

        weights = fsdp.full_state_dict(self.model)
        if self.info.is_main:
            plain = assemble_model(family_of_config(self.model.config).model_class, self.model.config, weights)
            try:
                export_model(self.run_dir, plain, self.data.tokenizer)
            except OSError as exc:
                raise WriteError(f"cannot write the model files in {self.run_dir} ({exc.strerror or exc}): the "
                                 "sharded checkpoint is complete; free space and continue with --resume, or "
                                 f"attnlab export {self.run_dir} OUT") from exc
        del weights
        self.exported_step = self.state["step"]
        distributed.barrier(self.info)

    def _export(self) -> None:
        """The run's HF model and tokenizer at its root; a LoRA run's adapter in ``adapter/``, and its merged
        model at the root only with ``merge`` (the tokenizer always)."""
        model = self.model
        if is_peft_model(model):
            save_adapter(model, self.run_dir / "adapter")
            model = merged_copy(model) if self.cfg.merge else None
        export_model(self.run_dir, model, self.data.tokenizer)

    def _resolve_precision(self) -> None:
        """Turn ``dtype: auto`` into what this device and family train in (``attnlab.precision``). The saved
        ``train_config.json`` holds the resolved dtype, so evaluating the run later repeats it."""
        autocast, self.precision = resolve_dtype(self.cfg.dtype, self.family, self.device)
        self.cfg.dtype = dtype_name(autocast)

    def _write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "train_config.json", self.cfg.to_dict())
        write_json(
            self.run_dir / "run_info.json",
            {
                "family": self.family,
                **self._parameter_counts(),
                "tokens_per_step": self.tokens_per_step,
                "accumulation_steps": self.accum_steps,
                "world_size": self.info.world_size,
                "parallel": self._parallel(),
                "device": str(self.device),
                "precision": self.precision,
                "data": self.data.meta,
                "torch": torch.__version__,
            },
        )
        if self.fsdp:  # the HF model comes at the end; the tokenizer is there from the start (attnlab export)
            export_model(self.run_dir, None, self.data.tokenizer)
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():  # drop what a killed run logged after its last checkpoint
            keep = _records_up_to(metrics, self.state["step"], self._warn)
            metrics.write_text("".join(line + "\n" for line in keep))

    def _parallel(self) -> str:
        """How the processes share the work: none (one process), ddp, or fsdp with its weights' route."""
        if self.fsdp:
            return f"fsdp, {self.init_route} init"
        return "ddp" if self.info.enabled else "none"

    def _parameter_counts(self) -> dict[str, int]:
        """The model's size without LoRA adapters (what its model card reports), and what this run trains."""
        params = list(self.model.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        adapters = trainable if is_peft_model(self.model) else 0
        return {"parameters": sum(p.numel() for p in params) - adapters, "trainable_parameters": trainable}

    def _description(self) -> str:
        """What is trained: a family's preset, or the source fine-tuned (fully, or its LoRA adapters)."""
        cfg = self.cfg
        if not cfg.init_from:
            return f"{cfg.model}/{cfg.preset}"
        how = "all weights"
        if is_peft_model(self.model):
            how = f"LoRA r={cfg.lora_r}, {self._parameter_counts()['trainable_parameters']:,} trainable parameters"
        return f"{self.family} from {escape(cfg.init_from)} ({how})"

    def _announce(self) -> None:
        cfg, n = self.cfg, self._parameter_counts()["parameters"]
        verb = f"resuming at step {self.state['step']}" if self.checkpoint else "training"
        self.console.print(
            f"[bold]{verb}[/] {self._description()}: {n / 1e6:.2f}M parameters on {self.device} "
            f"({self.info.world_size} process{'es' if self.info.enabled else ''}{', FSDP' if self.fsdp else ''}), "
            f"{len(self.data.train):,} train / {len(self.data.val):,} val tokens, "
            f"{self.tokens_per_step:,} tokens/step × {cfg.max_steps} steps → {self.run_dir}"
        )
        self.console.print(f"precision: {escape(self.precision)}")
        for warning in self._data_warnings():
            self.console.print(f"[yellow]warning:[/] {warning}")

    def _data_warnings(self) -> list[str]:
        """What about the data would surprise: a smaller BPE vocabulary than asked for, too little text."""
        cfg, tok, warnings = self.cfg, self.data.tokenizer, []
        if cfg.tokenizer == "bpe" and len(tok) < cfg.vocab_size:
            warnings.append(
                f"the bpe tokenizer has {len(tok):,} tokens, not the requested {cfg.vocab_size:,}: the training "
                f"text ({self.data.meta.get('n_bytes', 0):,} bytes) has no more pairs to merge; the model's "
                f"vocabulary is {self.model.config.vocab_size:,}"
            )
        if len(self.data.train) < self.tokens_per_step:
            warnings.append(
                f"the training split has {len(self.data.train):,} tokens, fewer than one optimizer step "
                f"({self.tokens_per_step:,}): every step reads the same text again"
            )
        if len(self.data.val) <= self.block_size:
            warnings.append(
                f"the validation split has {len(self.data.val):,} tokens, shorter than one context of "
                f"{self.block_size:,} + 1: validation scores {max(len(self.data.val) - 1, 0):,} positions only "
                "(raise --val-fraction or add text)"
            )
        return warnings

    def _log(self, record: dict[str, Any], tb) -> None:
        if not self.info.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    tb.add_scalar(key, value, record["step"])
        if not self.cfg.progress and "loss" in record:
            self.console.print(
                f"step {record['step']:>6}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                f"{record['tok_per_s']:,.0f} tok/s"
            )

    def _progress(self, start_step: int) -> Progress | contextlib.nullcontext:
        if not self.cfg.progress:
            return contextlib.nullcontext()
        return Progress(
            TextColumn("[bold blue]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeRemainingColumn(),
            console=self.console,
        )

    @contextlib.contextmanager
    def _tensorboard(self):
        writer = None
        if self.cfg.tensorboard and self.info.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                writer = None
        try:
            yield writer
        finally:
            if writer is not None:
                writer.close()


def _records_up_to(metrics: Path, step: int, warn) -> list[str]:
    """The lines of ``metrics.jsonl`` logged up to ``step``; lines that do not parse (cut by a kill mid-write,
    or damaged) are dropped with a warning."""
    keep, damaged = [], 0
    for line in metrics.read_text(errors="replace").splitlines():
        try:
            record_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            damaged += 1
            continue
        if isinstance(record_step, int) and record_step <= step:
            keep.append(line)
    if damaged:
        warn(f"{metrics}: dropped {damaged} damaged line{'s' if damaged > 1 else ''}")
    return keep


def opening_words(split, tokenizer, words: int = 3, tokens: int = 256) -> str:
    """The first words of the first whole line of ``split`` (its text starts mid-line, even mid-character): a
    prompt in the style of the run's own data, for the hint after training."""
    text = tokenizer.decode([int(t) for t in split.tokens[:tokens]], skip_special_tokens=True)
    lines = [line for line in text.split("\n")[1:] if line.strip()]
    if lines:
        start = lines[0]
    else:  # no line break: drop the first word, which the split may have cut
        first_and_rest = text.split(maxsplit=1)
        start = first_and_rest[1] if len(first_and_rest) > 1 else text
    return " ".join(start.split()[:words]) or "\n"


class StreamMemories:
    """The Transformer-XL memories of a segment-stream run, one per micro-step, as one checkpoint part."""

    def __init__(self, memories: list, device: torch.device):
        self.memories, self.device = memories, device

    def state_dict(self) -> list[dict[str, Any]]:
        return [m.state_dict() for m in self.memories]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        for memory, saved in zip(self.memories, state, strict=True):
            memory.load_state_dict(_to_device(saved, self.device))


def _global_rows(layout: dict[str, int]) -> int:
    """Rows of the global batch (segment streams) under a layout: processes × rows each × micro-steps."""
    return layout.get("world_size", 0) * layout.get("batch_size", 0) * layout.get("accumulation_steps", 0)


def regroup_memories(per_rank: list[list[dict[str, Any]]], saved: dict[str, int], now: dict[str, int],
                     rank: int) -> list[dict[str, Any]]:
    """Process ``rank``'s memories (one per micro-step) under layout ``now``, from every process's memories
    under layout ``saved`` (same number of global rows). Row r of the global batch is row r of the streams
    whichever process holds it: (micro-step m, process p, row i) is global row (m·P + p)·B + i, so the
    memories are put together in that order and cut again the new way."""
    ordered = [per_rank[p][m] for m in range(saved["accumulation_steps"]) for p in range(saved["world_size"])]
    whole = _concat_rows(ordered)
    rows = now["batch_size"]
    return [_take_rows(whole, slice((m * now["world_size"] + rank) * rows, (m * now["world_size"] + rank + 1) * rows))
            for m in range(now["accumulation_steps"])]


def _concat_rows(states: list[Any]) -> Any:
    """Memory states (nested dicts/lists of (rows, ...) tensors and counters) joined along their rows."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(states, dim=0)
    if isinstance(first, dict):
        return {key: _concat_rows([s[key] for s in states]) for key in first}
    if isinstance(first, list):
        return [_concat_rows([s[i] for s in states]) for i in range(len(first))]
    if any(s != first for s in states):  # counters (tokens seen) are the same in every stream
        raise CorruptFileError("memories", f"the processes' memories disagree ({states})", "resume on as many "
                               "processes as wrote the checkpoint")
    return first


def _take_rows(state: Any, rows: slice) -> Any:
    if isinstance(state, torch.Tensor):
        return state[rows].clone()
    if isinstance(state, dict):
        return {key: _take_rows(value, rows) for key, value in state.items()}
    if isinstance(state, list):
        return [_take_rows(value, rows) for value in state]
    return state


def _to_device(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value
