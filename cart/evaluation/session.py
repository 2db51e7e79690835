"""What the evaluation stages share: settings, one start-up, and the rows they write.

Every evaluation stage (benchmarks, variable_r, and the family studies of pipeline/evaluate.py)
opens an `EvalSession` from its params (the `benchmarks` section: tasks, source, limits, device),
loads runs as lm-eval adapters, and writes rows of cart/evaluation/rows.py: validation
perplexity/BPB per domain (`ppl_rows`) and benchmark metrics (`benchmark_rows`), each tagged with
the run's inference-time setting (a CART loop count, a RAT+ attention pattern, an LRT mode).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..experiments import grid_keys, run_names
from ..params import build, section

TOKENIZER = Path("data/tokenizer")
BINS = Path("data/bins")
# the family studies of pipeline/evaluate.py: the run groups each evaluates, the families it runs,
# and whether it has a Dense control (the Dense baseline run of the same backbone shape and seed)
STUDIES = {
    "ratplus": {"groups": ("ratplus", "ratplus_adapt"), "models": ("ratplus", "dense"), "control": True},
    "lrt": {"groups": ("lrt",), "models": ("lrt", "dense"), "control": True},
    # CART trained with a fixed / sampled R, each run at every inference R
    "sampled_r": {"groups": ("sampled_r",), "models": ("cart",), "control": False},
}


def study_params(study: str) -> tuple[str, ...]:
    """The params keys a study's evaluation reads (its DVC stage's `params:`)."""
    first = STUDIES[study]["groups"][0]
    control = (f"{first}.base", "dense.d_model", "dense.grid") if STUDIES[study]["control"] else ()
    return ("benchmarks", f"eval_{study}", "corpus.domains", *grid_keys(STUDIES[study]["groups"]), *control)


@dataclass(frozen=True)
class PPLSettings:
    """Validation perplexity: n_seqs windows of seq_len tokens per domain, batch_size at a time."""
    seq_len: int
    n_seqs: int
    batch_size: int

    def __post_init__(self):
        for name in ("seq_len", "n_seqs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class RATPlusEval:
    # attention patterns every pretrained RAT+ run and the Dense control run at: one for every layer
    # ("D8"), one per layer ("dense,D8") or per head group ("dense+D8"); checked against each model
    patterns: list[str]
    num_fewshot: list[int]
    ppl: PPLSettings
    benchmark_limit: int | None = None  # items per task here (null: benchmarks.limit)

    def __post_init__(self):
        from ..models.patterns import parse_layer_pattern
        if not self.patterns or len(set(self.patterns)) != len(self.patterns):
            raise ValueError(f"patterns: expected distinct pattern strings, got {self.patterns}")
        for p in self.patterns:
            for layer in p.split(",") if isinstance(p, str) else [p]:
                parse_layer_pattern(layer, "patterns")
        if not self.num_fewshot or any(k < 0 for k in self.num_fewshot):
            raise ValueError(f"num_fewshot: expected shot counts >= 0, got {self.num_fewshot}")


@dataclass(frozen=True)
class LRTEval:
    modes: list[str]          # PPL modes of every LRT run: merged (parallel), sequential (exact recurrence), zero
    benchmark_mode: str       # the mode the benchmarks run in (sequential is exact but token by token)
    num_fewshot: list[int]    # the paper's claim is in-context learning: compare 5-shot minus 0-shot with Dense
    ppl: PPLSettings
    benchmark_limit: int | None = None  # items per task here (null: benchmarks.limit)

    def __post_init__(self):
        valid = ("merged", "sequential", "zero")
        if not self.modes or any(m not in valid for m in self.modes) or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"modes: expected distinct modes from {list(valid)}, got {self.modes}")
        if self.benchmark_mode not in valid:
            raise ValueError(f"benchmark_mode: expected one of {list(valid)}, got {self.benchmark_mode!r}")
        if not self.num_fewshot or any(k < 0 for k in self.num_fewshot):
            raise ValueError(f"num_fewshot: expected shot counts >= 0, got {self.num_fewshot}")


@dataclass(frozen=True)
class SampledREval:
    n_loops: list[int]        # inference R every sampled_r run is evaluated at (no fine-tuning)
    num_fewshot: list[int]    # benchmark shots at each R ([]: validation PPL/BPB only)
    ppl: PPLSettings
    benchmark_limit: int | None = None  # items per task at each R (null: benchmarks.limit)
    # adaptive exit (CART.hidden's exit_threshold): PPL/BPB and the mean loops used at each threshold,
    # looping at most exit_max_loops (null: the largest of n_loops); [] none
    exit_thresholds: list[float] = dataclasses.field(default_factory=list)
    exit_max_loops: int | None = None

    def __post_init__(self):
        if not self.n_loops or any(r < 1 for r in self.n_loops) or len(set(self.n_loops)) != len(self.n_loops):
            raise ValueError(f"n_loops: expected distinct loop counts >= 1, got {self.n_loops}")
        if any(not t > 0 for t in self.exit_thresholds) or len(set(self.exit_thresholds)) != len(self.exit_thresholds):
            raise ValueError(f"exit_thresholds: expected distinct relative changes > 0 (or []), got "
                             f"{self.exit_thresholds}")
        if self.exit_max_loops is not None and self.exit_max_loops < 1:
            raise ValueError(f"exit_max_loops: must be >= 1 (or null: the largest of n_loops), got {self.exit_max_loops}")
        if any(k < 0 for k in self.num_fewshot) or len(set(self.num_fewshot)) != len(self.num_fewshot):
            raise ValueError(f"num_fewshot: expected distinct shot counts >= 0 (or []), got {self.num_fewshot}")
        if self.benchmark_limit is not None and self.benchmark_limit < 1:
            raise ValueError(f"benchmark_limit: must be >= 1 (or null), got {self.benchmark_limit}")


STUDY_SETTINGS = {"ratplus": RATPlusEval, "lrt": LRTEval, "sampled_r": SampledREval}


@dataclass(frozen=True)
class Setting:
    """One inference-time setting of a run: its label in the rows, the forward's runtime kwargs,
    whether the benchmarks run at it (perplexity always does), and CART's inference loop count R
    (None: the trained R)."""
    label: str
    runtime: dict
    benchmarks: bool = True
    n_loops: int | None = None

    @property
    def key(self) -> str:
        """Its name in metrics/eval_<study>.json."""
        return self.label or (f"R{self.n_loops}" if self.n_loops is not None else "default")


def evaluated(common: dict) -> str:
    """The run and setting of an evaluation row, for messages: `stage2/d64-R2-s42 (R=4)`."""
    setting = ", ".join(s for s in (common.get("setting") or "",
                                    "" if common.get("n_loops") is None else f"R={common['n_loops']}") if s)
    return f"{common['run_id']}" + (f" ({setting})" if setting else "")


def exit_label(threshold: float) -> str:
    """The `setting` of an adaptive-exit row (eval/sampled_r.tsv), e.g. exit<0.05."""
    return f"exit<{threshold:g}"


def _control(params: dict, study: str) -> str:
    """The Dense baseline run with the study's backbone (d_model, n_layers) and first seed."""
    group = STUDIES[study]["groups"][0]
    base, seed = section(params, f"{group}.base"), section(params, f"{group}.seeds")[0]
    if base.get("d_model") != section(params, "dense.d_model"):
        raise ValueError(f"{group}.base.d_model={base.get('d_model')} differs from dense.d_model="
                         f"{section(params, 'dense.d_model')}: the {study} study's Dense control must share its width")
    control = f"L{base.get('n_layers')}-s{seed}"
    names = run_names(params, ["dense"])["dense"]
    if control not in names:
        raise ValueError(f"the {study} study's Dense control dense/{control} ({group}.base n_layers and seed) is "
                         f"not in the dense grid {names}")
    return f"dense/{control}"


def study_jobs(study: str, params: dict, root: Path, cfg) -> list[tuple[str, list[Setting]]]:
    """[(run_id, its settings)] of a study.

    ratplus: pretrained RAT+ runs and the Dense control at every pattern; adapted runs at their own
    (the authors never run a pretrained checkpoint sparse without adapting it; the comparison needs
    both). lrt: every LRT run in each PPL mode (benchmarks in `benchmark_mode`), the Dense control
    as it is. sampled_r: every run (each training scheme and seed) at every R of `n_loops`."""
    from ..training.checkpoint import read_run_config
    names = run_names(params, STUDIES[study]["groups"])
    if study == "sampled_r":
        cap = cfg.exit_max_loops or max(cfg.n_loops)
        at = [Setting("", {}, n_loops=r) for r in cfg.n_loops] + [
            Setting(exit_label(t), {"exit_threshold": t}, benchmarks=False, n_loops=cap) for t in cfg.exit_thresholds]
        return [(f"sampled_r/{n}", at) for n in names["sampled_r"]]
    control = _control(params, study)
    if study == "ratplus":
        at = [Setting(p, {"pattern": p}) for p in cfg.patterns]
        jobs = [(f"ratplus/{n}", at) for n in names["ratplus"]]
        for n in names["ratplus_adapt"]:
            own = read_run_config(root / "runs" / "ratplus_adapt" / n)["model"]["train_pattern"]
            jobs.append((f"ratplus_adapt/{n}", [Setting(own, {"pattern": own})]))
        return jobs + [(control, at)]
    modes = [Setting(m, {"lrt_mode": m}, m == cfg.benchmark_mode) for m in cfg.modes]
    if cfg.benchmark_mode not in cfg.modes:
        modes.append(Setting(cfg.benchmark_mode, {"lrt_mode": cfg.benchmark_mode}))
    return [(f"lrt/{n}", modes) for n in names["lrt"]] + [(control, [Setting("", {})])]


@dataclass(frozen=True)
class VariableRSettings:
    n_loops: list[int]
    ppl: PPLSettings
    benchmark_limit: int | None = None  # items per task at each R (null: benchmarks.limit)

    def __post_init__(self):
        if not self.n_loops or any(r < 1 for r in self.n_loops) or len(set(self.n_loops)) != len(self.n_loops):
            raise ValueError(f"n_loops: expected distinct loop counts >= 1, got {self.n_loops}")


def variable_r_settings(params: dict):
    return benchmark_settings(params), build(VariableRSettings, section(params, "variable_r"), "variable_r")


def study_settings(params: dict, study: str):
    return build(STUDY_SETTINGS[study], section(params, f"eval_{study}"), f"eval_{study}")


def benchmark_settings(params: dict):
    from .harness import BenchmarkSettings
    return build(BenchmarkSettings, section(params, "benchmarks"), "benchmarks")


def domain_sources(params: dict) -> dict[str, str]:
    """corpus.domains.<d>.source, so PPL rows say where their text came from (builtin = generated)."""
    doms = params.get("corpus", {}).get("domains", {}) if isinstance(params.get("corpus"), dict) else {}
    return {d: str((v or {}).get("source", "unknown")) for d, v in doms.items() if isinstance(v, dict) or v is None}


class EvalSession:
    """One evaluation stage's start-up: benchmark settings checked (local files before any model
    loads), device and dtype resolved, lm-eval quieted, its task manager built once."""

    def __init__(self, params: dict, root: Path = Path("."), max_shots: int = 0, progress: bool = True):
        # no network: lm-eval and datasets read local files (or the HF cache for source: hub); set
        # before either is first imported
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from . import benchmarks as B
        from ..device import resolve_device, resolve_dtype
        from .harness import local_dir_of, quiet_lm_eval

        self.root, self.progress = Path(root), progress
        self.bench = benchmark_settings(params)
        self.local_dir = local_dir_of(self.bench, self.root)
        if self.bench.source == "local":
            B.check_local_files(self.local_dir, self.bench.tasks, max_shots, self.bench.fewshot_fallback)
        self.device = resolve_device(self.bench.device, "benchmarks.device")
        self.dtype = resolve_dtype(self.bench.dtype, self.device)
        quiet_lm_eval()
        self.task_manager = B.task_manager(self.bench.source, self.local_dir)

    def load(self, run_id: str, max_length: int | None = None):
        """The run as an lm-eval adapter (cart.evaluation.harness.CARTLM), checked against data/tokenizer."""
        from .harness import CARTLM
        b = self.bench
        return CARTLM.from_run(self.root / "runs" / run_id, self.root / TOKENIZER, device=self.device,
                               dtype=self.dtype, batch_size=b.batch_size, max_length=max_length or b.max_length,
                               prefix_context=b.prefix_context, progress=self.progress)

    def val_batches(self, ppl: PPLSettings) -> dict:
        """Each validation domain's batches, read once per stage."""
        from ..data.bins import domains, val_batches
        bins = self.root / BINS
        return {d: val_batches(bins, d, ppl.seq_len, ppl.n_seqs, ppl.batch_size) for d in domains(bins)}

    def ppl_rows(self, lm, val: dict, common: dict, sources: dict, **runtime) -> list[dict]:
        """Validation PPL and BPB per domain of `lm`'s model at `runtime` (e.g. pattern="D8")."""
        from ..training.validation import NonFiniteEvaluation, bits_per_byte, eval_loss, perplexity
        from ..models.base import IGNORE_INDEX
        bpt = lm.tok.bytes_per_token
        missing = [d for d in val if d not in bpt]
        if missing:
            raise ValueError(f"{self.root / TOKENIZER}: no bytes_per_token for domain(s) {missing}; "
                             f"re-run the tokenizer stage")
        rows = []
        exits = "exit_threshold" in runtime
        for d, batches in val.items():
            loops = [0, 0]  # adaptive exit: loop iterations summed over target tokens, target tokens

            def count_loops(model, y):
                scored = y != IGNORE_INDEX
                loops[0] += int(model.last_loops_used[scored].sum())
                loops[1] += int(scored.sum())
            loss, _ = eval_loss(lm.model, batches, device=self.device, dtype=self.dtype,
                                on_batch=count_loops if exits else None, **runtime)
            if not math.isfinite(loss):
                raise NonFiniteEvaluation(f"{evaluated(common)}: the validation loss on {d} is {loss}: the model's "
                                          f"logits are not finite (its weights, or its forward at this setting); "
                                          f"nothing written")
            got = [("ppl", perplexity(loss)), ("bpb", bits_per_byte(loss, float(bpt[d])))]
            if exits:
                got.append(("mean_loops", loops[0] / loops[1]))
            rows += [{**common, "num_fewshot": None, "task": f"ppl:{d}", "metric": k, "value": v, "stderr": None,
                      "source": sources.get(d, "bins")} for k, v in got]
        return rows

    def benchmark_rows(self, lm, shots: int, common: dict, limit: int | None = None) -> list[dict]:
        """The `benchmarks` tasks at `shots` shots (lm.runtime / lm.n_loops set the model's setting);
        `limit` items per task, or benchmarks.limit."""
        from ..training.validation import NonFiniteEvaluation
        from .harness import evaluate_benchmarks
        b = self.bench
        try:
            got, _ = evaluate_benchmarks(lm, b.tasks, source=b.source, local_dir=self.local_dir, num_fewshot=shots,
                                         limit=b.limit if limit is None else limit, bootstrap_iters=b.bootstrap_iters,
                                         fewshot_fallback=b.fewshot_fallback, task_manager=self.task_manager)
        except NonFiniteEvaluation as e:
            raise NonFiniteEvaluation(f"{evaluated(common)}: benchmarks at {shots} shots: {e}") from None
        bad = [g for g in got if not math.isfinite(g["value"])]
        if bad:
            raise NonFiniteEvaluation(f"{evaluated(common)}: {bad[0]['task']} {bad[0]['metric']} at {shots} shots is "
                                      f"{bad[0]['value']}; nothing written")
        return [{**common, "num_fewshot": shots, **g, "source": b.source} for g in got]
