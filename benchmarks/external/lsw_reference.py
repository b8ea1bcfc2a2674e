"""Time attnlab's LSW Transformer against the authors' own model, training step for training step.

The authors' ``LSWTForCausalLM`` lives in their repository (github.com/Avelina9X/memory-transformer-pt4,
``src/model/``; it imports only torch and transformers, and on a CPU without flash-attn it attends with an
einsum and an explicit mask). Their code cannot ship inside attnlab, so this script imports it from a
checkout given on the command line and builds both models at the same size:

    d_model 256, 4 layers, 4 heads, SwiGLU hidden 4·d_model, 4 registers, no attention biases,
    vocabulary 1024, tied 256-wide embeddings, reversed RoPE (base 500000), dropout 0, fp32

A training step is forward + backward + AdamW (lr 1e-4) on random tokens, the loss (next-token cross-entropy)
computed outside their model, as a training loop around it would. "memory" carries the Transformer-XL memory
from step to step (theirs: the returned ``past_key_values``, detached and trimmed to the memory length, ours:
``model.make_cache()``), so the timed steps attend to a full memory. Timing is paired: each round times a few
steps of ours, then of theirs; the ratio is the median over rounds of (their median / our median), so a
shared machine's drift hits both alike. Freed memory stays in the process for both (``attnlab.cpu_memory``,
what ``attnlab bench`` does), so neither pays page faults for its temporaries every step.

    git clone https://github.com/Avelina9X/memory-transformer-pt4 /tmp/lsw_ref
    python benchmarks/external/lsw_reference.py /tmp/lsw_ref --threads 2 --out benchmarks/results/lsw/authors.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = {  # name: (tokens per sequence, batch, memory carried between steps)
    "256x8": (256, 8, 0),
    "256x8+mem256": (256, 8, 256),
    "1024x2": (1024, 2, 0),
    "1024x2+mem1024": (1024, 2, 1024),
}
D_MODEL, N_LAYERS, N_HEADS, N_REGISTERS, VOCAB = 256, 4, 4, 4, 1024


def ours(seq: int, batch: int, memory: int):
    """attnlab's LSW at the shared size: a closure doing one training step."""
    import attnlab

    torch.manual_seed(0)
    model = attnlab.create_model("lsw", "debug", d_model=D_MODEL, n_layers=N_LAYERS, n_heads=N_HEADS,
                                 d_emb=D_MODEL, d_ff=4 * D_MODEL, vocab_size=VOCAB, n_registers=N_REGISTERS,
                                 mem_len=memory, block_size=seq, dropout=0.0).train()
    x, y = torch.randint(0, VOCAB, (batch, seq)), torch.randint(0, VOCAB, (batch, seq))
    cache = model.make_cache() if memory else None
    extra = {"cache": cache, "use_cache": True} if memory else {"use_cache": False}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        model(input_ids=x, shift_labels=y, **extra).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def theirs(checkout: Path, seq: int, batch: int, memory: int):
    """The authors' model at the same size, from their checkout: a closure doing one training step."""
    sys.path.insert(0, str(checkout))
    from src.model.configuration import LSWTConfig
    from src.model.modeling import LSWTForCausalLM

    torch.manual_seed(0)
    config = LSWTConfig(vocab_size=VOCAB, d_vocab=D_MODEL, d_model=D_MODEL, d_ffn=4 * D_MODEL, n_heads=N_HEADS,
                        n_layers=N_LAYERS, n_registers=N_REGISTERS, enable_bias=False, rope_positions=seq)
    model = LSWTForCausalLM(config).train()
    x, y = torch.randint(0, VOCAB, (batch, seq)), torch.randint(0, VOCAB, (batch, seq))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    state = {"past": None}

    def step() -> None:
        out = model(input_ids=x, past_key_values=state["past"], use_cache=bool(memory), output_hidden_states=False,
                    max_key_values=memory or None)
        if memory:
            state["past"] = [[t.detach()[:, :, -memory:] for t in layer] for layer in out.past_key_values]
        F.cross_entropy(out.logits.flatten(0, 1).float(), y.flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def paired(a, b, rounds: int, steps: int) -> dict:
    """Alternate ``steps`` timed steps of a, then of b, ``rounds`` times (after one untimed step each)."""
    a(), b()
    times: dict[str, list[list[float]]] = {"ours": [], "theirs": []}
    for _ in range(rounds):
        for name, fn in (("ours", a), ("theirs", b)):
            samples = []
            for _ in range(steps):
                start = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - start)
            times[name].append(samples)
    med = {k: statistics.median(s for r in v for s in r) for k, v in times.items()}
    ratios = [statistics.median(t) / statistics.median(o) for o, t in zip(times["ours"], times["theirs"])]
    return {"ours_ms": 1e3 * med["ours"], "theirs_ms": 1e3 * med["theirs"], "ratio": statistics.median(ratios),
            "round_ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a checkout of Avelina9X/memory-transformer-pt4 (holding src/model)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here, and as a table beside it (.md)")
    args = parser.parse_args()
    if not (args.checkout / "src" / "model" / "modeling.py").is_file():
        parser.error(f"{args.checkout} has no src/model/modeling.py (a checkout of memory-transformer-pt4?)")
    torch.set_num_threads(args.threads)
    from attnlab.bench.env import cpu_model
    from attnlab.cpu_memory import keep_freed_memory

    keep_freed_memory()  # as the attnlab command line does, for both models alike (no page faults per step)
    results = {}
    lines = ["| shape (tokens × batch, memory) | attnlab (ms) | authors (ms) | authors / attnlab |", "|---|---:|---:|---:|"]
    print("\n".join(lines))
    for name in args.shapes:
        seq, batch, memory = SHAPES[name]
        row = paired(ours(seq, batch, memory), theirs(args.checkout, seq, batch, memory), args.rounds, args.steps)
        results[name] = row
        lines.append(f"| {name} | {row['ours_ms']:.1f} | {row['theirs_ms']:.1f} | {row['ratio']:.2f} |")
        print(lines[-1], flush=True)
    if args.out:
        env = {"torch": torch.__version__, "threads": args.threads, "cpu": cpu_model(), "rounds": args.rounds,
               "steps": args.steps, "checkout": str(args.checkout)}
        args.out.write_text(json.dumps({"env": env, "results": results}, indent=1) + "\n")
        header = (f"Paired training steps, {env['cpu']}, {args.threads} threads, torch {env['torch']}, "
                  f"{args.rounds} rounds × {args.steps} steps; ratio: median over rounds of authors / attnlab.")
        args.out.with_suffix(".md").write_text(header + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
