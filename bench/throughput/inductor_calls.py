"""What Inductor's code for one compiled training step calls besides the kernels it generates.

    python -m bench.throughput.inductor_calls --config cart-d256-R6            # on the GPU (bash bench/gpu/perf.sh inductor_calls)
    python -m bench.throughput.inductor_calls --config cart-d256-R6 --device cpu --micro-batch 2 --vocab 512

Compiles the model and its loss as the training stage does (cart.training.step.make_loss_fn), runs one forward and
backward into a fresh Inductor cache, and lists every call in the generated modules to an
extern kernel (cuBLAS matmuls, attention) or to an aten op (a fallback), with how often it is called: the
kernels of a profile that Inductor did not write come from these. Prints the table last, so a device
call's output tail holds it.
"""
import argparse
import collections
import glob
import os
import re
import tempfile

# a call as Inductor's wrapper code writes it: an aten op with its overload, or an extern kernel, then "(";
# its comments (`call_function[target=torch.ops.aten.sum.default](...)`) and assertion strings never match
_CALL = re.compile(r"\b((?:torch\.ops\.)?aten\.\w+\.\w+|extern_kernels\.\w+)\(")


def calls_in(source: str) -> collections.Counter:
    """The extern-kernel and aten calls in one Inductor output module (its generated kernels are source
    strings of Triton or C++, which call neither)."""
    return collections.Counter(m.removeprefix("torch.ops.") for m in _CALL.findall(source))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cart-d256-R6")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32_000)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    cache = tempfile.mkdtemp(prefix="inductor_calls_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # before torch compiles anything: only this step's modules land here
    import torch
    from cart import build_model
    from cart.device import autocast, resolve_dtype
    from cart.training.step import make_loss_fn
    from bench.throughput.train_step import parse_config
    device = torch.device(args.device)
    model = build_model(parse_config(args.config, args.vocab)).to(device)
    loss_fn = make_loss_fn(model, True)
    x = torch.randint(0, args.vocab, (args.micro_batch, args.seq_len), device=device)
    with autocast(device, resolve_dtype("auto", device)):
        loss = loss_fn(x, torch.roll(x, -1, dims=1))
    loss.backward()
    total = collections.Counter()
    for path in sorted(glob.glob(f"{cache}/**/*.py", recursive=True)):
        with open(path) as f:
            found = calls_in(f.read())
        if found:
            print(f"{os.path.relpath(path, cache)}: {sum(found.values())} calls")
            total.update(found)
    print(f"\n{args.config} on {device} ({args.micro_batch} x {args.seq_len}), forward + backward: calls outside "
          f"Inductor's own kernels")
    for name, n in total.most_common():
        print(f"{n:6d}  {name}")


if __name__ == "__main__":
    main()
