"""Inference-time loop count (paper Table 12): `python -m pipeline.variable_r`.

Takes the best Stage 2 model (metrics/stage2.json best_run_id) and, with no fine-tuning, runs it
at every R in variable_r.n_loops: validation perplexity and bits per byte on each domain's
held-out bins, and the benchmarks of the `benchmarks` section (0-shot). Writes
eval/variable_r.tsv (cart/evaluation/rows.py) and metrics/variable_r.json; the report renders Table 12
and its figure from the results store.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm.auto import tqdm

from cart.evaluation.rows import write_rows
from cart.evaluation.session import EvalSession, domain_sources, variable_r_settings
from cart.io import atomic_write_json, read_json
from cart.params import load_params
from pipeline._cli import run

TSV = Path("eval/variable_r.tsv")
METRICS_JSON = Path("metrics/variable_r.json")
STAGE2 = Path("metrics/stage2.json")


def main(argv=None, root: Path = Path(".")) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    root, t0 = Path(root), time.time()
    params = load_params(root / "params.yaml")
    bcfg, vcfg = variable_r_settings(params)
    session = EvalSession(params, root, 0, progress=not args.no_progress)
    run_id = read_json(root / STAGE2, "Stage 2 summary (run the summarize stage)").get("best_run_id")
    if not run_id:
        raise ValueError(f"{root / STAGE2}: no best_run_id; re-run the summarize stage")
    lm = session.load(run_id)
    mcfg = lm.model.config
    if mcfg.arch != "cart" or mcfg.unshare_core:
        raise ValueError(f"{run_id}: variable R needs a CART model with a shared core; this one is "
                         f"{mcfg.arch}{' with an unshared core' if mcfg.arch == 'cart' else ''}")
    trained_r = mcfg.n_loops
    if trained_r not in vcfg.n_loops:
        print(f"variable_r: note: the trained R={trained_r} is not in variable_r.n_loops {vcfg.n_loops}")
    val, sources = session.val_batches(vcfg.ppl), domain_sources(params)

    rows, metrics = [], {}
    for r in tqdm(vcfg.n_loops, desc="variable R", unit="R", disable=args.no_progress):
        lm.n_loops = r
        common = {"experiment": "variable_r", "run_id": run_id, "setting": "", "n_loops": r}
        got = session.ppl_rows(lm, val, common, sources, n_loops=r) + session.benchmark_rows(lm, 0, common, vcfg.benchmark_limit)
        rows += got
        res = metrics.setdefault(f"R{r}", {})
        for g in got:
            res.setdefault(g["task"], {})[g["metric"]] = g["value"]

    write_rows(root / TSV, rows)
    atomic_write_json(root / METRICS_JSON, {"run_id": run_id, "trained_n_loops": trained_r, "source": bcfg.source,
                                            "smoke_set": bcfg.source == "builtin", "limit": bcfg.limit,
                                            "results": metrics})
    print(f"variable_r: {run_id} (trained R={trained_r}) at R={vcfg.n_loops}: {len(rows)} rows "
          f"({len(val)} PPL domains, {len(bcfg.tasks)} tasks, source {bcfg.source}) -> {TSV}, {METRICS_JSON} "
          f"in {time.time() - t0:.1f}s")
    return rows


if __name__ == "__main__":
    run(main, "variable_r")
