"""DVC stage: every run group's summary. `python -m pipeline.summarize [group ...]` (default: all)

Loads the run directories into one in-memory results store (cart/results/) and writes
metrics/<group>.json per group: small, numbers first, for `dvc metrics show/diff`. Runs the grid
expects but that are missing, incomplete or failed are listed under "runs" instead of failing the
stage. metrics/stage2.json's best_per_d and best_run_id choose the models the evaluation stages load.

One stage for every group, not one per group: a summary takes a second, while each DVC stage costs
seconds of process start and lock-file rewriting (the default DAG's time on 2 cores). A summary that
comes out the same leaves the stages reading it alone.
"""
import argparse
from pathlib import Path

from cart.io import atomic_write_json
from cart.params import load_params
from cart.results.plan import plan_from_params
from cart.results.schema import GROUPS
from cart.results.store import memory_store
from cart.results.summary import summarize_group
from pipeline._cli import run


def main(argv=None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("groups", nargs="*", metavar="group", help=f"default: all of {', '.join(GROUPS)}")
    ap.add_argument("--root", type=Path, default=Path("."), help="folder holding runs/ and plots/")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, default=None, help="one group only; default: <root>/metrics/<group>.json")
    args = ap.parse_args(argv)
    targets = list(dict.fromkeys(args.groups)) or list(GROUPS)
    unknown = [g for g in targets if g not in GROUPS]
    if unknown:
        ap.error(f"unknown group(s) {unknown}; valid: {list(GROUPS)}")
    if args.out is not None and len(targets) != 1:
        ap.error(f"--out needs exactly one group, got {targets}")
    # every group's runs, whichever are summarized: Dense is compared with Stage 2, the ablations too, and a
    # group none of whose runs exists yet still lists the domains the others were evaluated on
    con = memory_store(args.root, plan_from_params(load_params(args.params), GROUPS), GROUPS, eval_dir=None)
    summaries = {}
    try:
        for group in targets:
            summaries[group] = summarize_group(con, group)
    finally:
        con.close()
    for group, summary in summaries.items():
        out = args.out or args.root / "metrics" / f"{group}.json"
        atomic_write_json(out, summary)
        runs = summary["runs"]
        not_done = {k: len(runs[k]) for k in ("failed", "incomplete", "missing") if runs[k]}
        extra = f", best {summary['best_run_id']}" if summary.get("best_run_id") else ""
        print(f"summarize {group}: {runs['n_complete']}/{runs['n_expected']} runs complete"
              f"{', ' + ', '.join(f'{v} {k}' for k, v in not_done.items()) if not_done else ''}{extra} -> {out}")
    return summaries


if __name__ == "__main__":
    run(main, "summarize")
