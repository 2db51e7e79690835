"""Reading one run's files into its `runs` row and curves, whatever state they are in: config.json,
summary.json, the weights' safetensors header and the DVCLive curves under plots/; and the TSV reader
the evaluation rows use. Anything unreadable is appended to `issues` instead of raising.

Parameter and FLOPs counts are recomputed from each run's config with cart.accounting (through
cart.models), never copied from a formula here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..models import config_from_dict, count_params, forward_flops
from ..training.curves import EVAL_METRICS, read_curves
from ..training.run_summary import summary_problem
from .plan import parse_run_name
from .schema import FIXED_RUN_COLUMNS, FLAGS, TRAIN_LOG_COLUMNS


def _read_json(path: Path, issues: list, run_id: str | None) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (ValueError, OSError) as e:
        issues.append((run_id, str(path), f"unreadable JSON: {e}"))
        return None


def read_tsv(path: Path, columns: Iterable[str], issues: list, run_id: str | None,
             text_columns: Iterable[str] = ()) -> pd.DataFrame:
    """A TSV as a DataFrame with exactly `columns`: absent columns become NaN, numeric columns
    are coerced (empty or malformed cells -> NaN). A missing file is an empty frame."""
    columns, text_columns = list(columns), set(text_columns)
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        issues.append((run_id, str(path), f"unreadable TSV: {e}"))
        return pd.DataFrame(columns=columns)
    absent = [c for c in columns if c not in df.columns]
    if absent and len(df):
        issues.append((run_id, str(path), f"missing column(s) {absent}"))
    df = df.reindex(columns=columns)
    for c in columns:
        if c in text_columns:
            df[c] = df[c].where(df[c].notna() & (df[c] != ""), None)
        else:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


# A runs/ folder imported without its weights (bench/gpu/import_runs.py: the GPU machine's checkpoints are not
# brought back) holds this file; there a missing model.safetensors is expected, a damaged one is not.
WEIGHTS_NOT_KEPT = "WEIGHTS_NOT_KEPT"


def weights_damage(path: Path) -> str | None:
    """What is wrong with a completed run's safetensors weights, read from the header alone (no
    torch, no full read): missing, a header that does not parse, or a file shorter or longer than
    the tensors the header lists (a truncated copy). None when the file is whole."""
    if not path.is_file():
        if (path.parents[2] / WEIGHTS_NOT_KEPT).is_file():
            return None
        return "model.safetensors is missing"
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if not 2 <= header_len <= size - 8:
                raise ValueError(f"header length {header_len}")
            header = json.loads(f.read(header_len))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        return f"model.safetensors is damaged: unreadable header ({e})"
    expected = 8 + header_len + max(ends, default=0)
    if size != expected:
        return f"model.safetensors is damaged: {size} bytes, its header lists {expected}"
    return None


def _model_config(cfg: dict | None, issues: list, run_id: str, path: Path):
    if not cfg or not isinstance(cfg.get("model"), dict):
        return None
    try:
        return config_from_dict(cfg["model"], where=f"{run_id} config.json model")
    except (ValueError, TypeError) as e:
        issues.append((run_id, str(path), f"model config does not rebuild: {e}"))
        return None


def _num(v):
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return None if (isinstance(v, float) and not math.isfinite(v)) else v
    return None


def collect_run(root: Path, group: str, name: str, expected: dict | None, in_grid: int | None,
                issues: list) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """One run's `runs` row and its train/eval curves, whatever state its files are in."""
    run_id = f"{group}/{name}"
    run_dir, plots_dir = root / "runs" / group / name, root / "plots" / group / name
    row: dict[str, Any] = {c: None for c, _ in FIXED_RUN_COLUMNS}
    row |= {"run_id": run_id, "group": group, "name": name, "in_grid": in_grid}
    row |= {k: v for k, v in parse_run_name(group, name).items() if k in row}
    if expected:
        row |= {k: v for k, v in expected.items() if k in row and v is not None}

    cfg_path, summary_path = run_dir / "config.json", run_dir / "summary.json"
    cfg = _read_json(cfg_path, issues, run_id)
    summary = _read_json(summary_path, issues, run_id)
    model = _model_config(cfg, issues, run_id, cfg_path)
    if cfg:
        row["config_json"] = json.dumps(cfg, sort_keys=True)
        if isinstance(cfg.get("seed"), int):
            row["seed"] = cfg["seed"]
        variant, run = cfg.get("variant", row["variant"]), cfg.get("run") or {}
        if variant is not None and not isinstance(variant, str):
            issues.append((run_id, str(cfg_path), f"variant {variant!r} is not text; ignored"))
        else:
            row["variant"] = variant
        if not isinstance(run, dict):
            issues.append((run_id, str(cfg_path), f"run {run!r} is not an object of run settings; ignored"))
            run = {}
        if all(isinstance(run.get(k), int) for k in ("seq_len", "micro_batch", "grad_accum")):
            row["seq_len"] = run["seq_len"]
            row["tokens_per_step"] = run["seq_len"] * run["micro_batch"] * run["grad_accum"]
        if isinstance(run.get("steps"), int):
            row["planned_steps"] = run["steps"]
    if model is not None:
        m = model.to_dict()
        row["arch"] = m["arch"]
        for k in ("d_model", "n_prelude", "n_loops", "n_layers", *FLAGS):  # None where the family has no such field
            row[k] = int(m[k]) if isinstance(m.get(k), (bool, int)) else m.get(k)
        counts = count_params(model)
        row["stored_params"], row["effective_params"] = counts["stored"], counts["effective"]
        if row["seq_len"]:
            row["flops_per_seq"] = forward_flops(model, row["seq_len"])
            row["dense_layer_flops_per_seq"] = model.dense_layer_flops(row["seq_len"])
    if row["planned_steps"] and row["tokens_per_step"]:
        row["planned_tokens"] = row["planned_steps"] * row["tokens_per_step"]

    if summary is not None:
        status, problem = summary.get("status"), summary_problem(summary)
        row["status"], row["failure"] = status, summary.get("failure")
        row["summary_json"] = json.dumps(summary, sort_keys=True)
        if problem:  # the training stage refuses it too: nothing about this run can be trusted or ranked
            row["status"] = "failed"
            row["failure"] = (f"summary.json is not a run summary ({problem}); delete it and re-run the run's "
                              "stage to finish or retrain it")
            issues.append((run_id, str(summary_path), f"not a run summary: {problem}"))
        damage = weights_damage(run_dir / "model.safetensors") if row["status"] == "complete" else None
        if damage:  # the evaluation stages would load these weights: a failed run, not a silent one
            row["status"] = "failed"
            row["failure"] = (f"{damage}; restore it (`dvc checkout runs/{group}/{name}`) or delete the run "
                              "folder to retrain")
            issues.append((run_id, str(run_dir / "model.safetensors"), damage))
        for k in ("steps", "tokens", "wall_s", "tokens_per_s", "mfu", "peak_flops", "spectral_radius",
                  "final_train_loss"):
            row[k] = _num(summary.get(k))
        for k in ("device", "torch", "git_commit"):
            row[k] = summary.get(k) if isinstance(summary.get(k), str) else None
        params = summary.get("params") or {}
        if row["stored_params"] is None and isinstance(params, dict):  # config unreadable: trust the run
            row["stored_params"], row["effective_params"] = _num(params.get("stored")), _num(params.get("effective"))
        if row["flops_per_seq"] is None:
            row["flops_per_seq"] = _num(summary.get("flops_per_seq"))
        final = summary.get("final_eval") or {}
        if isinstance(final, dict):  # every domain the run was evaluated on, in its order
            for dom, vals in final.items():
                for m in EVAL_METRICS:
                    row[f"{m}_{dom}"] = _num((vals or {}).get(m)) if isinstance(vals, dict) else None
    elif run_dir.is_dir() or plots_dir.is_dir():
        row["status"] = "incomplete"
    else:
        row["status"] = "missing"

    curves, evals = read_curves(plots_dir, lambda path, msg: issues.append((run_id, str(path), msg)))
    train = curves.reindex(columns=list(TRAIN_LOG_COLUMNS))
    diag = curves.drop(columns=[c for c in TRAIN_LOG_COLUMNS if c != "step"], errors="ignore") \
        .melt(id_vars="step", var_name="name", value_name="value").dropna(subset=["value"])
    if len(train):
        row["last_logged_step"] = int(train["step"].max())
    for df in (train, evals, diag):
        df.insert(0, "run_id", run_id)
    return row, train, evals, diag
