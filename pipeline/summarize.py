"""DVC stage: one group's summary. `python -m pipeline.summarize <stage1|stage2|dense|ablation>`

Loads the group's run directories (and Stage 2's, for dense and ablation) into an in-memory
results store (cart/results.py) and writes metrics/<group>.json: small, numbers first, for
`dvc metrics show/diff`. Runs the grid expects but that are missing, incomplete or failed are
listed under "runs" instead of failing the stage. metrics/stage2.json's best_per_d and best_run_id
choose the models the evaluation stages load.
"""
import argparse
from pathlib import Path

from cart.io import atomic_write_json
from cart.params import load_params
from cart.experiments import summary_groups
from cart.results import GROUPS, memory_store, plan_from_params, summarize_group
from pipeline._cli import run


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("group", choices=GROUPS)
    ap.add_argument("--root", type=Path, default=Path("."), help="folder holding runs/ and plots/")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, default=None, help="default: <root>/metrics/<group>.json")
    args = ap.parse_args(argv)
    groups = summary_groups(args.group)
    con = memory_store(args.root, plan_from_params(load_params(args.params), groups), groups, eval_dir=None)
    try:
        summary = summarize_group(con, args.group)
    finally:
        con.close()
    out = args.out or args.root / "metrics" / f"{args.group}.json"
    atomic_write_json(out, summary)
    runs = summary["runs"]
    not_done = {k: len(runs[k]) for k in ("failed", "incomplete", "missing") if runs[k]}
    extra = f", best {summary['best_run_id']}" if summary.get("best_run_id") else ""
    print(f"summarize {args.group}: {runs['n_complete']}/{runs['n_expected']} runs complete"
          f"{', ' + ', '.join(f'{v} {k}' for k, v in not_done.items()) if not_done else ''}{extra} -> {out}")
    return summary


if __name__ == "__main__":
    run(main, "summarize")
