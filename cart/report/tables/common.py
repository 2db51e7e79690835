"""What the paper tables share: short domain titles, NaN-safe casts, the missing-or-dash cell, and
the model rows (one per architecture config) the FLOPs, throughput and Stage 2 tables are keyed on."""
from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd

from ...results.query import load_runs, store_domains
from ...results.stats import expected_counts, run_metrics, seed_stats
from ..render import DASH, MISSING, isnan, sig


DOM_TITLE = {"tinystories": "TS", "wikipedia": "Wiki", "fineweb_edu": "FW"}


def short_domain(domain: str) -> str:
    return DOM_TITLE.get(domain, domain)


def int_or_none(v):
    return None if isnan(v) else int(v)


def float_or_nan(v):
    return np.nan if v is None or isnan(v) else float(v)


def or_missing(v, in_ours: bool, fmt=sig) -> str:
    if isnan(v):
        return MISSING if in_ours else DASH
    return fmt(v)


def cart_rows(runs: pd.DataFrame, groups) -> pd.DataFrame:
    return runs[(runs["arch"] == "cart") & runs["group"].isin(groups)]


def first_per_key(df: pd.DataFrame, keys, cols) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame(columns=[*keys, *cols])
    return df.groupby(keys, sort=True)[list(cols)].first().reset_index()


# ---- Table 3: FLOPs --------------------------------------------------------------------------------
def model_rows(con: sqlite3.Connection) -> pd.DataFrame:
    """One row per Stage 2 CART config and Dense config, with params/FLOPs and seed stats."""
    runs = load_runs(con)
    parts = []
    for arch, group, keys in (("cart", "stage2", ["d_model", "n_prelude", "n_loops"]),
                              ("dense", "dense", ["d_model", "n_layers"])):
        df = runs[(runs["group"] == group) & (runs["arch"] == arch)].dropna(subset=keys)
        if df.empty:
            continue
        first = first_per_key(df, keys, ["stored_params", "effective_params", "flops_per_seq",
                                         "dense_layer_flops_per_seq", "seq_len", "tokens_per_step", "planned_tokens"])
        st = seed_stats(df, keys, run_metrics(store_domains(con)))
        exp = expected_counts(df, keys)
        dev = df[df["status"] == "complete"].groupby(keys)["device"].agg(
            lambda s: ", ".join(sorted(set(x for x in s if isinstance(x, str)))))
        m = exp.merge(first, on=keys, how="left").merge(st, on=keys, how="left")
        m = m.merge(dev.rename("devices").reset_index(), on=keys, how="left") if len(dev) else m.assign(devices=None)
        m["arch"] = arch
        parts.append(m)
    if not parts:
        return pd.DataFrame(columns=["arch", "d_model", "n_prelude", "n_loops", "n_layers"])
    out = pd.concat(parts, ignore_index=True)
    for c in ("n_prelude", "n_loops", "n_layers"):
        if c not in out:
            out[c] = pd.NA
    out["n_seeds"] = out["n_seeds"].fillna(0).astype(int)
    return out


def model_key(r) -> tuple:
    if r["arch"] == "dense":
        return ("dense", int(r["d_model"]), int(r["n_layers"]))
    return ("cart", int(r["d_model"]), int(r["n_prelude"]), int(r["n_loops"]))


def model_label(k: tuple) -> str:
    return f"Dense {k[2]}L" if k[0] == "dense" else f"CART P={k[2]} R={k[3]}"


def model_sort_key(k: tuple):
    return (k[1], 0 if k[0] == "cart" else 1, k[2:])
