"""The profile: the store, read once, and the spread of its runs."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cart import results

from .common import RANK, _f, _gap, _read_json, earlier_trainings


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
