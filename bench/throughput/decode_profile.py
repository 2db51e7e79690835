"""Why eager decoding is slow on a GPU, in two measurements (a diagnostic, never a test; the H200
numbers are in metrics/bench_gpu.json under round4_h200):

    python -m bench.throughput.decode_profile

1. The cost of a new shape: a bf16 GEMM and a causal SDPA the first time a sequence length is seen
   against the same call again (cuDNN attention builds a plan per new length; the uncached forward
   and the growing dynamic cache meet a new length at every decoding step).
2. Where a CART d1024 R6 decoding step goes on a static cache, eager, shapes already seen
   (torch.profiler, 5 steps), at batch 1 and 32.
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench.throughput.decode import config_of
from cart import build_model


def first_time_vs_seen(device: torch.device) -> None:
    w = torch.randn(1024, 1024, device=device, dtype=torch.bfloat16)

    def gemm_ms(m: int) -> float:
        x = torch.randn(m, 1024, device=device, dtype=torch.bfloat16)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        x @ w
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3
    gemm_ms(8)
    new = sorted(gemm_ms(m) for m in range(1024, 1064))
    seen = sorted(gemm_ms(m) for m in range(1024, 1064))
    print(f"GEMM (M, 1024) @ (1024, 1024), 40 values of M: new M median {new[20]:.3f} ms (max {new[-1]:.3f}), "
          f"seen M median {seen[20]:.3f} ms")
    for t in (2000, 2001, 2000):
        qkv = [torch.randn(1, 16, t, 64, device=device, dtype=torch.bfloat16) for _ in range(3)]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.nn.functional.scaled_dot_product_attention(*qkv, is_causal=True)
        torch.cuda.synchronize()
        print(f"causal SDPA at T={t}: {(time.perf_counter() - t0) * 1e3:.2f} ms")


@torch.no_grad()
def step_profile(config: str, batch: int, context: int, device: torch.device) -> None:
    torch.manual_seed(0)
    model = build_model(config_of(config, 32_000)).to(device, torch.bfloat16).eval()
    prompts = torch.randint(0, 32_000, (batch, context), device=device)
    cache = model.new_cache(batch, context + 64, static=True)
    model.forward_cached(prompts, cache)
    token = prompts[:, -1:]
    for _ in range(10):
        model.forward_cached(token, cache)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            model.forward_cached(token, cache)
        torch.cuda.synchronize()
    print(f"{config}, batch {batch}, {context}-token context: 5 eager steps on a static cache")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=60))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cart-d1024-R6")
    ap.add_argument("--context", type=int, default=1024)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench.throughput.decode_profile: needs a CUDA device")
    device = torch.device("cuda")
    first_time_vs_seen(device)
    for batch in (1, 32):
        step_profile(args.config, batch, args.context, device)


if __name__ == "__main__":
    main()
