"""LEAP vs the GPT baseline: training step time and memory vs length, window-size cost, generation per token.

    python benchmarks/leap.py                      # short CPU defaults (a few minutes on 2 cores)
    python benchmarks/leap.py --full               # the issue's sweep: N 512→16k, contexts 128→8k
    python benchmarks/leap.py --lengths 1024 4096 --device cuda

Prints Markdown tables. Models are built at equal width/depth (``--d-model``, ``--layers``, ``--heads``) with
dropout off. Memory is CUDA's peak allocated memory on GPU; on CPU it is the bytes of the tensors autograd
saves for the backward pass (deduplicated by storage), the part of training memory that grows with N.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import attnlab
from attnlab.bench.timing import synchronize, time_fn


def build(family: str, args: argparse.Namespace, block_size: int, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = attnlab.create_model(
        family, None, vocab_size=256, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
        block_size=block_size, dropout=0.0, **overrides,
    )
    return model.to(args.device)


def saved_for_backward_mb(fn) -> float:
    """Run ``fn`` and return the MB of distinct storages autograd saved for the backward pass."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values()) / 2**20


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call (the ``attnlab bench`` timer)."""
    return time_fn(lambda _: fn(), device=torch.device(device), warmup=1, repeats=repeats).median


def train_step(model: torch.nn.Module, length: int, args: argparse.Namespace) -> tuple[float, float]:
    """Forward+backward seconds and peak memory (MB) for a (batch, length) batch."""
    x = torch.randint(0, 256, (args.batch, length), device=args.device)

    def step():
        model.zero_grad(set_to_none=True)
        model(x, labels=x, use_cache=False).loss.backward()

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        seconds = timed(step, args.device, args.repeats)
        return seconds, torch.cuda.max_memory_allocated() / 2**20
    return timed(step, args.device, args.repeats), saved_for_backward_mb(lambda: model(x, labels=x, use_cache=False))


@torch.no_grad()
def per_token_generation(model: torch.nn.Module, context: int, args: argparse.Namespace) -> float:
    """Seconds per new token after a prompt of ``context`` tokens, using the model's own cache."""
    model.eval()
    prompt = torch.randint(0, 256, (1, context), device=args.device)
    cache = model.make_cache()
    logits = model(prompt, past_key_values=cache, use_cache=True).logits
    token = logits[:, -1:].argmax(-1)
    for _ in range(3):  # warm up the one-token path
        token = model(token, past_key_values=cache, use_cache=True).logits.argmax(-1)
    synchronize(torch.device(args.device))
    start = time.perf_counter()
    for _ in range(args.gen_tokens):
        token = model(token, past_key_values=cache, use_cache=True).logits.argmax(-1)
    synchronize(torch.device(args.device))
    return (time.perf_counter() - start) / args.gen_tokens


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def sweep_training(args: argparse.Namespace) -> str:
    block = max(args.lengths)
    models = {
        "LEAP global": build("leap", args, block, use_local_att=False),
        "LEAP windowed": build("leap", args, block),
        "GPT": build("gpt", args, block),
    }
    rows, times = [], {name: [] for name in models}
    for length in args.lengths:
        row = [str(length)]
        for name, model in models.items():
            seconds, memory = train_step(model, length, args)
            times[name].append(seconds)
            row += [f"{seconds * 1e3:.0f}", f"{memory:.0f}"]
        rows.append(row)
    header = ["N"] + [f"{name} {what}" for name in models for what in ("ms", "MB")]
    growth = ", ".join(f"{name} {t[-1] / t[0]:.1f}×" for name, t in times.items())
    span = f"{args.lengths[-1]}/{args.lengths[0]}"
    return table(header, rows) + f"\n\nforward+backward, batch {args.batch}; time ratio N={span}: {growth}"


def sweep_windows(args: argparse.Namespace) -> str:
    length = args.window_length
    rows = []
    for window in args.windows:
        model = build("leap", args, length, window_sizes=[window] * args.layers)
        seconds, _ = train_step(model, length, args)
        rows.append([str(window), f"{seconds * 1e3:.0f}"])
    return table(["window k (all layers)", f"fwd+bwd ms at N={length}"], rows)


def sweep_generation(args: argparse.Namespace) -> str:
    block = max(args.contexts) + args.gen_tokens + 8
    models = {
        "LEAP windowed (recurrent)": build("leap", args, block),
        "LEAP global (recurrent)": build("leap", args, block, use_local_att=False),
        "GPT (KV cache)": build("gpt", args, block),
    }
    rows = []
    for context in args.contexts:
        rows.append([str(context)] + [f"{per_token_generation(m, context, args) * 1e3:.2f}" for m in models.values()])
    return table(["context"] + [f"{name} ms/token" for name in models], rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="the issue's sweep (512→16k, contexts 128→8k)")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--windows", type=int, nargs="+", default=[4, 64, 4096])
    p.add_argument("--window-length", type=int, default=4096)
    p.add_argument("--contexts", type=int, nargs="+", default=[128, 1024, 4096])
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.full:
        args.lengths = [512, 1024, 2048, 4096, 8192, 16384]
        args.window_length = 16384
        args.contexts = [128, 512, 2048, 8192]
    print(f"# LEAP benchmark ({args.device}, d_model {args.d_model}, {args.layers} layers, {args.heads} heads, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
    for title, sweep in (
        ("Training step vs sequence length", sweep_training),
        ("Window size at fixed length", sweep_windows),
        ("Generation time per token vs context", sweep_generation),
    ):
        print(f"## {title}\n\n{sweep(args)}\n", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
