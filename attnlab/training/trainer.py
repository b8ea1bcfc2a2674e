"""``attnlab train``: one loop for every family, on one CPU or many GPUs (torchrun + DDP).

Determinism is by construction: the batch of (step, micro-step) is a pure function of the seed, the learning
rate is a pure function of the step, and a checkpoint holds the named stateful parts of the run (model,
optimizer, Transformer-XL memories of a segment stream, RNG) and the step, which is the data position. So a
run killed at step k and resumed with ``resume=True`` computes exactly what the uninterrupted run computes.

The loop reads: batch → forward/backward → optimizer (and what it needs between steps, such as SophiaG's
Hessian refresh) → log / validate / checkpoint.
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

from ..errors import ConfigError, TrainingInterrupted, WriteError
from ..evaluation import autocast_context, evaluate
from ..io import write_json
from ..loading import load_config, load_tokenizer, read_run_file
from ..models import build_config, get_family
from ..models.checkpointing import enable_activation_checkpointing
from ..models.registry import family_of_config
from . import distributed
from .checkpoint import (
    RNGState,
    export_model,
    intact_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
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
    info = distributed.init_distributed()
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
        self.run_dir = cfg.run_dir
        self.signals, self.interrupted_by = StopSignals(), None
        self._check_out_dir()
        self.checkpoint = self._find_checkpoint()
        self._check_schedule()
        self.source = self._source()
        if cfg.lora_r is not None:
            require_peft()
        self.data = self._prepare_data()
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
        if self.checkpoint is not None:
            self.state = load_checkpoint(self.checkpoint, self._checkpoint_parts())
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
        """A resume's checkpoint: the newest intact one (damaged newer ones are set aside, with a warning)."""
        found = intact_checkpoint(self.run_dir, self._warn) if self.cfg.resume else latest_checkpoint(self.run_dir)
        if self.cfg.resume and found is None:
            raise ConfigError(f"--resume: no checkpoint in {self.run_dir}")
        if not self.cfg.resume and found is not None:
            raise ConfigError(f"{self.run_dir} already holds a run; pass --resume to continue it or pick --out-dir")
        return found

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
        """The model to train: ``_base_model``, with LoRA adapters when the run trains those."""
        cfg, vocab = self.cfg, len(self.data.tokenizer)
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
        cfg, tok = self.cfg, self.data.tokenizer
        if self.source is not None:
            return load_source_model(self.source, cfg.model_overrides)
        if self.checkpoint is not None:
            config = self._run_config()
            family = family_of_config(config)
        else:
            overrides = dict(cfg.model_overrides)
            overrides.setdefault("vocab_size", len(tok))
            if cfg.block_size is not None:
                overrides.setdefault("block_size", cfg.block_size)
            overrides.setdefault("eos_token_id", tok.eos_token_id)
            overrides.setdefault("pad_token_id", tok.pad_token_id)
            config = build_config(cfg.model, cfg.preset, **overrides)
            family = get_family(cfg.model)
        torch.manual_seed(self.cfg.seed)  # identical initial weights on every rank
        model = family.model_class(config)
        if cfg.warm_start and self.checkpoint is None:
            from ..models.warm_start import warm_start_embeddings

            warm_start_embeddings(model, cfg.warm_start)
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
        if self.info.enabled:
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
            sync = micro == self.accum_steps - 1 or not self.info.enabled
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
        if not self.info.is_main:
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
            )
        self.model.train(was_training)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def _append_sample(self, step: int, text: str) -> None:
        with open(self.run_dir / "samples.txt", "a") as f:
            f.write(f"===== step {step} =====\n{text}\n\n")

    def _save(self) -> None:
        if self.info.is_main:
            config = self.model.config if self.base_fingerprint is None else None
            path = save_checkpoint(self.run_dir, self._checkpoint_parts(), dict(self.state), config)
            try:
                self._export()
            except OSError as exc:
                raise WriteError(f"cannot update the model files in {self.run_dir} ({exc.strerror or exc}): checkpoint "
                                 f"{path.name} is complete; free space and continue with --resume") from exc
        distributed.barrier(self.info)

    def _export(self) -> None:
        """The run's HF model and tokenizer at its root; a LoRA run's adapter in ``adapter/``, and its merged
        model at the root only with ``merge`` (the tokenizer always)."""
        model = self.model
        if is_peft_model(model):
            save_adapter(model, self.run_dir / "adapter")
            model = merged_copy(model) if self.cfg.merge else None
        export_model(self.run_dir, model, self.data.tokenizer)

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
                "device": str(self.device),
                "data": self.data.meta,
                "torch": torch.__version__,
            },
        )
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():  # drop what a killed run logged after its last checkpoint
            keep = _records_up_to(metrics, self.state["step"], self._warn)
            metrics.write_text("".join(line + "\n" for line in keep))

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
            f"({self.info.world_size} process{'es' if self.info.enabled else ''}), "
            f"{len(self.data.train):,} train / {len(self.data.val):,} val tokens, "
            f"{self.tokens_per_step:,} tokens/step × {cfg.max_steps} steps → {self.run_dir}"
        )
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


def _to_device(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value
