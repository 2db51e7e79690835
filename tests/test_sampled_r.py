"""Issue 20's study: the `sampled_r` run group (one CART config trained with a fixed, a uniform and a
Poisson-lognormal R per step at the same mean R), its evaluation at every inference R
(pipeline/evaluate.py sampled_r) and its report section."""
import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import read_tsv_rows as read_rows

from cart.experiments import GROUPS, resolve_run, run_names, validate_profile
from cart.params import load_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = load_params(ROOT / "params.yaml")
SCHEMES = ("fixed", "uniform", "poisson_lognormal")


# ---- the run group ---------------------------------------------------------------------------------
def test_the_group_trains_one_model_under_each_scheme_at_the_same_mean_r():
    names = run_names(DEFAULT, ["sampled_r"])["sampled_r"]
    seeds = DEFAULT["sampled_r"]["seeds"]
    assert sorted(names) == sorted(f"{v}-s{s}" for v in SCHEMES for s in seeds)
    specs = {n: resolve_run(DEFAULT, "sampled_r", n, 2048) for n in names}
    base = DEFAULT["sampled_r"]["base"]
    for n, spec in specs.items():
        variant = n.rsplit("-s", 1)[0]
        assert spec.variant == variant and spec.train.loop_sampling.scheme == variant
        assert (spec.model.d_model, spec.model.n_prelude, spec.model.n_loops) == \
            (base["d_model"], base["n_prelude"], base["n_loops"])
    # one model, one token budget (Stage 2's run settings), one recipe: only loop_sampling differs
    first = next(iter(specs.values()))
    stage2 = resolve_run(DEFAULT, "stage2", run_names(DEFAULT, ["stage2"])["stage2"][0], 2048)
    for spec in specs.values():
        assert spec.model == first.model and spec.run == stage2.run
        assert dataclasses.replace(spec.train, loop_sampling=first.train.loop_sampling) == first.train
    # the same mean R: uniform centred on n_loops, Poisson-lognormal's mean n_loops (less its clamp)
    R = base["n_loops"]
    uni = specs[f"uniform-s{seeds[0]}"].train.loop_sampling
    assert (uni.r_min + uni.r_max) / 2 == R
    pln = specs[f"poisson_lognormal-s{seeds[0]}"].train.loop_sampling
    draws = [pln.sample(R, 0, s) for s in range(4000)]
    assert np.mean(draws) == pytest.approx(R, rel=0.05) and min(draws) >= 1 and max(draws) <= pln.r_max
    assert specs[f"fixed-s{seeds[0]}"].train.loop_sampling.varies is False


def _edit(mutate) -> dict:
    p = copy.deepcopy(DEFAULT)
    mutate(p["sampled_r"])
    return p


def _ls(variant: str, **fields):
    return lambda s: s["variants"][variant]["train"]["loop_sampling"].update(fields)


@pytest.mark.parametrize("mutate,key", [
    (_ls("uniform", scheme="gaussian"), "sampled_r.variants.uniform.train.loop_sampling.scheme"),
    (_ls("uniform", r_min=5, r_max=3), "sampled_r.variants.uniform.train.loop_sampling: r_min"),
    (_ls("uniform", r_min=0, r_max=8), "sampled_r.variants.uniform.train.loop_sampling: r_min"),
    (_ls("uniform", r_min=2), "sampled_r.variants.uniform.train.loop_sampling.r_max: uniform R must average"),
    (_ls("poisson_lognormal", sigma=-1.0), "sampled_r.variants.poisson_lognormal.train.loop_sampling: sigma"),
    (_ls("poisson_lognormal", r_max=3), "sampled_r.variants.poisson_lognormal.train.loop_sampling.r_max"),
    (_ls("fixed", r_min=1), "sampled_r.variants.fixed.train.loop_sampling: r_min"),
    (lambda s: s["variants"]["uniform"].update(d_model=128), "sampled_r.variants.uniform.d_model: sampled_r variants "
                                                              "differ in training alone"),
    (lambda s: s["variants"].update(other={"train": {"lr": 1e-3}}),
     "sampled_r.variants.other.train.loop_sampling: every sampled_r variant sets it"),
    (lambda s: s["variants"]["uniform"]["train"].update(lrr=1.0), "sampled_r.variants.uniform.train.lrr: unknown"),
    (lambda s: s["variants"]["uniform"]["train"].update(lr=-1.0), "sampled_r.variants.uniform.train.lr: out of range"),
    (lambda s: s["train"].update(warmup_steps=10_000), "sampled_r.train.warmup_steps=10000 must be <"),
    (lambda s: s.update(train=[1]), "sampled_r.train: expected a mapping"),
    (lambda s: s["base"].update(n_loops=1), "sampled_r.variants.uniform.train.loop_sampling.r_max"),
])
def test_bad_params_fail_with_one_message_naming_the_key(mutate, key):
    with pytest.raises(ValueError) as e:
        validate_profile(_edit(mutate), vocab_size=2048)
    assert str(e.value).startswith(key), str(e.value)
    assert "\n" not in str(e.value)


def test_the_group_reads_only_its_declared_keys():
    keys = GROUPS["sampled_r"].keys("uniform-s42")
    assert "sampled_r.variants.uniform" in keys and "stage2.run" in keys and "stage2.train" not in keys
    p = copy.deepcopy(DEFAULT)
    p["stage2"]["run"]["steps"] = 40  # Stage 2's token budget is the group's
    assert {resolve_run(p, "sampled_r", n, 2048).run.steps for n in run_names(p, ["sampled_r"])["sampled_r"]} == {40}


# ---- the evaluation study ----------------------------------------------------------------------------
def test_the_study_writes_one_row_per_run_r_and_domain(tmp_path, monkeypatch, one_thread):
    """Every sampled_r run at every inference R: one PPL and one BPB row per (run, R, domain), R in
    the rows' n_loops; benchmarks at each R when num_fewshot asks for them."""
    from test_harness_pipeline import DOMAINS, _family_run, fake_repo, fake_val_data

    from pipeline import evaluate
    root = fake_repo(tmp_path, num_fewshot=(0,))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["eval_sampled_r"].update(n_loops=[1, 3], num_fewshot=[0], benchmark_limit=2,
                                    ppl={"seq_len": 16, "n_seqs": 2, "batch_size": 2},
                                    exit_thresholds=[1.0e9, 1.0e-12], exit_max_loops=3)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    names = run_names(params, ["sampled_r"])["sampled_r"]
    for i, name in enumerate(names):
        _family_run(root / "runs/sampled_r" / name, root / "data/tokenizer", {"arch": "cart", "n_prelude": 1,
                                                                            "n_loops": 2}, i)
    fake_val_data(monkeypatch)
    rows = evaluate.main(["sampled_r", "--no-progress"], root=root)

    tsv = read_rows(root / "eval/sampled_r.tsv")
    assert len(tsv) == len(rows) and {r["experiment"] for r in tsv} == {"sampled_r"}
    # adaptive exit, no benchmarks: a huge threshold stops every token after one loop (the R=1 rows'
    # PPL), a tiny one loops to exit_max_loops (the R=3 rows')
    exits = [r for r in tsv if r["setting"]]
    tsv = [r for r in tsv if not r["setting"]]
    assert {(r["setting"], r["n_loops"], r["metric"]) for r in exits} == \
        {(s, "3", m) for s in ("exit<1e+09", "exit<1e-12") for m in ("ppl", "bpb", "mean_loops")}
    assert all(r["task"].startswith("ppl:") for r in exits)
    by = {(r["run_id"], r["setting"] or r["n_loops"], r["task"], r["metric"]): float(r["value"]) for r in exits + tsv}
    # exact on any CPU: the exit runs each iteration on the same batches and shapes, with the same
    # loop-index rows, as the fixed-R forward, and every change sits far from 1e9 and from 1e-12
    for n in names:
        for d in DOMAINS:
            run = f"sampled_r/{n}"
            assert by[(run, "exit<1e+09", f"ppl:{d}", "mean_loops")] == 1.0
            assert by[(run, "exit<1e+09", f"ppl:{d}", "ppl")] == by[(run, "1", f"ppl:{d}", "ppl")]
            assert by[(run, "exit<1e-12", f"ppl:{d}", "mean_loops")] == 3.0
            assert by[(run, "exit<1e-12", f"ppl:{d}", "ppl")] == by[(run, "3", f"ppl:{d}", "ppl")]
    ppl = [r for r in tsv if r["task"].startswith("ppl:")]
    keys = [(r["run_id"], r["n_loops"], r["task"], r["metric"]) for r in ppl]
    assert len(keys) == len(set(keys)) == len(names) * 2 * len(DOMAINS) * 2
    assert set(keys) == {(f"sampled_r/{n}", str(R), f"ppl:{d}", m) for n in names for R in (1, 3) for d in DOMAINS
                         for m in ("ppl", "bpb")}
    assert {r["setting"] for r in tsv} == {""}
    value = {k: float(r["value"]) for k, r in zip(keys, ppl)}
    run = f"sampled_r/{names[0]}"
    assert value[(run, "1", "ppl:wikipedia", "ppl")] != value[(run, "3", "ppl:wikipedia", "ppl")]  # R reaches it
    bench = [r for r in tsv if not r["task"].startswith("ppl:")]
    assert {(r["run_id"], r["n_loops"], r["num_fewshot"]) for r in bench} == \
        {(f"sampled_r/{n}", str(R), "0") for n in names for R in (1, 3)}
    m = json.loads((root / "metrics/eval_sampled_r.json").read_text())
    assert set(m["results"]) == {f"sampled_r/{n}" for n in names}
    assert set(m["results"][run]) == {"R1", "R3", "exit<1e+09", "exit<1e-12"}


def test_eval_settings_are_validated_naming_the_key():
    from cart.evaluation.session import study_settings
    for bad, key in (({"n_loops": [0, 2]}, "eval_sampled_r.*n_loops"), ({"n_loops": [2, 2]}, "n_loops"),
                     ({"num_fewshot": [-1]}, "num_fewshot"), ({"benchmark_limit": 0}, "benchmark_limit"),
                     ({"exit_thresholds": [0.0]}, r"exit_thresholds: expected distinct relative changes > 0"),
                     ({"exit_thresholds": [0.1, 0.1]}, "exit_thresholds"),
                     ({"exit_max_loops": 0}, r"exit_max_loops: must be >= 1"),
                     ({"nloops": [2]}, r"eval_sampled_r: unknown key\(s\) \['nloops'\]")):
        p = copy.deepcopy(DEFAULT)
        p["eval_sampled_r"].update(bad)
        with pytest.raises(ValueError, match=key):
            study_settings(p, "sampled_r")


# ---- the store, the summary and the report -------------------------------------------------------------
def _store(root: Path, source: str) -> Path:
    import test_results as S

    from cart import results
    params = S.make_project(root, eval_source=source)
    db = root / "results.db"
    results.build_store(db, root, results.plan_from_params(load_params(params)))
    return db


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The synthetic project of tests/test_results.py (its sampled_r runs and eval/sampled_r.tsv), its
    store and its report."""
    from cart.report import ReportSettings, build_report
    root = tmp_path_factory.mktemp("sampled_r")
    db = _store(root, "local")
    build_report(db, ReportSettings(out_dir=str(root / "reports"), dpi=40))
    return root, db, root / "reports"


def test_the_store_ingests_every_row_and_the_summary_keeps_the_spectral_radius(synthetic):
    import test_results as S

    from cart import results
    root, db, _ = synthetic
    con = results.connect(db)
    try:
        ev = results.load_eval_results(con, "sampled_r")
        per_r = len(S.DOMAINS) * 2 + 1  # PPL and BPB per domain, one benchmark row
        per_exit = len(S.DOMAINS) * 3  # PPL, BPB and mean loops per domain
        assert len(ev) == len(S.SAMPLED) * (len(S.SAMPLED_R) * per_r + per_exit)
        assert set(ev["n_loops"]) == set(S.SAMPLED_R) and set(ev["experiment"]) == {"sampled_r"}
        summary = results.summarize_group(con, "sampled_r")
        assert summary["runs"]["n_complete"] == len(S.SAMPLED)
        assert {n: r["spectral_radius"] for n, r in summary["per_run"].items()} == \
            {f"{v}-s42": rho for v, (_, _, rho) in S.SAMPLED.items()}
        assert "spectral_radius" not in next(iter(results.summarize_group(con, "lrt")["per_run"].values()))
    finally:
        con.close()


def test_the_report_section_puts_ppl_vs_r_per_scheme_beside_the_paper(synthetic):
    import test_results as S
    _, _, out = synthetic
    data = pd.read_csv(out / "tables/table20_sampled_r.csv")
    assert list(dict.fromkeys(data["scheme"])) == list(SCHEMES)
    assert len(data) == len(S.SAMPLED) * len(S.SAMPLED_R)
    got = data.set_index(["scheme", "n_loops"])
    for v in SCHEMES:
        for r in S.SAMPLED_R:
            assert got.loc[(v, r), "ppl_wikipedia"] == pytest.approx(S.sampled_ppl(v, r))
        assert got.loc[(v, 4), "spectral_radius"] == pytest.approx(S.SAMPLED[v][2])
        assert got.loc[(v, 4), "mean_acc_0shot"] == pytest.approx(0.3)
    assert got.loc[("poisson_lognormal", 1), "realised_mean_r"] == pytest.approx(3.25)  # the steps' logged R
    assert got.loc[("fixed", 1), "realised_mean_r"] == 4  # a fixed run logs none: its trained R
    md = (out / "tables/table20_sampled_r.md").read_text()
    assert "| PPL R=4 (train) |" in md and "U{1..7}" in md
    fixed = next(line for line in md.splitlines() if line.startswith("| fixed |"))
    assert "| 88 | 4 | 2.2 |" in fixed  # PPL at R=8, the best R, PPL at R=8 / PPL at the trained R
    assert "LAMBADA perplexity 2632.6 at R=2" in md and "below 1 under every scheme" in md
    assert "SMOKE" not in md  # local benchmark files, a store with no profile: not labelled as smoke
    report = (out / "REPORT.md").read_text()
    assert "(figures/sampled_r.png)" in report and "(tables/table20_sampled_r.csv)" in report
    assert (out / "figures/sampled_r.png").read_bytes()[:4] == b"\x89PNG"


def test_the_adaptive_exit_table_puts_loops_used_beside_the_fixed_r_ppl(synthetic):
    import test_results as S
    _, _, out = synthetic
    data = pd.read_csv(out / "tables/table21_adaptive_exit.csv").set_index("scheme")
    assert list(data.index) == list(SCHEMES) and set(data["threshold"]) == {0.05}
    assert set(data["max_loops"]) == {max(S.SAMPLED_R)}
    for v, (loops, rel) in S.SAMPLED_EXIT.items():
        assert data.loc[v, "mean_loops_wikipedia"] == loops
        assert data.loc[v, "ppl_wikipedia"] == pytest.approx(S.sampled_ppl(v, 4) * rel)
        assert data.loc[v, "ppl_wikipedia_trained_r"] == pytest.approx(S.sampled_ppl(v, 4))
        assert data.loc[v, "ppl_wikipedia_max_r"] == pytest.approx(S.sampled_ppl(v, max(S.SAMPLED_R)))
    md = (out / "tables/table21_adaptive_exit.md").read_text()
    assert "| uniform | sampled_r/uniform-s42 | 0.05 | 8 | 3 |" in md
    assert "(tables/table21_adaptive_exit.csv)" in (out / "REPORT.md").read_text()


def test_smoke_numbers_are_labelled_as_smoke(tmp_path):
    from cart import results
    from cart.report.studies import fig_sampled_r, table_sampled_r
    db = _store(tmp_path, "builtin")
    con = results.connect(db)
    try:
        t = table_sampled_r(con)
        assert t.notes[0].startswith("SMOKE") and "not a result" in t.notes[0]
        assert fig_sampled_r(con, tmp_path / "f.png", 40) is not None
    finally:
        con.close()


def test_no_rows_render_as_not_run(tmp_path):
    from cart import results
    from cart.report.studies import fig_sampled_r, table_sampled_r
    db = _store(tmp_path, None)
    con = results.connect(db)
    try:
        t = table_sampled_r(con)
        assert t.empty_reason.startswith("eval/sampled_r.tsv absent") and t.view.empty
        assert fig_sampled_r(con, tmp_path / "f.png", 40) is None
    finally:
        con.close()
