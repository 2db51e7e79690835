"""The results store: every run's config, summary, curves and evaluation rows in one SQLite file
(the paper's results.db), plus the queries and statistics the summaries and the report use.

Inputs (written by the training and evaluation stages):
    runs/<group>/<name>/config.json     the run's full config (model, run, train, seed, variant)
    runs/<group>/<name>/summary.json    written when the run completed or failed
    plots/<group>/<name>/               the run's DVCLive curves (cart/training/curves.py): train metrics and
                                        a model's diagnostics per step, validation loss/ppl/bpb per domain
    eval/<experiment>.tsv               every evaluation stage's rows (cart/evaluation/rows.py)

The package, in the order a store is made and read:
    schema.py     the tables' columns and SQL, and the constants (groups, ranking domain, flags, statuses)
    plan.py       RunPlan: the runs params.yaml expects, and the fields a run's name encodes
    ingest.py     one run's files -> its `runs` row and curves (collect_run), the TSV reader
    store.py      populate / build_store (atomic file) / memory_store, and connect (read-only)
    query.py      DataFrames from an open store: load_runs, the logs, eval rows, issues, run_status
    stats.py      power-law fits, Spearman, rho^R, % deltas, seed statistics (scipy, no store needed)
    analyses.py   per-group views: Stage 1 ranking, Stage 2 configs and best per d, Dense vs CART, ablations
    summary.py    summarize_group: metrics/<group>.json

Parameter and FLOPs counts are recomputed from each run's config with cart.accounting, never
copied from a formula here. Statistics use scipy (linregress on logs for power laws, spearmanr).

The names below are the public API (`from cart.results import load_runs`); code inside cart/ and
pipeline/ imports from the module that holds a name, so its DVC code deps name that module.
"""
from .analyses import (CHINCHILLA_TOKENS_PER_PARAM, ablation_table, best_per_d, dense_configs, dense_vs_cart,
                       stage1_best_per_d, stage1_ranking, stage2_configs)
from .ingest import WEIGHTS_NOT_KEPT, collect_run, read_tsv, weights_damage
from .plan import RunPlan, parse_run_name, plan_from_params
from .query import (load_eval_log, load_eval_results, load_issues, load_runs, load_train_log, read_meta,
                    run_status, store_domains, train_diag_mean)
from .schema import (EVAL_LOG_COLUMNS, EVAL_RESULT_COLUMNS, FLAGS, GROUPS, RANK_DOMAIN, SCHEMA_VERSION, STATUSES,
                     TRAIN_LOG_COLUMNS, run_columns, schema_sql)
from .stats import (config_stats, expected_counts, pct_delta, power_law_fit, residual_fraction, run_metrics,
                    seed_stats, segment_exponents, spearman)
from .store import build_store, connect, memory_store, populate
from .summary import summarize_group

__all__ = [
    "CHINCHILLA_TOKENS_PER_PARAM", "ablation_table", "best_per_d", "dense_configs", "dense_vs_cart",
    "stage1_best_per_d", "stage1_ranking", "stage2_configs",
    "WEIGHTS_NOT_KEPT", "collect_run", "read_tsv", "weights_damage",
    "RunPlan", "parse_run_name", "plan_from_params",
    "load_eval_log", "load_eval_results", "load_issues", "load_runs", "load_train_log", "read_meta", "run_status",
    "store_domains", "train_diag_mean",
    "EVAL_LOG_COLUMNS", "EVAL_RESULT_COLUMNS", "FLAGS", "GROUPS", "RANK_DOMAIN", "SCHEMA_VERSION", "STATUSES",
    "TRAIN_LOG_COLUMNS", "run_columns", "schema_sql",
    "config_stats", "expected_counts", "pct_delta", "power_law_fit", "residual_fraction", "run_metrics",
    "seed_stats", "segment_exponents", "spearman",
    "build_store", "connect", "memory_store", "populate",
    "summarize_group",
]
