"""Queries on an open store, as pandas DataFrames (or plain dicts): the meta table, runs, the
train/eval logs, the evaluation rows, the recorded issues and each group's run status."""
from __future__ import annotations

import json
import sqlite3
from typing import Iterable

import pandas as pd

from .schema import FLAGS, run_columns


def read_meta(con: sqlite3.Connection) -> dict:
    return {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta ORDER BY key")}


def store_domains(con: sqlite3.Connection) -> list[str]:
    """The validation domains of a store, in evaluation order."""
    return read_meta(con)["domains"]


def load_runs(con: sqlite3.Connection, group: str | None = None, status: str | None = None,
              current: bool = True, with_json: bool = False) -> pd.DataFrame:
    """Runs, sorted by run_id. current=True leaves out stale directories that are not in the grid."""
    cols = [c for c, _ in run_columns(store_domains(con)) if with_json or not c.endswith("_json")]
    where, args = [], []
    if group is not None:
        where.append('"group" = ?')
        args.append(group)
    if status is not None:
        where.append("status = ?")
        args.append(status)
    if current:
        where.append("(in_grid IS NULL OR in_grid = 1)")
    sql = "SELECT " + ", ".join(f'"{c}"' for c in cols) + " FROM runs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    df = pd.read_sql_query(sql + " ORDER BY run_id", con, params=args)
    for c in ("d_model", "n_prelude", "n_loops", "n_layers", "seed", "in_grid", *FLAGS):
        df[c] = df[c].astype("Int64")
    return df


def load_train_log(con: sqlite3.Connection, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    return _load_log(con, "train_log", run_ids, ["run_id", "step"])


def load_eval_log(con: sqlite3.Connection, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    return _load_log(con, "eval_log", run_ids, ["run_id", "step", "domain"])


def _load_log(con, table, run_ids, order):
    sql, args = f"SELECT * FROM {table}", []
    if run_ids is not None:
        run_ids = list(run_ids)
        if not run_ids:
            return pd.read_sql_query(f"SELECT * FROM {table} WHERE 0", con)
        sql += f" WHERE run_id IN ({', '.join('?' for _ in run_ids)})"
        args = run_ids
    return pd.read_sql_query(sql + " ORDER BY " + ", ".join(order), con, params=args)


def load_eval_results(con: sqlite3.Connection, file: str | None = None) -> pd.DataFrame:
    sql, args = "SELECT * FROM eval_results", []
    if file is not None:
        sql, args = sql + " WHERE file = ?", [file]
    order = " ORDER BY file, run_id, setting, n_loops, num_fewshot, task, metric, source, experiment, value"
    return pd.read_sql_query(sql + order, con, params=args)


def train_diag_mean(con: sqlite3.Connection, name: str) -> dict[str, float]:
    """run_id -> the mean over logged steps of one per-step diagnostic (e.g. n_loops: a sampled-R
    run's realised mean R)."""
    rows = con.execute("SELECT run_id, AVG(value) FROM train_diag WHERE name = ? GROUP BY run_id", (name,))
    return {r: float(v) for r, v in rows if v is not None}


def load_issues(con: sqlite3.Connection) -> pd.DataFrame:
    return pd.read_sql_query("SELECT * FROM issues ORDER BY path, message", con)


def run_status(con: sqlite3.Connection, group: str | None = None) -> dict:
    """Per group: how many runs are expected and complete, and which are failed/incomplete/missing
    (or on disk but not in the current grid)."""
    every = load_runs(con, group=group, current=False)
    out = {}
    for g, df in every.groupby("group", sort=True):
        cur = df[df["in_grid"].isna() | (df["in_grid"] == 1)]
        out[g] = {
            "n_expected": int((df["in_grid"] == 1).sum()) if df["in_grid"].notna().any() else None,
            "n_complete": int((cur["status"] == "complete").sum()),
            **{s: sorted(cur.loc[cur["status"] == s, "run_id"]) for s in ("failed", "incomplete", "missing")},
            "not_in_grid": sorted(df.loc[df["in_grid"] == 0, "run_id"]),
        }
    return out
