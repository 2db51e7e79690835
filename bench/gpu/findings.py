"""gpu/FINDINGS.md: the `gpu` profile's real-data runs (configs/gpu.yaml, one H200) beside the paper.
Every number of ours is read from the profile's results store (gpu/results.db); where the store holds
no such number, from the committed files beside it (bins_meta.json, logs/, bench/*.json, calls.json,
and runs/<group>/<name>/earlier/, the first summary of a run trained again); the paper's numbers from
cart/report/paper.py.

    python -m bench.gpu.findings gpu            # writes gpu/FINDINGS.md
    python -m bench.gpu.findings gpu --check    # exit 1 if the committed file is stale

A difference is called a finding only where it exceeds the run-to-run spread at its width: the largest
relative gap between trainings of one config (two seeds, or the same run trained twice: job 5 trained
again the runs evaluation reads). tests/test_gpu_findings.py renders the file again and compares.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from bench.gpu.stage1_findings import COLLAPSE_PPL
from cart import results
from cart.experiments import GROUPS
from cart.io import atomic_write_text
from cart.models.cart.config import PAPER_TEXT_VS_CODE
from cart.report.paper import PAPER, PAPER_BENCH_COLUMNS

REPO = Path(__file__).resolve().parents[2]
RANK = "ppl_wikipedia"
MEAN, STD = f"{RANK}_mean", f"{RANK}_std"
# The accuracy of a uniform guess: 4 endings (HellaSwag), 4 choices (most ARC-Challenge items), 2
# solutions (PIQA). An accuracy within two standard errors of it is "at chance".
CHANCE = {"hellaswag": 0.25, "arc_challenge": 0.25, "piqa": 0.5}
BENCH_METRIC = {"hellaswag": "acc_norm", "arc_challenge": "acc_norm", "piqa": "acc", "lambada_openai": "acc"}
TASK_NAME = {"hellaswag": "HellaSwag", "arc_challenge": "ARC-C", "piqa": "PIQA", "lambada_openai": "LAMBADA"}
SAMPLED_R_COST_TARGET = 0.15  # sampled-R training's target: within 15% of fixed R's speed
DECODE_SPEEDUP_TARGET = 10.0  # cached decoding's target: more than 10x uncached
SLOW_PHASE = 3.0  # a decode step this many times the same config's fastest is in the slow phase
ABLATIONS = ("X", "Z", "LTI", "HC", "LIE")
DENSE = "dense/L7-s42"  # the Dense control the LRT and RAT+ runs are compared with (same seed)


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------
def _f(v, digits=1) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{digits}f}"


def _pm(mean, std) -> str:
    return f"{_f(mean)} ± {_f(std)}"


def _k(v) -> str:
    return f"{v / 1000:,.0f}K"


def _signed(v, digits=1) -> str:
    return "—" if math.isnan(v) else f"{v:+.{digits}f}%"


def _sci(v: float, digits: int = 1) -> str:
    """Scientific notation without the exponent's padding: 1.2e6, 4e-3."""
    mantissa, exponent = f"{v:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _pct(new, ref) -> float:
    return float(results.pct_delta(new, ref))


def _gap(a: float, b: float) -> float:
    """The relative gap between two PPLs in percent of the smaller: how spreads are measured too."""
    return 100.0 * (max(a, b) / min(a, b) - 1.0)


def _join(items: list[str]) -> str:
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


# ---------------------------------------------------------------------------------------------
# Earlier trainings and the device calls, as committed beside the store
# ---------------------------------------------------------------------------------------------
EARLIER = "earlier"      # runs/<group>/<name>/earlier/<n>/: a run's earlier trainings (bench/gpu/import_runs.py)
CALLS = "calls.json"     # each job log's device call: its date and device-minutes


def earlier_trainings(root: Path) -> dict[str, list[dict]]:
    """run_id -> its earlier trainings, oldest first, each {summary, config}: what bench/gpu/import_runs.py
    set aside under runs/<group>/<name>/earlier/<n>/ when a later import brought another training."""
    out: dict[str, list[dict]] = {}
    for folder in sorted(root.glob(f"runs/*/*/{EARLIER}/*"), key=lambda f: (f.parent.parent, int(f.name))):
        summary = folder / "summary.json"
        if not summary.is_file():
            raise ValueError(f"{folder}: an earlier training without its summary.json")
        config = folder / "config.json"
        run = folder.parent.parent
        out.setdefault(f"{run.parent.name}/{run.name}", []).append(
            {"summary": json.loads(summary.read_text()),
             "config": json.loads(config.read_text()) if config.is_file() else None})
    return out


def _leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(fields whose values differ, fields only the new config has), the code fingerprint left out."""
    old, new = _leaves(old), _leaves(new)
    differ = sorted(k for k in old.keys() & new.keys() if old[k] != new[k] and k != "code_sha256")
    return differ, sorted(new.keys() - old.keys())


def import_record(root: Path, log: str) -> dict:
    """The device call that wrote logs/<log>: its date and device-minutes (calls.json beside the store)."""
    path = root / CALLS
    calls = json.loads(path.read_text()) if path.is_file() else {}
    if log not in calls:
        raise ValueError(f"{path}: no record of the call that wrote logs/{log} (date, device_minutes)")
    return {"date": calls[log]["date"], "device_minutes": float(calls[log]["device_minutes"])}


# ---------------------------------------------------------------------------------------------
# Committed files beside the store
# ---------------------------------------------------------------------------------------------
STEP = re.compile(r"^(\w+)(?::\S*)?: (\d+) command\(s\) in ([\d.]+)s$")


def job_steps(text: str) -> tuple[dict[str, list[dict]], float]:
    """A job log's steps by kind (data / train / summarize / eval: commands, wall_s) and the job's wall time."""
    steps: dict[str, list[dict]] = {}
    for line in text.splitlines():
        if m := STEP.match(line.strip()):
            steps.setdefault(m[1], []).append({"commands": int(m[2]), "wall_s": float(m[3])})
    job = re.search(r"^job: ([\d.]+)s$", text, re.M)
    return steps, float(job[1]) if job else math.nan


def packed_runs(script: str) -> dict[str, int]:
    """job name -> how many runs bench/gpu/profile.sh packs on the GPU at once (its PAR)."""
    out = {}
    for m in re.finditer(r"^\s*(job\d)\)(.*?)(?=^\s*(?:job\d|\*)\))", script, re.M | re.S):
        if par := re.search(r"PAR=(\d+)", m[2]):
            out[m[1]] = int(par[1])
    return out


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the findings read it (a committed GPU bench or record)")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# The profile: the store, read once, and the spread of its runs
# ---------------------------------------------------------------------------------------------
@dataclass
class Spread:
    kind: str  # "seeds": one config at two seeds; "again": one run trained twice
    config: str
    d: int
    values: dict[str, float]  # label -> Wikipedia PPL

    @property
    def pct(self) -> float:
        return _gap(max(self.values.values()), min(self.values.values()))


class Profile:
    """The gpu profile's store and the committed records beside it."""

    def __init__(self, root: Path, earlier: dict[str, list[dict]] | None = None):
        self.root = root
        con = results.connect(root / "results.db")
        try:
            runs = results.load_runs(con, with_json=True)
            self.stage2 = results.stage2_configs(con)
            self.dense = results.dense_configs(con)
            self.dense_vs_cart = results.dense_vs_cart(con)
            self.ablation, self.ablation_base = results.ablation_table(con)
            self.evals = results.load_eval_results(con)
            self.eval_log = results.load_eval_log(con)
            self.mean_r = results.train_diag_mean(con, "n_loops")
        finally:
            con.close()
        self._json = {r: (json.loads(c), json.loads(s))
                      for r, c, s in zip(runs["run_id"], runs["config_json"], runs["summary_json"])}
        self.runs = runs.drop(columns=["config_json", "summary_json"])
        self.bins = _read_json(root / "bins_meta.json")
        self.earlier = earlier_trainings(root) if earlier is None else earlier
        self.spreads = self.measure_spreads()

    def done(self, group: str) -> pd.DataFrame:
        return self.runs[(self.runs["group"] == group) & (self.runs["status"] == "complete")]

    def run(self, run_id: str) -> pd.Series:
        hit = self.runs[self.runs["run_id"] == run_id]
        if hit.empty:
            raise ValueError(f"{self.root / 'results.db'}: no run {run_id}")
        return hit.iloc[0]

    def config(self, run_id: str) -> dict:
        return self._json[run_id][0]

    def summary(self, run_id: str) -> dict:
        return self._json[run_id][1]

    def first_summary(self, run_id: str) -> dict:
        """The summary of the run's first training (the store's when it was trained once)."""
        return self.earlier[run_id][0]["summary"] if run_id in self.earlier else self.summary(run_id)

    def lr(self, run_id: str) -> float:
        return float(self.config(run_id)["train"]["lr"])

    def measure_spreads(self) -> list[Spread]:
        """Every config trained more than once: at two seeds (Stage 2, Dense), or one run trained again."""
        out = []
        for group, keys, label in (("stage2", ["d_model", "n_prelude", "n_loops"], "CART d{} P{} R{}"),
                                   ("dense", ["d_model", "n_layers"], "Dense d{} {}L")):
            for key, runs in self.done(group).groupby(keys):
                if len(runs) > 1:
                    values = {f"seed {int(s)}": float(v) for s, v in zip(runs["seed"], runs[RANK])}
                    out.append(Spread("seeds", label.format(*map(int, key)), int(key[0]), values))
        for run_id, earlier in sorted(self.earlier.items()):
            values = {f"{'first' if i == 0 else f'training {i + 1}'}, {e['summary']['git_commit']}":
                      e["summary"]["final_eval"]["wikipedia"]["ppl"] for i, e in enumerate(earlier)}
            values[f"again, {self.summary(run_id)['git_commit']}: the store's"] = float(self.run(run_id)[RANK])
            out.append(Spread("again", run_id, int(self.run(run_id)["d_model"]), values))
        return out

    def noise(self, d: int) -> float:
        """The run-to-run spread at width d: the largest spread of any config trained more than once."""
        return max((s.pct for s in self.spreads if s.d == d), default=math.nan)

    def finding(self, a: float, b: float, d: int) -> bool:
        """Whether two PPLs at width d differ by more than the run-to-run spread there."""
        return _gap(a, b) > self.noise(d)

    def bench(self, file: str) -> pd.DataFrame:
        return self.evals[self.evals["file"] == file]


def _within(p: Profile, a: float, b: float, d: int) -> str:
    return "beyond the spread" if p.finding(a, b, d) else "within the spread: not established"


def _noise(p: Profile, d: int) -> str:
    return f"{_f(p.noise(d), 2)}%"


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
            f"(issue 20 target: within {SAMPLED_R_COST_TARGET:.0%})",
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
            f"(issue 21 expects > {DECODE_SPEEDUP_TARGET:.0f}x)",
            ("**met**" if best > DECODE_SPEEDUP_TARGET else "**not met**")
            + f" (at best {best:.1f}x); decoding at these sizes is bound by kernel launches, not the recomputed prefix"]


# ---------------------------------------------------------------------------------------------
# The document
# ---------------------------------------------------------------------------------------------
def _header(p: Profile, packed: dict[str, int]) -> list[str]:
    record = import_record(p.root, "job1.log")
    runs = p.runs[p.runs["status"] == "complete"]
    train_cfg = p.config(runs["run_id"].iloc[0])["train"]
    train, val = sum(p.bins["tokens"].values()), p.bins["val_tokens"]
    trained = runs[runs["group"] != "ratplus_adapt"]  # the adaptations fine-tune ratplus/joint for a few steps
    per_param = trained["tokens"] / trained["stored_params"]
    paper_per_param = [v[0] for v in PAPER["chinchilla"].values()]
    return [
        "# Real-data findings: the `gpu` profile on one H200",
        "",
        "Generated by `python -m bench.gpu.findings gpu` from `gpu/results.db` (every number of ours; "
        "`tests/test_gpu_findings.py` fails when this file and the store disagree). Where the store holds no such "
        "number: `gpu/bins_meta.json`, `gpu/logs/`, `gpu/bench/*.json`, `gpu/calls.json` and `gpu/runs/*/*/earlier/` "
        "(the first summary of a run trained again). The paper's numbers from `cart/report/paper.py`; the LRT and RAT+ "
        "references from their specs.",
        "",
        f"What ran: `configs/gpu.yaml` through `bench/gpu/profile.sh` on one {runs['device'].iloc[0]} (torch "
        f"{runs['torch'].iloc[0]}, bf16 autocast, {'eager' if train_cfg['compile'] == 'off' else 'compiled'}, "
        f"{train_cfg['optimizer']}, {_first_run_packing(packed)} runs packed on the GPU), filed on {record['date']} "
        f"({_f(record['device_minutes'])} device-minutes by the import's commit). Training text: {train / 1e6:.1f}M "
        f"Llama-2 tokens of English Wikipedia (its last articles held out: {val['wikipedia'] / 1e6:.2f}M validation "
        f"tokens); out-of-domain validation sets: TinyStories ({val['tinystories'] / 1e6:.2f}M), FineWeb "
        f"({val['fineweb'] / 1e6:.2f}M, not FineWeb-Edu), WikiText-2 test ({val['wikitext2'] / 1e6:.2f}M). Every run "
        f"saw at most one pass over the text: **{'yes' if runs['tokens'].max() <= train else 'no'}** (the longest run "
        f"read {runs['tokens'].max() / 1e6:.1f}M tokens). The generated report with every table: "
        "[report/REPORT.md](report/REPORT.md); the store: `gpu/results.db`; curves: `gpu/plots/`; every run's config "
        "and summary: `gpu/runs/`.",
        "",
        "**Not run in the first run (done in job 5 below):** the evaluation job (the benchmarks, variable R, the LRT "
        "modes and the RAT+ pattern study), RAT+'s joint-trained run and its two adaptations, LRT layerwise. Nothing "
        "in the first table is a benchmark result.",
        "",
        f"These are small models ({runs['stored_params'].min() / 1e6:.1f}-{runs['stored_params'].max() / 1e6:.1f}M "
        f"stored parameters) at {per_param.min():.1f}-{per_param.max():.1f} tokens per stored parameter, against "
        f"{min(paper_per_param)}-{max(paper_per_param)} in the paper's Stage 2 (Table 2): read them as what happens at "
        "this scale, not as the paper's regime. Perplexities are final validation PPL on held-out Wikipedia (the "
        "paper's ranking domain).",
    ]


def _retraining_note(p: Profile) -> str:
    """What differs between a run's trainings besides the GPU's nondeterminism: its config, its code."""
    differ, added, code_changed = set(), set(), False
    for run_id, earlier in p.earlier.items():
        for e in earlier:
            if e["config"] is not None:
                d, a = config_changes(e["config"], p.config(run_id))
                differ |= set(d)
                added |= {".".join(k.split(".")[:2]) for k in a}
                code_changed |= e["config"].get("code_sha256") != p.config(run_id).get("code_sha256")
    text = "Their configs agree field for field" if not differ else f"Their configs differ in {_join(sorted(differ))}"
    text += f" (the later code added {_join(sorted(added))})" if added else ""
    if code_changed:
        return text + ("; their code does not (code_sha256), so this spread holds the GPU's nondeterminism and any "
                       "change of the code's arithmetic between the two commits.")
    return text + "; so does their code (code_sha256): this spread is the GPU's nondeterminism."


def _spread_section(p: Profile) -> list[str]:
    rows = [[s.config, "two seeds" if s.kind == "seeds" else "trained twice",
             ", ".join(f"{_f(v)} ({k})" for k, v in s.values.items()), f"{_f(s.pct, 2)}%"]
            for s in sorted(p.spreads, key=lambda s: (s.d, s.kind, s.config))]
    widths = sorted({s.d for s in p.spreads})
    largest = {d: max((s for s in p.spreads if s.d == d), key=lambda s: s.pct) for d in widths}
    lines = ["## Run-to-run spread (Wikipedia PPL)", "",
             "A config trained more than once: at two seeds, or the same run trained twice (job 5 trained again the "
             "runs evaluation reads, on a fresh machine; the store holds the second training, "
             "`gpu/runs/<group>/<name>/earlier/` the first). The spread is the larger PPL over the smaller, minus one.", ""]
    lines += _table(["config", "trainings", "Wikipedia PPL", "spread"], rows)
    lines += ["", "The run-to-run spread: " + "; ".join(
        f"**{_f(largest[d].pct, 2)}%** at d={d} (the largest, {largest[d].config})" for d in widths)
        + ". A difference smaller than the spread at its width is not a finding: the tables say so where a claim "
        "rests on one."]
    again = [s for s in p.spreads if s.kind == "again"]
    if again:
        top = max(again, key=lambda s: s.pct)
        lines += ["", f"Training the same run again on the GPU moved validation PPL by up to {_f(top.pct)}% "
                  f"({top.config}). " + _retraining_note(p)]
    return lines


def _job5_intro(p: Profile) -> list[str]:
    record = import_record(p.root, "job5.log")
    steps, job_s = job_steps((p.root / "logs" / "job5.log").read_text())
    (data,), (train, adapt), (evals,) = steps["data"], steps["train"], steps["eval"]
    again = ", ".join(f"{r} ({_f(e[0]['summary']['final_eval']['wikipedia']['ppl'])} -> {_f(p.run(r)[RANK])})"
                      for r, e in sorted(p.earlier.items()))
    best = p.bench("benchmarks").query("num_fewshot == 0")["run_id"].iloc[0]
    profile = yaml.safe_load((REPO / "configs" / "gpu.yaml").read_text())
    items = "every item" if profile["benchmarks"]["limit"] is None else "a subset"
    return [
        "## Second run (job 5): evaluation, LRT layerwise, joint RAT+ and its adaptation, sampled R", "",
        f"What ran: `bash bench/gpu/profile.sh start job5` + `collect` on one {p.run(best)['device']}, filed on "
        f"{record['date']} (**{_f(record['device_minutes'])} device-minutes** by the import's commit; {job_s:,.0f} s "
        f"of job by its log: data {data['wall_s']:.0f} s, {train['commands']} runs packed {train['wall_s']:.0f} s, "
        f"adaptation {adapt['wall_s']:.0f} s, the {evals['commands']} evaluation stages concurrently "
        f"{evals['wall_s']:.0f} s, then the GPU benches). The first run's weights did not survive its machine, so the "
        "runs evaluation reads were trained again; their new summaries replace the first ones in the store (first -> "
        f"again: {again}). Benchmarks: {items} of each task at 0 shots for each width's best model and 5 shots for "
        f"the best overall; the studies use the first {profile['eval_ratplus']['benchmark_limit']} items per task. "
        f"Peak memory is logged (e.g. {best}: {_f(p.summary(best)['peak_mem_gib'])} GiB training, "
        f"{_f(p.summary(best)['eval_peak_mem_gib'])} GiB evaluation).", ""]


def render(root: Path, earlier: dict[str, list[dict]] | None = None) -> str:
    p = Profile(root, earlier)
    packed = packed_runs((REPO / "bench" / "gpu" / "profile.sh").read_text())
    first = [row_lr_sweep(p), row_stage2_r(p), row_stage1(p), row_d512(p), row_spectral_radius(p),
             row_dense_vs_cart(p), row_dense_12l(p), row_ablations(p), row_paper_code(p), row_leak(p), row_lrt(p),
             row_ratplus_dense_only(p), row_throughput(p, packed)]
    second = [row_benchmarks(p), row_fewshot(p), row_variable_r(p), row_sampled_r(p), row_lrt_modes(p),
              row_ratplus(p), row_sampled_r_cost(p), row_sampled_r_cost_round3(p), row_decode(p)]
    lines = _header(p, packed) + [""] + _spread_section(p)
    lines += ["", "## First run (jobs 1-3)", ""] + _table(["question", "ours (this profile)", "paper", "agree?"], first)
    lines += [""] + _job5_intro(p) + _table(["question", "ours", "paper", "agree?"], second)
    lines += ["", "What to run next: a d=512 lr sweep, the leak run past the paper's collapse (more steps than one "
              "pass of the text allows), a second seed wherever a claim above is not established, and a profile of "
              "cached decoding (the slow phase, CUDA graphs for the decode step)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="the profile's folder: gpu")
    ap.add_argument("--check", action="store_true", help="compare with the committed FINDINGS.md, write nothing")
    args = ap.parse_args(argv)
    text, path = render(args.root), args.root / "FINDINGS.md"
    if args.check:
        same = path.is_file() and path.read_text() == text
        print(f"{path}: {'matches' if same else 'differs from'} the store")
        return 0 if same else 1
    atomic_write_text(path, text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
