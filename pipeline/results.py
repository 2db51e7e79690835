"""DVC stage: build the results store. `python -m pipeline.results`

Reads runs/<group>/<name>/{config,summary}.json, plots/<group>/<name>/{train,eval}.tsv and
eval/{benchmarks,variable_r}.tsv into one SQLite file, results/results.db (cart/results/),
written atomically. params.yaml's grids say which runs are expected, so missing ones are rows
with status 'missing' rather than silently absent.
"""
import argparse
from pathlib import Path

from cart.params import load_params, section
from cart.results.plan import plan_from_params
from cart.results.store import build_store
from pipeline._cli import run

DB = Path("results") / "results.db"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."), help="folder holding runs/, plots/, eval/")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, default=None, help=f"default: <root>/{DB}")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    plan = plan_from_params(params)
    plan.profile = section(params, "profile")
    out = args.out or args.root / DB
    c = build_store(out, args.root, plan)
    print(f"results: {c['runs']} runs ({c['complete']} complete, {c['failed']} failed, {c['incomplete']} incomplete, "
          f"{c['missing']} missing), {c['train_rows']} train-log rows, {c['eval_rows']} eval-log rows, "
          f"{c['eval_results']} eval results, {c['issues']} issue(s) -> {out}")
    return c


if __name__ == "__main__":
    run(main, "results")
