"""The store's tables: the run fields every row carries, the per-domain metric columns, the SQL that
creates the tables, and the constants the store is built and read against (its schema version, the
run groups, the ranking domain, the ablation flags, the run statuses).

Tables: runs (one row per run: expected-but-missing, incomplete and failed runs included, with a
status; one loss/ppl/bpb column per validation domain), train_log, train_diag (a model's own per-step
diagnostics), eval_log, eval_results, meta (the plan the store was built against) and issues
(anything unreadable, recorded instead of crashing).
"""
from __future__ import annotations

from typing import Iterable

from ..evaluation.rows import EVAL_COLUMNS
from ..experiments import GROUPS as RUN_GROUPS
from ..training.curves import EVAL_METRICS, TRAIN_METRICS

SCHEMA_VERSION = 1
GROUPS = tuple(RUN_GROUPS)
RANK_DOMAIN = "wikipedia"  # the paper ranks configs and picks "best" by Wikipedia PPL
FLAGS = ("unfreeze_kv", "unshare_core", "self_attn_core", "disable_hyperconnection", "disable_lti",
         "disable_lie")
STATUSES = ("complete", "failed", "incomplete", "missing")

TRAIN_LOG_COLUMNS = ("step", *TRAIN_METRICS)
EVAL_LOG_COLUMNS = ("step", "domain", *EVAL_METRICS)
EVAL_RESULT_COLUMNS = EVAL_COLUMNS

FIXED_RUN_COLUMNS: tuple[tuple[str, str], ...] = (
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
    return [*FIXED_RUN_COLUMNS[:-2], *per_domain, *FIXED_RUN_COLUMNS[-2:]]


def schema_sql(domains: Iterable[str]) -> str:
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
