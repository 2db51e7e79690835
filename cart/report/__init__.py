"""The report: every paper table and figure our runs can fill, rendered from the results store alone.

    <out_dir>/REPORT.md                      all tables inline and every figure, in the paper's order
    <out_dir>/tables/<id>.md, <id>.csv       each table as Markdown (text) and CSV (numbers)
    <out_dir>/figures/*.png                  matplotlib (Agg) figures

(Per-run curves for `dvc plots show/diff` are the runs' own DVCLive files under plots/, see dvc.yaml.)

The output depends only on the store: no timestamps, rows sorted, PNGs without software/date tags,
so rendering the same store twice gives byte-identical files. The whole folder is rebuilt in a
temporary sibling and swapped in, so a stale file from an earlier report cannot survive.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from ..results.query import read_meta
from ..results.store import connect
from .figures import render_figures
from .render import Table, markdown_table, write_csv
from .studies import TABLES as STUDY_TABLES
from .studies import fig_ratplus, fig_sampled_r
from .tables import TABLES

MARKER = "REPORT.md"


@dataclasses.dataclass(frozen=True)
class ReportSettings:
    out_dir: str
    dpi: int = 100

    def __post_init__(self):
        if not self.out_dir or Path(self.out_dir).resolve() in (Path.cwd().resolve(), Path("/")):
            raise ValueError(f"out_dir: must be a dedicated folder, got {self.out_dir!r}")
        if not 30 <= self.dpi <= 600:
            raise ValueError(f"dpi: must be in [30, 600], got {self.dpi}")


# Paper order: (section heading, [table id or "fig:<file>"]).
LAYOUT = (
    ("Run status", ["table00_status", "table00_incomplete_runs"]),
    ("Model size, token budget, compute (Sections 3.5, 4.4-4.6)",
     ["table01_params", "table02_tokens", "table03_flops", "table04_throughput"]),
    ("Stage 1 screen (Section 5)",
     ["table05_stage1_best", "fig:stage1_curves.png", "fig:loss_stage1.png", "table06_r_benefit_stage1", "table07_r_benefit_stage2",
      "fig:r_benefit.png", "fig:loss_stage1_dense.png", "fig:loss_stage1_variants.png"]),
    ("Spectral radius (Section 6)", ["fig:spectral_radius.png", "table08_spectral_radius"]),
    ("Stage 2 results and Dense baselines (Sections 7.1-7.2)",
     ["table09_stage2_ppl", "fig:loss_stage2.png", "fig:loss_dense.png", "table10_dense_vs_cart"]),
    ("Cross-scale scaling (Section 7.3, Section 9)",
     ["table11_cross_scale", "table11b_power_law", "fig:ppl_vs_d.png", "table11c_spearman"]),
    ("Inference-time depth (Section 7.4)", ["table12_variable_r", "fig:variable_r.png"]),
    ("Downstream benchmarks (Section 7.5)", ["table13_benchmarks_0shot", "table14_benchmarks_fewshot"]),
    ("Diagnostic ablations (Section 8)", ["table15_ablation", "fig:loss_ablation.png"]),
    ("Beyond the paper: each family at its own best learning rate",
     ["table16_lr_sweep", "fig:loss_sweep_cart.png", "fig:loss_sweep_dense.png"]),
    ("Beyond the paper: LRT (latent recurrent memory) vs Dense", ["table17_lrt", "fig:loss_lrt.png"]),
    ("Beyond the paper: RAT+ (train dense, run dilated) vs Dense", ["table18_ratplus", "fig:ratplus.png",
                                                                     "fig:loss_ratplus.png",
                                                                     "fig:loss_ratplus_adapt.png"]),
    ("Beyond the paper: sampled recurrence depth (training R per step, then R past it)",
     ["table20_sampled_r", "fig:sampled_r.png", "fig:loss_sampled_r.png", "table21_adaptive_exit"]),
    ("The CART paper's text vs its authors' code", ["table19_paper_text_vs_code"]),
)


def _table_section(t: Table) -> list[str]:
    lines = [f"### {t.title}", ""]
    if t.empty_reason:
        lines += [f"**No results of ours yet:** {t.empty_reason}." + (" The paper's values are shown alone."
                                                                        if not t.view.empty else ""), ""]
    if not t.view.empty:
        lines += [markdown_table(t.view), ""]
    for n in t.notes:
        lines += [f"- {n}"]
    lines += [f"- Data: [tables/{t.id}.csv](tables/{t.id}.csv) · [tables/{t.id}.md](tables/{t.id}.md)", ""]
    return lines


def _figure_section(name: str, caption: str | None, need: str) -> list[str]:
    if caption is None:
        return [f"### Figure: {name}", "", f"**Not drawn:** no data (needs {need}).", ""]
    return [f"### Figure: {caption}", "", f"![{caption}](figures/{name})", ""]


def render(con: sqlite3.Connection, out: Path, dpi: int = 100) -> dict:
    """Write the whole report into `out` (an empty folder)."""
    meta = read_meta(con)
    tables = {}
    for fn in (*TABLES, *STUDY_TABLES):
        t = fn(con)
        tables[t.id] = t
        write_csv(t.data, out / "tables" / f"{t.id}.csv")
        (out / "tables" / f"{t.id}.md").write_text("\n".join([f"# {t.title}", "", *_table_section(t)[2:]]) + "\n")
    figs = {name: (cap, need) for name, cap, need in render_figures(con, out / "figures", dpi)}
    figs["ratplus.png"] = (fig_ratplus(con, out / "figures" / "ratplus.png", dpi), "eval/ratplus.tsv rows")
    figs["sampled_r.png"] = (fig_sampled_r(con, out / "figures" / "sampled_r.png", dpi), "eval/sampled_r.tsv rows")

    st = tables["table00_status"].data
    lines = ["# CART reproduction: results report", "",
             "Rendered by `python -m pipeline.report` from the results store alone "
             f"(schema v{meta.get('schema_version')}, profile `{meta.get('profile') or 'unknown'}`). "
             "Every number of ours is computed from `results/results.db`; the paper's numbers come from one table of constants "
             "(`cart/report/paper.py`) and stand beside ours where the config matches.",
             "", "Legend: `—` = not reported or not applicable; `missing` = this profile's grid expects the run "
             "but it has no complete result; `derived` = computed by our code from the paper's printed values. "
             "Perplexities are final validation PPL (Wikipedia ranks configs, as in the paper); ± is the "
             "standard deviation over seeds (n = complete seeds).", ""]
    total_complete = int(st["complete"].sum())
    if total_complete == 0:
        lines += ["**No complete run in the store yet:** the tables below show the paper's values only.", ""]
    lines += ["## Contents", ""]
    for i, (heading, items) in enumerate(LAYOUT, 1):
        anchor = "".join(c for c in heading.lower().replace(" ", "-") if c.isalnum() or c == "-")
        lines.append(f"{i}. [{heading}](#{anchor})")
    lines.append("")
    for heading, items in LAYOUT:
        lines += [f"## {heading}", ""]
        for item in items:
            if item.startswith("fig:"):
                name = item[4:]
                cap, need = figs[name]
                lines += _figure_section(name, cap, need)
            else:
                lines += _table_section(tables[item])
    (out / MARKER).write_text("\n".join(lines).rstrip() + "\n")
    return {"tables": len(tables), "tables_with_data": sum(t.empty_reason is None for t in tables.values()),
            "figures": sum(c is not None for c, _ in figs.values())}


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"report out_dir {out_dir} exists and is not a folder")
        if any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
            raise ValueError(f"report out_dir {out_dir} is not empty and holds no {MARKER}: refusing to replace a "
                             f"folder this report did not write")


def build_report(db_path: str | Path, settings: ReportSettings) -> dict:
    """Render the report from the store at db_path into settings.out_dir, replacing it whole."""
    out_dir = Path(settings.out_dir)
    _check_out_dir(out_dir)
    con = connect(db_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    old = None
    try:
        counts = render(con, tmp, settings.dpi)
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.rmdir(old)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    finally:
        con.close()
        if tmp.exists():
            shutil.rmtree(tmp)
        if old is not None and old.exists():
            shutil.rmtree(old)
    return counts
