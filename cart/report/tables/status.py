"""Run status: each group's expected, complete, failed, incomplete and missing runs, and every run
that is not complete with the reason the store recorded."""
from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd

from ...results.query import load_issues, load_runs, run_status
from ...results.schema import GROUPS
from ..render import DASH, Table, integer, isnan, view_from
from .common import int_or_none


# ---- run status --------------------------------------------------------------------------------
def table_status(con: sqlite3.Connection) -> Table:
    st = run_status(con)
    rows = []
    for g in GROUPS:
        s = st.get(g)
        if s is None:
            rows.append({"group": g, "expected": np.nan, "complete": 0, "failed": 0, "incomplete": 0, "missing": 0,
                         "not_in_grid": 0})
            continue
        rows.append({"group": g, "expected": np.nan if s["n_expected"] is None else s["n_expected"],
                     "complete": s["n_complete"], "failed": len(s["failed"]), "incomplete": len(s["incomplete"]),
                     "missing": len(s["missing"]), "not_in_grid": len(s["not_in_grid"])})
    data = pd.DataFrame(rows)
    view = view_from(data, [("group", "group"), ("expected", lambda r: integer(r["expected"])),
                            *((c, (lambda c: lambda r: integer(r[c]))(c))
                              for c in ("complete", "failed", "incomplete", "missing", "not_in_grid"))])
    return Table("table00_status", "Runs per group", data, view,
                 ["expected = runs params.yaml's grids define; not_in_grid = run directories left from an "
                  "earlier grid (kept in the store, left out of every table)."])


def table_problems(con: sqlite3.Connection) -> Table:
    runs = load_runs(con, current=False)
    bad = runs[(runs["status"] != "complete") | (runs["in_grid"].fillna(1) == 0)]
    data = bad[["run_id", "status", "in_grid", "failure", "last_logged_step", "planned_steps"]].reset_index(drop=True)
    issues = load_issues(con)
    view = view_from(data, [("run", "run_id"),
                            ("status", lambda r: r["status"] + (" (not in grid)"
                                                                if int_or_none(r["in_grid"]) == 0 else "")),
                            ("last logged step", lambda r: integer(r["last_logged_step"])),
                            ("planned steps", lambda r: integer(r["planned_steps"])),
                            ("failure", lambda r: DASH if isnan(r["failure"]) else str(r["failure"]))])
    notes = [f"store issue: {r['path']}: {r['message']}" for _, r in issues.iterrows()]
    return Table("table00_incomplete_runs", "Runs without a complete result", data, view, notes,
                 empty_reason=None if len(data) else "every run of the grid is complete")
