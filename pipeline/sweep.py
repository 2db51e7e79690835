"""Train dvc.yaml's out-of-date training stages as submitit jobs, each recorded in DVC when done.

    python -m pipeline.sweep [--stages GROUP ...] [--executor local|slurm|debug] ...

    dvc repro bins && python -m pipeline.sweep && dvc repro                  # every GPU of this machine
    python -m pipeline.sweep --executor slurm --slurm-partition gpu --slurm-time 240 \\
        --slurm-setup 'source .venv/bin/activate' && dvc repro                 # a SLURM cluster

DVC says which stages are out of date (those `dvc repro` would run); each runs its own dvc.yaml `cmd`
as one job, and each that succeeds is `dvc commit`ted at once, so `dvc repro` afterwards trains
nothing. A failed job leaves its stage out of date, its log in --logs; run the sweep again to submit
what is missing (a stopped run resumes from its checkpoint). Ctrl-C / SIGTERM stops the running jobs
(each run saves a checkpoint; SLURM jobs are cancelled) and keeps every run recorded so far.
See cart/sweep.py and cart/jobs.py.
"""
import argparse
import sys
from pathlib import Path

from cart.jobs import EXECUTORS, ExecutorOptions
from cart.sweep import run_sweep
from pipeline._cli import run


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (an sbatch option without its --), got {text!r}")
    return key, value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", metavar="GROUP",
                    help="training groups (stage1, ablation, ...), dvc.yaml stages or single stages "
                         "(stage1@64-1-2); default: every training stage")
    ap.add_argument("--executor", choices=EXECUTORS, default="local",
                    help="local: this machine's GPUs; slurm: one sbatch job per stage; debug: in this process")
    ap.add_argument("--gpus", type=lambda s: [g for g in s.split(",") if g],
                    help="GPUs to use on this machine, e.g. 0,1,2,3; default: CUDA_VISIBLE_DEVICES or all")
    ap.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per job (set train.nproc to match)")
    ap.add_argument("--jobs-per-gpu", type=int, default=1, help="jobs sharing one GPU (small runs; see --mps)")
    ap.add_argument("--max-parallel", type=int, help="jobs at once (default: one per slot; on SLURM all)")
    ap.add_argument("--mps", action="store_true",
                    help="run the jobs under CUDA MPS (the daemon is started here and quit at the end)")
    ap.add_argument("--slurm-partition")
    ap.add_argument("--slurm-time", type=int, metavar="MINUTES",
                    help="time limit per job; a run that outlasts it is requeued and resumes")
    ap.add_argument("--slurm-account")
    ap.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                    help="a shell line run before each job (modules, a venv); repeatable")
    ap.add_argument("--slurm-option", action="append", default=[], type=_option, metavar="KEY=VALUE",
                    help="any other sbatch option, e.g. qos=high, cpus-per-task=16, mem=64G; repeatable")
    ap.add_argument("--logs", type=Path, default=Path("logs/sweep"), help="each stage's log: <logs>/<stage>.log")
    ap.add_argument("--submitit-folder", type=Path, default=Path(".submitit"),
                    help="submitit's job files (on SLURM: a disk the nodes share)")
    ap.add_argument("--poll", type=float, default=2.0, help="seconds between checks of the jobs")
    ap.add_argument("--progress", type=float, default=60.0, help="seconds between progress lines")
    ap.add_argument("--dry-run", action="store_true", help="list the stages that would run, and stop")
    args = ap.parse_args(argv)
    opts = ExecutorOptions(args.executor, args.submitit_folder.resolve(), args.gpus_per_job, args.slurm_partition,
                           args.slurm_time, args.slurm_account, tuple(args.slurm_setup), tuple(args.slurm_option))
    return run_sweep(args.stages, opts, args.logs, gpus=args.gpus, jobs_per_gpu=args.jobs_per_gpu,
                     max_parallel=args.max_parallel, mps=args.mps, dry_run=args.dry_run, poll_s=args.poll,
                     report_s=args.progress)


if __name__ == "__main__":
    run(lambda: sys.exit(main()), "sweep")
