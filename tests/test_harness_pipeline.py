"""The evaluation stages end to end on a fake repository: pipeline/benchmarks.py,
pipeline/variable_r.py and pipeline/evaluate.py with tiny random runs, the builtin smoke set and a
stand-in validation reader."""
import json
import math
import os
import re
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml

from cart.training.checkpoint import save_weights, write_run_config
from cart.evaluation.rows import EVAL_COLUMNS
from conftest import read_tsv_rows as read_tsv
from cart.models import build_model, config_from_dict
from cart.params import load_params
from test_harness import make_run, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("tinystories", "wikipedia", "fineweb_edu")


pytestmark = pytest.mark.usefixtures("one_thread")


def fake_repo(tmp_path: Path, num_fewshot=(0, 2), n_loops=(1, 2, 3), **bench) -> Path:
    params = load_params(ROOT / "params.yaml")
    params["benchmarks"].update(num_fewshot=list(num_fewshot), limit=4, batch_size=4, bootstrap_iters=10, **bench)
    params["variable_r"].update(n_loops=list(n_loops), ppl={"seq_len": 16, "n_seqs": 3, "batch_size": 2})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    tok = make_tokenizer(tmp_path / "data/tokenizer", DOMAINS)
    best_per_d = {}
    for d, r in ((32, 3), (64, 2)):
        run_id = f"stage2/d{d}-R{r}-s42"
        make_run(tmp_path / "runs" / run_id, tok, n_loops=r, d_model=d, seed=d)
        best_per_d[str(d)] = {"n_loops": r, "run_id": run_id}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/stage2.json").write_text(json.dumps(
        {"best_per_d": best_per_d, "best_run_id": "stage2/d64-R2-s42"}))
    return tmp_path


def test_benchmarks_stage(tmp_path, capsys):
    from pipeline import benchmarks

    root = fake_repo(tmp_path)
    rows = benchmarks.main(["--no-progress"], root=root)
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("benchmarks: 24 rows")

    tsv = read_tsv(root / "eval/benchmarks.tsv")
    header = (root / "eval/benchmarks.tsv").read_text().splitlines()[0].split("\t")
    assert tuple(header) == EVAL_COLUMNS and len(tsv) == len(rows) == 24
    assert {r["experiment"] for r in tsv} == {"benchmarks"} and {r["source"] for r in tsv} == {"builtin"}
    jobs = {(r["run_id"], r["n_loops"], r["num_fewshot"]) for r in tsv}
    assert jobs == {("stage2/d32-R3-s42", "3", "0"), ("stage2/d64-R2-s42", "2", "0"), ("stage2/d64-R2-s42", "2", "2")}
    assert {(r["task"], r["metric"]) for r in tsv} == {
        ("hellaswag", "acc"), ("hellaswag", "acc_norm"), ("arc_challenge", "acc"), ("arc_challenge", "acc_norm"),
        ("lambada_openai", "acc"), ("lambada_openai", "perplexity"), ("piqa", "acc"), ("piqa", "acc_norm")}
    assert all(float(r["value"]) >= 0 and r["stderr"] != "" for r in tsv)

    m = json.loads((root / "metrics/benchmarks.json").read_text())
    assert m["source"] == "builtin" and m["smoke_set"] is True
    assert set(m["results"]["stage2/d64-R2-s42"]) == {"0shot", "2shot"}
    assert set(m["results"]["stage2/d32-R3-s42"]["0shot"]["lambada_openai"]) == {"acc", "perplexity"}


def test_benchmarks_stage_rejects_a_run_with_another_tokenizer(tmp_path):
    from pipeline import benchmarks

    root = fake_repo(tmp_path)
    cfg_path = root / "runs/stage2/d32-R3-s42/config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer"]["sha256"] = "f" * 64
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="d32-R3-s42: tokenizer mismatch"):
        benchmarks.main(["--no-progress"], root=root)
    assert not (root / "eval/benchmarks.tsv").exists()  # rejected before anything was evaluated


def test_benchmarks_stage_checks_local_files_up_front(tmp_path):
    from pipeline import benchmarks

    root = fake_repo(tmp_path, source="local", local_dir="bench")
    (root / "bench/piqa").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"bench/hellaswag/hellaswag_val\.jsonl.*HellaSwag release"):
        benchmarks.main(["--no-progress"], root=root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["benchmarks"]["limt"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['limt'\]"):
        benchmarks.main(["--no-progress"], root=root)


def fake_val_data(monkeypatch) -> None:
    """Random validation windows for every domain, in place of data/bins."""
    import cart.data.bins
    gen = torch.Generator().manual_seed(0)

    def val_batches(bins_dir, domain, seq_len, n_seqs, batch_size):
        x = torch.randint(0, 512, (n_seqs, seq_len + 1), generator=gen)
        return [(x[i:i + batch_size, :-1], x[i:i + batch_size, 1:]) for i in range(0, n_seqs, batch_size)]

    monkeypatch.setattr(cart.data.bins, "domains", lambda bins: list(DOMAINS))
    monkeypatch.setattr(cart.data.bins, "val_batches", val_batches)


def test_variable_r_stage(tmp_path, monkeypatch):
    from pipeline import variable_r

    root = fake_repo(tmp_path, n_loops=(1, 2, 4))
    fake_val_data(monkeypatch)
    rows = variable_r.main(["--no-progress"], root=root)

    tsv = read_tsv(root / "eval/variable_r.tsv")
    assert len(tsv) == len(rows) == 3 * (len(DOMAINS) * 2 + 8)
    assert {r["experiment"] for r in tsv} == {"variable_r"} and {r["run_id"] for r in tsv} == {"stage2/d64-R2-s42"}
    ppl = {(r["n_loops"], r["task"], r["metric"]): float(r["value"]) for r in tsv if r["task"].startswith("ppl:")}
    assert len(ppl) == 3 * len(DOMAINS) * 2
    for r in ("1", "2", "4"):
        for d in DOMAINS:  # bpb = log2(ppl) / bytes_per_token (3.5 in the fake tokenizer.json)
            assert ppl[(r, f"ppl:{d}", "bpb")] == pytest.approx(math.log2(ppl[(r, f"ppl:{d}", "ppl")]) / 3.5)
    assert ppl[("1", "ppl:wikipedia", "ppl")] != ppl[("4", "ppl:wikipedia", "ppl")]  # R reaches the model
    bench = [r for r in tsv if not r["task"].startswith("ppl:")]
    assert {r["source"] for r in bench} == {"builtin"} and {r["num_fewshot"] for r in bench} == {"0"}
    assert {r["source"] for r in tsv if r["task"].startswith("ppl:")} == {"builtin"}  # corpus.domains.*.source

    m = json.loads((root / "metrics/variable_r.json").read_text())
    assert m["trained_n_loops"] == 2 and set(m["results"]) == {"R1", "R2", "R4"}


def _family_run(run_dir: Path, tok_dir: Path, fields: dict, seed: int) -> None:
    info = json.loads((tok_dir / "tokenizer.json").read_text())
    torch.manual_seed(seed)
    model = build_model(config_from_dict({"vocab_size": info["vocab_size"], "d_model": 32, "head_dim": 16,
                                          "ffn_multiple": 16, **fields}))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model, run_dir / "model.safetensors")
    write_run_config(run_dir, {"run_id": f"{run_dir.parent.name}/{run_dir.name}", "model": model.config.to_dict(),
                               "run": {"seq_len": 64},
                               "tokenizer": {"vocab_size": info["vocab_size"], "sha256": info["sha256"]}})


def test_ratplus_study_stage(tmp_path, monkeypatch):
    """Every pretrained RAT+ run and the Dense control at every pattern, each adapted run at its own."""
    from pipeline import evaluate

    root = fake_repo(tmp_path, num_fewshot=(0,))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["eval_ratplus"].update(patterns=["dense", "D4"], ppl={"seq_len": 16, "n_seqs": 2, "batch_size": 2})
    params["ratplus"]["base"] = {"d_model": 32, "n_layers": 2}  # the control: dense/L2-s42 at dense.d_model
    params["dense"].update(d_model=32, grid={"n_layers": [2], "seed": [42]})
    params["ratplus_adapt"]["variants"] = {v: {"train_pattern": v} for v in ("D4", "D8")}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    tok = root / "data/tokenizer"
    rat = {"arch": "ratplus", "n_layers": 2}
    for name in ("joint-s42", "dense_only-s42"):
        _family_run(root / "runs/ratplus" / name, tok, rat | {"joint_train": name.startswith("joint")}, 1)
    for name, pattern in (("D4-s42", "D4"), ("D8-s42", "D8")):
        _family_run(root / "runs/ratplus_adapt" / name, tok, rat | {"joint_train": False, "train_pattern": pattern}, 2)
    _family_run(root / "runs/dense/L2-s42", tok, {"arch": "dense", "n_layers": 2}, 3)
    fake_val_data(monkeypatch)
    rows = evaluate.main(["ratplus", "--no-progress"], root=root)

    settings = {(r["run_id"], r["setting"]) for r in read_tsv(root / "eval/ratplus.tsv")}
    assert settings == {("ratplus/joint-s42", "dense"), ("ratplus/joint-s42", "D4"),
                        ("ratplus/dense_only-s42", "dense"), ("ratplus/dense_only-s42", "D4"),
                        ("ratplus_adapt/D4-s42", "D4"), ("ratplus_adapt/D8-s42", "D8"),
                        ("dense/L2-s42", "dense"), ("dense/L2-s42", "D4")}
    ppl = {(r["run_id"], r["setting"]): r["value"] for r in rows if r["task"] == "ppl:wikipedia" and r["metric"] == "ppl"}
    # the pattern reaches the model: the same weights give another PPL at another pattern
    assert ppl[("ratplus/joint-s42", "dense")] != ppl[("ratplus/joint-s42", "D4")]
    assert ppl[("dense/L2-s42", "dense")] != ppl[("dense/L2-s42", "D4")]
    m = json.loads((root / "metrics/eval_ratplus.json").read_text())
    assert set(m["results"]["ratplus/joint-s42"]) == {"dense", "D4"}


def test_evaluation_params_in_params_yaml_validate():
    from cart.evaluation.session import variable_r_settings as load_settings

    bench, vr = load_settings(load_params(ROOT / "params.yaml"))
    assert bench.source == "builtin" and vr.n_loops and vr.ppl.seq_len >= 1
    with pytest.raises(ValueError, match=r"variable_r: unknown key\(s\) \['nloops'\]"):
        load_settings({**load_params(ROOT / "params.yaml"), "variable_r": {"nloops": [2]}})


def test_lrt_study_stage(tmp_path, monkeypatch):
    """Every LRT run in each PPL mode, benchmarks in the benchmark mode only; the Dense control as it is."""
    from pipeline import evaluate

    root = fake_repo(tmp_path, num_fewshot=(0,))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["eval_lrt"].update(modes=["merged", "sequential"], num_fewshot=[0, 1],
                              ppl={"seq_len": 16, "n_seqs": 2, "batch_size": 2})
    params["lrt"]["base"] = {"d_model": 32, "n_layers": 2}
    params["dense"].update(d_model=32, grid={"n_layers": [2], "seed": [42]})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    tok = root / "data/tokenizer"
    for i, name in enumerate(("shared-s42", "layerwise-s42")):
        _family_run(root / "runs/lrt" / name, tok, {"arch": "lrt", "n_layers": 2, "variant": name.split("-")[0]}, i)
    _family_run(root / "runs/dense/L2-s42", tok, {"arch": "dense", "n_layers": 2}, 3)
    fake_val_data(monkeypatch)
    rows = evaluate.main(["lrt", "--no-progress"], root=root)

    got = {(r["run_id"], r["setting"], r["num_fewshot"]) for r in rows}
    for run in ("lrt/shared-s42", "lrt/layerwise-s42"):
        assert (run, "merged", None) in got and (run, "sequential", None) in got
        assert (run, "merged", 0) in got and (run, "merged", 1) in got  # benchmarks in merged mode only
        assert not any(g[0] == run and g[1] == "sequential" and g[2] is not None for g in got)
    assert ("dense/L2-s42", "", 1) in got
    ppl = {(r["run_id"], r["setting"]): r["value"] for r in rows if r["task"] == "ppl:wikipedia" and r["metric"] == "ppl"}
    assert ppl[("lrt/shared-s42", "merged")] != ppl[("lrt/shared-s42", "sequential")]  # the mode reaches the model


def overflowing(run_dir: Path) -> None:
    """Rewrite a run's weights so its forward overflows to NaN logits while every weight stays finite
    (attention scores of inf - inf): a model that diverged at inference, not a damaged file."""
    import safetensors.torch
    path = run_dir / "model.safetensors"
    w = safetensors.torch.load_file(str(path))
    safetensors.torch.save_file({k: torch.full_like(v, 3e38) if k.endswith("attn_norm.weight") else v
                                 for k, v in w.items()}, str(path))


@pytest.mark.parametrize("stage,message", [
    ("variable_r", r"stage2/d64-R2-s42 \(R=1\): the validation loss on tinystories is nan: the model's logits are "
                   r"not finite"),
    ("benchmarks", r"stage2/d64-R2-s42 \(R=2\): benchmarks at 0 shots: the model's logits are not finite"),
])
def test_a_nan_evaluation_fails_the_stage_naming_the_run_and_what_was_measured(tmp_path, monkeypatch, capsys,
                                                                                stage, message):
    """PPL and benchmarks alike (pipeline/evaluate.py shares both paths): a non-zero exit with one line, and no
    metrics or rows written, never a NaN (or an accuracy read off NaN logits) recorded as a result."""
    import importlib

    from pipeline._cli import run
    root = fake_repo(tmp_path, num_fewshot=(0,), n_loops=(1, 2))
    fake_val_data(monkeypatch)
    overflowing(root / "runs/stage2/d64-R2-s42")
    main = importlib.import_module(f"pipeline.{stage}").main
    with pytest.raises(SystemExit) as e:
        run(lambda: main(["--no-progress"], root=root), stage)
    assert e.value.code == 1
    err = capsys.readouterr().err  # lm-eval's progress bars, then the stage's one line
    assert "Traceback" not in err and re.match(rf"^{stage}: error: {message}", err.strip().splitlines()[-1]), err
    assert not (root / "eval").exists() and sorted(p.name for p in (root / "metrics").iterdir()) == ["stage2.json"]


def test_a_benchmark_metric_that_is_not_finite_is_refused_naming_it(tmp_path, monkeypatch):
    import cart.evaluation.harness
    from cart.training.validation import NonFiniteEvaluation
    from cart.evaluation.session import EvalSession
    root = fake_repo(tmp_path)
    session = EvalSession(load_params(root / "params.yaml"), root, 0, progress=False)
    lm = session.load("stage2/d64-R2-s42")
    monkeypatch.setattr(cart.evaluation.harness, "evaluate_benchmarks", lambda *a, **k: ([
        {"task": "piqa", "metric": "acc", "value": 0.5, "stderr": 0.1},
        {"task": "lambada_openai", "metric": "perplexity", "value": math.inf, "stderr": None}], {}))
    common = {"experiment": "variable_r", "run_id": "stage2/d64-R2-s42", "setting": "", "n_loops": 4}
    with pytest.raises(NonFiniteEvaluation, match=r"^stage2/d64-R2-s42 \(R=4\): lambada_openai perplexity at 0 "
                                                  r"shots is inf; nothing written$"):
        session.benchmark_rows(lm, 0, common)


def test_eval_rows_refuse_a_value_that_is_not_a_number(tmp_path):
    from cart.evaluation.rows import write_rows
    row = {"experiment": "variable_r", "run_id": "stage2/d64-R2-s42", "setting": "", "n_loops": 2,
           "num_fewshot": None, "task": "ppl:wikipedia", "metric": "ppl", "value": math.nan, "stderr": None,
           "source": "bins"}
    with pytest.raises(ValueError, match=r"variable_r\.tsv: stage2/d64-R2-s42 ppl:wikipedia ppl: value is nan, not "
                                         r"a number; nothing written$"):
        write_rows(tmp_path / "variable_r.tsv", [row])
    assert list(tmp_path.iterdir()) == []
