"""On the GPU machine, between two Stage 1 batches: whether a speed lever (a params file `pack` wrote
with an overlay on top) trains the rest of a width. The batch just run re-trained configs that the
campaign already holds, under the lever; the lever is kept when that batch's wall time fell below the
committed batch of the same selection run with the campaign's params on the same GPU model, and every
re-trained config's final Wikipedia PPL lies within the run-to-run spread of the committed repeats
(the same config trained again):

    python -m bench.gpu.stage1_lever .gpu-ws-stage1 gpu/stage1 params+stage1_by_iteration.yaml

prints the comparison, writes it to <workspace>/logs/lever.json (it comes back with the runs), and
prints the chosen params file on its last line: the lever's, or params.yaml. The spread comes from
the committed store (bench/gpu/stage1_findings.py); the new trainings from the workspace's summaries.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from bench.gpu.stage1_findings import Campaign, largest_spread
from bench.gpu.sweep_stage1 import CAMPAIGN_PARAMS, parse_job_log, run_devices, step_devices, step_runs
from cart.io import atomic_write_json
from cart.results.schema import RANK_DOMAIN

def final_ppl(root: Path, run_id: str) -> float | None:
    path = root / "runs" / run_id / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary["final_eval"][RANK_DOMAIN]["ppl"] if summary.get("status") == "complete" else None


def spread_pct(campaign: Path) -> float:
    """The campaign's run-to-run spread (percent of final Wikipedia PPL), as its findings state it."""
    noise = largest_spread(Campaign(campaign).spread())
    if math.isnan(noise):
        raise SystemExit(f"{campaign}: no config trained twice (d256 P6 R2 or R8 and their repeats in "
                         "stage1_variants): the run-to-run spread is unknown")
    return noise


def compare(workspace: Path, campaign: Path) -> dict:
    """The last batch of the workspace's job log against the campaign's batch of the same selection."""
    _, steps = parse_job_log((workspace / "logs" / "job.log").read_text())
    if not steps or steps[-1].get("interrupted"):
        raise SystemExit(f"{workspace}/logs/job.log: its last batch did not finish")
    step_devices(steps, run_devices(workspace))
    new = steps[-1]
    _, committed = parse_job_log((campaign / "logs" / "job.log").read_text())
    step_devices(committed, run_devices(campaign))
    same = [s for s in committed if s["selection"] == new["selection"] and not s.get("interrupted")
            and s.get("params", CAMPAIGN_PARAMS) == CAMPAIGN_PARAMS and s.get("device") == new.get("device")]
    if not same:  # wall times on two GPU models say nothing about a lever
        raise SystemExit(f"{campaign}/logs/job.log: no batch of selection {new['selection']} run with "
                         f"{CAMPAIGN_PARAMS} on {new.get('device', 'an unnamed GPU')} to compare with")
    old = same[-1]
    ids = sorted(f"{p.parent.name}/{p.name}" for p in (workspace / "runs").glob("*/*") if p.is_dir())
    noise = spread_pct(campaign)
    runs = {}
    for run_id in step_runs(new, ids):
        before, after = final_ppl(campaign, run_id), final_ppl(workspace, run_id)
        gap = None if before is None or after is None else 100.0 * (after - before) / before
        runs[run_id] = {"ppl_before": before, "ppl_after": after, "gap_pct": gap}
    within = bool(runs) and all(r["gap_pct"] is not None and abs(r["gap_pct"]) <= noise for r in runs.values())
    return {"selection": new["selection"], "wall_s_before": old["wall_s"], "wall_s_after": new["wall_s"],
            "params_before": old.get("params", CAMPAIGN_PARAMS), "params_after": new.get("params"),
            "spread_pct": noise, "runs": runs, "faster": new["wall_s"] < old["wall_s"], "within_spread": within}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace", type=Path, help="the GPU machine's Stage 1 workspace (.gpu-ws-stage1)")
    ap.add_argument("campaign", type=Path, help="the committed campaign (gpu/stage1)")
    ap.add_argument("lever", help="the params file the last batch ran with, e.g. params+stage1_by_iteration.yaml")
    args = ap.parse_args(argv)
    result = compare(args.workspace, args.campaign)
    if result["params_after"] != args.lever:
        raise SystemExit(f"the last batch ran with {result['params_after']}, not {args.lever}")
    result["chosen"] = args.lever if result["faster"] and result["within_spread"] else CAMPAIGN_PARAMS
    atomic_write_json(args.workspace / "logs" / "lever.json", result)
    print(f"{result['selection']}: {result['wall_s_before']} s -> {result['wall_s_after']} s under {args.lever}; "
          f"Wikipedia PPL gaps (%): {({k: v['gap_pct'] for k, v in result['runs'].items()})}, spread {result['spread_pct']:.2f}%",
          file=sys.stderr)
    print(result["chosen"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
