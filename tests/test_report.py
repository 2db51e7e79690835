"""The report, rendered from a synthetic results store: every table and figure is produced, ours and
the paper's values stand side by side, partial results are reported as missing, builtin benchmark
rows are labelled as a smoke set, and the output is byte-identical for the same store."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cart import results
from cart.models import CARTConfig
from cart.params import load_params
from cart.report import LAYOUT, ReportSettings, build_report
from cart.report.paper import PAPER
from cart.report.studies import TABLES as STUDY_TABLES
from cart.report.tables import TABLES

_spec = importlib.util.spec_from_file_location("_cart_synthetic_project", Path(__file__).with_name("test_results.py"))
S = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(S)  # the synthetic project writer shared with test_results.py

TABLE_IDS = [item for _, items in LAYOUT for item in items if not item.startswith("fig:")]
FIGURES = [item[4:] for _, items in LAYOUT for item in items if item.startswith("fig:")]


DPI = 40  # small images keep the tests fast; the rendering path is the same


def _store(root: Path, eval_source="local", vr_source=None) -> Path:
    params = S.make_project(root, eval_source=eval_source, vr_source=vr_source)
    db = root / "results" / "results.db"
    results.build_store(db, root, results.plan_from_params(load_params(params)))
    return db


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One store and its report, rendered through the DVC stage's entry point. Benchmarks come from
    'local' files, the variable-R sweep from the builtin smoke set."""
    from pipeline.report import main
    root = tmp_path_factory.mktemp("report")
    db = _store(root, eval_source="local", vr_source="builtin")
    out = root / "reports"
    params = root / "report_params.yaml"
    params.write_text(yaml.safe_dump({"report": {"out_dir": str(out), "dpi": DPI}}))
    counts = main(["--db", str(db), "--params", str(params)])
    return db, out, counts


def _csv(out: Path, table_id: str) -> pd.DataFrame:
    return pd.read_csv(out / "tables" / f"{table_id}.csv")


def test_every_table_and_figure_is_produced(report):
    _, out, counts = report
    assert len(TABLE_IDS) == len(TABLES) + len(STUDY_TABLES) == counts["tables"]
    text = (out / "REPORT.md").read_text()
    for tid in TABLE_IDS:
        assert (out / "tables" / f"{tid}.csv").is_file() and (out / "tables" / f"{tid}.md").is_file()
        assert f"(tables/{tid}.csv)" in text
    for name in FIGURES:
        assert (out / "figures" / name).is_file(), name
        assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(figures/{name})" in text
    assert counts["tables_with_data"] == counts["tables"] and counts["figures"] == len(FIGURES)
    # paper order: Table 1 before Table 5 before Table 9 before Table 12 before the ablations
    pos = [text.index(s) for s in ("### Table 1:", "### Table 5:", "### Table 9:", "### Table 12:", "Section 8:")]
    assert pos == sorted(pos)


def test_tables_put_ours_beside_the_papers(report):
    db, out, _ = report
    t9 = _csv(out, "table09_stage2_ppl")
    ours = t9[(t9["model"] == "CART") & (t9["d_model"] == 256) & (t9["n_loops"] == 4)].iloc[0]
    assert ours["ppl_wikipedia_mean"] == pytest.approx(sum(S.s2_ppl(256, 4, s) for s in S.SEEDS) / 2, rel=1e-6)
    assert ours["n_seeds"] == 2 and pd.isna(ours["paper_ppl_wikipedia"])
    paper = t9[(t9["model"] == "CART") & (t9["d_model"] == 1024) & (t9["n_loops"] == 6)].iloc[0]
    assert paper["paper_ppl_wikipedia"] == 20.35 and pd.isna(paper["ppl_wikipedia_mean"])
    failed = t9[(t9["model"] == "CART") & (t9["d_model"] == 128) & (t9["n_loops"] == 4)].iloc[0]
    assert failed["n_seeds"] == 1 and failed["n_expected"] == 2
    md = (out / "tables" / "table09_stage2_ppl.md").read_text()
    assert "| 1/2 |" in md and "20.35" in md
    # Table 6: the paper's gain is derived from its per-R values; ours from ours
    t6 = _csv(out, "table06_r_benefit_stage1")
    p1024 = t6[(t6["d_model"] == 1024) & (t6["source"] == "paper")].iloc[0]
    assert p1024["gain_pct"] == pytest.approx(100 * (103.1 - 97.73) / 103.1)
    # Table 11b: the power law recovers the synthetic exponents
    fit = _csv(out, "table11b_power_law").set_index(["stage", "source"])
    assert fit.loc[("stage1", "ours"), "exponent"] == pytest.approx(S.S1_EXPONENT, abs=1e-6)
    assert fit.loc[("stage2", "ours"), "exponent"] == pytest.approx(S.S2_EXPONENT, abs=2e-3)
    # Spearman between the stages: 3 widths x 2 R at P=2, plus the all-widths row
    sp = _csv(out, "table11c_spearman").set_index("scope")
    assert list(sp.index) == ["d=64", "d=128", "d=256", "all widths"] and sp.loc["all widths", "n"] == 6
    assert sp.loc["d=64", "rho"] == pytest.approx(-1.0)  # Stage 1 prefers R=4 at d=64, Stage 2 R=2
    # Table 8: rho^R from the seed-mean rho
    t8 = _csv(out, "table08_spectral_radius")
    r = t8[(t8["d_model"] == 256) & (t8["n_loops"] == 4)].iloc[0]
    assert r["rho_pow_R"] == pytest.approx(r["rho_mean"] ** 4)
    # Table 10 and the ablations: deltas in %
    t10 = _csv(out, "table10_dense_vs_cart")
    assert t10.loc[t10["row"] == "Δ Dense 3L vs CART", "ppl_wikipedia"].iloc[0] == pytest.approx(-2.0, abs=1e-6)
    ab = _csv(out, "table15_ablation").set_index("variant")
    assert ab.loc["X", "delta_wikipedia_pct"] == pytest.approx(1.0, abs=1e-6)
    assert ab.loc["LIE", "status"] == "missing"
    # Tables 13/14: accuracies shown in %, paper matched on d and on shots
    t13 = _csv(out, "table13_benchmarks_0shot")
    hs = t13[(t13["task"] == "hellaswag") & (t13["d_model"] == 256)].set_index("metric")
    assert hs.loc["acc", "display_value"] == pytest.approx(100 * (0.25 + 256 / 1e4))
    # the paper's HellaSwag column is acc_norm (its authors' tables), so that is the row it stands beside
    assert hs.loc["acc_norm", "paper_value"] == 26.49 and np.isnan(hs.loc["acc", "paper_value"])
    t14 = _csv(out, "table14_benchmarks_fewshot")
    assert set(t14["num_fewshot"]) == {0, 5}
    lam = t14[(t14["task"] == "lambada_openai") & (t14["metric"] == "acc") & (t14["num_fewshot"] == 5)].iloc[0]
    assert lam["paper_value"] == 15.25
    t12 = (out / "tables" / "table12_variable_r.md").read_text()
    assert "4 (train)" in t12 and "| 1 |" in t12


def test_report_lists_missing_failed_and_stale_runs(report):
    _, out, _ = report
    st = _csv(out, "table00_status").set_index("group")
    assert st.loc["stage2", "failed"] == 1 and st.loc["stage2", "missing"] == 1
    assert st.loc["stage1", "incomplete"] == 1 and st.loc["stage1", "not_in_grid"] == 1
    bad = _csv(out, "table00_incomplete_runs").set_index("run_id")
    assert set(bad.index) == {S.FAILED, S.INCOMPLETE, S.MISSING, S.STALE, "ablation/LIE"}
    assert "non-finite" in bad.loc[S.FAILED, "failure"]
    t1 = (out / "tables" / "table01_params.md").read_text()
    assert "d32" not in t1 and "| 32 |" not in t1  # the stale run is in no table


def test_report_is_byte_identical_for_the_same_store(report, tmp_path):
    db, first, _ = report
    second = tmp_path / "again"
    shutil.copytree(first, second)
    (second / "tables" / "stale.csv").write_text("from an older report")
    (second / "REPORT.md").write_text("old")
    build_report(db, ReportSettings(out_dir=str(second), dpi=DPI))  # over the old one: replaced whole
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for f in files:
        assert (first / f).read_bytes() == (second / f).read_bytes(), f
    assert not (second / "tables" / "stale.csv").exists()


def test_report_on_a_store_with_no_results(tmp_path):
    params = S.make_project(tmp_path / "src", eval_source=None)
    db = tmp_path / "results.db"
    results.build_store(db, tmp_path / "nothing", results.plan_from_params(load_params(params)))
    out = tmp_path / "reports"
    counts = build_report(db, ReportSettings(out_dir=str(out), dpi=DPI))
    text = (out / "REPORT.md").read_text()
    assert "No complete run in the store yet" in text
    assert counts["figures"] == 0 and text.count("**Not drawn:**") == len(FIGURES)
    assert "eval/variable_r.tsv absent" in text and "no complete Stage 1 run" in text
    t9 = _csv(out, "table09_stage2_ppl")
    assert (t9.loc[t9["in_ours"], "n_seeds"] == 0).all() and t9["paper_ppl_wikipedia"].notna().any()
    md = (out / "tables" / "table09_stage2_ppl.md").read_text()
    assert "missing" in md  # expected configs without results say so
    st = _csv(out, "table00_status").set_index("group")
    assert st.loc["stage2", "missing"] == st.loc["stage2", "expected"] == 12


def test_builtin_benchmarks_are_labelled_as_a_smoke_set(report):
    _, out, _ = report
    md = (out / "tables" / "table12_variable_r.md").read_text()
    assert "SMOKE SET" in md and "not benchmark results" in md and "[builtin SMOKE SET]" in md
    data = _csv(out, "table12_variable_r")
    assert (data["source"] == "builtin").all() and data["paper_value"].isna().all()  # never beside the paper
    md13 = (out / "tables" / "table13_benchmarks_0shot.md").read_text()
    assert "SMOKE SET" not in md13 and "[local]" in md13  # real (local) benchmark files are not labelled so
    assert "SMOKE SET" in (out / "REPORT.md").read_text()


def test_our_paper_sized_config_matches_the_papers_parameter_count(tmp_path):
    """A Stage 2 run at the paper's d=1024, P=6, R=6 (Llama-2 vocabulary) lands on its Table 1 row."""
    model = CARTConfig(vocab_size=32_000, d_model=1024, head_dim=64, ffn_multiple=256, n_prelude=6, n_loops=6)
    S.write_run(tmp_path, "stage2", "d1024-R6-s42", model, 42, 20.5)
    # no params grid here, an incomplete run and a run whose config is unreadable: still rendered
    S.write_run(tmp_path, "stage2", "d1024-R8-s42", model.replace(n_loops=8), 42, None, status=None, steps_done=10)
    (tmp_path / "runs" / "dense" / "L7-s42").mkdir(parents=True)
    (tmp_path / "runs" / "dense" / "L7-s42" / "config.json").write_text("{broken")
    db = tmp_path / "r.db"
    results.build_store(db, tmp_path)
    out = tmp_path / "reports"
    build_report(db, ReportSettings(out_dir=str(out), dpi=DPI))
    t1 = _csv(out, "table01_params")
    row = t1[(t1["d_model"] == 1024) & (t1["n_prelude"] == 6) & (t1["n_loops"] == 6)].iloc[0]
    assert row["stored_params"] / 1e6 == pytest.approx(row["paper_stored_M"], abs=0.1)
    assert row["effective_params"] / 1e6 == pytest.approx(row["paper_effective_M"], abs=0.1)
    t9 = _csv(out, "table09_stage2_ppl")
    row = t9[(t9["model"] == "CART") & (t9["d_model"] == 1024) & (t9["n_loops"] == 6)].iloc[0]
    assert row["ppl_wikipedia_mean"] == pytest.approx(20.5) and row["paper_ppl_wikipedia"] == 20.35
    bad = _csv(out, "table00_incomplete_runs").set_index("run_id")
    assert bad.loc["stage2/d1024-R8-s42", "status"] == "incomplete"
    assert bad.loc["dense/L7-s42", "status"] == "incomplete"
    assert "unreadable JSON" in (out / "REPORT.md").read_text()


def test_report_refuses_to_replace_a_foreign_folder(report, tmp_path):
    db, _, _ = report
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing"):
        build_report(db, ReportSettings(out_dir=str(foreign)))
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError):
        ReportSettings(out_dir=".")


def test_pipeline_report_rejects_bad_params_and_a_missing_store(report, tmp_path):
    db, _, counts = report
    assert counts["figures"] == len(FIGURES)  # the fixture ran `python -m pipeline.report`'s main
    from pipeline.report import main
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"report": {"out_dir": str(tmp_path / "out"), "typo": 1}}))
    with pytest.raises(ValueError, match="typo"):
        main(["--db", str(db), "--params", str(params)])
    params.write_text(yaml.safe_dump({"report": {"out_dir": str(tmp_path / "out"), "dpi": DPI}}))
    with pytest.raises(FileNotFoundError):
        main(["--db", str(tmp_path / "absent.db"), "--params", str(params)])
    assert not (tmp_path / "out").exists()


def test_paper_constants_are_self_consistent():
    """The paper's own numbers agree where two tables print the same quantity."""
    for (d, p, r), (_, eff, _) in PAPER["params"].items():
        if (d, p, r) in PAPER["throughput"]:
            assert PAPER["throughput"][(d, p, r)][0] == eff
    for d, by_r in PAPER["stage2_r"].items():
        assert PAPER["stage2_ppl"][(d, 6, 6)][1] == pytest.approx(by_r[6], abs=0.006)
    for d, (p, r, wiki, *_rest) in PAPER["stage1_best"].items():
        assert PAPER["stage1_r"][d][r] == pytest.approx(wiki, abs=0.051)
    assert PAPER["benchmarks_fewshot"][0][0] == PAPER["variable_r"][6][0]


def test_study_tables_put_each_family_beside_its_control(report):
    """The lr sweep marks each family's best lr; LRT rows carry the BPB delta vs the Dense control; RAT+ rows
    rank the dense-only model's PPL loss at a sparse pattern above the joint-trained one's, as the store says."""
    _, out, _ = report
    sweep = _csv(out, "table16_lr_sweep")
    best = sweep[sweep["best"]].set_index("family")["lr"]
    assert best["CART"] == pytest.approx(1e-3) and best["Dense"] == pytest.approx(3e-3)
    text = (out / "tables" / "table16_lr_sweep.md").read_text()
    assert text.count("**best**") == 2
    lrt = _csv(out, "table17_lrt").set_index("run_id")
    assert lrt.loc["lrt/shared-s42", "bpb_wikipedia_sequential"] == pytest.approx(1.50 * 0.99)
    assert "Δ BPB vs Dense" in (out / "tables" / "table17_lrt.md").read_text()
    rat = _csv(out, "table18_ratplus")
    at = {(r.run_id, r.pattern): r.ppl_vs_dense_pct for r in rat.itertuples()}
    assert at[("ratplus/dense_only-s42", "D8")] == pytest.approx(60.0) and at[("ratplus/joint-s42", "D8")] == pytest.approx(12.0)
    assert set(rat[rat["run_id"] == "ratplus_adapt/D4-s42"]["pattern"]) == {"D4"}
    flops = rat.set_index(["run_id", "pattern"])["attention_flops"]
    assert flops[("ratplus/joint-s42", "D8")] < flops[("ratplus/joint-s42", "D4")] < flops[("ratplus/joint-s42", "dense")]
    assert (out / "figures" / "ratplus.png").is_file()
    paper = _csv(out, "table19_paper_text_vs_code")
    assert "core update" in set(paper["item"])


def test_a_multi_seed_spot_check_is_one_seed_mean_beside_the_papers(tmp_path):
    """ablation.multi_seed's P=4, R=10 spot check: Table 9 averages its complete seeds (n complete /
    n expected, mean ± std) beside the paper's 3-seed value; the ablation table has a row per seed,
    each compared with the Stage 2 base run of its own seed."""
    from cart.report.tables.ablation import table_ablation
    from cart.report.tables.scaling import table_stage2_ppl
    params = S.make_project(tmp_path, eval_source=None)
    p = load_params(params)
    spot = {"d_model": 1024, "n_prelude": 4, "n_loops": 10}
    p["ablation"]["multi_seed"] = {"seeds": [42, 43, 44], "variants": {"P4R10": spot}}
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    wiki = {42: 30.0, 43: 33.0}
    for seed, ppl in wiki.items():
        S.write_run(tmp_path, "ablation", f"P4R10-s{seed}", S.cart(1024, 4, 10), seed, ppl, variant="P4R10")
    S.write_run(tmp_path, "ablation", "P4R10-s44", S.cart(1024, 4, 10), 44, 31.0, status="failed", steps_done=20,
                variant="P4R10")
    db = tmp_path / "results" / "results.db"
    results.build_store(db, tmp_path, results.plan_from_params(load_params(params)))
    con = results.connect(db)

    t9 = table_stage2_ppl(con).data
    row = t9[t9["model"] == "CART spot check"].set_index(["d_model", "n_prelude", "n_loops"]).loc[(1024, 4, 10)]
    assert (row["n_seeds"], row["n_expected"]) == (2, 3)
    assert row["ppl_wikipedia_mean"] == pytest.approx(np.mean(list(wiki.values())))
    assert row["ppl_wikipedia_std"] == pytest.approx(np.std(list(wiki.values()), ddof=1))
    assert row["paper_ppl_wikipedia"] == PAPER["stage2_ppl"][(1024, 4, 10)][1]
    assert ((t9["model"] == "CART spot check") & (t9["n_loops"] == 10)).sum() == 1  # one row, not one per seed

    ab = table_ablation(con).data.set_index("variant")
    assert {"P4R10-s42", "P4R10-s43", "P4R10-s44", "X"} <= set(ab.index)
    for seed, ppl in wiki.items():  # each seed against the Stage 2 base run of its own seed
        want = 100 * (ppl / S.s2_ppl(256, 4, seed) - 1)
        assert ab.loc[f"P4R10-s{seed}", "delta_wikipedia_pct"] == pytest.approx(want, rel=1e-6)
    assert np.isnan(ab.loc["P4R10-s44", "delta_wikipedia_pct"])  # failed, and seed 44 is not in Stage 2
    assert ab.loc["X", "delta_wikipedia_pct"] == pytest.approx(1.0, abs=1e-6)  # single-seed: ablation.seed
    table, _ = results.ablation_table(con)
    base = dict(zip(table["name"], table["base_run_id"]))
    assert (base["P4R10-s43"], base["X"]) == ("stage2/d256-R4-s43", "stage2/d256-R4-s42")
    assert pd.isna(base["P4R10-s44"])


def test_the_spectral_radius_figure_draws_a_panel_per_stage_with_a_log(report, tmp_path):
    """Stage 1 and Stage 2 side by side where both have logs; a store of Stage 1 alone (the committed
    Stage 1 campaign) gets one panel, not an empty Stage 2 beside it."""
    import sqlite3
    import struct

    from cart.report.figures import fig_spectral

    def png_width(db: Path) -> int:
        con = sqlite3.connect(db)
        try:
            assert fig_spectral(con, tmp_path / "fig.png", DPI) is not None
        finally:
            con.close()
        return struct.unpack(">I", (tmp_path / "fig.png").read_bytes()[16:20])[0]

    both = png_width(report[0])
    stage1_only = png_width(Path(__file__).resolve().parents[1] / "gpu" / "stage1" / "results.db")
    assert (both, stage1_only) == (2 * 5.5 * DPI, 5.5 * DPI)
