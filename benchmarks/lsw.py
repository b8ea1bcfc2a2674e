"""LSW Transformer benchmark: training throughput and activation memory vs the GPT baseline at equal
width/depth, and generation with a bounded XL memory vs a full KV cache at long contexts.

    python benchmarks/lsw.py [--d-model 256 --layers 4 --heads 4 --batch 8 --seq 256 --device cpu]

Activation memory is the bytes autograd saves for the backward pass (device-independent); on CUDA the peak
allocated memory is reported too. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import time

import torch

import attnlab


def saved_activation_bytes(step) -> int:
    """Bytes of the distinct tensors autograd keeps for backward while ``step()`` builds its graph."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    return sum(seen.values())


def train_row(name: str, model, args, memory: bool) -> str:
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), device=args.device)
    cache = model.make_cache() if memory else None

    def step():
        kwargs = dict(past_key_values=cache, use_cache=True) if memory else dict(use_cache=False)
        return model(ids, labels=ids, **kwargs).loss

    for _ in range(2):  # warm-up; with memory this also fills it to mem_len
        step().backward()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step().backward()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = f"{torch.cuda.max_memory_allocated() / 2**20:,.0f}" if args.device.startswith("cuda") else "-"
    activations = saved_activation_bytes(step) / 2**20
    tps = args.steps * args.batch * args.seq / elapsed
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return f"| {name} | {params:.2f} | {tps:,.0f} | {activations:,.1f} | {peak} |"


@torch.no_grad()
def generation_row(name: str, model, args) -> str:
    model.eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, args.context), device=args.device)
    cache = model.make_cache()
    start = time.perf_counter()
    out = model(prompt, past_key_values=cache, use_cache=True)
    prefill = time.perf_counter() - start
    token = out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(args.new_tokens):
        token = model(token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
    per_token = (time.perf_counter() - start) / args.new_tokens * 1e3
    kept = sum(k.numel() + v.numel() for k, v in zip(cache.keys, cache.values)) * 4 / 2**20
    return f"| {name} | {args.context} | {prefill:.2f} | {per_token:.2f} | {cache.keys[0].shape[2]:,} | {kept:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--context", type=int, default=2048, help="prompt length for the generation table")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--mem-len", type=int, default=256, help="XL memory of the bounded generation run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(True)
    size = dict(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, vocab_size=256,
                block_size=max(args.seq, args.context))

    def lsw(**overrides):
        return attnlab.create_model("lsw", None, **size, **overrides).to(args.device)

    print(f"## Training: batch {args.batch} × {args.seq} tokens, d_model {args.d_model}, {args.layers} layers, "
          f"{args.heads} heads, {args.device}\n")
    print("| model | params (M) | tokens/s | saved activations (MB) | CUDA peak (MB) |")
    print("|---|---|---|---|---|")
    print(train_row("gpt (GELU, learned pos)", attnlab.create_model("gpt", None, **size).to(args.device), args, False))
    print(train_row("gpt (SwiGLU 4·d, RoPE, RMSNorm)", attnlab.create_model(
        "gpt", None, **size, ffn="swiglu", d_ff=4 * args.d_model, pos="rope", norm="rmsnorm", bias=False
    ).to(args.device), args, False))
    print(train_row("lsw, no memory, 0 registers", lsw(mem_len=0, n_registers=0), args, False))
    print(train_row("lsw, no memory, 4 registers", lsw(mem_len=0), args, False))
    print(train_row(f"lsw, XL memory {args.seq}, 4 registers", lsw(mem_len=args.seq), args, True))
    print(train_row(f"lsw, XL memory {args.seq} + SimCTG", lsw(mem_len=args.seq, simctg_weight=1.0), args, True))

    print(f"\n## Generation: {args.context}-token prompt, then {args.new_tokens} greedy tokens, batch 1\n")
    print("| model | context | prefill (s) | ms/token | keys kept per layer | cache (MB, fp32) |")
    print("|---|---|---|---|---|---|")
    print(generation_row("lsw, full KV cache (mem_len 0)", lsw(mem_len=0), args))
    print(generation_row(f"lsw, XL memory {args.mem_len}", lsw(mem_len=args.mem_len), args))


if __name__ == "__main__":
    main()
