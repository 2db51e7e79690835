"""Cross-entropy over the 32K vocabulary, forward + backward, formulation by formulation (a GPU
diagnostic, never a test):

    python -m bench.throughput.ce_kernels [--rows 32768] [--vocab 32000] [--iters 20]

A d256 profile (docs/performance.md) put the fp32 cross-entropy at 14% of a step: its forward kernel reads the
2.1 GB of bf16 logits in 1.43 ms (~1.5 TB/s of the H200's 4.8), its backward reads them again and
writes their gradient in 1.23 ms. Each formulation below takes the same bf16 logits (a leaf, as the LM
head's output is to the loss) and targets with some IGNORE_INDEX rows, and is timed for forward +
backward under torch.compile (CUDA events, median), its loss and gradient compared with the reference:
F.cross_entropy on the fp32 logits (the plain formulation), `lm_loss` (this checkout's), the same loss
as logsumexp minus the target's logit with autograd's backward, the reference compiled without split
reductions, and Liger's cross-entropy kernel when liger-kernel is installed.
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from cart.models.layers import IGNORE_INDEX, lm_loss


def reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)


def logsumexp_form(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The same loss written as logsumexp minus the target's logit, autograd's own backward."""
    valid = targets != IGNORE_INDEX
    picked = logits.gather(-1, torch.where(valid, targets, 0)[:, None]).squeeze(-1).float()
    per_row = torch.logsumexp(logits.float(), dim=-1) - picked
    return torch.where(valid, per_row, 0.0).sum() / valid.sum()


FORMS = {"reference": reference, "lm_loss": lm_loss, "logsumexp": logsumexp_form}


def liger(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_cross_entropy
    return liger_cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)


def time_ms(fn, logits: torch.Tensor, targets: torch.Tensor, iters: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    def once():
        x = logits.detach().clone().requires_grad_(True)  # Liger writes its gradient into its input
        loss = fn(x, targets)
        loss.backward()
        return loss.detach(), x.grad
    for _ in range(3):
        loss, grad = once()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        x = logits.detach().clone().requires_grad_(True)
        start.record()
        fn(x, targets).backward()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), loss, grad


def top_kernels(fn, logits: torch.Tensor, targets: torch.Tensor, n: int = 4) -> list[tuple[str, float]]:
    """The n longest GPU kernels of one forward + backward: (name, ms)."""
    from torch.profiler import ProfilerActivity, profile
    x = logits.detach().clone().requires_grad_(True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(x, targets).backward()
        torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)
    return [(e.key[:90], round(e.device_time_total / 1e3, 3)) for e in events[:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=32768)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    logits = (torch.randn(args.rows, args.vocab, device="cuda") * 3).to(torch.bfloat16)
    targets = torch.randint(0, args.vocab, (args.rows,), device="cuda")
    targets[::17] = IGNORE_INDEX
    clone_ms = time_ms(lambda x, t: (x * 1).sum(), logits, targets, args.iters)[0]
    rows, ref = [], None
    candidates = {name: torch.compile(fn) for name, fn in FORMS.items()}
    candidates["reference_no_split"] = torch.compile(reference, options={"split_reductions": False})
    candidates["reference_eager"] = reference
    try:
        import liger_kernel  # noqa: F401
        candidates["liger"] = liger
    except ImportError:
        pass
    for name, fn in candidates.items():
        try:
            ms, loss, grad = time_ms(fn, logits, targets, args.iters)
        except Exception as exc:  # a diagnostic: report the failure and go on
            print(f"{name}: failed: {type(exc).__name__}: {str(exc)[:300]}")
            rows.append({"form": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            continue
        if ref is None:
            ref = (loss, grad.float())
        row = {"form": name, "fwd_bwd_ms": round(ms, 3),
               "loss_abs_diff": float((loss - ref[0]).abs()),
               "grad_max_abs_diff": float((grad.float() - ref[1]).abs().max()),
               "grad_max_abs": float(ref[1].abs().max()),
               "top_kernels": top_kernels(fn, logits, targets)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    gb = logits.numel() * logits.element_size() / 1e9
    print(f"logits {gb:.2f} GB bf16; a read-and-write pass (x * 1).sum() with backward: {clone_ms:.3f} ms")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": args.rows, "vocab": args.vocab, "logits_gb": gb, "baseline_pass_ms": clone_ms,
                       "forms": rows}, f, indent=1)


if __name__ == "__main__":
    main()
