"""Every option of a training run, with the checks that turn impossible settings into one-line errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..options import Options, option
from .fsdp import FSDP_INIT, MIXED_PRECISION

DTYPES = ("auto", "float32", "bfloat16")
OPTIMIZERS = ("adamw", "sophia")
ACTIVATION_CHECKPOINTING = ("none", "full", "selective")  # attnlab.models.checkpointing.MODES
PARALLEL = ("ddp", "fsdp")
# option groups, in the order `attnlab train --help` and docs/cli.md show them
MODEL, DATA, BATCHING, OPTIMISATION = "model", "data", "batching", "optimisation"
RUNTIME, EVALUATION, RUN = "runtime", "evaluation and logging", "run directory and checkpoints"
FINETUNING = "fine-tuning"
# what shapes the learning rate over the steps: changing any of them on resume needs allow_schedule_change
SCHEDULE = ("max_steps", "lr", "min_lr", "warmup_steps")
# options that concern one invocation, not the run: a resume does not take them from the saved config
PER_INVOCATION = ("resume", "stop_at_step", "allow_schedule_change")


@dataclass
class TrainConfig(Options):
    """Every option of a training run; each field's help is what ``attnlab train --help`` and docs/cli.md show.

    A YAML/JSON ``--config`` file uses the field names; on the command line they are ``--field-name`` flags.
    """

    option_kind = "training"
    model: str = option("gpt", "model family; `attnlab models` lists them", group=MODEL, metavar="FAMILY")
    preset: str = option("tiny", "named size of the family, e.g. debug, tiny, small; `attnlab models` lists them",
                         group=MODEL, metavar="NAME")
    model_overrides: dict[str, Any] = option(
        help="override any model config field, repeatable (`--set d_model=256 --set pos=rope`); values are read "
             "as YAML; `attnlab models --options FAMILY` lists the fields; a config file gives them as a "
             "`model_overrides` mapping",
        group=MODEL, default_factory=dict, shown_default="–", flag="--set", metavar="KEY=VALUE",
    )
    data: str = option(
        "shakespeare",
        "what to train on: `shakespeare` (the built-in corpus), a `.txt`/`.md` file or folder, "
        "`.jsonl`/`.json`/`.parquet`, or a Hugging Face dataset `hf:NAME[:CONFIG]`",
        group=DATA, metavar="SOURCE",
    )
    text_field: str = option("text", "field holding the text in JSONL/JSON/parquet/HF records", group=DATA,
                             metavar="NAME")
    hf_config: str | None = option(None, "Hugging Face dataset config name (or `hf:NAME:CONFIG`)", group=DATA,
                                   metavar="NAME")
    hf_split: str = option("train", "Hugging Face dataset split", group=DATA, metavar="SPLIT")
    max_docs: int | None = option(None, "read at most this many documents; local sources are otherwise read whole",
                                  group=DATA, shown_default="100000 for HF datasets", metavar="N")
    tokenizer: str = option("byte", "`byte` (256 bytes + `<|endoftext|>`), `bpe` (trained on the data), or a pretrained HF tokenizer "
                            "name/path", group=DATA, metavar="NAME")
    vocab_size: int = option(4096, "vocabulary size of the BPE tokenizer trained by `--tokenizer bpe`", group=DATA,
                             metavar="N")
    val_fraction: float = option(0.1, "fraction of the token stream, its tail, held out for validation",
                                 group=DATA, metavar="F")
    batch_size: int = option(16, "sequences per micro-batch and process", group=BATCHING, metavar="N")
    block_size: int | None = option(None, "context length in tokens", group=BATCHING, shown_default="the model's",
                                    metavar="N")
    tokens_per_step: int | None = option(None, "target tokens per optimizer step: sets gradient accumulation",
                                         group=BATCHING, shown_default="one micro-batch", metavar="N")
    optimizer: str = option(
        "adamw", "`adamw`, or `sophia`: SophiaG (any family), clipped diagonal-Hessian steps; try "
        "`--beta1 0.965 --beta2 0.99` with it", group=OPTIMISATION, metavar="NAME",
    )
    max_steps: int = option(1000, "optimizer steps: the length of the schedule", group=OPTIMISATION, metavar="N")
    lr: float = option(1e-3, "peak learning rate, reached by linear warmup and followed by cosine decay",
                       group=OPTIMISATION, metavar="LR")
    min_lr: float | None = option(None, "final learning rate of the cosine decay", group=OPTIMISATION,
                                  shown_default="lr/10", metavar="LR")
    warmup_steps: int | None = option(None, "linear warmup steps", group=OPTIMISATION,
                                      shown_default="min(100, max_steps/10)", metavar="N")
    weight_decay: float = option(0.1, "decoupled weight decay, on matrices only unless `--decay-embeddings`",
                                 group=OPTIMISATION, metavar="WD")
    beta1: float = option(0.9, "first-moment decay of AdamW and SophiaG", group=OPTIMISATION, metavar="B")
    beta2: float = option(0.95, "second-moment decay of AdamW; SophiaG's Hessian decay", group=OPTIMISATION,
                          metavar="B")
    grad_clip: float = option(1.0, "clip the global gradient norm to this; 0: off", group=OPTIMISATION, metavar="NORM")
    decay_embeddings: bool = option(False, "apply weight decay to the embeddings too", group=OPTIMISATION)
    sophia_rho: float = option(0.04, "SophiaG rho: the step is clipped where abs(momentum) > rho · hessian",
                               group=OPTIMISATION, metavar="RHO")
    hessian_interval: int = option(
        10, "SophiaG: refresh the Hessian estimate every N steps, from labels sampled from the model",
        group=OPTIMISATION, metavar="N",
    )
    segment_stream: bool = option(
        False, "Transformer-XL training (models with `mem_len`): each batch row continues its own stream of "
        "consecutive segments, memory carried; validation then carries memory too", group=BATCHING,
    )
    warm_start: str | None = option(
        None, "copy the input embeddings (and take the tokenizer) of a HF causal LM: a local path or a hub name",
        group=MODEL, metavar="SRC",
    )
    init_from: str | None = option(
        None, "fine-tune a saved model: a run directory, an `attnlab export` folder or any attnlab HF model "
        "directory; its config, weights and tokenizer are the start (`--model`, `--preset` and `--tokenizer` are "
        "then unused; `--set` may change what keeps the weights' shapes, e.g. dropout)",
        group=FINETUNING, metavar="DIR",
    )
    lora_r: int | None = option(
        None, "with `--init-from`: train LoRA adapters of this rank through PEFT instead of every weight; the "
        "run saves them in `adapter/` (needs `pip install attnlab[peft]`)", group=FINETUNING,
        shown_default="off: full fine-tuning", metavar="R",
    )
    lora_alpha: float | None = option(None, "LoRA scaling numerator: the adapters' output is scaled by alpha/r",
                                      group=FINETUNING, shown_default="lora_r", metavar="A")
    lora_dropout: float = option(0.0, "dropout on the LoRA adapters' input", group=FINETUNING, metavar="P")
    lora_targets: str = option(
        "all-linear", "modules that get adapters: `all-linear` (every linear layer but the LM head) or "
        "comma-separated module names, e.g. `qkv,out`", group=FINETUNING, metavar="NAMES",
    )
    merge: bool = option(
        False, "LoRA runs: also save the model with the adapters merged in as the run's HF model (without it the "
        "run keeps only the adapter, which `attnlab generate`/`eval` apply to the source)", group=FINETUNING,
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:1, mps", group=RUNTIME, metavar="DEVICE")
    dtype: str = option(
        "auto", "`auto`: bf16 autocast where the device computes bf16 natively (AVX-512 BF16/AMX CPUs, Ampere+ "
        "GPUs) and the family is tested stable under it, else float32 (the run says which and why); `float32`; "
        "or `bfloat16` autocast", group=RUNTIME, metavar="DTYPE",
    )
    compile: bool = option(False, "`torch.compile` the model", group=RUNTIME)
    activation_checkpointing: str = option(
        "none", "recompute block activations in the backward instead of keeping them: `none`, `full` (every "
        "block: least memory, about one more forward per step) or `selective` (every other block: about half "
        "the saving for half the extra compute)", group=RUNTIME, metavar="MODE",
    )
    parallel: str = option(
        "ddp", "how the processes of a torchrun launch share the work: `ddp` (each holds the whole model; on one "
        "process a plain model) or `fsdp` (FSDP2: parameters, gradients and optimizer state sharded per block, "
        "sharded checkpoints; also runs on one process)", group=RUNTIME, metavar="MODE",
    )
    fsdp_mixed_precision: str = option(
        "none", "with `--parallel fsdp`: `bf16` gathers the parameters and computes in bfloat16 and reduces the "
        "gradients in float32 (the sharded float32 weights stay the master copy); `none`: float32 throughout",
        group=RUNTIME, metavar="MODE",
    )
    fsdp_cpu_offload: bool = option(
        False, "with `--parallel fsdp`: keep the sharded parameters, gradients and optimizer state in CPU memory, "
        "copied to the GPU one block at a time (slower; for models whose shards do not fit)", group=RUNTIME,
    )
    fsdp_init: str = option(
        "auto", "with `--parallel fsdp`, how a new run's weights come to be sharded: `seeded` builds the model as "
        "one process does, then shards it (the same weights as DDP or one process); `meta` builds it on the meta "
        "device and initialises only each process's shards (no process ever holds the whole model; values from "
        "the same distributions, not the same values); `auto`: seeded up to 10^9 parameters, meta above",
        group=RUNTIME, metavar="MODE",
    )
    seed: int = option(1337, "seed for weights, batches and dropout", group=RUNTIME, metavar="N")
    eval_interval: int = option(200, "validate (and sample) every N steps", group=EVALUATION, metavar="N")
    eval_tokens: int | None = option(65536, "validation tokens per evaluation; null in a config file: the whole "
                                     "validation split", group=EVALUATION, metavar="N")
    log_interval: int = option(10, "log the training loss every N steps", group=EVALUATION, metavar="N")
    checkpoint_interval: int | None = option(None, "checkpoint every N steps", group=RUN,
                                             shown_default="eval_interval", metavar="N")
    sample_tokens: int = option(200, "tokens generated at each validation; 0: none", group=EVALUATION,
                                metavar="N")
    sample_prompt: str = option("\n", "prompt of those samples", group=EVALUATION, metavar="TEXT")
    out_dir: str | None = option(None, "run directory", group=RUN,
                                 shown_default="runs/MODEL-PRESET; with --init-from runs/SOURCE-ft",
                                 metavar="DIR")
    resume: bool = option(False, "continue the run in `--out-dir` from its last checkpoint", group=RUN)
    allow_schedule_change: bool = option(
        False, "resume even though max_steps, lr, min_lr or warmup_steps differ from the run's (the learning "
        "rate then jumps to the new schedule); without it such a resume is refused", group=RUN,
    )
    max_minutes: float | None = option(None, "stop after this many minutes, checkpointed and resumable",
                                       group=RUN, metavar="MIN")
    stop_at_step: int | None = option(
        None, "stop at this step, checkpointed and resumable, without changing the schedule", group=RUN,
        metavar="N",
    )
    progress: bool = option(True, "show a progress bar", group=EVALUATION)
    tensorboard: bool = option(True, "also log to TensorBoard when it is installed", group=EVALUATION)

    def __post_init__(self) -> None:
        if self.warmup_steps is None:
            self.warmup_steps = min(100, self.max_steps // 10)
        self.check()

    @property
    def run_dir(self) -> Path:
        if self.out_dir:
            return Path(self.out_dir)
        if self.init_from:
            return Path(f"runs/{Path(self.init_from).resolve().name}-ft")
        return Path(f"runs/{self.model}-{self.preset}")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @property
    def save_every(self) -> int:
        return self.checkpoint_interval or self.eval_interval

    def check(self) -> None:
        positive = ["batch_size", "max_steps", "eval_interval", "log_interval", "vocab_size", "hessian_interval"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("block_size", "tokens_per_step", "checkpoint_interval", "eval_tokens", "stop_at_step", "lora_r",
                     "lora_alpha"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.lr <= 0 or self.final_lr < 0 or self.final_lr > self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ConfigError(f"warmup_steps must be in [0, max_steps={self.max_steps}], got {self.warmup_steps}")
        if not 0 < self.val_fraction <= 0.5:
            raise ConfigError(f"val_fraction must be in (0, 0.5], got {self.val_fraction}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.activation_checkpointing not in ACTIVATION_CHECKPOINTING:
            raise ConfigError(f"activation_checkpointing must be one of {ACTIVATION_CHECKPOINTING}, "
                              f"got {self.activation_checkpointing!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.sophia_rho <= 0:
            raise ConfigError(f"sophia_rho must be positive, got {self.sophia_rho}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("grad_clip and weight_decay must be >= 0")
        self.check_finetuning()
        self.check_parallel()

    def check_parallel(self) -> None:
        """The FSDP options need ``parallel: fsdp``; what FSDP cannot shard is refused, naming it."""
        for name, allowed in (("parallel", PARALLEL), ("fsdp_mixed_precision", MIXED_PRECISION),
                              ("fsdp_init", FSDP_INIT)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.parallel != "fsdp":
            given = [name for name, default in (("fsdp_mixed_precision", "none"), ("fsdp_cpu_offload", False),
                                                ("fsdp_init", "auto")) if getattr(self, name) != default]
            if given:
                raise ConfigError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} parallel fsdp")
            return
        if self.lora_r is not None:
            raise ConfigError("parallel fsdp does not shard LoRA runs (PEFT adapters on a frozen base): train "
                              "LoRA adapters with parallel ddp")
        if self.compile:
            raise ConfigError("compile with parallel fsdp is not supported: FSDP2 needs each block compiled before "
                              "it is sharded; drop --compile or use parallel ddp")
        if self.fsdp_init == "meta" and (self.init_from or self.warm_start):
            raise ConfigError("fsdp_init meta draws fresh weights, but init_from and warm_start bring their own: "
                              "use fsdp_init seeded (or auto)")

    def check_finetuning(self) -> None:
        """LoRA and merging only mean something on a source model; warm start is another start, not both."""
        if self.init_from and self.warm_start:
            raise ConfigError("pass init_from or warm_start, not both: init_from already brings its embeddings")
        if self.lora_r is not None and not self.init_from:
            raise ConfigError("lora_r needs init_from: LoRA adapts a trained model")
        if self.merge and self.lora_r is None:
            raise ConfigError("merge needs lora_r: a full fine-tuning run saves its whole model anyway")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_targets.strip(" ,"):
            raise ConfigError("lora_targets names no module")


def schedule_changes(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Each schedule option whose value in ``cfg`` differs from the run's saved config, as "name old → new"."""
    return [f"{name} {saved[name]} → {getattr(cfg, name)}" for name in SCHEDULE
            if name in saved and saved[name] != getattr(cfg, name)]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file of training options (and a ``model_overrides`` mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one line
        raise ConfigError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must contain a mapping of option: value")
    return values
