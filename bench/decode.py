"""Decoding-throughput benchmark (a benchmark, never a test): tokens/s of cart.generate, cached
against uncached, for CART and Dense side by side, random weights and prompts, greedy.

    python -m bench.decode                                   # 1,024-token prompts, 256 new tokens (GPU)
    python -m bench.decode --device cpu --configs cart-d256-R6 dense-L7-d256 --context 256 --new-tokens 32

Each config generates --new-tokens tokens after a --context-token prompt for --batch rows, once
with the family's cache (one token per step) and once re-running the full forward every step;
the prompt's own forward (prefill) is included in both. Prints tokens/s (new tokens x rows /
seconds), cached/uncached, and the cache's size per token of context, from the config
(`kv_cache_values_per_token`) and as allocated. Config names as pipeline.bench's, plus a -X
suffix for CART's unfreeze_kv ablation (its anchor cached per loop).
"""
from __future__ import annotations

import argparse
import time

import torch

from cart import build_model
from cart.generation import generate
from cart.io import atomic_write_json
from pipeline.bench import parse_config

DEFAULT_CONFIGS = ("cart-d1024-R6", "cart-d1024-R6-X", "dense-L7-d1024", "dense-L12-d1024")


def config_of(name: str, vocab: int):
    if name.endswith("-X"):
        return parse_config(name[:-2], vocab).replace(unfreeze_kv=True)
    return parse_config(name, vocab)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_generate(model, prompts: torch.Tensor, new_tokens: int, use_cache: bool) -> tuple[float, int]:
    sync(prompts.device)
    t0 = time.perf_counter()
    out = generate(model, prompts, new_tokens, temperature=0, use_cache=use_cache)
    sync(prompts.device)
    return time.perf_counter() - t0, out.shape[1] - prompts.shape[1]


def bench_one(name: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    cfg = config_of(name, args.vocab)
    torch.manual_seed(0)
    model = build_model(cfg).to(device=device, dtype=dtype).eval()
    prompts = torch.randint(0, cfg.vocab_size, (args.batch, args.context), device=device)
    timed_generate(model, prompts[:, :16], 4, use_cache=True)  # warm-up: kernels, allocator
    row = {"config": name, "context": args.context, "new_tokens": args.new_tokens, "batch": args.batch,
           "dtype": str(dtype).removeprefix("torch."), "device": str(device),
           "cache_bytes_per_token": cfg.kv_cache_values_per_token() * torch.finfo(dtype).bits // 8}
    with torch.no_grad():
        cache = model.new_cache(args.batch, args.context)
        model.forward_cached(prompts, cache)
        row["cache_bytes_per_token_allocated"] = cache.nbytes() // args.context
    for use_cache in (True, False):
        seconds, n = timed_generate(model, prompts, args.new_tokens, use_cache)
        row["cached" if use_cache else "uncached"] = {"seconds": seconds, "tokens_per_s": n * args.batch / seconds}
    row["cached_over_uncached"] = row["cached"]["tokens_per_s"] / row["uncached"]["tokens_per_s"]
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    ap.add_argument("--context", type=int, default=1024, help="prompt tokens per row")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=32_000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="default: bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--out", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    rows = []
    print(f"{'config':<18} {'cache B/token':>13} {'cached tok/s':>13} {'uncached tok/s':>15} {'ratio':>7}")
    for name in args.configs:
        r = bench_one(name, args, device, dtype)
        rows.append(r)
        print(f"{name:<18} {r['cache_bytes_per_token']:>13,} {r['cached']['tokens_per_s']:>13.1f} "
              f"{r['uncached']['tokens_per_s']:>15.1f} {r['cached_over_uncached']:>6.1f}x", flush=True)
    if args.out:
        atomic_write_json(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
