"""metrics/<group>.json: the numeric summary of one run group, JSON-safe (NaN -> null, floats to
6 significant digits), with dicts rather than lists so `dvc metrics diff` shows every number."""
from __future__ import annotations

import math
import sqlite3

import numpy as np
import pandas as pd

from ..experiments import group_of
from .analyses import ablation_table, best_per_d, dense_vs_cart, stage1_best_per_d, stage1_ranking, stage2_configs
from .query import load_runs, run_status, store_domains
from .schema import GROUPS, RANK_DOMAIN
from .stats import power_law_fit, segment_exponents


def _j(v):
    """JSON-safe scalar: NaN/inf -> None, numpy -> python, floats to 6 significant digits."""
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return float(f"{v:.6g}") if math.isfinite(v) else None
    return v


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _j(obj)


def _status_block(con, groups) -> dict:
    st = run_status(con)
    return {g: st.get(g, {"n_expected": 0, "n_complete": 0, "failed": [], "incomplete": [], "missing": [],
                          "not_in_grid": []}) for g in groups}


def _fit_block(d, ppl) -> dict:
    """Power law over the best config per d, and the implied exponent of each consecutive pair of widths
    keyed "<d_from>-<d_to>" (dicts, not lists, so `dvc metrics diff` shows every number)."""
    fit = power_law_fit(d, ppl)
    segs = segment_exponents(d, ppl) if len(d) > 1 else []
    return {"fit": fit, "segments": {f"{int(s['from'])}-{int(s['to'])}": s["exponent"] for s in segs}}


def summarize_group(con: sqlite3.Connection, group: str) -> dict:
    """The numeric summary of one group, as written to metrics/<group>.json."""
    if group == "stage1":
        out = _summary_stage1(con)
    elif group == "stage2":
        out = _summary_stage2(con)
    elif group == "dense":
        out = _summary_dense(con)
    elif group == "ablation":
        out = _summary_ablation(con)
    elif group in GROUPS:
        out = _summary_runs(con, group)
    else:
        raise ValueError(f"unknown group {group!r}; valid: {list(GROUPS)}")
    return _clean({"group": group, **out})


def _ppl_fields(row, doms, suffix="") -> dict:
    return {f"ppl_{dom}{suffix}": row.get(f"ppl_{dom}{suffix}") for dom in doms}


def _summary_runs(con, group: str) -> dict:
    """Any other group: each run's final numbers (a CART run's final spectral radius too), and the
    best run by the ranking domain's PPL (for a learning-rate sweep: the lr each family is compared at)."""
    doms = store_domains(con)
    runs = load_runs(con, group)
    done = runs[(runs["status"] == "complete") & runs[f"ppl_{RANK_DOMAIN}"].notna()]
    best = done.sort_values([f"ppl_{RANK_DOMAIN}", "run_id"]).iloc[0] if len(done) else None
    cart = group_of(group).arch == "cart"
    per_run = {r["name"]: {"status": r["status"], "variant": r["variant"], "seed": r["seed"],
                           **_ppl_fields(r, doms), **{f"bpb_{d}": r.get(f"bpb_{d}") for d in doms},
                           "final_train_loss": r["final_train_loss"], "tokens_per_s": r["tokens_per_s"],
                           "stored_params": r["stored_params"], "effective_params": r["effective_params"],
                           **({"spectral_radius": r["spectral_radius"]} if cart else {})}
               for _, r in runs.iterrows()}
    return {"runs": _status_block(con, [group])[group], "rank_domain": RANK_DOMAIN,
            "best_run_id": None if best is None else best["run_id"],
            "best_variant": None if best is None else best["variant"], "per_run": per_run}


def _summary_stage1(con) -> dict:
    doms = store_domains(con)
    rank = stage1_ranking(con)
    best = stage1_best_per_d(con)
    ranking = {r["name"]: {"rank": r["rank"], "d_model": r["d_model"], "n_prelude": r["n_prelude"],
                           "n_loops": r["n_loops"], **_ppl_fields(r, doms), "spectral_radius": r["spectral_radius"]}
               for _, r in rank.iterrows()}
    best_d = {str(int(r["d_model"])): {"run_id": r["run_id"], "n_prelude": r["n_prelude"], "n_loops": r["n_loops"],
                                       **_ppl_fields(r, doms), "spectral_radius": r["spectral_radius"]}
              for _, r in best.iterrows()}
    return {"runs": _status_block(con, ["stage1"])["stage1"], "rank_domain": RANK_DOMAIN, "best_per_d": best_d,
            "power_law": _fit_block(best["d_model"], best[f"ppl_{RANK_DOMAIN}"]), "ranking": ranking}


def _summary_stage2(con) -> dict:
    doms = store_domains(con)
    cfg = stage2_configs(con)
    best = best_per_d(cfg)
    configs = {}
    for _, r in cfg.iterrows():
        key = f"d{int(r['d_model'])}-R{int(r['n_loops'])}"
        entry = {"d_model": r["d_model"], "n_prelude": r["n_prelude"], "n_loops": r["n_loops"],
                 "n_seeds": r["n_seeds"], "n_expected": r["n_expected"]}
        for m in ("ppl", "bpb"):
            for dom in doms:
                entry[f"{m}_{dom}"] = {"mean": r.get(f"{m}_{dom}_mean"), "std": r.get(f"{m}_{dom}_std")}
        entry["spectral_radius_mean"] = r.get("spectral_radius_mean")
        entry["rho_pow_R"] = r.get("rho_pow_R")
        entry["tokens_per_s_mean"] = r.get("tokens_per_s_mean")
        configs[key] = entry
    best_d = {str(int(r["d_model"])): {"n_loops": int(r["n_loops"]), "run_id": r["run_id"],
                                       "n_prelude": r["n_prelude"], "n_seeds": r["n_seeds"],
                                       **_ppl_fields(r, doms, "_mean")}
              for _, r in best.iterrows()}
    top = best.sort_values("d_model").iloc[-1] if len(best) else None
    grid_d = sorted(int(d) for d in cfg["d_model"].dropna().unique()) if len(cfg) else []
    return {"runs": _status_block(con, ["stage2"])["stage2"], "rank_domain": RANK_DOMAIN,
            "best_run_id": None if top is None else top["run_id"],
            "best": None if top is None else {"d_model": top["d_model"], "n_loops": top["n_loops"],
                                              "run_id": top["run_id"],
                                              "is_largest_grid_d": bool(grid_d and top["d_model"] == grid_d[-1])},
            "best_per_d": best_d,
            "power_law": _fit_block(best["d_model"], best[f"ppl_{RANK_DOMAIN}_mean"]),
            "configs": configs}


def _summary_dense(con) -> dict:
    doms = store_domains(con)
    dense, ref = dense_vs_cart(con)
    configs = {}
    for _, r in dense.iterrows():
        entry = {"d_model": r["d_model"], "n_layers": r["n_layers"], "n_seeds": r["n_seeds"],
                 "n_expected": r["n_expected"], "stored_params": r["stored_params"],
                 "effective_params": r["effective_params"]}
        for dom in doms:
            entry[f"ppl_{dom}"] = {"mean": r.get(f"ppl_{dom}_mean"), "std": r.get(f"ppl_{dom}_std")}
        entry["delta_vs_cart_pct"] = {dom: r.get(f"delta_ppl_{dom}_pct") for dom in doms}
        configs[f"L{int(r['n_layers'])}"] = entry
    cart = None
    if ref is not None:
        cart = {"run_id": ref["run_id"], "d_model": ref["d_model"], "n_prelude": ref["n_prelude"],
                "n_loops": ref["n_loops"], "n_seeds": ref["n_seeds"], **_ppl_fields(ref, doms, "_mean")}
    st = _status_block(con, ["dense", "stage2"])
    return {"runs": st["dense"], "stage2_runs": st["stage2"], "delta": "100 * (dense / cart - 1) on seed-mean PPL",
            "cart_reference": cart,
            "cart_reference_note": None if cart else "no complete Stage 2 run at the Dense width",
            "configs": configs}


def _summary_ablation(con) -> dict:
    doms = store_domains(con)
    table, base = ablation_table(con)
    variants = {}
    for _, r in table.iterrows():
        entry = {"run_id": r["run_id"], "status": r["status"], "changes": r["changes"], "seed": r["seed"],
                 "base_run_id": r["base_run_id"],
                 "d_model": r["d_model"], "n_prelude": r["n_prelude"], "n_loops": r["n_loops"],
                 "stored_params": r["stored_params"], "effective_params": r["effective_params"],
                 **_ppl_fields(r, doms),
                 "delta_pct": {dom: r[f"delta_ppl_{dom}_pct"] for dom in doms},
                 "delta_vs_seed_mean_pct": {dom: r[f"delta_ppl_{dom}_vs_mean_pct"] for dom in doms}}
        if r.get("matched_run_id"):
            entry["matched_baseline"] = {"run_id": r["matched_run_id"],
                                         "delta_pct": {dom: r[f"delta_ppl_{dom}_vs_matched_pct"] for dom in doms}}
        variants[r["name"]] = entry
    st = _status_block(con, ["ablation", "stage2"])
    return {"runs": st["ablation"], "delta": "100 * (variant / baseline - 1) on final PPL", "base": base,
            "variants": variants}
