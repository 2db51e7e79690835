"""DVC stage: a model family's study, evaluated. `python -m pipeline.evaluate <study>`

    ratplus   every RAT+ run (each variant and seed) and the Dense control (the best run of the Dense
              lr sweep, the same backbone shape) at every pattern of `eval_ratplus.patterns` (train
              dense, run dilated: RATPLUS_SPEC.md); each adapted run at the pattern it was adapted to.

Each run and setting gets validation perplexity / bits per byte per domain and the `benchmarks`
tasks at `eval_<study>.num_fewshot` shots. Writes eval/<study>.tsv (rows of cart/eval_rows.py,
`setting` = the pattern) and metrics/eval_<study>.json, which the results store and the report read.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm.auto import tqdm

from cart.eval_rows import write_rows
from cart.evaluation import STUDIES, EvalSession, RATPlusEval, domain_sources, ratplus_jobs, study_params
from cart.io import atomic_write_json
from cart.params import build, load_params, section, view
from pipeline._cli import run


def main(argv=None, root: Path = Path(".")) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=list(STUDIES))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    root, t0 = Path(root), time.time()
    params = view(load_params(root / "params.yaml"), study_params(args.study))
    cfg = build(RATPlusEval, section(params, "eval_ratplus"), "eval_ratplus")
    session = EvalSession(params, root, max(cfg.num_fewshot), progress=not args.no_progress)
    jobs = ratplus_jobs(params, root, cfg.patterns)
    val, sources = session.val_batches(cfg.ppl), domain_sources(params)

    rows, metrics = [], {}
    bar = tqdm(total=sum(len(p) for _, p in jobs), desc=f"evaluate {args.study}", unit="setting",
               disable=args.no_progress)
    for run_id, patterns in jobs:
        lm = session.load(run_id)
        for pattern in patterns:
            bar.set_postfix_str(f"{run_id} {pattern}")
            lm.runtime = {"pattern": pattern}
            common = {"experiment": args.study, "run_id": run_id, "setting": pattern, "n_loops": None}
            got = session.ppl_rows(lm, val, common, sources, pattern=pattern)
            for shots in cfg.num_fewshot:
                got += session.benchmark_rows(lm, shots, common)
            rows += got
            m = metrics.setdefault(run_id, {}).setdefault(pattern, {})
            for r in got:
                key = r["task"] if r["num_fewshot"] is None else f"{r['task']}_{r['num_fewshot']}shot"
                m.setdefault(key, {})[r["metric"]] = r["value"]
            bar.update(1)
        del lm
    bar.close()

    write_rows(root / "eval" / f"{args.study}.tsv", rows)
    atomic_write_json(root / "metrics" / f"eval_{args.study}.json",
                      {"source": session.bench.source, "smoke_set": session.bench.source == "builtin",
                       "limit": session.bench.limit, "results": metrics})
    print(f"evaluate {args.study}: {len(jobs)} runs x their settings, {len(rows)} rows -> eval/{args.study}.tsv, "
          f"metrics/eval_{args.study}.json in {time.time() - t0:.1f}s")
    return rows


if __name__ == "__main__":
    run(main, "evaluate")
