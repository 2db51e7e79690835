"""The rows every evaluation stage writes (eval/<experiment>.tsv) and the results store reads:
one home for their columns and their file format.

    experiment  the stage or study (benchmarks, variable_r, ratplus, ...)
    run_id      the evaluated run
    setting     its inference-time setting ("" = as trained; a RAT+ pattern such as "D8")
    n_loops     CART's inference loop count R, where it is one
    num_fewshot shots (empty for perplexity rows)
    task        a benchmark, or "ppl:<domain>" for validation perplexity
    metric, value, stderr, source
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from ..io import atomic_path

EVAL_COLUMNS = ("experiment", "run_id", "setting", "n_loops", "num_fewshot", "task", "metric", "value", "stderr",
                "source")


def write_rows(path: str | Path, rows: list[dict]) -> None:
    """Tab-separated, header EVAL_COLUMNS, written atomically; an empty cell = not applicable."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(EVAL_COLUMNS)
            for r in rows:
                missing = [c for c in EVAL_COLUMNS if c not in r]
                if missing:
                    raise ValueError(f"row {r} lacks {missing}")
                for c in ("value", "stderr"):
                    if isinstance(r[c], float) and not math.isfinite(r[c]):
                        raise ValueError(f"{path}: {r['run_id']} {r['task']} {r['metric']}: {c} is {r[c]}, not a "
                                         f"number; nothing written")
                w.writerow([_cell(r[c]) for c in EVAL_COLUMNS])


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.10g}"
    return str(v)
