"""Training-throughput benchmark, outside the DVC DAG: CART and Dense side by side, one GPU, one run.

    python -m bench.throughput.train_step                      # the full table (GPU)
    python -m bench.throughput.train_step --configs cart-d256-R6 dense-L7 --steps 5 --device cpu   # a quick look

Each config trains for --steps optimizer steps after --warmup steps (compilation happens there)
on random tokens already on the device, through the same `train_step` and optimizer code as the
training stage. Prints tokens/s, MFU in the paper's accounting (6 x effective params x tokens/s /
peak), MFU counting the real FLOPs (attention and LM head included), peak memory, and CART/Dense.

Sampled recurrence depth (cart/loop_sampling.py), each CART config at its R as the mean:

    python -m bench.throughput.train_step --configs cart-d1024-R6 --loop-sampling uniform poisson_lognormal --steps 100

adds, per config, a fixed-R row compiled one iteration at a time (as sampled training compiles)
and a row per scheme (`uniform` = U{1..2R-1}, `poisson_lognormal` = Huginn's with sigma 0.5 and
no clamp; or spelled out, `uniform:r_min=2,r_max=10`, `poisson_lognormal:sigma=0.5,r_max=16`),
and prints, against the default fixed-R row: the graphs Dynamo compiled (in all, and during the
timed steps), the frames it gave up on (eager fallbacks), the mean R of the timed steps, the
training FLOP/s achieved (FLOPs at each step's own R) and their cost against fixed R at the same
mean R (1 - FLOP/s sampled / FLOP/s fixed). `--sampled-compile whole` benches the sampled rows
compiled the default way instead (one unrolled graph per R), to see what compile_by_iteration avoids.

Loss parity of a lever that changes numerics (300 steps on real data within 0.5% of the bf16
baseline's final loss): `--data tokens.bin` trains on consecutive windows of a raw token file (uint16,
as the bins stage writes, or --data-dtype uint32) instead of one random batch, the same windows for
every lever, and each row gets `loss_last20` (the mean loss of the last 20 steps) and
`loss_vs_base` (its ratio to the base row's):

    python -m bench.throughput.train_step --configs cart-d1024-R6 --levers base fp8 --steps 300 --data wiki.bin

Sweep packing (several small runs on one GPU at once): start N processes with `--barrier DIR,N`;
each waits after its warm-up until all N have compiled, so their timed steps overlap, and the
sweep's throughput is the sum of their tokens/s (bench/gpu/perf.sh pack).

A run of the DAG benched as its stage trains it: a config named `<group>/<run>` (e.g.
`stage1/d256-P2-R2`) is that run's model and training settings (optimizer, compile mode, precision)
from --params, so `base` is the run's own step and a lever changes only itself (bench/gpu/stage1.sh
bench: Stage 1's steps one run at a time, 8-bit against fused AdamW).

A sweep measured over several calls (the 12 configs take longer than one 10-minute device call):
`--project a.json b.json` reads the rows of earlier --out files and prints the projection of each
lever they cover; it benches nothing.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import time

import numpy as np
import torch
from torch._dynamo.utils import counters

from cart import CARTConfig, DenseConfig, build_model, count_params, mfu, peak_flops_for, train_flops_per_token
from cart.experiments import RunSpec, TrainSettings, resolve_run
from cart.models.names import config_from_name, config_name, parse_config_name
from cart.loop_sampling import LoopSampling
from cart.io import atomic_write_json
from cart.params import build, load_params, section
from cart.device import resolve_dtype
from cart.training.step import CUDA_GRAPH_MODES, make_loss_fn, make_optimizer, to_float8, train_step

# Stage 2's CART grid at P=6 and the Dense baselines matching CART d1024's stored and effective parameters
DEFAULT_CONFIGS = ([config_name("cart", d_model=d, n_prelude=6, n_loops=r) for d in (256, 512, 768, 1024)
                    for r in (6, 8, 10)] + [config_name("dense", d_model=1024, n_layers=n) for n in (7, 12)])
BENCH_FAMILIES = ("cart", "dense")


def parse_config(name: str, vocab: int, params: dict | None = None) -> CARTConfig | DenseConfig | RunSpec:
    """A CART or Dense config name (cart/models/names.py): cart-d<d>-R<R>[-P<P>] (P defaults to 6) or
    dense-L<layers>[-d<d>] (d defaults to 1024), words in any order; -X adds CART's unfreeze_kv. Or a
    run of the DAG, `<group>/<run>`: its spec from `params` (model and training settings)."""
    if "/" in name:
        group, _, run = name.partition("/")
        try:
            spec = resolve_run(params, group, run, vocab)
        except (KeyError, ValueError) as e:
            raise ValueError(f"--configs {name}: {e}") from None
        if not isinstance(spec.model, (CARTConfig, DenseConfig)):
            raise ValueError(f"--configs {name}: a {type(spec.model).arch} run; the bench takes CART and Dense")
        return spec
    parse_config_name(name, BENCH_FAMILIES)  # the families benched here, else a ValueError naming their forms
    return config_from_name(name, vocab_size=vocab)


def row_settings(entry, train: TrainSettings, args, device: torch.device):
    """(config, training settings, compile mode, run id) of one --configs entry: a config name benches
    with the bench's settings and --compile-mode; a run with its own training settings and compile
    mode (--optimizer and --compile-mode, when given, still win; off CUDA the optimizer is AdamW)."""
    if not isinstance(entry, RunSpec):
        return entry, train, args.compile_mode, None
    t = entry.train
    t = dataclasses.replace(t, optimizer=args.optimizer or (t.optimizer if device.type == "cuda" else "adamw"),
                            loop_sampling=LoopSampling(), backprop_loops=args.backprop_loops)
    mode = args.compile_mode or (None if t.compile_mode == "default" else t.compile_mode)
    return entry.model, t, mode, entry.run_id


def parse_loop_sampling(spec: str, n_loops: int) -> LoopSampling:
    """`uniform` (U{1..2R-1}), `poisson_lognormal` (sigma 0.5, no clamp), or `<scheme>:key=value,...`."""
    scheme, _, rest = spec.partition(":")
    defaults = {"uniform": {"r_min": 1, "r_max": 2 * n_loops - 1}, "poisson_lognormal": {"sigma": 0.5}}
    if scheme not in defaults:
        raise ValueError(f"--loop-sampling {spec!r}: scheme must be one of {list(defaults)}")
    fields = defaults[scheme] if not rest else {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in ("r_min", "r_max", "sigma") or not value:
            raise ValueError(f"--loop-sampling {spec!r}: expected key=value with key r_min, r_max or sigma")
        fields[key] = float(value) if key == "sigma" else int(value)
    return LoopSampling(scheme=scheme, **fields)


def bench_one(cfg, train: TrainSettings, micro_batch: int, grad_accum: int, seq_len: int, steps: int,
              warmup: int, compile: bool, device: torch.device, peak: float | None,
              compile_mode: str | None = None, profile: bool = False, compile_scope: str = "model",
              loop_sampling: LoopSampling = LoopSampling(), by_iteration: bool = False, lever: str = "base",
              real: list | None = None, barrier: tuple[str, int] | None = None) -> dict:
    """One config's row. `loop_sampling` draws each step's R (mean: cfg.n_loops) as training does
    (seed 0); `by_iteration` compiles the CART loop one iteration at a time (compile_by_iteration);
    `lever` base or LEVERS joined by '+' (what it changes against the training stage's step); `real`: each
    step's micro-batches of real tokens (`real_batches`, made once for every row), not one random batch; `barrier`
    (dir, n): after the warm-up, wait until n processes have reached it (sweep packing)."""
    torch._dynamo.reset()  # a fresh compile per config: past 8 graphs Dynamo would fall back to eager
    counters.clear()
    levers = parse_lever(lever)
    compile_mode = lever_compile_mode(levers, compile_mode)
    if "fused_adamw" in levers:
        train = dataclasses.replace(train, optimizer="adamw")
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    if "fp8" in levers:
        to_float8(model, device)
    if compile and by_iteration and hasattr(model, "compile_by_iteration"):  # a model without a loop compiles whole
        model.compile_by_iteration()
    # each step's R and forward kwargs, as the training loop makes them (Trainer._loop_kwargs)
    looped = isinstance(cfg, CARTConfig)
    rs = [loop_sampling.sample(cfg.n_loops, 0, i) for i in range(warmup + steps)] if looped else []
    step_kwargs = [({"n_loops": r} if loop_sampling.varies else {})
                   | ({"backprop_loops": train.backprop_loops} if looped and train.backprop_loops else {})
                   for r in rs or [None] * (warmup + steps)]
    opt = make_optimizer(model, train, cfg.d_model, device)
    if compile and compile_scope == "blocks":
        # each layer compiled on its own: the shared core is one small graph called R times,
        # against the default of one unrolled graph for the whole model and loss
        for block in [*getattr(model, "prelude", []), *getattr(model, "core", []), *getattr(model, "layers", [])] \
                + ([model.coda] if hasattr(model, "coda") else []):
            block.compile(mode=compile_mode)
    loss_fn = make_bench_loss_fn(model, levers, compile and compile_scope == "model", compile_mode)
    params = [p for p in model.parameters() if p.requires_grad]
    graphed = compile and compile_mode in CUDA_GRAPH_MODES
    dtype = resolve_dtype(train.dtype, device)
    if real is None:  # one batch of random tokens for every step
        g = torch.Generator(device=device).manual_seed(0)
        xs = [torch.randint(0, cfg.vocab_size, (micro_batch, seq_len), device=device, generator=g)
              for _ in range(grad_accum)]
        step_batches = [[(x, torch.roll(x, -1, dims=1)) for x in xs]] * (warmup + steps)
    else:
        step_batches = real
    losses = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            compile_s = time.perf_counter() - t0
            if barrier:
                wait_for_all(*barrier)
            t0 = time.perf_counter()
            graphs_before_timing = counters["stats"]["unique_graphs"]
        loss_sum, grad_norm = train_step(loss_fn, step_batches[i], params, train.grad_clip, device, dtype,
                                         forward_kwargs=step_kwargs[i], graphed=graphed)
        losses.append(loss_sum)  # device tensors: read once, after timing
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    dt = time.perf_counter() - t0
    if profile:
        _profile_steps(loss_fn, step_batches[-1], params, opt, train, device, dtype, graphed)
    tok_s = steps * grad_accum * micro_batch * seq_len / dt
    counts = count_params(cfg)
    # the real FLOPs at each timed step's own R
    flops_per_token = (sum(train_flops_per_token(cfg.replace(n_loops=r), seq_len) for r in rs[warmup:]) / steps
                       if looped else train_flops_per_token(cfg, seq_len))
    return {
        "model": _label(cfg), "lever": lever, "optimizer": train.optimizer,
        "compile_mode": (compile_mode or "default") if compile else "off", "batch": f"{micro_batch}x{grad_accum}x{seq_len}", "tokens_per_s": tok_s,
        "mfu_paper": mfu(cfg, tok_s, peak) if peak else None,
        "mfu_real": flops_per_token * tok_s / peak if peak else None,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "stored_m": counts["stored"] / 1e6, "effective_m": counts["effective"] / 1e6,
        "warmup_s": compile_s, "loss": (loss_sum / grad_accum).item(),
        "loss_last20": (torch.stack(losses[-20:]).mean() / grad_accum).item(),
        "data": "random" if real is None else "real",
        "loop_sampling": _sampling_label(loop_sampling), "compile_by_iteration": compile and by_iteration and looped,
        "mean_r": sum(rs[warmup:]) / steps if looped else None, "train_tflops": flops_per_token * tok_s / 1e12,
        "graphs": counters["stats"]["unique_graphs"],
        "graphs_in_timing": counters["stats"]["unique_graphs"] - graphs_before_timing,
        "eager_fallbacks": counters["frames"]["total"] - counters["frames"]["ok"],
    }


# Speed levers benched against the training stage's step ("base"), one row each; several joined by "+"
# make one row with all of them (graphs+fused_adamw), so combinations are measured, not multiplied:
LEVERS = {
    "graphs": "torch.compile mode reduce-overhead: CUDA graphs over the compiled forward and backward "
              "(train.compile_mode: reduce-overhead); same kernels, same numerics",
    "autotune": "torch.compile mode max-autotune-no-cudagraphs (with graphs: max-autotune): Inductor times Triton "
                "GEMM templates, whose epilogues can take in the elementwise ops after them, against cuBLAS for "
                "each matmul shape; same math, minutes of compile",
    "fused_adamw": "torch's fused AdamW (multi-tensor, a few launches a step) instead of the benched optimizer "
                   "(train.optimizer: adamw)",
    "fused_loss": "Liger's fused linear + cross-entropy (liger-kernel): the LM head and the loss in chunks, never "
                  "the full (tokens x vocab) logits; run eagerly after the compiled model (Dynamo cannot trace it)",
    "cce": "Apple's Cut Cross-Entropy (cut-cross-entropy): the LM head's matmul and the loss in blockwise Triton "
           "kernels that never write the logits; the backward skips blocks whose softmax is below the library's "
           "default filter (bf16 eps / 32), so its speed depends on the data and its numerics need --data parity",
    "cce_exact": "cce without the gradient filter (filter_eps=None): every logit's gradient, speed independent of "
                 "the tokens",
    "fp8": "torchao's float8 training of every nn.Linear with dims divisible by 16 (the tied LM head is F.linear "
           "on the embedding, so it stays bf16); MFU still against the bf16 peak (train.fp8)",
}
# levers that replace the model's LM head + cross-entropy: at most one a row
HEAD_LOSS_LEVERS = ("fused_loss", "cce", "cce_exact")


def parse_lever(spec: str) -> frozenset[str]:
    """`base` (no lever) or LEVERS names joined by '+', each once: the set of levers of one row."""
    if spec == "base":
        return frozenset()
    names = spec.split("+")
    unknown = [n for n in names if n not in LEVERS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"--levers {spec!r}: expected base, or names from {sorted(LEVERS)} joined by '+', "
                         f"each once" + (f" ({unknown[0]!r} is not one)" if unknown else ""))
    head_losses = [n for n in names if n in HEAD_LOSS_LEVERS]
    if len(head_losses) > 1:
        raise ValueError(f"--levers {spec!r}: {' and '.join(head_losses)} both replace the LM head and loss; "
                         f"a row takes one of {list(HEAD_LOSS_LEVERS)}")
    return frozenset(names)


def lever_compile_mode(levers: frozenset[str], compile_mode: str | None) -> str | None:
    """The torch.compile mode a row's levers set (graphs: CUDA graphs, autotune: GEMM autotuning, both:
    max-autotune), else the --compile-mode given."""
    if "graphs" in levers:
        return "max-autotune" if "autotune" in levers else "reduce-overhead"
    return "max-autotune-no-cudagraphs" if "autotune" in levers else compile_mode


def _head_loss_fn(model: torch.nn.Module, compile: bool, mode: str | None, head_loss):
    """make_loss_fn's loss with the LM head and cross-entropy replaced by a kernel library's fused
    `head_loss(h, weight, targets)`: the model's final normed hidden states compiled, the library's
    Triton kernels called on them eagerly (under torch.compile Dynamo's fake tensors fail inside
    Liger's). h and the tied embedding go in at the autocast dtype, the precision the model's
    own F.linear head runs in."""
    def hidden(x, **kwargs):
        return model.norm_f(model.hidden(x, **kwargs))
    hidden = torch.compile(hidden, mode=mode) if compile else hidden

    def loss_fn(x, y, **kwargs):
        h = hidden(x, **kwargs)
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        return head_loss(h.flatten(0, 1).to(dtype), model.tok_emb.weight.to(dtype), y.flatten())
    return loss_fn


def _fused_loss_fn(model: torch.nn.Module, compile: bool, mode: str | None = None):
    """The fused_loss lever: Liger's fused linear cross-entropy."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    from cart.models.base import IGNORE_INDEX
    fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX)
    return _head_loss_fn(model, compile, mode, lambda h, weight, y: fused(weight, h, y))


def _cce_loss_fn(model: torch.nn.Module, compile: bool, mode: str | None = None, exact: bool = False):
    """The cce (cce_exact: no gradient filter) lever: Cut Cross-Entropy's linear_cross_entropy."""
    from cut_cross_entropy import linear_cross_entropy
    from cart.models.base import IGNORE_INDEX
    filter_eps = None if exact else "high"  # "high": the library's default

    def head_loss(h, weight, y):
        return linear_cross_entropy(h, weight, y, ignore_index=IGNORE_INDEX, filter_eps=filter_eps, impl="cce")
    return _head_loss_fn(model, compile, mode, head_loss)


def make_bench_loss_fn(model: torch.nn.Module, levers: frozenset[str], compile: bool, mode: str | None):
    """The row's loss: the training stage's (make_loss_fn), or its head and loss from a head-loss lever."""
    if "fused_loss" in levers:
        return _fused_loss_fn(model, compile, mode)
    if "cce" in levers or "cce_exact" in levers:
        return _cce_loss_fn(model, compile, mode, exact="cce_exact" in levers)
    return make_loss_fn(model, compile, mode)


# The paper profile's Stage 2 sweep (configs/paper.yaml): d x R x 3 seeds, 30,500 steps of 32,768 tokens.
SWEEP_RUNS_PER_CONFIG, SWEEP_TOKENS_PER_RUN = 3, 30_500 * 32_768
SWEEP_MODELS = [f"CART d{d} P6 R{r}" for d in (256, 512, 768, 1024) for r in (6, 8, 10)]  # as _label names them


def sweep_projection(rows: list[dict], lever: str = "base") -> dict | None:
    """GPU-hours of the paper profile's Stage 2 sweep from the measured tok/s of each of its CART
    configs (d in 256..1024, R in 6, 8, 10; P 6 here, the paper's 4-6 differ by ~2 layers) under one
    lever, None unless every one of them was measured with it."""
    rate = {r["model"]: r["tokens_per_s"] for r in rows if r.get("lever", "base") == lever and "tokens_per_s" in r}
    if not all(m in rate for m in SWEEP_MODELS):
        return None
    hours = {m: SWEEP_RUNS_PER_CONFIG * SWEEP_TOKENS_PER_RUN / rate[m] / 3600 for m in SWEEP_MODELS}
    return {"runs": SWEEP_RUNS_PER_CONFIG * len(SWEEP_MODELS), "tokens_per_run": SWEEP_TOKENS_PER_RUN,
            "gpu_hours": sum(hours.values()), "gpu_hours_per_config": hours}


def project_from(paths: list[str]) -> dict[str, dict]:
    """The sweep projection of every lever that the rows of the bench outputs at `paths` cover in full
    (the same config in two files: the later file's row). Unreadable files and a lever left with a
    config unmeasured are errors naming them."""
    rows: dict[tuple[str, str], dict] = {}
    for path in paths:
        try:
            with open(path) as f:
                found = json.load(f)["rows"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"--project {path}: not a bench.throughput.train_step output with rows ({type(e).__name__}: {e})")
        rows |= {(r["model"], r.get("lever", "base")): r for r in found if "tokens_per_s" in r}
    if not rows:
        raise SystemExit(f"--project {' '.join(paths)}: no measured rows")
    levers = sorted({lever for _, lever in rows})
    projections = {lever: p for lever in levers if (p := sweep_projection(list(rows.values()), lever))}
    if not projections:
        missing = {lever: [m for m in SWEEP_MODELS if (m, lever) not in rows] for lever in levers}
        raise SystemExit(f"--project {' '.join(paths)}: no lever has all {len(SWEEP_MODELS)} sweep configs measured; "
                         "missing " + "; ".join(f"{lever}: {', '.join(m)}" for lever, m in missing.items()))
    return projections


def print_projections(projections: dict[str, dict]) -> None:
    for lever, p in projections.items():
        print(f"\nprojected paper-profile Stage 2 sweep ({p['runs']} runs x {p['tokens_per_run'] / 1e9:.2f}B tokens) "
              f"at the tok/s of lever {lever}: {p['gpu_hours']:.1f} GPU-hours")


def real_batches(tokens: np.ndarray, n_steps: int, grad_accum: int, micro_batch: int, seq_len: int,
                 device: torch.device) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Each step's micro-batches: consecutive (seq_len + 1)-token windows of `tokens` (inputs, and
    targets shifted by one), wrapping around past the end; all on the device before timing."""
    window = seq_len + 1
    n_windows = len(tokens) // window
    if n_windows < micro_batch:
        raise ValueError(f"--data: {len(tokens):,} tokens hold {n_windows} windows of {window}; a micro-batch "
                         f"needs {micro_batch}")
    rows = torch.from_numpy(np.asarray(tokens[:n_windows * window], dtype=np.int64).reshape(n_windows, window))
    out, k = [], 0
    for _ in range(n_steps):
        step = []
        for _ in range(grad_accum):
            idx = torch.arange(k, k + micro_batch) % n_windows
            k += micro_batch
            batch = rows[idx].to(device)
            step.append((batch[:, :-1], batch[:, 1:]))
        out.append(step)
    return out


def wait_for_all(folder: str, n: int, timeout_s: float = 900.0) -> None:
    """A barrier between processes: mark this one arrived in `folder`, return once n have."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, f"{os.getpid()}.arrived"), "w").close()
    deadline = time.monotonic() + timeout_s
    while sum(f.endswith(".arrived") for f in os.listdir(folder)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"--barrier {folder}: {n} processes never arrived within {timeout_s:.0f} s")
        time.sleep(0.05)


def _sampling_label(s: LoopSampling) -> str:
    if not s.varies:
        return "fixed"
    return f"{s.scheme} " + ",".join(f"{k}={getattr(s, k)}" for k in ("r_min", "r_max", "sigma")
                                     if getattr(s, k) is not None)


def _profile_steps(loss_fn, batches, params, opt, train, device, dtype, graphed: bool, steps: int = 3) -> None:
    """Print the kernels that take the most GPU time over a few steps (the 'where does it go')."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            train_step(loss_fn, batches, params, train.grad_clip, device, dtype, graphed=graphed)
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(device)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=150))


def _label(cfg) -> str:
    if isinstance(cfg, DenseConfig):
        return f"Dense {cfg.n_layers}L d{cfg.d_model}"
    return f"CART d{cfg.d_model} P{cfg.n_prelude} R{cfg.n_loops}" + (" X" if cfg.unfreeze_kv else "")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=32_000)
    ap.add_argument("--compile", choices=["on", "off"], default="on")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    ap.add_argument("--compile-scope", choices=["model", "iteration", "blocks"], default="model",
                    help="model: one graph for model + loss (train.compile_scope: model); iteration: CART's loop "
                         "compiled one iteration at a time (train.compile_scope: iteration); blocks: each layer "
                         "compiled alone")
    ap.add_argument("--profile", action="store_true", help="print the top GPU kernels of the first config")
    ap.add_argument("--sdpa", choices=["auto", "flash", "cudnn", "efficient"], default="auto",
                    help="force one scaled_dot_product_attention backend")
    ap.add_argument("--optimizer", choices=["adamw8bit", "adamw"], default=None,
                    help="default: train.optimizer from params.yaml's paper profile choice on GPU (adamw8bit)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the peak looked up by device name")
    ap.add_argument("--loop-sampling", nargs="+", default=[], metavar="SCHEME",
                    help="CART configs also train with R sampled per step around their R: uniform, poisson_lognormal "
                         "or <scheme>:key=value,... (see the module docstring)")
    ap.add_argument("--sampled-compile", choices=["iteration", "whole"], default="iteration",
                    help="how sampled rows compile: one iteration at a time (training's choice) or the whole "
                         "unrolled model per R (the default torch.compile)")
    ap.add_argument("--backprop-loops", type=int, default=None,
                    help="truncated backpropagation through the last k loop iterations (train.backprop_loops)")
    ap.add_argument("--levers", nargs="+", default=["base"], metavar="LEVER",
                    help="bench every config once per lever: base (the training stage's step) or any of "
                         + ", ".join(LEVERS) + " joined by '+' (graphs+fused_adamw: one row with both); "
                         "the module's LEVERS says what each changes")
    ap.add_argument("--data", default=None, help="a raw token file (the bins stage's format): train on its "
                    "consecutive windows instead of random tokens, and report each lever's loss against base")
    ap.add_argument("--data-dtype", choices=["uint16", "uint32"], default="uint16")
    ap.add_argument("--barrier", default=None, metavar="DIR,N",
                    help="sweep packing: wait after the warm-up until N processes given the same DIR have compiled")
    ap.add_argument("--params", default="params.yaml", help="the training settings of every row, and the runs "
                    "that --configs names as <group>/<run>")
    ap.add_argument("--out", default="metrics/bench.json")
    ap.add_argument("--project", nargs="+", default=None, metavar="RESULTS",
                    help="bench nothing: print the sweep projection from the rows of earlier --out files")
    args = ap.parse_args(argv)
    if args.project:
        print_projections(project_from(args.project))
        return
    barrier = None
    if args.barrier:
        folder, _, n = args.barrier.rpartition(",")
        if not folder or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"--barrier {args.barrier!r}: expected DIR,N with N >= 1 processes")
        barrier = (folder, int(n))
    tokens = None
    if args.data:
        try:
            tokens = np.memmap(args.data, dtype=args.data_dtype, mode="r")
        except (OSError, ValueError) as e:
            raise SystemExit(f"--data {args.data}: cannot read it as {args.data_dtype} tokens ({e})")
        if int(tokens.max()) >= args.vocab:
            raise SystemExit(f"--data {args.data}: token id {int(tokens.max())} >= --vocab {args.vocab}")
        if len(tokens) // (args.seq_len + 1) < args.micro_batch:
            raise SystemExit(f"--data {args.data}: {len(tokens):,} tokens hold fewer than --micro-batch "
                             f"{args.micro_batch} windows of {args.seq_len + 1}")

    for spec in args.levers:  # every row's levers checked before any work
        try:
            levers = parse_lever(spec)
        except ValueError as e:
            raise SystemExit(str(e))
        moded = [n for n in ("graphs", "autotune") if n in levers]  # the levers that set the compile mode
        implied = lever_compile_mode(levers, None)
        if moded and args.compile_mode not in (None, implied):
            raise SystemExit(f"--levers {spec}: {'+'.join(moded)} is --compile-mode {implied}; it cannot run under "
                             f"--compile-mode {args.compile_mode}")
        if moded and args.compile == "off":
            raise SystemExit(f"--levers {spec}: {'+'.join(moded)} needs --compile on (it is a torch.compile mode)")

    device = torch.device(args.device)
    params = load_params(args.params)
    train = build(TrainSettings, section(params, "train"), "train")
    optimizer = args.optimizer or ("adamw8bit" if device.type == "cuda" else "adamw")
    train = dataclasses.replace(train, optimizer=optimizer, dtype="auto", loop_sampling=LoopSampling(),
                                backprop_loops=args.backprop_loops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops_for(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    # (config, training settings, compile mode, run id) per config, all names checked before any work
    entries = [row_settings(parse_config(c, args.vocab, params), train, args, device) for c in args.configs]
    configs = [cfg for cfg, *_ in entries]
    # (config, schemes) for the sampled-R rows, each checked against its config before any work
    sampled = [(cfg, [parse_loop_sampling(spec, cfg.n_loops) for spec in args.loop_sampling])
               for cfg in configs if args.loop_sampling and isinstance(cfg, CARTConfig)]
    for cfg, schemes in sampled:
        for scheme in schemes:
            scheme.check_model(cfg, args.backprop_loops, where="bench")
    # the same windows for every row, on the device before any timing
    real = (None if tokens is None else
            real_batches(tokens, args.warmup + args.steps, args.grad_accum, args.micro_batch, args.seq_len, device))
    print(f"device {name} | peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s bf16 | torch {torch.__version__} "
          f"| optimizer {optimizer} | compile {args.compile} ({args.compile_scope})")
    rows = []
    header = {"device": name, "torch": torch.__version__, "optimizer": optimizer, "compile": args.compile,
              "peak_flops": peak, "backprop_loops": args.backprop_loops, "levers": args.levers}
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    for i, ((cfg, row_train, row_mode, run_id), lever) in enumerate((e, lv) for e in entries for lv in args.levers):
        try:
            with sdpa_kernel(backends[args.sdpa]) if args.sdpa != "auto" else contextlib.nullcontext():
                row = bench_one(cfg, row_train, args.micro_batch, args.grad_accum, args.seq_len, args.steps, args.warmup,
                                args.compile == "on", device, peak, row_mode, args.profile and i == 0,
                                "blocks" if args.compile_scope == "blocks" else "model",
                                by_iteration=args.compile_scope == "iteration", lever=lever, real=real,
                                barrier=barrier)
        except torch.OutOfMemoryError:
            row = {"model": _label(cfg), "lever": lever, "oom": True,
                   "batch": f"{args.micro_batch}x{args.grad_accum}x{args.seq_len}"}
            torch.cuda.empty_cache()
        except (ImportError, RuntimeError, ValueError) as e:  # a lever's library missing or failing, or a
            # lever this device cannot run (fp8 off CUDA): say so, bench the rest
            if lever == "base":  # the training stage's own step failing is a failure, not a row
                raise
            row = {"model": _label(cfg), "lever": lever, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                   "batch": f"{args.micro_batch}x{args.grad_accum}x{args.seq_len}"}
        rows.append(row | ({"run": run_id} if run_id else {}))
        print(_fmt_row(row), flush=True)
        atomic_write_json(args.out, header | {"rows": rows, "complete": False})  # a stopped run keeps its rows
    for r in rows:  # each lever's row against Dense 7L and against the same config's base row, same lever run
        ref = next((b for b in rows if b["model"] == "Dense 7L d1024" and b["lever"] == r["lever"]
                    and b.get("mfu_paper")), None)
        base = next((b for b in rows if b["model"] == r["model"] and b.get("run") == r.get("run")
                     and b["lever"] == "base" and "tokens_per_s" in b), None)
        if r.get("mfu_paper") and ref:
            r["mfu_vs_dense7l"] = r["mfu_paper"] / ref["mfu_paper"]
        if "tokens_per_s" in r and base and r["lever"] != "base":
            r["speedup_vs_base"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["loss_vs_base"] = r["loss_last20"] / base["loss_last20"]
    print("\n" + markdown_table(rows))
    projections = {lever: p for lever in args.levers if (p := sweep_projection(rows, lever))}
    print_projections(projections)
    loop_rows = []
    for cfg, schemes in sampled:
        fixed = next(r for r in rows if r["model"] == _label(cfg) and r["lever"] == "base")
        jobs = [(LoopSampling(), True)] + [(scheme, args.sampled_compile == "iteration") for scheme in schemes]
        for scheme, by_iteration in jobs:
            try:
                row = bench_one(cfg, train, args.micro_batch, args.grad_accum, args.seq_len, args.steps, args.warmup,
                                args.compile == "on", device, peak, args.compile_mode, loop_sampling=scheme,
                                by_iteration=by_iteration)
            except torch.OutOfMemoryError:
                print(f"{_label(cfg)} {_sampling_label(scheme)}: OOM", flush=True)
                torch.cuda.empty_cache()
                continue
            if "train_tflops" in fixed:
                row["cost_vs_fixed"] = 1 - row["train_tflops"] / fixed["train_tflops"]
            loop_rows.append(row)
            print(_fmt_loop_row(row), flush=True)
            atomic_write_json(args.out, header | {"rows": rows, "loop_sampling_rows": loop_rows, "complete": False})
    if loop_rows:
        fixed_rows = [r for r in rows if "tokens_per_s" in r and r["lever"] == "base"
                      and any(r["model"] == _label(c) for c, _ in sampled)]
        print("\n" + loop_table(fixed_rows + loop_rows))
    atomic_write_json(args.out, header | {"rows": rows, "loop_sampling_rows": loop_rows, "complete": True,
                                          "sweep_projection": projections.get("base"),
                                          "sweep_projection_by_lever": projections})
    best = max((r for r in rows if "tokens_per_s" in r), key=lambda r: r.get("mfu_paper") or 0, default=None)
    if best:
        print(f"bench: {len(rows)} configs on {name}; best paper-MFU {best['model']} "
              f"{(best.get('mfu_paper') or 0):.1%}; results in {args.out}")


def _fmt_row(r: dict) -> str:
    if r.get("oom") or r.get("error"):
        return f"{r['model']:<22} {r['lever']:<10} {r['batch']:>12}  {'OOM' if r.get('oom') else r['error']}"
    pct = lambda v: f"{v:6.1%}" if v is not None else "   n/a"
    mem = f"{r['peak_mem_gib']:6.1f} GiB" if r["peak_mem_gib"] is not None else "      n/a"
    return (f"{r['model']:<22} {r['lever']:<10} {r['batch']:>12} {r['tokens_per_s']:>11,.0f} tok/s  "
            f"MFU(paper) {pct(r['mfu_paper'])}  "
            f"MFU(real) {pct(r['mfu_real'])}  {mem}  warmup {r['warmup_s']:.0f}s  loss(last 20) {r['loss_last20']:.4f}")


def _fmt_loop_row(r: dict) -> str:
    compiled = "per iteration" if r["compile_by_iteration"] else "whole"
    return (f"{r['model']:<22} {r['loop_sampling']:<34} compile {compiled:<13} graphs {r['graphs']:>3} "
            f"({r['graphs_in_timing']} timed, {r['eager_fallbacks']} eager fallbacks)  mean R {r['mean_r']:.2f}  "
            f"{r['tokens_per_s']:>11,.0f} tok/s  {r['train_tflops']:.3f} TFLOP/s  "
            f"cost vs fixed {r.get('cost_vs_fixed', float('nan')):+.1%}")


def loop_table(rows: list[dict]) -> str:
    """Sampled-R rows beside their config's fixed-R row (compiled whole, as fixed-R training is)."""
    head = ("| model | R per step | compile | graphs (timed) | eager fallbacks | mean R | tok/s | TFLOP/s | "
            "cost vs fixed R | peak mem GiB |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        compiled = "per iteration" if r["compile_by_iteration"] else "whole"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "n/a"
        cost = f"{r['cost_vs_fixed']:+.1%}" if "cost_vs_fixed" in r else "(reference)"
        lines.append(f"| {r['model']} | {r['loop_sampling']} | {compiled} | {r['graphs']} ({r['graphs_in_timing']}) | "
                     f"{r['eager_fallbacks']} | {r['mean_r']:.2f} | {r['tokens_per_s']:,.0f} | {r['train_tflops']:.3f} | "
                     f"{cost} | {mem} |")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    head = ("| model | lever | batch | tok/s | MFU paper | MFU real | peak mem GiB | MFU / Dense 7L | vs base | "
            "loss (last 20) | loss vs base |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if r.get("oom") or r.get("error"):
            lines.append(f"| {r['model']} | {r['lever']} | {r['batch']} | {'OOM' if r.get('oom') else r['error']} "
                         f"| | | | | | | |")
            continue
        f = lambda v, s="{:.1%}": s.format(v) if v is not None else "n/a"
        lines.append(f"| {r['model']} | {r['lever']} | {r['batch']} | {r['tokens_per_s']:,.0f} | {f(r['mfu_paper'])} | "
                     f"{f(r['mfu_real'])} | {f(r['peak_mem_gib'], '{:.1f}')} | {f(r.get('mfu_vs_dense7l'), '{:.2f}')} | "
                     f"{f(r.get('speedup_vs_base'), '{:.2f}x')} | {r.get('loss_last20', float('nan')):.4f} "
                     f"({r.get('data', 'random')}) | {f(r.get('loss_vs_base'), '{:.4f}')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
