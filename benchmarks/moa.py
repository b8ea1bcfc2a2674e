"""MoA metric LM vs the GPT baseline: training speed and memory, cached vs recomputed generation, ball cost.

    python benchmarks/moa.py                        # short CPU defaults (a few minutes on 2 cores)
    python benchmarks/moa.py --d-model 768 --layers 12 --heads 8 --seq 512 --device cuda

Prints three Markdown tables:

1. training step (forward + backward) time, tokens/s and memory of MoA and GPT at the same width/depth;
   "activations" are the bytes autograd saves for the backward pass (distinct storages, exact on any device),
   "peak" is CUDA's max allocated memory (CPU has no allocator peak counter: "-").
2. greedy decoding tokens/s after a prompt of 256/1k/2k tokens (prefill excluded), with MoA's KV + conv-state
   cache and with ``use_cache=False`` (recomputing the whole context every token, as the model card's code does);
3. the cost of ball pruning: training step and cached generation with ``use_balls`` off and on.
"""

from __future__ import annotations

import argparse

import torch

import attnlab
from attnlab.bench.timing import time_fn


def build(family: str, args: argparse.Namespace, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = attnlab.create_model(
        family, None, vocab_size=256, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
        block_size=max(args.contexts) + args.new_tokens, dropout=0.0, **overrides,
    )
    return model.to(args.device)


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call (the ``attnlab bench`` timer)."""
    return time_fn(lambda _: fn(), device=torch.device(device), warmup=1, repeats=repeats).median


def saved_activation_mb(model: torch.nn.Module, x: torch.Tensor) -> float:
    """MB of distinct tensor storages autograd keeps for the backward pass of one training forward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x, labels=x).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values()) / 2**20


def train_row(name: str, model: torch.nn.Module, args: argparse.Namespace) -> str:
    model.train()
    x = torch.randint(0, 256, (args.batch, args.seq), device=args.device)

    def step():
        model(x, labels=x).loss.backward()
        model.zero_grad(set_to_none=True)

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, args.device, args.repeats)
    peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if args.device.startswith("cuda") else "-"
    params = sum(p.numel() for p in model.parameters()) / 1e6
    tokens = args.batch * args.seq / seconds
    return (f"| {name} | {params:.2f} | {seconds * 1e3:.0f} | {tokens:,.0f} | "
            f"{saved_activation_mb(model, x):.0f} | {peak} |")


@torch.no_grad()
def generation_tokens_per_s(model: torch.nn.Module, context: int, use_cache: bool, args: argparse.Namespace) -> float:
    """Steady decoding rate after the prompt: (n − 1) / (time of n new tokens − time of 1), prefill excluded."""
    model.eval()
    prompt = torch.randint(0, 256, (1, context), device=args.device)

    def run(n: int) -> float:
        return timed(lambda: model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                            use_cache=use_cache, pad_token_id=0), args.device, args.repeats)

    return (args.new_tokens - 1) / max(run(args.new_tokens) - run(1), 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"d_model={args.d_model} layers={args.layers} heads={args.heads} batch={args.batch} seq={args.seq} "
          f"device={args.device} threads={torch.get_num_threads()}\n")

    print("### Training step (forward + backward)\n")
    print("| model | params (M) | ms/step | tokens/s | activations (MB) | peak (MB) |")
    print("|---|---|---|---|---|---|")
    print(train_row("gpt", build("gpt", args), args))
    print(train_row("moa (l2, no balls)", build("moa", args), args))
    print(train_row("moa (l2, balls)", build("moa", args, use_balls=True), args))

    print("\n### Generation, greedy, tokens/s after a prompt of N tokens\n")
    print("| model | " + " | ".join(f"N={n}" for n in args.contexts) + " |")
    print("|---|" + "---|" * len(args.contexts))
    gpt, moa = build("gpt", args), build("moa", args)
    for name, model, cache in (("gpt, KV cache", gpt, True), ("moa, cache", moa, True),
                               ("moa, recompute (no cache)", moa, False)):
        rates = [generation_tokens_per_s(model, n, cache, args) for n in args.contexts]
        print(f"| {name} | " + " | ".join(f"{r:.1f}" for r in rates) + " |")

    print("\n### Ball pruning cost\n")
    context = args.contexts[-1]
    print(f"| use_balls | ms/train step | cached generation tokens/s (N={context}) |")
    print("|---|---|---|")
    for balls in (False, True):
        model = build("moa", args, use_balls=balls).train()
        x = torch.randint(0, 256, (args.batch, args.seq), device=args.device)
        seconds = timed(lambda: model(x, labels=x).loss.backward(), args.device, args.repeats)
        rate = generation_tokens_per_s(model, context, True, args)
        print(f"| {balls} | {seconds * 1e3:.0f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
