"""Every paper table our runs can fill, from the results store alone, with the paper's values beside
ours. Rows are the union of our grid and the paper's configs, matched on the config key (d, P, R)
or (d, layers): a config only we ran has "—" under paper, one only the paper ran has "—" under
ours, and one our grid expects but has no complete run for says "missing".

    status.py      run status: expected/complete/failed/missing per group, and why a run is not complete
    compute.py     Tables 1-4: parameters and leverage, token budget, forward FLOPs, throughput and MFU
    recurrence.py  Tables 5-8: Stage 1 best per scale, the benefit of R (Stages 1 and 2), spectral radius
    scaling.py     Tables 9-11: Stage 2 PPL with Dense, Dense vs CART, cross-scale fits and Spearman
    downstream.py  Tables 12-14: PPL and accuracy per inference R, zero- and few-shot benchmarks
    ablation.py    Section 8: each diagnostic ablation against its Stage 2 baselines
    common.py      what they share: domain titles, NaN-safe casts, the model rows tables are keyed on

(The studies beyond the paper are cart/report/studies.py.)
"""
from __future__ import annotations

from .ablation import table_ablation
from .compute import table_flops, table_params, table_throughput, table_tokens
from .downstream import table_benchmarks_0shot, table_benchmarks_fewshot, table_variable_r
from .recurrence import table_r_benefit_stage1, table_r_benefit_stage2, table_spectral, table_stage1_best
from .scaling import table_cross_scale, table_dense_vs_cart, table_power_law, table_spearman, table_stage2_ppl
from .status import table_problems, table_status

# the paper's order
TABLES = (table_status, table_problems, table_params, table_tokens, table_flops, table_throughput,
          table_stage1_best, table_r_benefit_stage1, table_r_benefit_stage2, table_spectral, table_stage2_ppl,
          table_dense_vs_cart, table_cross_scale, table_power_law, table_spearman, table_variable_r,
          table_benchmarks_0shot, table_benchmarks_fewshot, table_ablation)
