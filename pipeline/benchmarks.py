"""Downstream benchmarks (paper Tables 13 and 14): `python -m pipeline.benchmarks`.

0-shot for every scale's best Stage 2 model (metrics/stage2.json best_per_d), and each
num_fewshot > 0 in params for the best model overall (best_run_id), through lm-evaluation-harness
(cart/harness.py). Writes eval/benchmarks.tsv (one row per run x shots x task x metric) and
metrics/benchmarks.json, then prints the tables in the paper's layout.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# no network: lm-eval and datasets read local files (or the HF cache for source: hub)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tqdm.auto import tqdm  # noqa: E402

from cart.io import atomic_write_json, read_json  # noqa: E402
from cart.params import build, load_params, section  # noqa: E402
from pipeline._cli import run

TSV = Path("eval/benchmarks.tsv")
METRICS_JSON = Path("metrics/benchmarks.json")
STAGE2 = Path("metrics/stage2.json")
TOKENIZER = Path("data/tokenizer")


def load_settings(params: dict):
    from cart.harness import BenchmarkSettings
    return build(BenchmarkSettings, section(params, "benchmarks"), "benchmarks")


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


def scale_of(stage2: dict) -> dict[str, str]:
    """run_id -> d, for the table."""
    return {v["run_id"]: d for d, v in stage2["best_per_d"].items()}


def main(argv=None, root: Path = Path(".")) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    root = Path(root)
    t0 = time.time()

    cfg = load_settings(load_params(root / "params.yaml"))
    from cart import benchmarks as B
    from cart.device import resolve_device, resolve_dtype
    from cart.harness import (CARTLM, Tokenizer, check_compatible, evaluate_benchmarks, local_dir_of,
                              quiet_lm_eval, write_tsv)
    from cart.checkpoint import read_run_config

    local_dir = local_dir_of(cfg, root)
    if cfg.source == "local":  # every file checked before any model is loaded
        B.check_local_files(local_dir, cfg.tasks, max(cfg.num_fewshot), cfg.fewshot_fallback)
    stage2 = read_json(root / STAGE2, "Stage 2 summary (run the summarize stage)")
    jobs = plan(stage2, cfg.num_fewshot)
    runs = list(dict.fromkeys(r for r, _ in jobs))
    tok = Tokenizer(root / TOKENIZER)
    for run_id in runs:  # reject any mismatched checkpoint up front
        run_dir = root / "runs" / run_id
        rc = read_run_config(run_dir)
        check_compatible(rc, int(rc.get("model", {}).get("vocab_size", -1)), tok, str(run_dir))

    device = resolve_device(cfg.device, "benchmarks.device")
    dtype = resolve_dtype(cfg.dtype, device)
    quiet_lm_eval()
    tm = B.task_manager(cfg.source, local_dir)
    rows, metrics = [], {}
    bar = tqdm(total=len(jobs) * len(cfg.tasks), desc="benchmarks", unit="task", disable=args.no_progress)
    for run_id in runs:
        lm = CARTLM.from_run(root / "runs" / run_id, root / TOKENIZER, device=device, dtype=dtype,
                             batch_size=cfg.batch_size, max_length=cfg.max_length, prefix_context=cfg.prefix_context,
                             progress=not args.no_progress)
        for shots in (k for r, k in jobs if r == run_id):
            bar.set_postfix_str(f"{run_id} {shots}-shot")
            got, _ = evaluate_benchmarks(lm, cfg.tasks, source=cfg.source, local_dir=local_dir,
                                         num_fewshot=shots, limit=cfg.limit, bootstrap_iters=cfg.bootstrap_iters,
                                         fewshot_fallback=cfg.fewshot_fallback, task_manager=tm)
            for g in got:
                rows.append({"experiment": "benchmarks", "run_id": run_id, "n_loops": lm.trained_n_loops,
                             "num_fewshot": shots, **g, "source": cfg.source})
                metrics.setdefault(run_id, {}).setdefault(f"{shots}shot", {}).setdefault(g["task"], {})[
                    g["metric"]] = g["value"]
            bar.update(len(cfg.tasks))
        del lm
    bar.close()

    write_tsv(root / TSV, rows)
    atomic_write_json(root / METRICS_JSON, {"source": cfg.source, "smoke_set": cfg.source == "builtin",
                                            "limit": cfg.limit, "results": metrics})
    print(render_tables(stage2, jobs, metrics, cfg.tasks, cfg.source, cfg.limit))
    print(f"benchmarks: {len(rows)} rows for {len(runs)} run(s) x {sorted(cfg.num_fewshot)}-shot x "
          f"{len(cfg.tasks)} tasks (source {cfg.source}, limit {cfg.limit}) -> {TSV}, {METRICS_JSON} "
          f"in {time.time() - t0:.1f}s")
    return rows


def render_tables(stage2: dict, jobs, metrics: dict, tasks, source: str, limit: int | None = None) -> str:
    from cart.harness import markdown_table, source_note, task_cells, task_headers

    out = []
    scale = scale_of(stage2)
    zero = [r for r, k in jobs if k == 0]
    if zero:
        body = [[scale.get(r, "?"), stage2["best_per_d"].get(scale.get(r, ""), {}).get("n_loops", "?"), r,
                 *task_cells(metrics[r]["0shot"], tasks)] for r in zero]
        out.append(f"\nTable 13 layout: 0-shot, best R per d ({source_note(source, limit)})\n")
        out.append(markdown_table(["d", "best R", "run", *task_headers(tasks)], body))
    best = stage2["best_run_id"]
    shots = sorted(k for r, k in jobs if r == best)
    if any(k > 0 for k in shots):
        body = [[f"{k}-shot", *task_cells(metrics[best][f"{k}shot"], tasks)] for k in shots]
        out.append(f"\nTable 14 layout: {best} ({source_note(source, limit)})\n")
        out.append(markdown_table(["shots", *task_headers(tasks)], body))
    return "\n".join(out)


if __name__ == "__main__":
    run(main, "benchmarks")
