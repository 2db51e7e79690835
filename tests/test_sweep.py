"""The job engine (cart/jobs.py), the DVC sweep on it (pipeline/sweep.py) and the GPU-machine runner
on it (bench/gpu/job.py). Engine behaviour is checked with small shell commands; the sweep with the
tiny profile's real training stages in a temporary DVC repository; SLURM with stand-in `sbatch` and
`srun` (no cluster)."""
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
import yaml

from cart.jobs import (DEADLINE_NOTE, ExecutorOptions, Outcome, ShellJob, Task, cuda_mps, gpu_slots, make_executor,
                       run_tasks, submit)
from cart.stages import train_command
from conftest import ROOT, tiny_params, write_params


def _echo_gpu(name: str, tmp: Path, after=(), code: int = 0) -> Task:
    return Task(name, f"echo seen=${{CUDA_VISIBLE_DEVICES-unset}}; exit {code}", tmp / f"{name}.log", cwd=tmp,
                after=tuple(after))


def _seen(log: Path) -> str:
    return next(line for line in log.read_text().splitlines() if line.startswith("seen="))[5:]


def _fake_tools(tmp: Path, monkeypatch, **scripts: str) -> Path:
    """Executables named after the keywords (`_` for `-`) on PATH, in front of the real ones."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name.replace("_", "-")
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


# ---- the engine ------------------------------------------------------------------------------------

def test_slots_spread_jobs_over_the_gpus_before_packing_them():
    assert [s["CUDA_VISIBLE_DEVICES"] for s in gpu_slots(["0", "1"], jobs_per_gpu=2)] == ["0", "1", "0", "1"]
    assert [s["CUDA_VISIBLE_DEVICES"] for s in gpu_slots(list("0123"), gpus_per_job=2)] == ["0,1", "2,3"]
    assert [s["CUDA_VISIBLE_DEVICES"] for s in gpu_slots(list("0123"), jobs_per_gpu=3, max_parallel=6)] == \
        list("012301")
    uuids = ["GPU-aaaa", "GPU-bbbb"]  # CUDA_VISIBLE_DEVICES may name GPUs by UUID
    assert [s["CUDA_VISIBLE_DEVICES"] for s in gpu_slots(uuids)] == uuids
    with pytest.raises(ValueError, match="--gpus-per-job"):
        gpu_slots(["0"], gpus_per_job=2)
    with pytest.raises(ValueError, match="--max-parallel"):
        gpu_slots(["0"], max_parallel=0)


def test_local_jobs_see_their_slots_gpus_and_inherit_the_machines_otherwise(tmp_path, monkeypatch):
    """submitit's local executor blanks CUDA_VISIBLE_DEVICES for a job that asked it for no GPU: a
    slot's GPUs are set again in the command's environment, and a slot without GPUs restores what
    the machine had (unset: every GPU; bench/gpu/job.py's runs rely on it)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    executor = make_executor(ExecutorOptions("local", folder=tmp_path / "submitit"))
    tasks = [_echo_gpu(n, tmp_path) for n in ("a", "b")]
    out = run_tasks(tasks, executor, gpu_slots(["0", "1"]), poll_s=0.2, echo=lambda s: None)
    assert {o.status for o in out.values()} == {"done"}
    assert sorted(_seen(t.log) for t in tasks) == ["0", "1"]
    plain = [_echo_gpu("c", tmp_path)]
    run_tasks(plain, executor, gpu_slots([]), poll_s=0.2, echo=lambda s: None)
    assert _seen(plain[0].log) == "unset"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    run_tasks([_echo_gpu("d", tmp_path)], executor, gpu_slots([]), poll_s=0.2, echo=lambda s: None)
    assert _seen(tmp_path / "d.log") == "3"


def test_a_failed_task_blocks_what_waits_for_it_and_the_rest_goes_on(tmp_path):
    tasks = [_echo_gpu("ok", tmp_path), _echo_gpu("bad", tmp_path, code=3),
             _echo_gpu("after_bad", tmp_path, after=["bad"]), _echo_gpu("after_ok", tmp_path, after=["ok"]),
             _echo_gpu("after_after", tmp_path, after=["after_bad"])]
    recorded, lines = [], []
    out = run_tasks(tasks, make_executor(ExecutorOptions("debug", folder=tmp_path / "s")), gpu_slots(["0"]),
                    on_success=lambda t: recorded.append(t.name), poll_s=0.0, echo=lines.append)
    assert {n: o.status for n, o in out.items()} == {"ok": "done", "bad": "failed", "after_bad": "blocked",
                                                     "after_ok": "done", "after_after": "blocked"}
    assert out["bad"].exit_code == 3 and "seen=0" in (tmp_path / "bad.log").read_text()  # its log stays
    assert recorded == ["ok", "after_ok"]
    def first(prefix: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(prefix))
    assert first("started: after_ok") > first("done: ok")
    with pytest.raises(ValueError, match="unknown task"):
        run_tasks([_echo_gpu("x", tmp_path, after=["nope"])], None, gpu_slots([]))


def test_recording_a_finished_task_does_not_hold_up_the_slot_it_freed(tmp_path):
    """on_success (a `dvc commit`: seconds) runs beside the loop: while the first task is still being
    recorded, the slot it freed has taken the next one."""
    lines = []

    def record(task):
        deadline = time.time() + 10
        while task.name == "a" and not any(line.startswith("started: b") for line in lines):
            if time.time() > deadline:
                raise TimeoutError("b did not start while a was being recorded")
            time.sleep(0.01)
    out = run_tasks([_echo_gpu("a", tmp_path), _echo_gpu("b", tmp_path)],
                    make_executor(ExecutorOptions("debug", folder=tmp_path / "s")), gpu_slots(["0"]),
                    on_success=record, poll_s=0.0, echo=lines.append)
    assert {n: o.status for n, o in out.items()} == {"a": "done", "b": "done"}, out
    assert [line.split(" (")[0] for line in lines] == ["started: a", "started: b", "done: a", "done: b"]


def test_no_task_starts_after_the_deadline_and_those_started_finish(tmp_path):
    """start_by: the task started before it runs to its end; the one whose slot frees only after it is
    left waiting, said so, and the loop ends without it."""
    slow = Task("slow", "sleep 2; echo finished", tmp_path / "slow.log", cwd=tmp_path)
    lines = []
    out = run_tasks([slow, _echo_gpu("next", tmp_path)], make_executor(ExecutorOptions("debug", folder=tmp_path / "s")),
                    gpu_slots([]), poll_s=0.0, echo=lines.append, start_by=time.time() + 1.0)
    assert (out["slow"].status, out["next"].status) == ("done", "waiting"), out
    assert out["next"].note == DEADLINE_NOTE and "finished" in (tmp_path / "slow.log").read_text()
    assert not (tmp_path / "next.log").exists() and lines[-1] == "deadline: 1 task(s) not started"


def test_the_gpu_runner_counts_only_a_deadline_as_not_started():
    """bench/gpu/job.py: a run left waiting by the deadline is not started (None, no failure); one left
    waiting by a stop, cut short by it, or whose job died is a failure (-1)."""
    from bench.gpu.job import exit_code
    assert exit_code(Outcome("waiting", note=DEADLINE_NOTE)) is None
    assert [exit_code(Outcome(s)) for s in ("waiting", "stopped", "failed")] == [-1, -1, -1]
    assert exit_code(Outcome("done", 0)) == 0 and exit_code(Outcome("failed", 3)) == 3


def test_a_failure_to_record_fails_the_task(tmp_path):
    def refuse(task):
        raise RuntimeError("lock held")
    out = run_tasks([_echo_gpu("a", tmp_path)], make_executor(ExecutorOptions("debug", folder=tmp_path / "s")),
                    gpu_slots([]), on_success=refuse, poll_s=0.0, echo=lambda s: None)
    assert out["a"].status == "failed" and "lock held" in out["a"].note


STOPPABLE = '''
import json, sys, time
from pathlib import Path
from cart.jobs import ExecutorOptions, Task, gpu_slots, make_executor, run_tasks
tmp, kind = Path(sys.argv[1]), sys.argv[2]
save_s, start_by = (sys.argv[3], time.time() + float(sys.argv[4])) if len(sys.argv) > 3 else ("1", None)
tasks = [Task("quick", "echo quick", tmp / "quick.log", cwd=tmp),
         Task("slow", f"trap 'sleep {save_s}; echo saved > saved; exit 143' TERM; echo running > running; sleep 60 & wait",
              tmp / "slow.log", cwd=tmp),
         Task("later", "echo later", tmp / "later.log", cwd=tmp, after=("slow",))]
out = run_tasks(tasks, make_executor(ExecutorOptions(kind, folder=tmp / "submitit")), gpu_slots(["0", "1"]),
                on_success=lambda t: print("recorded", t.name, flush=True), poll_s=0.2, start_by=start_by)
print(json.dumps({n: o.note for n, o in out.items()}), flush=True)
print(json.dumps({n: [o.status, o.exit_code] for n, o in out.items()}), flush=True)
'''


def _start_stoppable(tmp_path, kind, *args) -> subprocess.Popen:
    """STOPPABLE in its own process, once its slow command runs."""
    (tmp_path / "stoppable.py").write_text(STOPPABLE)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "stoppable.py"), str(tmp_path), kind, *args], env=env,
                            stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "running").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (tmp_path / "running").exists(), "the slow command never started"
    return proc


@pytest.mark.parametrize("kind", ["local", "debug"])
def test_sigterm_reaches_running_commands_which_are_waited_for(tmp_path, kind):
    """Stopping the engine passes SIGTERM down (local: controller, job, command; debug: the job runs
    in the engine's process) and waits for the command to exit (a training run saves its checkpoint
    then); what finished before is recorded, nothing new starts."""
    proc = _start_stoppable(tmp_path, kind)
    time.sleep(1.0)  # the quick task is collected within a poll
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert (tmp_path / "saved").read_text() == "saved\n"  # the command got SIGTERM and was let finish
    assert "recorded quick" in out
    assert json.loads(out.strip().splitlines()[-1]) == {"quick": ["done", 0], "slow": ["stopped", 143],
                                                       "later": ["waiting", None]}
    assert not (tmp_path / "later.log").exists()


def test_a_stop_before_the_deadline_leaves_its_unstarted_tasks_stopped_not_late(tmp_path):
    """A stop that comes before start_by, whose wait for a run saving its state outlasts start_by: the
    task it left unstarted is the stop's (no deadline note, so bench/gpu/job.py counts a failure)."""
    proc = _start_stoppable(tmp_path, "local", "6", "4")  # saving takes 6 s; the deadline is 4 s after the start
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    *_, notes, statuses = out.strip().splitlines()
    assert json.loads(statuses)["later"] == ["waiting", None] and json.loads(notes)["later"] == ""
    assert (tmp_path / "saved").read_text() == "saved\n" and "deadline:" not in out


def test_a_time_limited_job_saves_and_is_requeued_with_its_command(tmp_path):
    """submitit's time-limit signal (SLURM's too) stops the command with SIGTERM, waits for it, and
    requeues the same command, which then resumes (here: finds the file its first run saved)."""
    executor = submitit.LocalExecutor(tmp_path / "submitit")
    executor.update_parameters(timeout_min=0.1, signal_delay_s=4)  # the signal 2 s in
    cmd = ("if [ -f saved ]; then echo resumed; exit 0; fi; "
           "trap 'echo saving; touch saved; exit 143' TERM; sleep 60 & wait")
    job = executor.submit(ShellJob(cmd, str(tmp_path), str(tmp_path / "job.log"), {}))
    assert job.result() == 0
    lines = (tmp_path / "job.log").read_text().splitlines()
    assert lines.count(f"$ {cmd}") == 2
    assert [l for l in lines if l in ("saving", "resumed")] == ["saving", "resumed"]


def test_mps_daemon_runs_from_before_the_jobs_to_after_them(tmp_path, monkeypatch):
    calls = tmp_path / "mps_calls"
    _fake_tools(tmp_path, monkeypatch, nvidia_cuda_mps_control=(
        f'if [ "$1" = -d ]; then echo start >> {calls}; else read cmd; echo "$cmd" >> {calls}; fi'))
    task = Task("job", f"echo job >> {calls}", tmp_path / "job.log", cwd=tmp_path)
    with cuda_mps():
        run_tasks([task], make_executor(ExecutorOptions("debug", folder=tmp_path / "s")), gpu_slots([]),
                  poll_s=0.0, echo=lambda s: None)
    with pytest.raises(RuntimeError), cuda_mps():
        raise RuntimeError("a sweep that fails")
    assert calls.read_text().split() == ["start", "job", "quit", "start", "quit"]


def test_executor_options_are_checked_before_any_job(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--slurm-time"):
        ExecutorOptions("slurm", slurm_partition="gpu")
    with pytest.raises(ValueError, match="--slurm-option time"):
        ExecutorOptions("slurm", slurm_time_min=60, slurm_options=(("time", "10"),))
    with pytest.raises(ValueError, match="--executor"):
        ExecutorOptions("kubernetes")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    with pytest.raises(ValueError, match="srun"):
        make_executor(ExecutorOptions("slurm", folder=tmp_path, slurm_time_min=60))


# ---- the sweep, on the tiny profile's training stages under DVC -------------------------------------

def sh(cwd: Path, *cmd: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    if ok:
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def sweep(repo: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    return sh(repo, sys.executable, "-m", "pipeline.sweep", "--poll", "0.3", *args, ok=ok)


def dvc_status(repo: Path, *targets: str) -> set[str]:
    return set(json.loads(sh(repo, "dvc", "status", "--json", *targets).stdout or "{}"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_data) -> Path:
    """A DVC repository of the project with the tiny profile, its data stages recorded (the session's
    tiny data, built by the same stages from the same data params): Stage 1 at two R, one RAT+ run and
    its resolution adaptation (a training stage that reads another's runs)."""
    d = tmp_path_factory.mktemp("sweep")
    for item in ("cart", "pipeline", "configs", "dvc.yaml", ".dvcignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d / item)
    shutil.copytree(tiny_data / "data", d / "data")
    p = tiny_params()
    p["stage1"]["grid"]["n_loops"] = [2, 3]
    p["ratplus"]["variants"] = dict(list(p["ratplus"]["variants"].items())[:1])
    p["ratplus"]["seeds"] = p["ratplus_adapt"]["seeds"] = [42]
    p["ratplus_adapt"]["variants"] = dict(list(p["ratplus_adapt"]["variants"].items())[:1])
    write_params(d, p)
    sh(d, "git", "init", "-q", "-b", "main")
    sh(d, "dvc", "init", "-q")
    sh(d, "dvc", "config", "core.analytics", "false")
    sh(d, "dvc", "commit", "-q", "-f", "corpus", "tokenizer", "bins")
    assert dvc_status(d, "bins") == set()
    return d


@pytest.mark.slow
def test_sweep_plans_what_dvc_repro_would_run_and_refuses_stale_inputs(repo):
    """The adaptation reads the RAT+ runs: it waits for them, and alone it is refused while they are
    out of date; an out-of-date data stage is refused too. All before any job (no log written)."""
    out = sweep(repo, "--stages", "ratplus", "ratplus_adapt", "--dry-run")
    assert out.stdout.splitlines()[:3] == [
        "2 training stage(s) out of date, 0 up to date",
        "  ratplus@joint-42: python -m pipeline.train ratplus joint-s42",
        "  ratplus_adapt@D8-42: python -m pipeline.train ratplus_adapt D8-s42  (after ratplus@joint-42)"]
    out = sweep(repo, "--stages", "ratplus_adapt", "--executor", "debug", ok=False)
    assert out.returncode == 1 and "ratplus@joint-42" in out.stderr and "add them to --stages" in out.stderr
    original = (repo / "params.yaml").read_text()
    try:
        p = yaml.safe_load(original)
        p["tokenizer"]["vocab_size"] = 600
        write_params(repo, p)
        out = sweep(repo, "--stages", "stage1", "--executor", "debug", ok=False)
        assert out.returncode == 1 and "run `dvc repro corpus tokenizer bins` first" in out.stderr
    finally:
        (repo / "params.yaml").write_text(original)
    assert not (repo / "logs").exists()


@pytest.mark.slow
def test_sweep_runs_stale_stages_records_them_and_resubmits_only_the_failed(repo):
    """Local executor, two fake GPUs: each job its own GPU, running its stage's dvc.yaml command; a job
    made to fail (a corrupt run folder) leaves its stage out of date with its log, the other is
    committed; a second sweep (debug executor) submits only the failed stage, and then DVC has
    nothing to train."""
    broken = repo / "runs/stage1/d32-P1-R3/config.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    out = sweep(repo, "--stages", "stage1", "--executor", "local", "--gpus", "0,1", ok=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert sorted(l.split()[1] for l in out.stdout.splitlines() if l.startswith("started:")) == \
        ["stage1@32-1-2", "stage1@32-1-3"]
    logs = {s: (repo / f"logs/sweep/stage1@32-1-{s}.log").read_text().splitlines() for s in (2, 3)}
    assert sorted(lines[0].rpartition("CUDA_VISIBLE_DEVICES=")[2] for lines in logs.values()) == ["0", "1"]
    assert logs[2][1] == "$ python -m pipeline.train stage1 d32-P1-R2"  # dvc.yaml's cmd for the stage
    assert any("not valid JSON" in line for line in logs[3])
    assert dvc_status(repo, "stage1") == {"stage1@32-1-3"}

    weights = repo / "runs/stage1/d32-P1-R2/model.safetensors"
    mtime = weights.stat().st_mtime_ns
    broken.unlink()
    out = sweep(repo, "--stages", "stage1", "--executor", "debug")
    assert "1 training stage(s) out of date, 1 up to date" in out.stdout
    assert [l.split()[1] for l in out.stdout.splitlines() if l.startswith("started:")] == ["stage1@32-1-3"]
    assert weights.stat().st_mtime_ns == mtime
    assert dvc_status(repo, "stage1") == set()
    dry = sh(repo, "dvc", "repro", "--dry", "stage1").stdout
    assert "Running stage" not in dry and "didn't change" in dry


def test_slurm_job_script_asks_for_the_partition_time_gpus_and_runs_the_stage(tmp_path, monkeypatch):
    """Through stand-in `srun` and `sbatch`: the job script submitit writes for one stage."""
    _fake_tools(tmp_path, monkeypatch, srun="exit 0", sbatch='echo "Submitted batch job 4242"')
    task = Task("stage1@64-1-2", shlex.join(train_command("stage1", "d64-P1-R2")), tmp_path / "stage.log")
    opts = ExecutorOptions("slurm", folder=tmp_path / "submitit", gpus_per_job=2, slurm_partition="gpu",
                           slurm_time_min=240, slurm_setup=("source .venv/bin/activate",),
                           slurm_options=(("qos", "high"),))
    job = submit(make_executor(opts), task, {})
    assert job.job_id == "4242"
    script = job.paths.submission_file.read_text().splitlines()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --job-name=stage1@64-1-2", "#SBATCH --comment='python -m pipeline.train stage1 d64-P1-R2'",
                 "#SBATCH --qos=high", "source .venv/bin/activate"):
        assert line in script
    assert any(l.startswith("#SBATCH --signal=USR2@") for l in script)  # time to save before the limit


# ---- the GPU-machine runner -------------------------------------------------------------------------

@pytest.mark.slow
def test_gpu_job_runs_a_groups_runs_in_parallel_jobs_and_stops_on_a_failure(tiny_project):
    """`python -m bench.gpu.job train:stage1 summarize:stage1 --parallel 2`: every run of the grid as a
    job, each logged to logs/<group>-<name>.log; a failed run ends the job with exit 1 once the
    others have finished, before the next step."""
    p = yaml.safe_load((tiny_project / "params.yaml").read_text())
    p["stage1"]["grid"]["n_loops"] = [2, 3]
    write_params(tiny_project, p)
    broken = tiny_project / "runs/stage1/d32-P1-R3/config.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "bench.gpu.job", "train:stage1", "summarize:stage1", "--parallel",
                          "2"], cwd=tiny_project, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "pipeline.train stage1 d32-P1-R2 --no-progress" in out.stdout and "exit 0" in out.stdout
    assert "FAILED: ['pipeline.train stage1 d32-P1-R3 --no-progress']" in out.stdout
    assert "summarize:stage1" not in out.stdout
    assert (tiny_project / "runs/stage1/d32-P1-R2/summary.json").is_file()
    assert "not valid JSON" in (tiny_project / "logs/stage1-d32-P1-R3.log").read_text()
