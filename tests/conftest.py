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
    from cart.benchmarks import smoke

    def strings(x) -> list[str]:
        if isinstance(x, str):
            return [x]
        if isinstance(x, dict):
            return [s for v in x.values() for s in strings(v)]
        if isinstance(x, list):
            return [s for v in x for s in strings(v)]
        return []
    return "\n".join(s for task in smoke._TASKS for records in smoke.generate(task).values()
                     for r in records for s in strings(r))


def read_tsv_rows(path) -> list[dict]:
    """An evaluation TSV (cart.eval_rows' format) as a list of {column: text} rows."""
    import csv
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))
