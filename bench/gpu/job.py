"""One slice of the DAG on a GPU machine that has no DVC: the same stage commands as dvc.yaml, in
the DAG's order, with the training runs of the listed groups packed N at a time on the one GPU
(small runs leave most of an H200 idle: several at once reach a multiple of one run's tokens/s).

    python -m bench.gpu.job data train:stage1,sweep_cart,sweep_dense summarize:stage1,sweep_cart,sweep_dense \
        --parallel 6
    python -m bench.gpu.job eval:benchmarks,variable_r,ratplus,lrt results report

Steps, run in the order given: `data` (corpus, tokenizer, bins: skipped when data/bins/meta.json
exists, e.g. on a machine still warm from the last job), `train:<groups or group/run>` (every run of
each group's grid, or the one run named, or the runs a shell pattern matches, e.g.
`train:stage1/d256-*`; N concurrent processes), `summarize:<groups>`, `eval:<stages>` (benchmarks,
variable_r, or a study of pipeline/evaluate.py; N at once, each logged to logs/eval-<stage>.log),
`results`, `report`. A failing command stops the job (exit 1), after the runs already started have
finished. Each step prints its wall time; bench/gpu/profile.sh packs what came out. The N at once
are submitit jobs on this machine (cart/jobs.py, the engine of `python -m pipeline.sweep`), each
seeing the GPUs this job sees; SIGTERM (the `timeout` that bench/gpu/profile.sh runs this under)
reaches every run, which saves a checkpoint, and the job waits up to STOP_WAIT_S for them before it
exits. On a DVC machine use `dvc repro` or `python -m pipeline.sweep` instead: this is the same work
without DVC's records.
"""
from __future__ import annotations

import argparse
import fnmatch
import shlex
import subprocess
import sys
import time
from pathlib import Path

from cart.evaluation.session import STUDIES
from cart.experiments import GROUPS, RunPaths, run_names
from cart.jobs import DEADLINE_NOTE, ExecutorOptions, Outcome, Task, gpu_slots, make_executor, run_tasks
from cart.params import load_params
from cart.stages import train_command

PY = [sys.executable, "-m"]
# how long a stopped job waits for its runs to save their checkpoints: inside the device call that
# bench/gpu/profile.sh stops with `timeout` well before the call's own limit
STOP_WAIT_S = 45.0


def _run(cmd: list[str]) -> tuple[list[str], int, float]:
    t0 = time.time()
    return cmd, subprocess.run(cmd).returncode, time.time() - t0


def _run_jobs(cmds: list[list[str]], logs: list[Path], parallel: int,
              start_by: float | None = None) -> list[tuple[list[str], int | None, float]]:
    """The commands as submitit jobs on this machine, `parallel` at once, each to its log: (command,
    exit code (-1: its job died; None: not started by `start_by`), seconds)."""
    tasks = [Task(" ".join(c[2:]), shlex.join(c), log, curves=(RunPaths.for_run(c[3], c[4]).plots_dir,)
                  if c[2] == "pipeline.train" else ()) for c, log in zip(cmds, logs)]
    outcomes = run_tasks(tasks, make_executor(ExecutorOptions("local")), gpu_slots([], max_parallel=parallel),
                         stop_wait_s=STOP_WAIT_S, start_by=start_by)
    return [(c, exit_code(outcomes[t.name]), outcomes[t.name].seconds or 0.0) for c, t in zip(cmds, tasks)]


def exit_code(outcome: Outcome) -> int | None:
    """A job's exit code as this runner reports it: None for a run left unstarted by the deadline, -1
    for one whose job died, or that a stop left unstarted or cut short (a failure: the job ends 1)."""
    if outcome.status == "waiting" and outcome.note == DEADLINE_NOTE:
        return None
    return -1 if outcome.exit_code is None else outcome.exit_code


def commands(step: str, params: dict) -> list[list[str]]:
    kind, _, arg = step.partition(":")
    names = [a for a in arg.split(",") if a]
    if kind == "data":
        if Path("data/bins/meta.json").is_file():
            print("data: data/bins already built on this machine, skipped")
            return []
        return [PY + [f"pipeline.{s}", "--no-progress"] for s in ("corpus", "tokenizer", "bins")]
    if kind == "train":  # a group (every run of its grid) or one run, group/name
        groups = list(dict.fromkeys(n.partition("/")[0] for n in names))
        bad = [g for g in groups if g not in GROUPS]
        if bad:
            raise SystemExit(f"train: unknown group(s) {bad}; valid: {list(GROUPS)}")
        runs = run_names(params, groups)
        wanted = [(g, r) for n in names for g, _, one in [n.partition("/")]
                  for r in (fnmatch.filter(runs[g], one) or [one] if one else runs[g])]
        wanted = list(dict.fromkeys(wanted))  # a run selected twice runs once
        unknown = [f"{g}/{r}" for g, r in wanted if r not in runs[g]]
        if unknown:
            raise SystemExit(f"train: {unknown} are not in the params grid; valid: "
                             f"{[f'{g}/{r}' for g in groups for r in runs[g]]}")
        return [train_command(g, r, python=sys.executable) + ["--no-progress"] for g, r in wanted]
    if kind == "summarize":
        return [PY + ["pipeline.summarize", g] for g in names]
    if kind == "eval":
        valid = ("benchmarks", "variable_r", *STUDIES)
        bad = [s for s in names if s not in valid]
        if bad:
            raise SystemExit(f"eval: unknown stage(s) {bad}; valid: {list(valid)}")
        return [PY + ([f"pipeline.{s}"] if s in ("benchmarks", "variable_r") else ["pipeline.evaluate", s])
                + ["--no-progress"] for s in names]
    if kind in ("results", "report"):
        return [PY + [f"pipeline.{kind}"]]
    raise SystemExit(f"unknown step {step!r}: data | train:<groups> | summarize:<groups> | eval:<stages> | "
                     f"results | report")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("steps", nargs="+")
    ap.add_argument("--parallel", type=int, default=4, help="training runs at once on the GPU")
    ap.add_argument("--logs", type=Path, default=Path("logs"))
    ap.add_argument("--start-by", type=float, default=None, metavar="SECONDS",
                    help="start no training run later than this many seconds after the job starts: the "
                         "runs started finish, the rest are listed as not started and the job ends there")
    args = ap.parse_args(argv)
    if args.start_by is not None and args.start_by < 0:
        raise SystemExit(f"--start-by: must be >= 0 seconds, got {args.start_by:g}")
    params = load_params("params.yaml")
    t_job = time.time()
    start_by = None if args.start_by is None else t_job + args.start_by
    for step in args.steps:
        cmds, t0 = commands(step, params), time.time()
        # training runs, and evaluation stages (they write disjoint outputs), N at once, each to its log
        log_name = {"train": lambda c: f"{c[3]}-{c[4]}.log",
                    "eval": lambda c: f"eval-{c[-2]}.log"}.get(step.partition(":")[0])
        if log_name and (step.startswith("train:") or args.parallel > 1):
            done = _run_jobs(cmds, [args.logs / log_name(c) for c in cmds], args.parallel,
                             start_by if step.startswith("train:") else None)
        else:
            done = [_run(c) for c in cmds]
        failed = [" ".join(c[2:]) for c, code, _ in done if code not in (0, None)]
        waiting = [" ".join(c[2:]) for c, code, _ in done if code is None]
        for c, code, secs in done:
            print(f"  {' '.join(c[2:]):60s} " + ("not started" if code is None else f"exit {code} {secs:7.1f}s"),
                  flush=True)
        print(f"{step}: {len(cmds) - len(waiting)} command(s) in {time.time() - t0:.1f}s"
              + (f", {len(waiting)} not started (--start-by)" if waiting else ""), flush=True)
        if failed:
            print(f"FAILED: {failed} (logs in {args.logs}/)", flush=True)
            return 1
        if waiting:
            print(f"job: {time.time() - t_job:.1f}s, stopped at --start-by before {len(waiting)} run(s)", flush=True)
            return 0
    print(f"job: {time.time() - t_job:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
