"""A run's summary.json: what the training loop writes when a run completes or fails, checked
wherever it is read (the training stage, the results store), so a damaged or foreign file is one
message naming it instead of a TypeError or KeyError far from it.

    status            "complete" or "failed"
    failure           why a failed run failed (text), null when complete
    steps             optimizer steps of a complete run
    final_train_loss  the last logged training loss (nats) of a complete run
    final_eval        {domain: {"loss", "ppl", "bpb"}} at the last step of a complete run
    params            {"stored", "effective"} parameter counts
    tokens_per_s, mfu, spectral_radius   numbers or null
and run facts (device, wall time, ...) that no reader depends on.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..io import read_json

STATUSES = ("complete", "failed")
EVAL_KEYS = ("loss", "ppl", "bpb")
OPTIONAL_NUMBERS = ("tokens_per_s", "mfu", "spectral_radius")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def summary_problem(summary) -> str | None:
    """What makes `summary` unlike the summary a run writes (its first problem); None when it is one."""
    if not isinstance(summary, dict):
        return f"a JSON {type(summary).__name__}, not an object"
    status = summary.get("status")
    if status not in STATUSES:
        return f"status {status!r} is not one of {list(STATUSES)}"
    params = summary.get("params")
    if not isinstance(params, dict) or not all(isinstance(params.get(k), int) for k in ("stored", "effective")):
        return f"params {params!r} is not {{\"stored\": int, \"effective\": int}}"
    for key in OPTIONAL_NUMBERS + ("final_train_loss",):
        if key not in summary or not (summary[key] is None or _is_number(summary[key])):
            return f"{key} {summary.get(key, '(absent)')!r} is not a finite number or null"
    if status == "failed":
        return None if isinstance(summary.get("failure"), str) else \
            f"a failed run's failure {summary.get('failure')!r} is not text"
    if not isinstance(summary.get("steps"), int) or isinstance(summary["steps"], bool) or summary["steps"] < 1:
        return f"a complete run's steps {summary.get('steps')!r} is not a positive int"
    if summary["final_train_loss"] is None:
        return "a complete run has no final_train_loss"
    final = summary.get("final_eval")
    if not isinstance(final, dict) or not final:
        return f"a complete run's final_eval {final!r} is not {{domain: {{loss, ppl, bpb}}}}"
    for dom, values in final.items():
        if not isinstance(values, dict) or not all(_is_number(values.get(k)) for k in EVAL_KEYS):
            return f"final_eval[{dom!r}] {values!r} lacks finite numbers for {list(EVAL_KEYS)}"
    return None


def read_summary(path: str | Path) -> dict:
    """A run's summary.json, checked: a ValueError naming the file when it is not one."""
    summary = read_json(path, "run summary")
    problem = summary_problem(summary)
    if problem:
        raise ValueError(f"{path}: not a run summary ({problem}); delete it and re-run the stage: the run "
                         f"resumes from its last checkpoint, or starts over without one")
    return summary
