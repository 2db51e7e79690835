"""Constants, formatting, and the files committed beside the store (earlier trainings, device calls, job logs)."""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from cart import results
from cart.io import atomic_write_text
from cart.results.schema import RANK_DOMAIN

REPO = Path(__file__).resolve().parents[3]
RANK = f"ppl_{RANK_DOMAIN}"
COLLAPSE_PPL = 10.0  # the leak study: the step where validation PPL first falls below this
MEAN, STD = f"{RANK}_mean", f"{RANK}_std"
# The accuracy of a uniform guess: 4 endings (HellaSwag), 4 choices (most ARC-Challenge items), 2
# solutions (PIQA). An accuracy within two standard errors of it is "at chance".
CHANCE = {"hellaswag": 0.25, "arc_challenge": 0.25, "piqa": 0.5}
BENCH_METRIC = {"hellaswag": "acc_norm", "arc_challenge": "acc_norm", "piqa": "acc", "lambada_openai": "acc"}
TASK_NAME = {"hellaswag": "HellaSwag", "arc_challenge": "ARC-C", "piqa": "PIQA", "lambada_openai": "LAMBADA"}
SAMPLED_R_COST_TARGET = 0.15  # sampled-R training's target: within 15% of fixed R's speed
DECODE_SPEEDUP_TARGET = 10.0  # cached decoding's target: more than 10x uncached
SLOW_PHASE = 3.0  # a decode step this many times the same config's fastest is in the slow phase
ABLATIONS = ("X", "Z", "LTI", "HC", "LIE")
DENSE = "dense/L7-s42"  # the Dense control the LRT and RAT+ runs are compared with (same seed)


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------
def _f(v, digits=1) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{digits}f}"


def _pm(mean, std) -> str:
    return f"{_f(mean)} ± {_f(std)}"


def _k(v) -> str:
    return f"{v / 1000:,.0f}K"


def _signed(v, digits=1) -> str:
    return "—" if math.isnan(v) else f"{round(v, digits) + 0.0:+.{digits}f}%"  # + 0.0: no "-0.0%"


def _sci(v: float, digits: int = 1) -> str:
    """Scientific notation without the exponent's padding: 1.2e6, 4e-3."""
    mantissa, exponent = f"{v:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _pct(new, ref) -> float:
    return float(results.pct_delta(new, ref))


def _gap(a: float, b: float) -> float:
    """The relative gap between two PPLs in percent of the smaller: how spreads are measured too."""
    return 100.0 * (max(a, b) / min(a, b) - 1.0)


def _join(items: list[str]) -> str:
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


# ---------------------------------------------------------------------------------------------
# Earlier trainings and the device calls, as committed beside the store
# ---------------------------------------------------------------------------------------------
EARLIER = "earlier"      # runs/<group>/<name>/earlier/<n>/: a run's earlier trainings (bench/gpu/import_runs.py)
CALLS = "calls.json"     # each job log's device call: its date and device-minutes


def earlier_trainings(root: Path) -> dict[str, list[dict]]:
    """run_id -> its earlier trainings, oldest first, each {summary, config}: what bench/gpu/import_runs.py
    set aside under runs/<group>/<name>/earlier/<n>/ when a later import brought another training."""
    out: dict[str, list[dict]] = {}
    for folder in sorted(root.glob(f"runs/*/*/{EARLIER}/*"), key=lambda f: (f.parent.parent, int(f.name))):
        summary = folder / "summary.json"
        if not summary.is_file():
            raise ValueError(f"{folder}: an earlier training without its summary.json")
        config = folder / "config.json"
        run = folder.parent.parent
        out.setdefault(f"{run.parent.name}/{run.name}", []).append(
            {"summary": json.loads(summary.read_text()),
             "config": json.loads(config.read_text()) if config.is_file() else None})
    return out


def _leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(fields whose values differ, fields only the new config has), the code fingerprint left out."""
    old, new = _leaves(old), _leaves(new)
    differ = sorted(k for k in old.keys() & new.keys() if old[k] != new[k] and k != "code_sha256")
    return differ, sorted(new.keys() - old.keys())


def import_record(root: Path, log: str) -> dict:
    """The device call that wrote logs/<log>: its date and device-minutes (calls.json beside the store)."""
    path = root / CALLS
    calls = json.loads(path.read_text()) if path.is_file() else {}
    if log not in calls:
        raise ValueError(f"{path}: no record of the call that wrote logs/{log} (date, device_minutes)")
    return {"date": calls[log]["date"], "device_minutes": float(calls[log]["device_minutes"])}


# ---------------------------------------------------------------------------------------------
# Committed files beside the store
# ---------------------------------------------------------------------------------------------
STEP = re.compile(r"^(\w+)(?::\S*)?: (\d+) command\(s\) in ([\d.]+)s$")


def job_steps(text: str) -> tuple[dict[str, list[dict]], float]:
    """A job log's steps by kind (data / train / summarize / eval: commands, wall_s) and the job's wall time."""
    steps: dict[str, list[dict]] = {}
    for line in text.splitlines():
        if m := STEP.match(line.strip()):
            steps.setdefault(m[1], []).append({"commands": int(m[2]), "wall_s": float(m[3])})
    job = re.search(r"^job: ([\d.]+)s$", text, re.M)
    return steps, float(job[1]) if job else math.nan


def packed_runs(script: str) -> dict[str, int]:
    """job name -> how many runs bench/gpu/profile.sh packs on the GPU at once (its PAR)."""
    out = {}
    for m in re.finditer(r"^\s*(job\d)\)(.*?)(?=^\s*(?:job\d|\*)\))", script, re.M | re.S):
        if par := re.search(r"PAR=(\d+)", m[2]):
            out[m[1]] = int(par[1])
    return out


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the findings read it (a committed GPU bench or record)")
    return json.loads(path.read_text())


def findings_cli(argv, render, description: str, root_help: str) -> int:
    """A FINDINGS.md renderer's command line: write root/FINDINGS.md from render(root), or with --check
    compare it with the committed file and exit 1 where it is stale."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("root", type=Path, help=root_help)
    ap.add_argument("--check", action="store_true", help="compare with the committed FINDINGS.md, write nothing")
    args = ap.parse_args(argv)
    text, path = render(args.root), args.root / "FINDINGS.md"
    if args.check:
        same = path.is_file() and path.read_text() == text
        print(f"{path}: {'matches' if same else 'differs from'} the store")
        return 0 if same else 1
    atomic_write_text(path, text)
    print(f"wrote {path}")
    return 0
