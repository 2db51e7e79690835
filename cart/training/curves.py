"""A run's training and validation curves, logged through DVCLive in its standard layout, so
`dvc plots show/diff` and `dvc exp show` read them as they read any DVCLive run:

    plots/<group>/<name>/metrics.json                      latest value of every curve (DVCLive's summary)
    plots/<group>/<name>/plots/metrics/train/<metric>.tsv  step, <metric>  (TRAIN_METRICS, and a
                                                           model's own diagnostics, e.g. CART's gate)
    plots/<group>/<name>/plots/metrics/val/<metric>_<domain>.tsv   step, <metric>_<domain>  (EVAL_METRICS)

This module is the one home of that layout: the training loop writes it, the results store reads
it. A resumed run first cuts every curve back to its checkpoint's step (rewriting each file
atomically), so steps logged after the checkpoint are logged once, by the resumed run.
"""
from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pandas as pd

from ..io import atomic_path

TRAIN_METRICS = ("tokens", "loss", "lr", "grad_norm", "spectral_radius", "tokens_per_s", "mfu")
EVAL_METRICS = ("loss", "ppl", "bpb")
METRICS_DIR = Path("plots") / "metrics"


def _tsv_files(plots_dir: Path, split: str) -> list[Path]:
    d = plots_dir / METRICS_DIR / split
    return sorted(d.glob("*.tsv")) if d.is_dir() else []


def _cut(path: Path, last_step: int) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    s = header.index("step")
    keep = [r for r in body if len(r) == len(header) and r[s].isdigit() and int(r[s]) <= last_step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerows([header, *keep])


def _files_only_live():
    from dvclive import Live

    class FilesOnlyLive(Live):
        """DVCLive's writer without its DVC/git integration: the curves are outputs of the run's
        own DVC stage (dvc.yaml), so this Live saves no experiment, writes no dvc.yaml and never
        asks git for a revision (which DVCLive 3.49 does even with save_dvc_exp=False, and which
        fails in a repository without commits)."""

        def _init_dvc(self):
            pass

    return FilesOnlyLive


class CurveWriter:
    """Logs a run's curves into `plots_dir` through DVCLive. `resume_step` None starts the curves
    afresh (the folder is emptied); an int keeps what was logged up to that step."""

    def __init__(self, plots_dir: Path, resume_step: int | None):
        self.plots_dir = Path(plots_dir)
        if resume_step is None:
            shutil.rmtree(self.plots_dir, ignore_errors=True)
        else:
            for split in ("train", "val"):
                for f in _tsv_files(self.plots_dir, split):
                    _cut(f, resume_step)
        self.plots_dir.mkdir(parents=True, exist_ok=True)
        self.live = _files_only_live()(dir=str(self.plots_dir), resume=resume_step is not None, save_dvc_exp=False,
                                   dvcyaml=None, report=None)

    def _log(self, step: int, names_values) -> None:
        self.live.step = step
        for name, value in names_values:
            if value is not None and math.isfinite(float(value)):
                self.live.log_metric(name, float(value) if isinstance(value, float) else value)
        self.live.make_summary()

    def log_train(self, step: int, values: dict) -> None:
        self._log(step, ((f"train/{k}", v) for k, v in values.items()))

    def log_eval(self, step: int, domain: str, values: dict) -> None:
        self._log(step, ((f"val/{k}_{domain}", values[k]) for k in EVAL_METRICS))


def read_curves(plots_dir: Path, on_issue=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train: one row per step with a column per train metric, eval: step, domain, loss, ppl, bpb).
    A missing folder gives empty frames; an unreadable file or value is skipped and reported to
    `on_issue(path, message)`."""
    plots_dir = Path(plots_dir)
    on_issue = on_issue or (lambda path, message: None)
    train = pd.DataFrame({"step": pd.Series(dtype="int64")})
    for f in _tsv_files(plots_dir, "train"):
        df = _read_metric(f, on_issue)
        if df is not None:
            train = train.merge(df, on="step", how="outer")
    long = []
    for f in _tsv_files(plots_dir, "val"):
        metric, _, domain = f.stem.partition("_")
        df = _read_metric(f, on_issue)
        if df is not None and metric in EVAL_METRICS and domain:
            long.append(df.rename(columns={f.stem: "value"}).assign(domain=domain, metric=metric))
    ev = (pd.concat(long).pivot_table(index=["step", "domain"], columns="metric", values="value", aggfunc="last")
          .reset_index() if long else pd.DataFrame(columns=["step", "domain"]))
    for col in EVAL_METRICS:
        if col not in ev:
            ev[col] = math.nan
    ev = ev[["step", "domain", *EVAL_METRICS]].sort_values(["step", "domain"]).reset_index(drop=True)
    return train.sort_values("step").reset_index(drop=True), ev


def _read_metric(path: Path, on_issue) -> pd.DataFrame | None:
    try:
        df = pd.read_csv(path, sep="\t", dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        on_issue(path, f"unreadable TSV: {e}")
        return None
    if "step" not in df or path.stem not in df:
        on_issue(path, f"missing column(s) {[c for c in ('step', path.stem) if c not in df]}")
        return None
    raw = df[["step", path.stem]]
    df = raw.apply(pd.to_numeric, errors="coerce")
    bad = int((df.isna() & raw.notna()).to_numpy().sum())
    if bad:
        on_issue(path, f"{bad} non-numeric value(s) read as missing")
    df = df.dropna(subset=["step"])
    df["step"] = df["step"].astype("int64")
    return df.drop_duplicates("step", keep="last")
