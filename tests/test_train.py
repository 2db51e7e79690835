"""The training stage: outputs, no retraining, exact resume after SIGKILL/SIGTERM, config
changes, NaN handling and up-front validation."""
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from cart.training.checkpoint import SUMMARY
from cart.experiments import resolve_run
from cart.params import load_params
from cart.training.curves import read_curves
from cart.experiments import RunPaths
from cart.training.trainer import NonFiniteError, Trainer, train_run
from conftest import run_spec as spec_for
from conftest import tiny_params, write_params

ROOT = Path(__file__).resolve().parents[1]


def weights(path: Path) -> dict:
    return safetensors.torch.load_file(str(path))


def test_run_writes_outputs_and_is_not_retrained(tiny_project, capsys):
    spec = spec_for()
    paths = RunPaths.for_run(spec.group, spec.name)
    summary = train_run(spec, paths, progress=False)
    assert summary["status"] == "complete" and summary["steps"] == 12
    assert set(summary["final_eval"]) == {"tinystories", "wikipedia", "fineweb_edu"}
    metrics = json.loads(paths.metrics_file.read_text())
    assert metrics["ppl_wikipedia"] > 1 and 0 < metrics["spectral_radius"] < 1
    train, evals = read_curves(paths.plots_dir)  # DVCLive's layout, one file per curve
    assert list(train["step"]) == list(range(2, 13, 2)) and train[["tokens", "loss", "lr"]].notna().all().all()
    assert (paths.plots_dir / "plots/metrics/train/loss.tsv").read_text().splitlines()[0] == "step\tloss"
    assert len(evals) == 2 * 3 and set(evals["domain"]) == {"tinystories", "wikipedia", "fineweb_edu"}
    mtime = (paths.run_dir / "model.safetensors").stat().st_mtime_ns
    paths.metrics_file.unlink()  # what DVC does to non-persistent outputs before re-running a stage
    again = train_run(spec, paths, progress=False)
    assert json.loads(paths.metrics_file.read_text()) == metrics
    assert "already complete" in capsys.readouterr().out
    assert again == summary and (paths.run_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_peak_memory_of_training_and_of_evaluation_are_recorded_apart(tiny_project, monkeypatch):
    """A fake allocator counter (CPU has none): whatever the device allocated between two readings is
    that phase's, so the evaluations' peak (here 0.5 GiB) never hides in training's (2 GiB), and the
    run's summary and curves carry each."""
    import cart.training.trainer as train_mod
    high = {"value": 0.0}

    def allocating(fn, gib):  # fn, noting that it allocated `gib` GiB at its peak
        def wrapped(*args, **kwargs):
            high["value"] = max(high["value"], gib)
            return fn(*args, **kwargs)
        return wrapped

    def read(device):
        value, high["value"] = high["value"], 0.0  # a reading restarts the counter, as the reset does
        return value
    monkeypatch.setattr(train_mod, "peak_memory_gib", read)
    monkeypatch.setattr(train_mod.torch.cuda, "reset_peak_memory_stats", lambda device: None)
    monkeypatch.setattr(train_mod, "train_step", allocating(train_mod.train_step, 2.0))
    monkeypatch.setattr(train_mod, "eval_loss", allocating(train_mod.eval_loss, 0.5))
    spec = spec_for()
    paths = RunPaths.for_run(spec.group, spec.name)
    summary = train_run(spec, paths, progress=False)
    assert summary["peak_mem_gib"] == 2.0 and summary["eval_peak_mem_gib"] == 0.5
    train, _ = read_curves(paths.plots_dir)
    assert list(train.dropna(subset=["eval_peak_mem_gib"])["eval_peak_mem_gib"]) == [0.5, 0.5]


def test_cpu_runs_record_no_peak_memory(tiny_project):
    spec = spec_for()
    summary = train_run(spec, RunPaths.for_run(spec.group, spec.name), progress=False)
    assert summary["peak_mem_gib"] is None and summary["eval_peak_mem_gib"] is None


def test_logging_settings_do_not_retrain(tiny_project, capsys):
    spec = spec_for()
    paths = RunPaths.for_run(spec.group, spec.name)
    first = train_run(spec, paths, progress=False)
    p = tiny_params()
    p["train"].update(log_every=3, checkpoint_every=7, nproc=1)
    write_params(tiny_project, p)
    again = train_run(spec_for(), paths, progress=False)
    assert "already complete" in capsys.readouterr().out and again == first


def test_changed_config_starts_over(tiny_project, capsys):
    spec = spec_for()
    paths = RunPaths.for_run(spec.group, spec.name)
    train_run(spec, paths, progress=False)
    p = tiny_params()
    p["stage2"]["run"]["steps"] = 8
    p["stage2"]["run"]["eval_every"] = 4
    write_params(tiny_project, p)
    summary = train_run(spec_for(), paths, progress=False)
    assert "starting over" in capsys.readouterr().out and summary["steps"] == 8
    assert list(read_curves(paths.plots_dir)[0]["step"]) == [2, 4, 6, 8]


def test_dense_and_every_ablation_train(tiny_project):
    names = [("dense", "L2-s42")] + [("ablation", v) for v in load_params()["ablation"]["variants"]]
    for group, name in names:
        spec = spec_for(group, name)
        summary = train_run(spec, RunPaths.for_run(group, name), progress=False)
        assert summary["status"] == "complete", (group, name)
        assert summary["final_train_loss"] < 7.0


def _run_cli(cwd: Path, *args, **popen):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "pipeline.train", "stage2", "d32-R2-s42", "--no-progress", *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def _long_run(project: Path) -> None:
    p = tiny_params()
    p["stage2"]["run"].update(steps=150, eval_every=50)
    p["train"].update(checkpoint_every=5, log_every=5)
    write_params(project, p)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_resumes_bit_identical(tiny_data, tmp_path, sig):
    import shutil
    runs = {}
    for label in ("reference", "interrupted"):
        proj = tmp_path / label
        proj.mkdir()
        shutil.copytree(tiny_data / "data", proj / "data")
        _long_run(proj)
        runs[label] = proj
    ref = _run_cli(runs["reference"])
    assert ref.wait(timeout=600) == 0, ref.stdout.read().decode()

    proj = runs["interrupted"]
    state = proj / "runs/stage2/d32-R2-s42/trainer_state.pt"
    proc = _run_cli(proj)
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.5))
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    out = proc.stdout.read().decode()
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGTERM), out
    if sig == signal.SIGTERM:
        assert "checkpoint saved" in out
    assert not (proj / "runs/stage2/d32-R2-s42" / SUMMARY).exists()  # it really stopped mid-run
    resumed = _run_cli(proj)
    out = resumed.stdout.read().decode()
    assert resumed.wait(timeout=600) == 0, out
    assert "resuming at step" in out

    a = weights(runs["reference"] / "runs/stage2/d32-R2-s42/model.safetensors")
    b = weights(proj / "runs/stage2/d32-R2-s42/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for split in ("train", "val"):  # the resumed run's curves hold each step once, as the uninterrupted run's
        ref = sorted((runs["reference"] / "plots/stage2/d32-R2-s42/plots/metrics" / split).glob("*.tsv"))
        ours = sorted((proj / "plots/stage2/d32-R2-s42/plots/metrics" / split).glob("*.tsv"))
        assert [f.name for f in ref] == [f.name for f in ours]
        skip = {"tokens_per_s.tsv", "mfu.tsv"}  # wall-clock rates differ between runs
        for a_file, b_file in zip(ref, ours):
            if a_file.name not in skip:
                assert a_file.read_text() == b_file.read_text(), a_file.name


def test_nonfinite_loss_stops_naming_the_step_and_keeps_checkpoint(tiny_project):
    p = tiny_params()
    p["train"].update(lr=1e6, lr_width_scaling=False, grad_clip=0.0, checkpoint_every=1)
    write_params(tiny_project, p)
    spec = spec_for()
    paths = RunPaths.for_run(spec.group, spec.name)
    with pytest.raises(NonFiniteError, match=r"step \d+"):
        Trainer(spec, paths, progress=False).run()
    summary = json.loads((paths.run_dir / SUMMARY).read_text())
    assert summary["status"] == "failed" and "non-finite" in summary["failure"]
    assert json.loads(paths.metrics_file.read_text())["status"] == "failed"
    state = torch.load(paths.run_dir / "trainer_state.pt", weights_only=True)
    w = weights(paths.run_dir / state["weights"])
    assert all(torch.isfinite(t).all() for t in w.values())  # the last good checkpoint


def test_nonfinite_step_between_checkpoints_is_named_exactly(tiny_project, monkeypatch):
    """The finiteness check runs one step late (no host sync per step), yet it names the bad step
    and no checkpoint is written from it or from the step after."""
    import cart.training.trainer as T
    p = tiny_params()
    p["train"].update(checkpoint_every=2, log_every=100)
    write_params(tiny_project, p)
    real, calls = T.train_step, []

    def poisoned(*args, **kwargs):
        loss, norm = real(*args, **kwargs)
        calls.append(1)
        return (loss, torch.full_like(norm, float("nan"))) if len(calls) == 3 else (loss, norm)

    monkeypatch.setattr(T, "train_step", poisoned)
    spec = spec_for()
    paths = RunPaths.for_run(spec.group, spec.name)
    with pytest.raises(NonFiniteError, match=r"at step 3 "):
        Trainer(spec, paths, progress=False).run()
    assert len(calls) == 4  # found while step 4 ran, before step 4's checkpoint
    assert torch.load(paths.run_dir / "trainer_state.pt", weights_only=True)["step"] == 2


def test_a_nonfinite_validation_loss_fails_the_run_naming_domain_and_step(tiny_project, monkeypatch):
    """Recorded as training records a non-finite step (a failed summary, an error naming where), never
    a complete run whose evaluation is null."""
    import cart.training.trainer as T
    real, calls = T.eval_loss, []

    def nan_on_second_domain(*args, **kwargs):
        loss, n = real(*args, **kwargs)
        calls.append(1)
        return (float("nan") if len(calls) == 2 else loss), n
    monkeypatch.setattr(T, "eval_loss", nan_on_second_domain)
    spec = spec_for()
    paths = RunPaths.for_run(spec.group, spec.name)
    with pytest.raises(NonFiniteError, match=r"^stage2/d32-R2-s42: non-finite validation loss on wikipedia at "
                                             r"step 6; last good checkpoint kept$"):
        Trainer(spec, paths, progress=False).run()
    summary = json.loads((paths.run_dir / SUMMARY).read_text())
    assert summary["status"] == "failed" and "validation loss on wikipedia" in summary["failure"]


def test_vocab_mismatch_is_rejected_before_training(tiny_project):
    spec = resolve_run(load_params(), "stage2", "d32-R2-s42", vocab_size=999)
    with pytest.raises(ValueError, match="vocab mismatch"):
        Trainer(spec, RunPaths.for_run("stage2", "d32-R2-s42"), progress=False)


def _timeless(record: dict) -> dict:
    """A summary or metrics record without its wall-clock rates and timings, which differ between any two runs."""
    return {k: v for k, v in record.items() if k not in ("wall_s", "tokens_per_s", "mfu", "timing")}


def test_a_run_stopped_after_its_final_checkpoint_ends_as_an_uninterrupted_run(tiny_project, monkeypatch):
    """The disk fills (or the process dies) while the final weights are written, after the final
    checkpoint and before summary.json: the re-run trains no step, yet writes the summary and metrics
    the uninterrupted run wrote (the final evaluation and loss travel with the final checkpoint), and
    removes the dead write's temporary file."""
    import errno

    import cart.training.checkpoint as ckpt_mod
    spec = spec_for()
    paths = RunPaths.for_run(spec.group, spec.name)
    ref_summary = train_run(spec, paths, progress=False)
    ref_metrics = json.loads(paths.metrics_file.read_text())
    ref_weights = weights(paths.run_dir / "model.safetensors")
    for folder in (paths.run_dir, paths.plots_dir):
        shutil.rmtree(folder)
    paths.metrics_file.unlink()

    real_save = ckpt_mod.safetensors.torch.save_model

    def full_disk_on_final_weights(model, filename, *args, **kwargs):
        if Path(filename).name.startswith(".model.safetensors."):  # the final copy, after the final checkpoint
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(model, filename, *args, **kwargs)
    monkeypatch.setattr(ckpt_mod.safetensors.torch, "save_model", full_disk_on_final_weights)
    with pytest.raises(OSError, match=r"the disk is full: writing .*model\.safetensors failed"):
        train_run(spec, paths, progress=False)
    monkeypatch.setattr(ckpt_mod.safetensors.torch, "save_model", real_save)
    assert not (paths.run_dir / SUMMARY).exists()
    state = torch.load(paths.run_dir / "trainer_state.pt", weights_only=True)
    assert state["step"] == 12
    stale = paths.run_dir / ".model.safetensors.killed.tmp"  # what a SIGKILL mid-write leaves
    stale.write_bytes(b"partial")

    summary = train_run(spec, paths, progress=False)
    assert _timeless(summary) == _timeless(ref_summary)  # final_eval and final_train_loss bit-equal: the same ops
    assert _timeless(json.loads((paths.run_dir / SUMMARY).read_text())) == _timeless(ref_summary)
    assert _timeless(json.loads(paths.metrics_file.read_text())) == _timeless(ref_metrics)
    assert {"ppl_wikipedia", "loss_wikipedia", "bpb_wikipedia"} <= set(ref_metrics)
    resumed = weights(paths.run_dir / "model.safetensors")
    assert resumed.keys() == ref_weights.keys() and all(torch.equal(resumed[k], ref_weights[k]) for k in resumed)
    assert not stale.exists()

    (paths.run_dir / SUMMARY).unlink()  # a final checkpoint that does not carry its evaluation is refused
    del state["last_eval"]
    torch.save(state, paths.run_dir / "trainer_state.pt")
    with pytest.raises(ValueError, match=r"trainer_state\.pt: the checkpoint of the final step holds no final "
                                         r"loss and evaluation"):
        train_run(spec, paths, progress=False)


@pytest.mark.parametrize("content,problem", [
    ([1, 2], "a JSON list, not an object"),
    ({"status": "complete"}, "params None is not"),
    ({"status": "complete", "steps": 12, "final_train_loss": None, "final_eval": None, "tokens_per_s": 1.0,
      "mfu": None, "spectral_radius": 0.5, "params": {"stored": 1, "effective": 1}},
     "a complete run has no final_train_loss"),
])
def test_a_summary_that_is_not_a_run_summary_is_one_error_naming_it(tiny_project, content, problem):
    from cart.training.checkpoint import write_run_config
    spec = spec_for()
    paths = RunPaths.for_run(spec.group, spec.name)
    paths.run_dir.mkdir(parents=True)
    trainer = Trainer(spec, paths, progress=False)
    write_run_config(paths.run_dir, trainer.run_config)
    (paths.run_dir / SUMMARY).write_text(json.dumps(content))
    with pytest.raises(ValueError, match=rf"summary\.json: not a run summary \({problem}"):
        train_run(spec, paths, progress=False)


def test_damaged_checkpoint_is_detected(tiny_project):
    p = tiny_params()
    p["stage2"]["run"].update(steps=8)
    write_params(tiny_project, p)
    spec = spec_for()
    paths = RunPaths.for_run(spec.group, spec.name)
    train_run(spec, paths, progress=False)
    (paths.run_dir / SUMMARY).unlink()  # pretend it was interrupted after the last checkpoint
    state = torch.load(paths.run_dir / "trainer_state.pt", weights_only=True)
    wfile = paths.run_dir / state["weights"]
    wfile.write_bytes(wfile.read_bytes()[:-100])
    with pytest.raises(ValueError, match="do not match trainer_state"):
        Trainer(spec, paths, progress=False).run()


def test_ddp_two_processes_match_one(tiny_data, tmp_path):
    """train.nproc: 2 re-launches under torchrun (gloo on CPU); accumulation is split across ranks,
    so the run sees the same batches per step and ends at (numerically) the same weights; with
    train.zero_optimizer each rank keeps half the optimizer state, and the checkpoint all of it;
    with train.data_parallel: fsdp2 each rank keeps half of every block's parameters, gradients and
    optimizer state, and the checkpoint is the whole state in the one-process format.

    Tolerances: the runs differ only in the order in which micro-batch gradients are summed (per rank,
    then across ranks), so float32 rounding (eps 1.2e-7) is all that separates them: logged losses
    agree to 1e-5 relative (~100 eps; the loss moves by >= 0.03 between logs), weights of ~0.02 to 1e-4."""
    import shutil
    finals, losses, states = {}, {}, {}
    for nproc, zero, parallel in ((1, False, "ddp"), (2, False, "ddp"), (2, True, "ddp"), (2, False, "fsdp2")):
        key = nproc, zero, parallel
        proj = tmp_path / f"nproc{nproc}-zero{zero}-{parallel}"
        proj.mkdir()
        shutil.copytree(tiny_data / "data", proj / "data")
        p = tiny_params()
        p["train"].update(nproc=nproc, zero_optimizer=zero, data_parallel=parallel)
        write_params(proj, p)
        proc = _run_cli(proj)
        out = proc.stdout.read().decode()
        assert proc.wait(timeout=600) == 0, out
        assert out.count("complete | steps 12") == 1  # rank 0 alone reports
        assert ("optimizer state sharded across 2 ranks (ZeroRedundancyOptimizer)" in out) == zero
        assert ("optimizer state sharded across 2 ranks (FSDP2)" in out) == (parallel == "fsdp2")
        finals[key] = weights(proj / "runs/stage2/d32-R2-s42/model.safetensors")
        losses[key] = list(read_curves(proj / "plots/stage2/d32-R2-s42")[0]["loss"])
        summary = json.loads((proj / "runs/stage2/d32-R2-s42" / SUMMARY).read_text())
        assert summary["tokens"] == 12 * 2 * 2 * 32  # same tokens per step at any process count
        states[key] = torch.load(proj / "runs/stage2/d32-R2-s42/trainer_state.pt", weights_only=False)["optimizer"]
        assert len(states[key]["state"]) == len(finals[key])  # every parameter's moments
    one, ddp, fsdp2 = (1, False, "ddp"), (2, False, "ddp"), (2, False, "fsdp2")
    assert len(losses[one]) == 6
    for other in (ddp, fsdp2):
        assert losses[other] == pytest.approx(losses[one], rel=1e-5), other
    assert losses[fsdp2] == pytest.approx(losses[ddp], rel=1e-5)
    # the fsdp2 checkpoint's optimizer state is the one-process format: the same numbering and groups
    assert states[fsdp2]["param_groups"] == states[one]["param_groups"]
    for i, moments in states[one]["state"].items():
        assert states[fsdp2]["state"][i].keys() == moments.keys()
        assert all(states[fsdp2]["state"][i][k].shape == v.shape for k, v in moments.items())
    for k in finals[one]:
        assert torch.allclose(finals[one][k], finals[ddp][k], atol=1e-4), k
        assert torch.allclose(finals[one][k], finals[fsdp2][k], atol=1e-4), k
        # sharding the optimizer state changes no update; held to rounding, not bits, as gloo does not
        # promise the same sums from two launches (pytorch/pytorch#36871)
        assert torch.allclose(finals[ddp][k], finals[2, True, "ddp"][k], atol=1e-4), k


def _fsdp2_rank(rank: int, world: int, project: str, store: str, stop_after: int | None,
                regathered: str | None = None) -> None:
    """One rank of a train.data_parallel: fsdp2 run of the project's stage2/d32-R2-s42, as torchrun
    would start it; `stop_after`: every rank gets SIGTERM's flag after that step (a deterministic
    interruption: checkpoint, then exit); `regathered`: where rank 0 saves the state the run holds
    right after loading its checkpoint, gathered whole again from the shards."""
    import torch.distributed as dist

    import cart.training.trainer as T
    from cart.training import distributed
    os.chdir(project)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    if stop_after is not None:
        real = T.Trainer._loop_kwargs

        def stopping(self, step):
            if step + 1 == stop_after:
                self._signal = signal.SIGTERM
            return real(self, step)
        T.Trainer._loop_kwargs = stopping
    if regathered is not None:
        real_load = T.Trainer._load_checkpoint

        def load_then_gather(self):
            step = real_load(self)
            state = {"weights": distributed.full_model_state(self.model),
                     "optimizer": distributed.full_optimizer_state(self.model, self.opt),
                     "reader": self.reader.state_dict(), "scheduler": self.sched.state_dict()}
            if rank == 0:
                torch.save(state, regathered)
            return step
        T.Trainer._load_checkpoint = load_then_gather
    spec = spec_for()
    try:
        T.train_run(spec, RunPaths.for_run(spec.group, spec.name), progress=False)
    except SystemExit as e:
        if stop_after is None or e.code != 128 + signal.SIGTERM:
            raise RuntimeError(f"rank {rank} exited with {e.code}") from None
        return
    if stop_after is not None:
        raise RuntimeError(f"rank {rank} was not interrupted")


def test_fsdp2_resume_is_exact_and_its_checkpoint_loads_in_one_process(tiny_data, tmp_path, capsys):
    """A train.data_parallel: fsdp2 run stopped after step 5 writes its checkpoint gathered whole from
    the shards; resumed under fsdp2, every rank keeps its shard of it, and the state gathered again
    right after loading is the checkpoint bit for bit (weights, optimizer moments and step, reader
    position, scheduler): resume moves data and computes nothing. The resumed run then ends at the
    uninterrupted fsdp2 run's weights to float rounding (1e-4 on weights of ~0.02): gloo does not
    promise the same sums from two launches on CPU (pytorch/pytorch#36871), so the continuation is
    held to rounding, far below what a faulty resume moves (a reader one window off, or lost
    optimizer moments: >= 3e-2). The same checkpoint resumed by one process (train.nproc: 1) ends
    there too (one process sums the micro-batch gradients in another order)."""
    import torch.multiprocessing as mp

    def project(name: str, nproc: int) -> Path:
        proj = tmp_path / name
        proj.mkdir()
        shutil.copytree(tiny_data / "data", proj / "data")
        p = tiny_params()
        p["train"].update(nproc=nproc, data_parallel="fsdp2")
        write_params(proj, p)
        return proj

    def launch(proj: Path, stop_after: int | None = None, regathered: Path | None = None) -> None:
        store = tmp_path / f"store-{proj.name}-{stop_after}"
        mp.start_processes(_fsdp2_rank, args=(2, str(proj), str(store), stop_after,
                                              None if regathered is None else str(regathered)),
                           nprocs=2, start_method="spawn")

    run = "runs/stage2/d32-R2-s42"
    straight, stopped = project("straight", 2), project("stopped", 2)
    launch(straight)
    launch(stopped, stop_after=5)
    checkpoint = torch.load(stopped / run / "trainer_state.pt", weights_only=True)
    assert checkpoint["step"] == 5
    assert not (stopped / run / SUMMARY).exists()
    alone = tmp_path / "alone"  # the stopped run's folder, resumed by one process
    shutil.copytree(stopped, alone)
    p = tiny_params()
    p["train"].update(nproc=1, data_parallel="fsdp2")
    write_params(alone, p)
    launch(stopped, regathered=tmp_path / "regathered.pt")
    regathered = torch.load(tmp_path / "regathered.pt", weights_only=True)
    saved = {"weights": weights(alone / run / checkpoint["weights"])} \
        | {k: checkpoint[k] for k in ("optimizer", "reader", "scheduler")}
    # bit for bit (rtol = atol = 0), every tensor, number and key; a list and a tuple of the same items
    # alike (an optimizer's betas come back from set_optimizer_state_dict as a list)
    torch.testing.assert_close(regathered, saved, rtol=0, atol=0)

    a, b = weights(straight / run / "model.safetensors"), weights(stopped / run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    summaries = [json.loads((p / run / SUMMARY).read_text()) for p in (straight, stopped)]
    assert summaries[1]["final_train_loss"] == pytest.approx(summaries[0]["final_train_loss"], rel=1e-5)
    assert summaries[1]["final_eval"].keys() == summaries[0]["final_eval"].keys()
    for domain, values in summaries[0]["final_eval"].items():
        assert summaries[1]["final_eval"][domain] == pytest.approx(values, rel=1e-5), domain

    cwd = os.getcwd()
    os.chdir(alone)
    try:
        spec = spec_for()
        summary = train_run(spec, RunPaths.for_run(spec.group, spec.name), progress=False)
    finally:
        os.chdir(cwd)
    assert "resuming at step 5/12" in capsys.readouterr().out and summary["status"] == "complete"
    c = weights(alone / run / "model.safetensors")
    assert c.keys() == a.keys() and all(torch.allclose(a[k], c[k], atol=1e-4) for k in a)


def _fsdp2_gradients_rank(rank: int, world: int, store: str, out: str) -> None:
    """One rank of test_fsdp2_gradients_match_one_process_for_every_family: each family's model sharded
    over the ranks, each rank a half of the batch; rank 0 saves every run's largest gradient error."""
    import torch.distributed as dist

    from cart.experiments import resolve_run, run_names
    from cart.models import build_model
    from cart.training import distributed
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    params = tiny_params()
    names = run_names(params, ("dense", "lrt", "ratplus", "ablation"))
    errors = {}
    for group, run_names_ in names.items():
        for name in run_names_:
            spec = resolve_run(params, group, name, params["tokenizer"]["vocab_size"])
            torch.manual_seed(0)
            whole = build_model(spec.model)
            torch.manual_seed(0)
            sharded = distributed.shard(build_model(spec.model), distributed.DistInfo(rank, world, rank),
                                        torch.device("cpu"))
            x = torch.randint(0, spec.model.vocab_size, (2 * world, 32), generator=torch.Generator().manual_seed(1))
            mine = x[2 * rank:2 * rank + 2]
            for kwargs in spec.model.train_substeps():
                whole(x, targets=x, **kwargs).backward()
                sharded(mine, targets=mine, **kwargs).backward()
            reference = {k: p.grad for k, p in whole.named_parameters()}
            errors[f"{group}/{name}"] = max(
                (distributed.full_tensor(p.grad) - reference[k]).abs().max().item()
                if p.grad is not None and reference[k] is not None else
                0.0 if p.grad is None and reference[k] is None else float("inf")  # a gradient on one side only
                for k, p in sharded.named_parameters())
    if rank == 0:
        torch.save(errors, out)
    dist.destroy_process_group()


def test_fsdp2_gradients_match_one_process_for_every_family(tmp_path):
    """fully_shard per block, then the root, computes every family's gradients (CART with its shared
    core called R times and every ablation, Dense, LRT, RAT+ with its two sub-steps): each rank's half
    of the batch, reduce-scattered, gives the whole batch's gradient to float rounding: 5e-7, ~20 float32
    ulps at the largest gradient (~0.2), the two halves summed in another order; a gradient not reduced
    or a shard lost errs by the size of the gradient itself."""
    import torch.multiprocessing as mp
    out = tmp_path / "errors.pt"
    mp.start_processes(_fsdp2_gradients_rank, args=(2, str(tmp_path / "store"), str(out)), nprocs=2,
                       start_method="spawn")
    errors = torch.load(out, weights_only=True)
    assert {k.split("/")[0] for k in errors} == {"dense", "lrt", "ratplus", "ablation"}
    assert all(e < 5e-7 for e in errors.values()), errors


def test_fsdp2_reads_checkpoint_weights_with_the_one_process_checks(tmp_path):
    """An FSDP2 resume reads the whole weights file on every rank (checkpoint.read_weights): another
    model's names and non-finite weights are refused as load_weights refuses them, naming the file."""
    from cart.training.checkpoint import read_weights, save_weights
    model = torch.nn.Linear(4, 4)
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    assert read_weights(model, path).keys() == {"weight", "bias"}
    with pytest.raises(ValueError, match=r"w\.safetensors does not match the model: missing \['0\.bias', '0\.weight'\]"):
        read_weights(torch.nn.Sequential(model), path)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    save_weights(model, path)
    with pytest.raises(ValueError, match=r"w\.safetensors: tensor weight holds NaN or infinite values$"):
        read_weights(model, path)


def test_fsdp2_with_zero_optimizer_is_refused():
    """train.zero_optimizer shards a DDP run's optimizer state; fsdp2 shards it already: together, a
    ValueError naming both keys, before any work; an unknown train.data_parallel names its choices."""
    from cart.experiments import TrainSettings
    from cart.params import build
    train = tiny_params()["train"]
    with pytest.raises(ValueError, match=r"^train: zero_optimizer: .* data_parallel: fsdp2 shards it already; set "
                                         r"zero_optimizer: false or data_parallel: ddp$"):
        build(TrainSettings, train | {"zero_optimizer": True, "data_parallel": "fsdp2"}, "train")
    with pytest.raises(ValueError, match=r"^train\.data_parallel: 'fsdp' is not one of \['ddp', 'fsdp2'\]$"):
        build(TrainSettings, train | {"data_parallel": "fsdp"}, "train")
    for zero, parallel in ((True, "ddp"), (False, "fsdp2")):
        assert build(TrainSettings, train | {"zero_optimizer": zero, "data_parallel": parallel}, "train")


def test_mfu_is_per_gpu_under_ddp():
    """tokens/s counts every rank's tokens; MFU divides by one GPU's peak, so per GPU it is the rank share."""
    from types import SimpleNamespace

    from cart import mfu
    from cart.models import CARTConfig
    from cart.training.trainer import Trainer
    model = CARTConfig(vocab_size=64, d_model=32, head_dim=16, n_prelude=1, n_loops=2)
    one = SimpleNamespace(spec=SimpleNamespace(model=model), peak=1e12, dist=SimpleNamespace(world=1))
    two = SimpleNamespace(spec=SimpleNamespace(model=model), peak=1e12, dist=SimpleNamespace(world=2))
    assert Trainer._mfu(one, 2e6) == mfu(model, 2e6, 1e12)
    assert Trainer._mfu(two, 2e6) == mfu(model, 1e6, 1e12)
    assert Trainer._mfu(SimpleNamespace(peak=None), 2e6) is None  # CPU: no peak, no MFU


def test_ddp_buckets_are_the_train_settings(tmp_path):
    """train.ddp_bucket_cap_mb / ddp_gradient_as_bucket_view reach DDP (one gloo process standing in);
    the models' constant buffers are not re-broadcast before every forward."""
    import torch.distributed as dist

    from cart.training import distributed
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = torch.nn.Linear(4, 4)
        ddp = distributed.wrap(model, distributed.DistInfo(0, 2, 0), torch.device("cpu"), 50, True)
        assert ddp.bucket_bytes_cap == 50 * 1024 * 1024 and ddp.gradient_as_bucket_view
        plain = distributed.wrap(model, distributed.DistInfo(0, 2, 0), torch.device("cpu"))
        assert plain.bucket_bytes_cap == 25 * 1024 * 1024 and not plain.gradient_as_bucket_view
        assert not ddp.broadcast_buffers and not plain.broadcast_buffers
    finally:
        dist.destroy_process_group()


def test_fp8_off_cuda_is_refused_before_training(tiny_project):
    p = tiny_params()
    p["train"]["fp8"] = True
    write_params(tiny_project, p)
    spec = spec_for()
    with pytest.raises(ValueError, match=r"^train\.fp8: float8 training needs a CUDA GPU with FP8 .* this run's "
                                         r"device is cpu; set train\.fp8: false$"):
        Trainer(spec, RunPaths.for_run(spec.group, spec.name), progress=False)
    assert not RunPaths.for_run(spec.group, spec.name).run_dir.exists()


@pytest.mark.parametrize("mode,passed", [("default", None), ("reduce-overhead", "reduce-overhead")])
def test_compile_mode_reaches_torch_compile(tiny_project, monkeypatch, mode, passed):
    """train.compile_mode is the mode the training loss is compiled with ("default": torch's own), and
    under reduce-overhead (CUDA graphs) every step is told its loss replays graphs."""
    import cart.training.trainer
    seen, graphed = [], set()
    real, real_step = cart.training.trainer.make_loss_fn, cart.training.trainer.train_step
    monkeypatch.setattr(cart.training.trainer, "make_loss_fn", lambda model, compile, mode=None: seen.append(mode) or
                        real(model, False))
    monkeypatch.setattr(cart.training.trainer, "train_step", lambda *a: graphed.add(a[-1]) or real_step(*a))
    p = tiny_params()
    p["train"].update(compile_mode=mode, compile="on")  # on: the spy above compiles nothing
    write_params(tiny_project, p)
    spec = spec_for()
    train_run(spec, RunPaths.for_run(spec.group, spec.name), progress=False)
    assert seen == [passed]
    assert graphed == {mode == "reduce-overhead"}


@pytest.mark.parametrize("scope,sampled,by_iteration", [("auto", False, False), ("auto", True, True),
                                                       ("model", False, False), ("iteration", False, True),
                                                       ("iteration", True, True)])
def test_compile_scope_decides_whether_the_loop_compiles_by_iteration(tiny_project, monkeypatch, scope, sampled,
                                                                      by_iteration):
    """train.compile_scope: a compiled CART run compiles its loop one iteration at a time under
    `iteration`, and under `auto` exactly when R is sampled (a graph per R otherwise)."""
    import cart.training.trainer
    real = cart.training.trainer.make_loss_fn
    monkeypatch.setattr(cart.training.trainer, "make_loss_fn", lambda model, compile, mode=None: real(model, False))
    p = tiny_params()
    p["train"].update(compile="on", compile_scope=scope)  # on: the spy above compiles nothing
    if sampled:
        p["train"]["loop_sampling"] = {"scheme": "uniform", "r_min": 1, "r_max": 3}
    write_params(tiny_project, p)
    spec = spec_for()
    trainer = Trainer(spec, RunPaths.for_run(spec.group, spec.name), progress=False)
    trainer.run()
    assert getattr(trainer.model.loop, "_torchdynamo_disable", False) == by_iteration


def test_compile_scope_model_with_a_sampled_r_is_refused(tiny_project):
    p = tiny_params()
    p["train"].update(compile_scope="model", loop_sampling={"scheme": "uniform", "r_min": 1, "r_max": 3})
    write_params(tiny_project, p)
    with pytest.raises(ValueError, match=r"^train: compile_scope: model compiles a graph per R, .* with a sampled "
                                         r"R \(loop_sampling\) use auto or iteration$"):
        spec_for()


def test_graphed_step_accumulates_into_its_own_gradients():
    """Under CUDA graphs the first micro-batch's backward leaves .grad in the graph's output memory,
    which the next replay overwrites (pytorch/pytorch#169545): train_step(graphed=True) copies those
    gradients out, so overwriting the first backward's tensors (what a replay does) leaves the step's
    gradients whole, equal to the plain step's."""
    from cart import CARTConfig, build_model
    from cart.training.step import make_loss_fn, train_step
    grads = {}
    for graphed in (False, True):
        torch.manual_seed(0)
        model = build_model(CARTConfig(vocab_size=64, d_model=32, head_dim=16, n_prelude=1, n_loops=2))
        params = [p for p in model.parameters() if p.requires_grad]
        batches = [(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))) for _ in range(3)]
        first = {}

        def keep_first(p):
            first.setdefault(p, p.grad)
        hooks = [p.register_post_accumulate_grad_hook(keep_first) for p in params]
        train_step(make_loss_fn(model, False), batches, params, 0.0, torch.device("cpu"), torch.float32,
                   graphed=graphed)
        for h in hooks:
            h.remove()
        assert len(first) == len(params)
        grads[graphed] = [p.grad.clone() for p in params]
        shared = [p.grad.data_ptr() == first[p].data_ptr() for p in params]
        assert all(shared) if not graphed else not any(shared)  # plain: summed into the first backward's
        for t in first.values():
            t.zero_()  # a replay overwriting the graph's outputs
        wiped = [not torch.equal(p.grad, g) for p, g in zip(params, grads[graphed])]
        assert all(wiped) if not graphed else not any(wiped)
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))


def _children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # gone meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tie to the launcher is Linux's prctl")
def test_a_killed_two_process_launcher_takes_its_workers_with_it(tiny_data, tmp_path):
    """SIGKILL to a train.nproc: 2 run's launcher (torchrun's agent, which starts its workers in sessions
    of their own and cannot forward a SIGKILL) ends its workers too, instead of leaving them training
    into the run directory a resumed run would share."""
    import shutil
    shutil.copytree(tiny_data / "data", tmp_path / "data")
    p = tiny_params()
    p["stage2"]["run"].update(steps=100_000, eval_every=100_000)
    p["train"].update(nproc=2, checkpoint_every=5, log_every=5)
    write_params(tmp_path, p)
    launcher = _run_cli(tmp_path)
    deadline, workers = time.monotonic() + 120, []
    try:
        while time.monotonic() < deadline:  # until both workers train (a checkpoint is written)
            workers = _children(launcher.pid)
            if len(workers) == 2 and (tmp_path / "runs/stage2/d32-R2-s42/trainer_state.pt").is_file():
                break
            assert launcher.poll() is None, launcher.stdout.read().decode()
            time.sleep(0.2)
        assert len(workers) == 2, "the workers never started training"
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "a worker outlived its launcher"
    finally:
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            launcher.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tie to the launcher is Linux's prctl")
def test_a_worker_whose_launcher_is_already_gone_ends_itself():
    """A worker that reaches die_with_launcher after its launcher died (its parent is no longer the pid
    in CART_LAUNCHER_PID) kills itself; under its launcher it goes on."""
    code = "from cart.training.launch import die_with_launcher; die_with_launcher(); print('went on')"
    for launcher, rc in ((os.getpid(), 0), (1, -signal.SIGKILL)):  # the child's parent is this process
        env = dict(os.environ, CART_LAUNCHER_PID=str(launcher),
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == rc and ("went on" in proc.stdout) == (rc == 0), proc.stderr


def _zero_rank(rank: int, world: int, folder: str) -> None:
    """One rank of test_sharded_optimizer_state_round_trips: 6 steps straight, and 3 + save + a fresh
    optimizer loading the gathered state + 3; rank 0 writes both final weights."""
    import torch.distributed as dist

    from cart.experiments import TrainSettings
    from cart.params import build
    from cart.training.step import make_optimizer
    dist.init_process_group("gloo", store=dist.FileStore(f"{folder}/store", world), rank=rank, world_size=world)
    t = build(TrainSettings, tiny_params()["train"] | {"zero_optimizer": True}, "train")

    def steps(model, opt, first, n):
        for i in range(first, first + n):
            g = torch.Generator().manual_seed(i)
            for q in model.parameters():
                q.grad = torch.randn(q.shape, generator=g)
            opt.step()

    finals = []
    for resume in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 4))
        opt = make_optimizer(model, t, 64, torch.device("cpu"), world)
        assert type(opt).__name__ == "ZeroRedundancyOptimizer"
        if resume:
            steps(model, opt, 0, 3)
            opt.consolidate_state_dict(to=0)
            if rank == 0:
                torch.save(opt.state_dict(), f"{folder}/opt.pt")
            dist.barrier()
            opt = make_optimizer(model, t, 64, torch.device("cpu"), world)
            opt.load_state_dict(torch.load(f"{folder}/opt.pt", weights_only=False))
            steps(model, opt, 3, 3)
        else:
            steps(model, opt, 0, 6)
        finals.append([q.detach().clone() for q in model.parameters()])
    if rank == 0:
        torch.save(finals, f"{folder}/finals.pt")
    dist.destroy_process_group()


def test_sharded_optimizer_state_round_trips(tmp_path):
    """train.zero_optimizer: the state gathered on rank 0 (what a checkpoint holds) and loaded back
    by a fresh sharded optimizer on every rank continues exactly as if never interrupted."""
    import torch.multiprocessing as mp
    mp.start_processes(_zero_rank, args=(2, str(tmp_path)), nprocs=2, start_method="spawn")
    straight, resumed = torch.load(tmp_path / "finals.pt", weights_only=False)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))
    assert len(torch.load(tmp_path / "opt.pt", weights_only=False)["state"]) == len(straight)


def test_the_summary_says_where_the_run_time_went(tiny_project):
    """timing: the first WARMUP_STEPS steps (compilation happens there) and the rest add up to the
    training time; evaluation and checkpoints are timed apart from the steps."""
    from cart.training.trainer import WARMUP_STEPS
    spec = spec_for()
    summary = train_run(spec, RunPaths.for_run(spec.group, spec.name), progress=False)
    timing = summary["timing"]
    assert set(timing) == {"setup_s", "warmup_steps_s", "steps_s", "eval_s", "checkpoint_s", "warmup_steps"}
    assert timing["warmup_steps"] == WARMUP_STEPS
    assert abs(timing["warmup_steps_s"] + timing["steps_s"] - summary["wall_s"]) < 0.002  # both rounded to 1 ms
    assert all(timing[k] > 0 for k in ("setup_s", "warmup_steps_s", "steps_s", "eval_s", "checkpoint_s"))


def _substep_losses(monkeypatch):
    """Record what each sub-step of each optimizer step returned: [(pattern string, loss_sum, micro-batches)]
    per step, in order."""
    import cart.training.trainer as train_mod
    from cart.models.patterns import format_patterns
    calls = []
    real = train_mod.train_step

    def recording(loss_fn, batches, *args, **kwargs):
        loss_sum, norm = real(loss_fn, batches, *args, **kwargs)
        calls.append((format_patterns(args[5]["pattern"]), loss_sum.item(), len(batches)))
        return loss_sum, norm
    monkeypatch.setattr(train_mod, "train_step", recording)
    return calls


def test_ratplus_joint_training_logs_both_substeps_losses(tiny_project, monkeypatch):
    """loss_sparse and loss_dense at every logged step: each the mean over the interval's
    micro-batches of its sub-step's loss, as train_step returned them; `loss` stays the dense one."""
    calls = _substep_losses(monkeypatch)
    spec = spec_for("ratplus", "joint-s42")
    paths = RunPaths.for_run(spec.group, spec.name)
    assert train_run(spec, paths, progress=False)["status"] == "complete"
    every = load_params()["train"]["log_every"]
    train, _ = read_curves(paths.plots_dir)
    assert len(calls) == 2 * spec.run.steps and len(train) == spec.run.steps // every
    for _, row in train.iterrows():
        interval = calls[2 * (int(row["step"]) - every):2 * int(row["step"])]
        n = sum(c[2] for c in interval) / 2
        for name, pattern in (("sparse", "D4"), ("dense", "dense")):
            want = sum(c[1] for c in interval if c[0] == pattern) / n
            assert row[f"loss_{name}"] == pytest.approx(want, rel=1e-6)
        assert row["loss"] == row["loss_dense"] and row["loss_sparse"] != row["loss_dense"]


def test_a_resumed_joint_run_logs_the_substep_losses_of_an_uninterrupted_one(tiny_project, monkeypatch):
    """A checkpoint in the middle of a logging interval carries each sub-step's running loss."""
    from cart.training.trainer import Trainer
    p = tiny_params()
    p["train"].update(log_every=3, checkpoint_every=4)
    write_params(tiny_project, p)
    spec = spec_for("ratplus", "joint-s42")
    paths = RunPaths.for_run(spec.group, spec.name)
    train_run(spec, paths, progress=False)
    metrics = paths.plots_dir / "plots/metrics/train"
    reference = {f.name: f.read_text() for f in metrics.glob("loss*.tsv")}
    assert {"loss.tsv", "loss_sparse.tsv", "loss_dense.tsv"} <= set(reference)
    for folder in (paths.run_dir, paths.plots_dir):
        shutil.rmtree(folder)
    paths.metrics_file.unlink()

    real_save = Trainer._save_checkpoint

    def stop_after_first(self, step):
        real_save(self, step)
        raise KeyboardInterrupt(f"stopped after the checkpoint of step {step}")
    monkeypatch.setattr(Trainer, "_save_checkpoint", stop_after_first)
    with pytest.raises(KeyboardInterrupt, match="step 4"):
        train_run(spec, paths, progress=False)
    monkeypatch.setattr(Trainer, "_save_checkpoint", real_save)
    train_run(spec, paths, progress=False)
    assert {f.name: f.read_text() for f in metrics.glob("loss*.tsv")} == reference
