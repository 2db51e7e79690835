"""bench/gpu/sweep_compare.py: the sweep's own DVC work timed apart from its runs, and the comparison's
record (its device half, bench/gpu/sweep_compare.sh, is checked by its CPU dry run, docs/gpu.md)."""
import argparse
import json

import pytest
from conftest import tiny_params

import cart.sweep
from bench.gpu import sweep_compare
from cart.experiments import run_names


def test_timed_counts_every_call_even_one_that_raises():
    seconds = []

    def fail():
        raise ValueError("no")

    assert sweep_compare.timed(lambda x: x + 1, seconds)(1) == 2
    with pytest.raises(ValueError):
        sweep_compare.timed(fail, seconds)()
    assert len(seconds) == 2 and all(s >= 0 for s in seconds)


def test_timed_sweep_times_the_plan_and_each_record(tmp_path, monkeypatch):
    """The sweep's command line runs as given; planning and each `dvc commit` are timed apart."""
    recorded = []
    monkeypatch.setattr(cart.sweep, "plan", lambda wanted, log_dir: ([], [], []))
    monkeypatch.setattr(cart.sweep, "record", recorded.append)

    def fake_main(argv):  # what run_sweep does with them: one plan, one record per finished stage
        cart.sweep.plan(argv, tmp_path)
        for stage in ("stage1@a", "stage1@b", "stage1@c"):
            cart.sweep.record(stage)
        return 0 if argv == ["--executor", "debug"] else 1

    monkeypatch.setattr("pipeline.sweep.main", fake_main)
    times = tmp_path / "times.json"
    assert sweep_compare.main(["sweep", "--times", str(times), "--", "--executor", "debug"]) == 0
    t = json.loads(times.read_text())
    assert recorded == ["stage1@a", "stage1@b", "stage1@c"]
    assert t["exit"] == 0 and t["records"] == 3 and t["plan_s"] >= 0 and t["record_s"] >= t["record_max_s"] >= 0


def test_timed_sweep_writes_its_times_when_the_plan_fails(tmp_path, monkeypatch, capsys):
    def bad_plan(wanted, log_dir):
        raise ValueError("the training stages read stages that are out of date")

    monkeypatch.setattr(cart.sweep, "plan", bad_plan)
    monkeypatch.setattr("pipeline.sweep.main", lambda argv: cart.sweep.plan(argv, tmp_path))
    times = tmp_path / "times.json"
    assert sweep_compare.timed_sweep([], times) == 1
    assert json.loads(times.read_text())["exit"] == 1 and "out of date" in capsys.readouterr().err


@pytest.mark.parametrize("text, clean", [("{}\n", True), ('{"stage1@a": [{"changed deps": {}}]}', False),
                                         ("", False), ("ERROR: not a DVC repository", False)])
def test_status_is_clean_only_when_dvc_reports_nothing(text, clean):
    assert sweep_compare.status_clean(text) is clean


def test_comparison_counts_the_groups_runs_and_compares_the_walls():
    params = tiny_params()
    args = argparse.Namespace(groups="stage1,sweep_cart", profile="gpu + gpu_dry", parallel=4, job_cmd="j",
                              sweep_cmd="s", job_s=100.0, sweep_s=112.5, job_exit=0, sweep_exit=0, data_s=9.0,
                              dvc_data_s=2.0)
    times = {"plan_s": 1.5, "record_s": 6.0, "records": 3, "record_max_s": 2.5, "run_s": 110.0}
    r = sweep_compare.comparison(args, params, times, "{}", ("NVIDIA H200", "2.11.0+cu130"))
    assert r["runs"] == len(run_names(params, ["stage1"])["stage1"]) + len(run_names(params, ["sweep_cart"])["sweep_cart"])
    assert r["runs"] == 3  # tiny: one Stage 1 run, two lr variants
    assert (r["device"], r["torch"], r["sweep_over_job"], r["dvc_status_clean"]) == ("NVIDIA H200", "2.11.0+cu130",
                                                                                    1.125, True)
    assert r["sweep_dvc_overhead"] == times and r["command"] == {"job": "j", "sweep": "s"}
    assert sweep_compare.comparison(args, params, {}, '{"x": []}', ("cpu", "2.13.0"))["dvc_status_clean"] is False
