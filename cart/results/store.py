"""Building the store (one SQLite file, written atomically, or the same store in memory) from a
project folder's runs/, plots/ and eval/, and opening an existing one read-only."""
from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..io import atomic_path, remove_stale_temps
from .ingest import collect_run, read_tsv
from .plan import RunPlan
from .query import read_meta
from .schema import EVAL_RESULT_COLUMNS, GROUPS, RANK_DOMAIN, SCHEMA_VERSION, STATUSES, run_columns, schema_sql


def _sql_value(v):
    if v is None:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, bool):
        return int(v)
    return v


def _insert(con: sqlite3.Connection, table: str, columns: list[str], rows: Iterable[Iterable]) -> None:
    cols = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" for _ in columns)
    con.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})",
                    ([_sql_value(v) for v in r] for r in rows))


def _insert_df(con: sqlite3.Connection, table: str, df: pd.DataFrame) -> None:
    if len(df):
        df = df.astype(object).where(df.notna(), None)
        _insert(con, table, list(df.columns), df.itertuples(index=False, name=None))


def _run_names_on_disk(root: Path, group: str) -> set[str]:
    names = set()
    for top in ("runs", "plots"):
        d = root / top / group
        if d.is_dir():
            names |= {p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return names


def populate(con: sqlite3.Connection, root: str | Path = ".", plan: RunPlan | None = None,
             groups: Iterable[str] = GROUPS, eval_dir: str | Path | None = "eval") -> dict:
    """Create the schema in an empty database and load everything; returns counts."""
    root, groups = Path(root), tuple(groups)
    issues: list[tuple] = []
    expected = {k: v for k, v in (plan.expected if plan else {}).items() if v["group"] in groups}
    rows, trains, evals, diags = [], [], [], []
    for group in groups:
        names = _run_names_on_disk(root, group) | {v["name"] for v in expected.values() if v["group"] == group}
        for name in sorted(names):
            run_id = f"{group}/{name}"
            in_grid = None if plan is None else int(run_id in expected)
            row, train, ev, diag = collect_run(root, group, name, expected.get(run_id), in_grid, issues)
            rows.append(row)
            trains.append(train)
            evals.append(ev)
            diags.append(diag)
    # the runs' validation domains in evaluation order; the ranking domain always has its columns
    domains = list(dict.fromkeys([*(c[len("ppl_"):] for r in rows for c in r if c.startswith("ppl_")), RANK_DOMAIN]))
    con.executescript(schema_sql(domains))
    cols = [c for c, _ in run_columns(domains)]
    _insert(con, "runs", cols, ([r.get(c) for c in cols] for r in rows))
    train_df, eval_df, diag_df = (pd.concat([t for t in frames if len(t)], ignore_index=True)
                                  if any(len(t) for t in frames) else None for frames in (trains, evals, diags))
    for table, df in (("train_log", train_df), ("eval_log", eval_df), ("train_diag", diag_df)):
        if df is not None:
            _insert_df(con, table, df)
    n_results = 0
    if eval_dir is not None:
        eval_dir = root / eval_dir
        for path in sorted(eval_dir.glob("*.tsv")):  # every evaluation stage's rows (cart/evaluation/rows.py)
            df = read_tsv(path, EVAL_RESULT_COLUMNS, issues, None,
                          text_columns=("experiment", "run_id", "setting", "task", "metric", "source"))
            df = df.dropna(subset=["task", "metric"])
            df["setting"] = df["setting"].fillna("")
            df.insert(0, "file", path.stem)
            _insert_df(con, "eval_results", df)
            n_results += len(df)
    meta = {"schema_version": SCHEMA_VERSION, "groups": list(groups), "domains": domains,
            "rank_domain": RANK_DOMAIN, "has_plan": plan is not None,
            "profile": plan.profile if plan else None,
            "ablation_base": plan.ablation_base if plan else None,
            "ablation_seed": plan.ablation_seed if plan else None}
    _insert(con, "meta", ["key", "value"], sorted((k, json.dumps(v, sort_keys=True)) for k, v in meta.items()))
    _insert(con, "issues", ["run_id", "path", "message"], sorted(issues, key=lambda t: (t[1], t[2])))
    con.commit()
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    return {"runs": len(rows), **counts, "train_rows": 0 if train_df is None else len(train_df),
            "eval_rows": 0 if eval_df is None else len(eval_df), "eval_results": n_results,
            "issues": len(issues)}


def build_store(db_path: str | Path, root: str | Path = ".", plan: RunPlan | None = None,
                groups: Iterable[str] = GROUPS, eval_dir: str | Path | None = "eval") -> dict:
    """Build the store into a temporary file beside db_path in one transaction, then rename it
    over db_path: a reader sees the old store or the new one, never half of one."""
    remove_stale_temps(Path(db_path).parent, Path(db_path).name)  # a killed build's half-written store
    with atomic_path(db_path) as tmp:
        tmp.unlink()  # sqlite wants to create the file itself
        con = sqlite3.connect(tmp)
        try:
            counts = populate(con, root, plan, groups, eval_dir)
        finally:
            con.close()
    return counts


def memory_store(root: str | Path = ".", plan: RunPlan | None = None, groups: Iterable[str] = GROUPS,
                 eval_dir: str | Path | None = None) -> sqlite3.Connection:
    """The same store in memory (the per-group summaries use it)."""
    con = sqlite3.connect(":memory:")
    populate(con, root, plan, groups, eval_dir)
    return con


def connect(db_path: str | Path) -> sqlite3.Connection:
    """Open an existing store read-only."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"results store not found: {db_path} (run `python -m pipeline.results`)")
    con = sqlite3.connect(f"file:{db_path.resolve()}?mode=ro", uri=True)
    version = read_meta(con).get("schema_version")
    if version != SCHEMA_VERSION:
        con.close()
        raise ValueError(f"{db_path}: schema version {version}, this code reads {SCHEMA_VERSION}; rebuild it")
    return con
