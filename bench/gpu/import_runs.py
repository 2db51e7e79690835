"""Import what bench/gpu/profile.sh brought back into gpu/, the committed home of the `gpu` profile's
outputs (apart from the default profile's DVC outputs):

    python -m bench.gpu.import_runs out/job1.tgz out/job2.tgz ...     # later archives win
    python -m bench.gpu.import_runs --profiles paper paper_offline --dest gpu/stage1 out/stage1-*.tgz

What the destination already holds is copied into one workspace and the archives are unpacked over
it (so an import adds to the committed runs), where the group summaries, the results store and the
report are rebuilt from every job's runs and evaluation rows (CPU work: the GPU jobs need not keep
a machine warm for them), then filed, into a copy of the destination that takes its place once whole
(an import that fails leaves the destination as it was):

    gpu/params.yaml        the params the runs were resolved with (the profiles applied to params.yaml)
    gpu/report/            REPORT.md, tables, figures
    gpu/results.db         the results store
    gpu/metrics/           every run's and group's metrics JSON (as metrics/ in the default profile)
    gpu/eval/              the evaluation rows (eval/*.tsv), where a job evaluated
    gpu/plots/             every run's DVCLive curves
    gpu/runs/<group>/<name>/{config,summary}.json   each run's full config and summary (no weights);
                           earlier/<n>/ the same of its earlier trainings, where an import brought another
    gpu/bins_meta.json     the training and validation token counts of the data the runs read
    gpu/logs/              each job's log and every run's training log
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from cart.params import load_params

REPO = Path(__file__).resolve().parents[2]


def import_archives(archives: list[Path], dest: Path = Path("gpu"), profiles: tuple[str, ...] = ("gpu",)) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        restore_interrupted(dest)
        seed_from_committed(dest, ws)
        unpack_archives(archives, ws)
        shutil.copy(REPO / "params.yaml", ws / "params.yaml")
        from cart.results import WEIGHTS_NOT_KEPT  # the archives hold no weights, by design
        (ws / "runs").mkdir(exist_ok=True)
        (ws / "runs" / WEIGHTS_NOT_KEPT).write_text("weights stayed on the GPU machine\n")
        env = {**os.environ, "PYTHONPATH": str(REPO)}

        def stage(*args: str) -> None:
            subprocess.run([sys.executable, "-m", *args], cwd=ws, env=env, check=True)
        for profile in profiles:
            stage("pipeline.profile", profile)
        stage("pipeline.summarize")  # every group, in one process
        stage("pipeline.results")
        stage("pipeline.report")
        file_workspace(ws, dest, [a.with_suffix(".log") for a in archives])


def file_workspace(ws: Path, dest: Path, logs: list[Path] = ()) -> None:
    """The rebuilt workspace's outputs into dest, all at once: they are written into a copy of dest
    (what they do not replace, such as FINDINGS.md, stays), which then takes dest's place, so an import
    that fails half-way leaves dest as it was."""
    report_dir = load_params(ws / "params.yaml")["report"]["out_dir"]
    staging, replaced = _swap_paths(dest)
    restore_interrupted(dest)
    for leftover in (staging, replaced):
        shutil.rmtree(leftover, ignore_errors=True)
    if dest.is_dir():
        shutil.copytree(dest, staging, symlinks=True)
    staging.mkdir(parents=True, exist_ok=True)
    try:
        for src, name in ((report_dir, "report"), ("results/results.db", "results.db"), ("metrics", "metrics"),
                          ("eval", "eval"), ("plots", "plots"), ("logs", "logs"), ("params.yaml", "params.yaml")):
            target = staging / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.is_file():
                target.unlink()
            if (ws / src).exists():
                (shutil.copytree if (ws / src).is_dir() else shutil.copy2)(ws / src, target)
        if (ws / "gpu_bench").is_dir():  # job 5's GPU benches (sampled-R compile cost, cached decoding)
            (staging / "bench").mkdir(exist_ok=True)
            for f in (ws / "gpu_bench").glob("*.json"):
                shutil.copy2(f, staging / "bench" / f.name)
        if (ws / "data/bins/meta.json").is_file():  # how much text the runs had (one pass or less)
            shutil.copy2(ws / "data/bins/meta.json", staging / "bins_meta.json")
        file_runs(ws / "runs", staging / "runs")
        for log in logs:
            if log.is_file():
                (staging / "logs").mkdir(exist_ok=True)
                shutil.copy2(log, staging / "logs" / log.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dest.is_dir():
        dest.rename(replaced)
    staging.rename(dest)
    shutil.rmtree(replaced, ignore_errors=True)


def _swap_paths(dest: Path) -> tuple[Path, Path]:
    """Where file_workspace builds the new destination, and where the old one waits while they swap."""
    return dest.with_name(f"{dest.name}.importing"), dest.with_name(f"{dest.name}.replaced")


def restore_interrupted(dest: Path) -> None:
    """An import stopped between its two renames left the destination under its `.replaced` name:
    put it back before anything reads or replaces it."""
    replaced = _swap_paths(dest)[1]
    if replaced.is_dir() and not dest.exists():
        replaced.rename(dest)


JOB_LOG = "logs/job.log"  # the GPU job's batches and runs, with their wall times (bench/gpu/sweep_stage1.py)


def unpack_archives(archives: list[Path], ws: Path) -> None:
    """The archives over the workspace in order (later ones overwrite earlier ones and what dest held),
    but the job log gains each archive's batches instead of being replaced by them."""
    job_log = ws / JOB_LOG
    logs = merge_job_logs([], job_log.read_text()) if job_log.is_file() else []
    for a in archives:
        with tarfile.open(a) as t:
            t.extractall(ws, filter="data")
            if JOB_LOG in t.getnames():
                logs = merge_job_logs(logs, t.extractfile(JOB_LOG).read().decode())
    if logs:
        job_log.write_text("".join(logs))


def merge_job_logs(logs: list[str], new: str) -> list[str]:
    """The job logs of several GPU sessions, oldest first, with one more archive's. Each session's
    machine starts a log of its own and every collect brings back that log so far: a log already
    held whole adds nothing, and one that continues a held log replaces it."""
    new = new if new.endswith("\n") or not new else new + "\n"
    if not new or any(new in held for held in logs):
        return logs
    return [held for held in logs if not new.startswith(held)] + [new]


EARLIER = "earlier"  # runs/<group>/<name>/earlier/<n>/: the earlier trainings of a run trained again


def seed_from_committed(dest: Path, ws: Path) -> None:
    """What dest already holds goes into the workspace before the archives: each run's config and
    summary, curves, metrics, evaluation rows, logs, the bins' meta and the GPU benches. An import of
    new archives then adds to the committed runs instead of replacing them, so the archives of
    earlier calls need not be kept (the store and report are rebuilt from everything)."""
    if not dest.is_dir():
        return
    for f in dest.glob("runs/*/*/*.json"):  # not runs/<group>/<name>/earlier/: file_runs keeps those
        target = ws / "runs" / f.parent.parent.name / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    for name in ("plots", "metrics", "eval", "logs"):
        if (dest / name).is_dir():
            shutil.copytree(dest / name, ws / name, dirs_exist_ok=True)
    if (dest / "bins_meta.json").is_file():
        (ws / "data" / "bins").mkdir(parents=True, exist_ok=True)
        shutil.copy2(dest / "bins_meta.json", ws / "data" / "bins" / "meta.json")
    if (dest / "bench").is_dir():
        shutil.copytree(dest / "bench", ws / "gpu_bench", dirs_exist_ok=True)


def file_runs(src: Path, dest: Path) -> None:
    """Each run's config.json and summary.json from the workspace's runs/ into dest (replacing what
    was there). A run whose final evaluation changed was trained again: its earlier summary and config
    move to dest/<group>/<name>/earlier/<n>/ first, and earlier trainings already there are kept (the
    spread between two trainings is evidence; a re-import of the same training adds none)."""
    kept: dict[Path, Path] = {}  # a run (relative to dest) -> a copy of its earlier/ while dest is rebuilt
    for run in sorted(dest.glob("*/*")) if dest.is_dir() else []:
        old = run / "summary.json"
        new = src / run.parent.name / run.name / "summary.json"
        trainings = sorted((run / EARLIER).glob("*"), key=lambda f: int(f.name)) if (run / EARLIER).is_dir() else []
        if old.is_file() and new.is_file() and \
                json.loads(old.read_text()).get("final_eval") != json.loads(new.read_text()).get("final_eval"):
            nxt = run / EARLIER / str(len(trainings) + 1)
            nxt.mkdir(parents=True)
            for name in ("summary.json", "config.json"):
                if (run / name).is_file():
                    shutil.copy2(run / name, nxt / name)
            trainings.append(nxt)
        if trainings:
            keep = Path(tempfile.mkdtemp(prefix="earlier-"))
            shutil.copytree(run / EARLIER, keep / EARLIER)
            kept[run.relative_to(dest)] = keep
    shutil.rmtree(dest, ignore_errors=True)
    for f in sorted(src.glob("*/*/*.json")):
        (dest / f.parent.parent.name / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest / f.parent.parent.name / f.parent.name / f.name)
    for rel, keep in kept.items():
        shutil.copytree(keep / EARLIER, dest / rel / EARLIER)
        shutil.rmtree(keep)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archives", nargs="+", type=Path)
    ap.add_argument("--dest", type=Path, default=Path("gpu"))
    ap.add_argument("--profiles", nargs="+", default=["gpu"], help="applied to params.yaml in order (default: gpu)")
    args = ap.parse_args(argv)
    import_archives([a.resolve() for a in args.archives], args.dest, tuple(args.profiles))
    print(f"imported {len(args.archives)} archive(s) into {args.dest}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
