"""What the Stage 1 screen costs on the GPU, from the runs bench/gpu/stage1.sh trained (imported into
gpu/stage1/ by bench.gpu.import_runs): metrics/sweep_stage1.json.

    python -m bench.gpu.sweep_stage1 gpu/stage1 --out metrics/sweep_stage1.json

Per run, where its process's wall time went (its summary's `timing`, and the process time that
bench/gpu/job.py logged): setting up, compiling (the first optimizer steps less that many steady
steps: compilation and CUDA-graph capture happen there), the other steps, evaluation and checkpoints.
Per width, the summed wall time of the job steps that trained all its configs and nothing else
("measured": a config trained twice counts at its last step), else a projection from the job step
that trained most of its configs (at least 2; the later of a tie) and nothing of another width (a
Dense control or a variant of the same width may run beside them): that step's wall time x the width's
summed training FLOPs over everything the step trained (forward FLOPs per token x tokens: steps are
compute-bound at these widths, so GPU time at one width grows with FLOPs; compile and start-up are
scaled with them, which overstates a width run with more configs at once, where they overlap other
runs' steps). The 64-config total adds the measured and projected widths.

A job step stopped at its deadline (`STAGE1_START_BY`: runs not started) costs the runs that finished in it;
a job step the machine's loss cut short (no closing line in the log) still costs its runs that
finished: each run's start is read off the log (a run starts when the one before it in the log ends,
the first wave at 0), and the step counts until its last finished run ended. That overstates those
runs a little (the unfinished runs beside them shared the GPU) and leaves out the GPU time the lost
runs took. Widths and totals are per GPU model (each job step's `device`): the target is one H200's,
and a step on another GPU is summarised under `other_devices`, never added to the H200's minutes.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import re
import statistics
import sys
from pathlib import Path

import numpy as np

from bench.gpu.findings.common import earlier_trainings
from cart.experiments import GROUPS, resolve_run, run_names
from cart.io import atomic_write_json
from cart.models import forward_flops
from cart.params import load_params

TARGET_MINUTES = 60
TARGET_DEVICE = "NVIDIA H200"  # the GPU the 60-minute target is set on
SINGLE_RUN_SPEEDS = "single_run_speeds*.json"  # in the campaign's folder, read in name order: steps_only()'s input
CAMPAIGN_GROUPS = ("stage1", "stage1_dense", "stage1_variants")  # what bench/gpu/stage1.sh trains
CAMPAIGN_PARAMS = "params.yaml"  # what bench/gpu/stage1.sh runs with unless STAGE1_PARAMS names a lever's
VOCAB = 32_000  # the Llama-2 tokenizer's, which the campaign trains with
RUN_LINE = re.compile(r"pipeline\.train (\S+) (\S+) --no-progress\s+exit (\d+)\s+([\d.]+)s")
STEP_LINE = re.compile(r"^train:(\S+): (\d+) command\(s\) in ([\d.]+)s(?:, (\d+) not started)?")
JOB_LINE = re.compile(r"^stage1 job: parallel (\d+) mps (\d) selection (\S+)(?: params (\S+))?(?: device (.+))?$")
# cart/jobs.py's progress: a run started, or ended with its exit code and seconds
TASK_LINE = re.compile(r"^(started|done|failed|stopped): pipeline\.train (\S+) (\S+) --no-progress"
                       r"(?: \(exit (-|\d+), ([\d.]+)s\))?")


def parse_job_log(text: str) -> tuple[dict, list[dict]]:
    """(run_id -> {process_s, exit, parallel, mps}, [job steps: selection, commands, wall_s, parallel, mps,
    and the params file and device when the job named them; a step cut short also lists the `runs` that
    finished in it and is marked `interrupted`, a step whose deadline (bench/gpu/job.py --start-by)
    left runs unstarted lists the `runs` that finished and how many were `not_started`, and a step
    where runs exited with an error lists them as `failed`])."""
    runs, steps, job = {}, [], None

    def finished() -> list[str]:  # the runs of the current job that ended with exit 0
        return [i for i, (_, code) in job["ends"].items() if code == 0]

    def cut_short() -> None:  # a job whose closing line never came: the runs that finished in it
        if job is None or job["closed"]:
            return
        done = finished()
        if done:
            steps.append({"selection": job["selection"], "commands": len(done),
                          "wall_s": round(max(job["ends"][i][0] for i in done), 1)} | job["fields"]
                         | {"runs": done, "interrupted": True})

    for line in map(str.strip, text.splitlines()):
        if m := JOB_LINE.match(line):
            cut_short()
            fields = {"parallel": int(m[1]), "mps": int(m[2])} | ({"params": m[4]} if m[4] else {}) \
                | ({"device": m[5].strip()} if m[5] else {})
            job = {"selection": m[3], "fields": fields, "closed": False, "clock": 0.0, "start": {}, "ends": {},
                   "exits": {}}
        elif job is None:
            continue
        elif m := TASK_LINE.match(line):
            run_id = f"{m[2]}/{m[3]}"
            if m[1] == "started":  # when the run before it in the log ended (the first wave at 0)
                job["start"][run_id] = job["clock"]
            elif m[5] is not None:
                end = job["start"].get(run_id, 0.0) + float(m[5])
                job["clock"] = max(job["clock"], end)
                code = None if m[4] == "-" else int(m[4])
                job["ends"][run_id] = (end, code)
                if code is not None:
                    runs[run_id] = {"process_s": float(m[5]), "exit": code, "parallel": job["fields"]["parallel"],
                                    "mps": job["fields"]["mps"]}
        elif m := RUN_LINE.search(line):
            job["exits"][f"{m[1]}/{m[2]}"] = int(m[3])
            runs[f"{m[1]}/{m[2]}"] = {"process_s": float(m[4]), "exit": int(m[3]),
                                      "parallel": job["fields"]["parallel"], "mps": job["fields"]["mps"]}
        elif m := STEP_LINE.match(line):
            job["closed"] = True
            step = {"selection": m[1], "commands": int(m[2]), "wall_s": float(m[3])} | job["fields"]
            if m[4]:  # the job's deadline left runs of its selection unstarted: it trained those that finished
                step |= {"runs": finished(), "not_started": int(m[4])}
            failed = {i for i, (_, code) in job["ends"].items() if code not in (0, None)} \
                | {i for i, code in job["exits"].items() if code != 0}
            if failed:  # they cost the step GPU time but left no training
                step["failed"] = sorted(failed)
            steps.append(step)
    cut_short()
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


def width_names(params: dict) -> dict[int, list[str]]:
    """The Stage 1 grid's run names by width."""
    out: dict[int, list[str]] = {}
    for name in run_names(params, ["stage1"])["stage1"]:
        out.setdefault(GROUPS["stage1"].parse(name)["d_model"], []).append(name)
    return dict(sorted(out.items()))


def flops_per_token(spec) -> float:
    """A Stage 1 run's forward FLOPs per token at its own sequence length: what its steps cost."""
    return forward_flops(spec.model, spec.run.seq_len) / spec.run.seq_len


def training_flops(params: dict, d: int) -> dict[str, float]:
    """The campaign's runs of width d (every group bench/gpu/stage1.sh trains) -> forward FLOPs over
    the whole training (per token x tokens): what a job step spent on each."""
    out = {}
    for group, names in run_names(params, list(CAMPAIGN_GROUPS)).items():
        for name in names:
            spec = resolve_run(params, group, name, VOCAB)
            if spec.model.d_model == d:
                out[f"{group}/{name}"] = flops_per_token(spec) * spec.run.steps * spec.run.tokens_per_step
    return out


def step_runs(step: dict, ids: list[str]) -> list[str]:
    """The run ids of `ids` that a job step trained: those its selection names, as bench/gpu/job.py
    reads it (a group: every run; group/name; group/<shell pattern>), or, for a step cut short, those
    that finished."""
    if "runs" in step:
        return [i for i in ids if i in step["runs"]]
    patterns = [p if "/" in p else f"{p}/*" for p in step["selection"].split(",")]
    return [i for i in ids if any(fnmatch.fnmatchcase(i, p) for p in patterns)]


def width_projection(params: dict, costs: dict, steps: list[dict], d: int, device: str | None = None) -> dict:
    """One width's minutes: measured where job steps that trained nothing but this width's configs
    trained every one of them (the sum of those steps' wall times; a config trained twice counts
    at its last step), else the projection from the step that trained most of its configs (the module's
    docstring). Only steps run with the campaign's own params count: a step under a lever's params (a
    trial of it, bench/gpu/stage1_lever.py) costs what the campaign does not. With `device`, only the
    steps on that GPU (a step of unknown device counts), and `configs_measured` counts the configs
    whose latest training ran there."""
    steps = [s for s in steps if s.get("params", CAMPAIGN_PARAMS) == CAMPAIGN_PARAMS
             and (device is None or s.get("device", device) == device)]
    ids = [f"stage1/{n}" for n in width_names(params)[d]]
    measured = [i for i in ids if i in costs and "process_s" in costs[i]
                and (device is None or costs[i].get("device", device) == device)]
    own = {k for k, s in enumerate(steps) if 0 < len(step_runs(s, ids)) == s["commands"]}
    last = {i: k for k, s in enumerate(steps) for i in step_runs(s, ids)}  # the step each config last trained in
    if len(last) == len(ids) and set(last.values()) <= own and len(measured) == len(ids):
        used = [steps[k] for k in sorted(set(last.values()))]
        return {"mode": "measured", "configs": len(ids), "configs_measured": len(measured),
                "minutes": round(sum(s["wall_s"] for s in used) / 60, 2),
                "parallel": max(s["parallel"] for s in used), "mps": all(s["mps"] for s in used),
                "steps": [s["selection"] for s in used]}
    flops = training_flops(params, d)
    parts = [k for k, s in enumerate(steps) if len(step_runs(s, ids)) >= 2 and len(step_runs(s, list(flops))) == s["commands"]]
    if not parts:
        return {"mode": "missing", "configs": len(ids), "configs_measured": len(measured), "minutes": None}
    step = steps[max(parts, key=lambda k: (len(step_runs(steps[k], ids)), k))]
    ran, every = step_runs(step, ids), step_runs(step, list(flops))
    scale = sum(flops[i] for i in ids) / sum(flops[i] for i in every)
    return {"mode": "projected", "configs": len(ids), "configs_measured": len(measured),
            "minutes": round(step["wall_s"] * scale / 60, 2), "parallel": step["parallel"], "mps": bool(step["mps"]),
            "from_step": {"runs": ran, "others": [i for i in every if i not in ran],
                          "wall_s": step["wall_s"], "flops_scale": round(scale, 3)}}


def run_devices(root: Path) -> dict[str, list[str | None]]:
    """run_id -> the GPU of each of its trainings, oldest first: its earlier trainings, then its latest."""
    earlier, out = earlier_trainings(root), {}
    for path in sorted(root.glob("runs/*/*/summary.json")):
        run_id = f"{path.parent.parent.name}/{path.parent.name}"
        out[run_id] = [t["summary"].get("device") for t in earlier.get(run_id, [])] \
            + [json.loads(path.read_text()).get("device")]
    return out


def step_devices(steps: list[dict], devices: dict[str, list[str | None]]) -> None:
    """Each step's GPU where its log line did not name it: the one GPU of the trainings it made
    (`devices`: run_devices()). The steps that trained a run pair with its trainings from the latest
    back, so a step whose runs were trained again later on another GPU keeps its own GPU."""
    made: dict[int, set[str]] = {}
    for run_id, trainings in devices.items():
        trained_in = [k for k, s in enumerate(steps) if step_runs(s, [run_id]) and run_id not in s.get("failed", ())]
        for k, device in zip(reversed(trained_in), reversed(trainings)):
            if device:
                made.setdefault(k, set()).add(device)
    for k, step in enumerate(steps):
        if "device" not in step and len(made.get(k, ())) == 1:
            step["device"] = made[k].pop()


def device_cost(params: dict, stage1: dict, steps: list[dict], widths: list[int], device: str) -> dict:
    """One GPU model's minutes: measured, per width, and the 64-config total where no width is missing."""
    per_width = {str(d): width_projection(params, stage1, steps, d, device) for d in widths}
    total = [w["minutes"] for w in per_width.values()]
    return {"gpu_minutes_measured": round(sum(s["wall_s"] for s in steps if s.get("device") == device) / 60, 2),
            "projected_gpu_minutes_64": round(sum(total), 2) if all(m is not None for m in total) else None,
            "widths": per_width}


def steps_only(params: dict, speeds: dict) -> dict:
    """The 3,000 steps alone, one run at a time, at the single-run tokens/s measured for some configs
    of each width (`speeds`: run name -> tokens/s): per width, each config's step time interpolated
    linearly in its forward FLOPs per token through the width's measured configs (least squares; the
    line through two), and the optimistic sum where every config runs as efficiently (seconds per FLOP)
    as the width's most efficient measured config. Minutes; a width with fewer than 2 measured configs
    is left out of both totals' widths and makes them None."""
    by_width = width_names(params)
    unknown = sorted(set(speeds) - {n for names in by_width.values() for n in names})
    if unknown:
        raise ValueError(f"single-run speeds for configs not in the Stage 1 grid: {unknown}")
    widths, totals = {}, {"interpolated": 0.0, "best_efficiency": 0.0}
    for d, names in by_width.items():
        specs = {n: resolve_run(params, "stage1", n, VOCAB) for n in names}
        flops = {n: flops_per_token(s) for n, s in specs.items()}
        seconds = {n: specs[n].run.steps * specs[n].run.tokens_per_step / speeds[n] for n in specs if n in speeds}
        if len(seconds) < 2:
            widths[str(d)] = None
            totals = {k: None for k in totals}
            continue
        slope, intercept = np.polyfit([flops[n] for n in seconds], list(seconds.values()), 1)
        per_flop = min(t / flops[n] for n, t in seconds.items())
        row = {"measured": sorted(seconds), "interpolated": float(sum(intercept + slope * f for f in flops.values())) / 60,
               "best_efficiency": float(sum(per_flop * f for f in flops.values())) / 60}
        widths[str(d)] = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
        totals = {k: None if v is None else v + row[k] for k, v in totals.items()}
    return {"minutes_64": {k: None if v is None else round(v, 2) for k, v in totals.items()}, "widths": widths}


def steps_only_record(params: dict, paths: list[Path], device: str = TARGET_DEVICE) -> dict | None:
    """steps_only() from the speeds files measured on `device` (a later file's config replaces an
    earlier one's; a file naming another GPU is listed under `other_device_files` and not read), with
    their names and, where they have them, fused AdamW's speed-ups. None without a file."""
    data = {p: json.loads(p.read_text()) for p in paths}
    used = [p for p in paths if data[p].get("device", device) == device]
    if not used:
        return None
    speeds, fused = {}, {}
    for path in used:
        more_speeds, more_fused = single_run_speeds(data[path])
        speeds |= more_speeds
        fused |= more_fused
    others = [p.name for p in paths if p not in used]
    return steps_only(params, speeds) | {"speeds": [p.name for p in used]} \
        | ({"fused_adamw_speedup": fused} if fused else {}) | ({"other_device_files": others} if others else {})


def single_run_speeds(data: dict) -> tuple[dict, dict]:
    """(run name -> tokens/s of the campaign's own step, run name -> torch's fused AdamW's speed-up over
    it) from `bench/gpu/stage1.sh bench`'s output (bench.throughput.train_step rows over stage1 runs: the
    base row is the run's step, 8-bit AdamW under CUDA graphs), or from a record of speeds measured
    earlier ({"tokens_per_s": {name: ...}})."""
    if "rows" not in data:
        return dict(data["tokens_per_s"]), {}
    base, fused = {}, {}
    for row in data["rows"]:
        group, _, name = row.get("run", "").partition("/")
        if group != "stage1" or "tokens_per_s" not in row:
            continue
        if row["lever"] == "base":
            base[name] = row["tokens_per_s"]
        elif row["lever"] == "fused_adamw" and "speedup_vs_base" in row:
            fused[name] = round(row["speedup_vs_base"], 4)
    return base, fused


def summarize(root: Path, params: dict) -> dict:
    log = root / "logs" / "job.log"
    processes, steps = parse_job_log(log.read_text()) if log.is_file() else ({}, [])
    costs = run_costs(root, processes)
    step_devices(steps, run_devices(root))
    stage1 = {k: v for k, v in costs.items() if k.startswith("stage1/")}
    widths = list(width_names(params))
    devices = sorted({s["device"] for s in steps if "device" in s})  # the GPUs that ran job steps
    torches = sorted({c["torch"] for c in costs.values() if c.get("torch")})
    phases = ("setup_s", "compile_s", "steps_s", "eval_s", "checkpoint_s")
    return {
        "device": TARGET_DEVICE, "torch": torches[0] if len(torches) == 1 else torches,
        "command": "bash bench/gpu/stage1.sh start <runs> (configs/paper.yaml + configs/paper_offline.yaml); "
                   "python -m bench.gpu.sweep_stage1 gpu/stage1",
        "target_minutes": TARGET_MINUTES,
        "configs_measured": sum(1 for c in stage1.values() if c.get("device") == TARGET_DEVICE),
        **device_cost(params, stage1, steps, widths, TARGET_DEVICE),
        "other_devices": {dev: device_cost(params, stage1, steps, widths, dev) for dev in devices if dev != TARGET_DEVICE},
        "steps_only": steps_only_record(params, sorted(root.glob(SINGLE_RUN_SPEEDS))),
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
          f"projected 64-config screen: {out['projected_gpu_minutes_64']} min (target {TARGET_MINUTES}; "
          f"the steps alone, one run at a time: {(out['steps_only'] or {}).get('minutes_64')}); "
          f"median compile {med} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
