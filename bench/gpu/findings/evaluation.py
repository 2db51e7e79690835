"""The second run (job 5): benchmarks, inference-time settings and speed, ours beside the paper's."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cart.experiments import GROUPS
from cart.report.paper import PAPER, PAPER_BENCH_COLUMNS

from .common import (
    BENCH_METRIC,
    CHANCE,
    DECODE_SPEEDUP_TARGET,
    DENSE,
    RANK,
    SAMPLED_R_COST_TARGET,
    SLOW_PHASE,
    TASK_NAME,
    _f,
    _join,
    _k,
    _pct,
    _read_json,
    _sci,
    _signed,
)
from .profile import Profile
from .training import _rising


# ---------------------------------------------------------------------------------------------
# Second run (job 5)
# ---------------------------------------------------------------------------------------------
def _select(ev: pd.DataFrame, **where) -> pd.DataFrame:
    for k, v in where.items():
        ev = ev[ev[k] == v]
    return ev


def _acc(ev: pd.DataFrame, task: str, shots: int = 0, **where) -> tuple[float, float]:
    """(accuracy, its standard error) of `task` in the paper's metric."""
    hit = _select(ev, task=task, metric=BENCH_METRIC[task], num_fewshot=shots, **where)
    return float(hit["value"].iloc[0]), float(hit["stderr"].iloc[0])


def _ppl(ev: pd.DataFrame, metric: str = "ppl", **where) -> float:
    return float(_select(ev, task="ppl:wikipedia", metric=metric, **where)["value"].iloc[0])


def _paper_score(values: tuple, task: str, metric: str | None = None) -> float:
    """The paper's value of `task` from a row of Tables 12-14 (columns as PAPER_BENCH_COLUMNS)."""
    return values[PAPER_BENCH_COLUMNS.index((task, metric or BENCH_METRIC[task]))]


def _at_chance(value: float, stderr: float, task: str) -> bool:
    return abs(value - CHANCE[task]) <= 2 * stderr


def row_benchmarks(p: Profile) -> list[str]:
    ev = p.bench("benchmarks")
    runs = ev[ev["num_fewshot"] == 0].drop_duplicates("run_id")[["run_id", "n_loops"]]
    widths = [int(p.run(r)["d_model"]) for r in runs["run_id"]]
    cells, above = [], []
    for task in CHANCE:
        accs = [_acc(ev, task, run_id=r) for r in runs["run_id"]]
        cells.append(f"{TASK_NAME[task]} " + " / ".join(_f(100 * a) for a, _ in accs))
        above += [f"{TASK_NAME[task]} at d={d} ({_f(100 * a)} ± {_f(100 * se)})"
                  for d, (a, se) in zip(widths, accs) if not _at_chance(a, se, task)]
    lambada = [_acc(ev, "lambada_openai", run_id=r)[0] for r in runs["run_id"]]
    lambada_ppl = [float(_select(ev, run_id=r, task="lambada_openai", metric="perplexity", num_fewshot=0)
                         ["value"].iloc[0]) for r in runs["run_id"]]
    cells.append("LAMBADA acc " + " / ".join(_f(100 * a) for a in lambada)
                 + " (perplexity " + " / ".join(_sci(v) for v in lambada_ppl) + ")")
    paper = {d: PAPER["benchmarks_0shot"][d] for d in widths}  # (R, then Table 13's columns)
    paper_text = "; ".join(f"d={d} (R={v[0]}): " + ", ".join(f"{TASK_NAME[t]} {_f(_paper_score(v[1:], t))}"
                                                              for t in (*CHANCE, "lambada_openai"))
                           for d, v in paper.items())
    paper_lambada = [f"{_f(_paper_score(v[1:], 'lambada_openai'))}%" for v in paper.values()]
    verdict = ("HellaSwag, ARC-C and PIQA within two standard errors of chance"
               + (f" except {_join(above)}" if above else "")
               + f". LAMBADA {_f(100 * max(lambada))}% with a perplexity of ~{_sci(min(lambada_ppl), 0)} is below the "
               f"paper's ({_join(paper_lambada)}) and was not investigated further (the last word of a LAMBADA passage "
               "is rarely predictable at this scale)")
    labels = " / ".join(f"d={d} R{int(R)}" for d, R in zip(widths, runs["n_loops"]))
    return [f"Benchmarks, 0-shot ({labels}; acc_norm for HellaSwag/ARC)", "; ".join(cells), paper_text, verdict]


def row_fewshot(p: Profile) -> list[str]:
    ev = p.bench("benchmarks")
    best = ev[ev["num_fewshot"] == 5]["run_id"].iloc[0]
    cells, gains = [], []
    for task in CHANCE:
        (a5, s5), (a0, s0) = _acc(ev, task, 5, run_id=best), _acc(ev, task, 0, run_id=best)
        cells.append(f"{TASK_NAME[task]} {_f(100 * a5, 2)} vs {_f(100 * a0, 2)}")
        if a5 - a0 > 2 * math.hypot(s5, s0):
            gains.append(TASK_NAME[task])
    paper = PAPER["benchmarks_fewshot"]
    deltas = [f"{TASK_NAME[t]} {_paper_score(paper[5], t) - _paper_score(paper[0], t):+.1f}"
              for t in (*CHANCE, "lambada_openai")]
    return [f"5-shot vs 0-shot ({best})", ", ".join(cells), "5-shot minus 0-shot points: " + ", ".join(deltas),
            (f"few-shot gains on {_join(gains)}" if gains else "no few-shot gain beyond two standard errors")
            + " at this scale"]


def row_variable_r(p: Profile) -> list[str]:
    ev = p.bench("variable_r")
    run = p.run(ev["run_id"].iloc[0])
    trained = int(run["n_loops"])
    rs = sorted(ev["n_loops"].dropna().astype(int).unique())
    ppl = {R: _ppl(ev, n_loops=R) for R in rs}
    above = [f"{TASK_NAME[t]} at R{R} ({_f(100 * a)} ± {_f(100 * se)})" for R in rs for t in CHANCE
             for a, se in [_acc(ev, t, n_loops=R)] if not _at_chance(a, se, t)]
    lambada_ppl = {R: _paper_score(v, "lambada_openai", "perplexity") for R, v in PAPER["variable_r"].items()}
    paper_trained = PAPER["variable_r_trained"]
    paper_best = min(lambada_ppl, key=lambada_ppl.get) == paper_trained
    paper_both = all(lambada_ppl[R] > lambada_ppl[paper_trained] for R in lambada_ppl if R != paper_trained)
    ours = ("Wiki PPL " + ", ".join(f"{_f(ppl[R])} (R{R}{', trained' if R == trained else ''})" for R in rs)
            + "; accuracies within two standard errors of chance at every R"
            + (f" except {_join(above)}" if above else ""))
    past_trained = [ppl[R] for R in rs if R >= trained]
    verdict = ("**agrees**: more loops than trained hurt, monotonically" if _rising(past_trained)
               else "more loops than trained do not hurt monotonically")
    verdict += f" (trained at R={trained}: fewer loops cannot be tested; one model, the same weights at every R)"
    return [f"Variable R at inference (d={int(run['d_model'])}, trained R={trained})", ours,
            f"trained R={paper_trained} {'best' if paper_best else 'not best'} (LAMBADA perplexity); "
            + ("degrades both ways" if paper_both else "not worse both ways"), verdict]


def row_sampled_r(p: Profile) -> list[str]:
    ev = p.bench("sampled_r")
    runs = p.done("sampled_r")
    d, R, P = int(runs["d_model"].iloc[0]), int(runs["n_loops"].iloc[0]), int(runs["n_prelude"].iloc[0])
    schemes = {GROUPS["sampled_r"].parse(r.split("/", 1)[1])["variant"]: r for r in runs["run_id"]}
    r_max = int(ev["n_loops"].max())
    at = {s: _ppl(ev, run_id=r, n_loops=R) for s, r in schemes.items()}
    at_max = {s: _ppl(ev, run_id=r, n_loops=r_max) / at[s] for s, r in schemes.items()}
    at_twice = {s: _pct(_ppl(ev, run_id=r, n_loops=2 * R), at[s]) for s, r in schemes.items()}
    costs = {s: _pct(at[s], at["fixed"]) for s in schemes if s != "fixed"}
    ours = (f"PPL R{r_max} / trained R: " + ", ".join(f"{s} {at_max[s]:.2f}" for s in schemes)
            + f"; at R={R}: " + ", ".join(f"{s} {_f(at[s])}" for s in schemes)
            + f"; R={2 * R} vs R={R}: " + ", ".join(f"{s} {_signed(at_twice[s])}" for s in schemes))
    beyond = all(p.finding(at[s], at["fixed"], d) for s in costs)
    rho = runs["spectral_radius"]
    verdict = (f"sampled depth extrapolates (R{r_max}: " + ", ".join(f"{at_max[s]:.2f}x" for s in costs)
               + f" against fixed {at_max['fixed']:.2f}x) but costs {_f(min(costs.values()))}-"
               f"{_f(max(costs.values()))}% PPL at the trained R, {'beyond' if beyond else 'partly within'} the spread "
               f"at this budget; rho {_f(rho.min(), 4)}-{_f(rho.max(), 4)} under every scheme")
    lambada = {R: _paper_score(v, "lambada_openai", "perplexity") for R, v in PAPER["variable_r"].items()}
    realised = ", ".join(f"{s} {p.mean_r[r]:.2f}" for s, r in schemes.items() if r in p.mean_r)
    return [f"Sampled R in training (d={d} P{P}, mean R {R} (realised: {realised}), "
            f"{runs['tokens'].iloc[0] / 1e6:.1f}M tokens)", ours,
            f"fixed only ({lambada[2] / lambada[PAPER['variable_r_trained']]:.0f}x worse at R=2 on LAMBADA "
            "perplexity)", verdict]


def row_lrt_modes(p: Profile) -> list[str]:
    ev = p.bench("lrt")
    lrts = ["lrt/shared-s42", "lrt/layerwise-s42"]
    dense = _ppl(ev, metric="bpb", run_id=DENSE, setting="")
    sequential = {r: _ppl(ev, metric="bpb", run_id=r, setting="sequential") for r in lrts}
    modes = {r: {m: _ppl(ev, run_id=r, setting=m) for m in ("sequential", "merged")} for r in lrts}
    shots_within = all(abs(a5 - a0) <= 2 * math.hypot(s5, s0)
                       for r in [*lrts, DENSE] for task in CHANCE
                       for (a5, s5), (a0, s0) in [(_acc(ev, task, 5, run_id=r), _acc(ev, task, 0, run_id=r))])
    d = int(p.run(DENSE)["d_model"])
    worse = all(b > dense and p.finding(p.run(r)[RANK], p.run(DENSE)[RANK], d) for r, b in sequential.items())
    ours = ("BPB " + " / ".join(f"{_f(sequential[r], 3)} {r.split('/')[1].split('-')[0]}" for r in lrts)
            + f" vs Dense {_f(dense, 3)} ({_signed(_pct(min(sequential.values()), dense))} at best); sequential vs "
            "merged PPL " + ", ".join(f"{_f(modes[r]['sequential'])} vs {_f(modes[r]['merged'])}" for r in lrts)
            + "; 5-0 shot differences "
            + ("within two standard errors" if shots_within else "beyond them for some task"))
    return ["LRT (Dense 7L backbone, S=2)", ours, "-2.0% BPB at 20L (docs/lrt.md)",
            ("**disagrees** at this scale" if worse else "no disagreement established") + " (single seed, Dense's lr)"]


def row_ratplus(p: Profile) -> list[str]:
    ev = p.bench("ratplus")
    patterns = ["dense", "D4", "D16", "D64"]
    joint, only, control = ([_ppl(ev, run_id=run, setting=pat) for pat in patterns]
                            for run in ("ratplus/joint-s42", "ratplus/dense_only-s42", DENSE))
    adapted = {pat: _ppl(ev, run_id=f"ratplus_adapt/{pat}-s42", setting=pat) for pat in ("D16", "D64")}
    cost = {name: _pct(c[-1], c[0]) for name, c in (("joint", joint), ("dense-only", only), ("control", control))}
    at_chance = all(_at_chance(*_acc(_select(ev, run_id=r, setting=s), t), t)
                    for r, s in ev[["run_id", "setting"]].drop_duplicates().itertuples(index=False) for t in CHANCE)
    ours = (f"joint {' -> '.join(_f(v) for v in joint)} ({_signed(cost['joint'])} at D64); dense-only "
            f"{_f(only[0])} -> {_f(only[-1])} ({_signed(cost['dense-only'])}); Dense control {_f(control[0])} -> "
            f"{_f(control[-1])} ({_signed(cost['control'], 0)}); adapted at D16 {_f(adapted['D16'])}, at D64 "
            f"{_f(adapted['D64'])}")
    shape = cost["joint"] < cost["dense-only"] < cost["control"]
    verdict = (("**agrees** in shape: active recurrence learning makes dilation nearly free" if shape else
                "**disagrees** in shape: recurrence does not make dilation cheaper here")
               + "; benchmarks " + ("within two standard errors of chance for all" if at_chance
                                    else "above chance for some"))
    return ["RAT+ vs dilation (Wiki PPL, dense -> D4 -> D16 -> D64)", ours,
            "near dense at D16, -2 to -3 points at D64; direct sparsification without recurrence collapses "
            "(docs/ratplus.md)", verdict]


def _sampled_r_bench(path: Path) -> tuple[dict, dict[str, dict]]:
    """(the whole-graph fixed-R row, scheme -> its per-iteration row) of a `bench.throughput.train_step` sampled-R output."""
    bench = _read_json(path)
    whole = next(r for r in bench["rows"] if r["loop_sampling"] == "fixed" and not r["compile_by_iteration"])
    return whole, {r["loop_sampling"].split()[0]: r for r in bench["loop_sampling_rows"]}


def row_sampled_r_cost(p: Profile) -> list[str]:
    whole, rows = _sampled_r_bench(p.root / "bench" / "sampled_r.json")
    sampled = {s: r["cost_vs_fixed"] for s, r in rows.items() if s != "fixed"}
    within = [s for s, c in sampled.items() if c <= SAMPLED_R_COST_TARGET]
    missed = [s for s, c in sampled.items() if c > SAMPLED_R_COST_TARGET]
    return [f"Sampled-R training cost on GPU (`bench.throughput.train_step`, {whole['model']}, compile)",
            "per-iteration compile vs whole-graph fixed R: "
            + ", ".join(f"{s} {_signed(100 * r['cost_vs_fixed'])}" for s, r in rows.items())
            + f" ({max(r['graphs'] for r in rows.values())} graphs, "
            f"{max(r['graphs_in_timing'] for r in rows.values())} compiled inside the timed steps)",
            f"(target: within {SAMPLED_R_COST_TARGET:.0%})",
            f"{_join(within)} within target"
            + (f"; {_join(missed)} misses it in this short measurement" if missed else "")]


def row_sampled_r_cost_round3(p: Profile) -> list[str]:
    whole, rows = _sampled_r_bench(p.root / "bench" / "round3" / "sampled_r.json")
    met = all(r["cost_vs_fixed"] <= SAMPLED_R_COST_TARGET for r in rows.values())
    return ["... the same after the fix (R never a size inside a compiled graph; `bash bench/gpu/perf.sh sampled`)",
            ", ".join(f"{s} {_signed(100 * r['cost_vs_fixed'])}" for s, r in rows.items())
            + f" vs whole-graph fixed R ({_k(whole['tokens_per_s'])} tok/s, {_f(100 * whole['mfu_paper'])}% "
            f"paper-MFU); {max(r['graphs'] for r in rows.values())} graphs, "
            f"{max(r['graphs_in_timing'] for r in rows.values())} during the timed steps",
            f"within {SAMPLED_R_COST_TARGET:.0%}", "**meets it**" if met else "**misses it**"]


def _decode_rows(root: Path) -> list[tuple[str, dict]]:
    """(file, row) of every cached-decoding bench (bench/round3/decode*.json: one file per process)."""
    files = sorted((root / "bench" / "round3").glob("decode*.json"))
    if not files:
        raise FileNotFoundError(f"{root / 'bench' / 'round3'}: no decode*.json (the cached-decoding benches)")
    return [(f.name, row) for f in files for row in _read_json(f)]


def row_decode(p: Profile) -> list[str]:
    rows = _decode_rows(p.root)
    # Launch-bound decoding takes about as long a step at batch 32 as at batch 1, so a config's fastest
    # step at any batch is its steady speed; a step several times slower is the slow phase.
    fastest: dict[str, float] = {}
    for _, r in rows:
        fastest[r["config"]] = min(fastest.get(r["config"], math.inf), r["cached"]["median_step_s"])
    slowdown = {id(r): r["cached"]["median_step_s"] / fastest[r["config"]] for _, r in rows}
    slow = [slowdown[id(r)] for _, r in rows if slowdown[id(r)] >= SLOW_PHASE]
    steady = [r for _, r in rows if slowdown[id(r)] < SLOW_PHASE]
    single = [r for r in steady if r["batch"] == 1]
    steps_ms = [1e3 * r[k]["median_step_s"] for r in single for k in ("cached", "uncached")]
    ratios = [r["cached_over_uncached"] for r in single]
    big = max(r["batch"] for _, r in rows)
    batched = {r["config"]: r["cached_over_uncached"] for r in steady if r["batch"] == big}
    first = {}
    for name, r in rows:
        first.setdefault(name, r)  # the first config each process decoded
    first_slow = sum(slowdown[id(r)] >= SLOW_PHASE for r in first.values())
    best = max(batched.values())
    ours = (f"batch 1: cached and uncached alike, {min(steps_ms):.1f}-{max(steps_ms):.1f} ms a token "
            f"({min(ratios):.2f}-{max(ratios):.2f}x, launch-bound); batch {big}: "
            + ", ".join(f"{c} {v:.1f}x" for c, v in sorted(batched.items(), key=lambda kv: -kv[1]))
            + f"; {len(slow)} of {len(rows)} measurements ran {min(slow):.0f}-{max(slow):.0f}x slower per step than "
            f"the same config's fastest (left out above), the first config of {first_slow} of {len(first)} processes "
            "among them; cause not found")
    return ["Cached decoding on GPU (`bench.throughput.decode`, 1,024-token prompts, 256 new tokens, bf16; "
            "`bash bench/gpu/perf.sh decode decode_batch decode_fresh`)", ours,
            f"(target: > {DECODE_SPEEDUP_TARGET:.0f}x)",
            ("**met**" if best > DECODE_SPEEDUP_TARGET else "**not met**")
            + f" (at best {best:.1f}x); decoding at these sizes is bound by kernel launches, not the recomputed prefix"]
