"""dvc.yaml's training stages as submitit jobs (`python -m pipeline.sweep`): DVC says which stages are
out of date, each runs its own `cmd` as one job (cart/jobs.py), and each that succeeds is recorded in
DVC at once (`dvc commit` of that stage alone), so `dvc status` is clean for it and `dvc repro` then
trains nothing: it runs the summaries, the evaluations, the store and the report.

What runs is what `dvc repro` of the chosen stages would run: each stage DVC reports changed, and each
that reads a training stage which will run (RAT+'s adaptation reads the RAT+ runs: its job starts once
they are recorded). A changed data stage, or a changed training stage that a chosen one reads but that
is not chosen, is an error before any job starts. A failed job leaves its stage out of date and its
log under the log folder; the next sweep submits only what is still out of date, and a run resumes
from its checkpoint (the training stage itself resumes).
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from .jobs import ExecutorOptions, Outcome, Task, cuda_mps, gpu_slots, make_executor, run_tasks, visible_gpus
from .stages import training_stages


def select(training: list[str], wanted: list[str] | None) -> list[str]:
    """The training stages named by `wanted` (a group, e.g. `ablation`, which includes its multi-seed
    stage; a dvc.yaml stage, e.g. `ablation_multi_seed`; or one generated stage, e.g. `stage1@64-1-2`),
    in dvc.yaml's order; all of them when `wanted` is empty."""
    if not training:
        raise ValueError("dvc.yaml has no training stage")
    if not wanted:
        return list(training)
    group_of = training_stages()
    chosen: set[str] = set()
    for w in wanted:
        if "@" in w:
            if w not in training:
                raise ValueError(f"--stages {w}: not a training stage of dvc.yaml (e.g. {training[0]})")
            chosen.add(w)
            continue
        names = {stage for stage, group in group_of.items() if w in (stage, group)}
        if not names:
            raise ValueError(f"--stages {w}: not a training group or stage; valid: "
                             f"{sorted(set(group_of) | set(group_of.values()))}, or one stage such as {training[0]}")
        chosen |= {a for a in training if a.partition("@")[0] in names}
    return [a for a in training if a in chosen]


def _few(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _repo():
    """The DVC repository of the working directory, which is the project's root: stage names (and
    `dvc status`'s) are relative to it."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    if not Path("dvc.yaml").is_file():
        raise ValueError(f"{Path.cwd()}: no dvc.yaml here; run the sweep from the project's root")
    try:
        return Repo(".")
    except NotDvcRepoError:
        raise ValueError(f"{Path.cwd()}: not a DVC repository (`dvc init` first)") from None


def plan(wanted: list[str] | None, log_dir: Path) -> tuple[list[Task], list[str], list[str]]:
    """(the tasks to run, in dvc.yaml's order, each waiting for the tasks of the training stages it
    reads; the chosen stages that are up to date; the stages other than training stages that the
    chosen ones read, e.g. the data stages, if one of them is out of date, else none)."""
    import networkx as nx
    with _repo() as repo:
        stages = {s.addressing: s for s in repo.index.stages}
        training = [a for a in stages if a.partition("@")[0] in training_stages()]
        chosen = select(training, wanted)
        changed = set(repo.status())  # `dvc status`: one pass over every stage is the quickest
        reads = {a: {s.addressing for s in nx.descendants(repo.index.graph, stages[a])} for a in chosen}
    inputs = [u for u in stages if u not in training and any(u in reads[a] for a in chosen)]
    inputs = inputs if changed & set(inputs) else []
    rerun = [a for a in chosen if a in changed or reads[a] & changed]
    missing = [u for u in training if u in changed and u not in rerun and any(u in reads[a] for a in rerun)]
    if missing:
        readers = [a for a in rerun if reads[a] & set(missing)]
        raise ValueError(f"{_few(readers)} read the out-of-date training stage(s) {_few(missing)}: add them to "
                         f"--stages")
    root = Path.cwd()
    tasks = [Task(a, stages[a].cmd, log_dir / f"{a}.log", cwd=root,
                  after=tuple(u for u in rerun if u in reads[a]),
                  curves=tuple(root / str(o.def_path) for o in stages[a].outs)) for a in rerun]
    return tasks, [a for a in chosen if a not in rerun], inputs


def record(stage: str) -> None:
    """`dvc commit` of one stage: dvc.lock takes its outputs and the deps and params it ran with."""
    with _repo() as repo:
        repo.commit(stage, force=True)


def summary(outcomes: dict[str, Outcome], tasks: list[Task]) -> list[str]:
    """The closing table: every task's status, exit code, time and, unless it succeeded, its log."""
    lines = []
    for t in tasks:
        o = outcomes[t.name]
        secs = "" if o.seconds is None else f"{o.seconds:8.1f}s"
        code = "" if o.exit_code is None else f"exit {o.exit_code}"
        tail = "" if o.status == "done" else f"  {o.note + '; ' if o.note else ''}log {t.log}"
        lines.append(f"  {o.status:8s} {t.name:40s} {code:8s} {secs:>9s}{tail}")
    return lines


def run_sweep(wanted: list[str] | None, opts: ExecutorOptions, log_dir: Path,
              gpus: list[str] | None = None, jobs_per_gpu: int = 1, max_parallel: int | None = None,
              mps: bool = False, dry_run: bool = False, poll_s: float = 2.0, report_s: float = 60.0,
              echo=print) -> int:
    """Plan, run and record; 0 when every stage that was out of date is recorded, else 1. `gpus` (one
    machine: local and debug) are the GPUs the slots share; SLURM picks its own."""
    if opts.kind == "slurm" and (gpus is not None or jobs_per_gpu != 1 or mps):
        raise ValueError("--gpus, --jobs-per-gpu and --mps are for one machine (--executor local); on SLURM "
                         "each job asks for --gpus-per-job GPUs")
    if max_parallel is not None and max_parallel < 1:
        raise ValueError(f"--max-parallel: must be >= 1, got {max_parallel}")
    executor = None if dry_run else make_executor(opts)
    if opts.kind != "slurm":
        slots = gpu_slots(visible_gpus() if gpus is None else gpus, opts.gpus_per_job, jobs_per_gpu, max_parallel)
    tasks, fresh, inputs = plan(wanted, log_dir)
    if inputs:
        message = (f"the training stages read stages that are out of date: run `dvc repro {' '.join(inputs)}` "
                   f"first")
        if not dry_run:
            raise ValueError(message)
        echo(f"note: {message}")
    if opts.kind == "slurm":  # SLURM queues the jobs and gives each its GPUs
        slots = [{}] * (max_parallel or max(len(tasks), 1))
    echo(f"{len(tasks)} training stage(s) out of date, {len(fresh)} up to date")
    for t in tasks:
        echo(f"  {t.name}: {t.cmd}" + (f"  (after {', '.join(t.after)})" if t.after else ""))
    if dry_run or not tasks:
        return 0
    with cuda_mps() if mps else nullcontext():
        outcomes = run_tasks(tasks, executor, slots, on_success=lambda t: record(t.name), poll_s=poll_s,
                             report_s=report_s, echo=echo)
    echo("sweep:")
    for line in summary(outcomes, tasks):
        echo(line)
    left = [t.name for t in tasks if outcomes[t.name].status != "done"]
    if left:
        echo(f"{len(left)} stage(s) not recorded, still out of date: run the sweep again to submit them "
             f"(a stopped run resumes from its checkpoint)")
        return 1
    echo(f"all {len(tasks)} recorded in dvc.lock: `dvc repro` now trains nothing")
    return 0
