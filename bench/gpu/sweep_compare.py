"""The Python half of bench/gpu/sweep_compare.sh: `python -m pipeline.sweep` with its own DVC work
timed apart, and the comparison's JSON.

    python -m bench.gpu.sweep_compare sweep --times T.json -- --executor local --stages stage1 ...
    python -m bench.gpu.sweep_compare write --out sweep_compare.json --params params.yaml ...

`sweep` runs the sweep's command line unchanged, timing its planning (DVC's index and `dvc status`)
and each `dvc commit` of a finished stage; `write` gathers the wall times the script measured, those
timings and `dvc status --json` of the trained stages into one record.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cart.sweep
from cart.params import load_params


def timed(fn, seconds: list[float]):
    """`fn`, appending the seconds each call takes to `seconds` (whether or not it raises)."""
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - t0)
    return wrapper


def timed_sweep(argv: list[str], times: Path) -> int:
    """`python -m pipeline.sweep <argv>`; writes to `times` the seconds spent planning and recording."""
    from pipeline.sweep import main
    plan_s: list[float] = []
    record_s: list[float] = []
    cart.sweep.plan = timed(cart.sweep.plan, plan_s)
    cart.sweep.record = timed(cart.sweep.record, record_s)
    t0, code = time.perf_counter(), 1
    try:
        code = main(argv)
    except ValueError as e:  # what `python -m pipeline.sweep` prints for a bad plan
        print(f"sweep: error: {e}", file=sys.stderr)
    finally:
        times.write_text(json.dumps({"exit": code, "run_s": round(time.perf_counter() - t0, 2),
                                     "plan_s": round(sum(plan_s), 2), "record_s": round(sum(record_s), 2),
                                     "records": len(record_s),
                                     "record_max_s": round(max(record_s, default=0.0), 2)}, indent=1) + "\n")
    return code


def status_clean(text: str) -> bool:
    """Whether `dvc status --json` printed an empty mapping: every stage asked about is up to date."""
    try:
        return json.loads(text or "null") == {}
    except ValueError:
        return False


def device() -> tuple[str, str]:
    """(the GPU's name, or "cpu"; torch's version)."""
    import torch
    return (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"), torch.__version__


def comparison(args: argparse.Namespace, params: dict, sweep_times: dict, status_text: str,
           machine: tuple[str, str]) -> dict:
    """The comparison's JSON record."""
    from cart.experiments import run_names
    groups = args.groups.split(",")
    job_s, sweep_s = args.job_s, args.sweep_s
    return {
        "device": machine[0], "torch": machine[1], "profile": args.profile,
        "command": {"job": args.job_cmd, "sweep": args.sweep_cmd},
        "runs": sum(len(v) for v in run_names(params, groups).values()), "groups": groups,
        "parallel": args.parallel,
        "job_wall_s": job_s, "job_exit": args.job_exit,
        "sweep_wall_s": sweep_s, "sweep_exit": args.sweep_exit,
        "sweep_over_job": round(sweep_s / job_s, 3) if job_s else None,
        # the sweep's own DVC work: planning (index, `dvc status`) and one `dvc commit` per stage, which
        # runs in the engine's recorder thread, beside the scheduling; run_s is the sweep inside Python, after imports
        "sweep_dvc_overhead": {k: sweep_times.get(k) for k in ("plan_s", "record_s", "records", "record_max_s",
                                                               "run_s")},
        "dvc_status_clean": status_clean(status_text),
        # outside both timings: the data stages built once, and recorded in DVC for the sweep
        "data_s": args.data_s, "dvc_data_commit_s": args.dvc_data_s,
    }


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sweep"]:  # sweep --times T.json -- <pipeline.sweep's arguments>
        cut = argv.index("--") if "--" in argv else len(argv)
        ap = argparse.ArgumentParser(prog="sweep_compare sweep")
        ap.add_argument("--times", type=Path, required=True)
        return timed_sweep(argv[cut + 1:], ap.parse_args(argv[1:cut]).times)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["write"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--params", type=Path, required=True)
    ap.add_argument("--groups", required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--parallel", type=int, required=True)
    ap.add_argument("--job-cmd", required=True)
    ap.add_argument("--sweep-cmd", required=True)
    for name in ("job-s", "sweep-s", "data-s", "dvc-data-s"):
        ap.add_argument(f"--{name}", type=float, required=True)
    ap.add_argument("--job-exit", type=int, required=True)
    ap.add_argument("--sweep-exit", type=int, required=True)
    ap.add_argument("--sweep-times", type=Path, required=True)
    ap.add_argument("--status", type=Path, required=True, help="what `dvc status --json <groups>` printed")
    args = ap.parse_args(argv)
    times = json.loads(_read(args.sweep_times) or "{}")
    out = comparison(args, load_params(args.params), times, _read(args.status), device())
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
