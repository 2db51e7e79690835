"""bench.throughput.train_step's bookkeeping (never its timings): the sweep projection, the lever rows."""
import json

import numpy as np
import pytest
import torch

from conftest import assert_decisive_argmax
from bench.throughput import train_step as bench


def _rows(rate_of, lever="base"):
    return [{"model": f"CART d{d} P6 R{r}", "lever": lever, "tokens_per_s": rate_of(d, r)}
            for d in (256, 512, 768, 1024) for r in (6, 8, 10)]


def test_sweep_projection_sums_three_seeds_of_each_config_at_its_own_rate():
    rate = lambda d, r: 1e6 * 256 / d / r  # noqa: E731
    got = bench.sweep_projection(_rows(rate) + [{"model": "Dense 7L d1024", "lever": "base", "tokens_per_s": 1.0}])
    tokens = 30_500 * 32_768
    hours = sum(3 * tokens / rate(d, r) for d in (256, 512, 768, 1024) for r in (6, 8, 10)) / 3600
    assert got["runs"] == 36 and got["tokens_per_run"] == tokens
    assert got["gpu_hours"] == pytest.approx(hours, rel=1e-12)
    assert got["gpu_hours_per_config"]["CART d1024 P6 R10"] == pytest.approx(3 * tokens / rate(1024, 10) / 3600)


def test_sweep_projection_needs_every_config_measured_at_the_base_lever():
    rows = _rows(lambda d, r: 1e5)
    assert bench.sweep_projection(rows[:-1]) is None
    # a lever's row (another step than training's) does not stand in for the base row
    assert bench.sweep_projection(rows[:-1] + _rows(lambda d, r: 1e5, lever="fp8")[-1:]) is None


def _write_rows(path, rows):
    path.write_text(json.dumps({"rows": rows, "complete": True}))
    return str(path)


def test_project_joins_a_sweep_measured_over_several_calls(tmp_path, monkeypatch, capsys):
    rate = lambda d, r: 1e6 * 256 / d / r  # noqa: E731
    rows = _rows(rate, lever="graphs")
    stale = dict(rows[0], tokens_per_s=1.0)  # re-measured in the second call: the later row counts
    first = _write_rows(tmp_path / "a.json", [stale] + rows[1:7])
    oom = {"model": rows[3]["model"], "lever": "graphs", "oom": True}  # a failed row does not hide a measured one
    second = _write_rows(tmp_path / "b.json", rows[:1] + [oom] + rows[7:])
    monkeypatch.setattr(bench, "bench_one", lambda *a, **k: pytest.fail("--project benches nothing"))
    got = bench.project_from([first, second])
    assert list(got) == ["graphs"]
    assert got["graphs"]["gpu_hours"] == pytest.approx(bench.sweep_projection(rows, "graphs")["gpu_hours"], rel=1e-12)
    bench.main(["--project", first, second])
    assert f"lever graphs: {got['graphs']['gpu_hours']:.1f} GPU-hours" in capsys.readouterr().out


def test_project_names_what_it_cannot_use(tmp_path):
    rows = _rows(lambda d, r: 1e5, lever="graphs")
    partial = _write_rows(tmp_path / "a.json", rows[:-1])
    with pytest.raises(SystemExit, match="graphs: CART d1024 P6 R10$"):
        bench.project_from([partial])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"--project .*bad\.json: not a bench\.throughput\.train_step output"):
        bench.project_from([partial, str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="no measured rows"):
        bench.project_from([_write_rows(tmp_path / "empty.json", [])])


def test_a_lever_whose_library_is_missing_is_one_row_saying_so(tmp_path, monkeypatch, capsys):
    import builtins
    real_import = builtins.__import__

    def no_liger(name, *a, **k):
        if name.startswith("liger_kernel"):
            raise ImportError("No module named 'liger_kernel'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_liger)
    out = tmp_path / "b.json"
    bench.main(["--configs", "cart-d64-R2-P2", "--micro-batch", "1", "--seq-len", "16", "--vocab", "128",
                "--steps", "1", "--warmup", "0", "--compile", "off", "--device", "cpu",
                "--levers", "base", "fused_loss", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["lever"] for r in rows] == ["base", "fused_loss"]
    assert rows[0]["tokens_per_s"] > 0 and "error" not in rows[0]
    assert rows[1]["error"].startswith("ImportError") and "tokens_per_s" not in rows[1]
    assert "liger_kernel" in capsys.readouterr().out


def test_decode_benchmark_modes_decode_the_same_tokens(one_thread):
    """bench.throughput.decode's cached and uncached greedy decoding produce the same tokens (a benchmark of a
    wrong decode measures nothing), and its rows carry each mode's tokens/s and the ratio."""
    from bench.throughput import decode as bench_decode
    from cart import build_model
    torch.manual_seed(0)
    for name in ("cart-d64-R3", "cart-d64-R3-X", "dense-L2-d64"):
        model = build_model(bench_decode.config_of(name, 97)).eval()
        prompts = torch.randint(0, 97, (2, 12))
        got = {mode: bench_decode.decode(model, prompts, 6, mode) for mode in ("cached", "uncached")}
        assert got["cached"][2].shape == (2, 6) and len(got["cached"][1]) == 5
        # the two modes' logits differ by float rounding (~1e-7 here): their tokens are compared only
        # where every step's argmax is decisive, a top-2 gap above 1e-3
        with torch.no_grad():
            logits = model(torch.cat([prompts, got["uncached"][2][:, :-1]], dim=1))[:, 11:]
        assert_decisive_argmax(logits, 1e-3, name)
        assert torch.equal(got["cached"][2], got["uncached"][2])
    rows = bench_decode.main(["--device", "cpu", "--configs", "cart-d64-R2", "--context", "8", "--new-tokens", "3",
                              "--vocab", "97"])
    assert set(rows[0]) >= {"cached", "uncached", "cached_over_uncached", "cache_bytes_per_token"}
    assert "graph" not in rows[0]  # CUDA only
    assert rows[0]["cached_over_uncached"] == rows[0]["cached"]["tokens_per_s"] / rows[0]["uncached"]["tokens_per_s"]


def test_inductor_calls_counts_extern_kernels_and_aten_fallbacks_not_comments():
    """bench.throughput.inductor_calls reads Inductor's output code: calls count, the comments naming the source ops
    of Inductor's own kernels and the ops named in assertion strings do not."""
    from bench.throughput.inductor_calls import calls_in
    source = """
class Runner:
    def call(self, args):
        # Topologically Sorted Source Nodes: [mul_185, sum_21], Original ATen: [aten.mul, aten.sum]
        #   %sum_21 : Tensor = call_function[target=torch.ops.aten.sum.default](args = (%mul_185,))
        extern_kernels.mm(buf3, primals_6, out=buf4)
        extern_kernels.mm(buf4, primals_7, out=buf5)
        buf6 = torch.ops.aten.sum.default(buf5, dtype=torch.float32); buf7 = aten.mean.dim(buf5, [0])
        assert_size_stride(buf6, (), (), 'torch.ops.aten.sum.default')
"""
    assert calls_in(source) == {"extern_kernels.mm": 2, "aten.sum.default": 1, "aten.mean.dim": 1}


def test_real_batches_are_consecutive_windows_wrapping_around():
    tokens = np.arange(50, dtype=np.uint16)  # 5 windows of 9 + 1 tokens (5 left over)
    steps = bench.real_batches(tokens, n_steps=3, grad_accum=2, micro_batch=2, seq_len=9, device=torch.device("cpu"))
    firsts = [int(x[r, 0]) for step in steps for x, _ in step for r in range(2)]
    assert firsts == [0, 10, 20, 30, 40, 0, 10, 20, 30, 40, 0, 10]  # window k starts at 10 k, modulo 5 windows
    x, y = steps[0][0]
    assert x.shape == y.shape == (2, 9) and torch.equal(y, x + 1)  # targets: the next token
    with pytest.raises(ValueError, match=r"--data: 50 tokens hold 5 windows of 10; a micro-batch needs 6"):
        bench.real_batches(tokens, 1, 1, 6, 9, torch.device("cpu"))


def test_data_option_trains_on_the_file_and_compares_each_levers_loss(tmp_path, monkeypatch):
    """--data: step i trains on the file's windows i (each step new text; without it, one random batch
    every step), every lever on the same windows; a lever's row gets loss_vs_base."""
    data = tmp_path / "tok.bin"
    tokens = np.random.default_rng(0).integers(0, 40, 3000).astype(np.uint16)
    tokens.tofile(data)
    monkeypatch.setattr(bench, "LEVERS", bench.LEVERS | {"again": "changes nothing"})
    real_bench_one, real_step, seen = bench.bench_one, bench.train_step, []
    monkeypatch.setattr(bench, "bench_one", lambda *a, lever="base", **k: real_bench_one(*a, **k) | {"lever": lever})

    def spy(loss_fn, batches, *a, **k):
        seen.append(batches[0][0].clone())
        return real_step(loss_fn, batches, *a, **k)
    monkeypatch.setattr(bench, "train_step", spy)
    out = tmp_path / "b.json"
    args = ["--configs", "cart-d64-R2-P2", "--micro-batch", "2", "--seq-len", "16", "--vocab", "64", "--steps", "4",
            "--warmup", "1", "--compile", "off", "--device", "cpu", "--out", str(out)]
    bench.main(args + ["--data", str(data), "--levers", "base", "again"])
    windows = torch.from_numpy(tokens[:17 * 10].astype(np.int64)).view(10, 17)[:, :-1]
    assert len(seen) == 10 and all(torch.equal(x, windows[2 * (i % 5):2 * (i % 5) + 2]) for i, x in enumerate(seen))
    rows = json.loads(out.read_text())["rows"]
    assert [r["data"] for r in rows] == ["real", "real"]
    assert rows[1]["loss_vs_base"] == rows[1]["loss_last20"] / rows[0]["loss_last20"] == 1.0
    with pytest.raises(SystemExit, match=r"--data .*tok.bin: token id 39 >= --vocab 32"):
        bench.main(args[:7] + ["32"] + args[8:] + ["--data", str(data)])
    with pytest.raises(SystemExit, match=r"--data .*tok.bin: 3,000 tokens hold fewer than --micro-batch 200 windows"):
        bench.main(args[:3] + ["200"] + args[4:] + ["--data", str(data)])


def test_barrier_waits_for_every_process(tmp_path):
    import multiprocessing as mp
    folder = str(tmp_path / "b")
    bench.wait_for_all(folder, 1)  # alone: through at once
    with pytest.raises(TimeoutError, match=r"--barrier .*b: 2 processes never arrived within 0 s"):
        bench.wait_for_all(folder, 2, timeout_s=0.2)  # this process only
    other = mp.get_context("spawn").Process(target=bench.wait_for_all, args=(folder, 2))
    other.start()
    bench.wait_for_all(folder, 2, timeout_s=60)
    other.join(60)
    assert other.exitcode == 0


def test_levers_combine_with_plus_and_bad_ones_are_refused_before_any_work(monkeypatch):
    assert bench.parse_lever("base") == frozenset()
    assert bench.parse_lever("graphs+fused_adamw+fp8") == {"graphs", "fused_adamw", "fp8"}
    for spec, why in [("graphs+turbo", "'turbo' is not one"), ("fp8+fp8", "each once"), ("", "expected base")]:
        with pytest.raises(ValueError, match=why):
            bench.parse_lever(spec)
    monkeypatch.setattr(bench, "bench_one", lambda *a, **k: pytest.fail("benched before the levers were checked"))
    args = ["--configs", "cart-d64-R2-P2", "--device", "cpu", "--levers", "base"]
    with pytest.raises(SystemExit, match=r"--levers 'base\+graphs'.*'base' is not one"):
        bench.main(args + ["base+graphs"])
    with pytest.raises(SystemExit, match=r"--levers graphs: graphs is --compile-mode reduce-overhead.*max-autotune"):
        bench.main(args + ["graphs", "--compile-mode", "max-autotune-no-cudagraphs"])
    with pytest.raises(SystemExit, match=r"--levers fused_adamw\+graphs: graphs needs --compile on"):
        bench.main(args + ["fused_adamw+graphs", "--compile", "off"])
    with pytest.raises(SystemExit, match=r"--levers autotune\+graphs: graphs\+autotune is --compile-mode "
                                         r"max-autotune; it cannot run under --compile-mode reduce-overhead"):
        bench.main(args + ["autotune+graphs", "--compile-mode", "reduce-overhead"])
    with pytest.raises(SystemExit, match=r"--levers autotune: autotune needs --compile on"):
        bench.main(args + ["autotune", "--compile", "off"])
    with pytest.raises(SystemExit, match=r"--levers 'cce\+fused_loss'.*both replace the LM head"):
        bench.main(args + ["cce+fused_loss"])
    # the mode a lever sets may also be given as --compile-mode
    assert bench.lever_compile_mode(frozenset({"autotune"}), "max-autotune-no-cudagraphs") == \
        "max-autotune-no-cudagraphs"


def test_each_lever_changes_what_it_names_in_the_benched_step(tmp_path, monkeypatch):
    """graphs compiles the step in reduce-overhead mode (and replays it as CUDA graphs), autotune in
    max-autotune-no-cudagraphs, both together in max-autotune (graphed too), fused_adamw swaps the benched
    optimizer for torch's AdamW, and a row with several does each; base does none."""
    seen = []
    real_loss_fn, real_step = bench.make_loss_fn, bench.train_step

    def loss_spy(model, compile, mode=None):
        seen.append(("compile", compile, mode))
        return real_loss_fn(model, False)  # no real compile on the CPU

    def opt_spy(model, t, d_model, device, world=1):
        seen.append(("optimizer", t.optimizer))
        return torch.optim.AdamW(model.parameters(), lr=1e-3)  # adamw8bit needs CUDA

    def step_spy(*a, graphed=False, **k):
        seen.append(("graphed", graphed))
        return real_step(*a, **k)
    monkeypatch.setattr(bench, "make_loss_fn", loss_spy)
    monkeypatch.setattr(bench, "make_optimizer", opt_spy)
    monkeypatch.setattr(bench, "train_step", step_spy)
    out = tmp_path / "b.json"
    bench.main(["--configs", "cart-d64-R2-P2", "--micro-batch", "1", "--seq-len", "16", "--vocab", "64",
                "--steps", "1", "--warmup", "0", "--device", "cpu", "--optimizer", "adamw8bit",
                "--levers", "base", "graphs", "fused_adamw", "graphs+fused_adamw", "autotune", "autotune+graphs",
                "--out", str(out)])
    assert seen == [("optimizer", "adamw8bit"), ("compile", True, None), ("graphed", False),
                    ("optimizer", "adamw8bit"), ("compile", True, "reduce-overhead"), ("graphed", True),
                    ("optimizer", "adamw"), ("compile", True, None), ("graphed", False),
                    ("optimizer", "adamw"), ("compile", True, "reduce-overhead"), ("graphed", True),
                    ("optimizer", "adamw8bit"), ("compile", True, "max-autotune-no-cudagraphs"), ("graphed", False),
                    ("optimizer", "adamw8bit"), ("compile", True, "max-autotune"), ("graphed", True)]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["optimizer"], r["compile_mode"]) for r in rows] == [
        ("adamw8bit", "default"), ("adamw8bit", "reduce-overhead"), ("adamw", "default"), ("adamw", "reduce-overhead"),
        ("adamw8bit", "max-autotune-no-cudagraphs"), ("adamw8bit", "max-autotune")]
    assert all("speedup_vs_base" in r for r in rows[1:])


def _fake_cce(monkeypatch, calls):
    """A stand-in for cut_cross_entropy with its linear_cross_entropy signature: head + cross-entropy,
    unfused, which this CPU can run; it records what the lever passes."""
    import sys
    import types
    import torch.nn.functional as F

    def linear_cross_entropy(e, c, targets, ignore_index=-100, softcap=None, reduction="mean", shift=False,
                             filter_eps="high", impl="cce"):
        calls.append({"e": e.dtype, "c": c.dtype, "filter_eps": filter_eps, "impl": impl, "shape": tuple(e.shape)})
        return F.cross_entropy((e @ c.T).float(), targets, ignore_index=ignore_index)
    module = types.ModuleType("cut_cross_entropy")
    module.linear_cross_entropy = linear_cross_entropy
    monkeypatch.setitem(sys.modules, "cut_cross_entropy", module)


def test_cce_levers_are_the_models_own_loss_with_or_without_the_gradient_filter(monkeypatch):
    """cce and cce_exact feed Cut Cross-Entropy the model's final normed hidden states (tokens x d), its
    tied embedding and the ignore index, through the library's Triton implementation: a stand-in gives
    exactly the model's training loss; cce keeps the library's default gradient filter, cce_exact turns
    it off; under autocast both inputs go in at the autocast dtype. The real kernels run on a GPU
    (tests/test_gpu.py)."""
    from cart import CARTConfig, build_model
    from cart.models.base import IGNORE_INDEX
    calls = []
    _fake_cce(monkeypatch, calls)
    torch.manual_seed(0)
    model = build_model(CARTConfig(vocab_size=64, d_model=64, n_loops=2, n_prelude=2))
    x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    y[0, :3] = IGNORE_INDEX  # ignored targets stay ignored
    for levers, filter_eps in [({"cce"}, "high"), ({"cce_exact"}, None)]:
        loss_fn = bench.make_bench_loss_fn(model, frozenset(levers), compile=False, mode=None)
        assert torch.allclose(loss_fn(x, y), model(x, targets=y), rtol=1e-6, atol=0)
        assert torch.allclose(loss_fn(x, y, n_loops=1), model(x, targets=y, n_loops=1), rtol=1e-6, atol=0)
        assert calls[-1] == {"e": torch.float32, "c": torch.float32, "filter_eps": filter_eps, "impl": "cce",
                             "shape": (32, 64)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_fn(x, y)
    assert (calls[-1]["e"], calls[-1]["c"]) == (torch.bfloat16, torch.bfloat16)


def test_one_head_loss_lever_a_row(monkeypatch):
    """fused_loss, cce and cce_exact each replace the LM head and loss: two in one row are refused, and a
    row without one trains through the training stage's loss."""
    for spec in ("fused_loss+cce", "cce+cce_exact", "graphs+cce_exact+fused_loss"):
        with pytest.raises(ValueError, match="both replace the LM head and loss"):
            bench.parse_lever(spec)
    assert bench.parse_lever("graphs+autotune+cce") == {"graphs", "autotune", "cce"}
    monkeypatch.setattr(bench, "make_loss_fn", lambda model, compile, mode=None: ("training loss", compile, mode))
    assert bench.make_bench_loss_fn(None, frozenset({"graphs", "fp8"}), True, "reduce-overhead") == (
        "training loss", True, "reduce-overhead")


def test_fused_loss_is_the_models_own_loss_through_the_final_hidden_states(monkeypatch):
    """The fused-loss lever feeds Liger the model's final normed hidden states and its tied embedding,
    with the ignore index: a stand-in with Liger's signature (head + cross-entropy, unfused, which
    this CPU can run) gives exactly the model's training loss; the real kernel is checked on a GPU
    (tests/test_gpu.py)."""
    import sys
    import types
    from cart import CARTConfig, build_model
    import torch.nn.functional as F

    class Unfused(torch.nn.Module):
        def __init__(self, ignore_index):
            super().__init__()
            self.ignore_index = ignore_index

        def forward(self, weight, h, y):
            return F.cross_entropy((h @ weight.T).float(), y, ignore_index=self.ignore_index)
    module = types.ModuleType("liger_kernel.transformers")
    module.LigerFusedLinearCrossEntropyLoss = Unfused
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", module)
    torch.manual_seed(0)
    model = build_model(CARTConfig(vocab_size=64, d_model=64, n_loops=2, n_prelude=2))
    x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    from cart.models.base import IGNORE_INDEX
    y[0, :3] = IGNORE_INDEX  # ignored targets stay ignored
    fused = bench._fused_loss_fn(model, compile=False)
    assert torch.allclose(fused(x, y), model(x, targets=y), rtol=1e-6, atol=0)
    assert torch.allclose(fused(x, y, n_loops=1), model(x, targets=y, n_loops=1), rtol=1e-6, atol=0)


def test_a_stopped_benchmark_keeps_the_rows_it_finished(tmp_path, monkeypatch):
    """--out is rewritten (atomically) after every row, marked incomplete until the end: a benchmark
    stopped by a time limit keeps what it measured."""
    real, calls = bench.bench_one, []

    def stopped_at_the_second(*a, **k):
        calls.append(a[0])
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a time limit's signal does mid-run
        return real(*a, **k)
    monkeypatch.setattr(bench, "bench_one", stopped_at_the_second)
    out = tmp_path / "b.json"
    args = ["--configs", "cart-d64-R2-P2", "dense-L2-d64", "--micro-batch", "1", "--seq-len", "16", "--vocab", "64",
            "--steps", "1", "--warmup", "0", "--compile", "off", "--device", "cpu", "--out", str(out)]
    with pytest.raises(KeyboardInterrupt):
        bench.main(args)
    got = json.loads(out.read_text())
    assert got["complete"] is False and [r["model"] for r in got["rows"]] == ["CART d64 P2 R2"]
    assert got["rows"][0]["tokens_per_s"] > 0 and got["device"] == "cpu"
    bench.main(args)  # not stopped: both rows, complete
    got = json.loads(out.read_text())
    assert got["complete"] is True and [r["model"] for r in got["rows"]] == ["CART d64 P2 R2", "Dense 2L d64"]


def test_a_run_of_the_dag_is_benched_with_its_own_model_and_training_settings(tmp_path, monkeypatch):
    """--configs <group>/<run>: the run's model and training settings from --params (Stage 1 of the
    committed campaign: paper_code, 8-bit AdamW, CUDA graphs), so base is the run's own step and a lever
    changes only itself; --optimizer and --compile-mode still win, and off CUDA the optimizer is AdamW."""
    import argparse
    from pathlib import Path

    from cart.experiments import resolve_run
    from cart.models import count_params
    from cart.params import load_params
    params = Path(__file__).resolve().parents[1] / "gpu" / "stage1" / "params.yaml"
    spec = resolve_run(load_params(params), "stage1", "d256-P2-R2", 32_000)
    given = argparse.Namespace(optimizer=None, compile_mode=None, backprop_loops=None)
    cfg, t, mode, run = bench.row_settings(spec, None, given, torch.device("cuda"))
    assert (cfg, t.optimizer, t.lr, mode, run) == (spec.model, "adamw8bit", spec.train.lr, "reduce-overhead",
                                                   "stage1/d256-P2-R2")
    assert cfg.variant == "paper_code"
    assert bench.row_settings(spec, None, given, torch.device("cpu"))[1].optimizer == "adamw"
    chosen = argparse.Namespace(optimizer="adamw", compile_mode="max-autotune-no-cudagraphs", backprop_loops=None)
    assert bench.row_settings(spec, None, chosen, torch.device("cuda"))[1:3] == (
        bench.row_settings(spec, None, given, torch.device("cpu"))[1], "max-autotune-no-cudagraphs")

    seen = []
    real_loss_fn = bench.make_loss_fn
    monkeypatch.setattr(bench, "make_loss_fn", lambda model, compile, mode=None: (
        seen.append(("compile", mode)), real_loss_fn(model, False))[1])  # no real compile on the CPU
    out = tmp_path / "b.json"
    bench.main(["--params", str(params), "--configs", "stage1/d256-P2-R2", "cart-d64-R2-P2", "--micro-batch", "1",
                "--seq-len", "16", "--steps", "1", "--warmup", "0", "--device", "cpu", "--levers", "base", "fused_adamw",
                "--out", str(out)])
    assert seen == [("compile", "reduce-overhead")] * 2 + [("compile", None)] * 2
    rows = json.loads(out.read_text())["rows"]
    assert [r.get("run") for r in rows] == ["stage1/d256-P2-R2"] * 2 + [None] * 2
    assert rows[0]["stored_m"] == count_params(spec.model)["stored"] / 1e6
    assert [r["optimizer"] for r in rows] == ["adamw"] * 4 and "speedup_vs_base" in rows[1]
    with pytest.raises(ValueError, match=r"--configs stage1/d300-P2-R2: "):
        bench.main(["--params", str(params), "--configs", "stage1/d300-P2-R2", "--device", "cpu", "--out", str(out)])
