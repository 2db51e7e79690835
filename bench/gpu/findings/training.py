"""The first run (jobs 1-3): one row per question, ours beside the paper's."""
from __future__ import annotations

import math

import pandas as pd

from cart import results
from cart.models.cart.config import PAPER_TEXT_VS_CODE
from cart.report.paper import PAPER

from .common import ABLATIONS, COLLAPSE_PPL, DENSE, MEAN, RANK, STD, _f, _gap, _join, _k, _pct, _pm, _sci, _signed
from .profile import Profile, _noise, _within


# ---------------------------------------------------------------------------------------------
# First run (jobs 1-3): one row per question
# ---------------------------------------------------------------------------------------------
def row_lr_sweep(p: Profile) -> list[str]:
    parts, at_edge, margins = [], [], []
    for group, family in (("sweep_cart", "CART"), ("sweep_dense", "Dense 7L")):
        runs = p.done(group).assign(lr=lambda df: [p.lr(r) for r in df["run_id"]]).sort_values("lr")
        best, second = runs.sort_values(RANK).iloc[0], runs.sort_values(RANK).iloc[1]
        d = int(best["d_model"])
        parts.append(f"{family}: best at {_sci(best['lr'], 0)} (Wiki PPL {' -> '.join(_f(v) for v in runs[RANK])} "
                     f"over {_sci(runs['lr'].iloc[0], 0)} .. {_sci(runs['lr'].iloc[-1], 0)})")
        at_edge.append((family, best["lr"] == runs["lr"].max()))
        margins.append(f"{family}'s best beats {_sci(second['lr'], 0)} by {_f(_gap(best[RANK], second[RANK]))}%, "
                       + _within(p, best[RANK], second[RANK], d))
    inside = [family for family, edge in at_edge if not edge]
    verdict = ("the optimum lies at or above the sweep's edge for both: the sweep should go higher" if not inside
               else f"the optimum lies inside the sweep for {_join(inside)}")
    lr = next(x for x in PAPER_TEXT_VS_CODE if x.item == "learning rate")
    tokens = p.done("sweep_cart")["tokens"].iloc[0]
    return [f"Learning rate (sweep at d={d}, {tokens / 1e6:.1f}M tokens)", "; ".join(parts),
            f"lost (the paper's text: {lr.paper_text}; the authors' code: {lr.paper_code})",
            f"{verdict} ({'; '.join(margins)})"]


def _paper_best_r(d: int) -> int:
    by_r = PAPER["stage2_r"][d]
    return min(by_r, key=by_r.get)


def row_stage2_r(p: Profile, d: int = 256) -> list[str]:
    cfg = p.stage2[p.stage2["d_model"] == d].sort_values("n_loops")
    means = dict(zip(cfg["n_loops"].astype(int), cfg[MEAN]))
    best, worst = min(means, key=means.get), max(means, key=means.get)
    ours = (", ".join(f"R={int(r['n_loops'])} {_pm(r[MEAN], r[STD])}" for _, r in cfg.iterrows())
            + f": best mean R={best}, worst R={worst} ({_signed(_pct(means[worst], means[best]))})")
    paper, paper_best = PAPER["stage2_r"][d], _paper_best_r(d)
    paper_gain = _pct(paper[paper_best], paper[6])
    above = sorted({_paper_best_r(w) for w in PAPER["stage2_r"] if w > d})
    paper_text = (f"R={paper_best} best at d={d} ({_f(paper[6])} -> {_f(paper[paper_best])} from R=6 to "
                  f"{paper_best}, {_signed(paper_gain)}), R={'/'.join(map(str, above))} best above")
    if p.finding(means[worst], means[best], d):
        verdict = f"**{'agrees' if best == paper_best else 'disagrees'}**: R={best} best by more than the spread"
    else:
        verdict = (f"**not established**: our R's differ by at most {_f(_gap(means[worst], means[best]))}%, within "
                   f"the d={d} spread ({_noise(p, d)})")
        if abs(paper_gain) <= p.noise(d):
            verdict += (f"; the paper's R effect at d={d} ({_signed(paper_gain)}) is smaller than that spread, so "
                        "this profile cannot test it")
    tokens = p.done("stage2")["tokens"].iloc[0]
    return [f"Does R help at fixed stored parameters? (Stage 2, d={d}, P={int(cfg['n_prelude'].iloc[0])}, "
            f"{tokens / 1e6:.1f}M tokens, {int(cfg['n_seeds'].min())} seeds)", ours, paper_text, verdict]


def row_stage1(p: Profile) -> list[str]:
    runs = p.done("stage1")
    d, lr = int(runs["d_model"].iloc[0]), p.lr(runs["run_id"].iloc[0])
    best_at, runner_up, rises, r2_r8 = {}, {}, [], {}
    for P, at_p in runs.groupby("n_prelude"):
        by_ppl = at_p.sort_values(RANK)
        best_at[int(P)], runner_up[int(P)] = by_ppl.iloc[0], by_ppl.iloc[1]
        rises.append(_rising(at_p.sort_values("n_loops")[RANK].tolist()))
        ppl = dict(zip(at_p["n_loops"].astype(int), at_p[RANK]))
        r2_r8[int(P)] = (ppl[2], ppl[8])
    best_rs = {int(b["n_loops"]) for b in best_at.values()}
    ranked = sorted(best_at.values(), key=lambda b: b[RANK])
    ours = ((f"R={best_rs.pop()} best at every P" if len(best_rs) == 1 else "best R per P: "
             + ", ".join(f"P{P} R{int(b['n_loops'])}" for P, b in best_at.items()))
            + " (" + ", ".join(f"P{int(b['n_prelude'])} R{int(b['n_loops'])} {_f(b[RANK])}" for b in ranked) + "); "
            + ("PPL rises with R at every P" if all(rises) else "PPL does not rise with R at every P")
            + "; R=2 -> R=8: " + ", ".join(f"P{P} {_signed(_pct(b, a))}" for P, (a, b) in r2_r8.items()))
    paper_best = [(v[0], v[1]) for v in PAPER["stage1_best"].values()]
    paper_at_d = PAPER["stage1_r"][d]
    if all(b > a and p.finding(a, b, d) for a, b in r2_r8.values()):
        verdict = "**disagrees** on R: R=8 is worse than R=2 by more than the spread at every P"
    else:
        verdict = "R=2 vs R=8 within the spread at some P: not established"
    verdict += f" (the paper's d={d} P=6 from R=2 to R=8: {_signed(_pct(paper_at_d[8], paper_at_d[2]))})"
    close = [f"P{P} R{int(b['n_loops'])} vs R{int(runner_up[P]['n_loops'])} {_f(_gap(b[RANK], runner_up[P][RANK]), 2)}%"
             for P, b in best_at.items() if not p.finding(b[RANK], runner_up[P][RANK], d)]
    if close:
        verdict += f"; which R is best is not established where the runner-up is within the spread ({'; '.join(close)})"
    if not p.finding(ranked[0][RANK], ranked[1][RANK], d):
        verdict += (f"; nor is the best P (P{int(ranked[0]['n_prelude'])} vs P{int(ranked[1]['n_prelude'])}: "
                    f"{_f(_gap(ranked[0][RANK], ranked[1][RANK]), 2)}%)")
    sweep = p.done("sweep_cart")
    sweep_best = sweep.sort_values(RANK).iloc[0]
    at_screen_lr = next(r for _, r in sweep.iterrows() if math.isclose(p.lr(r["run_id"]), lr))
    verdict += (f". The screen's lr {_sci(lr, 0)} is below the CART sweep's best, "
                f"{_sci(p.lr(sweep_best['run_id']), 0)} ({_f(at_screen_lr[RANK])} vs {_f(sweep_best[RANK])} in the "
                "sweep)")
    return [f"Stage 1 screen (d={d}, {runs['tokens'].iloc[0] / 1e6:.1f}M tokens, lr {_sci(lr, 0)})", ours,
            f"P={'/'.join(map(str, sorted({P for P, _ in paper_best})))}, "
            f"R={'-'.join(map(str, sorted({R for _, R in paper_best})))} best", verdict]


def row_d512(p: Profile, d: int = 512, below: int = 256) -> list[str]:
    runs = p.done("stage2")
    wide, narrow = runs[runs["d_model"] == d], runs[runs["d_model"] == below]
    ranges = [f"R={int(R)} {_f(at_r[RANK].min())}-{_f(at_r[RANK].max())}" for R, at_r in wide.groupby("n_loops")]
    seed_spread = {w: max(s.pct for s in p.spreads if s.kind == "seeds" and s.d == w) for w in (below, d)}
    worse = wide[wide[RANK] > narrow[RANK].max()]
    better = wide[wide[RANK] < narrow[RANK].min()]
    if len(worse) == len(wide):
        claim = f"every d={d} run worse than every d={below} run"
    else:
        claim = f"{len(worse)} of {len(wide)} d={d} runs worse than every d={below} run"
        if len(better):
            claim += f"; {_join([f'{r.run_id} ({_f(r[RANK])})' for _, r in better.iterrows()])} better than every " \
                     f"d={below} run"
    ours = (f"seed range {', '.join(ranges)} (seed spread up to {_f(seed_spread[d])}% against "
            f"{_f(seed_spread[below])}% at d={below}); {claim}")
    best = results.best_per_d(p.stage2).set_index("d_model")
    b_wide, b_narrow = best.loc[d], best.loc[below]
    gap = _pct(b_wide[MEAN], b_narrow[MEAN])
    paper = PAPER["stage2_r"]
    paper_wider_better = paper[d][6] < paper[below][6]
    if p.finding(b_wide[MEAN], b_narrow[MEAN], d):
        verdict = (f"**{'agrees' if (gap < 0) == paper_wider_better else 'disagrees'}**: d={d}'s best config is "
                   f"{_signed(gap)} from d={below}'s")
    else:
        verdict = (f"**not established**: d={d}'s best config (R={int(b_wide['n_loops'])}, {_f(b_wide[MEAN])}) is "
                   f"{_signed(gap)} from d={below}'s (R={int(b_narrow['n_loops'])}, {_f(b_narrow[MEAN])}), within "
                   f"d={d}'s spread ({_noise(p, d)})")
    verdict += (f"; lr {_sci(p.lr(wide['run_id'].iloc[0]), 0)} chosen at d={below} is likely too high at d={d} (the "
                "reason the spec scales lr by 512/d): a d=512 sweep is owed")
    return [f"d={d} (Stage 2 at the lr chosen at d={below})", ours,
            f"d={d} {'better' if paper_wider_better else 'worse'} than d={below} ({_f(paper[d][6])} vs "
            f"{_f(paper[below][6])} at R=6)", verdict]


def _rising(values: list[float]) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


def row_spectral_radius(p: Profile) -> list[str]:
    runs = p.done("stage2")
    rho = {w: runs[runs["d_model"] == w]["spectral_radius"] for w in sorted(runs["d_model"].unique())}
    widths = list(rho)
    with_d = all(rho[a].max() < rho[b].min() for a, b in zip(widths, widths[1:]))
    with_r = [w for w in widths if _rising(p.stage2[p.stage2["d_model"] == w]
                                           .sort_values("n_loops")["spectral_radius_mean"].tolist())]
    paper_rho = PAPER["rho"]
    paper_with_d = all(_rising([paper_rho[w][R] for w in sorted(paper_rho)]) for R in paper_rho[widths[0]])
    paper_with_r = all(_rising([by_r[R] for R in sorted(by_r)]) for by_r in paper_rho.values())
    early = [v[5] for v in PAPER["stage1_best"].values()]
    late = [v for by_r in paper_rho.values() for v in by_r.values()]
    ours = (", ".join(f"{_f(r.min(), 3)}-{_f(r.max(), 3)} at d={w}" for w, r in rho.items())
            + f" (Stage 2, {len(runs)} runs); "
            + ("every run at the wider width above every run at the narrower" if with_d else "no clean rise with d")
            + "; seed means " + (f"rise with R at {_join([f'd={w}' for w in with_r])}" if with_r
                                 else "do not rise with R at any width"))
    paper = (f"{_f(min(late), 2)}-{_f(max(late), 2)} at 30.5k steps, {_f(min(early), 4)}-{_f(max(early), 4)} at 3k "
             f"steps (Stage 1 best), rising with d{' and R' if paper_with_r else ''}")
    lo, hi = runs["spectral_radius"].min(), runs["spectral_radius"].max()
    place = "above" if lo > max(early) else "below" if hi < min(early) else "around"
    verdict = (f"{'rises' if with_d else 'does not rise'} with d ({'as in' if with_d == paper_with_d else 'unlike'} "
               f"the paper); {'rises' if with_r else 'does not rise'} with R "
               f"({'as in' if bool(with_r) == paper_with_r else 'unlike'} the paper); our {int(runs['steps'].max())}-"
               f"step runs sit {place} the paper's 3k-step value. The authors' recipe decays the gate too, which "
               "pulls it down over a long run (docs/cart.md); paper_text does not")
    return ["Spectral radius at the end", ours, paper, verdict]


def row_dense_vs_cart(p: Profile) -> list[str]:
    dense, cart = p.dense_vs_cart
    d7 = dense[dense["n_layers"] == 7].iloc[0]
    d = int(d7["d_model"])
    cart_stored = p.done("stage2").query("d_model == @d")["stored_params"].iloc[0]
    gap = _pct(d7[MEAN], cart[MEAN])
    ours = (f"Dense 7L ({d7['stored_params'] / 1e6:.1f}M) {_pm(d7[MEAN], d7[STD])} vs CART P={int(cart['n_prelude'])} "
            f"R={int(cart['n_loops'])} ({cart_stored / 1e6:.1f}M) {_pm(cart[MEAN], cart[STD])}: Dense {_signed(gap)}")
    paper_cart, paper_dense = PAPER["stage2_ppl"][(1024, 6, 6)][1], PAPER["dense_ppl"][(1024, 7)][1]
    paper_gap = _pct(paper_dense, paper_cart)
    if p.finding(d7[MEAN], cart[MEAN], d):
        verdict = f"{'Dense' if gap < 0 else 'CART'} better beyond the spread"
    else:
        verdict = "no difference established here (within the spread)"
        if abs(paper_gap) <= p.noise(d):
            verdict += f"; the paper's gap ({_signed(paper_gap)}) is smaller than our spread, so this profile " \
                       "cannot resolve it"
    return [f"Dense vs CART at stored parity (d={d})", ours,
            f"CART {_f(paper_cart, 2)} vs Dense 7L {_f(paper_dense, 2)} at d=1024 (Dense {_signed(paper_gap)})",
            verdict]


def row_dense_12l(p: Profile) -> list[str]:
    by_layers = p.dense.set_index("n_layers")
    d12, d7 = by_layers.loc[12], by_layers.loc[7]
    d = int(d12["d_model"])
    seeds = {L: next(s.pct for s in p.spreads if s.kind == "seeds" and s.config == f"Dense d{d} {L}L")
             for L in (7, 12)}
    gap = _pct(d12[MEAN], d7[MEAN])
    worse = gap > 0 and p.finding(d12[MEAN], d7[MEAN], d)
    paper = ("not reported (Table 10's numbers were lost)" if (1024, 12) not in PAPER["dense_ppl"]
             else _f(PAPER["dense_ppl"][(1024, 12)][1]))
    verdict = (f"deeper Dense {'trains worse' if worse else 'is not established worse'} at the lr chosen for 7L; its "
               f"seed spread ({_f(seeds[12])}%) is {'no larger than' if seeds[12] <= seeds[7] else 'larger than'} "
               f"7L's ({_f(seeds[7])}%); whether 12L wants another lr is untested (no 12L sweep)")
    return [f"Dense at effective parity (12L, {d12['stored_params'] / 1e6:.1f}M)",
            f"{_pm(d12[MEAN], d12[STD])}: {_signed(gap)} vs 7L at the same lr, {_within(p, d12[MEAN], d7[MEAN], d)}",
            paper, verdict]


def _ablation(p: Profile, name: str) -> pd.Series:
    return p.ablation[p.ablation["run_id"] == f"ablation/{name}"].iloc[0]


def _base(p: Profile) -> tuple[float, int, str]:
    """The ablations' base run: (its Wikipedia PPL, its width, a label)."""
    info = p.ablation_base
    cfg = info["config"]
    label = f"d={cfg['d_model']} P{cfg['n_prelude']} R{cfg['n_loops']}, seed {info['seed']}"
    return float(info["ppl"]["wikipedia"]), int(cfg["d_model"]), label


def row_ablations(p: Profile) -> list[str]:
    base, d, label = _base(p)
    rows = sorted((_ablation(p, n) for n in ABLATIONS), key=lambda r: -r["delta_ppl_wikipedia_pct"])
    hurt = all(r["delta_ppl_wikipedia_pct"] > 0 for r in rows)
    beyond = [r["variant"] for r in rows if p.finding(r[RANK], base, d)]
    within = [r["variant"] for r in rows if not p.finding(r[RANK], base, d)]
    verdict = (("same direction: all hurt" if hurt else "not all hurt")
               + f"; beyond the d={d} spread ({_noise(p, d)}): {_join(beyond)}"
               + (f"; within it, not established: {_join(within)}" if within else "") + " (single seed)")
    return [f"Ablations ({label}; base {_f(base)})",
            ", ".join(f"{r['variant']} {_signed(r['delta_ppl_wikipedia_pct'])}" for r in rows),
            "all ablations hurt (numbers lost)", verdict]


def row_paper_code(p: Profile) -> list[str]:
    base, d, _ = _base(p)
    code = _ablation(p, "paper_code")
    gap = code["delta_ppl_wikipedia_pct"]
    return ["paper_code vs paper_text (same config, seed, recipe)",
            f"paper_code {_f(code[RANK])} vs paper_text {_f(base)} ({_signed(gap)})",
            "n/a (the authors trained paper_code)",
            f"the authors' model (update, HC init, projected LIE, plain init) trains "
            f"{'better' if gap < 0 else 'worse'} here, {_within(p, code[RANK], base, d)}"]


def row_leak(p: Profile) -> list[str]:
    base, d, _ = _base(p)
    leak = _ablation(p, "leak")
    curve = p.eval_log[(p.eval_log["run_id"] == "ablation/leak") & (p.eval_log["domain"] == "wikipedia")]
    lowest = curve.loc[curve["ppl"].idxmin()]
    collapsed = bool((curve["ppl"] < COLLAPSE_PPL).any())
    steps = int(leak["steps"])
    one_pass = sum(p.bins["tokens"].values()) // int(leak["tokens_per_step"])
    ours = (f"{'collapse' if collapsed else 'no collapse'}: {_f(leak[RANK])} after {steps} steps (lowest along the "
            f"run {_f(lowest['ppl'])} at step {int(lowest['step'])}; {_signed(leak['delta_ppl_wikipedia_pct'])} vs the "
            f"base, {_within(p, leak[RANK], base, d)})")
    verdict = (f"reproduced: PPL below {COLLAPSE_PPL:g}" if collapsed else
               f"not reproduced within {steps} steps; one pass of the text allows {one_pass:,} steps at this batch, "
               "so the leak run must go longer, or re-read the text, to show the failure mode")
    return ["Non-causal cross-attention (the leak)", ours, "collapse to PPL ~1 after ~1,750 steps", verdict]


def _versus_dense(p: Profile, run_id: str) -> tuple[str, float, bool]:
    """`run_id` against the Dense control of the same seed: the text, the % change, beyond the spread."""
    run, dense = p.run(run_id), p.run(DENSE)
    gap = _pct(run[RANK], dense[RANK])
    beyond = p.finding(run[RANK], dense[RANK], int(dense["d_model"]))
    text = (f"{_f(run[RANK])} vs Dense 7L {_f(dense[RANK])} (same seed): {_signed(gap)}, "
            f"{'worse' if gap > 0 else 'better'} {_within(p, run[RANK], dense[RANK], int(dense['d_model']))}")
    return text, gap, beyond


def row_lrt(p: Profile) -> list[str]:
    text, gap, beyond = _versus_dense(p, "lrt/shared-s42")
    return ["LRT shared (Dense 7L backbone, S=2)", text, "-2.0% BPB at 20L, 10 tokens/param (docs/lrt.md)",
            ("**disagrees** at this scale" if gap > 0 and beyond else "no disagreement established")
            + "; single seed, merged-mode validation, lr chosen for Dense"]


def row_ratplus_dense_only(p: Profile) -> list[str]:
    text, gap, _ = _versus_dense(p, "ratplus/dense_only-s42")
    return ["RAT+ dense-only pretraining (Dense 7L backbone)", text,
            "recurrence does not hurt dense PPL (7.38 vs 7.44, docs/ratplus.md)",
            ("agrees in direction" if gap < 0 else "**disagrees** in direction") + " (single seed)"]


def _first_run_packing(packed: dict[str, int]) -> str:
    return "/".join(str(n) for n in sorted({packed[j] for j in ("job1", "job2", "job3")}))


def row_throughput(p: Profile, packed: dict[str, int]) -> list[str]:
    def first_rate(run_ids: list[str]) -> float:
        return sum(p.first_summary(r)["tokens_per_s"] for r in run_ids) / len(run_ids)
    s2, dense = p.done("stage2"), p.done("dense")
    first = {"CART d256 P4 R4": first_rate(s2[(s2["d_model"] == 256) & (s2["n_loops"] == 4)]["run_id"].tolist()),
             "Dense 7L": first_rate(dense[dense["n_layers"] == 7]["run_id"].tolist()),
             "LRT shared": first_rate(["lrt/shared-s42"]), "RAT+ dense-only": first_rate(["ratplus/dense_only-s42"])}
    fastest = p.runs.loc[p.runs["tokens_per_s"].idxmax()]
    ours = (f"jobs 1-3 ({_first_run_packing(packed)} runs packed, first trainings): "
            + ", ".join(f"{k} {_k(v)}" for k, v in first.items())
            + f" tok/s per run (LRT makes two passes); job 5 ({packed['job5']} packed, the store's re-trainings): "
            + ", ".join(f"{r} {_k(p.summary(r)['tokens_per_s'])}" for r in sorted(p.earlier))
            + f"; one Dense run alone ({fastest['run_id']}) {_k(fastest['tokens_per_s'])}")
    n = packed["job2"]
    eager = p.config(fastest["run_id"])["train"]["compile"] == "off"
    return [f"Throughput (runs packed, {'eager' if eager else 'compiled'})", ours, "n/a",
            f"{n} runs at these rates make {min(first.values()) * n / 1e6:.1f}-{max(first.values()) * n / 1e6:.1f}M "
            f"tok/s together, about what one Dense run alone reaches ({fastest['tokens_per_s'] / 1e6:.1f}M)"]
