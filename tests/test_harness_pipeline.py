"""The evaluation stages end to end on a fake repository: pipeline/benchmarks.py and
pipeline/variable_r.py with tiny random runs, the builtin smoke set and a stand-in validation reader."""
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml

from cart.harness import TSV_COLUMNS, read_tsv
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
    assert "Table 13 layout" in out and "Table 14 layout" in out and "SMOKE SET" in out
    assert out.strip().splitlines()[-1].startswith("benchmarks: 24 rows")

    tsv = read_tsv(root / "eval/benchmarks.tsv")
    header = (root / "eval/benchmarks.tsv").read_text().splitlines()[0].split("\t")
    assert tuple(header) == TSV_COLUMNS and len(tsv) == len(rows) == 24
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


def test_variable_r_stage(tmp_path, monkeypatch, capsys):
    from pipeline import variable_r

    root = fake_repo(tmp_path, n_loops=(1, 2, 4))
    gen = torch.Generator().manual_seed(0)

    def val_batches(bins_dir, domain, seq_len, n_seqs, batch_size):
        x = torch.randint(0, 512, (n_seqs, seq_len + 1), generator=gen)
        return [(x[i:i + batch_size, :-1], x[i:i + batch_size, 1:]) for i in range(0, n_seqs, batch_size)]

    monkeypatch.setattr(variable_r, "_val_data", lambda: (lambda bins: list(DOMAINS), val_batches))
    rows = variable_r.main(["--no-progress"], root=root)
    out = capsys.readouterr().out
    assert "Table 12 layout" in out and "| 2 (train) |" in out

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
    png = (root / "eval/variable_r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_evaluation_params_in_params_yaml_validate():
    from pipeline.variable_r import load_settings

    bench, vr = load_settings(load_params(ROOT / "params.yaml"))
    assert bench.source == "builtin" and vr.n_loops and vr.ppl.seq_len >= 1
    with pytest.raises(ValueError, match=r"variable_r: unknown key\(s\) \['nloops'\]"):
        load_settings({**load_params(ROOT / "params.yaml"), "variable_r": {"nloops": [2]}})
