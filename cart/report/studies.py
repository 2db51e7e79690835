"""The report's sections beyond the CART paper: each family at its own best learning rate, LRT vs
Dense, RAT+ vs Dense across attention patterns, CART trained with a sampled recurrence depth, and
what the CART authors' code trains that the paper's text does not say. Rendered from the results store alone, like the paper tables."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from ..results.query import load_eval_results, load_runs, read_meta, store_domains, train_diag_mean
from ..results.schema import RANK_DOMAIN
from ..models.cart.config import PAPER_TEXT_VS_CODE
from .render import DASH, Table, isnan, pct, sig, view_from

# the metric the paper reports per task (CART's tables: acc_norm for HellaSwag and ARC, acc otherwise)
PAPER_METRIC = {("hellaswag", "acc_norm"), ("arc_challenge", "acc_norm"), ("lambada_openai", "acc"), ("piqa", "acc")}
SMOKE = "benchmark rows come from the builtin smoke set (generated items, not the real benchmarks): never results"


def _title(domain: str) -> str:
    return {"tinystories": "TS", "wikipedia": "Wiki", "fineweb_edu": "FW"}.get(domain, domain)


def _complete(con, group: str) -> pd.DataFrame:
    runs = load_runs(con, group)
    return runs[runs["status"] == "complete"]


def _lr(run: pd.Series) -> float:
    cfg = json.loads(run["config_json"]) if isinstance(run.get("config_json"), str) else {}
    return float(cfg.get("train", {}).get("lr", np.nan))


# ---- learning-rate sweeps ----------------------------------------------------------------------------
def table_lr_sweep(con: sqlite3.Connection) -> Table:
    doms = store_domains(con)
    rows = []
    for group, family in (("sweep_cart", "CART"), ("sweep_dense", "Dense")):
        runs = load_runs(con, group, with_json=True)
        done = runs[(runs["status"] == "complete") & runs[f"ppl_{RANK_DOMAIN}"].notna()]
        best = done.sort_values(f"ppl_{RANK_DOMAIN}")["run_id"].iloc[0] if len(done) else None
        for _, r in runs.iterrows():
            rows.append({"family": family, "run_id": r["run_id"], "lr": _lr(r), "status": r["status"],
                         "best": r["run_id"] == best, "final_train_loss": r["final_train_loss"],
                         **{f"ppl_{d}": r.get(f"ppl_{d}") for d in doms}})
    data = pd.DataFrame(rows)
    if data.empty:
        return Table("table16_lr_sweep", "Learning-rate sweep: each family at its own best lr", data, pd.DataFrame(),
                     empty_reason="no sweep_cart / sweep_dense runs in the store")
    data = data.sort_values(["family", "lr"]).reset_index(drop=True)
    spec = [("family", "family"), ("peak lr", lambda r: sig(r["lr"], 3)), ("run", "run_id"),
            ("best", lambda r: "**best**" if r["best"] else ""),
            ("train loss", lambda r: sig(r["final_train_loss"], 4)),
            *((f"PPL {_title(d)}", (lambda d: lambda r: sig(r[f"ppl_{d}"], 4))(d)) for d in doms)]
    return Table("table16_lr_sweep", "Learning-rate sweep: each family at its own best lr", data,
                 view_from(data, spec), [
                     "Same data, token budget and run settings for every row; best = lowest final validation PPL "
                     f"on {RANK_DOMAIN} (what the family's other runs use in this profile). A shared lr can favour "
                     "one family by a wide margin this early in training."],
                 empty_reason=None if data["status"].eq("complete").any() else "no complete sweep run")


# ---- LRT vs Dense ------------------------------------------------------------------------------------
def _eval(con, study: str) -> pd.DataFrame:
    ev = load_eval_results(con, study)
    return ev[ev["experiment"] == study] if len(ev) else ev


def _ppl(ev: pd.DataFrame, run_id: str, setting: str, domain: str, metric: str = "ppl") -> float:
    hit = ev[(ev["run_id"] == run_id) & (ev["setting"] == setting) & (ev["task"] == f"ppl:{domain}")
             & (ev["metric"] == metric)]
    return float(hit["value"].iloc[0]) if len(hit) else np.nan


def _bench(ev: pd.DataFrame, run_id: str, setting: str, shots: int, task: str, metric: str) -> float:
    hit = ev[(ev["run_id"] == run_id) & (ev["setting"] == setting) & (ev["num_fewshot"] == shots)
             & (ev["task"] == task) & (ev["metric"] == metric)]
    return float(hit["value"].iloc[0]) if len(hit) else np.nan


def table_lrt(con: sqlite3.Connection) -> Table:
    ev = _eval(con, "lrt")
    doms = store_domains(con)
    title = "LRT vs Dense at matched training data (the paper's reference deltas beside ours)"
    if ev.empty:
        return Table("table17_lrt", title, pd.DataFrame(), pd.DataFrame(),
                     empty_reason="eval/lrt.tsv absent (evaluate lrt stage not run)")
    runs = load_runs(con).set_index("run_id")
    shots = sorted(int(k) for k in ev["num_fewshot"].dropna().unique())
    tasks = sorted(t for t in ev["task"].dropna().unique() if not t.startswith("ppl:"))
    control = next((r for r in ev["run_id"].unique() if not r.startswith("lrt/")), None)
    rows = []
    for run_id in sorted(ev["run_id"].unique(), key=lambda r: (not r.startswith("lrt/"), r)):
        settings = [s for s in ev[ev["run_id"] == run_id]["setting"].unique()]
        bench_setting = next((s for s in settings if len(ev[(ev["run_id"] == run_id) & (ev["setting"] == s)
                                                          & ev["num_fewshot"].notna()])), "")
        row = {"run_id": run_id, "stored_params": runs["stored_params"].get(run_id),
               "tokens_per_s": runs["tokens_per_s"].get(run_id)}
        for s in settings:
            for d in doms:
                row[f"bpb_{d}_{s or 'plain'}"] = _ppl(ev, run_id, s, d, "bpb")
                row[f"ppl_{d}_{s or 'plain'}"] = _ppl(ev, run_id, s, d)
        for task in tasks:
            metric = next(m for t, m in sorted(PAPER_METRIC) if t == task) if any(t == task for t, _ in PAPER_METRIC) \
                else "acc"
            for k in shots:
                row[f"{task}_{k}shot"] = _bench(ev, run_id, bench_setting, k, task, metric)
        rows.append(row)
    data = pd.DataFrame(rows)
    base = data[data["run_id"] == control].iloc[0] if control in set(data["run_id"]) else None

    def bpb(r, d=RANK_DOMAIN):
        for s in ("sequential", "merged", "plain"):
            v = r.get(f"bpb_{d}_{s}")
            if v is not None and not isnan(v):
                return v, s
        return np.nan, ""

    spec = [("run", "run_id"), ("stored (M)", lambda r: sig(r["stored_params"] / 1e6, 4)),
            ("overhead vs Dense", lambda r: DASH if base is None or r["run_id"] == control
             else pct(100 * (r["stored_params"] / base["stored_params"] - 1))),
            ("train tok/s vs Dense", lambda r: DASH if base is None or isnan(base["tokens_per_s"])
             else f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x"),
            (f"BPB {_title(RANK_DOMAIN)} (mode)", lambda r: f"{sig(bpb(r)[0], 4)} ({bpb(r)[1]})"),
            ("Δ BPB vs Dense", lambda r: DASH if base is None or r["run_id"] == control
             else pct(100 * (bpb(r)[0] / bpb(base)[0] - 1)))]
    for s in ("merged", "sequential", "zero"):
        col = f"ppl_{RANK_DOMAIN}_{s}"
        if col in data:
            spec.append((f"PPL {_title(RANK_DOMAIN)} {s}", (lambda c: lambda r: sig(r.get(c), 4))(col)))
    for task in tasks:
        for k in shots:
            spec.append((f"{task} {k}-shot", (lambda c: lambda r: sig(100 * r.get(c, np.nan), 3))(f"{task}_{k}shot")))
        if len(shots) > 1:
            lo, hi = shots[0], shots[-1]
            spec.append((f"{task} {hi}-{lo} shot", (lambda t: lambda r: pct(
                100 * (r.get(f"{t}_{hi}shot", np.nan) - r.get(f"{t}_{lo}shot", np.nan)), signed=True))(task)))
    notes = ["BPB / PPL on the held-out validation text: merged = the parallel training passes (each position "
             "scored by the last pass that computed it), sequential = exact token-by-token recurrence (the "
             "paper's decoding number), zero = no memory (must equal pass 0). Benchmarks run in merged mode; "
             "accuracies in %, HellaSwag / ARC acc_norm.",
             "Paper (docs/lrt.md; README of the authors' code, 20L ~1.3B at 10 tokens/param): BPB "
             "0.767 (baseline) -> 0.752 (LRT interleaved S=2), -2.0%; secondary: 24L 0.699 -> 0.695 shared / "
             "0.693 layerwise. The paper's claim is better in-context learning: compare the k-shot minus 0-shot "
             "column with Dense's. Our backbone is the project's Dense (MHA, SwiGLU, tied embeddings), so the "
             "parameter overhead differs from the paper's (untied, value embeddings)."]
    if (ev["source"] == "builtin").any():
        notes.append(SMOKE)
    return Table("table17_lrt", title, data, view_from(data, spec), notes)


# ---- RAT+ vs Dense across attention patterns ---------------------------------------------------------
def ratplus_long(con: sqlite3.Connection) -> pd.DataFrame:
    """One row per (run, pattern): validation PPL on the ranking domain, the mean benchmark
    accuracy, attention FLOPs and KV-cache bytes per sequence at the run's sequence length."""
    from ..models import config_from_dict
    from ..models.ratplus.config import attention_flops, kv_cache_bytes
    ev = _eval(con, "ratplus")
    if ev.empty:
        return pd.DataFrame()
    runs = load_runs(con, with_json=True).set_index("run_id")
    rows = []
    for (run_id, pattern), g in ev.groupby(["run_id", "setting"], sort=True):
        cfg = json.loads(runs.loc[run_id, "config_json"]) if run_id in runs.index else {}
        model = config_from_dict(cfg["model"]) if cfg else None
        T = int(cfg.get("run", {}).get("seq_len", 0)) if cfg else 0
        scored = [(t, m) for t, m in zip(g["task"], g["metric"])]
        accs = g[(g["num_fewshot"] == 0).to_numpy() & np.array([tm in PAPER_METRIC for tm in scored], dtype=bool)]
        kind = ("RAT+ adapted" if run_id.startswith("ratplus_adapt/") else
                "Dense control" if model is not None and model.arch == "dense" else
                f"RAT+ {runs.loc[run_id, 'variant']}" if run_id in runs.index else run_id)
        rows.append({"model": kind, "run_id": run_id, "pattern": pattern,
                     "ppl": _ppl(ev, run_id, pattern, RANK_DOMAIN),
                     "mean_acc": float(accs["value"].mean()) if len(accs) else np.nan,
                     "attention_flops": attention_flops(model, pattern, T) if model is not None and T else np.nan,
                     "kv_cache_bytes": kv_cache_bytes(model, pattern, T, 2) if model is not None and T else np.nan})
    return pd.DataFrame(rows)


def table_ratplus(con: sqlite3.Connection) -> Table:
    data = ratplus_long(con)
    title = "RAT+: accuracy and perplexity vs attention pattern (trained dense, run dilated)"
    if data.empty:
        return Table("table18_ratplus", title, data, pd.DataFrame(),
                     empty_reason="eval/ratplus.tsv absent (evaluate ratplus stage not run)")
    dense_ppl = data[data["pattern"] == "dense"].set_index("run_id")["ppl"]
    data["ppl_vs_dense_pct"] = [100 * (r["ppl"] / dense_ppl[r["run_id"]] - 1) if r["run_id"] in dense_ppl.index
                                else np.nan for _, r in data.iterrows()]
    data = data.sort_values(["model", "run_id", "attention_flops"], ascending=[True, True, False]).reset_index(drop=True)
    spec = [("model", "model"), ("run", "run_id"), ("pattern", "pattern"),
            (f"PPL {_title(RANK_DOMAIN)}", lambda r: sig(r["ppl"], 4)),
            ("vs its dense", lambda r: pct(r["ppl_vs_dense_pct"])),
            ("mean acc (%)", lambda r: sig(100 * r["mean_acc"], 3)),
            ("attn GFLOPs/seq", lambda r: sig(r["attention_flops"] / 1e9, 3)),
            ("KV cache (KiB/seq)", lambda r: sig(r["kv_cache_bytes"] / 1024, 4))]
    notes = ["Patterns (cart/models/patterns.py): D = dilation (a query sees its own state and every D-th "
             "recurrent state), W = local window, P = sink tokens; dense = causal attention. RAT+ adapted = a "
             "short fine-tune at that pattern from the joint-trained run. Attention FLOPs 4 d sum_t |S(t)| and "
             "the bf16 KV cache (RAT+ adds its recurrent state) at the training sequence length.",
             "Paper (docs/ratplus.md; 1.5B / 100B tokens): near dense accuracy at D=16 and -2 to -3 "
             "points at D=64 (secondary: commonsense average 58.33 dense, 58.06 D=16, 57.46 D=64; attention "
             "sparsified directly to D=16 without recurrence ~32.6). The expected shape here: the dense-only "
             "model and the Dense control degrade sharply when sparsified, the joint-trained RAT+ much less, the "
             "adapted one least."]
    ev = _eval(con, "ratplus")
    if (ev["source"] == "builtin").any():
        notes.append(SMOKE)
    return Table("table18_ratplus", title, data, view_from(data, spec), notes)


def fig_ratplus(con: sqlite3.Connection, path: Path, dpi: int) -> str | None:
    from .figures import RC, _save, plt
    data = ratplus_long(con)
    if data.empty:
        return None
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        for (model, run_id), g in data.groupby(["model", "run_id"], sort=True):
            g = g.sort_values("attention_flops", ascending=False)
            ax.plot(g["attention_flops"] / 1e9, g["ppl"], marker="o", label=f"{model} ({run_id.split('/')[-1]})")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("attention GFLOPs per sequence (sparser ->)")
        ax.set_ylabel(f"validation PPL ({RANK_DOMAIN})")
        ax.legend()
        _save(fig, path, dpi)
    return "RAT+ and the Dense control: validation PPL vs attention FLOPs across patterns"


# ---- sampled recurrence depth -------------------------------------------------------------------------
SAMPLED_R_SMOKE = ("SMOKE: the default profile's tiny runs on the builtin generated corpus (a pipeline check, "
                   "not a result: these numbers say nothing about depth extrapolation)")


def _scheme(cfg: dict, variant) -> tuple[str, str]:
    """(scheme, its distribution in words) from a run's config (train.loop_sampling)."""
    ls = cfg.get("train", {}).get("loop_sampling") or {}
    scheme = ls.get("scheme") or (variant if isinstance(variant, str) else "fixed")
    R = cfg.get("model", {}).get("n_loops")
    if scheme == "uniform":
        return scheme, f"U{{{ls.get('r_min')}..{ls.get('r_max')}}}"
    if scheme == "poisson_lognormal":
        clamp = f", <= {ls['r_max']}" if ls.get("r_max") is not None else ""
        return scheme, f"1 + Poisson(LogNormal), sigma {ls.get('sigma')}{clamp}"
    return scheme, f"R = {R}"


def sampled_r_long(con: sqlite3.Connection) -> pd.DataFrame:
    """One row per (sampled_r run, inference R): the run's training scheme, trained (mean) R,
    realised mean R over its steps, final spectral radius, validation PPL/BPB per domain and the mean
    0-shot accuracy of the paper's benchmark metrics (where the study ran benchmarks)."""
    ev = _eval(con, "sampled_r")
    if ev.empty:
        return pd.DataFrame()
    ev = ev[ev["setting"].fillna("").astype(str) == ""]  # the fixed-R rows; adaptive exit: adaptive_exit_long
    ev = ev.dropna(subset=["n_loops"])
    if ev.empty:
        return pd.DataFrame()
    runs = load_runs(con, with_json=True).set_index("run_id")
    realised = train_diag_mean(con, "n_loops")
    doms = store_domains(con)
    rows = []
    for (run_id, r), g in ev.groupby(["run_id", "n_loops"], sort=True):
        cfg = json.loads(runs.loc[run_id, "config_json"]) if run_id in runs.index and \
            isinstance(runs.loc[run_id, "config_json"], str) else {}
        variant = runs.loc[run_id, "variant"] if run_id in runs.index else None
        scheme, dist = _scheme(cfg, variant)
        trained = cfg.get("model", {}).get("n_loops")
        scored = [(t, m) in PAPER_METRIC for t, m in zip(g["task"], g["metric"])]
        accs = g[(g["num_fewshot"] == 0).to_numpy() & np.array(scored, dtype=bool)]
        rows.append({"run_id": run_id, "scheme": scheme, "distribution": dist, "n_loops": int(r),
                     "trained_n_loops": trained, "realised_mean_r": realised.get(run_id, trained),
                     "spectral_radius": runs["spectral_radius"].get(run_id, np.nan),
                     **{f"ppl_{d}": _ppl_r(g, d) for d in doms}, **{f"bpb_{d}": _ppl_r(g, d, "bpb") for d in doms},
                     "mean_acc_0shot": float(accs["value"].mean()) if len(accs) else np.nan,
                     "smoke": bool((g["source"] == "builtin").any())})
    order = {s: i for i, s in enumerate(("fixed", "uniform", "poisson_lognormal"))}
    out = pd.DataFrame(rows)
    out["_o"] = out["scheme"].map(lambda s: order.get(s, len(order)))
    return out.sort_values(["_o", "scheme", "run_id", "n_loops"]).drop(columns="_o").reset_index(drop=True)


def _ppl_r(g: pd.DataFrame, domain: str, metric: str = "ppl") -> float:
    hit = g[(g["task"] == f"ppl:{domain}") & (g["metric"] == metric)]
    return float(hit["value"].iloc[0]) if len(hit) else np.nan


def _sampled_r_smoke(con, data: pd.DataFrame) -> bool:
    return bool(data["smoke"].any()) or read_meta(con).get("profile") == "smoke"


def _paper_fixed_r_note() -> str:
    from .paper import PAPER
    pv, tr = PAPER["variable_r"], PAPER["variable_r_trained"]
    lam = {r: v[3] for r, v in pv.items()}
    return (f"The paper (Table 12; docs/cart.md) trains at one fixed R={tr} (d=1024, P=6) and finds every "
            f"other inference R worse on every benchmark, e.g. LAMBADA perplexity "
            + ", ".join(f"{lam[r]:g} at R={r}" for r in sorted(lam) if r in (2, 4, tr, 8, 16))
            + f" ({lam[2] / lam[tr]:.1f}x its trained-R value with fewer loops, {lam[16] / lam[tr]:.2f}x with 16); "
            "it names training with a sampled depth as the remedy and never tries it. Our fixed row is that recipe: "
            "the question is whether the sampled rows stay flat past the trained R.")


def table_sampled_r(con: sqlite3.Connection) -> Table:
    data = sampled_r_long(con)
    title = "Sampled recurrence depth: validation PPL vs inference R per training scheme"
    if data.empty:
        return Table("table20_sampled_r", title, data, pd.DataFrame(),
                     empty_reason="eval/sampled_r.tsv absent (evaluate sampled_r stage not run)")
    dom = RANK_DOMAIN
    Rs = sorted(data["n_loops"].unique())
    rows = []
    for run_id, g in data.groupby("run_id", sort=False):
        first = g.iloc[0]
        at = dict(zip(g["n_loops"], g[f"ppl_{dom}"]))
        tr = first["trained_n_loops"]
        best_r = int(g.loc[g[f"ppl_{dom}"].idxmin(), "n_loops"]) if g[f"ppl_{dom}"].notna().any() else None
        rows.append({"scheme": first["scheme"], "run_id": run_id, "distribution": first["distribution"],
                     "trained_n_loops": tr, "realised_mean_r": first["realised_mean_r"],
                     "spectral_radius": first["spectral_radius"], "best_r": best_r,
                     "max_r_vs_trained": at.get(max(Rs), np.nan) / at.get(tr, np.nan) if tr in at else np.nan,
                     **{f"ppl_R{r}": at.get(r, np.nan) for r in Rs}})
    wide = pd.DataFrame(rows)
    spec = [("scheme", "scheme"), ("run", "run_id"), ("training R", "distribution"),
            ("mean R (realised)", lambda r: sig(r["realised_mean_r"], 3)),
            ("spectral radius", lambda r: sig(r["spectral_radius"], 4)),
            *((f"PPL R={r}" + (" (train)" if (wide["trained_n_loops"] == r).all() else ""),
               (lambda r: lambda row: sig(row[f"ppl_R{r}"], 4))(r)) for r in Rs),
            ("best R", lambda r: DASH if r["best_r"] is None or isnan(r["best_r"]) else str(int(r["best_r"]))),
            (f"PPL R={max(Rs)} / trained R", lambda r: sig(r["max_r_vs_trained"], 3))]
    rho = data.groupby("scheme")["spectral_radius"].max()
    notes = [f"Validation PPL on {dom} (every domain and BPB in the CSV) of each sampled_r run, inference R changed "
             "at evaluation time with no fine-tuning. Every run: the same d, P, mean R and token budget (Stage 2's "
             "run settings); the fixed run is the paper's recipe, the others draw R afresh every optimizer step "
             "(cart/loop_sampling.py). Mean R (realised) = the average of the R each step logged.",
             _paper_fixed_r_note(),
             "Spectral radius (final max sigmoid(a) of the LTI gate: below 1 a contraction under paper_text, only "
             "what the authors log under paper_code): "
             + ", ".join(f"{k} {sig(v, 4)}" for k, v in rho.items())
             + (" (below 1 under every scheme)." if (rho < 1).all() else " (NOT below 1 under every scheme).")]
    if data["mean_acc_0shot"].notna().any():
        notes.append("Mean 0-shot accuracy over the paper's benchmark metrics at each R is in the CSV "
                     "(mean_acc_0shot).")
    if _sampled_r_smoke(con, data):
        notes.insert(0, SAMPLED_R_SMOKE + ".")
    return Table("table20_sampled_r", title, data, view_from(wide, spec), notes)


def adaptive_exit_long(con: sqlite3.Connection) -> pd.DataFrame:
    """One row per (sampled_r run, exit threshold): the run's scheme, the loop cap, and per domain the
    PPL with the exit, the mean loops its tokens used, and the PPL at the trained R and at the cap
    (from the fixed-R rows, where the stage evaluated them)."""
    ev = _eval(con, "sampled_r")
    if ev.empty:
        return pd.DataFrame()
    setting = ev["setting"].fillna("").astype(str)
    exits, fixed = ev[setting.str.startswith("exit<")], sampled_r_long(con)
    if exits.empty:
        return pd.DataFrame()
    runs = load_runs(con, with_json=True).set_index("run_id")
    doms = store_domains(con)
    rows = []
    for (run_id, label), g in exits.groupby(["run_id", "setting"], sort=True):
        cfg = json.loads(runs.loc[run_id, "config_json"]) if run_id in runs.index and \
            isinstance(runs.loc[run_id, "config_json"], str) else {}
        scheme, dist = _scheme(cfg, runs.loc[run_id, "variant"] if run_id in runs.index else None)
        trained, cap = cfg.get("model", {}).get("n_loops"), int(g["n_loops"].iloc[0])
        at = fixed[fixed["run_id"] == run_id].set_index("n_loops") if len(fixed) else pd.DataFrame()
        row = {"run_id": run_id, "scheme": scheme, "distribution": dist, "threshold": float(label[len("exit<"):]),
               "max_loops": cap, "trained_n_loops": trained, "smoke": bool((g["source"] == "builtin").any())}
        for d in doms:
            row |= {f"ppl_{d}": _ppl_r(g, d), f"mean_loops_{d}": _ppl_r(g, d, "mean_loops"),
                    f"ppl_{d}_trained_r": at[f"ppl_{d}"].get(trained, np.nan) if len(at) else np.nan,
                    f"ppl_{d}_max_r": at[f"ppl_{d}"].get(cap, np.nan) if len(at) else np.nan}
        rows.append(row)
    order = {s: i for i, s in enumerate(("fixed", "uniform", "poisson_lognormal"))}
    out = pd.DataFrame(rows)
    out["_o"] = out["scheme"].map(lambda s: order.get(s, len(order)))
    return out.sort_values(["_o", "scheme", "run_id", "threshold"]).drop(columns="_o").reset_index(drop=True)


def table_adaptive_exit(con: sqlite3.Connection) -> Table:
    data = adaptive_exit_long(con)
    title = "Adaptive exit: each token stops looping once its state settles"
    if data.empty:
        return Table("table21_adaptive_exit", title, data, pd.DataFrame(),
                     empty_reason="no adaptive-exit rows in eval/sampled_r.tsv (eval_sampled_r.exit_thresholds empty "
                                  "or the evaluate sampled_r stage not run)")
    dom = RANK_DOMAIN
    spec = [("scheme", "scheme"), ("run", "run_id"), ("threshold", lambda r: sig(r["threshold"], 3)),
            ("max R", lambda r: str(r["max_loops"])),
            (f"mean loops used ({_title(dom)})", lambda r: sig(r[f"mean_loops_{dom}"], 3)),
            (f"PPL {_title(dom)} (exit)", lambda r: sig(r[f"ppl_{dom}"], 4)),
            ("PPL at the trained R", lambda r: sig(r[f"ppl_{dom}_trained_r"], 4)),
            ("PPL at max R", lambda r: sig(r[f"ppl_{dom}_max_r"], 4))]
    notes = [f"Validation PPL on {dom} (every domain in the CSV) with CART.hidden's exit_threshold: a token "
             "stops looping once ||h_(r+1) - h_r|| / ||h_r|| < threshold, or at max R, and keeps that state (the "
             "coda still attends over every token's final state). Mean loops used = the average over scored tokens. "
             "The paper has no adaptive exit; the comparison is with the same run at its trained R and at max R "
             "(the fixed-R rows of the table above).",
             "A token's trajectory depends only on the anchor and its own state, so its exit state is exactly the "
             "state the model gives it at R = its loop count (tested); X and W cannot exit per token."]
    if bool(data["smoke"].any()) or read_meta(con).get("profile") == "smoke":
        notes.insert(0, SAMPLED_R_SMOKE + ".")
    return Table("table21_adaptive_exit", title, data, view_from(data, spec), notes)


def fig_sampled_r(con: sqlite3.Connection, path: Path, dpi: int) -> str | None:
    """PPL vs inference R, one curve per training scheme (seed mean); beside it, each curve relative
    to its PPL at the trained R with the paper's fixed-R curve (LAMBADA perplexity, Table 12)."""
    from matplotlib.ticker import MaxNLocator

    from .figures import RC, _save, plt
    from .paper import PAPER
    data = sampled_r_long(con)
    if data.empty:
        return None
    col = f"ppl_{RANK_DOMAIN}"
    with plt.rc_context(RC):
        fig, (ax, rel) = plt.subplots(1, 2, figsize=(9, 3.4))
        for scheme, g in data.groupby("scheme", sort=False):
            mean = g.groupby("n_loops")[col].mean()
            trained = g["trained_n_loops"].dropna()
            ax.plot(mean.index, mean.values, "-o", ms=3, label=f"{scheme} ({g['distribution'].iloc[0]})")
            if len(trained) and int(trained.iloc[0]) in mean.index:
                rel.plot(mean.index, mean.values / mean[int(trained.iloc[0])], "-o", ms=3, label=scheme)
        for r in sorted(data["trained_n_loops"].dropna().unique()):
            ax.axvline(int(r), color="red", ls=":", lw=1)
            rel.axvline(int(r), color="red", ls=":", lw=1, label=f"trained (mean) R={int(r)}")
        pv, tr = PAPER["variable_r"], PAPER["variable_r_trained"]
        pr = sorted(pv)
        rel.plot(pr, [pv[r][3] / pv[tr][3] for r in pr], "--s", mfc="none", color="grey",
                 label=f"paper, fixed R={tr}: LAMBADA ppl (Table 12)")
        ax.set(xlabel="inference R (core iterations)", ylabel=f"validation PPL ({RANK_DOMAIN})", yscale="log")
        rel.set(xlabel="inference R (core iterations)", ylabel="PPL / PPL at the trained R", yscale="log")
        for a in (ax, rel):
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
            a.legend(loc="best", fontsize=6)
        smoke = _sampled_r_smoke(con, data)
        fig.suptitle("PPL vs inference R per training scheme" + (" (SMOKE: tiny runs, builtin corpus; not a result)"
                                                                 if smoke else ""))
        fig.tight_layout()
        _save(fig, path, dpi)
    return "Sampled recurrence depth: PPL vs inference R per training scheme, and relative to the trained R " \
           "beside the paper's fixed-R curve"


# ---- the CART paper's text vs its authors' code ---------------------------------------------------------
def table_paper_text_vs_code(con: sqlite3.Connection) -> Table:
    data = pd.DataFrame([d._asdict() for d in PAPER_TEXT_VS_CODE])
    runs = load_runs(con, with_json=True)
    variants = {}
    for _, r in runs[runs["arch"] == "cart"].iterrows():
        if isinstance(r.get("config_json"), str):
            v = json.loads(r["config_json"])["model"].get("variant", "paper_text")
            variants[v] = variants.get(v, 0) + 1
    view = view_from(data, [("item", "item"), ("paper text (variant paper_text)", "paper_text"),
                            ("authors' code (variant paper_code)", "paper_code"), ("where", "setting")])
    return Table("table19_paper_text_vs_code", "CART: the paper's text vs the authors' released code", data, view, [
        "Read from the authors' repository (ccapps42/CART); docs/cart.md. `model.cart.variant` picks the "
        "reading per run (configs/paper.yaml trains paper_code). Under paper_code the logged spectral radius "
        "max sigmoid(a) does not bound the state's growth (the update adds sigmoid(a) * u on top of the block's "
        "residual): it is what the authors log, not a contraction bound.",
        "CART runs in this store by variant: " + (", ".join(f"{k} {v}" for k, v in sorted(variants.items()))
                                                 or "none") + "."])


TABLES = (table_lr_sweep, table_lrt, table_ratplus, table_sampled_r, table_adaptive_exit, table_paper_text_vs_code)
