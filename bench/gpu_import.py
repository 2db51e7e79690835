"""Import what bench/gpu_profile.sh brought back into gpu/, the committed home of the `gpu` profile's
outputs (apart from the default profile's DVC outputs):

    python -m bench.gpu_import job4.tgz [job1.tgz ...]      # later archives win

    gpu/report/            REPORT.md, tables, figures (rendered on the GPU machine from gpu/results.db)
    gpu/results.db         the results store
    gpu/metrics/           every run's and group's metrics JSON (as metrics/ in the default profile)
    gpu/eval/              the evaluation rows (eval/*.tsv)
    gpu/plots/             every run's DVCLive curves
    gpu/runs/<group>/<name>/{config,summary}.json   each run's full config and summary (no weights)
    gpu/logs/              each job's log and every run's training log
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

MAP = {"gpu/report": "report", "results/results.db": "results.db", "metrics": "metrics", "eval": "eval",
       "plots": "plots", "logs": "logs"}


def import_archives(archives: list[Path], dest: Path = Path("gpu")) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        for a in archives:  # later archives overwrite earlier ones
            with tarfile.open(a) as t:
                t.extractall(staged, filter="data")
        dest.mkdir(exist_ok=True)
        for src, name in MAP.items():
            if (staged / src).exists():
                target = dest / name
                if target.is_dir():
                    shutil.rmtree(target)
                (shutil.copytree if (staged / src).is_dir() else shutil.copy2)(staged / src, target)
        runs = dest / "runs"
        shutil.rmtree(runs, ignore_errors=True)
        for f in sorted((staged / "runs").glob("*/*/*.json")):
            (runs / f.parent.parent.name / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, runs / f.parent.parent.name / f.parent.name / f.name)
        for a in archives:
            log = a.with_suffix(".log")
            if log.is_file():
                (dest / "logs").mkdir(exist_ok=True)
                shutil.copy2(log, dest / "logs" / log.name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archives", nargs="+", type=Path)
    ap.add_argument("--dest", type=Path, default=Path("gpu"))
    args = ap.parse_args(argv)
    import_archives(args.archives, args.dest)
    print(f"imported {len(args.archives)} archive(s) into {args.dest}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
