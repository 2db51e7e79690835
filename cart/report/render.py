"""Formatting: numbers to fixed text, DataFrames to Markdown and CSV, deterministically."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

DASH = "—"  # not reported / not applicable
MISSING = "missing"  # expected by the grid, no complete run


def isnan(v) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return bool(isinstance(v, (float, np.floating)) and math.isnan(v))
    except TypeError:
        return False


def sig(v, digits: int = 4, empty: str = DASH) -> str:
    """`digits` significant digits, never in scientific notation."""
    if isnan(v):
        return empty
    return np.format_float_positional(float(v), precision=digits, unique=False, fractional=False, trim="-")


def fixed(v, decimals: int = 2, empty: str = DASH) -> str:
    return empty if isnan(v) else f"{float(v):.{decimals}f}"


def integer(v, empty: str = DASH) -> str:
    return empty if isnan(v) else f"{int(round(float(v))):,}"


def millions(v, empty: str = DASH) -> str:
    """Parameters in millions: one decimal like the paper from 10M up, 3 significant digits below."""
    if isnan(v):
        return empty
    x = float(v) / 1e6
    return f"{x:.1f}" if x >= 10 else sig(x, 3)


def opt_int(v, empty: str = DASH) -> str:
    return empty if isnan(v) else str(int(v))


def pct(v, decimals: int = 2, empty: str = DASH, signed: bool = True) -> str:
    if isnan(v):
        return empty
    return f"{float(v):+.{decimals}f}%" if signed else f"{float(v):.{decimals}f}%"


def pm(mean, std, n=None, digits: int = 4, empty: str = DASH) -> str:
    """mean ± std (n); the std is left out for a single seed."""
    if isnan(mean):
        return empty
    s = sig(mean, digits)
    if not isnan(std):
        s += f" ± {sig(std, 2)}"
    if n is not None and not isnan(n):
        s += f" (n={int(n)})"
    return s


@dataclasses.dataclass
class Table:
    """One report table: `data` goes to CSV (numeric), `view` to Markdown (text)."""

    id: str
    title: str
    data: pd.DataFrame
    view: pd.DataFrame
    notes: list[str] = dataclasses.field(default_factory=list)
    empty_reason: str | None = None  # set when the table has no rows of ours


def escape(cell) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "_(no rows)_"
    cols = [escape(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(escape(DASH if isnan(c) else c) for c in row) + " |")
    return "\n".join(lines)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Plain CSV, LF line ends, floats to 10 significant digits: stable for the same input."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].map(lambda v: "" if isnan(v) else v)
    out.to_csv(path, index=False, float_format="%.10g", lineterminator="\n")


def view_from(data: pd.DataFrame, spec: list[tuple[str, str | Callable]]) -> pd.DataFrame:
    """A Markdown view: spec is [(header, column name | function(row) -> str)]."""
    rows = []
    for _, r in data.iterrows():
        rows.append([f(r) if callable(f) else (DASH if isnan(r.get(f)) else str(r.get(f))) for _, f in spec])
    return pd.DataFrame(rows, columns=[h for h, _ in spec])
