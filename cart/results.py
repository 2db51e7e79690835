"""The results store: every run's config, summary, curves and evaluation rows in one SQLite file
(the paper's results.db), plus the queries and statistics the summaries and the report use.

Inputs (written by the training and evaluation stages):
    runs/<group>/<name>/config.json     the run's full config (model, run, train, seed, variant)
    runs/<group>/<name>/summary.json    written when the run completed or failed
    plots/<group>/<name>/               the run's DVCLive curves (cart/training/curves.py): train metrics and
                                        a model's diagnostics per step, validation loss/ppl/bpb per domain
    eval/<experiment>.tsv               every evaluation stage's rows (cart/evaluation/rows.py)

Tables (`schema()` below): runs (one row per run: expected-but-missing, incomplete and failed runs
included, with a status; one loss/ppl/bpb column per validation domain), train_log, train_diag
(a model's own per-step diagnostics), eval_log, eval_results, meta (the plan the store was built
against) and issues (anything unreadable, recorded instead of crashing).

Parameter and FLOPs counts are recomputed from each run's config with cart.accounting, never
copied from a formula here. Statistics use scipy (linregress on logs for power laws, spearmanr).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import stats

from .training.curves import EVAL_METRICS, TRAIN_METRICS, read_curves
from .evaluation.rows import EVAL_COLUMNS
from .experiments import GROUPS as RUN_GROUPS
from .experiments import group_of
from .io import atomic_path, remove_stale_temps
from .models import config_from_dict, count_params, forward_flops
from .training.run_summary import summary_problem

SCHEMA_VERSION = 1
GROUPS = tuple(RUN_GROUPS)
RANK_DOMAIN = "wikipedia"  # the paper ranks configs and picks "best" by Wikipedia PPL
FLAGS = ("unfreeze_kv", "unshare_core", "self_attn_core", "disable_hyperconnection", "disable_lti",
         "disable_lie")
STATUSES = ("complete", "failed", "incomplete", "missing")
CHINCHILLA_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. (2022), as the paper's Table 2 uses it

TRAIN_LOG_COLUMNS = ("step", *TRAIN_METRICS)
EVAL_LOG_COLUMNS = ("step", "domain", *EVAL_METRICS)
EVAL_RESULT_COLUMNS = EVAL_COLUMNS

_RUN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "TEXT PRIMARY KEY"), ("group", "TEXT NOT NULL"), ("name", "TEXT NOT NULL"),
    ("arch", "TEXT"), ("d_model", "INTEGER"), ("n_prelude", "INTEGER"), ("n_loops", "INTEGER"),
    ("n_layers", "INTEGER"), ("seed", "INTEGER"), ("variant", "TEXT"),
    *((f, "INTEGER") for f in FLAGS),
    ("in_grid", "INTEGER"),  # 1 in the params grid, 0 a stale directory, NULL no grid was given
    ("status", "TEXT NOT NULL"), ("failure", "TEXT"),
    ("steps", "INTEGER"), ("planned_steps", "INTEGER"), ("last_logged_step", "INTEGER"),
    ("seq_len", "INTEGER"), ("tokens_per_step", "INTEGER"), ("tokens", "INTEGER"), ("planned_tokens", "INTEGER"),
    ("wall_s", "REAL"), ("tokens_per_s", "REAL"), ("mfu", "REAL"), ("peak_flops", "REAL"),
    ("device", "TEXT"), ("torch", "TEXT"), ("git_commit", "TEXT"),
    ("stored_params", "INTEGER"), ("effective_params", "INTEGER"),
    ("flops_per_seq", "INTEGER"),  # forward, embedding and head excluded (paper Table 3)
    ("dense_layer_flops_per_seq", "INTEGER"),  # one Dense layer at the same d and seq_len
    ("spectral_radius", "REAL"), ("final_train_loss", "REAL"),
    ("config_json", "TEXT"), ("summary_json", "TEXT"),
)


def run_columns(domains: Iterable[str]) -> list[tuple[str, str]]:
    """The runs table's columns: one final loss/ppl/bpb per validation domain of the store (the
    domains come from the runs themselves, in the order they were evaluated)."""
    per_domain = [(f"{m}_{d}", "REAL") for d in domains for m in EVAL_METRICS]
    return [*_RUN_COLUMNS[:-2], *per_domain, *_RUN_COLUMNS[-2:]]


def schema(domains: Iterable[str]) -> str:
    return f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs ({", ".join(f'"{c}" {t}' for c, t in run_columns(domains))});
CREATE TABLE train_log (run_id TEXT NOT NULL REFERENCES runs(run_id), step INTEGER NOT NULL, tokens INTEGER,
    loss REAL, lr REAL, grad_norm REAL, spectral_radius REAL, tokens_per_s REAL, mfu REAL,
    PRIMARY KEY (run_id, step));
CREATE TABLE train_diag (run_id TEXT NOT NULL REFERENCES runs(run_id), step INTEGER NOT NULL,
    name TEXT NOT NULL, value REAL, PRIMARY KEY (run_id, step, name));
CREATE TABLE eval_log (run_id TEXT NOT NULL REFERENCES runs(run_id), step INTEGER NOT NULL,
    domain TEXT NOT NULL, loss REAL, ppl REAL, bpb REAL, PRIMARY KEY (run_id, step, domain));
CREATE TABLE eval_results (file TEXT NOT NULL, experiment TEXT, run_id TEXT, setting TEXT, n_loops INTEGER,
    num_fewshot INTEGER, task TEXT, metric TEXT, value REAL, stderr REAL, source TEXT);
CREATE TABLE issues (run_id TEXT, path TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX eval_results_run ON eval_results (run_id);
"""


def store_domains(con: sqlite3.Connection) -> list[str]:
    """The validation domains of a store, in evaluation order."""
    return read_meta(con)["domains"]


# ---------------------------------------------------------------------------------------------
# The plan: which runs params.yaml expects (so missing ones are reported), and the ablation base
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunPlan:
    """What the store is built against. expected maps run_id -> known fields of a run that may not
    exist yet (group, name, d_model, n_prelude, n_loops, n_layers, seed, variant, flags)."""

    expected: dict[str, dict] = dataclasses.field(default_factory=dict)
    ablation_base: dict | None = None  # {"d_model", "n_prelude", "n_loops"}
    ablation_seed: int | None = None
    profile: str | None = None


def parse_run_name(group: str, name: str) -> dict:
    """The fields a run's name encodes (cart.experiments' templates), and its family; {} for a
    directory whose name no longer matches its group's template."""
    g = group_of(group)
    try:
        return {"arch": g.arch, **g.parse(name)}
    except ValueError:
        return {"arch": g.arch}


def plan_from_params(params: dict, groups: Iterable[str] = GROUPS) -> RunPlan:
    """The runs params.yaml's grids expand to (cart.experiments.run_names), described from the
    groups' plan keys alone."""
    from .experiments import describe_run, plan_keys, run_names
    from .params import section, view

    groups = tuple(groups)
    p = view(params, plan_keys(groups))
    expected = {f"{group}/{name}": describe_run(p, group, name)
                for group, names in run_names(p, groups).items() for name in names}
    base = dict(section(p, "ablation.base")) if "ablation" in groups else None
    seed = section(p, "ablation.seed") if "ablation" in groups else None
    return RunPlan(expected=expected, ablation_base=base, ablation_seed=seed)


# ---------------------------------------------------------------------------------------------
# Reading one run
# ---------------------------------------------------------------------------------------------
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


# A runs/ folder imported without its weights (bench/gpu_import: the GPU machine's checkpoints are not
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
    row: dict[str, Any] = {c: None for c, _ in _RUN_COLUMNS}
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


# ---------------------------------------------------------------------------------------------
# Building the store
# ---------------------------------------------------------------------------------------------
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
    con.executescript(schema(domains))
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


# ---------------------------------------------------------------------------------------------
# Queries (pandas DataFrames)
# ---------------------------------------------------------------------------------------------
def read_meta(con: sqlite3.Connection) -> dict:
    return {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta ORDER BY key")}


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


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def power_law_fit(x, y) -> dict | None:
    """Fit y = c * x^(-exponent) by least squares on logs (scipy.stats.linregress).
    Returns exponent, prefactor c, R^2 (of the log-log fit) and n; None with fewer than 2 points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    if len(np.unique(x)) < 2:
        return None
    fit = stats.linregress(np.log(x), np.log(y))
    return {"exponent": float(-fit.slope), "prefactor": float(np.exp(fit.intercept)),
            "r2": float(fit.rvalue ** 2), "n": int(len(x))}


def segment_exponents(x, y) -> list[dict]:
    """The implied exponent between each pair of consecutive x (the paper's per-segment exponents)."""
    order = np.argsort(np.asarray(x, dtype=float))
    x, y = np.asarray(x, dtype=float)[order], np.asarray(y, dtype=float)[order]
    out = []
    for i in range(1, len(x)):
        fit = power_law_fit(x[i - 1:i + 1], y[i - 1:i + 1])
        out.append({"from": float(x[i - 1]), "to": float(x[i]), "exponent": None if fit is None else fit["exponent"]})
    return out


def spearman(a, b) -> dict:
    """Spearman rank correlation (scipy.stats.spearmanr) on the finite pairs; rho None below 2 pairs
    or when a ranking is constant."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 2:
        return {"rho": None, "p": None, "n": n}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(a[ok], b[ok])
    rho, p = float(res.statistic), float(res.pvalue)
    return {"rho": rho if math.isfinite(rho) else None, "p": p if math.isfinite(p) else None, "n": n}


def residual_fraction(rho, n_loops):
    """rho^R: the fraction of the initial residual the LTI gate keeps through R iterations."""
    return np.power(np.asarray(rho, dtype=float), np.asarray(n_loops, dtype=float))


def pct_delta(new, ref):
    """100 * (new / ref - 1): negative means `new` has the lower (better) PPL."""
    new, ref = np.asarray(new, dtype=float), np.asarray(ref, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 100.0 * (new / ref - 1.0)


def run_metrics(domains: Iterable[str]) -> tuple[str, ...]:
    """The per-run numbers seed statistics are taken over."""
    return tuple(f"{m}_{d}" for m in ("ppl", "bpb", "loss") for d in domains) + (
        "spectral_radius", "tokens_per_s", "mfu", "final_train_loss", "wall_s")


def seed_stats(runs: pd.DataFrame, keys: list[str], metrics: Iterable[str]) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one seed) and n over the complete runs of each key combination."""
    done = runs[runs["status"] == "complete"]
    metrics = list(metrics)
    if done.empty:
        return pd.DataFrame(columns=[*keys, "n_seeds", "seeds", "run_ids",
                                     *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))])
    g = done.groupby(keys, sort=True, dropna=False)
    out = g[metrics].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out.insert(0, "n_seeds", g.size())
    out.insert(1, "seeds", g["seed"].agg(lambda s: ",".join(str(int(v)) for v in sorted(s.dropna()))))
    out.insert(2, "run_ids", g["run_id"].agg(lambda s: ",".join(sorted(s))))
    return out.reset_index()


def expected_counts(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Runs per key combination in the current grid, whatever their status."""
    return runs.groupby(keys, sort=True, dropna=False).size().rename("n_expected").reset_index()


def config_stats(runs: pd.DataFrame, keys: list[str], domains: Iterable[str]) -> pd.DataFrame:
    """Per key combination: n expected, n complete (n_seeds) and the seed statistics of every run metric."""
    st = seed_stats(runs, keys, run_metrics(domains))
    out = expected_counts(runs, keys).merge(st, on=keys, how="left")
    out["n_seeds"] = out["n_seeds"].fillna(0).astype(int)
    return out


# ---------------------------------------------------------------------------------------------
# Per-group views and summaries (metrics/<group>.json and the report share them)
# ---------------------------------------------------------------------------------------------
def stage1_ranking(con: sqlite3.Connection) -> pd.DataFrame:
    """Complete Stage 1 runs ranked by final Wikipedia PPL (rank 1 = best)."""
    df = load_runs(con, "stage1", status="complete").dropna(subset=["d_model", "n_prelude", "n_loops"])
    df = df[df[f"ppl_{RANK_DOMAIN}"].notna()].sort_values([f"ppl_{RANK_DOMAIN}", "run_id"]).reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    return df


def stage1_best_per_d(con: sqlite3.Connection) -> pd.DataFrame:
    r = stage1_ranking(con)
    return r.sort_values(["d_model", "rank"]).groupby("d_model", sort=True).head(1).reset_index(drop=True)


def stage2_configs(con: sqlite3.Connection) -> pd.DataFrame:
    """Stage 2 per (d, P, R): seed statistics of every metric, n complete and n expected, and
    rho^R computed from the seed-mean spectral radius."""
    keys = ["d_model", "n_prelude", "n_loops"]
    runs = load_runs(con, "stage2").dropna(subset=keys)  # a key can only be unknown without plan and config
    if runs.empty:
        return pd.DataFrame(columns=keys)
    out = config_stats(runs, keys, store_domains(con))
    out["rho_pow_R"] = residual_fraction(out["spectral_radius_mean"], out["n_loops"]) \
        if "spectral_radius_mean" in out else np.nan
    return out.sort_values(keys).reset_index(drop=True)


def best_per_d(configs: pd.DataFrame) -> pd.DataFrame:
    """The config with the lowest seed-mean Wikipedia PPL at each d (ties: smaller R), and the
    complete run of its lowest seed."""
    col = f"ppl_{RANK_DOMAIN}_mean"
    if configs.empty or col not in configs:
        return pd.DataFrame(columns=["d_model", "n_loops", "run_id"])
    ok = configs[configs[col].notna()].sort_values(["d_model", col, "n_loops"])
    best = ok.groupby("d_model", sort=True).head(1).copy()
    best["run_id"] = best["run_ids"].map(lambda s: _lowest_seed_run(s))
    return best.reset_index(drop=True)


def _lowest_seed_run(run_ids: str) -> str:
    ids = run_ids.split(",")
    return min(ids, key=lambda r: (parse_run_name(*r.split("/", 1)).get("seed", 0), r))


def dense_configs(con: sqlite3.Connection) -> pd.DataFrame:
    keys = ["d_model", "n_layers"]
    runs = load_runs(con, "dense").dropna(subset=keys)
    if runs.empty:
        return pd.DataFrame(columns=keys)
    out = config_stats(runs, keys, store_domains(con))
    params = runs.groupby(keys, dropna=False)[["stored_params", "effective_params", "flops_per_seq"]].first()
    out = out.merge(params.reset_index(), on=keys, how="left")
    return out.sort_values(keys).reset_index(drop=True)


def dense_vs_cart(con: sqlite3.Connection) -> tuple[pd.DataFrame, dict | None]:
    """Each Dense config against the best-R Stage 2 CART at the Dense width: deltas in % of CART's
    seed-mean PPL. Returns (table, the CART reference or None)."""
    doms = store_domains(con)
    dense = dense_configs(con)
    best = best_per_d(stage2_configs(con))
    ref = None
    if not dense.empty:
        d = dense["d_model"].dropna()
        d = int(d.iloc[0]) if len(d) else None
        hit = best[best["d_model"] == d] if d is not None else best.iloc[0:0]
        if len(hit):
            ref = hit.iloc[0].to_dict()
    for dom in doms:
        cart = ref.get(f"ppl_{dom}_mean") if ref else np.nan
        dense[f"delta_ppl_{dom}_pct"] = pct_delta(dense.get(f"ppl_{dom}_mean", np.nan), cart) \
            if len(dense) else []
    return dense, ref


def _config_fields(row) -> dict:
    return {k: (None if pd.isna(row.get(k)) else int(row[k])) for k in ("d_model", "n_prelude", "n_loops", *FLAGS)}


def ablation_table(con: sqlite3.Connection) -> tuple[pd.DataFrame, dict]:
    """Each ablation run against (a) the same-seed Stage 2 run at ablation.base, (b) the seed
    mean of that base config and (c) where the variant's own (d, R) is a different Stage 2 config
    (e.g. the P=4, R=10 spot check), the same-seed Stage 2 run at that (d, R). One row per run: a
    multi-seed variant (ablation.multi_seed) has a row per seed, each compared at its own seed
    (its seed mean is Table 9's spot-check row); `info` is the base at ablation.seed."""
    doms = store_domains(con)
    meta = read_meta(con)
    base_cfg, seed = meta.get("ablation_base"), meta.get("ablation_seed")
    runs = load_runs(con, "ablation")
    s2 = load_runs(con, "stage2")
    info: dict[str, Any] = {"config": base_cfg, "seed": seed, "run_id": None, "status": "unknown"}

    def pick(d, p, r, sd, status=None):
        m = s2[(s2["d_model"] == d) & (s2["n_loops"] == r)]
        if p is not None:
            m = m[m["n_prelude"] == p]
        if sd is not None:
            m = m[m["seed"] == sd]
        if status:
            m = m[m["status"] == status]
        return m.sort_values("run_id")

    base_row, base_mean = None, None
    if base_cfg:
        d, p, r = base_cfg.get("d_model"), base_cfg.get("n_prelude"), base_cfg.get("n_loops")
        same = pick(d, p, r, seed)
        if len(same):
            base_row = same.iloc[0]
            info |= {"run_id": base_row["run_id"], "status": base_row["status"]}
        else:
            info["status"] = "not in the Stage 2 grid"
        allseeds = pick(d, p, r, None, "complete")
        if len(allseeds):
            base_mean = allseeds[[f"ppl_{dom}" for dom in doms]].mean()
            info["n_seeds_complete"] = int(len(allseeds))
    base_fields = None
    if base_cfg:
        base_fields = {k: None for k in ("d_model", "n_prelude", "n_loops")} | {f: 0 for f in FLAGS}
        base_fields |= {k: int(v) for k, v in base_cfg.items() if k in base_fields and v is not None}
    rows = []
    for _, v in runs.iterrows():
        row = v.to_dict()
        run_seed = seed if pd.isna(v["seed"]) else int(v["seed"])  # a multi-seed variant's run: its own
        same = base_row if run_seed == seed else None
        if base_cfg and run_seed != seed:
            m = pick(base_cfg.get("d_model"), base_cfg.get("n_prelude"), base_cfg.get("n_loops"), run_seed)
            same = m.iloc[0] if len(m) else None
        same_ok = same is not None and same["status"] == "complete"
        row["base_run_id"] = None if same is None else same["run_id"]
        changes = {}
        if base_fields is not None:  # what the variant changes relative to ablation.base
            for k, val in _config_fields(v).items():
                if val is not None and val != base_fields[k]:
                    changes[k] = val
        row["changes"] = ", ".join(f"{k}={val}" for k, val in sorted(changes.items()))
        ok = v["status"] == "complete"
        for dom in doms:
            mine = v[f"ppl_{dom}"] if ok else np.nan
            row[f"delta_ppl_{dom}_pct"] = float(pct_delta(mine, same[f"ppl_{dom}"])) if same_ok else np.nan
            row[f"delta_ppl_{dom}_vs_mean_pct"] = \
                float(pct_delta(mine, base_mean[f"ppl_{dom}"])) if base_mean is not None else np.nan
        row["matched_run_id"] = None
        if base_cfg and not pd.isna(v["n_loops"]) and not pd.isna(v["d_model"]) and (
                int(v["n_loops"]) != base_cfg.get("n_loops") or int(v["d_model"]) != base_cfg.get("d_model")):
            m = pick(int(v["d_model"]), None, int(v["n_loops"]), run_seed)
            if len(m):
                mr = m.iloc[0]
                row["matched_run_id"] = mr["run_id"]
                for dom in doms:
                    row[f"delta_ppl_{dom}_vs_matched_pct"] = float(pct_delta(
                        v[f"ppl_{dom}"] if ok else np.nan,
                        mr[f"ppl_{dom}"] if mr["status"] == "complete" else np.nan))
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        for dom in doms:
            if f"delta_ppl_{dom}_vs_matched_pct" not in table:
                table[f"delta_ppl_{dom}_vs_matched_pct"] = np.nan
        table = table.sort_values("run_id").reset_index(drop=True)
    if base_row is not None:
        info["ppl"] = {dom: base_row[f"ppl_{dom}"] for dom in doms}
    if base_mean is not None:
        info["ppl_seed_mean"] = {dom: base_mean[f"ppl_{dom}"] for dom in doms}
    return table, info


# ---------------------------------------------------------------------------------------------
# metrics/<group>.json
# ---------------------------------------------------------------------------------------------
def _j(v):
    """JSON-safe scalar: NaN/inf -> None, numpy -> python, floats to 6 significant digits."""
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return float(f"{v:.6g}") if math.isfinite(v) else None
    return v


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _j(obj)


def _status_block(con, groups) -> dict:
    st = run_status(con)
    return {g: st.get(g, {"n_expected": 0, "n_complete": 0, "failed": [], "incomplete": [], "missing": [],
                          "not_in_grid": []}) for g in groups}


def _fit_block(d, ppl) -> dict:
    """Power law over the best config per d, and the implied exponent of each consecutive pair of widths
    keyed "<d_from>-<d_to>" (dicts, not lists, so `dvc metrics diff` shows every number)."""
    fit = power_law_fit(d, ppl)
    segs = segment_exponents(d, ppl) if len(d) > 1 else []
    return {"fit": fit, "segments": {f"{int(s['from'])}-{int(s['to'])}": s["exponent"] for s in segs}}


def summarize_group(con: sqlite3.Connection, group: str) -> dict:
    """The numeric summary of one group, as written to metrics/<group>.json."""
    if group == "stage1":
        out = _summary_stage1(con)
    elif group == "stage2":
        out = _summary_stage2(con)
    elif group == "dense":
        out = _summary_dense(con)
    elif group == "ablation":
        out = _summary_ablation(con)
    elif group in GROUPS:
        out = _summary_runs(con, group)
    else:
        raise ValueError(f"unknown group {group!r}; valid: {list(GROUPS)}")
    return _clean({"group": group, **out})


def _ppl_fields(row, doms, suffix="") -> dict:
    return {f"ppl_{dom}{suffix}": row.get(f"ppl_{dom}{suffix}") for dom in doms}


def _summary_runs(con, group: str) -> dict:
    """Any other group: each run's final numbers (a CART run's final spectral radius too), and the
    best run by the ranking domain's PPL (for a learning-rate sweep: the lr each family is compared at)."""
    doms = store_domains(con)
    runs = load_runs(con, group)
    done = runs[(runs["status"] == "complete") & runs[f"ppl_{RANK_DOMAIN}"].notna()]
    best = done.sort_values([f"ppl_{RANK_DOMAIN}", "run_id"]).iloc[0] if len(done) else None
    cart = group_of(group).arch == "cart"
    per_run = {r["name"]: {"status": r["status"], "variant": r["variant"], "seed": r["seed"],
                           **_ppl_fields(r, doms), **{f"bpb_{d}": r.get(f"bpb_{d}") for d in doms},
                           "final_train_loss": r["final_train_loss"], "tokens_per_s": r["tokens_per_s"],
                           "stored_params": r["stored_params"], "effective_params": r["effective_params"],
                           **({"spectral_radius": r["spectral_radius"]} if cart else {})}
               for _, r in runs.iterrows()}
    return {"runs": _status_block(con, [group])[group], "rank_domain": RANK_DOMAIN,
            "best_run_id": None if best is None else best["run_id"],
            "best_variant": None if best is None else best["variant"], "per_run": per_run}


def _summary_stage1(con) -> dict:
    doms = store_domains(con)
    rank = stage1_ranking(con)
    best = stage1_best_per_d(con)
    ranking = {r["name"]: {"rank": r["rank"], "d_model": r["d_model"], "n_prelude": r["n_prelude"],
                           "n_loops": r["n_loops"], **_ppl_fields(r, doms), "spectral_radius": r["spectral_radius"]}
               for _, r in rank.iterrows()}
    best_d = {str(int(r["d_model"])): {"run_id": r["run_id"], "n_prelude": r["n_prelude"], "n_loops": r["n_loops"],
                                       **_ppl_fields(r, doms), "spectral_radius": r["spectral_radius"]}
              for _, r in best.iterrows()}
    return {"runs": _status_block(con, ["stage1"])["stage1"], "rank_domain": RANK_DOMAIN, "best_per_d": best_d,
            "power_law": _fit_block(best["d_model"], best[f"ppl_{RANK_DOMAIN}"]), "ranking": ranking}


def _summary_stage2(con) -> dict:
    doms = store_domains(con)
    cfg = stage2_configs(con)
    best = best_per_d(cfg)
    configs = {}
    for _, r in cfg.iterrows():
        key = f"d{int(r['d_model'])}-R{int(r['n_loops'])}"
        entry = {"d_model": r["d_model"], "n_prelude": r["n_prelude"], "n_loops": r["n_loops"],
                 "n_seeds": r["n_seeds"], "n_expected": r["n_expected"]}
        for m in ("ppl", "bpb"):
            for dom in doms:
                entry[f"{m}_{dom}"] = {"mean": r.get(f"{m}_{dom}_mean"), "std": r.get(f"{m}_{dom}_std")}
        entry["spectral_radius_mean"] = r.get("spectral_radius_mean")
        entry["rho_pow_R"] = r.get("rho_pow_R")
        entry["tokens_per_s_mean"] = r.get("tokens_per_s_mean")
        configs[key] = entry
    best_d = {str(int(r["d_model"])): {"n_loops": int(r["n_loops"]), "run_id": r["run_id"],
                                       "n_prelude": r["n_prelude"], "n_seeds": r["n_seeds"],
                                       **_ppl_fields(r, doms, "_mean")}
              for _, r in best.iterrows()}
    top = best.sort_values("d_model").iloc[-1] if len(best) else None
    grid_d = sorted(int(d) for d in cfg["d_model"].dropna().unique()) if len(cfg) else []
    return {"runs": _status_block(con, ["stage2"])["stage2"], "rank_domain": RANK_DOMAIN,
            "best_run_id": None if top is None else top["run_id"],
            "best": None if top is None else {"d_model": top["d_model"], "n_loops": top["n_loops"],
                                              "run_id": top["run_id"],
                                              "is_largest_grid_d": bool(grid_d and top["d_model"] == grid_d[-1])},
            "best_per_d": best_d,
            "power_law": _fit_block(best["d_model"], best[f"ppl_{RANK_DOMAIN}_mean"]),
            "configs": configs}


def _summary_dense(con) -> dict:
    doms = store_domains(con)
    dense, ref = dense_vs_cart(con)
    configs = {}
    for _, r in dense.iterrows():
        entry = {"d_model": r["d_model"], "n_layers": r["n_layers"], "n_seeds": r["n_seeds"],
                 "n_expected": r["n_expected"], "stored_params": r["stored_params"],
                 "effective_params": r["effective_params"]}
        for dom in doms:
            entry[f"ppl_{dom}"] = {"mean": r.get(f"ppl_{dom}_mean"), "std": r.get(f"ppl_{dom}_std")}
        entry["delta_vs_cart_pct"] = {dom: r.get(f"delta_ppl_{dom}_pct") for dom in doms}
        configs[f"L{int(r['n_layers'])}"] = entry
    cart = None
    if ref is not None:
        cart = {"run_id": ref["run_id"], "d_model": ref["d_model"], "n_prelude": ref["n_prelude"],
                "n_loops": ref["n_loops"], "n_seeds": ref["n_seeds"], **_ppl_fields(ref, doms, "_mean")}
    st = _status_block(con, ["dense", "stage2"])
    return {"runs": st["dense"], "stage2_runs": st["stage2"], "delta": "100 * (dense / cart - 1) on seed-mean PPL",
            "cart_reference": cart,
            "cart_reference_note": None if cart else "no complete Stage 2 run at the Dense width",
            "configs": configs}


def _summary_ablation(con) -> dict:
    doms = store_domains(con)
    table, base = ablation_table(con)
    variants = {}
    for _, r in table.iterrows():
        entry = {"run_id": r["run_id"], "status": r["status"], "changes": r["changes"], "seed": r["seed"],
                 "base_run_id": r["base_run_id"],
                 "d_model": r["d_model"], "n_prelude": r["n_prelude"], "n_loops": r["n_loops"],
                 "stored_params": r["stored_params"], "effective_params": r["effective_params"],
                 **_ppl_fields(r, doms),
                 "delta_pct": {dom: r[f"delta_ppl_{dom}_pct"] for dom in doms},
                 "delta_vs_seed_mean_pct": {dom: r[f"delta_ppl_{dom}_vs_mean_pct"] for dom in doms}}
        if r.get("matched_run_id"):
            entry["matched_baseline"] = {"run_id": r["matched_run_id"],
                                         "delta_pct": {dom: r[f"delta_ppl_{dom}_vs_matched_pct"] for dom in doms}}
        variants[r["name"]] = entry
    st = _status_block(con, ["ablation", "stage2"])
    return {"runs": st["ablation"], "delta": "100 * (variant / baseline - 1) on final PPL", "base": base,
            "variants": variants}
