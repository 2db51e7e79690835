"""DVC stage: a model family's study, evaluated. `python -m pipeline.evaluate <study>`

    ratplus   every RAT+ run (each variant and seed) and the Dense control (the best run of the Dense
              lr sweep, the same backbone shape) at every pattern of `eval_ratplus.patterns` (train
              dense, run dilated: docs/ratplus.md); each adapted run at the pattern it was adapted to.
    lrt       every LRT run in each perplexity mode of `eval_lrt.modes` (merged = the parallel passes,
              sequential = exact token-by-token recurrence, zero = no memory), the benchmarks in
              `eval_lrt.benchmark_mode` at 0 and k shots, and the Dense control (docs/lrt.md).
    sampled_r every sampled_r run (CART trained with a fixed, uniform or Poisson-lognormal R per step)
              at every inference R of `eval_sampled_r.n_loops`, no fine-tuning (`n_loops` = R
              in its rows, as variable_r's).

Each run and setting gets validation perplexity / bits per byte per domain and, where the study
says, the `benchmarks` tasks at `eval_<study>.num_fewshot` shots. Writes eval/<study>.tsv (rows of
cart/evaluation/rows.py, `setting` = the pattern or mode) and metrics/eval_<study>.json, which the results
store and the report read.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm.auto import tqdm

from cart.evaluation.rows import write_rows
from cart.evaluation.session import STUDIES, EvalSession, domain_sources, study_jobs, study_params, study_settings
from cart.io import atomic_write_json
from cart.params import load_params, view
from pipeline._cli import run


def main(argv=None, root: Path = Path(".")) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=list(STUDIES))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    root, t0, key = Path(root), time.time(), f"eval_{args.study}"
    params = view(load_params(root / "params.yaml"), study_params(args.study))
    cfg = study_settings(params, args.study)
    session = EvalSession(params, root, max(cfg.num_fewshot, default=0), progress=not args.no_progress)
    jobs = study_jobs(args.study, params, root, cfg)
    val, sources = session.val_batches(cfg.ppl), domain_sources(params)

    rows, metrics = [], {}
    bar = tqdm(total=sum(len(s) for _, s in jobs), desc=f"evaluate {args.study}", unit="setting",
               disable=args.no_progress)
    for run_id, settings in jobs:
        lm = session.load(run_id)
        for s in settings:
            bar.set_postfix_str(f"{run_id} {s.key}")
            lm.runtime, lm.n_loops = dict(s.runtime), s.n_loops
            runtime = dict(s.runtime) | ({} if s.n_loops is None else {"n_loops": s.n_loops})
            common = {"experiment": args.study, "run_id": run_id, "setting": s.label, "n_loops": s.n_loops}
            got = session.ppl_rows(lm, val, common, sources, **runtime)
            for shots in cfg.num_fewshot if s.benchmarks else ():
                got += session.benchmark_rows(lm, shots, common, cfg.benchmark_limit)
            rows += got
            m = metrics.setdefault(run_id, {}).setdefault(s.key, {})
            for r in got:
                name = r["task"] if r["num_fewshot"] is None else f"{r['task']}_{r['num_fewshot']}shot"
                m.setdefault(name, {})[r["metric"]] = r["value"]
            bar.update(1)
        del lm
    bar.close()

    write_rows(root / "eval" / f"{args.study}.tsv", rows)
    atomic_write_json(root / "metrics" / f"{key}.json",
                      {"source": session.bench.source, "smoke_set": session.bench.source == "builtin",
                       "limit": session.bench.limit, "results": metrics})
    print(f"evaluate {args.study}: {len(jobs)} runs, {sum(len(s) for _, s in jobs)} settings, {len(rows)} rows "
          f"-> eval/{args.study}.tsv, metrics/{key}.json in {time.time() - t0:.1f}s")
    return rows


if __name__ == "__main__":
    run(main, "evaluate")
