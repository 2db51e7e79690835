"""Model size, token budget and compute (paper Tables 1-4): parameters and leverage, tokens and
Chinchilla ratios, forward FLOPs, throughput and MFU."""
from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd

from ...results.analyses import CHINCHILLA_TOKENS_PER_PARAM
from ...results.query import load_runs
from ..paper import PAPER
from ..render import DASH, MISSING, Table, fixed, integer, isnan, millions, sig, view_from
from .common import (cart_rows, first_per_key, float_or_nan, model_key, model_label, model_rows, model_sort_key,
                     or_missing)


# ---- Table 1: parameters and leverage ------------------------------------------------------------
def table_params(con: sqlite3.Connection) -> Table:
    runs = cart_rows(load_runs(con), ("stage1", "stage2"))
    ours = first_per_key(runs, ["d_model", "n_prelude", "n_loops"], ["stored_params", "effective_params"])
    ours_keys = {tuple(int(x) for x in k) for k in ours[["d_model", "n_prelude", "n_loops"]].itertuples(index=False)}
    pp, tp = PAPER["params"], PAPER["throughput"]
    keys = sorted(ours_keys | set(pp) | set(tp))
    rows = []
    for k in keys:
        o = ours[(ours["d_model"] == k[0]) & (ours["n_prelude"] == k[1]) & (ours["n_loops"] == k[2])]
        st = float_or_nan(o["stored_params"].iloc[0]) if len(o) else np.nan
        ef = float_or_nan(o["effective_params"].iloc[0]) if len(o) else np.nan
        p = pp.get(k)
        rows.append({"d_model": k[0], "n_prelude": k[1], "n_loops": k[2], "in_ours": k in ours_keys,
                     "stored_params": st, "effective_params": ef, "leverage": ef / st if st else np.nan,
                     "paper_stored_M": p[0] if p else np.nan,
                     "paper_effective_M": p[1] if p else (tp[k][0] if k in tp else np.nan),
                     "paper_leverage": p[2] if p else np.nan})
    data = pd.DataFrame(rows, columns=["d_model", "n_prelude", "n_loops", "in_ours", "stored_params",
                                       "effective_params", "leverage", "paper_stored_M", "paper_effective_M",
                                       "paper_leverage"])
    view = view_from(data, [("d", "d_model"), ("P", "n_prelude"), ("R", "n_loops"),
                            ("stored (M)", lambda r: or_missing(r["stored_params"], r["in_ours"], millions)),
                            ("effective (M)", lambda r: or_missing(r["effective_params"], r["in_ours"], millions)),
                            ("leverage", lambda r: or_missing(r["leverage"], r["in_ours"], lambda v: fixed(v, 2))),
                            ("paper stored (M)", lambda r: fixed(r["paper_stored_M"], 1)),
                            ("paper effective (M)", lambda r: fixed(r["paper_effective_M"], 1)),
                            ("paper leverage", lambda r: fixed(r["paper_leverage"], 2))])
    return Table("table01_params", "Table 1: stored and effective parameters, leverage", data, view, [
        "Counts from cart.accounting on each run's config (the vocabulary is this profile's tokenizer, "
        "32,000 in the paper). leverage = effective / stored; effective = stored + (R-1) x core.",
        "Paper effective counts for R=8 come from Table 4 (Table 1 lists R=6 and R=10 only)."],
        empty_reason=None if data["stored_params"].notna().any() else "no Stage 1/Stage 2 run has a readable config")


# ---- Table 2: token budget, Chinchilla ratios ----------------------------------------------------
def _regime(p) -> str:
    if isnan(p):
        return DASH
    return "over" if p > 110 else ("near" if p >= 80 else "sub")


def table_tokens(con: sqlite3.Connection) -> Table:
    runs = load_runs(con)
    s2 = cart_rows(runs, ("stage2",))
    cart = first_per_key(s2, ["d_model", "n_prelude", "n_loops"],
                         ["planned_tokens", "stored_params", "effective_params"])
    trained = s2[s2["status"] == "complete"].groupby(["d_model", "n_prelude", "n_loops"])["tokens"].mean()
    ours_keys = {(int(a), int(b), int(c))
                 for a, b, c in cart[["d_model", "n_prelude", "n_loops"]].itertuples(index=False)}
    pc = {(d, PAPER["stage2_P"], r): v for (d, r), v in PAPER["chinchilla"].items()}
    rows = []
    for k in sorted(ours_keys | set(pc)):
        o = cart[(cart["d_model"] == k[0]) & (cart["n_prelude"] == k[1]) & (cart["n_loops"] == k[2])]
        tok = float_or_nan(o["planned_tokens"].iloc[0]) if len(o) else np.nan
        st = float_or_nan(o["stored_params"].iloc[0]) if len(o) else np.nan
        ef = float_or_nan(o["effective_params"].iloc[0]) if len(o) else np.nan
        rs, re_ = tok / st if st else np.nan, tok / ef if ef else np.nan
        p = pc.get(k)
        rows.append({"d_model": k[0], "n_prelude": k[1], "n_loops": k[2], "in_ours": k in ours_keys,
                     "planned_tokens": tok, "tokens_trained_mean": float_or_nan(trained.get(k, np.nan)),
                     "stored_params": st, "effective_params": ef, "tokens_per_stored": rs,
                     "tokens_per_effective": re_,
                     "chinchilla_eff_pct": 100 * re_ / CHINCHILLA_TOKENS_PER_PARAM,
                     "chinchilla_stored_pct": 100 * rs / CHINCHILLA_TOKENS_PER_PARAM,
                     "paper_tokens_per_stored": p[0] if p else np.nan,
                     "paper_tokens_per_effective": p[1] if p else np.nan,
                     "paper_chinchilla_eff_pct": p[2] if p else np.nan})
    data = pd.DataFrame(rows)
    view = view_from(data, [
        ("d", "d_model"), ("P", "n_prelude"), ("R", "n_loops"),
        ("tokens (budget)", lambda r: or_missing(r["planned_tokens"], r["in_ours"], integer)),
        ("stored ratio", lambda r: or_missing(r["tokens_per_stored"], r["in_ours"], lambda v: f"{sig(v, 3)}:1")),
        ("effective ratio", lambda r: or_missing(r["tokens_per_effective"], r["in_ours"],
                                                  lambda v: f"{sig(v, 3)}:1")),
        ("% Chinchilla (eff)", lambda r: DASH if isnan(r["chinchilla_eff_pct"]) else
         f"{sig(r['chinchilla_eff_pct'], 3)}% ({_regime(r['chinchilla_eff_pct'])})"),
        ("paper stored ratio", lambda r: DASH if isnan(r["paper_tokens_per_stored"]) else
         f"{r['paper_tokens_per_stored']:.0f}:1"),
        ("paper effective ratio", lambda r: DASH if isnan(r["paper_tokens_per_effective"]) else
         f"{r['paper_tokens_per_effective']:.0f}:1"),
        ("paper % Chinchilla (eff)", lambda r: DASH if isnan(r["paper_chinchilla_eff_pct"]) else
         f"{r['paper_chinchilla_eff_pct']:.0f}% ({_regime(r['paper_chinchilla_eff_pct'])})")])
    return Table("table02_tokens", "Table 2: Stage 2 token budget and Chinchilla ratios", data, view, [
        f"Chinchilla-optimal = {CHINCHILLA_TOKENS_PER_PARAM:.0f} tokens per parameter; % = (tokens/param) / 20. "
        "Budget = steps x seq_len x micro_batch x grad_accum from the run config (paper: 1B tokens). "
        "Regime: over > 110%, near 80-110%, sub < 80% (the paper's labels, thresholds ours)."],
        empty_reason=None if data["stored_params"].notna().any() else "no Stage 2 run has a readable config")


def table_flops(con: sqlite3.Connection) -> Table:
    models = model_rows(con)
    ours = {model_key(r): r for _, r in models.iterrows()}
    pf = PAPER["flops"]
    rows = []
    for k in sorted(set(ours) | set(pf), key=model_sort_key):
        o = ours.get(k)
        fl = float_or_nan(o["flops_per_seq"]) if o is not None else np.nan
        layer = float_or_nan(o["dense_layer_flops_per_seq"]) if o is not None else np.nan
        p = pf.get(k)
        rows.append({"model": model_label(k), "arch": k[0], "d_model": k[1], "in_ours": o is not None,
                     "seq_len": float_or_nan(o["seq_len"]) if o is not None else np.nan,
                     "gflops_per_seq": fl / 1e9,
                     "stored_params": float_or_nan(o["stored_params"]) if o is not None else np.nan,
                     "dense_layer_equiv": fl / layer if layer else np.nan,
                     "paper_seq_len": PAPER["flops_seq_len"] if p else np.nan,
                     "paper_gflops": p[0] if p else np.nan, "paper_stored_M": p[1] if p else np.nan,
                     "paper_dense_layer_equiv": p[2] if p else np.nan})
    data = pd.DataFrame(rows)
    view = view_from(data, [("model", "model"), ("d", "d_model"),
                            ("seq len", lambda r: or_missing(r["seq_len"], r["in_ours"], integer)),
                            ("GFLOPs / seq", lambda r: or_missing(r["gflops_per_seq"], r["in_ours"],
                                                                   lambda v: sig(v, 4))),
                            ("stored (M)", lambda r: or_missing(r["stored_params"], r["in_ours"], millions)),
                            ("Dense-layer equiv.", lambda r: or_missing(r["dense_layer_equiv"], r["in_ours"],
                                                                       lambda v: fixed(v, 1))),
                            ("paper GFLOPs", lambda r: sig(r["paper_gflops"], 3)),
                            ("paper stored (M)", lambda r: sig(r["paper_stored_M"], 3)),
                            ("paper Dense-layer equiv.", lambda r: fixed(r["paper_dense_layer_equiv"], 1))])
    return Table("table03_flops", "Table 3: forward FLOPs per sequence", data, view, [
        "Forward FLOPs per sequence from cart.accounting (2 x matmul weights applied x T + 4 T^2 d per attention "
        "application; embedding and LM head excluded). Dense-layer equivalents = FLOPs / FLOPs of one Dense layer "
        "at the same d and T. The paper's values are at T=1024, d=1024; compare only rows at the same T."],
        empty_reason=None if data["gflops_per_seq"].notna().any() else "no Stage 2 or Dense run has a readable config")


# ---- Table 4: throughput and MFU ---------------------------------------------------------------------
def table_throughput(con: sqlite3.Connection) -> Table:
    models = model_rows(con)
    ours = {model_key(r): r for _, r in models.iterrows()}
    pt = {("cart", *k): v for k, v in PAPER["throughput"].items()}
    rows = []
    for k in sorted(set(ours) | set(pt), key=model_sort_key):
        o = ours.get(k)
        g = (lambda c: float_or_nan(o.get(c)) if o is not None else np.nan)
        tps = g("tokens_per_s_mean")
        p = pt.get(k)
        rows.append({"model": model_label(k), "d_model": k[1], "in_ours": o is not None,
                     "n_seeds": o["n_seeds"] if o is not None else 0,
                     "effective_params": g("effective_params"), "tokens_per_s_mean": tps,
                     "tokens_per_s_std": g("tokens_per_s_std"),
                     "sec_per_step": g("tokens_per_step") / tps if tps else np.nan,
                     "mfu_mean": g("mfu_mean"), "devices": o.get("devices") if o is not None else None,
                     "paper_effective_M": p[0] if p else np.nan, "paper_tokens_per_s": p[1] if p else np.nan,
                     "paper_sec_per_step": p[2] if p else np.nan, "paper_mfu_pct": p[3] if p else np.nan})
    data = pd.DataFrame(rows)
    view = view_from(data, [
        ("model", "model"), ("d", "d_model"),
        ("effective (M)", lambda r: or_missing(r["effective_params"], r["in_ours"], millions)),
        ("tokens/s", lambda r: MISSING if r["in_ours"] and isnan(r["tokens_per_s_mean"]) else
         (DASH if isnan(r["tokens_per_s_mean"]) else
          f"{integer(r['tokens_per_s_mean'])}" + ("" if isnan(r["tokens_per_s_std"]) else
                                                  f" ± {integer(r['tokens_per_s_std'])}") + f" (n={r['n_seeds']})")),
        ("s/step", lambda r: fixed(r["sec_per_step"], 3)),
        ("MFU", lambda r: DASH if isnan(r["mfu_mean"]) else f"{100 * r['mfu_mean']:.1f}%"),
        ("device", lambda r: r["devices"] or DASH if isinstance(r["devices"], str) else DASH),
        ("paper effective (M)", lambda r: fixed(r["paper_effective_M"], 1)),
        ("paper tokens/s", lambda r: integer(r["paper_tokens_per_s"])),
        ("paper s/step", lambda r: fixed(r["paper_sec_per_step"], 3)),
        ("paper MFU", lambda r: DASH if isnan(r["paper_mfu_pct"]) else f"{r['paper_mfu_pct']:.0f}%")])
    return Table("table04_throughput", "Table 4: training throughput and MFU", data, view, [
        "Seed means over complete runs; tokens/s is training-step time only (eval and checkpoints excluded). "
        "MFU = 6 x effective params x tokens/s / bf16 peak (cart.accounting); empty where the device's peak is "
        f"unknown (CPU). Paper: {PAPER['throughput_device']}, so absolute numbers are not comparable across "
        "hardware."], empty_reason=None if data["tokens_per_s_mean"].notna().any() else
        "no complete Stage 2 or Dense run")
