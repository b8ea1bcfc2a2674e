"""DAT benchmark: training-step time and peak memory vs sequence length.

Rows: the GPT baseline (sa=8, ra=0), DAT (sa=4, ra=4) with the fused and the direct relational form, and
the authors' ``dual-attention`` 0.0.7 ``DualAttnTransformerLM`` at the same configuration (skipped if the
package is not installed) — ours is converted from theirs, so both compute the same function.

    python benchmarks/dat.py [--seq 128 256 512] [--d-model 256] [--layers 4] [--batch 4] [--steps 5]

Each measurement runs in a fresh process (peak memory = growth of max RSS over the training steps on CPU,
``torch.cuda.max_memory_allocated`` on GPU). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

VOCAB = 4096


def authors_config(args: argparse.Namespace, seq: int) -> dict:
    heads = 4
    return dict(
        vocab_size=VOCAB, d_model=args.d_model, n_layers=args.layers, n_heads_sa=heads, n_heads_ra=heads,
        symbol_retrieval_kwargs=dict(d_model=args.d_model, n_symbols=args.d_model, n_heads=heads),
        dff=None, dropout_rate=0.0, activation="gelu", norm_first=True, max_block_size=seq,
        sa_kwargs=dict(n_kv_heads=None), ra_kwargs=dict(n_relations=None, rel_activation="identity"),
        symbol_retrieval="symbolic_attention", pos_enc_type="RoPE", bias=False,
    )


def build(kind: str, args: argparse.Namespace, seq: int):
    """(model, step function taking a batch) for one row of the table."""
    import attnlab

    if kind == "gpt":
        model = attnlab.create_model("gpt", None, vocab_size=VOCAB, d_model=args.d_model, n_layers=args.layers,
                                     n_heads=8, block_size=seq, pos="rope", bias=False)
        return model, lambda x: model(x, labels=x).loss
    from dual_attention.language_models import DualAttnTransformerLM

    from attnlab.models.dat.convert import convert_authors_state_dict

    theirs = DualAttnTransformerLM(**authors_config(args, seq))
    if kind == "authors":
        return theirs, lambda x: theirs(x[:, :-1], x[:, 1:])[1]
    model = convert_authors_state_dict(authors_config(args, seq), theirs.state_dict())
    for layer in model.model.layers:
        layer.mixer.relational.form = kind.removeprefix("dat-")
    return model, lambda x: model(x, labels=x).loss


def measure(kind: str, seq: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, loss_of = build(kind, args, seq)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, VOCAB, (args.batch, seq), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step():
        with autocast:
            loss = loss_of(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up, allocates optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {"ms": 1000 * (time.perf_counter() - start) / args.steps, "peak_mb": peak,
            "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "SEQ"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args)))
        return
    try:
        import dual_attention  # noqa: F401
        kinds = ["gpt", "dat-fused", "dat-direct", "authors"]
    except ImportError:
        sys.exit("benchmarks/dat.py builds DAT from the authors' package: pip install --no-deps dual-attention==0.0.7 einops")
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"d_model={args.d_model}, layers={args.layers}, batch={args.batch}, {args.steps} timed steps, "
          f"{'bf16' if args.bf16 else 'fp32'}, {device}\n")
    print("| model | heads | seq | ms / step | peak MB | params | authors / ours |")
    print("|---|---|---|---|---|---|---|")
    names = {"gpt": ("GPT baseline", "sa=8 ra=0"), "dat-fused": ("DAT fused (ours)", "sa=4 ra=4"),
             "dat-direct": ("DAT direct (ours)", "sa=4 ra=4"), "authors": ("DAT dual-attention 0.0.7", "sa=4 ra=4")}
    for seq in args.seq:
        results = {}
        for kind in kinds:
            cmd = [sys.executable, __file__, "--one", kind, str(seq)] + sys.argv[1:]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[kind] = json.loads(out.strip().splitlines()[-1])
        best = min(results["dat-fused"]["ms"], results["dat-direct"]["ms"])
        for kind, r in results.items():
            ratio = f"{results['authors']['ms'] / r['ms']:.2f}x" if kind.startswith("dat") else ""
            name, heads = names[kind]
            mark = " *" if kind.startswith("dat") and r["ms"] == best else ""
            print(f"| {name}{mark} | {heads} | {seq} | {r['ms']:.1f} | {r['peak_mb']:.0f} | {r['params']:,} | {ratio} |")
    print("\n`*` = the faster of our two relational forms at that length.")


if __name__ == "__main__":
    main()
