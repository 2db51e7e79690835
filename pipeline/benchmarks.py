"""Downstream benchmarks (paper Tables 13 and 14): `python -m pipeline.benchmarks`.

0-shot for every scale's best Stage 2 model (metrics/stage2.json best_per_d), and each
num_fewshot > 0 in params for the best model overall (best_run_id), through lm-evaluation-harness
(cart/evaluation/harness.py). Writes eval/benchmarks.tsv (cart/evaluation/rows.py) and metrics/benchmarks.json; the
report renders Tables 13 and 14 from the results store.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm.auto import tqdm

from cart.evaluation.rows import write_rows
from cart.evaluation.session import TOKENIZER, EvalSession, benchmark_settings
from cart.io import atomic_write_json, read_json
from cart.params import load_params
from pipeline._cli import run

TSV = Path("eval/benchmarks.tsv")
METRICS_JSON = Path("metrics/benchmarks.json")
STAGE2 = Path("metrics/stage2.json")


def plan(stage2: dict, num_fewshot: list[int], where: str = str(STAGE2)) -> list[tuple[str, int]]:
    """[(run_id, shots)]: 0-shot for each scale's best run, k-shot (k > 0) for the best run."""
    best_per_d, best = stage2.get("best_per_d"), stage2.get("best_run_id")
    if not isinstance(best_per_d, dict) or not best_per_d or not best:
        raise ValueError(f"{where}: expected 'best_per_d' ({{d: {{n_loops, run_id}}}}) and 'best_run_id'; "
                         f"re-run the summarize stage")
    bad = [d for d, v in best_per_d.items() if not isinstance(v, dict) or "run_id" not in v or not str(d).isdigit()]
    if bad:
        raise ValueError(f"{where}: best_per_d entries {bad} need the form {{\"<d>\": {{\"n_loops\": R, "
                         f"\"run_id\": \"stage2/...\"}}}}; re-run the summarize stage")
    jobs = []
    if 0 in num_fewshot:
        for d in sorted(best_per_d, key=int):
            jobs.append((best_per_d[d]["run_id"], 0))
    jobs += [(best, k) for k in sorted(num_fewshot) if k > 0]
    return jobs


def main(argv=None, root: Path = Path(".")) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    root, t0 = Path(root), time.time()
    params = load_params(root / "params.yaml")
    cfg = benchmark_settings(params)
    session = EvalSession(params, root, max(cfg.num_fewshot), progress=not args.no_progress)
    from cart.evaluation.harness import Tokenizer, check_compatible
    from cart.training.checkpoint import read_run_config

    jobs = plan(read_json(root / STAGE2, "Stage 2 summary (run the summarize stage)"), cfg.num_fewshot)
    runs = list(dict.fromkeys(r for r, _ in jobs))
    tok = Tokenizer(root / TOKENIZER)
    for run_id in runs:  # reject any mismatched checkpoint up front
        rc = read_run_config(root / "runs" / run_id)
        check_compatible(rc, int(rc.get("model", {}).get("vocab_size", -1)), tok, str(root / "runs" / run_id))

    rows, metrics = [], {}
    bar = tqdm(total=len(jobs) * len(cfg.tasks), desc="benchmarks", unit="task", disable=args.no_progress)
    for run_id in runs:
        lm = session.load(run_id)
        for shots in (k for r, k in jobs if r == run_id):
            bar.set_postfix_str(f"{run_id} {shots}-shot")
            common = {"experiment": "benchmarks", "run_id": run_id, "setting": "", "n_loops": lm.trained_n_loops}
            for g in session.benchmark_rows(lm, shots, common):
                rows.append(g)
                metrics.setdefault(run_id, {}).setdefault(f"{shots}shot", {}).setdefault(g["task"], {})[
                    g["metric"]] = g["value"]
            bar.update(len(cfg.tasks))
        del lm
    bar.close()

    write_rows(root / TSV, rows)
    atomic_write_json(root / METRICS_JSON, {"source": cfg.source, "smoke_set": cfg.source == "builtin",
                                            "limit": cfg.limit, "results": metrics})
    print(f"benchmarks: {len(rows)} rows for {len(runs)} run(s) x {sorted(cfg.num_fewshot)}-shot x "
          f"{len(cfg.tasks)} tasks (source {cfg.source}, limit {cfg.limit}) -> {TSV}, {METRICS_JSON} "
          f"in {time.time() - t0:.1f}s")
    return rows


if __name__ == "__main__":
    run(main, "benchmarks")
