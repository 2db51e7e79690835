"""Statistics on plain arrays and run tables, no store needed: power-law fits on logs
(scipy.stats.linregress), Spearman rank correlation (scipy.stats.spearmanr), rho^R, % deltas, and
seed statistics per config."""
from __future__ import annotations

import math
import warnings
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats


def power_law_fit(x, y) -> dict | None:
    """Fit y = c * x^(-exponent) by least squares on logs (scipy.stats.linregress).
    Returns exponent, prefactor c, R^2 (of the log-log fit) and n; None with fewer than 2 points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    if len(np.unique(x)) < 2:
        return None
    fit = stats.linregress(np.log(x), np.log(y))
    return {"exponent": float(-fit.slope), "prefactor": float(np.exp(fit.intercept)),
            "r2": float(fit.rvalue ** 2), "n": int(len(x))}


def segment_exponents(x, y) -> list[dict]:
    """The implied exponent between each pair of consecutive x (the paper's per-segment exponents)."""
    order = np.argsort(np.asarray(x, dtype=float))
    x, y = np.asarray(x, dtype=float)[order], np.asarray(y, dtype=float)[order]
    out = []
    for i in range(1, len(x)):
        fit = power_law_fit(x[i - 1:i + 1], y[i - 1:i + 1])
        out.append({"from": float(x[i - 1]), "to": float(x[i]), "exponent": None if fit is None else fit["exponent"]})
    return out


def spearman(a, b) -> dict:
    """Spearman rank correlation (scipy.stats.spearmanr) on the finite pairs; rho None below 2 pairs
    or when a ranking is constant."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 2:
        return {"rho": None, "p": None, "n": n}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(a[ok], b[ok])
    rho, p = float(res.statistic), float(res.pvalue)
    return {"rho": rho if math.isfinite(rho) else None, "p": p if math.isfinite(p) else None, "n": n}


def residual_fraction(rho, n_loops):
    """rho^R: the fraction of the initial residual the LTI gate keeps through R iterations."""
    return np.power(np.asarray(rho, dtype=float), np.asarray(n_loops, dtype=float))


def pct_delta(new, ref):
    """100 * (new / ref - 1): negative means `new` has the lower (better) PPL."""
    new, ref = np.asarray(new, dtype=float), np.asarray(ref, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 100.0 * (new / ref - 1.0)


def run_metrics(domains: Iterable[str]) -> tuple[str, ...]:
    """The per-run numbers seed statistics are taken over."""
    return tuple(f"{m}_{d}" for m in ("ppl", "bpb", "loss") for d in domains) + (
        "spectral_radius", "tokens_per_s", "mfu", "final_train_loss", "wall_s")


def seed_stats(runs: pd.DataFrame, keys: list[str], metrics: Iterable[str]) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one seed) and n over the complete runs of each key combination."""
    done = runs[runs["status"] == "complete"]
    metrics = list(metrics)
    if done.empty:
        return pd.DataFrame(columns=[*keys, "n_seeds", "seeds", "run_ids",
                                     *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))])
    g = done.groupby(keys, sort=True, dropna=False)
    out = g[metrics].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out.insert(0, "n_seeds", g.size())
    out.insert(1, "seeds", g["seed"].agg(lambda s: ",".join(str(int(v)) for v in sorted(s.dropna()))))
    out.insert(2, "run_ids", g["run_id"].agg(lambda s: ",".join(sorted(s))))
    return out.reset_index()


def expected_counts(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Runs per key combination in the current grid, whatever their status."""
    return runs.groupby(keys, sort=True, dropna=False).size().rename("n_expected").reset_index()


def config_stats(runs: pd.DataFrame, keys: list[str], domains: Iterable[str]) -> pd.DataFrame:
    """Per key combination: n expected, n complete (n_seeds) and the seed statistics of every run metric."""
    st = seed_stats(runs, keys, run_metrics(domains))
    out = expected_counts(runs, keys).merge(st, on=keys, how="left")
    out["n_seeds"] = out["n_seeds"].fillna(0).astype(int)
    return out
