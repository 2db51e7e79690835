"""Shell commands run as submitit jobs: the one engine behind `python -m pipeline.sweep` (dvc.yaml's
training stages on a multi-GPU machine or a SLURM cluster) and `bench/gpu/job.py` (the GPU machine,
which has no DVC).

A `Task` is one shell command, its log file and the tasks it must wait for. submitit's executor runs
each as one job: `local` (a process tree of its own on this machine), `slurm` (one sbatch job; SLURM
gives it its GPUs) or `debug` (in this process, one after another: tests). On one machine the jobs
share `slots`, one environment each: a slot names its GPUs (CUDA_VISIBLE_DEVICES), several slots may
name the same GPU (small runs packed on one GPU, best under CUDA MPS: `cuda_mps`), and a task starts
when a slot is free and every task it waits for has succeeded.

Stopping (SIGINT, SIGTERM) reaches every running command as that signal (a training run saves a
checkpoint and exits; the next sweep resumes it), a task that succeeded before or while stopping is
still recorded (`on_success`), and a task whose command fails leaves the others going and its log in
place. This module imports neither DVC nor torch: jobs import it to run.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import submitit

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXECUTORS = ("local", "slurm", "debug")
# The note of a task left waiting because run_tasks' start_by had passed (not because the run was stopped).
DEADLINE_NOTE = "not started by the deadline"
# Options of sbatch that the executor itself writes (--slurm-option may not set them a second time).
_SBATCH_OWN = {"partition", "time", "gpus-per-node", "job-name", "comment", "output", "error", "signal",
               "open-mode", "account"}
# A local job has no time limit (submitit's local executor stops a job after timeout_min).
_LOCAL_TIMEOUT_MIN = 60 * 24 * 365


@dataclass(frozen=True)
class Task:
    """One shell command to run as one job, in `cwd`, its output appended to `log`."""

    name: str
    cmd: str
    log: Path
    cwd: Path = field(default_factory=Path.cwd)
    after: tuple[str, ...] = ()   # tasks that must succeed before this one starts
    curves: tuple[Path, ...] = ()  # folders that may hold the run's DVCLive curves (tokens/s in the progress)


@dataclass
class Outcome:
    """What became of a task: done (exit 0), failed, blocked (a task it waits for did not succeed),
    stopped (the sweep was stopped while it ran) or waiting (never started)."""

    status: str
    exit_code: int | None = None
    seconds: float | None = None
    note: str = ""


class ShellJob(submitit.helpers.Checkpointable):
    """The job: one shell command, as DVC runs a stage's `cmd`, with `env` on top of the job's
    environment (a value None removes the variable), its output appended to `log`; returns its exit
    code. SIGINT and SIGTERM are passed on to the command's whole process group, then raised again
    here once it has exited (whoever runs the job stops too). On submitit's time-limit or preemption
    signal it stops the command with SIGTERM (a training run saves a checkpoint) and asks to be
    requeued with the same command, which resumes the run."""

    def __init__(self, cmd: str, cwd: str, log: str, env: dict[str, str | None]):
        self.cmd, self.cwd, self.log, self.env = cmd, cwd, log, dict(env)
        self._child: subprocess.Popen | None = None

    def __getstate__(self) -> dict:  # the running command belongs to this process, not to the job
        return {**self.__dict__, "_child": None}

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # `python` in a stage's command is the interpreter that runs the job (a venv's, on any executor)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        for key, value in self.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def __call__(self) -> int:
        env, received = self._environment(), []

        def forward(signum, frame):
            received.append(signum)
            if self._child is not None:
                _signal_group(self._child.pid, signum)

        in_main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS} if in_main else {}
        log = Path(self.log)
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(log, "a") as f:
                f.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}, CUDA_VISIBLE_DEVICES="
                        f"{env.get('CUDA_VISIBLE_DEVICES', '(unset)')}\n$ {self.cmd}\n")
                f.flush()
                code = 128 + received[0] if received else self._run(f, env, received)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])
        return code

    def _run(self, log, env: dict[str, str], received: list[int]) -> int:
        # a session of its own: a signal reaches the whole command (a shell, python, torchrun's workers)
        self._child = subprocess.Popen(self.cmd, shell=True, cwd=self.cwd, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        if received:  # a signal that came while the command was starting
            _signal_group(self._child.pid, received[0])
        code = self._child.wait()
        log.write(f"== exit {code}\n")
        return code

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        child = self._child
        if child is not None:
            _signal_group(child.pid, signal.SIGTERM)
            try:  # not child.wait(): this runs in a signal handler that may have interrupted it
                os.waitpid(child.pid, 0)
            except ChildProcessError:
                pass
        return submitit.helpers.DelayedSubmission(ShellJob(self.cmd, self.cwd, self.log, self.env))


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


# ---- executors and slots --------------------------------------------------------------------------

@dataclass(frozen=True)
class ExecutorOptions:
    """Which submitit executor runs the jobs, and what a SLURM job asks for."""

    kind: str = "local"
    folder: Path = Path(".submitit")  # submitit's job files and its own logs (on SLURM: a shared disk)
    gpus_per_job: int = 1
    slurm_partition: str | None = None
    slurm_time_min: int | None = None
    slurm_account: str | None = None
    slurm_setup: tuple[str, ...] = ()               # shell lines before the job (modules, a venv)
    slurm_options: tuple[tuple[str, str], ...] = ()  # any other sbatch option, e.g. ("qos", "high")

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise ValueError(f"--executor: {self.kind!r} is not one of {list(EXECUTORS)}")
        if self.gpus_per_job < 1:
            raise ValueError(f"--gpus-per-job: must be >= 1, got {self.gpus_per_job}")
        if self.kind == "slurm" and (self.slurm_time_min is None or self.slurm_time_min < 1):
            raise ValueError("--slurm-time: required with --executor slurm, in minutes per job (>= 1); a run "
                             "that outlasts it is requeued and resumes from its checkpoint")
        own = sorted({k for k, _ in self.slurm_options} & _SBATCH_OWN)
        if own:
            raise ValueError(f"--slurm-option {own[0]}: set by the sweep's own flags (--slurm-partition, "
                             f"--slurm-time, --slurm-account, --gpus-per-job)")


def make_executor(opts: ExecutorOptions) -> submitit.AutoExecutor:
    if opts.kind == "slurm" and submitit.SlurmExecutor.affinity() <= 0:
        raise ValueError("--executor slurm: no `srun` on PATH; run the sweep on a SLURM login node")
    executor = submitit.AutoExecutor(folder=opts.folder, cluster=opts.kind)
    executor.update_parameters(
        timeout_min=opts.slurm_time_min if opts.kind == "slurm" else _LOCAL_TIMEOUT_MIN,
        stderr_to_stdout=True,
        # only SLURM is told the GPU count: the local executor would set CUDA_VISIBLE_DEVICES itself,
        # and the slots do that (a GPU may be named by its index or its UUID)
        slurm_gpus_per_node=opts.gpus_per_job, slurm_partition=opts.slurm_partition,
        slurm_account=opts.slurm_account, slurm_setup=list(opts.slurm_setup),
        slurm_additional_parameters=dict(opts.slurm_options))
    return executor


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES's entries when it is set, else the
    driver's GPU indices (none without nvidia-smi)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.split() if out.returncode == 0 else []


def gpu_slots(gpus: list[str], gpus_per_job: int = 1, jobs_per_gpu: int = 1,
              max_parallel: int | None = None) -> list[dict[str, str | None]]:
    """One environment per job that may run at once: each group of `gpus_per_job` GPUs hosts
    `jobs_per_gpu` jobs (listed GPU by GPU, so the first jobs spread over every GPU). Without GPUs:
    `max_parallel` (default 1) jobs with this process's CUDA_VISIBLE_DEVICES (None: unset, every GPU;
    the local executor itself would hide them all)."""
    if gpus_per_job < 1 or jobs_per_gpu < 1:
        raise ValueError(f"--gpus-per-job and --jobs-per-gpu: must be >= 1, got {gpus_per_job}, {jobs_per_gpu}")
    if max_parallel is not None and max_parallel < 1:
        raise ValueError(f"--max-parallel: must be >= 1, got {max_parallel}")
    if not gpus:
        return [{"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}] * (max_parallel or 1)
    if gpus_per_job > len(gpus):
        raise ValueError(f"--gpus-per-job: {gpus_per_job} GPUs per job, but only {len(gpus)} GPU(s) {gpus}")
    groups = [gpus[i:i + gpus_per_job] for i in range(0, len(gpus) - gpus_per_job + 1, gpus_per_job)]
    slots = [{"CUDA_VISIBLE_DEVICES": ",".join(g)} for _ in range(jobs_per_gpu) for g in groups]
    return slots[:max_parallel] if max_parallel else slots


@contextmanager
def cuda_mps() -> Iterator[None]:
    """CUDA MPS for the jobs started inside: the control daemon runs as a user process from entry to
    exit (no GPU setting changes), so packed runs' kernels overlap instead of taking turns."""
    try:
        subprocess.run(["nvidia-cuda-mps-control", "-d"], check=True, timeout=60)
    except FileNotFoundError:
        raise ValueError("--mps: nvidia-cuda-mps-control is not on PATH (it comes with the NVIDIA driver)") from None
    except subprocess.CalledProcessError as e:
        raise ValueError(f"--mps: nvidia-cuda-mps-control -d failed (exit {e.returncode})") from None
    try:
        yield
    finally:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, timeout=60)


# ---- the run ---------------------------------------------------------------------------------------

def submit(executor: submitit.AutoExecutor, task: Task, env: dict) -> submitit.Job:
    # a SLURM job is named after its task and carries the command as its comment (squeue -o %k)
    executor.update_parameters(name=task.name, slurm_comment=task.cmd)
    return executor.submit(ShellJob(task.cmd, str(task.cwd), str(task.log), env))


def _exit_code(job: submitit.Job) -> tuple[int | None, str]:
    try:
        return job.result(), ""
    except Exception as e:  # the job itself died (killed, out of memory, a lost node): submitit says how
        return None, (str(e).strip().splitlines() or [type(e).__name__])[-1]


def _stop(job: submitit.Job) -> bool:
    """Tell a running job to stop; True if it is then waited for (a local job: it saves its run)."""
    if isinstance(job, submitit.LocalJob):
        # the job's id is its controller's pid; the controller passes SIGTERM on to the job, and the
        # job to its command (submitit's own cancel kills the job a second later)
        try:
            os.kill(int(job.job_id), signal.SIGTERM)
        except ProcessLookupError:
            pass
        return True
    if isinstance(job, submitit.SlurmJob):
        job.cancel(check=False)  # scancel: SLURM sends SIGTERM to every process of the job
    return False  # a debug job runs inside this process: it has already stopped, or never started


def _tokens_per_s(task: Task) -> float | None:
    from .training.curves import read_curves
    for folder in task.curves:
        train, _ = read_curves(folder)
        if "tokens_per_s" in train and train["tokens_per_s"].notna().any():
            return float(train["tokens_per_s"].dropna().iloc[-1])
    return None


def _progress(t0: float, outcomes: dict[str, Outcome], running: dict, tasks: dict[str, Task]) -> str:
    counts = Counter(o.status for o in outcomes.values())
    rates = [r for r in (_tokens_per_s(tasks[n]) for n in running) if r is not None]
    line = (f"[{time.time() - t0:7.0f}s] done {counts['done']} | running {len(running)} | failed "
            f"{counts['failed']} | waiting {len(tasks) - len(outcomes) - len(running)}")
    if counts["blocked"]:
        line += f" | blocked {counts['blocked']}"
    return line + (f" | {sum(rates):,.0f} tok/s" if rates else "")


def run_tasks(tasks: list[Task], executor: submitit.AutoExecutor, slots: list[dict],
              on_success: Callable[[Task], None] | None = None, poll_s: float = 2.0, report_s: float = 60.0,
              stop_wait_s: float = 600.0, echo: Callable[[str], None] = print,
              start_by: float | None = None) -> dict[str, Outcome]:
    """Run every task (given in an order where a task comes after those it waits for), at most one per
    slot at a time, each once the tasks it waits for have succeeded; `on_success(task)` once a task's
    command exits 0, in a thread beside the loop, one task at a time (an exception there fails the
    task; a task succeeds, for those waiting on it, once recorded). Prints each start and end, and a
    progress line every `report_s`. On SIGINT/SIGTERM no new task starts, running local jobs get SIGTERM
    and are waited for (up to `stop_wait_s`; one that then exits 0 is still recorded), SLURM jobs are
    cancelled. From `start_by` (a time.time()) on no new task starts either: the running ones finish and
    the rest are left waiting (a machine lent for a fixed time then loses no run half-trained)."""
    by_name = {t.name: t for t in tasks}
    unknown = sorted({a for t in tasks for a in t.after} - set(by_name))
    if unknown:
        raise ValueError(f"tasks wait for unknown task(s) {unknown}")
    if not slots:
        raise ValueError("no slots to run tasks in")
    outcomes: dict[str, Outcome] = {}
    running: dict[str, tuple[submitit.Job, int, float]] = {}
    pending = list(tasks)
    stop: list[int] = []
    # on_success of the tasks that succeeded, one at a time, off the loop (a `dvc commit` takes seconds)
    recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="record")
    recording: dict[str, tuple[Future, int | None, float]] = {}

    def finish(name: str) -> tuple[str, int | None, str | None, float]:
        """A finished job out of its slot: (name, exit code, note, start time)."""
        job, _, t0 = running.pop(name)
        if stop and not isinstance(job, submitit.DebugJob) and not job.paths.result_pickle.exists():
            return name, None, "its process was killed while stopping", t0  # no result will come
        return (name, *_exit_code(job), t0)

    def close(name: str, status: str, code: int | None, note: str | None, t0: float) -> None:
        outcomes[name] = Outcome(status, code, time.time() - t0, note)
        echo(f"{status}: {name} (exit {'-' if code is None else code}, {time.time() - t0:.1f}s)"
             + (f": {note}" if note else "") + ("" if status == "done" else f"; log {by_name[name].log}"))

    def settle(name: str, code: int | None, note: str | None, t0: float) -> None:
        """A finished task's outcome; one that succeeded is first recorded (on_success), in the
        recorder's thread, so that the loop goes on starting and collecting jobs meanwhile."""
        status = "done" if code == 0 else "stopped" if stop else "failed"
        if status == "done" and on_success is not None:
            recording[name] = (recorder.submit(on_success, by_name[name]), code, t0)
        else:
            close(name, status, code, note, t0)

    def recorded(wait: bool = False) -> None:
        """Close the tasks whose recording has ended (every one, waiting for them, when `wait`)."""
        for name, (future, code, t0) in list(recording.items()):
            if not (wait or future.done()):
                return  # one recorder, first in first out: the later ones have not ended either
            del recording[name]
            try:
                future.result()
                close(name, "done", code, "", t0)
            except Exception as e:  # the run is complete: the next sweep records it without retraining
                close(name, "failed", code, f"recording failed: {e}", t0)

    def start_ready() -> None:
        for task in list(pending):
            failed = [a for a in task.after if a in outcomes and outcomes[a].status != "done"]
            if failed:
                pending.remove(task)
                outcomes[task.name] = Outcome("blocked", note=f"{failed[0]} did not succeed")
                echo(f"blocked: {task.name} ({failed[0]} did not succeed)")
        for task in list(pending):
            taken = {slot for _, slot, _ in running.values()}
            free = [i for i in range(len(slots)) if i not in taken]
            if not free or stop or late():
                return
            if all(a in outcomes for a in task.after):  # all succeeded: failures were blocked above
                # the free slot whose GPUs run the fewest jobs now
                busy = Counter(str(slots[i]) for i in taken)
                slot = min(free, key=lambda i: busy[str(slots[i])])
                job = submit(executor, task, slots[slot])
                running[task.name] = (job, slot, time.time())
                pending.remove(task)
                gpus = slots[slot].get("CUDA_VISIBLE_DEVICES")
                echo(f"started: {task.name} (job {job.job_id}" + (f", GPU {gpus}" if gpus else "") + ")")

    def late() -> bool:
        return start_by is not None and time.time() >= start_by

    previous = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in STOP_SIGNALS}
    t_start = last_report = time.time()
    try:
        while (running or recording or (pending and not late())) and not stop:
            recorded()
            start_ready()
            if pending and not running and not recording and not stop and not late():
                raise ValueError(f"tasks wait on each other: {[t.name for t in pending]}")
            finished = False
            for name in list(running):
                if stop:  # a debug job runs when asked whether it is done: ask no more
                    break
                if running[name][0].done():
                    settle(*finish(name))
                    finished = True
            if finished and not stop:  # the freed slots take their next tasks at once
                start_ready()
            if (running or recording) and not stop:
                if time.time() - last_report >= report_s:
                    echo(_progress(t_start, outcomes, running, by_name))
                    last_report = time.time()
                time.sleep(poll_s)
        # whether the deadline is what left tasks unstarted: decided now, not after a stop's wait outlasts it
        ended_late = late()
        if stop:
            echo(f"stopping (signal {stop[0]}): {len(running)} running job(s) told to stop, {len(pending)} not started")
            waited = [name for name, (job, _, _) in running.items() if _stop(job)]
            if waited:
                echo(f"waiting up to {stop_wait_s:.0f}s for {len(waited)} job(s) to save their state "
                     f"(signal again to leave them)")
            deadline = time.time() + stop_wait_s
            while waited and time.time() < deadline and len(stop) == 1:
                for name in [n for n in waited if running[n][0].done()]:
                    waited.remove(name)
                    settle(*finish(name))
                time.sleep(min(poll_s, 1.0))
    finally:
        recorded(wait=True)  # every run that succeeded is recorded, stopped or not
        recorder.shutdown()
        for s, handler in previous.items():
            signal.signal(s, handler)
    for name, (job, _, t0) in running.items():
        outcomes[name] = Outcome("stopped", None, time.time() - t0, f"job {job.job_id} told to stop")
    for task in pending:
        outcomes[task.name] = Outcome("waiting", note=DEADLINE_NOTE if ended_late else "")
    if pending and ended_late and not stop:
        echo(f"deadline: {len(pending)} task(s) not started")
    return outcomes
