"""DVC stage: render the report. `python -m pipeline.report`

Reads only results/results.db and params.yaml's `report` section; writes <report.out_dir>/REPORT.md,
tables (Markdown + CSV), figures (PNG) and per-run curves for `dvc plots` (cart/report).
"""
import argparse
from pathlib import Path

from cart.params import build, load_params, section
from cart.report import ReportSettings, build_report
from pipeline._cli import run

DB = Path("results") / "results.db"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, default=DB)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    settings = build(ReportSettings, section(load_params(args.params), "report"), "report")
    c = build_report(args.db, settings)
    print(f"report: {c['tables_with_data']}/{c['tables']} tables with results, {c['figures']} figures "
          f"-> {settings.out_dir}/REPORT.md")
    return c


if __name__ == "__main__":
    run(main, "report")
