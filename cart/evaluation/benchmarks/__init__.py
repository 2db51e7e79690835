"""Benchmarks of the evaluation stages, run through lm-evaluation-harness.

Tasks: HellaSwag (acc, acc_norm), ARC-Challenge (acc, acc_norm), LAMBADA OpenAI (acc,
perplexity), PIQA (acc, acc_norm), with lm-eval's own prompts and metrics. Three sources:

- builtin: a small generated SMOKE SET in each task's record format (cart/evaluation/benchmarks/smoke.py),
  so the pipeline runs offline anywhere; never a benchmark result (rows say `source: builtin`).
- local:   the real benchmark files from `benchmarks.local_dir` (layout and formats: spec.py).
- hub:     lm-eval's built-in tasks (hellaswag, arc_challenge, ...) reading the hub datasets
           (needs them in the Hugging Face cache, or network with HF_DATASETS_OFFLINE=0).

builtin and local run the task YAMLs in cart/evaluation/benchmarks/tasks/ (cart_hellaswag, ...): copies of
the built-in YAMLs that differ only in where the records come from (loaders.py).
"""
from __future__ import annotations

from pathlib import Path

from .spec import (EVAL_SPLIT, FEWSHOT_SPLIT, FORMATS, LOCAL_FILES, TASKS, BenchmarkFileError,
                   find_local_file)

SOURCES = ("builtin", "local", "hub")
TASK_DIR = Path(__file__).resolve().parent / "tasks"
FEWSHOT_FALLBACKS = ("error", "eval_split")

# metrics each task reports (lm-eval's metric_list for the task)
METRICS = {"hellaswag": ("acc", "acc_norm"), "arc_challenge": ("acc", "acc_norm"),
           "lambada_openai": ("acc", "perplexity"), "piqa": ("acc", "acc_norm")}

__all__ = ["EVAL_SPLIT", "FEWSHOT_FALLBACKS", "FEWSHOT_SPLIT", "FORMATS", "LOCAL_FILES", "METRICS",
           "SOURCES", "TASKS", "TASK_DIR", "BenchmarkFileError", "check_local_files", "find_local_file",
           "harness_name", "task_manager", "task_specs"]


def harness_name(task: str, source: str) -> str:
    """The lm-eval task name that evaluates `task` from `source`."""
    _check(task, source)
    return task if source == "hub" else f"cart_{task}"


def _check(task: str, source: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown benchmark task {task!r}; valid: {list(TASKS)}")
    if source not in SOURCES:
        raise ValueError(f"unknown benchmark source {source!r}; valid: {list(SOURCES)}")


def task_manager(source: str, local_dir: str | Path | None = None):
    """lm-eval TaskManager for `source`: our task YAMLs (builtin, local) or the built-in ones (hub)."""
    from lm_eval.tasks import TaskManager

    if source == "hub":
        return TaskManager()
    if source == "local" and not local_dir:
        raise ValueError("benchmarks.source 'local' needs benchmarks.local_dir")
    meta = {"source": source, "local_dir": str(local_dir) if local_dir else None}
    return TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata=meta)


def check_local_files(local_dir: str | Path, tasks, num_fewshot: int = 0,
                      fewshot_fallback: str = "error") -> dict[str, dict[str, Path]]:
    """Find every file the tasks will read, up front; a missing one raises BenchmarkFileError
    naming the file and its expected format. Returns {task: {split: path}}."""
    found = {}
    for task in tasks:
        _check(task, "local")
        files = {}
        for split in LOCAL_FILES[task]:
            path = find_local_file(local_dir, task, split, required=split == EVAL_SPLIT[task])
            if path is not None:
                files[split] = path
        fs = FEWSHOT_SPLIT[task]
        if num_fewshot > 0 and fs not in files and fewshot_fallback == "error":
            names = LOCAL_FILES[task][fs]
            raise BenchmarkFileError(
                f"{task}: {num_fewshot}-shot evaluation draws its examples from the {fs} split (as lm-eval "
                f"does), but {Path(local_dir) / task / names[0]} is missing; expected {FORMATS[task]}. "
                f"Provide it, evaluate 0-shot, or (in the pipeline) set benchmarks.fewshot_fallback: eval_split "
                f"to draw the examples from the evaluated {EVAL_SPLIT[task]} split (never the item itself)")
        found[task] = files
    return found


def task_specs(tasks, source: str, local_dir: str | Path | None = None, num_fewshot: int = 0,
               fewshot_fallback: str = "error") -> list:
    """What to pass as simple_evaluate(tasks=...): task names, or (source local, when files for
    some split are absent) our YAML config as a dict with those splits switched off."""
    if fewshot_fallback not in FEWSHOT_FALLBACKS:
        raise ValueError(f"fewshot_fallback: {fewshot_fallback!r} is not one of {list(FEWSHOT_FALLBACKS)}")
    if source != "local":
        return [harness_name(t, source) for t in tasks]
    from lm_eval.tasks._yaml_loader import load_yaml

    files = check_local_files(local_dir, tasks, num_fewshot, fewshot_fallback)
    specs = []
    for task in tasks:
        name = harness_name(task, source)
        cfg = load_yaml(TASK_DIR / f"{name}.yaml", resolve_func=True)
        changed = False
        for key in ("training_split", "validation_split", "test_split"):
            if cfg.get(key) and cfg[key] not in files[task]:
                cfg[key], changed = None, True
        if num_fewshot > 0 and FEWSHOT_SPLIT[task] not in files[task]:
            # fewshot_fallback == eval_split: examples from the evaluated split. lm-eval leaves the
            # evaluated item out of its own context only when fewshot_split == test_split, so the
            # evaluated split takes the test role (eval_docs reads the test split first anyway).
            ev = EVAL_SPLIT[task]
            cfg.update(training_split=None, validation_split=None, test_split=ev, fewshot_split=ev)
            changed = True
        specs.append(cfg if changed else name)
    return specs
