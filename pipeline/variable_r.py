"""Inference-time loop count (paper Table 12): `python -m pipeline.variable_r`.

Takes the best Stage 2 model (metrics/stage2.json best_run_id) and, with no fine-tuning, runs it
at every R in variable_r.n_loops: validation perplexity and bits per byte on each domain's
held-out bins, and the benchmarks of the `benchmarks` section (0-shot). Writes
eval/variable_r.tsv, metrics/variable_r.json and eval/variable_r.png (each metric against R,
the trained R marked), and prints the table in the paper's layout.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from cart.io import atomic_path, atomic_write_json, read_json
from cart.params import build, load_params, section
# importing the benchmarks stage also switches lm-eval and datasets to offline
from pipeline.benchmarks import STAGE2, TOKENIZER
from pipeline.benchmarks import load_settings as benchmark_settings
from pipeline._cli import run

TSV = Path("eval/variable_r.tsv")
FIGURE = Path("eval/variable_r.png")
METRICS_JSON = Path("metrics/variable_r.json")
BINS = Path("data/bins")


@dataclass(frozen=True)
class PPLSettings:
    seq_len: int
    n_seqs: int
    batch_size: int

    def __post_init__(self):
        for name in ("seq_len", "n_seqs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class VariableRSettings:
    n_loops: list[int]
    ppl: PPLSettings

    def __post_init__(self):
        if not self.n_loops or any(r < 1 for r in self.n_loops) or len(set(self.n_loops)) != len(self.n_loops):
            raise ValueError(f"n_loops: expected distinct loop counts >= 1, got {self.n_loops}")


def load_settings(params: dict):
    return benchmark_settings(params), build(VariableRSettings, section(params, "variable_r"), "variable_r")


def _val_data():
    """cart.data's validation reader (imported late: tests substitute it)."""
    from cart.data import domains, val_batches
    return domains, val_batches


def domain_sources(params: dict) -> dict[str, str]:
    """corpus.domains.<d>.source, so PPL rows say where their text came from (builtin = generated)."""
    doms = params.get("corpus", {}).get("domains", {}) if isinstance(params.get("corpus"), dict) else {}
    return {d: str((v or {}).get("source", "unknown")) for d, v in doms.items() if isinstance(v, dict) or v is None}


def main(argv=None, root: Path = Path(".")) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    root = Path(root)
    t0 = time.time()

    params = load_params(root / "params.yaml")
    bcfg, vcfg = load_settings(params)
    from cart import benchmarks as B
    from cart.evaluate import bits_per_byte, eval_loss, perplexity
    from cart.device import resolve_device, resolve_dtype
    from cart.harness import CARTLM, evaluate_benchmarks, local_dir_of, quiet_lm_eval, write_tsv

    local_dir = local_dir_of(bcfg, root)
    if bcfg.source == "local":
        B.check_local_files(local_dir, bcfg.tasks, 0)
    stage2 = read_json(root / STAGE2, "Stage 2 summary (run the summarize stage)")
    run_id = stage2.get("best_run_id")
    if not run_id:
        raise ValueError(f"{root / STAGE2}: no best_run_id; re-run the summarize stage")
    device = resolve_device(bcfg.device, "benchmarks.device")
    dtype = resolve_dtype(bcfg.dtype, device)
    lm = CARTLM.from_run(root / "runs" / run_id, root / TOKENIZER, device=device, dtype=dtype,
                         batch_size=bcfg.batch_size, max_length=bcfg.max_length, prefix_context=bcfg.prefix_context,
                         progress=not args.no_progress)
    mcfg = lm.model.config
    if getattr(mcfg, "arch", None) != "cart" or mcfg.unshare_core:
        raise ValueError(f"{run_id}: variable R needs a CART model with a shared core; this one is "
                         f"{getattr(mcfg, 'arch', '?')}{' with an unshared core' if mcfg.unshare_core else ''}")
    trained_r = mcfg.n_loops
    if trained_r not in vcfg.n_loops:
        print(f"variable_r: note: the trained R={trained_r} is not in variable_r.n_loops {vcfg.n_loops}")

    domains, val_batches = _val_data()
    bins = root / BINS
    doms = list(domains(bins))
    bpt = lm.tok.bytes_per_token
    missing = [d for d in doms if d not in bpt]
    if missing:
        raise ValueError(f"{root / TOKENIZER / 'tokenizer.json'}: no bytes_per_token for domain(s) {missing}; "
                         f"re-run the tokenizer stage")
    p = vcfg.ppl
    val = {d: val_batches(bins, d, p.seq_len, p.n_seqs, p.batch_size) for d in doms}
    dsrc = domain_sources(params)

    quiet_lm_eval()
    tm = B.task_manager(bcfg.source, local_dir)
    rows, metrics = [], {}
    common = {"experiment": "variable_r", "run_id": run_id}
    for r in tqdm(vcfg.n_loops, desc="variable R", unit="R", disable=args.no_progress):
        lm.n_loops = r
        res = metrics.setdefault(f"R{r}", {})
        for d in doms:
            loss, _ = eval_loss(lm.model, val[d], n_loops=r, device=device, dtype=dtype)
            vals = {"ppl": perplexity(loss), "bpb": bits_per_byte(loss, float(bpt[d]))}
            res[f"ppl:{d}"] = vals
            rows += [{**common, "n_loops": r, "num_fewshot": None, "task": f"ppl:{d}", "metric": k, "value": v,
                      "stderr": None, "source": dsrc.get(d, "bins")} for k, v in vals.items()]
        got, _ = evaluate_benchmarks(lm, bcfg.tasks, source=bcfg.source, local_dir=local_dir, num_fewshot=0,
                                     limit=bcfg.limit, bootstrap_iters=bcfg.bootstrap_iters, task_manager=tm)
        for g in got:
            rows.append({**common, "n_loops": r, "num_fewshot": 0, **g, "source": bcfg.source})
            res.setdefault(g["task"], {})[g["metric"]] = g["value"]

    write_tsv(root / TSV, rows)
    atomic_write_json(root / METRICS_JSON, {"run_id": run_id, "trained_n_loops": trained_r, "source": bcfg.source,
                                            "smoke_set": bcfg.source == "builtin", "limit": bcfg.limit,
                                            "results": metrics})
    plot(rows, trained_r, run_id, bcfg.source, root / FIGURE)
    print(render_table(metrics, vcfg.n_loops, trained_r, bcfg.tasks, doms, run_id, bcfg.source, bcfg.limit))
    print(f"variable_r: {run_id} (trained R={trained_r}) at R={vcfg.n_loops}: {len(rows)} rows "
          f"({len(doms)} PPL domains, {len(bcfg.tasks)} tasks, source {bcfg.source}) -> {TSV}, {METRICS_JSON}, "
          f"{FIGURE} in {time.time() - t0:.1f}s")
    return rows


def render_table(metrics: dict, n_loops, trained_r: int, tasks, doms, run_id: str, source: str,
                 limit: int | None = None) -> str:
    from cart.harness import markdown_table, source_note, task_cells, task_headers

    header = ["inference R", *task_headers(tasks), *[f"PPL {d}" for d in doms]]
    body = []
    for r in n_loops:
        m = metrics[f"R{r}"]
        body.append([f"{r} (train)" if r == trained_r else str(r), *task_cells(m, tasks),
                     *[f"{m[f'ppl:{d}']['ppl']:.2f}" for d in doms]])
    return (f"\nTable 12 layout: {run_id}, no fine-tuning ({source_note(source, limit)}; PPL on held-out bins)\n\n"
            + markdown_table(header, body))


def plot(rows: list[dict], trained_r: int, run_id: str, source: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in rows:
        series.setdefault((r["task"], r["metric"]), []).append((r["n_loops"], r["value"]))
    keys = list(series)
    ncols = min(4, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        xs, ys = zip(*sorted(series[key]))
        ax.plot(xs, ys, marker="o")
        ax.axvline(trained_r, color="tab:red", linestyle="--", linewidth=1, label=f"trained R={trained_r}")
        if key[1] in ("ppl", "perplexity") and min(ys) > 0 and max(ys) / min(ys) > 10:
            ax.set_yscale("log")
        ax.set_title(f"{key[0]} {key[1]}", fontsize=9)
        ax.set_xlabel("inference R")
        ax.set_xticks(list(xs))
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    smoke = " -- builtin SMOKE SET, not benchmark results" if source == "builtin" else ""
    fig.suptitle(f"Variable inference R: {run_id}{smoke}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    run(main, "variable_r")
