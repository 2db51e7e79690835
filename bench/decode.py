"""Decoding-throughput benchmark (a benchmark, never a test): tokens/s of greedy decoding with the
family's cache against re-running the full forward, CART and Dense side by side, random weights.

    python -m bench.decode                                   # 1,024-token prompts, 256 new tokens (GPU)
    python -m bench.decode --device cpu --configs cart-d256-R6 dense-L7-d256 --context 256 --new-tokens 32

Each config decodes --new-tokens tokens after a --context-token prompt for --batch rows, the way
cart.generation.generate does: cached, the prompt in one forward_cached call (prefill) and then one
token per call; uncached, a full forward over the whole sequence per token. Every call is timed
on its own and the median step gives tokens/s (rows / median step), robust to a busy machine;
the total (prefill included) is printed too. Also the cache's size per token of context: from the
config (`kv_cache_values_per_token`) and as allocated. Config names as pipeline.bench's, plus a -X
suffix for CART's unfreeze_kv ablation (its anchor cached per loop).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from cart import build_model
from cart.io import atomic_write_json
from pipeline.bench import parse_config

DEFAULT_CONFIGS = ("cart-d1024-R6", "cart-d1024-R6-X", "dense-L7-d1024", "dense-L12-d1024")


def config_of(name: str, vocab: int):
    if name.endswith("-X"):
        return parse_config(name[:-2], vocab).replace(unfreeze_kv=True)
    return parse_config(name, vocab)


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


@torch.no_grad()
def decode(model, prompts: torch.Tensor, new_tokens: int, use_cache: bool) -> tuple[float, list[float]]:
    """Greedy decoding; (prefill seconds, seconds of each later step)."""
    device, steps = prompts.device, []
    if use_cache:
        cache = model.new_cache(prompts.shape[0], prompts.shape[1] + new_tokens)
        logits, prefill = timed(lambda: model.forward_cached(prompts, cache), device)
        for _ in range(new_tokens - 1):
            nxt = logits[:, -1].argmax(dim=-1, keepdim=True)
            logits, dt = timed(lambda: model.forward_cached(nxt, cache), device)
            steps.append(dt)
    else:
        seq = prompts
        logits, prefill = timed(lambda: model(seq), device)
        for _ in range(new_tokens - 1):
            seq = torch.cat([seq, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
            logits, dt = timed(lambda: model(seq), device)
            steps.append(dt)
    return prefill, steps


def bench_one(name: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    cfg = config_of(name, args.vocab)
    torch.manual_seed(0)
    model = build_model(cfg).to(device=device, dtype=dtype).eval()
    prompts = torch.randint(0, cfg.vocab_size, (args.batch, args.context), device=device)
    for use_cache in (True, False):  # warm-up at the timed shapes: CUDA context, kernels, allocator
        decode(model, prompts, 4, use_cache)
    row = {"config": name, "context": args.context, "new_tokens": args.new_tokens, "batch": args.batch,
           "dtype": str(dtype).removeprefix("torch."), "device": str(device),
           "cache_bytes_per_token": cfg.kv_cache_values_per_token() * torch.finfo(dtype).bits // 8}
    for use_cache in (True, False):
        prefill, steps = decode(model, prompts, args.new_tokens, use_cache)
        step = statistics.median(steps)
        row["cached" if use_cache else "uncached"] = {
            "prefill_s": prefill, "median_step_s": step, "tokens_per_s": args.batch / step,
            "tokens_per_s_with_prefill": args.batch * args.new_tokens / (prefill + sum(steps) + step)}
    with torch.no_grad():
        cache = model.new_cache(args.batch, args.context)
        model.forward_cached(prompts, cache)
        row["cache_bytes_per_token_allocated"] = cache.nbytes() // args.context
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
    print(f"{'config':<18} {'cache B/token':>13} {'cached tok/s':>13} {'uncached tok/s':>15} {'ratio':>7} "
          f"{'with prefill: cached':>21} {'uncached':>9}")
    for name in args.configs:
        r = bench_one(name, args, device, dtype)
        rows.append(r)
        c, u = r["cached"], r["uncached"]
        print(f"{name:<18} {r['cache_bytes_per_token']:>13,} {c['tokens_per_s']:>13.1f} {u['tokens_per_s']:>15.1f} "
              f"{r['cached_over_uncached']:>6.1f}x {c['tokens_per_s_with_prefill']:>21.1f} "
              f"{u['tokens_per_s_with_prefill']:>9.1f}", flush=True)
    if args.out:
        atomic_write_json(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
