"""The training loop shared by every run (Stage 1, Stage 2, Dense, ablations).

Guarantees: a finished run is not retrained; an interrupted run (SIGKILL, SIGTERM, Ctrl-C)
resumes at the exact optimizer step and data position and ends bit-identical to an
uninterrupted run on CPU; a run whose config changed starts over, once the new config, data and
model are accepted, and a completed run it replaces keeps its config, summary and weights under
runs/<group>/<name>/replaced/<time>/; a NaN/inf stops the run naming the step, keeps the last good
checkpoint and records the failure (null, never NaN, in its JSON).
"""
from __future__ import annotations

import hashlib
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed
from ..accounting import count_params, forward_flops, mfu, peak_flops_for
from ..data.bins import BatchReader, domains, read_meta, val_batches
from .validation import bits_per_byte, eval_loss, perplexity
from ..experiments import RunPaths, RunSpec
from ..io import atomic_write_json, remove_stale_temps, require_free_space, sha256_file
from ..models import build_model
from .run_summary import read_summary
from ..code_deps import ROOT, training_code
from .curves import CurveWriter
from ..device import resolve_device, resolve_dtype
from .step import CUDA_GRAPH_MODES, check_float8, lr_multiplier, make_loss_fn, make_optimizer, to_float8, train_step
from ..data.tokenizer import tokenizer_info

# Settings that change how a run is executed or logged, not what it computes: editing them keeps a
# finished run finished and lets an interrupted one resume (on another GPU count, too).
RESULT_NEUTRAL = ("nproc", "log_every", "checkpoint_every", "zero_optimizer", "data_parallel")
# Inside a run folder: the completed runs a changed config replaced, one folder each (never deleted here).
REPLACED = "replaced"
# The first optimizer steps of a process, timed apart: compilation and CUDA-graph capture happen in
# them (a graph is recorded on a compiled function's second or third call)
WARMUP_STEPS = 3


class NonFiniteError(RuntimeError):
    pass


class Interrupted(RuntimeError):
    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Trainer:
    def __init__(self, spec: RunSpec, paths: RunPaths, progress: bool = True):
        self.spec, self.paths, self.progress = spec, paths, progress
        t = spec.train
        self.dist, self.device = distributed.setup(resolve_device(t.device, "train.device"))
        if spec.run.grad_accum % self.dist.world:
            raise ValueError(f"grad_accum={spec.run.grad_accum} must be divisible by the number of processes "
                             f"({self.dist.world}) so tokens per optimizer step stay the same")
        self.dtype = resolve_dtype(t.dtype, self.device)
        if t.fp8:
            check_float8(self.device)
        self.tok = tokenizer_info(paths.tokenizer_dir)
        meta = read_meta(paths.bins_dir)
        if meta["vocab_size"] != spec.model.vocab_size or self.tok["vocab_size"] != spec.model.vocab_size:
            raise ValueError(f"vocab mismatch: model {spec.model.vocab_size}, tokenizer {self.tok['vocab_size']}, "
                             f"bins {meta['vocab_size']}; re-run the tokenizer and bins stages")
        if meta["tokenizer_sha256"] != self.tok["sha256"]:
            raise ValueError("data/bins was built with another tokenizer; re-run the bins stage")
        run_config = spec.to_dict()
        run_config["train"] = {k: v for k, v in run_config["train"].items() if k not in RESULT_NEUTRAL}
        self.parent_weights = self._parent_weights()
        self.run_config = run_config | {
            "tokenizer": {"vocab_size": self.tok["vocab_size"], "sha256": self.tok["sha256"]},
            "data": {"train_sha256": meta["files"]["train.bin"]["sha256"]},
            "code_sha256": code_fingerprint(spec.model.arch),
            # a run started from another run's weights is a new run when those weights change
            "init_from": None if self.parent_weights is None else
            {"run_id": spec.init_from, "weights_sha256": sha256_file(self.parent_weights)},
        }
        self.peak = peak_flops_for(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None
        self.counts = count_params(spec.model)
        self._signal = None
        self.steady_rates: list[float] = []  # logged tokens/s after the first (warm-up) interval
        self.peak_mem = {"train": None, "eval": None}  # GiB, this process's part of the run (CUDA only)
        # where this process's wall time went (seconds): setting up (model, data, optimizer), the first
        # WARMUP_STEPS optimizer steps (compilation and CUDA-graph capture happen there), the other
        # steps, evaluations and checkpoint writes; a sweep's cost is read from these
        self.timing = {"setup_s": 0.0, "warmup_steps_s": 0.0, "steps_s": 0.0, "eval_s": 0.0, "checkpoint_s": 0.0}
        self._t_created = time.perf_counter()

    def _parent_weights(self) -> Path | None:
        """The final weights of the run this one starts from (spec.init_from), which must be complete."""
        if self.spec.init_from is None:
            return None
        parent = self.paths.run_dir.parents[1] / self.spec.init_from
        summary = parent / ckpt.SUMMARY
        if not summary.is_file() or read_summary(summary)["status"] != "complete":
            raise ValueError(f"{self.spec.run_id} starts from {self.spec.init_from}, which has no complete run "
                             f"in {parent}; train it first (dvc repro runs it before this stage)")
        return parent / ckpt.WEIGHTS

    # ---- run-directory state machine: complete / resume / fresh ----
    def _existing_state(self) -> str:
        p = self.paths
        if not (p.run_dir / ckpt.CONFIG).is_file():
            return "fresh"
        if ckpt.read_run_config(p.run_dir) != self.run_config:
            return "stale"
        summary = p.run_dir / ckpt.SUMMARY
        if summary.is_file() and read_summary(summary)["status"] == "complete":
            return "complete"
        return "resume" if (p.run_dir / ckpt.STATE).is_file() else "fresh"

    def _reset_dirs(self) -> None:
        """Empty the run's folders for a fresh start; a completed run's files are set aside first and
        runs/<group>/<name>/replaced/ is never emptied."""
        self._set_aside_completed_run()
        shutil.rmtree(self.paths.plots_dir, ignore_errors=True)
        self.paths.plots_dir.mkdir(parents=True, exist_ok=True)
        self.paths.run_dir.mkdir(parents=True, exist_ok=True)
        for entry in self.paths.run_dir.iterdir():
            if entry.name == REPLACED:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        self.paths.metrics_file.unlink(missing_ok=True)

    def _set_aside_completed_run(self) -> None:
        """A completed run whose config changed is retrained from scratch, but its weights are never
        deleted: its config, summary and final weights move to replaced/<UTC time>/ inside the run
        folder, where they stay until someone deletes them (a move, so no extra disk; DVC dedups the
        unchanged weights in its cache). An unfinished or failed run has no final weights: it goes."""
        run_dir = self.paths.run_dir
        summary = run_dir / ckpt.SUMMARY
        if not (summary.is_file() and (run_dir / ckpt.WEIGHTS).is_file()
                and read_summary(summary)["status"] == "complete"):
            return
        dest = run_dir / REPLACED / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        while dest.exists():  # two replacements within one second
            dest = dest.with_name(dest.name + "+")
        dest.mkdir(parents=True)
        for name in (ckpt.CONFIG, ckpt.SUMMARY, ckpt.WEIGHTS):
            if (run_dir / name).is_file():
                (run_dir / name).replace(dest / name)
        print(f"{self.spec.run_id}: the completed run this config replaces is kept in {dest}")

    # ---- checkpoints ----
    def _save_checkpoint(self, step: int) -> None:
        t0 = time.perf_counter()
        self._write_checkpoint(step)
        self.timing["checkpoint_s"] += time.perf_counter() - t0

    def _gather_checkpoint(self) -> None:
        """Under FSDP2, every rank sends rank 0 its shards of the model and optimizer state: the
        checkpoint holds them whole, in the format an unsharded run writes."""
        t0 = time.perf_counter()
        self._full_state = (distributed.full_model_state(self.model),
                            distributed.full_optimizer_state(self.model, self.opt))
        self.timing["checkpoint_s"] += time.perf_counter() - t0

    def _write_checkpoint(self, step: int) -> None:
        name = f"weights-{step:07d}.safetensors"
        weights, optimizer = self._full_state if self.sharded else (self.model, self.opt.state_dict())
        digest = ckpt.save_weights(weights, self.paths.run_dir / name)
        ckpt.save_state({
            "step": step, "weights": name, "weights_sha256": digest,
            "optimizer": optimizer, "scheduler": self.sched.state_dict(),
            "reader": self.reader.state_dict(), "rng": torch.get_rng_state(),
            "train_time_s": self.train_time, "tokens": self.tokens, "grad_norm_ema": self.grad_ema,
            "interval_loss": list(self.interval_loss),
            "interval_substep_loss": list(self.interval_substep_loss),
            # the final checkpoint is a finished run but for its summary: a run resumed from it
            # writes the summary from these, as the uninterrupted run would have
            "last_loss": self.last_loss, "last_eval": self.last_eval,
        }, self.paths.run_dir / ckpt.STATE)
        for old in self.paths.run_dir.glob("weights-*.safetensors"):
            if old.name != name:
                old.unlink()

    def _load_checkpoint(self) -> int:
        state = ckpt.load_state(self.paths.run_dir / ckpt.STATE)
        weights = self.paths.run_dir / state["weights"]
        if not weights.is_file() or sha256_file(weights) != state["weights_sha256"]:
            raise ValueError(f"checkpoint weights {weights} are missing or do not match trainer_state.pt; "
                             f"delete {self.paths.run_dir} to restart the run")
        if self.sharded:  # every rank reads the whole state and keeps its shard
            distributed.load_full_model_state(self.model, ckpt.read_weights(self.model, weights))
            distributed.load_full_optimizer_state(self.model, self.opt, state["optimizer"])
        else:
            ckpt.load_weights(self.model, weights)
            self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.reader.load_state_dict(state["reader"])
        torch.set_rng_state(state["rng"])
        self.train_time, self.tokens, self.grad_ema = state["train_time_s"], state["tokens"], state["grad_norm_ema"]
        self.interval_loss = list(state["interval_loss"])
        self.interval_substep_loss = list(state.get("interval_substep_loss", self.interval_substep_loss))
        self.last_loss, self.last_eval = state.get("last_loss"), state.get("last_eval")
        if state["step"] >= self.spec.run.steps and (self.last_loss is None or self.last_eval is None):
            raise ValueError(f"{self.paths.run_dir / ckpt.STATE}: the checkpoint of the final step holds no final "
                             f"loss and evaluation to finish the run with; delete {self.paths.run_dir} to retrain it")
        for orphan in self.paths.run_dir.glob("weights-*.safetensors"):  # written after the state was
            if orphan.name != state["weights"]:
                orphan.unlink()
        if self.dist.is_main:  # the one writer of the run folder
            remove_stale_temps(self.paths.run_dir)  # a killed run's half-written checkpoint files
        return state["step"]

    # ---- evaluation ----
    def _evaluate(self, step: int) -> dict:
        t0 = time.perf_counter()
        self._note_peak_memory("train")  # training's peak so far, then the evaluation's own
        out = {}
        for dom, batches in self.val.items():
            loss, _ = eval_loss(self.model, batches, device=self.device, dtype=self.dtype,
                                **self.spec.model.validation_kwargs())
            if not math.isfinite(loss):
                raise NonFiniteError(f"{self.spec.run_id}: non-finite validation loss on {dom} at step {step}; "
                                     f"last good checkpoint kept")
            bpt = self.tok["bytes_per_token"][dom]
            out[dom] = {"loss": loss, "ppl": perplexity(loss), "bpb": bits_per_byte(loss, bpt)}
            if self.dist.is_main:
                self.curves.log_eval(step, dom, out[dom])
        eval_peak = self._note_peak_memory("eval")
        if eval_peak is not None and self.dist.is_main:
            self.curves.log_train(step, {"eval_peak_mem_gib": eval_peak})
        self.timing["eval_s"] += time.perf_counter() - t0
        return out

    def _note_peak_memory(self, phase: str) -> float | None:
        """The device's peak allocated memory since the last call (GiB), folded into the run's peak for
        `phase` ("train" or "eval"); the counter restarts. None off CUDA (no allocator counter)."""
        peak = peak_memory_gib(self.device)
        if peak is not None:
            self.peak_mem[phase] = max(self.peak_mem[phase] or 0.0, peak)
            torch.cuda.reset_peak_memory_stats(self.device)
        return peak

    def _on_signal(self, signum, frame):
        self._signal = signum

    # ---- the loop ----
    def run(self) -> dict:
        spec, paths, t, r = self.spec, self.paths, self.spec.train, self.spec.run
        state = self._existing_state()
        if state == "complete":
            summary = read_summary(paths.run_dir / ckpt.SUMMARY)
            print(f"{spec.run_id}: already complete ({summary['steps']} steps), not retraining")
            if not paths.metrics_file.is_file():  # DVC removes non-persistent outputs before a re-run
                atomic_write_json(paths.metrics_file, metrics_from_summary(summary))
            return summary
        # weights twice (latest checkpoint + the final copy) plus fp32 optimizer moments
        require_free_space(paths.run_dir, 16 * self.counts["stored"], f"{spec.run_id} checkpoints")
        torch.manual_seed(spec.seed)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.model = build_model(spec.model).to(self.device)
        if self.parent_weights is not None and state != "resume":  # a resumed run has its own checkpoint
            ckpt.load_weights(self.model, self.parent_weights)
        if t.fp8:  # before the optimizer and compile: the float8 modules own the same parameters
            to_float8(self.model, self.device)
        # FSDP2 shards the parameters in place, so before the optimizer, which must hold the shards
        self.sharded = t.data_parallel == "fsdp2" and self.dist.enabled
        if self.sharded:
            distributed.shard(self.model, self.dist, self.device)
            if self.dist.is_main:
                print(f"{spec.run_id}: parameters, gradients and optimizer state sharded across {self.dist.world} "
                      f"ranks (FSDP2)")
        self.opt = make_optimizer(self.model, t, spec.model.d_model, self.device, self.dist.world)
        if hasattr(self.opt, "consolidate_state_dict") and self.dist.is_main:
            print(f"{spec.run_id}: optimizer state sharded across {self.dist.world} ranks (ZeroRedundancyOptimizer)")
        floor = t.min_lr_ratio
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_multiplier(s, t.warmup_steps, r.steps, floor))
        self.reader = BatchReader(paths.bins_dir, r.seq_len, r.micro_batch, cross_chunk_target=t.cross_chunk_target)
        self.val = {d: val_batches(paths.bins_dir, d, r.seq_len, t.eval_seqs, r.micro_batch, t.val_windows)
                    for d in domains(paths.bins_dir)}
        # only now, with the model, data and settings all accepted, may an earlier run's files go
        if state in ("fresh", "stale") and self.dist.is_main:
            if state == "stale":
                print(f"{spec.run_id}: config changed since the last run; starting over")
            self._reset_dirs()
            ckpt.write_run_config(paths.run_dir, self.run_config)
        self.dist.barrier()
        self.train_time, self.tokens, self.grad_ema = 0.0, 0, None
        self.interval_loss = [0.0, 0]  # (sum, count) of micro-batch losses since the last log
        # with several sub-steps per batch (RAT+'s joint training), each one's sum over the same count
        self.interval_substep_loss = [0.0] * len(spec.model.train_substeps())
        self.last_loss, self.last_eval = None, None  # the last logged training loss and evaluation
        start = 0
        if state == "resume":
            start = self._load_checkpoint()
            print(f"{spec.run_id}: resuming at step {start}/{r.steps}")
        if self.dist.is_main:
            self.curves = CurveWriter(paths.plots_dir, start if state == "resume" else None)

        use_compile = t.compile == "on" or (t.compile == "auto" and self.device.type == "cuda")
        if use_compile and t.compiles_by_iteration and hasattr(self.model, "compile_by_iteration"):
            self.model.compile_by_iteration()  # one compiled iteration for every R, not one graph per R
        self.ddp = distributed.wrap(self.model, self.dist, self.device, t.ddp_bucket_cap_mb,
                                    t.ddp_gradient_as_bucket_view)
        self.loss_fn = make_loss_fn(self.ddp, use_compile, None if t.compile_mode == "default" else t.compile_mode)
        self.graphed = use_compile and t.compile_mode in CUDA_GRAPH_MODES
        self.substeps = spec.model.train_substeps()
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.timing["setup_s"] = time.perf_counter() - self._t_created
        try:
            self._loop(start)
        except NonFiniteError as e:
            rho = self._rho()  # on every rank: under FSDP2 reading the gate gathers it
            if self.dist.is_main:
                self._finish("failed", str(e), None, None, rho, None)
            raise
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
        rho = self._rho()
        weights = distributed.full_model_state(self.model) if self.sharded else self.model
        summary = (self._finish("complete", None, self.last_eval, self.last_loss, rho, weights)
                   if self.dist.is_main else {})
        self.dist.barrier()
        distributed.teardown(self.dist)
        return summary

    def _loop(self, start: int) -> None:
        spec, t, r = self.spec, self.spec.train, self.spec.run
        self.model.train()
        bar = tqdm(total=r.steps, initial=start, desc=spec.run_id, disable=not self.progress,
                   dynamic_ncols=True, mininterval=1.0)
        params = [p for p in self.model.parameters() if p.requires_grad]
        loss_acc, interval_tokens = torch.full((), self.interval_loss[0], device=self.device), 0
        substep_acc = torch.tensor(self.interval_substep_loss, device=self.device)
        interval_t0 = time.perf_counter()
        logged_once, pending, gn = False, None, None
        for step in range(start, r.steps):
            t0 = time.perf_counter()
            batches = [self.reader.next_batch() for _ in range(r.grad_accum)][self.dist.rank::self.dist.world]
            if self.device.type == "cuda":  # page-locked, so the host-to-device copies run asynchronously
                batches = [(x.pin_memory(), y.pin_memory()) for x, y in batches]
            # One optimizer update per sub-step (one, unless the family trains jointly under several
            # settings, e.g. RAT+'s sparse then dense attention); the schedule advances once per batch.
            # The logged `loss` and the checked grad norm are the last sub-step's; with several, each
            # one's loss is logged too (loss_<name>). Every sub-step and micro-batch of the step runs
            # the step's loop count and truncation (loop_kwargs).
            loop_kwargs = self._loop_kwargs(step)
            for i, kwargs in enumerate(self.substeps):
                loss_sum, grad_norm = train_step(self.loss_fn, batches, params, t.grad_clip, self.device,
                                                 self.dtype, self.ddp, kwargs | loop_kwargs, self.graphed)
                if len(self.substeps) > 1:
                    substep_acc[i] += loss_sum
                norm = _NormOnHost(grad_norm)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            self.sched.step()
            done = step + 1
            # The finiteness check runs one step late, on a norm copied to the host asynchronously,
            # so the CPU never waits for the GPU to drain its queue (the step it launched just now
            # keeps the GPU busy). A non-finite step is still named exactly, and nothing from it or
            # the step after reaches a checkpoint: every checkpoint, eval and log settles the check first.
            if pending is not None:
                self._check_grad_norm(*pending)
            pending = (done, norm)
            loss_acc += loss_sum
            self.interval_loss[1] += len(batches)
            self.tokens += r.tokens_per_step
            interval_tokens += r.tokens_per_step
            step_s = time.perf_counter() - t0
            self.train_time += step_s
            self.timing["warmup_steps_s" if step - start < WARMUP_STEPS else "steps_s"] += step_s
            if "n_loops" in loop_kwargs and self.dist.is_main:  # every step's R, not only the logged steps'
                self.curves.log_train(done, {"n_loops": loop_kwargs["n_loops"]})

            log_now = done % t.log_every == 0 or done == r.steps
            eval_now = done % r.eval_every == 0 or done == r.steps
            ckpt_now = done % t.checkpoint_every == 0 or done == r.steps or self._signal is not None
            if log_now or eval_now or ckpt_now:  # on every rank alike, so all ranks stop at the same step
                gn, pending = self._check_grad_norm(*pending), None
            if log_now:
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - interval_t0
                last_loss = self.last_loss = self.dist.mean(loss_acc / self.interval_loss[1]).item()
                if not math.isfinite(last_loss):
                    raise NonFiniteError(f"{spec.run_id}: non-finite loss at step {done}; last good checkpoint kept")
                tok_s = interval_tokens / elapsed
                if logged_once:  # the first interval of a process includes compilation and warm-up
                    self.steady_rates.append(tok_s)
                logged_once = True
                row = {"tokens": self.tokens, "loss": last_loss, "lr": self.sched.get_last_lr()[0],
                       "grad_norm": gn, "spectral_radius": self._rho(), "tokens_per_s": tok_s,
                       "mfu": self._mfu(tok_s)} | self._diagnostics()  # every rank: FSDP2 gathers the gate
                if len(self.substeps) > 1:
                    means = self.dist.mean(substep_acc / self.interval_loss[1]).tolist()
                    row |= {f"loss_{name}": v for name, v in zip(spec.model.train_substep_names(), means)}
                    substep_acc.zero_()
                if self.dist.is_main:
                    self.curves.log_train(done, row)
                bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tok_s:,.0f}")
                loss_acc.zero_()
                self.interval_loss, interval_tokens = [0.0, 0], 0
            if eval_now and (self.dist.is_main or self.sharded):  # FSDP2's forward needs every rank
                self.last_eval = self._evaluate(done)
            if ckpt_now and hasattr(self.opt, "consolidate_state_dict"):  # sharded: every rank sends rank 0 its part
                self.opt.consolidate_state_dict(to=0)
            if ckpt_now and self.sharded:
                self._gather_checkpoint()
            if ckpt_now and self.dist.is_main:
                # the logging interval's running loss travels with the checkpoint, so a resumed run
                # logs the same mean loss for the interval it resumes in (under DDP, rank 0's share
                # stands in for every rank's in that one interval)
                self.interval_loss[0] = loss_acc.item()
                self.interval_substep_loss = substep_acc.tolist()
                self._save_checkpoint(done)
            if done % r.eval_every == 0 or done % t.checkpoint_every == 0:
                self.dist.barrier()
            if log_now:
                interval_t0 = time.perf_counter()  # eval and checkpoint time is not training time
            bar.update(1)
            if self._signal is not None:
                bar.close()
                raise Interrupted(self._signal)
        bar.close()

    def _loop_kwargs(self, step: int) -> dict:
        """The recurrent model's forward arguments for optimizer step `step` (0-based): its sampled
        R (train.loop_sampling; nothing under `fixed`, so the model runs its n_loops) and the
        truncation of backpropagation (train.backprop_loops). The same on every rank."""
        t, model = self.spec.train, self.spec.model
        out = {}
        if t.loop_sampling.varies:
            out["n_loops"] = t.loop_sampling.sample(model.n_loops, self.spec.seed, step)
        if t.backprop_loops is not None:
            out["backprop_loops"] = t.backprop_loops
        return out

    def _check_grad_norm(self, step: int, norm: "_NormOnHost") -> float:
        """Stop on a non-finite step; warn on a spike against the running EMA of the norm."""
        gn = norm.get()
        if not math.isfinite(gn):
            raise NonFiniteError(f"{self.spec.run_id}: non-finite loss/gradient at step {step} "
                                 f"(grad norm {gn}); last good checkpoint kept")
        if self.grad_ema is not None and step > self.spec.train.warmup_steps and gn > 5 * self.grad_ema:
            tqdm.write(f"{self.spec.run_id}: grad-norm spike at step {step}: {gn:.3g} (EMA {self.grad_ema:.3g})")
        self.grad_ema = gn if self.grad_ema is None else 0.9 * self.grad_ema + 0.1 * gn
        return gn

    def _diagnostics(self) -> dict:
        """What a model reports about itself beyond rho (e.g. CART's gate and HyperConnection weights).
        Under FSDP2 a collective: every rank calls it."""
        if not hasattr(self.model, "diagnostics"):
            return {}
        with distributed.gathered(self.model):
            return self.model.diagnostics()

    def _rho(self) -> float | None:
        """The model's spectral radius (None for families without one). Under FSDP2 a collective."""
        if not hasattr(self.model, "spectral_radius"):
            return None
        with distributed.gathered(self.model):
            return self.model.spectral_radius()

    def _mfu(self, tok_s: float | None) -> float | None:
        """Paper-MFU per GPU: tok_s counts every rank's tokens, self.peak is one GPU's."""
        if not (self.peak and tok_s):
            return None
        return mfu(self.spec.model, tok_s / self.dist.world, self.peak)

    def _finish(self, status: str, failure: str | None, final_eval: dict | None, last_loss: float | None,
                rho: float | None, weights) -> dict:
        """The summary and, for a complete run, its final `weights` (the model, or its gathered state
        dict under FSDP2); `rho` read by every rank beforehand."""
        spec, paths = self.spec, self.paths
        self._note_peak_memory("train")
        if status == "complete":
            ckpt.save_weights(weights, paths.run_dir / ckpt.WEIGHTS)
        # steady-state throughput: the median logged interval after warm-up, else the overall mean
        rates = sorted(self.steady_rates)
        tok_s = rates[len(rates) // 2] if rates else (self.tokens / self.train_time if self.train_time > 0 else None)
        summary = {
            "status": status, "failure": failure, "steps": spec.run.steps if status == "complete" else None,
            "tokens": self.tokens, "wall_s": round(self.train_time, 3), "tokens_per_s": tok_s,
            "mfu": self._mfu(tok_s),
            "peak_flops": self.peak, "device": _device_name(self.device), "torch": torch.__version__,
            "git_commit": git_commit(), "params": self.counts,
            "flops_per_seq": forward_flops(spec.model, spec.run.seq_len),
            "spectral_radius": rho, "final_train_loss": last_loss, "final_eval": final_eval,
            "peak_mem_gib": self.peak_mem["train"], "eval_peak_mem_gib": self.peak_mem["eval"],
            "timing": {k: round(v, 3) for k, v in self.timing.items()} | {"warmup_steps": WARMUP_STEPS},
        }
        summary = finite_or_null(summary)  # a diverged run's NaN rho is no JSON number: null, beside its failure
        atomic_write_json(paths.run_dir / ckpt.SUMMARY, summary)
        atomic_write_json(paths.metrics_file, metrics_from_summary(summary))
        return summary


class _NormOnHost:
    """A device scalar copied to page-locked host memory behind an event: reading it waits only
    for the work queued before the copy, not for everything queued since."""

    def __init__(self, value: torch.Tensor):
        if value.device.type == "cuda":
            self.host = torch.empty((), dtype=value.dtype, pin_memory=True)
            self.host.copy_(value.detach(), non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host, self.event = value.detach(), None

    def get(self) -> float:
        if self.event is not None:
            self.event.synchronize()
        return self.host.item()


def finite_or_null(value):
    """`value` with every NaN or infinite float (at any depth) replaced by None, so the JSON written
    from it is valid for strict readers (Python's json would write the non-standard NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def metrics_from_summary(summary: dict) -> dict:
    """The small, flat per-run metrics file DVC compares across branches."""
    metrics = {k: summary[k] for k in ("status", "final_train_loss", "tokens_per_s", "mfu", "spectral_radius")}
    metrics |= {"stored_params": summary["params"]["stored"], "effective_params": summary["params"]["effective"]}
    for dom, m in (summary.get("final_eval") or {}).items():
        metrics |= {f"ppl_{dom}": m["ppl"], f"bpb_{dom}": m["bpb"], f"loss_{dom}": m["loss"]}
    return metrics


def code_fingerprint(arch: str) -> str:
    """sha256 of the library code a run of this family depends on (cart.stages.training_code, the
    same files as its DVC stage's code deps): a changed model or loop retrains the run, as DVC
    re-runs the stage; a change elsewhere (another family, the report) leaves it alone."""
    h = hashlib.sha256()
    for rel in training_code(arch):
        h.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes())
    return h.hexdigest()


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak memory the caching allocator handed out on `device` since its last reset, in GiB; None
    off CUDA, where torch keeps no such counter."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def train_run(spec: RunSpec, paths: RunPaths, progress: bool = True) -> dict:
    """Train one run to completion (or resume it); returns its summary. Exits cleanly on signals."""
    trainer = Trainer(spec, paths, progress)
    try:
        summary = trainer.run()
    except Interrupted as e:
        print(f"{spec.run_id}: {e}; checkpoint saved, re-run to resume", file=sys.stderr)
        raise SystemExit(128 + e.signum)
    if not trainer.dist.is_main:
        return summary
    ev = summary.get("final_eval") or {}
    ppl = " ".join(f"{d}={m['ppl']:.2f}" for d, m in ev.items())
    tok_s = summary.get("tokens_per_s")
    print(f"{spec.run_id}: {summary['status']} | steps {summary['steps']} | loss {summary['final_train_loss']:.4f} "
          f"| ppl {ppl} | {tok_s:,.0f} tok/s | {summary['wall_s']:.1f}s train" if tok_s else f"{spec.run_id}: {summary}")
    return summary
