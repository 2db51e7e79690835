"""Figures as PNG, rendered from the store with matplotlib's Agg backend and no timestamps or
software tags in the file, so the same store gives byte-identical images."""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedFormatter, FixedLocator, MaxNLocator, NullLocator  # noqa: E402

from ..results.query import load_eval_log, load_eval_results, load_runs, load_train_log  # noqa: E402
from ..results.schema import GROUPS, RANK_DOMAIN  # noqa: E402
from ..results.stats import power_law_fit  # noqa: E402
from .paper import PAPER, PAPER_BENCH_COLUMNS  # noqa: E402
from .tables.recurrence import gains, r_benefit_data  # noqa: E402
from .tables.scaling import scaling_points  # noqa: E402

RC = {"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
      "legend.fontsize": 7, "path.simplify": False, "svg.hashsalt": "cart", "figure.max_open_warning": 0}
STAGE_COLORS = {"stage1": "tab:blue", "stage2": "tab:orange"}


def _save(fig, path: Path, dpi: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    plt.close(fig)


def _colors(n: int):
    cmap = plt.get_cmap("viridis")
    return [cmap(0.9 * i / max(n - 1, 1)) for i in range(n)]


def _natural(s: str):
    """Sort key that orders d64 before d128."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _d_axis(ax, ds) -> None:
    """Log-2 width axis with the widths themselves as tick labels."""
    ds = sorted({int(d) for d in ds if np.isfinite(d)})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ds))
    ax.xaxis.set_major_formatter(FixedFormatter([str(d) for d in ds]))
    ax.xaxis.set_minor_locator(NullLocator())


def fig_loss(con: sqlite3.Connection, group: str, path: Path, dpi: int) -> str | None:
    """Train loss vs step (left) and validation loss on the ranking domain vs step (right), one
    line per run of the group (failed/incomplete runs included, marked in the legend)."""
    runs = load_runs(con, group)
    runs = runs[runs["status"] != "missing"]
    train = load_train_log(con, runs["run_id"])
    evals = load_eval_log(con, runs["run_id"])
    evals = evals[evals["domain"] == RANK_DOMAIN]
    if train.empty and evals.empty:
        return None
    with plt.rc_context(RC):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        ids = sorted(set(train["run_id"]) | set(evals["run_id"]), key=_natural)
        status = dict(zip(runs["run_id"], runs["status"]))
        for color, rid in zip(_colors(len(ids)), ids):
            label = rid.split("/", 1)[1] + ("" if status.get(rid) == "complete" else f" ({status.get(rid)})")
            t = train[train["run_id"] == rid].dropna(subset=["loss"])
            e = evals[evals["run_id"] == rid].dropna(subset=["loss"])
            if len(t):
                axes[0].plot(t["step"], t["loss"], color=color, lw=1, label=label)
            if len(e):
                axes[1].plot(e["step"], e["loss"], color=color, lw=1, marker="o", ms=2, label=label)
        axes[0].set(title=f"{group}: training loss", xlabel="optimizer step", ylabel="train loss (nats/token)")
        axes[1].set(title=f"{group}: validation loss ({RANK_DOMAIN})", xlabel="optimizer step",
                    ylabel="validation loss (nats/token)")
        handles = {}
        for ax in axes:  # a run with train rows only (stopped before its first eval) is still listed
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        labels = sorted(handles, key=_natural)
        if labels:
            axes[1].legend([handles[lab] for lab in labels], labels, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                           ncol=1 + len(labels) // 24, fontsize=6)
        fig.tight_layout()
        _save(fig, path, dpi)
    return f"Training and validation ({RANK_DOMAIN}) loss per run, {group}"


def fig_stage1_curves(con: sqlite3.Connection, path: Path, dpi: int) -> str | None:
    """The paper's Figure 3: validation PPL on the ranking domain vs step, one panel per width, one line
    per Stage 1 config (colour = P, line style = R)."""
    runs = load_runs(con, "stage1")
    runs = runs[runs["status"] != "missing"].dropna(subset=["d_model", "n_prelude", "n_loops"])
    evals = load_eval_log(con, runs["run_id"])
    evals = evals[(evals["domain"] == RANK_DOMAIN)].dropna(subset=["ppl"])
    if evals.empty:
        return None
    ds = sorted(int(d) for d in runs["d_model"].unique())
    ps = sorted(int(p) for p in runs["n_prelude"].unique())
    rs = sorted(int(r) for r in runs["n_loops"].unique())
    colors, styles = dict(zip(ps, _colors(len(ps)))), ["-", "--", ":", "-."]
    with plt.rc_context(RC):
        fig, axes = plt.subplots(1, len(ds), figsize=(3.6 * len(ds), 3.6), squeeze=False)
        for ax, d in zip(axes[0], ds):
            for _, r in runs[runs["d_model"] == d].sort_values(["n_prelude", "n_loops"]).iterrows():
                e = evals[evals["run_id"] == r["run_id"]].sort_values("step")
                if len(e):
                    p, nl = int(r["n_prelude"]), int(r["n_loops"])
                    ax.plot(e["step"], e["ppl"], color=colors[p], ls=styles[rs.index(nl) % len(styles)], lw=1,
                            label=f"P{p} R{nl}")
            ax.set(title=f"Stage 1, d = {d}", xlabel="optimizer step", ylabel=f"validation PPL ({RANK_DOMAIN})",
                   yscale="log")
            ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        _save(fig, path, dpi)
    return f"Stage 1 validation PPL ({RANK_DOMAIN}) vs step per width (colour = P, line style = R)"


def fig_r_benefit(con: sqlite3.Connection, path: Path, dpi: int) -> str | None:
    """Gain from the smallest to the largest R vs d, Stage 1 and Stage 2, ours solid, paper dashed."""
    frames = []
    for stage in ("stage1", "stage2"):
        g = gains(r_benefit_data(con, stage))
        g["stage"] = stage
        frames.append(g)
    g = pd.concat(frames, ignore_index=True)
    if g[(g["source"] == "ours")]["gain_pct"].notna().sum() == 0:
        return None
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(6, 4))
        for stage in ("stage1", "stage2"):
            for src, style in (("ours", "-o"), ("paper", "--s")):
                s = g[(g["stage"] == stage) & (g["source"] == src)].dropna(subset=["gain_pct"]).sort_values("d_model")
                if len(s):
                    ax.plot(s["d_model"], s["gain_pct"], style, color=STAGE_COLORS[stage],
                            mfc="none" if src == "paper" else None,
                            label=f"{'Stage 1' if stage == 'stage1' else 'Stage 2'}, {src}")
        ax.axhline(0, color="grey", lw=0.8)
        _d_axis(ax, g.dropna(subset=["gain_pct"])["d_model"])
        ax.set(title="R benefit vs width", xlabel="d_model (log scale)",
               ylabel="Wikipedia PPL gain, R_min → R_max (%)")
        ax.legend(loc="best")
        fig.tight_layout()
        _save(fig, path, dpi)
    return "R benefit (Wikipedia PPL gain from the smallest to the largest R) vs d at both stages"


def fig_spectral(con: sqlite3.Connection, path: Path, dpi: int) -> str | None:
    """LTI spectral radius vs step, one panel per stage with a log (Stage 1 left, Stage 2 right),
    colour = d."""
    runs = load_runs(con)
    runs = runs[(runs["arch"] == "cart") & runs["group"].isin(["stage1", "stage2"]) & (runs["status"] != "missing")]
    log = load_train_log(con, runs["run_id"]).dropna(subset=["spectral_radius"])
    if log.empty:
        return None
    groups = [g for g in ("stage1", "stage2") if log["run_id"].isin(runs.loc[runs["group"] == g, "run_id"]).any()]
    ds = sorted(int(d) for d in runs["d_model"].dropna().unique())
    cmap = dict(zip(ds, _colors(len(ds))))
    styles = ["-", "--", ":", "-."]
    with plt.rc_context(RC):
        fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), sharey=True, squeeze=False)
        for ax, group in zip(axes[0], groups):
            sel = runs[runs["group"] == group].sort_values(["d_model", "n_loops", "run_id"])
            rs = sorted(int(r) for r in sel["n_loops"].dropna().unique())
            shown = set()
            for _, r in sel.iterrows():
                t = log[log["run_id"] == r["run_id"]]
                if t.empty:
                    continue
                d, nl = int(r["d_model"]), int(r["n_loops"])
                key = (d, nl)
                ax.plot(t["step"], t["spectral_radius"], color=cmap[d], ls=styles[rs.index(nl) % len(styles)], lw=1,
                        label=None if key in shown else f"d={d} R={nl}")
                shown.add(key)
            ax.set(title=f"{'Stage 1' if group == 'stage1' else 'Stage 2'}: LTI spectral radius",
                   xlabel="optimizer step", ylabel="spectral radius ρ = max sigmoid(θ)")
            if shown:
                ax.legend(loc="best", ncol=1 + len(shown) // 12)
        fig.tight_layout()
        _save(fig, path, dpi)
    return "LTI spectral radius vs step (colour = d, line style = R)"


def fig_ppl_vs_d(con: sqlite3.Connection, path: Path, dpi: int) -> str | None:
    """Best Wikipedia PPL per d on log-log axes with the fitted power law, ours and the paper's."""
    pts = scaling_points(con)
    if sum(np.isfinite(pts[(s, "ours")][1]).sum() for s in ("stage1", "stage2")) == 0:
        return None
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for (stage, src), (x, y) in sorted(pts.items()):
            ok = np.isfinite(y)
            if not ok.any():
                continue
            color = STAGE_COLORS[stage]
            name = "Stage 1" if stage == "stage1" else "Stage 2"
            ax.plot(x[ok], y[ok], "o" if src == "ours" else "s", color=color, mfc=None if src == "ours" else "none",
                    label=f"{name}, {src}")
            fit = power_law_fit(x[ok], y[ok])
            if fit:
                xs = np.geomspace(x[ok].min(), x[ok].max(), 50)
                ax.plot(xs, fit["prefactor"] * xs ** -fit["exponent"], "-" if src == "ours" else "--", color=color,
                        lw=1, label=f"fit {name} {src}: a={fit['exponent']:.3f}, R²={fit['r2']:.3f}")
        _d_axis(ax, np.concatenate([x for x, _ in pts.values()]))
        ax.set_yscale("log")
        ax.set(title="Wikipedia PPL vs width: PPL = c·d^(-a)", xlabel="d_model (log scale)",
               ylabel="validation PPL, Wikipedia (log scale)")
        ax.legend(loc="best")
        fig.tight_layout()
        _save(fig, path, dpi)
    return "Best Wikipedia PPL per d with the power-law fit (ours: filled/solid; paper: hollow/dashed)"


def fig_variable_r(con: sqlite3.Connection, path: Path, dpi: int) -> str | None:
    """Every variable-R metric vs inference R; the trained R is marked."""
    ev = load_eval_results(con, "variable_r").dropna(subset=["n_loops", "value"])
    if ev.empty:
        return None
    runs = load_runs(con, current=False)
    trained = dict(zip(runs["run_id"], runs["n_loops"]))
    panels = sorted({(t, m) for t, m in zip(ev["task"], ev["metric"])}, key=lambda tm: (tm[0].startswith("ppl:"), tm))
    acc = ev["metric"].astype(str).str.startswith("acc")
    scale = 1.0 if (acc.any() and ev.loc[acc, "value"].max() > 1) else 100.0
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    paper_idx = {tm: i for i, tm in enumerate(PAPER_BENCH_COLUMNS)}
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3 * nrow), squeeze=False)
        for ax, (task, metric) in zip(axes.flat, panels):
            sel = ev[(ev["task"] == task) & (ev["metric"] == metric)]
            is_acc = str(metric).startswith("acc")
            for rid, g in sel.groupby("run_id", sort=True):
                g = g.sort_values("n_loops")
                src = ", ".join(sorted(set(g["source"].dropna())))
                ax.plot(g["n_loops"], g["value"] * (scale if is_acc else 1), "-o", ms=3, label=f"{rid} [{src}]")
                tr = trained.get(rid)
                if tr is not None and not pd.isna(tr):
                    ax.axvline(int(tr), color="red", ls=":", lw=1, label=f"trained R={int(tr)}")
            if (task, metric) in paper_idx and not (sel["source"] == "builtin").all():
                i = paper_idx[(task, metric)]
                pr = sorted(PAPER["variable_r"])
                ax.plot(pr, [PAPER["variable_r"][r][i] for r in pr], "--s", mfc="none", color="grey",
                        label=f"paper (d=1024, trained R={PAPER['variable_r_trained']})")
            unit = " (%)" if is_acc else ""
            ax.set(title=f"{task}: {metric}", xlabel="inference R (core iterations)", ylabel=f"{metric}{unit}")
            if metric in ("perplexity", "ppl"):
                ax.set_yscale("log")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(loc="best", fontsize=6)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        smoke = (ev["source"] == "builtin").any()
        fig.suptitle("Variable R at inference" + (" (builtin SMOKE SET rows are not benchmark results)" if smoke
                                                  else ""))
        fig.tight_layout()
        _save(fig, path, dpi)
    return "Variable-R metrics vs inference R (trained R marked in red)"


def render_figures(con: sqlite3.Connection, fig_dir: Path, dpi: int) -> list[tuple[str, str | None, str]]:
    """[(file name, caption or None when there was nothing to plot, what it needs)] in paper order."""
    out = []
    for group in GROUPS:
        name = f"loss_{group}.png"
        out.append((name, fig_loss(con, group, fig_dir / name, dpi), f"train/eval curves of {group} runs"))
    for name, fn, need in (("stage1_curves.png", fig_stage1_curves, "Stage 1 runs with validation logs"),
                           ("r_benefit.png", fig_r_benefit, "complete Stage 1 or Stage 2 runs at 2+ values of R"),
                           ("spectral_radius.png", fig_spectral, "CART train logs with a spectral radius"),
                           ("ppl_vs_d.png", fig_ppl_vs_d, "complete Stage 1 or Stage 2 runs"),
                           ("variable_r.png", fig_variable_r, "eval/variable_r.tsv rows")):
        out.append((name, fn(con, fig_dir / name, dpi), need))
    return out
