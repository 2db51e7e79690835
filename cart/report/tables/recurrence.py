"""What recurrence buys (paper Tables 5-8): the Stage 1 screen's best config per scale, the PPL gain
of the best R over R=1 in Stage 1 and Stage 2, and the spectral radius with rho^R."""
from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd

from ...results.analyses import stage1_best_per_d, stage2_configs
from ...results.query import load_runs, store_domains
from ...results.schema import RANK_DOMAIN
from ...results.stats import residual_fraction
from ..paper import PAPER
from ..render import DASH, MISSING, Table, fixed, isnan, opt_int, pct, pm, sig, view_from
from .common import float_or_nan, int_or_none, or_missing, short_domain


# ---- Table 5: Stage 1 best per scale ----------------------------------------------------------------
def table_stage1_best(con: sqlite3.Connection) -> Table:
    runs = load_runs(con, "stage1")
    best = stage1_best_per_d(con)
    exp = runs.groupby("d_model").size() if len(runs) else pd.Series(dtype=int)
    done = runs[runs["status"] == "complete"].groupby("d_model").size() if len(runs) else pd.Series(dtype=int)
    ours_d = {int(d) for d in runs["d_model"].dropna().unique()}
    pb = PAPER["stage1_best"]
    doms = store_domains(con)
    rows = []
    for d in sorted(ours_d | set(pb)):
        b = best[best["d_model"] == d]
        b = b.iloc[0] if len(b) else None
        p = pb.get(d)
        rows.append({"d_model": d, "in_ours": d in ours_d, "n_complete": int(done.get(d, 0)),
                     "n_expected": int(exp.get(d, 0)),
                     "run_id": b["run_id"] if b is not None else None,
                     "n_prelude": int_or_none(b["n_prelude"]) if b is not None else None,
                     "n_loops": int_or_none(b["n_loops"]) if b is not None else None,
                     **{f"ppl_{dom}": float_or_nan(b.get(f"ppl_{dom}")) if b is not None else np.nan for dom in doms},
                     "spectral_radius": float_or_nan(b["spectral_radius"]) if b is not None else np.nan,
                     "paper_n_prelude": p[0] if p else None, "paper_n_loops": p[1] if p else None,
                     "paper_ppl_wikipedia": p[2] if p else np.nan, "paper_ppl_tinystories": p[3] if p else np.nan,
                     "paper_ppl_fineweb_edu": p[4] if p else np.nan, "paper_spectral_radius": p[5] if p else np.nan})
    data = pd.DataFrame(rows)
    om = (lambda c, f=sig: lambda r: or_missing(r[c], r["in_ours"], f))
    view = view_from(data, [
        ("d", "d_model"), ("complete", lambda r: f"{r['n_complete']}/{r['n_expected']}" if r["in_ours"] else DASH),
        ("best P", lambda r: opt_int(r["n_prelude"])), ("best R", lambda r: opt_int(r["n_loops"])),
        *((f"PPL {short_domain(d)}", om(f"ppl_{d}")) for d in doms),
        ("ρ", om("spectral_radius", lambda v: fixed(v, 4))),
        ("paper P", lambda r: opt_int(r["paper_n_prelude"])), ("paper R", lambda r: opt_int(r["paper_n_loops"])),
        ("paper Wiki", lambda r: sig(r["paper_ppl_wikipedia"])),
        ("paper TS", lambda r: sig(r["paper_ppl_tinystories"])),
        ("paper FW", lambda r: sig(r["paper_ppl_fineweb_edu"])),
        ("paper ρ", lambda r: fixed(r["paper_spectral_radius"], 4))])
    return Table("table05_stage1_best", "Table 5: Stage 1, best config per scale (by Wikipedia PPL)", data, view, [
        "Best = lowest final Wikipedia PPL among complete Stage 1 runs at that d (single seed). ρ = the LTI "
        "gate's spectral radius at the end of the run."], empty_reason=None if len(best) else "no complete Stage 1 run")


# ---- Tables 6 and 7: R benefit ---------------------------------------------------------------------------
def gain_pct(ppl_by_r: dict) -> float:
    """100 * (PPL at the smallest R - PPL at the largest R) / PPL at the smallest R: positive = more
    loops helped."""
    vals = {r: v for r, v in ppl_by_r.items() if not isnan(v)}
    if len(vals) < 2:
        return np.nan
    lo, hi = vals[min(vals)], vals[max(vals)]
    return 100.0 * (lo - hi) / lo


def _best_r(ppl_by_r: dict):
    vals = {r: v for r, v in ppl_by_r.items() if not isnan(v)}
    return min(vals, key=lambda r: (vals[r], r)) if vals else None


def r_benefit_data(con: sqlite3.Connection, stage: str) -> pd.DataFrame:
    """Long rows (d, source, P, R, ppl mean, std, n) of Wikipedia PPL per R, ours and the paper's."""
    rows = []
    dom = RANK_DOMAIN
    if stage == "stage1":
        runs = load_runs(con, "stage1", status="complete")
        best = stage1_best_per_d(con)
        for _, b in best.iterrows():
            d, p = int(b["d_model"]), int(b["n_prelude"])
            sel = runs[(runs["d_model"] == d) & (runs["n_prelude"] == p)]
            for _, r in sel.iterrows():
                rows.append({"d_model": d, "source": "ours", "n_prelude": p, "n_loops": int(r["n_loops"]),
                             "ppl_mean": float_or_nan(r[f"ppl_{dom}"]), "ppl_std": np.nan, "n": 1})
        for d, by_r in PAPER["stage1_r"].items():
            for r, v in by_r.items():
                rows.append({"d_model": d, "source": "paper", "n_prelude": PAPER["stage1_r_P"], "n_loops": r,
                             "ppl_mean": v, "ppl_std": np.nan, "n": 1})
    else:
        cfg = stage2_configs(con)
        for _, c in cfg.iterrows():
            if c["n_seeds"] == 0:
                continue
            rows.append({"d_model": int(c["d_model"]), "source": "ours", "n_prelude": int(c["n_prelude"]),
                         "n_loops": int(c["n_loops"]), "ppl_mean": float_or_nan(c[f"ppl_{dom}_mean"]),
                         "ppl_std": float_or_nan(c[f"ppl_{dom}_std"]), "n": int(c["n_seeds"])})
        for d, by_r in PAPER["stage2_r"].items():
            for r, v in by_r.items():
                rows.append({"d_model": d, "source": "paper", "n_prelude": PAPER["stage2_P"], "n_loops": r,
                             "ppl_mean": v, "ppl_std": np.nan, "n": 3})
    return pd.DataFrame(rows, columns=["d_model", "source", "n_prelude", "n_loops", "ppl_mean", "ppl_std", "n"])


def gains(long: pd.DataFrame) -> pd.DataFrame:
    """Per (d, source): gain % and best R."""
    out = []
    for (d, src), g in long.groupby(["d_model", "source"], sort=True):
        by_r = dict(zip(g["n_loops"], g["ppl_mean"]))
        out.append({"d_model": d, "source": src, "gain_pct": gain_pct(by_r), "best_R": _best_r(by_r),
                    "R_min": min(by_r), "R_max": max(by_r)})
    return pd.DataFrame(out, columns=["d_model", "source", "gain_pct", "best_R", "R_min", "R_max"])


def _table_r_benefit(con, stage: str) -> Table:
    long = r_benefit_data(con, stage)
    rs = sorted(long["n_loops"].unique()) if len(long) else []
    g = gains(long)
    rows = []
    for (d, src), grp in long.groupby(["d_model", "source"], sort=True):
        row = {"d_model": d, "source": src, "n_prelude": int(grp["n_prelude"].iloc[0])}
        for r in rs:
            hit = grp[grp["n_loops"] == r]
            row[f"ppl_R{r}"] = float_or_nan(hit["ppl_mean"].iloc[0]) if len(hit) else np.nan
            row[f"std_R{r}"] = float_or_nan(hit["ppl_std"].iloc[0]) if len(hit) else np.nan
            row[f"n_R{r}"] = int(hit["n"].iloc[0]) if len(hit) else 0
        gg = g[(g["d_model"] == d) & (g["source"] == src)].iloc[0]
        row |= {"gain_pct": gg["gain_pct"], "best_R": gg["best_R"], "R_min": gg["R_min"], "R_max": gg["R_max"]}
        rows.append(row)
    data = pd.DataFrame(rows)
    if len(data):
        data = data.sort_values(["d_model", "source"], key=lambda s: s.map({"ours": 0, "paper": 1})
                                if s.name == "source" else s).reset_index(drop=True)
    spec = [("d", "d_model"), ("source", "source"), ("P", "n_prelude")]
    for r in rs:
        spec.append((f"R={r}", (lambda r: lambda row: pm(
            row[f"ppl_R{r}"], row[f"std_R{r}"],
            row[f"n_R{r}"] if stage == "stage2" and row["source"] == "ours" else None))(r)))
    spec += [("gain (R_min→R_max)", lambda row: DASH if isnan(row["gain_pct"]) else
              f"{pct(row['gain_pct'])} (R{int(row['R_min'])}→R{int(row['R_max'])})"),
             ("best R", lambda row: DASH if isnan(row["best_R"]) else str(int(row["best_R"])))]
    view = view_from(data, spec) if len(data) else pd.DataFrame()
    has_ours = bool(len(data)) and (data["source"] == "ours").any()
    if stage == "stage1":
        return Table("table06_r_benefit_stage1", "Table 6: R benefit at Stage 1 (Wikipedia PPL per R)", data, view, [
            "Ours: single-seed Stage 1 runs at each d's best P (Table 5); the paper's rows are at P=6. Gain = "
            "100 x (PPL at the smallest R - PPL at the largest R) / PPL at the smallest R, positive = more loops "
            "helped; the paper's gain column was lost in extraction, so its gains here are derived from its per-R "
            "values with the same formula."], empty_reason=None if has_ours else "no complete Stage 1 run")
    return Table("table07_r_benefit_stage2", "Table 7: R benefit at Stage 2 (Wikipedia PPL per R, seed mean ± std)",
                 data, view, ["Ours: mean ± std over complete seeds (n). Gain as in Table 6 (paper gains derived)."],
                 empty_reason=None if has_ours else "no complete Stage 2 run")


def table_r_benefit_stage1(con):
    return _table_r_benefit(con, "stage1")


def table_r_benefit_stage2(con):
    return _table_r_benefit(con, "stage2")


# ---- Table 8: spectral radius --------------------------------------------------------------------------
def table_spectral(con: sqlite3.Connection) -> Table:
    cfg = stage2_configs(con)
    ours = {(int(c["d_model"]), int(c["n_loops"])): c for _, c in cfg.iterrows()}
    pr = {(d, r): v for d, by_r in PAPER["rho"].items() for r, v in by_r.items()}
    rows = []
    for k in sorted(set(ours) | set(pr)):
        c = ours.get(k)
        p = pr.get(k, np.nan)
        rho = float_or_nan(c["spectral_radius_mean"]) if c is not None and "spectral_radius_mean" in c else np.nan
        rows.append({"d_model": k[0], "n_loops": k[1], "in_ours": c is not None,
                     "n_prelude": int_or_none(c["n_prelude"]) if c is not None else None,
                     "n_seeds": int(c["n_seeds"]) if c is not None else 0,
                     "rho_mean": rho, "rho_std": float_or_nan(c["spectral_radius_std"]) if c is not None and
                     "spectral_radius_std" in c else np.nan,
                     "rho_pow_R": float(residual_fraction(rho, k[1])),
                     "paper_rho": p, "paper_rho_pow_R": float(residual_fraction(p, k[1]))})
    data = pd.DataFrame(rows)
    view = view_from(data, [
        ("d", "d_model"), ("R", "n_loops"),
        ("ρ (final)", lambda r: MISSING if r["in_ours"] and isnan(r["rho_mean"]) else
         pm(r["rho_mean"], r["rho_std"], r["n_seeds"] if r["in_ours"] else None)),
        ("ρ^R", lambda r: or_missing(r["rho_pow_R"], r["in_ours"], lambda v: fixed(v, 3))),
        ("paper ρ", lambda r: fixed(r["paper_rho"], 3)),
        ("paper ρ^R (derived)", lambda r: fixed(r["paper_rho_pow_R"], 3))])
    return Table("table08_spectral_radius", "Table 8: LTI spectral radius at the end of Stage 2", data, view, [
        "ρ = max_i sigmoid(θ_i) of the LTI gate, from each run's summary; mean ± std over complete seeds. "
        "ρ^R = the fraction of the initial residual that survives R gate applications (Section 6), computed from "
        "the seed-mean ρ; the paper's ρ^R is derived from its ρ the same way."],
        empty_reason=None if any(not isnan(r["rho_mean"]) for r in rows) else "no complete Stage 2 run")
