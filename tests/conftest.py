"""Shared fixtures: a tiny project directory (params + data stages already run) for training,
resume and pipeline tests."""
import copy
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def tiny_params() -> dict:
    """The default profile shrunk further so a training run takes a second or two on CPU."""
    p = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    p["corpus"].update(train_tokens=30_000, val_tokens=6_000)
    p["tokenizer"].update(vocab_size=512)
    p["model"]["common"].update(head_dim=16, ffn_multiple=32)
    p["train"].update(warmup_steps=2, log_every=2, eval_seqs=2, checkpoint_every=4)
    p["stage1"].update(run={"steps": 8, "seq_len": 32, "micro_batch": 2, "grad_accum": 1, "eval_every": 4},
                       grid={"d_model": [32], "n_prelude": [1], "n_loops": [2]})
    p["stage2"].update(n_prelude=1, run={"steps": 12, "seq_len": 32, "micro_batch": 2, "grad_accum": 2,
                                         "eval_every": 6},
                       grid={"d_model": [32], "n_loops": [2], "seed": [42]})
    p["dense"].update(d_model=32, grid={"n_layers": [2], "seed": [42]})
    p["ablation"]["base"] = {"d_model": 32, "n_prelude": 1, "n_loops": 2}
    for group in ("sweep_cart", "sweep_dense", "lrt", "ratplus", "ratplus_adapt"):
        p[group]["base"]["d_model"] = 32
        p[group]["base"]["n_layers" if "n_layers" in p[group]["base"] else "n_prelude"] = \
            2 if "n_layers" in p[group]["base"] else 1
        p[group]["variants"] = dict(list(p[group]["variants"].items())[:2])
    for g in ("sweep_cart", "sweep_dense"):
        p[g]["run"] = dict(p["stage2"]["run"])
    p["ratplus_adapt"]["run"] = {"steps": 4, "seq_len": 32, "micro_batch": 2, "grad_accum": 1, "eval_every": 4}
    p["model"]["ratplus"]["sparse_pattern"] = "D4"
    for study in ("eval_ratplus", "eval_lrt"):
        p[study]["ppl"] = {"seq_len": 32, "n_seqs": 2, "batch_size": 2}
    p["eval_ratplus"]["patterns"] = ["dense", "D4"]
    p["sampled_r"]["base"] = {"d_model": 32, "n_prelude": 1, "n_loops": 2}
    p["sampled_r"]["variants"]["uniform"]["train"]["loop_sampling"].update(r_min=1, r_max=3)
    p["sampled_r"]["variants"]["poisson_lognormal"]["train"]["loop_sampling"].update(r_max=4)
    p["eval_sampled_r"].update(n_loops=[1, 2, 3], benchmark_limit=2, ppl={"seq_len": 32, "n_seqs": 2, "batch_size": 2})
    p["eval_lrt"]["num_fewshot"] = [0, 1]
    return p


def write_params(directory: Path, params: dict) -> None:
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models: one intra-op thread is several times faster than spinning up
    more, especially on a small, busy CPU. Restored after the module."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A directory holding data/{corpus,tokenizer,bins} built by the real data stages."""
    from pipeline import bins, corpus, tokenizer
    d = tmp_path_factory.mktemp("tiny_data")
    write_params(d, tiny_params())
    cwd = Path.cwd()
    try:
        import os
        os.chdir(d)
        for stage in (corpus, tokenizer, bins):
            stage.main([])
    finally:
        os.chdir(cwd)
    return d


@pytest.fixture
def tiny_project(tiny_data, tmp_path, monkeypatch) -> Path:
    """A fresh working directory with the tiny params and (a copy of) the tiny data; cwd is set."""
    shutil.copytree(tiny_data / "data", tmp_path / "data")
    shutil.copy(tiny_data / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def smoke_benchmark_text() -> str:
    """Every string of the builtin benchmark smoke set (to train a tiny tokenizer that covers it)."""
    from cart.evaluation.benchmarks import TASKS, smoke

    def strings(x) -> list[str]:
        if isinstance(x, str):
            return [x]
        if isinstance(x, dict):
            return [s for v in x.values() for s in strings(v)]
        if isinstance(x, list):
            return [s for v in x for s in strings(v)]
        return []
    return "\n".join(s for task in TASKS for records in smoke.generate(task).values()
                     for r in records for s in strings(r))


def read_tsv_rows(path) -> list[dict]:
    """An evaluation TSV (cart.evaluation.rows' format) as a list of {column: text} rows."""
    import csv
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def run_spec(group="stage2", name="d32-R2-s42", params_file="params.yaml"):
    """A run's resolved spec in a project directory (the cwd) whose data stages have run."""
    from cart.experiments import resolve_run
    from cart.params import load_params
    from cart.data.tokenizer import tokenizer_info
    return resolve_run(load_params(params_file), group, name, tokenizer_info("data/tokenizer")["vocab_size"])


def assert_compiled_step_matches_eager(make_model, x) -> None:
    """One training step through the training stage's compiled loss (torch.compile of model + loss,
    the CPU inductor backend here) gives the eager loss, grad norm and gradients; `make_model()`
    builds the same weights each call."""
    import torch

    from cart.training.step import make_loss_fn, train_step
    batches = [(x[:, :-1], x[:, 1:])]
    results = {}
    for compiled in (False, True):
        model = make_model().train()
        params = list(model.parameters())
        loss, norm = train_step(make_loss_fn(model, compiled), batches, params, 1.0, torch.device("cpu"),
                                torch.float32)
        results[compiled] = (loss.item(), norm.item(), [p.grad.clone() for p in params])
    (l0, n0, g0), (l1, n1, g1) = results[False], results[True]
    assert l1 == pytest.approx(l0, rel=1e-5) and n1 == pytest.approx(n0, rel=1e-4)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(g0, g1))


def assert_decisive_argmax(logits, margin: float, what: str = "logits") -> None:
    """Every row's largest value (last dim) exceeds its runner-up by more than `margin`.

    A test that compares argmax tokens (or an accuracy's chosen answer) between two computations that
    agree only up to float rounding (cached against uncached decoding, batched and padded against one
    row, another CPU's kernels) holds on every CPU only when no choice is within that rounding of a
    tie. The caller passes a margin well above the float error between the two computations; inputs
    that are not decisive fail here, on every CPU alike, instead of flipping a token on one of them."""
    import torch
    top = torch.as_tensor(logits).double().topk(2, dim=-1).values
    gap = top[..., 0] - top[..., 1]
    assert bool((gap > margin).all()), (
        f"{what}: the argmax is not decisive: smallest top-2 gap {float(gap.min()):.3g} <= margin {margin:g}; "
        f"pick inputs whose choices are further apart than float rounding")


def assert_greedy_decisive(model, prompt, out, margin: float, **runtime) -> None:
    """The greedy tokens `out[len(prompt):]` generated after 1-D `prompt` are each the decisive argmax
    (assert_decisive_argmax) of the full forward of `out` at the position before it. A causal model's
    logits at a position are those of the forward of the prefix alone, so one forward checks every step."""
    import torch
    with torch.no_grad():
        logits = model(out[None, :-1], **runtime)[0, len(prompt) - 1:]
    assert_decisive_argmax(logits, margin, "greedy tokens")
    assert torch.equal(logits.argmax(-1), out[len(prompt):]), "the tokens are not the full forward's greedy ones"
