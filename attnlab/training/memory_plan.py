"""Expected GPU memory of training each large preset, on one GPU (or per GPU under DDP) and per GPU under FSDP,
without and with activation checkpointing: what ``docs/scaling.md`` tabulates.

    python -m attnlab.training.memory_plan                     # the table, 8 GPUs, 1 sequence per GPU
    python -m attnlab.training.memory_plan --write docs/scaling.md

Computed, not measured: the parameter counts are exact (each preset is built on the meta device); the rest
is the usual accounting, in bytes, for P parameters, one sequence of T tokens (the preset's ``block_size``)
per GPU, width d, L blocks, vocabulary V, with bf16 autocast:

- model states, AdamW in fp32: weights 4P + gradients 4P + two moments 8P = 16P (DDP: on every GPU);
- FSDP on N GPUs: 16P/N, plus what is gathered at a time: the root unit's parameters and gradients
  (embeddings, final norm, LM head; FSDP keeps the root gathered from its forward to its backward), the
  running and the prefetched block's parameters and one block's gradients before their reduce-scatter;
  parameters gathered in bf16 (``--fsdp-mixed-precision bf16``), gradients in fp32;
- activations of a block: 34·T·d bytes (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", a GPT block with 16-bit activations, without its 5·heads·T² attention-score term:
  SDPA's fused kernels never store the T×T scores); with full activation checkpointing each block keeps its
  2·T·d-byte input, and one block's 34·T·d live again while it is recomputed; selective is in between;
- the LM head: fp32 logits and their gradient, 8·T·V.

Families differ from the GPT block in what their mixers keep (DAT's relational heads, MoA's routed heads,
LSW's memory, SwiGLU's wider hidden layer), so the activation figures are estimates of the right size, not
measurements; ``attnlab bench`` measures a given shape (``peak_mem_bytes``).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

# the presets worth sharding: about 100 M parameters and up
PRESETS = ("gpt:medium", "dat:343m", "dat:734m", "dat:1.27b", "moa:card-example", "lsw:tiny", "lsw:small",
           "lsw:medium", "lsw:large", "lsw:xl", "lsw:xxl")
BEGIN, END = "<!-- BEGIN MEMORY PLAN -->", "<!-- END MEMORY PLAN -->"
GiB = 2**30


@dataclass(frozen=True)
class Shape:
    """What the accounting needs of a preset, counted on the meta device."""

    preset: str
    parameters: int
    root_parameters: int  # not in any block: embeddings, final norm, LM head (tied: once)
    block_parameters: int  # the largest block's
    d_model: int
    n_layers: int
    block_size: int
    vocab_size: int


def shape_of(preset: str) -> Shape:
    """``family:preset`` built on the meta device (no memory) and counted."""
    from ..models.meta_init import build_on_meta

    family, name = preset.split(":", 1)
    model = build_on_meta(family, name)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    blocks = [sum(p.numel() for p in block.parameters()) for block in model.model.layers]
    c = model.config
    return Shape(preset, total, total - sum(blocks), max(blocks), c.d_model, c.n_layers, c.block_size,
                 c.vocab_size)


def model_state_bytes(shape: Shape, ranks: int = 1) -> float:
    """fp32 weights, gradients and AdamW's two moments, split over ``ranks`` when sharded."""
    return 16 * shape.parameters / ranks


def gathered_bytes(shape: Shape, param_bytes: int = 2) -> float:
    """What an FSDP process holds whole at a time beyond its shards (see the module docstring)."""
    root = shape.root_parameters * (param_bytes + 4)
    blocks = 2 * shape.block_parameters * param_bytes + shape.block_parameters * 4
    return root + blocks


def activation_bytes(shape: Shape, sequences: int = 1, checkpointing: str = "none") -> float:
    """Activations of a training step of ``sequences`` × block_size tokens (bf16 autocast), with the LM head's
    fp32 logits and their gradient; ``checkpointing``: none, selective (every other block) or full."""
    tokens = sequences * shape.block_size
    whole, kept = 34 * tokens * shape.d_model, 2 * tokens * shape.d_model
    recomputed = {"none": 0, "selective": shape.n_layers // 2 + shape.n_layers % 2, "full": shape.n_layers}
    n = recomputed[checkpointing]
    blocks = (shape.n_layers - n) * whole + n * kept + (whole if n else 0)
    return blocks + 8 * tokens * shape.vocab_size


def per_gpu_bytes(shape: Shape, *, ranks: int = 1, fsdp: bool = False, checkpointing: str = "none",
                  sequences: int = 1) -> float:
    """Model states (sharded under FSDP, plus the gathered working set) and activations, per GPU."""
    states = model_state_bytes(shape, ranks if fsdp else 1) + (gathered_bytes(shape) if fsdp else 0)
    return states + activation_bytes(shape, sequences, checkpointing)


def table(presets: tuple[str, ...] = PRESETS, ranks: int = 8, sequences: int = 1) -> str:
    """The Markdown table of ``docs/scaling.md``: GiB per GPU, computed."""
    head = ("| preset | parameters | tokens/seq | model states (16 B/param) | activations: none / full AC "
            f"| 1 GPU or DDP: none / full AC | FSDP × {ranks}, per GPU: none / full AC |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for preset in presets:
        s = shape_of(preset)

        def gib(value: float) -> str:
            return f"{value / GiB:,.1f}"

        act = [activation_bytes(s, sequences, mode) for mode in ("none", "full")]
        single = [per_gpu_bytes(s, checkpointing=mode, sequences=sequences) for mode in ("none", "full")]
        sharded = [per_gpu_bytes(s, ranks=ranks, fsdp=True, checkpointing=mode, sequences=sequences)
                   for mode in ("none", "full")]
        states = gib(model_state_bytes(s))
        lines.append(f"| `{preset}` | {s.parameters / 1e9:.2f} B | {s.block_size:,} | {states} | "
                     f"{gib(act[0])} / {gib(act[1])} | {gib(single[0])} / {gib(single[1])} | "
                     f"{gib(sharded[0])} / {gib(sharded[1])} |")
    return "\n".join(lines)


def write(page: Path, ranks: int = 8, sequences: int = 1) -> bool:
    """Replace the table between the markers of ``page``; whether it changed."""
    text = page.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{page} has no {BEGIN} … {END} block")
    new = pattern.sub(lambda _: f"{BEGIN}\n{table(ranks=ranks, sequences=sequences)}\n{END}", text)
    page.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnlab.training.memory_plan",
                                     description="Expected training memory per GPU of the large presets.")
    parser.add_argument("--ranks", type=int, default=8, help="GPUs that FSDP shards over (default: 8)")
    parser.add_argument("--sequences", type=int, default=1,
                        help="sequences of block_size tokens per GPU (default: 1)")
    parser.add_argument("--write", type=Path, metavar="PAGE",
                        help="rewrite the table between the markers of PAGE")
    args = parser.parse_args(argv)
    if args.write:
        changed = write(args.write, args.ranks, args.sequences)
        print(f"{args.write}: {'updated' if changed else 'up to date'}")
    else:
        print(table(ranks=args.ranks, sequences=args.sequences))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
