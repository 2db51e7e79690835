"""What the Stage 1 screen costs on the GPU, from the runs bench/gpu/stage1.sh trained (imported into
gpu/stage1/ by bench.gpu.import_runs): metrics/sweep_stage1.json.

    python -m bench.gpu.sweep_stage1 gpu/stage1 --out metrics/sweep_stage1.json

Per run, where its process's wall time went (its summary's `timing`, and the process time that
bench/gpu/job.py logged): setting up, compiling (the first optimizer steps less that many steady
steps: compilation and CUDA-graph capture happen there), the other steps, evaluation and checkpoints.
Per width, the summed wall time of the job steps that trained all its configs and nothing else
("measured": a config trained twice counts at its last step), else a projection from a job step
that trained some of its configs (at least 2) and nothing else: that
step's wall time x the width's summed forward FLOPs per token over the step's (steps are compute-bound
at these widths, so GPU time grows with FLOPs; compile and start-up are scaled with them, which
overstates a width run with more configs at once, where they overlap other runs' steps). The 64-config
total adds the measured and projected widths.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import re
import statistics
import sys
from pathlib import Path

from cart.experiments import GROUPS, resolve_run, run_names
from cart.io import atomic_write_json
from cart.models import forward_flops
from cart.params import load_params

TARGET_MINUTES = 60
CAMPAIGN_PARAMS = "params.yaml"  # what bench/gpu/stage1.sh runs with unless STAGE1_PARAMS names a lever's
RUN_LINE = re.compile(r"pipeline\.train (\S+) (\S+) --no-progress\s+exit (\d+)\s+([\d.]+)s")
STEP_LINE = re.compile(r"^train:(\S+): (\d+) command\(s\) in ([\d.]+)s")
JOB_LINE = re.compile(r"^stage1 job: parallel (\d+) mps (\d) selection (\S+)(?: params (\S+))?")


def parse_job_log(text: str) -> tuple[dict, list[dict]]:
    """(run_id -> {process_s, exit, parallel}, [job steps: selection, commands, wall_s, parallel, and the
    params file when the job named one])."""
    runs, steps, parallel, mps, params = {}, [], 1, 0, {}
    for line in text.splitlines():
        if m := JOB_LINE.match(line.strip()):
            parallel, mps, params = int(m[1]), int(m[2]), {"params": m[4]} if m[4] else {}
        elif m := RUN_LINE.search(line):
            runs[f"{m[1]}/{m[2]}"] = {"process_s": float(m[4]), "exit": int(m[3]), "parallel": parallel, "mps": mps}
        elif m := STEP_LINE.match(line.strip()):
            steps.append({"selection": m[1], "commands": int(m[2]), "wall_s": float(m[3]), "parallel": parallel,
                          "mps": mps} | params)
    return runs, steps


def run_costs(root: Path, processes: dict) -> dict:
    """run_id -> its cost breakdown (seconds), for every completed run with a timing record."""
    out = {}
    for summary_path in sorted(root.glob("runs/*/*/summary.json")):
        summary = json.loads(summary_path.read_text())
        timing = summary.get("timing")
        run_id = f"{summary_path.parent.parent.name}/{summary_path.parent.name}"
        if summary.get("status") != "complete" or not timing:
            continue
        config = json.loads((summary_path.parent / "config.json").read_text())
        steps = config["run"]["steps"] - timing["warmup_steps"]
        steady = timing["steps_s"] / steps if steps > 0 else 0.0
        row = {"steps": config["run"]["steps"], "tokens": summary["tokens"], "tokens_per_s": summary["tokens_per_s"],
               "setup_s": timing["setup_s"], "compile_s": round(timing["warmup_steps_s"] - timing["warmup_steps"] * steady, 3),
               "warmup_steps_s": timing["warmup_steps_s"], "steps_s": timing["steps_s"], "eval_s": timing["eval_s"],
               "checkpoint_s": timing["checkpoint_s"], "device": summary.get("device"), "torch": summary.get("torch"),
               # what one compiled graph covered (Stage 1's R is fixed: auto compiles the whole model)
               "compile_scope": "iteration" if config["train"].get("compile_scope") == "iteration" else "model"}
        out[run_id] = row | processes.get(run_id, {})
    return out


def step_runs(step: dict, ids: list[str]) -> list[str]:
    """The run ids of `ids` that a job step's selection names, as bench/gpu/job.py reads it: a group
    (every run), group/name or group/<shell pattern>."""
    patterns = [p if "/" in p else f"{p}/*" for p in step["selection"].split(",")]
    return [i for i in ids if any(fnmatch.fnmatchcase(i, p) for p in patterns)]


def width_projection(params: dict, costs: dict, steps: list[dict], d: int) -> dict:
    """One width's minutes: measured where job steps that trained nothing but this width's configs
    trained every one of them (the sum of those steps' wall times; a config trained twice counts
    at its last step), else the projection from a step that trained only some of its configs. Only
    steps run with the campaign's own params count: a step under a lever's params (a trial of it,
    bench/gpu/stage1_lever.py) costs what the campaign does not."""
    steps = [s for s in steps if s.get("params", CAMPAIGN_PARAMS) == CAMPAIGN_PARAMS]
    names = [n for n in run_names(params, ["stage1"])["stage1"] if GROUPS["stage1"].parse(n)["d_model"] == d]
    ids = [f"stage1/{n}" for n in names]
    measured = [i for i in ids if i in costs and "process_s" in costs[i]]
    own = {k for k, s in enumerate(steps) if 0 < len(step_runs(s, ids)) == s["commands"]}
    last = {i: k for k, s in enumerate(steps) for i in step_runs(s, ids)}  # the step each config last trained in
    if len(last) == len(ids) and set(last.values()) <= own and len(measured) == len(ids):
        used = [steps[k] for k in sorted(set(last.values()))]
        return {"mode": "measured", "configs": len(ids), "configs_measured": len(measured),
                "minutes": round(sum(s["wall_s"] for s in used) / 60, 2),
                "parallel": max(s["parallel"] for s in used), "mps": all(s["mps"] for s in used),
                "steps": [s["selection"] for s in used]}
    parts = [s for s in steps if len(step_runs(s, ids)) >= 2 and len(step_runs(s, ids)) == s["commands"]]
    if not parts:
        return {"mode": "missing", "configs": len(ids), "configs_measured": len(measured), "minutes": None}
    step = parts[-1]
    ran = step_runs(step, ids)
    flops = {i: forward_flops(resolve_run(params, "stage1", i.split("/")[1], 32_000).model, 512) / 512 for i in ids}
    scale = sum(flops.values()) / sum(flops[i] for i in ran)
    return {"mode": "projected", "configs": len(ids), "configs_measured": len(measured),
            "minutes": round(step["wall_s"] * scale / 60, 2), "parallel": step["parallel"], "mps": bool(step["mps"]),
            "from_step": {"runs": ran, "wall_s": step["wall_s"], "flops_scale": round(scale, 3)}}


def summarize(root: Path, params: dict) -> dict:
    log = root / "logs" / "job.log"
    processes, steps = parse_job_log(log.read_text()) if log.is_file() else ({}, [])
    costs = run_costs(root, processes)
    stage1 = {k: v for k, v in costs.items() if k.startswith("stage1/")}
    widths = sorted({GROUPS["stage1"].parse(n)["d_model"] for n in run_names(params, ["stage1"])["stage1"]})
    per_width = {str(d): width_projection(params, stage1, steps, d) for d in widths}
    total = [w["minutes"] for w in per_width.values()]
    devices = sorted({c["device"] for c in costs.values() if c.get("device")})
    torches = sorted({c["torch"] for c in costs.values() if c.get("torch")})
    phases = ("setup_s", "compile_s", "steps_s", "eval_s", "checkpoint_s")
    return {
        "device": devices[0] if len(devices) == 1 else devices, "torch": torches[0] if len(torches) == 1 else torches,
        "command": "bash bench/gpu/stage1.sh start <runs> (configs/paper.yaml + configs/paper_offline.yaml); "
                   "python -m bench.gpu.sweep_stage1 gpu/stage1",
        "target_minutes": TARGET_MINUTES,
        "configs_measured": len(stage1),
        "gpu_minutes_measured": round(sum(s["wall_s"] for s in steps) / 60, 2),
        "projected_gpu_minutes_64": round(sum(total), 2) if all(m is not None for m in total) else None,
        "widths": per_width,
        "seconds_by_phase_stage1": {p: round(sum(c[p] for c in stage1.values()), 1) for p in phases},
        "job_steps": steps,
        "runs": costs,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="the imported campaign, e.g. gpu/stage1")
    ap.add_argument("--params", type=Path, default=None, help="default: <root>/params.yaml")
    ap.add_argument("--out", type=Path, default=Path("metrics/sweep_stage1.json"))
    args = ap.parse_args(argv)
    params = load_params(args.params or args.root / "params.yaml")
    out = summarize(args.root, params)
    atomic_write_json(args.out, out)
    med = statistics.median([c["compile_s"] for c in out["runs"].values()]) if out["runs"] else None
    print(f"{out['configs_measured']} Stage 1 configs measured, {out['gpu_minutes_measured']} GPU-minutes; "
          f"projected 64-config screen: {out['projected_gpu_minutes_64']} min (target {TARGET_MINUTES}); "
          f"median compile {med} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
