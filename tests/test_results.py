"""The results store and the per-group summaries, on a synthetic project written in the training
and evaluation stages' file formats: every status (complete, failed, incomplete, missing, stale)
is represented, the statistics are scipy's, and metrics/stage2.json picks the right runs."""
from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.numpy import save_file
from scipy import stats

from cart.accounting import count_params, forward_flops
from cart.models import CARTConfig, DenseConfig
from cart.params import load_params
from cart import results
from cart.training.curves import CurveWriter

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("tinystories", "wikipedia", "fineweb_edu")
VOCAB = 256
RUN = {"steps": 40, "seq_len": 32, "micro_batch": 2, "grad_accum": 2, "eval_every": 20}

# The synthetic grid (also written to the test's params.yaml).
S1_D, S1_P, S1_R = [64, 128, 256], [1, 2], [2, 4]
S2_D, S2_R, SEEDS = [64, 128, 256], [2, 4], [42, 43]
DENSE_D, DENSE_L = 256, [3, 5]
ABL_BASE = {"d_model": 256, "n_prelude": 2, "n_loops": 4}
ABL_VARIANTS = {"X": {"unfreeze_kv": True}, "Y": {"n_loops": 1}, "P4": {"n_prelude": 1, "n_loops": 2},
                "LIE": {"disable_lie": True}}  # LIE is never written: a missing run

# Known truths the tests check against.
S1_EXPONENT, S2_EXPONENT = 0.3, 0.5
FAILED = "stage2/d128-R4-s42"
INCOMPLETE = "stage1/d256-P1-R2"
MISSING = "stage2/d128-R2-s43"
STALE = "stage1/d32-P1-R2"  # on disk, not in the grid


def s1_ppl(d, p, r):
    """Best at P=2, R=4 for every d; exact power law there."""
    return 1000.0 * d ** -S1_EXPONENT * (1.0 + 0.02 * (2 - p) + 0.01 * (4 - r) / 2)


def s2_ppl(d, r, seed):
    """Best R is 2 at d=64 and 4 above; seed factors average to 1 over seeds 42 and 43."""
    best_r = 2 if d == 64 else 4
    return 500.0 * d ** -S2_EXPONENT * (1.0 if r == best_r else 1.05) * (1.0 + 0.002 * (seed - 42.5))


DOMAIN_SCALE = {"tinystories": 0.1, "wikipedia": 1.0, "fineweb_edu": 1.1}


def params_dict() -> dict:
    p = copy.deepcopy(load_params(ROOT / "params.yaml"))
    p["stage1"]["grid"] = {"d_model": S1_D, "n_prelude": S1_P, "n_loops": S1_R}
    p["stage1"]["run"] = dict(RUN)
    p["stage2"]["grid"] = {"d_model": S2_D, "n_loops": S2_R, "seed": SEEDS}
    p["stage2"]["n_prelude"] = 2
    p["stage2"]["run"] = dict(RUN)
    p["dense"] = {"d_model": DENSE_D, "train": {}, "grid": {"n_layers": DENSE_L, "seed": SEEDS}}
    p["ablation"] = {"seed": 42, "base": dict(ABL_BASE), "train": {}, "variants": copy.deepcopy(ABL_VARIANTS),
                     "multi_seed": {"seeds": [42], "variants": {}}}
    p["ratplus_adapt"]["variants"] = {v: {"train_pattern": v} for v in ("D4", "D8")}  # two adapted patterns
    for family in ("cart", "dense"):  # three peak lrs, so the best lies inside the sweep
        p[f"sweep_{family}"]["variants"] = {v: {"train": {"lr": lr, "lr_width_scaling": False}} for v, lr in LRS.items()}
    p["model"]["common"]["head_dim"] = 32
    p["train"]["warmup_steps"] = 2
    return p


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _tsv(path: Path, columns, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(columns)] + ["\t".join(_fmt(r.get(c)) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def write_run(root: Path, group: str, name: str, model, seed: int, final_wiki: float | None, *,
              status: str | None = "complete", steps_done: int | None = None, variant=None,
              rho_final: float = 0.8, lr: float = 6e-4, train: dict | None = None,
              step_r=None) -> None:
    """One run in the training stage's formats; status None = no summary.json (incomplete).
    `train`: more training settings in its config; step_r(step): the R a sampled-R step logged."""
    run_dir, plots = root / "runs" / group / name, root / "plots" / group / name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"run_id": f"{group}/{name}", "group": group, "name": name, "seed": seed, "variant": variant,
           "model": model.to_dict(), "run": dict(RUN), "train": {"lr": lr, **(train or {})},
           "tokenizer": {"vocab_size": VOCAB}}
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    is_cart = model.arch == "cart"
    steps_done = RUN["steps"] if steps_done is None else steps_done
    tps = RUN["seq_len"] * RUN["micro_batch"] * RUN["grad_accum"]
    train = []
    for step in range(5, steps_done + 1, 5):
        frac = step / RUN["steps"]
        train.append({"step": step, "tokens": step * tps, "loss": 6.0 - 2.0 * frac, "lr": 6e-4 * (1 - 0.9 * frac),
                      "grad_norm": 1.0, "spectral_radius": (0.9 - (0.9 - rho_final) * frac) if is_cart else None,
                      "tokens_per_s": 1000.0 + model.d_model, "mfu": None})
    curves = CurveWriter(plots, None)  # the training loop's own writer: the store reads its format
    for row in train:
        curves.log_train(row["step"], {k: v for k, v in row.items() if k != "step"})
    for step in range(1, steps_done + 1) if step_r else ():
        curves.log_train(step, {"n_loops": step_r(step)})
    for step in range(RUN["eval_every"], steps_done + 1, RUN["eval_every"]):
        for dom in DOMAINS:
            ppl = (final_wiki or 100.0) * DOMAIN_SCALE[dom] * (1 + 0.5 * (1 - step / RUN["steps"]))
            curves.log_eval(step, dom, {"loss": float(np.log(ppl)), "ppl": ppl, "bpb": np.log2(ppl) / 4})
    if status is None:
        return
    final = None
    if status == "complete":
        save_file({"w": np.zeros(6, dtype=np.float32)}, str(run_dir / "model.safetensors"))  # the final weights
        final = {}
        for dom in DOMAINS:
            ppl = final_wiki * DOMAIN_SCALE[dom]
            final[dom] = {"loss": float(np.log(ppl)), "ppl": ppl, "bpb": float(np.log2(ppl) / 4)}
    summary = {"status": status, "failure": None if status == "complete" else f"{group}/{name}: non-finite loss",
               "steps": RUN["steps"] if status == "complete" else None, "tokens": steps_done * tps,
               "wall_s": 10.0, "tokens_per_s": 1000.0 + model.d_model, "mfu": None, "peak_flops": None,
               "device": "cpu (test)", "torch": "2.x", "git_commit": "abc123", "params": count_params(model),
               "flops_per_seq": forward_flops(model, RUN["seq_len"]),
               "spectral_radius": rho_final if is_cart else None,
               "final_train_loss": 4.0 if status == "complete" else None, "final_eval": final}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))


def cart(d, p, r, **flags) -> CARTConfig:
    return CARTConfig(vocab_size=VOCAB, d_model=d, head_dim=32, ffn_multiple=64, n_prelude=p, n_loops=r, **flags)


def write_eval(root: Path, source: str = "local", vr_source: str | None = None) -> None:
    """eval/benchmarks.tsv from `source`, eval/variable_r.tsv from vr_source (default: the same)."""
    vr_source = vr_source or source
    cols = results.EVAL_RESULT_COLUMNS
    rows = []
    best = {64: "stage2/d64-R2-s42", 128: "stage2/d128-R4-s43", 256: "stage2/d256-R4-s42"}
    for d, rid in best.items():
        r = int(rid.split("-R")[1].split("-")[0])
        for shots in ([0, 5] if d == 256 else [0]):
            for task, metric, v in (("hellaswag", "acc", 0.25 + d / 1e4), ("hellaswag", "acc_norm", 0.26),
                                    ("lambada_openai", "acc", 0.05 + d / 1e4 - 0.01 * shots),
                                    ("lambada_openai", "perplexity", 3000.0 / d), ("piqa", "acc", 0.5 + d / 1e4)):
                rows.append({"experiment": "benchmarks", "run_id": rid, "n_loops": r, "num_fewshot": shots,
                             "task": task, "metric": metric, "value": v, "stderr": 0.01, "source": source})
    _tsv(root / "eval" / "benchmarks.tsv", cols, rows)
    rows = []
    for n in (1, 2, 4, 6):
        for task, metric, v in (("hellaswag", "acc", 0.25 + 0.01 * (n == 4)), ("lambada_openai", "perplexity",
                                                                                100.0 * (1 + abs(n - 4)))):
            rows.append({"experiment": "variable_r", "run_id": "stage2/d256-R4-s42", "n_loops": n, "num_fewshot": 0,
                         "task": task, "metric": metric, "value": v, "stderr": None, "source": vr_source})
        rows.append({"experiment": "variable_r", "run_id": "stage2/d256-R4-s42", "n_loops": n, "num_fewshot": None,
                     "task": "ppl:wikipedia", "metric": "ppl", "value": 20.0 + abs(n - 4), "stderr": None,
                     "source": "builtin"})
    _tsv(root / "eval" / "variable_r.tsv", cols, rows)


LRS = {"lr3e-4": 3e-4, "lr1e-3": 1e-3, "lr3e-3": 3e-3}  # the sweeps' variants (params_dict)
SWEEP_PPL = {"cart": {"lr3e-4": 60.0, "lr1e-3": 50.0, "lr3e-3": 55.0},  # CART best at 1e-3 ...
             "dense": {"lr3e-4": 58.0, "lr1e-3": 54.0, "lr3e-3": 52.0}}  # ... Dense at 3e-3
RAT_PATTERNS = {"dense": 1.0, "D4": 1.3, "D8": 1.6}  # PPL factor at each pattern, per model below
RAT_SENSITIVITY = {"ratplus/joint-s42": 0.2, "ratplus/dense_only-s42": 1.0, "sweep_dense/lr3e-3-s42": 1.5}
# issue 20 (the default params' sampled_r group, mean R 4): training scheme -> its loop_sampling, the R its
# steps log, its final spectral radius, and its Wikipedia PPL at each inference R (fixed degrades off R=4)
SAMPLED = {"fixed": ({"scheme": "fixed"}, None, 0.85),
           "uniform": ({"scheme": "uniform", "r_min": 1, "r_max": 7}, lambda s: 1 + s % 7, 0.8),
           "poisson_lognormal": ({"scheme": "poisson_lognormal", "sigma": 0.5, "r_max": 12}, lambda s: 3 + (s % 4 == 0), 0.9)}
SAMPLED_R = (1, 2, 4, 6, 8)
# adaptive exit at threshold 0.05, up to R = 8: each scheme's mean loops used and PPL relative to its trained R
SAMPLED_EXIT = {"fixed": (4.5, 1.02), "uniform": (3.0, 1.05), "poisson_lognormal": (3.5, 1.03)}


def sampled_ppl(scheme: str, r: int) -> float:
    return 40.0 * (1 + {"fixed": 0.3, "uniform": 0.05, "poisson_lognormal": 0.1}[scheme] * abs(r - 4))


def small(arch: str, **fields):
    from cart.models import config_from_dict
    return config_from_dict({"arch": arch, "vocab_size": VOCAB, "d_model": 64, "head_dim": 32, "ffn_multiple": 64,
                             **fields})


def write_family_runs(root: Path) -> None:
    """The lr sweeps, LRT and RAT+ runs of the default params' grids (d=64, 3 layers)."""
    for v, lr in LRS.items():
        write_run(root, "sweep_cart", f"{v}-s42", small("cart", n_prelude=2, n_loops=2), 42, SWEEP_PPL["cart"][v],
                  variant=v, lr=lr)
        write_run(root, "sweep_dense", f"{v}-s42", small("dense", n_layers=3), 42, SWEEP_PPL["dense"][v], variant=v,
                  lr=lr)
    for v, ppl in (("shared", 50.0), ("layerwise", 49.0)):
        write_run(root, "lrt", f"{v}-s42", small("lrt", n_layers=3, variant=v), 42, ppl, variant=v)
    for v, joint in (("joint", True), ("dense_only", False)):
        write_run(root, "ratplus", f"{v}-s42", small("ratplus", n_layers=3, joint_train=joint), 42, 51.0, variant=v)
    for v in ("D4", "D8"):
        write_run(root, "ratplus_adapt", f"{v}-s42", small("ratplus", n_layers=3, joint_train=False, train_pattern=v),
                  42, 52.0, variant=v)
    for v, (ls, step_r, rho) in SAMPLED.items():
        write_run(root, "sampled_r", f"{v}-s42", small("cart", n_prelude=2, n_loops=4), 42, sampled_ppl(v, 4),
                  variant=v, train={"loop_sampling": ls}, step_r=step_r, rho_final=rho)
    # Stage 1's controls of the default params: Dense at Stage 1's settings and the leak variant
    write_run(root, "stage1_dense", "d64-L3", small("dense", n_layers=3), 42, 61.0)
    write_run(root, "stage1_variants", "leak-s42", small("cart", n_prelude=2, n_loops=4, noncausal_cross_attn=True),
              42, 3.0, variant="leak")


def write_study_eval(root: Path, source: str) -> None:
    """eval/lrt.tsv and eval/ratplus.tsv as pipeline/evaluate.py writes them."""
    cols, rows = results.EVAL_RESULT_COLUMNS, []
    for run_id, bpb in (("lrt/shared-s42", 1.50), ("lrt/layerwise-s42", 1.48), ("sweep_dense/lr3e-3-s42", 1.53)):
        lrt = run_id.startswith("lrt/")
        for mode in (("merged", "sequential", "zero") if lrt else ("",)):
            factor = {"merged": 1.0, "sequential": 0.99, "zero": 1.05, "": 1.0}[mode]
            rows.append({"experiment": "lrt", "run_id": run_id, "setting": mode, "task": "ppl:wikipedia",
                         "metric": "bpb", "value": bpb * factor, "source": "bins"})
            rows.append({"experiment": "lrt", "run_id": run_id, "setting": mode, "task": "ppl:wikipedia",
                         "metric": "ppl", "value": 2 ** (4 * bpb * factor), "source": "bins"})
        for shots in (0, 5):
            rows.append({"experiment": "lrt", "run_id": run_id, "setting": "merged" if lrt else "",
                         "num_fewshot": shots, "task": "hellaswag", "metric": "acc_norm",
                         "value": 0.30 + (0.02 if lrt and shots else 0.0), "stderr": 0.01, "source": source})
    _tsv(root / "eval" / "lrt.tsv", cols, rows)
    rows = []
    jobs = [(rid, list(RAT_PATTERNS)) for rid in RAT_SENSITIVITY] + [("ratplus_adapt/D4-s42", ["D4"]),
                                                                      ("ratplus_adapt/D8-s42", ["D8"])]
    for run_id, patterns in jobs:
        for p in patterns:
            factor = 1 + (RAT_PATTERNS[p] - 1) * RAT_SENSITIVITY.get(run_id, 0.1)
            rows.append({"experiment": "ratplus", "run_id": run_id, "setting": p, "task": "ppl:wikipedia",
                         "metric": "ppl", "value": 50.0 * factor, "source": "bins"})
            rows.append({"experiment": "ratplus", "run_id": run_id, "setting": p, "num_fewshot": 0,
                         "task": "hellaswag", "metric": "acc_norm", "value": 0.3 / factor, "stderr": 0.01,
                         "source": source})
    _tsv(root / "eval" / "ratplus.tsv", cols, rows)
    rows = []
    for v in SAMPLED:
        for r in SAMPLED_R:
            for dom in DOMAINS:
                ppl = sampled_ppl(v, r) * DOMAIN_SCALE[dom]
                for metric, value in (("ppl", ppl), ("bpb", np.log2(ppl) / 4)):
                    rows.append({"experiment": "sampled_r", "run_id": f"sampled_r/{v}-s42", "setting": "",
                                 "n_loops": r, "task": f"ppl:{dom}", "metric": metric, "value": value,
                                 "source": source})
            rows.append({"experiment": "sampled_r", "run_id": f"sampled_r/{v}-s42", "setting": "", "n_loops": r,
                         "num_fewshot": 0, "task": "hellaswag", "metric": "acc_norm",
                         "value": 0.3 - 0.01 * abs(r - 4), "stderr": 0.01, "source": source})
        loops, rel = SAMPLED_EXIT[v]
        for dom in DOMAINS:
            ppl = sampled_ppl(v, 4) * rel * DOMAIN_SCALE[dom]
            for metric, value in (("ppl", ppl), ("bpb", np.log2(ppl) / 4), ("mean_loops", loops)):
                rows.append({"experiment": "sampled_r", "run_id": f"sampled_r/{v}-s42", "setting": "exit<0.05",
                             "n_loops": max(SAMPLED_R), "task": f"ppl:{dom}", "metric": metric, "value": value,
                             "source": "bins"})
    _tsv(root / "eval" / "sampled_r.tsv", cols, rows)


def make_project(root: Path, eval_source: str | None = "local", vr_source: str | None = None) -> Path:
    """The whole synthetic project under root; returns the params.yaml path."""
    for d in S1_D:
        for p in S1_P:
            for r in S1_R:
                rid = f"stage1/d{d}-P{p}-R{r}"
                write_run(root, "stage1", f"d{d}-P{p}-R{r}", cart(d, p, r), 42, s1_ppl(d, p, r),
                          status=None if rid == INCOMPLETE else "complete",
                          steps_done=15 if rid == INCOMPLETE else None, rho_final=0.89 + d / 1e5)
    write_run(root, "stage1", "d32-P1-R2", cart(32, 1, 2), 42, 999.0)  # stale
    for d in S2_D:
        for r in S2_R:
            for s in SEEDS:
                rid = f"stage2/d{d}-R{r}-s{s}"
                if rid == MISSING:
                    continue
                write_run(root, "stage2", f"d{d}-R{r}-s{s}", cart(d, 2, r), s, s2_ppl(d, r, s),
                          status="failed" if rid == FAILED else "complete",
                          steps_done=20 if rid == FAILED else None, rho_final=0.78 + d / 1e4 + r / 1e3)
    cart_ref = np.mean([s2_ppl(DENSE_D, 4, s) for s in SEEDS])
    for L in DENSE_L:
        for s in SEEDS:
            model = DenseConfig(vocab_size=VOCAB, d_model=DENSE_D, head_dim=32, ffn_multiple=64, n_layers=L)
            write_run(root, "dense", f"L{L}-s{s}", model, s, cart_ref * (0.98 if L == 3 else 0.95))
    base = s2_ppl(256, 4, 42)
    for name, factor in (("X", 1.01), ("Y", 1.03), ("P4", 1.10)):
        fields = ABL_BASE | ABL_VARIANTS[name]
        model = cart(fields["d_model"], fields["n_prelude"], fields["n_loops"],
                     **{k: v for k, v in fields.items() if k not in ("d_model", "n_prelude", "n_loops")})
        write_run(root, "ablation", name, model, 42, base * factor, variant=name)
    write_family_runs(root)
    if eval_source:
        write_eval(root, eval_source, vr_source)
        write_study_eval(root, eval_source)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(params_dict(), sort_keys=False))
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    params = make_project(root)
    db = root / "results" / "results.db"
    counts = results.build_store(db, root, results.plan_from_params(load_params(params)))
    return root, params, db, counts


def runs_by_id(db) -> dict:
    con = results.connect(db)
    df = results.load_runs(con, current=False)
    con.close()
    return {r["run_id"]: r for _, r in df.iterrows()}


# ---- the store -----------------------------------------------------------------------------------
def test_store_has_every_run_with_its_status(project):
    root, _, db, counts = project
    runs = runs_by_id(db)
    n_expected = len(S1_D) * len(S1_P) * len(S1_R) + len(S2_D) * len(S2_R) * len(SEEDS) + len(DENSE_L) * len(SEEDS) \
        + len(ABL_VARIANTS) + 2 * len(LRS) + 2 + 2 + 2 + 3 + 2  # lr sweeps, LRT, RAT+ and its adaptations,
    # sampled R, Stage 1's two controls
    assert len(runs) == n_expected + 1  # + the stale directory
    assert counts["failed"] == 1 and counts["missing"] == 2 and counts["incomplete"] == 1
    f = runs[FAILED]
    assert f["status"] == "failed" and "non-finite" in f["failure"] and f["last_logged_step"] == 20
    assert np.isnan(f["ppl_wikipedia"])
    inc = runs[INCOMPLETE]
    assert inc["status"] == "incomplete" and inc["last_logged_step"] == 15 and inc["stored_params"] > 0
    m = runs[MISSING]
    assert m["status"] == "missing" and m["d_model"] == 128 and m["n_loops"] == 2 and m["seed"] == 43
    assert m["n_prelude"] == 2  # from the params grid, though the run never started
    assert runs["ablation/LIE"]["status"] == "missing" and runs["ablation/LIE"]["disable_lie"] == 1
    assert runs[STALE]["in_grid"] == 0 and all(r["in_grid"] == 1 for k, r in runs.items() if k != STALE)


def test_store_columns_come_from_accounting_and_summaries(project):
    _, _, db, _ = project
    runs = runs_by_id(db)
    r = runs["stage2/d256-R4-s43"]
    model = cart(256, 2, 4)
    assert r["stored_params"] == count_params(model)["stored"]
    assert r["effective_params"] == count_params(model)["effective"]
    assert r["flops_per_seq"] == forward_flops(model, RUN["seq_len"])
    dense_layer = DenseConfig(vocab_size=VOCAB, d_model=256, head_dim=32, ffn_multiple=64, n_layers=1)
    assert r["dense_layer_flops_per_seq"] == forward_flops(dense_layer, RUN["seq_len"])
    assert r["ppl_wikipedia"] == pytest.approx(s2_ppl(256, 4, 43), rel=1e-12)
    assert r["planned_tokens"] == RUN["steps"] * RUN["seq_len"] * RUN["micro_batch"] * RUN["grad_accum"]
    d = runs["dense/L3-s42"]
    assert d["arch"] == "dense" and d["n_layers"] == 3 and pd.isna(d["n_loops"]) and np.isnan(d["spectral_radius"])
    x = runs["ablation/X"]
    assert x["variant"] == "X" and x["unfreeze_kv"] == 1 and x["d_model"] == 256
    con = results.connect(db)
    cfg = json.loads(con.execute("SELECT config_json FROM runs WHERE run_id='ablation/X'").fetchone()[0])
    assert cfg["model"]["unfreeze_kv"] is True
    tl = results.load_train_log(con, [FAILED])
    assert list(tl["step"]) == [5, 10, 15, 20] and tl["spectral_radius"].notna().all()
    dl = results.load_train_log(con, ["dense/L3-s42"])
    assert dl["spectral_radius"].isna().all() and len(dl) == RUN["steps"] // 5
    el = results.load_eval_log(con, ["stage2/d64-R2-s42"])
    assert len(el) == 2 * len(DOMAINS) and set(el["domain"]) == set(DOMAINS)
    ev = results.load_eval_results(con)
    assert set(ev["file"]) == {"benchmarks", "variable_r", "lrt", "ratplus", "sampled_r"} and len(ev) > 0  # every eval/*.tsv
    con.close()


def test_store_schema(project):
    _, _, db, _ = project
    con = sqlite3.connect(db)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"meta", "runs", "train_log", "train_diag", "eval_log", "eval_results", "issues"}
    cols = [r[1] for r in con.execute("PRAGMA table_info(runs)")]
    for c in ("run_id", "group", "name", "arch", "d_model", "n_prelude", "n_loops", "n_layers", "seed", "variant",
              "unfreeze_kv", "status", "failure", "steps", "tokens", "wall_s", "tokens_per_s", "mfu", "device",
              "git_commit", "stored_params", "effective_params", "flops_per_seq", "spectral_radius",
              "final_train_loss", "ppl_wikipedia", "bpb_fineweb_edu", "loss_tinystories", "config_json"):
        assert c in cols
    con.close()


def test_store_write_is_atomic(tmp_path, monkeypatch):
    root = tmp_path
    make_project(root, eval_source=None)
    db = root / "r.db"
    results.build_store(db, root)
    before = db.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("killed mid-build")
    monkeypatch.setattr(results.store, "populate", boom)  # what build_store calls
    with pytest.raises(RuntimeError):
        results.build_store(db, root)
    assert db.read_bytes() == before
    assert [p.name for p in root.iterdir() if p.name.startswith(".r.db")] == []


def test_store_records_unreadable_files_instead_of_crashing(tmp_path):
    make_project(tmp_path, eval_source=None)
    (tmp_path / "runs/stage2/d64-R2-s42/summary.json").write_text("{not json")
    (tmp_path / "plots/stage2/d64-R4-s42/plots/metrics/train/loss.tsv").write_text("step\tloss\n5\t3.0\n10\tnan-ish\n")
    (tmp_path / "eval").mkdir(exist_ok=True)
    (tmp_path / "eval/benchmarks.tsv").write_text("garbage\n")
    con = results.memory_store(tmp_path, None, eval_dir="eval")
    runs = results.load_runs(con).set_index("run_id")
    assert runs.loc["stage2/d64-R2-s42", "status"] == "incomplete"
    assert pd.isna(runs.loc["stage2/d64-R2-s42", "in_grid"])  # no plan: no grid
    tl = results.load_train_log(con, ["stage2/d64-R4-s42"])
    loss = tl.set_index("step")["loss"]  # loss.tsv replaced by a torn file: its bad value reads as missing
    assert loss[5] == 3.0 and loss.drop(5).isna().all() and tl["tokens"].notna().all()
    issues = results.load_issues(con)
    assert any("unreadable JSON" in m for m in issues["message"])
    assert any("non-numeric" in m and p.endswith("loss.tsv") for p, m in zip(issues["path"], issues["message"]))
    con.close()


@pytest.mark.parametrize("damage,message", [
    (lambda w: w.write_bytes(w.read_bytes()[:-5]), "bytes, its header lists"),  # a truncated copy
    (lambda w: w.write_bytes(w.read_bytes() + b"extra"), "bytes, its header lists"),
    (lambda w: w.write_bytes(b"\xff" * 40), "unreadable header"),
    (lambda w: w.unlink(), "missing"),
])
def test_a_completed_run_with_damaged_weights_is_a_failed_run(tmp_path, damage, message):
    """The evaluation stages load a completed run's weights: damaged ones fail the run in the store
    (with an issue naming the file and how to recover), never pass silently."""
    make_project(tmp_path, eval_source=None)
    weights = tmp_path / "runs/stage2/d64-R2-s42/model.safetensors"
    damage(weights)
    con = results.memory_store(tmp_path, None)
    runs = results.load_runs(con).set_index("run_id")
    assert runs.loc["stage2/d64-R2-s42", "status"] == "failed"
    assert message in runs.loc["stage2/d64-R2-s42", "failure"] and "dvc checkout" in runs.loc["stage2/d64-R2-s42", "failure"]
    assert runs.loc["stage2/d64-R4-s42", "status"] == "complete"  # its neighbour's whole weights pass
    issues = results.load_issues(con)
    assert list(issues["path"]) == [str(weights)]
    con.close()


@pytest.mark.parametrize("damage,status", [(lambda w: w.unlink(), "complete"),
                                           (lambda w: w.write_bytes(w.read_bytes()[:-5]), "failed")])
def test_runs_imported_without_weights_are_complete_but_damaged_weights_still_fail(tmp_path, damage, status):
    """bench/gpu/import_runs.py marks a runs/ folder whose weights stayed on the GPU machine: there an absent
    file is expected, while a truncated one still fails the run."""
    make_project(tmp_path, eval_source=None)
    (tmp_path / "runs" / results.WEIGHTS_NOT_KEPT).write_text("")
    damage(tmp_path / "runs/stage2/d64-R2-s42/model.safetensors")
    con = results.memory_store(tmp_path, None)
    assert results.load_runs(con).set_index("run_id").loc["stage2/d64-R2-s42", "status"] == status
    con.close()


def test_empty_project_builds_an_empty_store(tmp_path):
    params = make_project(tmp_path / "src", eval_source=None)
    plan = results.plan_from_params(load_params(params))
    con = results.memory_store(tmp_path / "empty", plan)
    runs = results.load_runs(con)
    assert len(runs) == len(plan.expected) and set(runs["status"]) == {"missing"}
    for g in results.GROUPS:
        s = results.summarize_group(con, g)
        assert s["runs"]["n_complete"] == 0 and len(s["runs"]["missing"]) == s["runs"]["n_expected"]
    con.close()



def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("file,change,message", [
    ("stage2/d128-R4-s42/summary.json", lambda d: d.update(failure={"x": 1}),
     "not a run summary: a failed run's failure {'x': 1} is not text"),
    ("stage2/d64-R2-s42/summary.json", lambda d: d.update(final_eval=None, final_train_loss=None),
     "not a run summary: a complete run has no final_train_loss"),
    ("stage2/d64-R2-s42/summary.json", lambda d: d.update(final_eval={"wikipedia": None}),
     "not a run summary: final_eval['wikipedia'] None lacks finite numbers"),
    ("stage2/d64-R2-s42/summary.json", lambda d: d.update(status=["complete"]),
     "not a run summary: status ['complete'] is not one of"),
    ("ablation/X/config.json", lambda d: d.update(variant=["X"]), "variant ['X'] is not text; ignored"),
    ("stage2/d64-R2-s42/config.json", lambda d: d.update(run=[1, 2]),
     "run [1, 2] is not an object of run settings; ignored"),
], ids=["failure-dict", "complete-without-eval", "eval-domain-null", "status-list", "variant-list", "run-list"])
def test_wrong_schema_run_files_are_one_issue_naming_the_file(tmp_path, file, change, message):
    """A summary the training loop would not write fails its run (neither counted complete nor ranked,
    as the training stage refuses it too); a config field of the wrong type is ignored. Each is one
    issue naming the file, and the store and every summary build."""
    params = make_project(tmp_path, eval_source=None)
    path = tmp_path / "runs" / file
    _edit_json(path, change)
    con = results.memory_store(tmp_path, results.plan_from_params(load_params(params)))
    issues = results.load_issues(con)
    assert [(p, m[:len(message)]) for p, m in zip(issues["path"], issues["message"])] == [(str(path), message)]
    run_id = "/".join(file.split("/")[:2])
    run = results.load_runs(con).set_index("run_id").loc[run_id]
    if file.endswith("summary.json"):
        assert run["status"] == "failed" and run["failure"].startswith("summary.json is not a run summary (")
        assert run_id in results.summarize_group(con, "stage2")["runs"]["failed"]
    else:
        assert run["status"] == "complete"
    for group in results.GROUPS:
        results.summarize_group(con, group)
    con.close()


def test_a_killed_build_leaves_no_temporary_store_behind_the_next(tmp_path):
    """SIGKILL mid-build leaves the temporary store (and SQLite's journal of it) beside results.db;
    the next build removes them."""
    make_project(tmp_path, eval_source=None)
    db = tmp_path / "results" / "results.db"
    db.parent.mkdir()
    left = [db.parent / ".results.db.x1y2z3.tmp", db.parent / ".results.db.x1y2z3.tmp-journal"]
    for f in left:
        f.write_bytes(b"half a store")
    (db.parent / "notes.txt").write_text("mine")
    results.build_store(db, tmp_path)
    assert sorted(p.name for p in db.parent.iterdir()) == ["notes.txt", "results.db"]


# ---- statistics --------------------------------------------------------------------------------------
def test_power_law_fit_recovers_known_exponent():
    d = np.array([256, 512, 768, 1024], dtype=float)
    fit = results.power_law_fit(d, 3000.0 * d ** -0.62)
    assert fit["exponent"] == pytest.approx(0.62, abs=1e-12) and fit["r2"] == pytest.approx(1.0)
    assert fit["prefactor"] == pytest.approx(3000.0, rel=1e-9)
    rng = np.random.default_rng(0)
    d = np.geomspace(64, 4096, 12)
    noisy = 500 * d ** -0.35 * np.exp(rng.normal(0, 0.01, d.size))
    fit = results.power_law_fit(d, noisy)
    assert fit["exponent"] == pytest.approx(0.35, abs=0.02) and 0.95 < fit["r2"] < 1.0
    segs = results.segment_exponents([512, 256, 1024], [2 ** -0.5 * 10, 10, 2 ** -1.0 * 10])
    assert [s["to"] for s in segs] == [512, 1024]
    assert [s["exponent"] for s in segs] == pytest.approx([0.5, 0.5])
    assert results.power_law_fit([256], [10.0]) is None


def test_spearman_matches_scipy():
    a, b = [1, 2, 3, 4], [1, 3, 2, 4]
    got = results.spearman(a, b)
    ref = stats.spearmanr(a, b)
    assert got["rho"] == pytest.approx(0.8) and got["rho"] == pytest.approx(ref.statistic)
    assert got["p"] == pytest.approx(ref.pvalue) and got["n"] == 4
    assert results.spearman([10, 20, 30], [3, 2, 1])["rho"] == pytest.approx(-1.0)
    assert results.spearman([1.0, np.nan, 3.0], [2.0, 5.0, 4.0])["n"] == 2
    assert results.spearman([1], [1])["rho"] is None
    assert results.spearman([1, 1, 1], [1, 2, 3])["rho"] is None  # constant ranking


def test_seed_stats_and_rho_pow_r(project):
    _, _, db, _ = project
    con = results.connect(db)
    cfg = results.stage2_configs(con).set_index(["d_model", "n_loops"])
    row = cfg.loc[(256, 4)]
    vals = [s2_ppl(256, 4, s) for s in SEEDS]
    assert row["n_seeds"] == 2 and row["ppl_wikipedia_mean"] == pytest.approx(np.mean(vals))
    assert row["ppl_wikipedia_std"] == pytest.approx(np.std(vals, ddof=1))
    assert row["rho_pow_R"] == pytest.approx(row["spectral_radius_mean"] ** 4)
    assert cfg.loc[(128, 4), "n_seeds"] == 1 and cfg.loc[(128, 4), "n_expected"] == 2  # one failed
    assert cfg.loc[(128, 2), "n_seeds"] == 1 and cfg.loc[(128, 2), "n_expected"] == 2  # one missing
    assert np.isnan(cfg.loc[(128, 4), "ppl_wikipedia_std"])
    con.close()


# ---- summaries -------------------------------------------------------------------------------------------
def run_summarize(root, params, group) -> dict:
    from pipeline.summarize import main
    main([group, "--root", str(root), "--params", str(params)])
    return json.loads((root / "metrics" / f"{group}.json").read_text())


def test_summarize_stage2_best_per_d_picks_the_right_runs(project):
    root, params, _, _ = project
    s = run_summarize(root, params, "stage2")
    assert {d: (v["n_loops"], v["run_id"]) for d, v in s["best_per_d"].items()} == {
        "64": (2, "stage2/d64-R2-s42"),
        "128": (4, "stage2/d128-R4-s43"),  # s42 failed: the lowest complete seed
        "256": (4, "stage2/d256-R4-s42")}
    assert s["best_run_id"] == "stage2/d256-R4-s42" and s["best"]["is_largest_grid_d"] is True
    assert s["runs"]["failed"] == [FAILED] and s["runs"]["missing"] == [MISSING]
    assert s["runs"]["n_expected"] == 12 and s["runs"]["n_complete"] == 10
    c = s["configs"]["d256-R4"]
    want = np.mean([s2_ppl(256, 4, x) for x in SEEDS])
    assert c["n_seeds"] == 2 and c["ppl_wikipedia"]["mean"] == pytest.approx(want, rel=1e-5)
    assert c["bpb_wikipedia"]["mean"] > 0 and 0 < c["rho_pow_R"] < 1
    assert s["power_law"]["fit"]["exponent"] == pytest.approx(S2_EXPONENT, abs=2e-3)
    text = (root / "metrics" / "stage2.json").read_text()
    assert "NaN" not in text and "Infinity" not in text


def test_summarize_stage1_ranking_and_fit(project):
    root, params, _, _ = project
    s = run_summarize(root, params, "stage1")
    assert {d: (v["n_prelude"], v["n_loops"]) for d, v in s["best_per_d"].items()} == {
        "64": (2, 4), "128": (2, 4), "256": (2, 4)}
    ranks = sorted(s["ranking"].values(), key=lambda v: v["rank"])
    assert [v["ppl_wikipedia"] for v in ranks] == sorted(v["ppl_wikipedia"] for v in ranks)
    assert len(ranks) == 11 and "d32-P1-R2" not in s["ranking"]  # incomplete and stale runs are not ranked
    assert s["power_law"]["fit"]["exponent"] == pytest.approx(S1_EXPONENT, abs=1e-4)
    assert s["power_law"]["fit"]["r2"] == pytest.approx(1.0, abs=1e-9)
    assert s["runs"]["incomplete"] == [INCOMPLETE] and s["runs"]["not_in_grid"] == [STALE]


def test_summarize_dense_and_ablation_deltas(project):
    root, params, _, _ = project
    d = run_summarize(root, params, "dense")
    assert d["cart_reference"]["run_id"] == "stage2/d256-R4-s42" and d["cart_reference"]["n_loops"] == 4
    assert d["configs"]["L3"]["delta_vs_cart_pct"]["wikipedia"] == pytest.approx(-2.0, abs=1e-3)
    assert d["configs"]["L5"]["delta_vs_cart_pct"]["tinystories"] == pytest.approx(-5.0, abs=1e-3)
    a = run_summarize(root, params, "ablation")
    assert a["base"]["run_id"] == "stage2/d256-R4-s42" and a["base"]["status"] == "complete"
    v = a["variants"]
    assert v["X"]["delta_pct"]["wikipedia"] == pytest.approx(1.0, abs=1e-3)
    assert v["Y"]["delta_pct"]["fineweb_edu"] == pytest.approx(3.0, abs=1e-3) and v["Y"]["changes"] == "n_loops=1"
    # P4 (P=1, R=2) is also compared with the same-seed Stage 2 run at its own R
    assert v["P4"]["matched_baseline"]["run_id"] == "stage2/d256-R2-s42"
    want = 100 * (s2_ppl(256, 4, 42) * 1.10 / s2_ppl(256, 2, 42) - 1)
    assert v["P4"]["matched_baseline"]["delta_pct"]["wikipedia"] == pytest.approx(want, abs=1e-3)
    assert v["LIE"]["status"] == "missing" and v["LIE"]["delta_pct"]["wikipedia"] is None
    assert a["runs"]["missing"] == ["ablation/LIE"]


def test_one_summarize_stage_writes_every_group_as_each_alone_would(project, tmp_path):
    """The DVC stage runs `pipeline.summarize` with no group: one store for every group, and each
    metrics/<group>.json byte-identical to summarizing that group alone."""
    from cart.results import GROUPS
    from pipeline.summarize import main
    root, params, _, _ = project
    both = main(["--root", str(root), "--params", str(params)])
    assert list(both) == list(GROUPS)
    for group in GROUPS:
        alone = tmp_path / f"{group}.json"
        main([group, "--root", str(root), "--params", str(params), "--out", str(alone)])
        assert alone.read_bytes() == (root / "metrics" / f"{group}.json").read_bytes(), group
    with pytest.raises(SystemExit):
        main(["stage1", "dense", "--root", str(root), "--params", str(params), "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit):
        main(["stage3", "--root", str(root), "--params", str(params)])


def test_a_group_with_no_runs_lists_the_projects_domains_alone_as_with_the_others(project, tmp_path):
    """A group none of whose runs exists yet: its summary alone lists every validation domain the other
    groups' runs were evaluated on (null), byte-identical to the one the whole stage writes."""
    import shutil
    from pipeline.summarize import main
    src, params, _, _ = project
    root = tmp_path / "root"
    for top in ("runs", "plots"):
        shutil.copytree(src / top, root / top, ignore=shutil.ignore_patterns("lrt"))
    main(["--root", str(root), "--params", str(params)])
    alone = tmp_path / "lrt.json"
    main(["lrt", "--root", str(root), "--params", str(params), "--out", str(alone)])
    assert alone.read_bytes() == (root / "metrics" / "lrt.json").read_bytes()
    per_run = json.loads(alone.read_text())["per_run"]
    assert per_run and all(r["status"] == "missing" and r["ppl_tinystories"] is None for r in per_run.values())


def test_summarize_says_what_is_missing_when_stage2_is_absent(tmp_path):
    params = make_project(tmp_path / "src", eval_source=None)
    root = tmp_path / "only_dense"
    for top in ("runs", "plots"):
        (root / top).mkdir(parents=True)
        import shutil
        shutil.copytree(tmp_path / "src" / top / "dense", root / top / "dense")
    d = run_summarize(root, params, "dense")
    assert d["cart_reference"] is None and "no complete Stage 2" in d["cart_reference_note"]
    assert d["configs"]["L3"]["delta_vs_cart_pct"]["wikipedia"] is None
    assert len(d["stage2_runs"]["missing"]) == 12
    s = run_summarize(root, params, "stage2")
    assert s["best_per_d"] == {} and s["best_run_id"] is None


def test_pipeline_results_cli(tmp_path, capsys):
    params = make_project(tmp_path)
    from pipeline.results import main
    c = main(["--root", str(tmp_path), "--params", str(params)])
    assert (tmp_path / "results" / "results.db").is_file() and c["failed"] == 1
    assert "results:" in capsys.readouterr().out
