"""Inference-time depth and downstream benchmarks (paper Tables 12-14): accuracy and LAMBADA
perplexity per evaluated R, zero-shot and few-shot, the paper's columns beside ours."""
from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd

from ...results.query import load_eval_results, load_runs
from ..paper import PAPER, PAPER_BENCH_COLUMNS
from ..render import DASH, Table, isnan, sig
from .common import int_or_none


# ---- Tables 12-14: variable R, benchmarks -------------------------------------------------------------------
def _is_acc(metric: str) -> bool:
    return str(metric).startswith("acc")


def _acc_scale(df: pd.DataFrame) -> float:
    """lm-eval reports accuracies as fractions; show percent (unless they already are)."""
    acc = df.loc[df["metric"].map(_is_acc), "value"].dropna()
    return 1.0 if len(acc) and acc.max() > 1.0 else 100.0


def _display_value(df: pd.DataFrame) -> pd.Series:
    scale = _acc_scale(df)
    return np.where(df["metric"].map(_is_acc), df["value"] * scale, df["value"])


def _col_name(task: str, metric: str) -> str:
    unit = " (%)" if _is_acc(metric) else ""
    return f"{task} {metric}{unit}"


_PAPER_COL = {tm: i for i, tm in enumerate(PAPER_BENCH_COLUMNS)}


SMOKE_NOTE = ("SMOKE SET: rows with source 'builtin' are a generated set in the benchmarks' formats, NOT "
              "HellaSwag/ARC/LAMBADA/PIQA; they check the pipeline and are not benchmark results, so no paper "
              "value is shown beside them.")


def _has_smoke(df: pd.DataFrame) -> bool:
    """Benchmark rows (not ppl:<domain> rows) from the builtin smoke set."""
    if df.empty:
        return False
    return bool(((df["source"] == "builtin") & ~df["task"].astype(str).str.startswith("ppl:")).any())


def _bench_long(df: pd.DataFrame, paper_lookup) -> pd.DataFrame:
    df = df.copy()
    df["display_value"] = _display_value(df) if len(df) else []
    df["paper_value"] = [paper_lookup(r) if r["source"] != "builtin" else np.nan for _, r in df.iterrows()]
    return df


def _wide(df: pd.DataFrame, index: list[str], with_paper: bool) -> pd.DataFrame:
    """One row per index value, one column per (task, metric), headed with its source; the paper's
    value beside each column the paper reports (never beside builtin smoke-set rows)."""
    cols = sorted({(t, m) for t, m in zip(df["task"], df["metric"])},
                  key=lambda tm: (tm[0].startswith("ppl:"), tm[0], tm[1]))
    head = {}
    for t, m in cols:
        src = ", ".join(sorted(set(df.loc[(df["task"] == t) & (df["metric"] == m), "source"].dropna())))
        smoke = " SMOKE SET" if "builtin" in src and not t.startswith("ppl:") else ""
        head[(t, m)] = f"{_col_name(t, m)} [{src or '?'}{smoke}]"
    rows = []
    for key, g in df.groupby(index, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(index, key))
        for t, m in cols:
            hit = g[(g["task"] == t) & (g["metric"] == m)]
            row[head[(t, m)]] = sig(hit["display_value"].iloc[0], 4) if len(hit) else DASH
            if with_paper and (t, m) in _PAPER_COL:
                pv = hit["paper_value"].iloc[0] if len(hit) else np.nan
                row[f"paper {_col_name(t, m)}"] = sig(pv, 4)
        rows.append(row)
    return pd.DataFrame(rows)


def table_variable_r(con: sqlite3.Connection) -> Table:
    ev = load_eval_results(con, "variable_r").dropna(subset=["n_loops"])
    runs = load_runs(con, current=False)
    trained = dict(zip(runs["run_id"], runs["n_loops"]))
    pv = PAPER["variable_r"]

    def paper(r):
        i = _PAPER_COL.get((r["task"], r["metric"]))
        return pv[int(r["n_loops"])][i] if i is not None and not isnan(r["n_loops"]) and int(r["n_loops"]) in pv \
            else np.nan
    data = _bench_long(ev, paper) if len(ev) else ev.assign(display_value=[], paper_value=[])
    if len(data):
        data["trained_n_loops"] = data["run_id"].map(lambda r: int_or_none(trained.get(r)))
    notes = ["Inference R changed at evaluation time, no fine-tuning; '(train)' marks the R the model was trained "
             "with. Accuracies in %, LAMBADA perplexity and ppl:<domain> rows (validation PPL/BPB on our held-out "
             "sets; source 'builtin' there = the builtin smoke corpus) as is. Paper: d=1024, P=6, trained "
             f"R={PAPER['variable_r_trained']}; compare shapes, not levels, unless the configs match."]
    if _has_smoke(data):
        notes.append(SMOKE_NOTE)
    if len(data):
        view = _wide(data, ["run_id", "n_loops"], with_paper=True)
        view.insert(1, "R", [f"{int(r['n_loops'])} (train)"
                             if int_or_none(trained.get(r["run_id"])) == int(r["n_loops"])
                             else str(int(r["n_loops"])) for _, r in view.iterrows()])
        view = view.drop(columns=["n_loops"]).rename(columns={"run_id": "run"})
    else:
        view = pd.DataFrame()
    return Table("table12_variable_r", "Table 12: variable R at inference", data, view, notes,
                 empty_reason=None if len(data) else "eval/variable_r.tsv absent or empty (variable_r stage not run)")


def _bench_rows(con) -> pd.DataFrame:
    ev = load_eval_results(con, "benchmarks")
    runs = load_runs(con, current=False)[["run_id", "d_model", "n_loops"]].rename(columns={"n_loops": "trained_R"})
    return ev.merge(runs, on="run_id", how="left")


def table_benchmarks_0shot(con: sqlite3.Connection) -> Table:
    ev = _bench_rows(con)
    ev = ev[ev["num_fewshot"] == 0]
    pb = PAPER["benchmarks_0shot"]

    def paper(r):
        i = _PAPER_COL.get((r["task"], r["metric"]))
        d = int_or_none(r["d_model"])
        return pb[d][i + 1] if i is not None and d in pb else np.nan
    data = _bench_long(ev, paper) if len(ev) else ev.assign(display_value=[], paper_value=[])
    notes = ["One model per width: the Stage 2 best R (lowest seed-mean Wikipedia PPL), its lowest seed "
             "(metrics/stage2.json best_per_d). Accuracies in %. Paper values are matched on d "
             "(the paper's best R per d: " + ", ".join(f"d={d}: R={v[0]}" for d, v in sorted(pb.items())) + ")."]
    if _has_smoke(data):
        notes.append(SMOKE_NOTE)
    if len(data):
        view = _wide(data, ["d_model", "trained_R", "run_id"], with_paper=True)
        view = view.rename(columns={"d_model": "d", "trained_R": "R", "run_id": "run"})
        view["d"] = view["d"].map(lambda v: DASH if isnan(v) else str(int(v)))
        view["R"] = view["R"].map(lambda v: DASH if isnan(v) else str(int(v)))
    else:
        view = pd.DataFrame()
    return Table("table13_benchmarks_0shot", "Table 13: downstream benchmarks, 0-shot, best model per width", data,
                 view, notes, empty_reason=None if len(data) else
                 "eval/benchmarks.tsv absent or has no 0-shot rows (benchmarks stage not run)")


def table_benchmarks_fewshot(con: sqlite3.Connection) -> Table:
    ev = _bench_rows(con)
    few = ev[ev["num_fewshot"].fillna(0) > 0]
    if len(few):
        run = sorted(few["run_id"].dropna().unique())[-1] if few["run_id"].notna().any() else None
        ev = ev[ev["run_id"] == run]
    else:
        ev = ev.iloc[0:0]
    pf = PAPER["benchmarks_fewshot"]

    def paper(r):
        i = _PAPER_COL.get((r["task"], r["metric"]))
        k = int_or_none(r["num_fewshot"])
        return pf[k][i] if i is not None and k in pf else np.nan
    data = _bench_long(ev, paper) if len(ev) else ev.assign(display_value=[], paper_value=[])
    notes = ["The best model (metrics/stage2.json best_run_id) at every num_fewshot in params; paper: d=1024, R=6."]
    if _has_smoke(data):
        notes.append(SMOKE_NOTE)
    if len(data):
        view = _wide(data, ["run_id", "num_fewshot"], with_paper=True)
        view = view.rename(columns={"run_id": "run", "num_fewshot": "shots"})
        view["shots"] = view["shots"].map(lambda v: DASH if isnan(v) else str(int(v)))
    else:
        view = pd.DataFrame()
    return Table("table14_benchmarks_fewshot", "Table 14: few-shot vs 0-shot on the best model", data, view, notes,
                 empty_reason=None if len(data) else
                 "no few-shot rows in eval/benchmarks.tsv (benchmarks.num_fewshot has no k > 0, or not run)")
