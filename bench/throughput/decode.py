"""Decoding-throughput benchmark (a benchmark, never a test): tokens/s of greedy decoding with the
family's cache against re-running the full forward, CART and Dense side by side, random weights.

    python -m bench.throughput.decode                                   # 1,024-token prompts, 256 new tokens (GPU)
    python -m bench.throughput.decode --device cpu --configs cart-d256-R6 dense-L7-d256 --context 256 --new-tokens 32

Each config decodes --new-tokens tokens after a --context-token prompt for --batch rows, the way
cart.generation.generate does, three ways: `cached`, the prompt in one forward_cached call (prefill)
and then one token per call; `graph` (CUDA only), the same on a static cache with each one-token
call replayed from a CUDA graph (GraphedDecodeStep: what generate() does on a GPU); `graph_compiled`,
that step torch.compile'd before its capture; `uncached`, a full forward over the whole sequence per
token. Every call is timed on its own and the median step gives tokens/s (rows / median step),
robust to a busy machine;
the total (prefill included) is printed too. Every mode decodes once before it is timed: on a GPU
the first pass over new shapes is slow (the uncached forward and the dynamic cache meet a new
sequence length every step: 40-90 ms a step on an H200 where a seen shape takes 7 ms); its median
step is kept as `first_pass_median_step_s`. Also the cache's size per token of context: from the
config (`kv_cache_values_per_token`) and as allocated. Config names as bench.throughput.train_step's (cart/models/names.py),
where a -X word sets CART's unfreeze_kv ablation (its anchor cached per loop).
"""
from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from cart import build_model
from cart.generation import GraphedDecodeStep
from cart.io import atomic_write_json
from bench.throughput.train_step import parse_config

DEFAULT_CONFIGS = ("cart-d1024-R6", "cart-d1024-R6-X", "dense-L7-d1024", "dense-L12-d1024")


def config_of(name: str, vocab: int):
    """A config name of bench.throughput.train_step's (cart/models/names.py; -X: CART's unfreeze_kv)."""
    return parse_config(name, vocab)


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


MODES = ("cached", "graph", "graph_compiled", "uncached")


@torch.no_grad()
def decode(model, prompts: torch.Tensor, new_tokens: int, mode: str) -> tuple[float, list[float], torch.Tensor]:
    """Greedy decoding: (prefill seconds (graph: the capture included), seconds of each later step,
    the (B, new_tokens) tokens)."""
    device, steps, tokens = prompts.device, [], []
    if mode == "uncached":
        seq = prompts
        logits, prefill = timed(lambda: model(seq), device)
        step = None
    else:
        graph = mode.startswith("graph")
        cache = model.new_cache(prompts.shape[0], prompts.shape[1] + new_tokens, static=graph)

        def prefill_call():
            out = model.forward_cached(prompts, cache)
            return out, (GraphedDecodeStep(model, cache, compile=mode == "graph_compiled") if graph
                         else partial(model.forward_cached, cache=cache))
        (logits, step), prefill = timed(prefill_call, device)
    for _ in range(new_tokens - 1):
        tokens.append(logits[:, -1].argmax(dim=-1, keepdim=True))  # before a replay overwrites the logits
        if step is None:
            seq = torch.cat([seq, tokens[-1]], dim=1)
        logits, dt = timed(lambda: model(seq) if step is None else step(tokens[-1]), device)
        steps.append(dt)
    tokens.append(logits[:, -1].argmax(dim=-1, keepdim=True))
    return prefill, steps, torch.cat(tokens, dim=1)


def bench_one(name: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    cfg = config_of(name, args.vocab)
    torch.manual_seed(0)
    model = build_model(cfg).to(device=device, dtype=dtype).eval()
    prompts = torch.randint(0, cfg.vocab_size, (args.batch, args.context), device=device)
    modes = args.modes
    first = {}
    for mode in modes:  # warm-up: one whole decode per mode, so that the timed one sees no new shape
        first[mode] = statistics.median(decode(model, prompts, args.new_tokens, mode)[1])
    row = {"config": name, "context": args.context, "new_tokens": args.new_tokens, "batch": args.batch,
           "dtype": str(dtype).removeprefix("torch."), "device": str(device),
           "cache_bytes_per_token": cfg.kv_cache_values_per_token() * torch.finfo(dtype).bits // 8}
    for mode in modes:
        prefill, steps, _ = decode(model, prompts, args.new_tokens, mode)
        step = statistics.median(steps)
        row[mode] = {"first_pass_median_step_s": first[mode],
            "prefill_s": prefill, "median_step_s": step, "tokens_per_s": args.batch / step,
            "tokens_per_s_with_prefill": args.batch * args.new_tokens / (prefill + sum(steps) + step)}
    with torch.no_grad():
        cache = model.new_cache(args.batch, args.context)
        model.forward_cached(prompts, cache)
        row["cache_bytes_per_token_allocated"] = cache.nbytes() // args.context
    for mode in modes[:-1]:
        row[f"{mode}_over_uncached"] = row[mode]["tokens_per_s"] / row["uncached"]["tokens_per_s"]
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
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                    help="graph modes run on CUDA only; uncached, the reference of the ratios, always runs last")
    ap.add_argument("--out", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    rows = []
    # the modes this device runs (graph ones on CUDA only), uncached last: the reference of the ratios
    args.modes = modes = [m for m in args.modes if m != "uncached" and (not m.startswith("graph") or
                                                                        device.type == "cuda")] + ["uncached"]
    print(f"batch {args.batch}, {args.context}-token prompts, {args.new_tokens} new tokens, {dtype}, {device}; "
          f"tokens/s = rows / median step (with prefill: every token over the whole decode)")
    print(f"{'config':<18} {'cache B/token':>13} " + " ".join(f"{m + ' tok/s':>14}" for m in modes)
          + " " + " ".join(f"{m + '/uncached':>16}" for m in modes[:-1])
          + " " + " ".join(f"{m + ' w/ prefill':>19}" for m in modes))
    for name in args.configs:
        r = bench_one(name, args, device, dtype)
        rows.append(r)
        print(f"{name:<18} {r['cache_bytes_per_token']:>13,} "
              + " ".join(f"{r[m]['tokens_per_s']:>14.1f}" for m in modes) + " "
              + " ".join(f"{r[m + '_over_uncached']:>15.1f}x" for m in modes[:-1]) + " "
              + " ".join(f"{r[m]['tokens_per_s_with_prefill']:>19.1f}" for m in modes), flush=True)
    if args.out:
        atomic_write_json(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
