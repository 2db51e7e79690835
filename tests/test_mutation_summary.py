"""bench/mutation/run.py's summary (metrics/mutation.json): a module re-run in part (its survivors named
after new tests) keeps the committed verdicts of the mutants not re-run, and only where that record is
exact for the mutants generated now."""
import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("_bench_mutation", Path(__file__).parents[1] / "bench" / "mutation" / "run.py")
mutation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutation)

A, B = "cart/models/a.py", "cart/models/b.py"
SOURCE = "def f(x):\n    return x + 1\n\n\ndef g(x):\n    return x * 2\n"
NOT_CHECKED = None  # mutmut's exit code of a mutant not judged


def module(**counts):
    row = {s: 0 for s in mutation.COUNTED} | counts
    return row | {"mutants": sum(row.values()), "killed_fraction": 0.5, "runtime_s": 7}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A checkout with two target modules, a committed summary and mutmut's local records."""
    monkeypatch.setattr(mutation, "ROOT", tmp_path)
    monkeypatch.setattr(mutation, "SUMMARY", tmp_path / "mutation.json")
    monkeypatch.setattr(mutation, "EQUIVALENTS", tmp_path / "equivalents.toml")
    monkeypatch.setattr(mutation, "targets", lambda: [A, B])
    (tmp_path / "equivalents.toml").write_text('"cart.models.a.f__mutmut_3" = "same values"\n')
    for path in (A, B):  # the target modules' code (function_hashes reads it)
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(SOURCE)

    def local(path, codes):
        meta = tmp_path / "mutants" / f"{path}.meta"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"exit_code_by_key": codes}))
    return local


def commit(project_root, modules, survivors, status=None):
    summary = {"modules": modules, "survivors": survivors} | ({"survivor_status": status} if status else {})
    (project_root / "mutation.json").write_text(json.dumps(summary))


def names(module_name, n):
    return [f"cart.models.{module_name}.f__mutmut_{i}" for i in range(1, n + 1)]


def test_a_partly_rerun_module_keeps_the_verdicts_not_rerun(project, tmp_path):
    a, b = names("a", 6), names("b", 3)
    commit(tmp_path, {A: module(killed=2, survived=3, sigkill=1), B: module(killed=2, survived=1)},
           {a[2]: "unexplained", a[3]: "unexplained", a[4]: "unexplained",
            a[5]: "sigkill: no verdict yet (re-run it by name)", b[0]: "unexplained"})
    # the survivors and the sigkill of A re-run: a[3] and a[5] now killed, a[4] survives; B not re-run here
    project(A, {a[0]: NOT_CHECKED, a[1]: NOT_CHECKED, a[2]: 0, a[3]: 1, a[4]: 0, a[5]: 1})
    project(B, dict.fromkeys(b, NOT_CHECKED))
    summary = mutation.summarize({})
    assert {k: summary["modules"][A][k] for k in ("mutants", "killed", "survived", "sigkill", "not_checked")} == \
        {"mutants": 6, "killed": 4, "survived": 2, "sigkill": 0, "not_checked": 0}
    assert summary["modules"][A]["killed_fraction"] == round(4 / 6, 4)
    assert summary["modules"][B] == module(killed=2, survived=1)  # kept as committed
    assert summary["survivors"] == {a[2]: "same values", a[4]: "unexplained", b[0]: "unexplained"}
    assert summary["survivor_status"] == {a[2]: "survived", a[4]: "survived"}
    assert summary["total"]["mutants"] == 9 and summary["total"]["killed"] == 6


def test_no_tests_survivors_keep_their_status_once_recorded(project, tmp_path):
    a = names("a", 4)
    commit(tmp_path, {A: module(killed=1, survived=1, no_tests=2), B: module()},
           dict.fromkeys(a[1:], "unexplained"), {a[1]: "survived", a[2]: "no_tests", a[3]: "no_tests"})
    project(A, {a[0]: NOT_CHECKED, a[1]: NOT_CHECKED, a[2]: NOT_CHECKED, a[3]: 1})
    counts = mutation.summarize({})["modules"][A]
    assert (counts["killed"], counts["survived"], counts["no_tests"], counts["not_checked"]) == (2, 1, 1, 0)
    # an older summary without survivor_status cannot tell no_tests from survived: not merged
    commit(tmp_path, {A: module(killed=1, survived=1, no_tests=2), B: module()}, dict.fromkeys(a[1:], "unexplained"))
    counts = mutation.summarize({})["modules"][A]
    assert (counts["killed"], counts["not_checked"]) == (1, 3)
    # ... unless every listed survivor was re-run here: the rest were killed
    project(A, {a[0]: NOT_CHECKED, a[1]: 0, a[2]: 1, a[3]: 33})
    counts = mutation.summarize({})["modules"][A]
    assert (counts["killed"], counts["survived"], counts["no_tests"], counts["not_checked"]) == (2, 1, 1, 0)


@pytest.mark.parametrize("committed,local_names", [
    (module(killed=3, survived=1), 5),  # the code changed: a different number of mutants
    (module(killed=3, survived=1, not_checked=1), 5),  # the committed run did not judge them all
])
def test_no_merge_where_the_committed_record_is_not_exact(project, tmp_path, committed, local_names):
    a = names("a", local_names)
    commit(tmp_path, {A: committed, B: module()}, {a[0]: "unexplained"})
    project(A, {n: (1 if n == a[0] else NOT_CHECKED) for n in a})
    counts = mutation.summarize({})["modules"][A]
    assert (counts["mutants"], counts["killed"], counts["not_checked"]) == (local_names, 1, local_names - 1)


def test_a_module_not_run_here_keeps_its_committed_entry(project, tmp_path):
    a = names("a", 2)
    commit(tmp_path, {A: module(killed=1, sigkill=1), B: module()},
           {a[1]: "sigkill: no verdict yet (re-run it by name)"}, {a[1]: "sigkill"})
    project(A, dict.fromkeys(a, NOT_CHECKED))
    summary = mutation.summarize({})
    assert summary["modules"][A] == module(killed=1, sigkill=1)
    assert summary["survivor_status"] == {a[1]: "sigkill"}
    # an equivalent listed since: its reason, though the module is not re-run here
    b = names("b", 3)
    commit(tmp_path, {A: module(killed=1, sigkill=1), B: module(killed=1, survived=2)},
           {b[1]: "unexplained", b[2]: "unexplained"})
    (tmp_path / "equivalents.toml").write_text(f'"{b[2]}" = "same values"\n')
    project(B, dict.fromkeys(b, NOT_CHECKED))
    assert mutation.summarize({})["survivors"] == {b[1]: "unexplained", b[2]: "same values"}


def test_a_changed_module_keeps_the_verdicts_of_its_unchanged_functions(project, tmp_path):
    """The module's code changed (other mutants, so the module's record is not exact), but only in g:
    f's mutants not re-run keep their committed verdicts (f's mutmut hash is the one the committed
    summary recorded); g's are judged here; without recorded hashes nothing is carried over."""
    old = mutation.function_hashes(A)
    (tmp_path / A).write_text(SOURCE.replace("x * 2", "x * 3 - 1"))
    assert mutation.function_hashes(A)["x_f"] == old["x_f"] and mutation.function_hashes(A)["x_g"] != old["x_g"]
    f, g = ([f"cart.models.a.x_{fn}__mutmut_{i}" for i in (1, 2, 3)] for fn in "fg")  # mutmut's names
    committed = {A: module(killed=2, survived=1), B: module()}
    commit(tmp_path, committed, {f[1]: "unexplained"}, {f[1]: "survived"})
    summary = json.loads((tmp_path / "mutation.json").read_text()) | {"function_hashes": {A: old}}
    (tmp_path / "mutation.json").write_text(json.dumps(summary))
    # f[2]'s worker was killed here (no verdict): the committed one stands in for it too
    project(A, dict.fromkeys(f, NOT_CHECKED) | {f[2]: -9, g[0]: 1, g[1]: 0, g[2]: NOT_CHECKED})
    got = mutation.summarize({})
    counts = got["modules"][A]
    assert (counts["mutants"], counts["killed"], counts["survived"], counts["not_checked"]) == (6, 3, 2, 1)
    assert counts["sigkill"] == 0
    assert got["survivor_status"] == {f[1]: "survived", g[1]: "survived"}
    assert got["function_hashes"][A] == mutation.function_hashes(A)  # the code judged now
    (tmp_path / "mutation.json").write_text(json.dumps(summary | {"function_hashes": {}}))
    counts = mutation.summarize({})["modules"][A]
    assert (counts["killed"], counts["survived"], counts["sigkill"], counts["not_checked"]) == (1, 1, 1, 3)


def test_summarizing_twice_keeps_the_carried_verdicts_of_a_module_with_timeouts(project, tmp_path):
    """The summary names its timeouts and unchecked mutants, so it is an exact record for the next
    summary of the same partial run: rewriting it from the same mutants/ changes nothing."""
    a = names("a", 5)
    commit(tmp_path, {A: module(killed=4, survived=1), B: module()}, {a[4]: "unexplained"}, {a[4]: "survived"})
    # a[0] timed out here, a[1] not checked; a[2], a[3] (killed) and a[4] keep their committed verdicts
    project(A, {a[0]: 36, a[1]: NOT_CHECKED, a[2]: NOT_CHECKED, a[3]: NOT_CHECKED, a[4]: NOT_CHECKED})
    project(B, {})
    first = mutation.summarize({})
    counts = first["modules"][A]
    assert (counts["killed"], counts["timeout"], counts["survived"], counts["not_checked"]) == (3, 1, 1, 0)
    assert (first["timeouts"], first["unchecked"]) == ([a[0]], [])
    (tmp_path / "mutation.json").write_text(json.dumps(first))
    again = mutation.summarize({})
    assert again["modules"][A] == counts and again["timeouts"] == [a[0]]
    # a mutant not checked in that run stays unchecked in the next, the rest carried
    project(A, {a[0]: NOT_CHECKED, a[1]: NOT_CHECKED, a[2]: 1, a[3]: NOT_CHECKED, a[4]: NOT_CHECKED})
    (tmp_path / "mutation.json").write_text(json.dumps(first | {"modules": {A: module(killed=2, timeout=1, survived=1, not_checked=1), B: module()},
                                                                 "unchecked": [a[1]]}))
    counts = mutation.summarize({})["modules"][A]
    assert (counts["killed"], counts["timeout"], counts["survived"], counts["not_checked"]) == (2, 1, 1, 1)


def test_a_module_whose_code_changed_keeps_no_verdicts_of_its_changed_functions(project, tmp_path):
    """g changed but mutmut generates as many mutants as before: the module's count alone would pass
    its record as exact; the recorded function hashes tell that only f's verdicts still hold."""
    old = mutation.function_hashes(A)
    (tmp_path / A).write_text(SOURCE.replace("x * 2", "x * 3"))
    f, g = ([f"cart.models.a.x_{fn}__mutmut_{i}" for i in (1, 2)] for fn in "fg")
    commit(tmp_path, {A: module(killed=4), B: module()}, {})
    summary = json.loads((tmp_path / "mutation.json").read_text())
    (tmp_path / "mutation.json").write_text(json.dumps(summary | {"function_hashes": {A: old}}))
    project(A, dict.fromkeys(f + g, NOT_CHECKED) | {g[0]: 0})
    counts = mutation.summarize({})["modules"][A]
    assert (counts["killed"], counts["survived"], counts["not_checked"]) == (2, 1, 1)
