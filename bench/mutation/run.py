"""Mutation testing of the model families and the accounting with mutmut, one module at a time,
and the committed summary of the last run (metrics/mutation.json).

    pip install mutmut==3.8.1
    python bench/mutation/run.py                        # every target module (hours on 2 cores)
    python bench/mutation/run.py cart/models/cart/model.py    # one module (or several)
    python bench/mutation/run.py --summary              # rewrite metrics/mutation.json from mutants/
    python bench/mutation/run.py --max-children 1 ...   # leave a CPU to other work
    mutmut run --max-children 1 "<mutant name>" ... && python bench/mutation/run.py --summary
                                                    # re-judge survivors after new tests; the summary
                                                    # keeps the committed verdicts of the rest

Slow, so outside CI. What is mutated and which tests judge it is `[tool.mutmut]` in pyproject.toml;
mutmut runs each mutant against only the tests that execute the mutated function, fastest first,
stopping at the first failure. Results accumulate in mutants/ (git-ignored): a module's mutants
already judged are not re-run unless named (`mutmut run <mutant name>`) or their code changed.

A surviving mutant is either killed by a new behavioural test or listed in
bench/mutation/equivalents.toml with the reason it cannot change behaviour; the summary lists
every survivor with its reason, or "unexplained".
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = ROOT / "metrics" / "mutation.json"
EQUIVALENTS = ROOT / "bench" / "mutation" / "equivalents.toml"
# mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code), grouped as the summary counts them
STATUS = {1: "killed", 3: "killed", 0: "survived", 33: "no_tests", 5: "no_tests", None: "not_checked",
          36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
          -9: "sigkill", -11: "sigkill"}
# sigkill: the worker died (mutmut's CPU-time kill, or the kernel's when memory ran out) before the
# tests gave a verdict. Not counted as killed: listed with the survivors until a re-run judges it.
COUNTED = ("killed", "timeout", "survived", "sigkill", "no_tests", "not_checked", "other")
# no verdict from this checkout's run: a committed verdict for the same code stands in for it
NO_VERDICT = ("not_checked", "sigkill")


def targets() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(config["only_mutate"])


def module_of(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def run_module(path: str, max_children: int | None = None) -> float:
    """mutmut over one module's mutants; returns the wall time in seconds."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut puts mutants/ first itself
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # tiny models: one thread per worker is fastest
    start = time.monotonic()
    workers = [] if max_children is None else ["--max-children", str(max_children)]
    result = subprocess.run(["mutmut", "run", *workers, f"{module_of(path)}.*"], cwd=ROOT, env=env)
    if result.returncode:
        raise SystemExit(f"mutation: mutmut failed on {path} (exit {result.returncode})")
    return time.monotonic() - start


def module_results(path: str) -> dict[str, str]:
    """mutant name -> status, from mutmut's record of the module (mutants/<path>.meta)."""
    meta = ROOT / "mutants" / f"{path}.meta"
    if not meta.is_file():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: STATUS.get(code, "other") for name, code in codes.items()}


def function_hashes(path: str, source: str | None = None) -> dict[str, str]:
    """mutmut's hash of each function of a target module (of `source`, default the file as it is):
    what mutmut itself compares to keep a function's verdicts while its code is unchanged."""
    from mutmut.mutation.file_mutation import mutate_file_contents
    code = (ROOT / path).read_text() if source is None else source
    return dict(mutate_file_contents(path, code).hash_by_function_name)


def function_of(name: str) -> str:
    """A mutant's function, as function_hashes names it: cart.models.cart.xǁCARTǁloop__mutmut_4 -> xǁCARTǁloop."""
    return name.rpartition("__mutmut_")[0].rpartition(".")[2]


def listed_statuses(previous: dict, path: str) -> dict[str, str]:
    """mutant name -> status of each mutant the committed summary names for a module: its survivors
    (summaries before survivor_status: a reason says sigkill; the rest survived), its timeouts and
    its mutants not checked (the lists `timeouts` and `unchecked`; every other mutant was killed)."""
    known = previous.get("survivor_status", {})
    prefix = module_of(path) + "."
    listed = {n: known.get(n, "sigkill" if r.startswith("sigkill") else "survived")
              for n, r in previous.get("survivors", {}).items() if n.startswith(prefix)}
    for status, key in (("timeout", "timeouts"), ("not_checked", "unchecked")):
        listed |= {n: status for n in previous.get(key, []) if n.startswith(prefix)}
    return listed


def _final_record(previous: dict, path: str) -> dict | None:
    """A module's committed counts, or None where the summary does not name every mutant that was not
    killed: timeouts or mutants not checked it counts but does not list (summaries before `timeouts`
    and `unchecked`), or mutants in a state it does not name."""
    module = previous["modules"].get(path)
    if module is None or module["other"]:
        return None
    prefix = module_of(path) + "."
    for status, key in (("timeout", "timeouts"), ("not_checked", "unchecked")):
        if module[status] != sum(n.startswith(prefix) for n in previous.get(key, [])):
            return None
    return module


def committed_statuses(previous: dict, path: str, names, rerun=()) -> dict[str, str] | None:
    """mutant name -> status of a module's mutants as the committed summary records them (a listed
    survivor's, timeout's or unchecked mutant's status, every other mutant killed), or None where
    that record cannot be exact for the mutants not `rerun` here: the module not judged in full there (not_checked, timeouts or
    'other' it does not name), or its mutants not the ones mutmut generates here (its code's function
    hashes differ from the recorded ones, or their number or names differ: the code changed)."""
    module = _final_record(previous, path)
    if module is None:
        return None
    before = previous.get("function_hashes", {}).get(path)
    if before is not None and before != function_hashes(path):  # the code changed, the count may not have
        return None
    listed = listed_statuses(previous, path)
    names = set(names)
    if module["mutants"] != len(names) or not set(listed) <= names:
        return None
    # summaries before survivor_status cannot tell survived from no_tests when the module counted
    # some of the latter (the split of those two is unknown: not exact)
    known = previous.get("survivor_status", {})
    unsure = {n for n, s in listed.items() if s in ("survived", "sigkill")} - set(rerun)
    if module["no_tests"] and not all(n in known for n in unsure):
        return None
    return {n: listed.get(n, "killed") for n in names}


def committed_by_function(previous: dict, path: str, names) -> dict[str, str]:
    """Where the module as a whole changed: mutant name -> committed status for the mutants of each
    function whose code is unchanged since the committed summary (the same mutmut hash: the same
    mutants, judged by the committed run; the tests have only grown since). Functions changed or
    new are left out, to be judged here."""
    before = previous.get("function_hashes", {}).get(path)
    if _final_record(previous, path) is None or before is None:
        return {}
    same = {f for f, h in function_hashes(path).items() if before.get(f) == h}
    listed = listed_statuses(previous, path)
    return {n: listed.get(n, "killed") for n in names if function_of(n) in same}


def summarize(runtimes: dict[str, float]) -> dict:
    previous = json.loads(SUMMARY.read_text()) if SUMMARY.is_file() else {"modules": {}}
    reasons = tomllib.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.is_file() else {}
    modules, survivors, survivor_status, hashes = {}, {}, {}, {}
    unfinished = {"timeout": [], "not_checked": []}  # named, so a later partial run can carry the rest
    for path in targets():
        results = module_results(path)
        if path in previous["modules"] and all(v == "not_checked" for v in results.values()):
            # mutants/ is a local, git-ignored cache: a module judged on another checkout (none of its
            # mutants judged here) keeps its committed counts and survivors until it is re-run here
            modules[path] = previous["modules"][path]
            prefix = module_of(path) + "."
            # their reasons refreshed from the equivalents listed since
            survivors |= {n: reasons.get(n, r) for n, r in previous.get("survivors", {}).items() if n.startswith(prefix)}
            survivor_status |= {n: s for n, s in previous.get("survivor_status", {}).items() if n.startswith(prefix)}
            for status, key in (("timeout", "timeouts"), ("not_checked", "unchecked")):
                unfinished[status] += [n for n in previous.get(key, []) if n.startswith(prefix)]
            if path in previous.get("function_hashes", {}):  # the code those verdicts were given for
                hashes[path] = previous["function_hashes"][path]
            continue
        hashes[path] = function_hashes(path)
        if any(v in NO_VERDICT for v in results.values()):
            # partly re-run here (mutants named, e.g. the survivors after new tests): the others keep
            # their committed verdicts where the committed record is exact for this code
            committed = committed_statuses(previous, path, results,
                                           rerun=[n for n, s in results.items() if s not in NO_VERDICT])
            if committed is None:  # the module changed: keep the verdicts of its unchanged functions
                committed = committed_by_function(previous, path, [n for n, s in results.items() if s in NO_VERDICT])
            results = {n: committed.get(n, s) if s in NO_VERDICT else s for n, s in results.items()}
        counts = {s: sum(v == s for v in results.values()) for s in COUNTED}
        judged = len(results) - counts["not_checked"]
        caught = counts["killed"] + counts["timeout"]
        runtime = runtimes.get(path, previous["modules"].get(path, {}).get("runtime_s"))
        modules[path] = {"mutants": len(results), **counts,
                         "killed_fraction": round(caught / judged, 4) if judged else None,
                         "runtime_s": None if runtime is None else round(runtime)}
        for name, status in results.items():
            if status in ("survived", "no_tests", "sigkill", "other"):
                survivors[name] = reasons.get(name, "unexplained" if status != "sigkill" else
                                              "sigkill: no verdict yet (re-run it by name)")
                survivor_status[name] = status
            elif status in unfinished:
                unfinished[status].append(name)
    total = {k: sum(m[k] for m in modules.values()) for k in ("mutants", *COUNTED)}
    judged = total["mutants"] - total["not_checked"]
    total["killed_fraction"] = round((total["killed"] + total["timeout"]) / judged, 4) if judged else None
    return {"tool": "mutmut 3.8.1", "command": "python bench/mutation/run.py",
            "note": "killed_fraction = (killed + timeout) / (mutants - not_checked); no_tests = no selected "
                    "test runs the mutated function; sigkill = the worker was killed before a verdict (not "
                    "counted as killed); survivors lists every survived, no-test and sigkill mutant with the "
                    "reason it is equivalent (bench/mutation/equivalents.toml) or 'unexplained', and "
                    "survivor_status its status; timeouts and unchecked name the mutants timed out and not checked; a module re-run here in part keeps the committed verdicts of "
                    "the mutants not re-run (of its unchanged functions, by function_hashes, where its code changed)",
            "total": total, "modules": modules, "survivors": dict(sorted(survivors.items())),
            "survivor_status": dict(sorted(survivor_status.items())),
            "timeouts": sorted(unfinished["timeout"]), "unchecked": sorted(unfinished["not_checked"]),
            "function_hashes": hashes}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help="target files (default: every [tool.mutmut] only_mutate file)")
    ap.add_argument("--summary", action="store_true", help="only rewrite metrics/mutation.json from mutants/")
    ap.add_argument("--max-children", type=int, default=None,
                    help="mutants tested at once (mutmut's default: one per CPU)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.modules) - set(targets()))
    if unknown:
        raise SystemExit(f"mutation: {unknown} are not mutation targets; valid: {targets()}")
    runtimes = {}
    if not args.summary:
        for path in args.modules or targets():
            runtimes[path] = run_module(path, args.max_children)
            SUMMARY.write_text(json.dumps(summarize(runtimes), indent=2) + "\n")  # after each module
    summary = summarize(runtimes)
    SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["total"]), file=sys.stderr)


if __name__ == "__main__":
    main()
