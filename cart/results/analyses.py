"""Per-group views the summaries (metrics/<group>.json) and the report share: the Stage 1 ranking
and best config per width, Stage 2 seed statistics per config and its best per width, the Dense
configs against the best CART, and each ablation run against its baselines."""
from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np
import pandas as pd

from .plan import parse_run_name
from .query import load_runs, read_meta, store_domains
from .schema import FLAGS, RANK_DOMAIN
from .stats import config_stats, pct_delta, residual_fraction

CHINCHILLA_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. (2022), as the paper's Table 2 uses it


def stage1_ranking(con: sqlite3.Connection) -> pd.DataFrame:
    """Complete Stage 1 runs ranked by final Wikipedia PPL (rank 1 = best)."""
    df = load_runs(con, "stage1", status="complete").dropna(subset=["d_model", "n_prelude", "n_loops"])
    df = df[df[f"ppl_{RANK_DOMAIN}"].notna()].sort_values([f"ppl_{RANK_DOMAIN}", "run_id"]).reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    return df


def stage1_best_per_d(con: sqlite3.Connection) -> pd.DataFrame:
    r = stage1_ranking(con)
    return r.sort_values(["d_model", "rank"]).groupby("d_model", sort=True).head(1).reset_index(drop=True)


def stage2_configs(con: sqlite3.Connection) -> pd.DataFrame:
    """Stage 2 per (d, P, R): seed statistics of every metric, n complete and n expected, and
    rho^R computed from the seed-mean spectral radius."""
    keys = ["d_model", "n_prelude", "n_loops"]
    runs = load_runs(con, "stage2").dropna(subset=keys)  # a key can only be unknown without plan and config
    if runs.empty:
        return pd.DataFrame(columns=keys)
    out = config_stats(runs, keys, store_domains(con))
    out["rho_pow_R"] = residual_fraction(out["spectral_radius_mean"], out["n_loops"]) \
        if "spectral_radius_mean" in out else np.nan
    return out.sort_values(keys).reset_index(drop=True)


def best_per_d(configs: pd.DataFrame) -> pd.DataFrame:
    """The config with the lowest seed-mean Wikipedia PPL at each d (ties: smaller R), and the
    complete run of its lowest seed."""
    col = f"ppl_{RANK_DOMAIN}_mean"
    if configs.empty or col not in configs:
        return pd.DataFrame(columns=["d_model", "n_loops", "run_id"])
    ok = configs[configs[col].notna()].sort_values(["d_model", col, "n_loops"])
    best = ok.groupby("d_model", sort=True).head(1).copy()
    best["run_id"] = best["run_ids"].map(lambda s: _lowest_seed_run(s))
    return best.reset_index(drop=True)


def _lowest_seed_run(run_ids: str) -> str:
    ids = run_ids.split(",")
    return min(ids, key=lambda r: (parse_run_name(*r.split("/", 1)).get("seed", 0), r))


def dense_configs(con: sqlite3.Connection) -> pd.DataFrame:
    keys = ["d_model", "n_layers"]
    runs = load_runs(con, "dense").dropna(subset=keys)
    if runs.empty:
        return pd.DataFrame(columns=keys)
    out = config_stats(runs, keys, store_domains(con))
    params = runs.groupby(keys, dropna=False)[["stored_params", "effective_params", "flops_per_seq"]].first()
    out = out.merge(params.reset_index(), on=keys, how="left")
    return out.sort_values(keys).reset_index(drop=True)


def dense_vs_cart(con: sqlite3.Connection) -> tuple[pd.DataFrame, dict | None]:
    """Each Dense config against the best-R Stage 2 CART at the Dense width: deltas in % of CART's
    seed-mean PPL. Returns (table, the CART reference or None)."""
    doms = store_domains(con)
    dense = dense_configs(con)
    best = best_per_d(stage2_configs(con))
    ref = None
    if not dense.empty:
        d = dense["d_model"].dropna()
        d = int(d.iloc[0]) if len(d) else None
        hit = best[best["d_model"] == d] if d is not None else best.iloc[0:0]
        if len(hit):
            ref = hit.iloc[0].to_dict()
    for dom in doms:
        cart = ref.get(f"ppl_{dom}_mean") if ref else np.nan
        dense[f"delta_ppl_{dom}_pct"] = pct_delta(dense.get(f"ppl_{dom}_mean", np.nan), cart) \
            if len(dense) else []
    return dense, ref


def _config_fields(row) -> dict:
    return {k: (None if pd.isna(row.get(k)) else int(row[k])) for k in ("d_model", "n_prelude", "n_loops", *FLAGS)}


def ablation_table(con: sqlite3.Connection) -> tuple[pd.DataFrame, dict]:
    """Each ablation run against (a) the same-seed Stage 2 run at ablation.base, (b) the seed
    mean of that base config and (c) where the variant's own (d, R) is a different Stage 2 config
    (e.g. the P=4, R=10 spot check), the same-seed Stage 2 run at that (d, R). One row per run: a
    multi-seed variant (ablation.multi_seed) has a row per seed, each compared at its own seed
    (its seed mean is Table 9's spot-check row); `info` is the base at ablation.seed."""
    doms = store_domains(con)
    meta = read_meta(con)
    base_cfg, seed = meta.get("ablation_base"), meta.get("ablation_seed")
    runs = load_runs(con, "ablation")
    s2 = load_runs(con, "stage2")
    info: dict[str, Any] = {"config": base_cfg, "seed": seed, "run_id": None, "status": "unknown"}

    def pick(d, p, r, sd, status=None):
        m = s2[(s2["d_model"] == d) & (s2["n_loops"] == r)]
        if p is not None:
            m = m[m["n_prelude"] == p]
        if sd is not None:
            m = m[m["seed"] == sd]
        if status:
            m = m[m["status"] == status]
        return m.sort_values("run_id")

    base_row, base_mean = None, None
    if base_cfg:
        d, p, r = base_cfg.get("d_model"), base_cfg.get("n_prelude"), base_cfg.get("n_loops")
        same = pick(d, p, r, seed)
        if len(same):
            base_row = same.iloc[0]
            info |= {"run_id": base_row["run_id"], "status": base_row["status"]}
        else:
            info["status"] = "not in the Stage 2 grid"
        allseeds = pick(d, p, r, None, "complete")
        if len(allseeds):
            base_mean = allseeds[[f"ppl_{dom}" for dom in doms]].mean()
            info["n_seeds_complete"] = int(len(allseeds))
    base_fields = None
    if base_cfg:
        base_fields = {k: None for k in ("d_model", "n_prelude", "n_loops")} | {f: 0 for f in FLAGS}
        base_fields |= {k: int(v) for k, v in base_cfg.items() if k in base_fields and v is not None}
    rows = []
    for _, v in runs.iterrows():
        row = v.to_dict()
        run_seed = seed if pd.isna(v["seed"]) else int(v["seed"])  # a multi-seed variant's run: its own
        same = base_row if run_seed == seed else None
        if base_cfg and run_seed != seed:
            m = pick(base_cfg.get("d_model"), base_cfg.get("n_prelude"), base_cfg.get("n_loops"), run_seed)
            same = m.iloc[0] if len(m) else None
        same_ok = same is not None and same["status"] == "complete"
        row["base_run_id"] = None if same is None else same["run_id"]
        changes = {}
        if base_fields is not None:  # what the variant changes relative to ablation.base
            for k, val in _config_fields(v).items():
                if val is not None and val != base_fields[k]:
                    changes[k] = val
        row["changes"] = ", ".join(f"{k}={val}" for k, val in sorted(changes.items()))
        ok = v["status"] == "complete"
        for dom in doms:
            mine = v[f"ppl_{dom}"] if ok else np.nan
            row[f"delta_ppl_{dom}_pct"] = float(pct_delta(mine, same[f"ppl_{dom}"])) if same_ok else np.nan
            row[f"delta_ppl_{dom}_vs_mean_pct"] = \
                float(pct_delta(mine, base_mean[f"ppl_{dom}"])) if base_mean is not None else np.nan
        row["matched_run_id"] = None
        if base_cfg and not pd.isna(v["n_loops"]) and not pd.isna(v["d_model"]) and (
                int(v["n_loops"]) != base_cfg.get("n_loops") or int(v["d_model"]) != base_cfg.get("d_model")):
            m = pick(int(v["d_model"]), None, int(v["n_loops"]), run_seed)
            if len(m):
                mr = m.iloc[0]
                row["matched_run_id"] = mr["run_id"]
                for dom in doms:
                    row[f"delta_ppl_{dom}_vs_matched_pct"] = float(pct_delta(
                        v[f"ppl_{dom}"] if ok else np.nan,
                        mr[f"ppl_{dom}"] if mr["status"] == "complete" else np.nan))
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        for dom in doms:
            if f"delta_ppl_{dom}_vs_matched_pct" not in table:
                table[f"delta_ppl_{dom}_vs_matched_pct"] = np.nan
        table = table.sort_values("run_id").reset_index(drop=True)
    if base_row is not None:
        info["ppl"] = {dom: base_row[f"ppl_{dom}"] for dom in doms}
    if base_mean is not None:
        info["ppl_seed_mean"] = {dom: base_mean[f"ppl_{dom}"] for dom in doms}
    return table, info
