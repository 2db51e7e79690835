"""The Stage 1 campaign's tooling: the GPU runner's run selection (bench/gpu/job.py), the cost summary
(bench/gpu/sweep_stage1.py) and the findings (bench/gpu/stage1_findings.py), whose committed outputs must be
what the committed results store renders to, so no number in them can go stale."""
import json
import math
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from bench.gpu import job as gpu_job, stage1_findings, sweep_stage1
from cart.experiments import resolve_run
from cart.models import forward_flops
from cart.params import load_params
from conftest import write_params
from pipeline.profile import main as profile_main

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "gpu" / "stage1"


def _campaign_copy(tmp_path: Path) -> Path:
    """The committed campaign copied to edit (its report and curves left out: nothing here reads them)."""
    root = tmp_path / "stage1"
    shutil.copytree(CAMPAIGN, root, ignore=shutil.ignore_patterns("report", "plots"))
    return root


def _edit_store(root: Path, sql: str, args: tuple = ()) -> None:
    """One statement on a campaign copy's results store."""
    con = sqlite3.connect(root / "results.db")
    with con:
        con.execute(sql, args)
    con.close()


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """The campaign's params: the paper profile, then its offline corpora."""
    p = tmp_path_factory.mktemp("paper") / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text())
    for name in ("paper", "paper_offline"):
        profile_main([name, "--params", str(p)])
    return load_params(p)


def test_gpu_job_selects_runs_by_shell_pattern_once_each(paper):
    cmds = gpu_job.commands("train:stage1/d256-*,stage1/d256-P6-R8,stage1_variants/leak-*", paper)
    runs = [(c[3], c[4]) for c in cmds]
    assert runs[:16] == [("stage1", f"d256-P{p}-R{r}") for p in (2, 3, 4, 6) for r in (2, 4, 6, 8)]
    assert runs[16:] == [("stage1_variants", "leak-s42"), ("stage1_variants", "leak-s137")]  # d256-P6-R8 once
    with pytest.raises(SystemExit, match=r"\['stage1/d128-\*'\] are not in the params grid"):
        gpu_job.commands("train:stage1/d128-*", paper)


@pytest.mark.parametrize("selection", ["stage1", "stage1/d256-*", "stage1/d512-P2-R2,stage1/d512-P6-R8",
                                       "stage1/d768-P[34]-*,stage1/d768-P6-R[246]", "stage1_dense"])
def test_the_cost_summary_reads_a_batch_selection_as_the_runner_does(paper, selection):
    """sweep_stage1.step_runs: the Stage 1 runs a logged selection trained are those bench/gpu/job.py ran."""
    ids = [f"stage1/{n}" for names in sweep_stage1.width_names(paper).values() for n in names]
    ran = [f"{c[3]}/{c[4]}" for c in gpu_job.commands(f"train:{selection}", paper)]
    assert sweep_stage1.step_runs({"selection": selection}, ids) == [i for i in ran if i in ids]


def test_the_job_log_is_read_into_runs_and_steps():
    log = """stage1 job: parallel 4 mps 1 selection stage1/d256-*
  pipeline.train stage1 d256-P2-R2 --no-progress               exit 0   101.0s
  pipeline.train stage1 d256-P2-R4 --no-progress               exit 1    12.5s
train:stage1/d256-*: 2 command(s) in 150.2s
stage1 job: parallel 2 mps 0 selection stage1/d512-P2-R2 params params+stage1_by_iteration.yaml
  pipeline.train stage1 d512-P2-R2 --no-progress               exit 0    79.8s
train:stage1/d512-P2-R2: 1 command(s) in 80.0s
"""
    runs, steps = sweep_stage1.parse_job_log(log)
    assert runs == {"stage1/d256-P2-R2": {"process_s": 101.0, "exit": 0, "parallel": 4, "mps": 1},
                    "stage1/d256-P2-R4": {"process_s": 12.5, "exit": 1, "parallel": 4, "mps": 1},
                    "stage1/d512-P2-R2": {"process_s": 79.8, "exit": 0, "parallel": 2, "mps": 0}}
    assert steps == [{"selection": "stage1/d256-*", "commands": 2, "wall_s": 150.2, "parallel": 4, "mps": 1,
                      "failed": ["stage1/d256-P2-R4"]},
                     {"selection": "stage1/d512-P2-R2", "commands": 1, "wall_s": 80.0, "parallel": 2, "mps": 0,
                      "params": "params+stage1_by_iteration.yaml"}]


def test_a_batch_cut_short_costs_its_finished_runs_until_the_last_of_them_ended():
    """A batch whose closing line never came (the machine went back): each run starts when the run
    before it in the log ended (the first wave at 0); the batch counts until its last finished run
    ended, and lists those runs; the runs stopped or still running are not in it."""
    log = """stage1 job: parallel 2 mps 1 selection stage1/d512-P3-*,stage1/d512-P4-R2 params params.yaml device NVIDIA H200
started: pipeline.train stage1 d512-P3-R2 --no-progress (job 11)
started: pipeline.train stage1 d512-P3-R4 --no-progress (job 12)
[     61s] done 0 | running 2 | failed 0 | waiting 3 | 1,150,496 tok/s
done: pipeline.train stage1 d512-P3-R2 --no-progress (exit 0, 100.0s)
started: pipeline.train stage1 d512-P3-R6 --no-progress (job 13)
done: pipeline.train stage1 d512-P3-R4 --no-progress (exit 0, 130.0s)
started: pipeline.train stage1 d512-P3-R8 --no-progress (job 14)
failed: pipeline.train stage1 d512-P3-R8 --no-progress (exit 1, 5.0s); log logs/stage1-d512-P3-R8.log
started: pipeline.train stage1 d512-P4-R2 --no-progress (job 15)
done: pipeline.train stage1 d512-P3-R6 --no-progress (exit 0, 70.5s)
stopped: pipeline.train stage1 d512-P4-R2 --no-progress (exit -, 20.0s); log logs/stage1-d512-P4-R2.log
stage1 job: parallel 2 mps 1 selection stage1/d512-P6-R8 params params.yaml device NVIDIA H100 80GB HBM3
started: pipeline.train stage1 d512-P6-R8 --no-progress (job 16)
"""
    runs, steps = sweep_stage1.parse_job_log(log)
    assert {k: v["process_s"] for k, v in runs.items()} == {
        "stage1/d512-P3-R2": 100.0, "stage1/d512-P3-R4": 130.0, "stage1/d512-P3-R8": 5.0, "stage1/d512-P3-R6": 70.5}
    assert runs["stage1/d512-P3-R8"]["exit"] == 1
    # P3-R6 started when P3-R2 ended (100 s) and ran 70.5 s; the second job finished nothing
    assert steps == [{"selection": "stage1/d512-P3-*,stage1/d512-P4-R2", "commands": 3, "wall_s": 170.5,
                      "parallel": 2, "mps": 1, "params": "params.yaml", "device": "NVIDIA H200",
                      "runs": ["stage1/d512-P3-R2", "stage1/d512-P3-R4", "stage1/d512-P3-R6"], "interrupted": True}]
    ids = [f"stage1/d512-P{p}-R{r}" for p in (2, 3, 4, 6) for r in (2, 4, 6, 8)]
    assert sweep_stage1.step_runs(steps[0], ids) == ["stage1/d512-P3-R2", "stage1/d512-P3-R4", "stage1/d512-P3-R6"]


def test_a_batch_stopped_at_its_deadline_costs_the_runs_that_finished_in_it():
    """bench/gpu/job.py --start-by: the step line counts the runs started and says how many were not;
    the step then trained the runs that finished, not its whole selection."""
    log = """stage1 batch not started (STAGE1_START_BY passed): stage1/d1024-*
stage1 job: parallel 2 mps 1 selection stage1/d768-P3-* params params.yaml device NVIDIA H200
started: pipeline.train stage1 d768-P3-R2 --no-progress (job 11)
started: pipeline.train stage1 d768-P3-R4 --no-progress (job 12)
done: pipeline.train stage1 d768-P3-R2 --no-progress (exit 0, 200.0s)
started: pipeline.train stage1 d768-P3-R6 --no-progress (job 13)
done: pipeline.train stage1 d768-P3-R4 --no-progress (exit 0, 230.0s)
done: pipeline.train stage1 d768-P3-R6 --no-progress (exit 0, 250.0s)
deadline: 1 task(s) not started
  pipeline.train stage1 d768-P3-R2 --no-progress               exit 0   200.0s
  pipeline.train stage1 d768-P3-R4 --no-progress               exit 0   230.0s
  pipeline.train stage1 d768-P3-R6 --no-progress               exit 0   250.0s
  pipeline.train stage1 d768-P3-R8 --no-progress               not started
train:stage1/d768-P3-*: 3 command(s) in 452.5s, 1 not started (--start-by)
"""
    runs, steps = sweep_stage1.parse_job_log(log)
    assert sorted(runs) == ["stage1/d768-P3-R2", "stage1/d768-P3-R4", "stage1/d768-P3-R6"]
    ran = ["stage1/d768-P3-R2", "stage1/d768-P3-R4", "stage1/d768-P3-R6"]
    assert steps == [{"selection": "stage1/d768-P3-*", "commands": 3, "wall_s": 452.5, "parallel": 2, "mps": 1,
                      "params": "params.yaml", "device": "NVIDIA H200", "runs": ran, "not_started": 1}]
    ids = [f"stage1/d768-P{p}-R{r}" for p in (2, 3, 4, 6) for r in (2, 4, 6, 8)]
    assert sweep_stage1.step_runs(steps[0], ids) == ran


def test_gpu_job_starts_no_run_after_its_deadline(tiny_project, capsys):
    """--start-by 0: every run of the selection is listed as not started, the job ends there with exit
    0 before its next step, and the cost summary reads the step as having trained nothing."""
    p = yaml.safe_load((tiny_project / "params.yaml").read_text())
    p["stage1"]["grid"]["n_loops"] = [2, 3]
    write_params(tiny_project, p)
    assert gpu_job.main(["train:stage1", "summarize:stage1", "--parallel", "2", "--start-by", "0"]) == 0
    out = capsys.readouterr().out
    names = [c[4] for c in gpu_job.commands("train:stage1", load_params("params.yaml"))]
    assert len(names) == 2 and [line.split()[2] for line in out.splitlines()
                                if line.startswith("  pipeline.train") and line.endswith("not started")] == names
    assert "summarize:stage1" not in out and not list(Path("runs").glob("*/*/summary.json"))
    _, steps = sweep_stage1.parse_job_log("stage1 job: parallel 2 mps 0 selection stage1\n" + out)
    assert [(s["commands"], s["runs"], s["not_started"]) for s in steps] == [(0, [], len(names))]
    with pytest.raises(SystemExit, match="--start-by: must be >= 0"):
        gpu_job.main(["train:stage1", "--start-by", "-1"])


def test_each_gpu_model_has_its_own_minutes(paper):
    """A width trained on two GPU models: each model's minutes count only its own batches (a batch's
    device from its log line, else from its runs' summaries), and the H200's is the target's."""
    ids = [f"stage1/d512-P{p}-R{r}" for p in (2, 3, 4, 6) for r in (2, 4, 6, 8)]
    whole = {i: {"process_s": 60.0} for i in ids}
    steps = [{"selection": f"{ids[0]},{ids[-1]}", "commands": 2, "wall_s": 120.0, "parallel": 2, "mps": 1},
             {"selection": "stage1/d512-*", "commands": 16, "wall_s": 900.0, "parallel": 4, "mps": 1,
              "device": "NVIDIA H100 80GB HBM3"}]
    # the pair trained again in the H100's batch: its H200 trainings are the earlier ones
    trainings = {i: ["NVIDIA H200", "NVIDIA H100 80GB HBM3"] for i in (ids[0], ids[-1])} \
        | {i: ["NVIDIA H100 80GB HBM3"] for i in ids[1:-1]}
    sweep_stage1.step_devices(steps, trainings)
    assert steps[0]["device"] == "NVIDIA H200"  # from the trainings it made, not its runs' latest
    h200 = sweep_stage1.width_projection(paper, whole, steps, 512, "NVIDIA H200")
    h100 = sweep_stage1.width_projection(paper, whole, steps, 512, "NVIDIA H100 80GB HBM3")
    assert h200["mode"] == "projected" and h200["from_step"]["wall_s"] == 120.0
    assert (h100["mode"], h100["minutes"]) == ("measured", 15.0)
    # a model's configs measured are those whose latest training ran on it (a run of unknown GPU: on each)
    split = {i: {"process_s": 60.0, "device": "NVIDIA H200" if i in (ids[0], ids[-1]) else "NVIDIA H100 80GB HBM3"}
             for i in ids} | {ids[1]: {"process_s": 60.0}}
    assert sweep_stage1.width_projection(paper, split, steps, 512, "NVIDIA H200")["configs_measured"] == 3
    assert sweep_stage1.width_projection(paper, split, steps, 512, "NVIDIA H100 80GB HBM3")["configs_measured"] == 14
    # a step whose runs' summaries name two GPUs gets none
    mixed = [{"selection": f"{ids[0]},{ids[1]}", "commands": 2, "wall_s": 120.0, "parallel": 2, "mps": 1}]
    sweep_stage1.step_devices(mixed, {ids[0]: ["NVIDIA H200"], ids[1]: ["NVIDIA H100 80GB HBM3"]})
    assert "device" not in mixed[0]
    # ... and counts for every GPU model, as its device is unknown
    assert sweep_stage1.width_projection(paper, whole, mixed, 512, "NVIDIA H200")["mode"] == "projected"
    # a run that failed in a later step left no training there: its one training is the earlier step's
    again = [{"selection": ids[0], "commands": 1, "wall_s": 60.0, "parallel": 1, "mps": 1},
             {"selection": ids[0], "commands": 1, "wall_s": 5.0, "parallel": 1, "mps": 1, "failed": [ids[0]]}]
    sweep_stage1.step_devices(again, {ids[0]: ["NVIDIA H200"]})
    assert again[0]["device"] == "NVIDIA H200" and "device" not in again[1]


def test_a_width_is_measured_whole_or_projected_by_flops(paper):
    ids = [f"stage1/d512-P{p}-R{r}" for p in (2, 3, 4, 6) for r in (2, 4, 6, 8)]
    whole = {i: {"process_s": 60.0} for i in ids}
    steps = [{"selection": "stage1/d512-*", "commands": 16, "wall_s": 600.0, "parallel": 4, "mps": 1}]
    assert sweep_stage1.width_projection(paper, whole, steps, 512)["minutes"] == 10.0
    two = {ids[0]: {"process_s": 50.0}, ids[-1]: {"process_s": 90.0}}
    steps = [{"selection": f"{ids[0]},{ids[-1]}", "commands": 2, "wall_s": 120.0, "parallel": 2, "mps": 1}]
    out = sweep_stage1.width_projection(paper, two, steps, 512)
    flops = {i: forward_flops(resolve_run(paper, "stage1", i.split("/")[1], 32_000).model, 512) for i in ids}
    expected = 120.0 * sum(flops.values()) / (flops[ids[0]] + flops[ids[-1]]) / 60
    assert out["mode"] == "projected" and math.isclose(out["minutes"], expected, abs_tol=0.005)
    # a later trial of a lever on the same configs is not the campaign's cost
    lever = dict(steps[0], wall_s=150.0, params="params+stage1_by_iteration.yaml")
    assert sweep_stage1.width_projection(paper, two, steps + [lever], 512) == out
    # measured over several steps of this width alone, a config trained again counting at its last step
    steps = [{"selection": f"{ids[0]},{ids[-1]}", "commands": 2, "wall_s": 120.0, "parallel": 2, "mps": 1},
             {"selection": "stage1/d512-P2-R2,stage1/d512-P6-R8", "commands": 2, "wall_s": 90.0, "parallel": 2, "mps": 1},
             {"selection": "stage1/d512-P[34]-*,stage1/d512-P6-R[246],stage1/d512-P2-R[468]", "commands": 14,
              "wall_s": 510.0, "parallel": 4, "mps": 1}]
    out = sweep_stage1.width_projection(paper, whole, steps, 512)
    assert (out["mode"], out["minutes"], out["parallel"]) == ("measured", 10.0, 4)
    assert sweep_stage1.width_projection(paper, whole, steps[:2], 512)["mode"] == "projected"
    # one config trained once more, alone: its own step replaces its earlier one (90 + 510 + 30 s)
    alone = {"selection": ids[0], "commands": 1, "wall_s": 30.0, "parallel": 1, "mps": 1}
    assert sweep_stage1.width_projection(paper, whole, steps + [alone], 512)["minutes"] == 10.5
    # ... but not where a config's last training ran beside another width's
    steps.append({"selection": f"{ids[0]},stage1/d256-P2-R2", "commands": 2, "wall_s": 60.0, "parallel": 2, "mps": 1})
    assert sweep_stage1.width_projection(paper, whole, steps, 512)["mode"] == "projected"
    # a step that also trained runs of another width says nothing about this one's cost
    mixed = [dict(steps[0], selection=f"{ids[0]},{ids[-1]},stage1/d256-P2-R2", commands=3)]
    assert sweep_stage1.width_projection(paper, two, mixed, 512)["mode"] == "missing"


def test_a_projection_counts_a_same_width_control_beside_the_configs_and_takes_the_widest_step(paper):
    """A Dense control trained beside some of a width's configs costs its own FLOPs in the step's wall
    time; of several partial steps, the one that trained most of the width's configs projects it."""
    ids = [f"stage1/d512-P{p}-R{r}" for p in (2, 3, 4, 6) for r in (2, 4, 6, 8)]
    spec = {i: resolve_run(paper, *i.split("/"), 32_000) for i in ids + ["stage1_dense/d512-L7"]}
    flops = {i: forward_flops(s.model, 512) / 512 * s.run.steps * s.run.tokens_per_step for i, s in spec.items()}
    assert flops["stage1_dense/d512-L7"] != flops[ids[0]]  # else the Dense run's share would not show
    three = {"selection": f"{ids[0]},{ids[1]},{ids[-1]},stage1_dense/d512-L7", "commands": 4, "wall_s": 300.0,
             "parallel": 4, "mps": 1}
    pair = {"selection": f"{ids[2]},{ids[3]}", "commands": 2, "wall_s": 100.0, "parallel": 2, "mps": 1}
    for steps in ([three, pair], [pair, three]):
        out = sweep_stage1.width_projection(paper, {}, steps, 512)
        expected = 300.0 * sum(flops[i] for i in ids) / sum(flops[i] for i in (ids[0], ids[1], ids[-1], "stage1_dense/d512-L7")) / 60
        assert math.isclose(out["minutes"], expected, abs_tol=0.005)
        assert out["from_step"]["others"] == ["stage1_dense/d512-L7"] and len(out["from_step"]["runs"]) == 3
    # of two steps with as many configs, the later
    later = dict(pair, selection=f"{ids[4]},{ids[5]},{ids[6]}", commands=3, wall_s=200.0)
    assert sweep_stage1.width_projection(paper, {}, [three, later], 512)["from_step"]["wall_s"] == 200.0
    assert sweep_stage1.width_projection(paper, {}, [later, three], 512)["from_step"]["wall_s"] == 300.0


def test_the_steps_alone_interpolate_single_run_speeds_in_flops(paper):
    """steps_only: per width, each config's step time on the line through its width's measured configs
    (time against forward FLOPs per token), and the optimistic sum at the most efficient one's seconds
    per FLOP; a width without two measured configs leaves the totals unknown."""
    ids = [f"d512-P{p}-R{r}" for p in (2, 3, 4, 6) for r in (2, 4, 6, 8)]
    flops = {n: forward_flops(resolve_run(paper, "stage1", n, 32_000).model, 512) / 512 for n in ids}
    tokens = 3000 * 32 * 512
    speeds = {"d512-P2-R2": 1.7e6, "d512-P6-R8": 0.8e6}
    out = sweep_stage1.steps_only(paper, speeds)
    t = {n: tokens / v for n, v in speeds.items()}
    slope = (t["d512-P6-R8"] - t["d512-P2-R2"]) / (flops["d512-P6-R8"] - flops["d512-P2-R2"])
    line = sum(t["d512-P2-R2"] + slope * (flops[n] - flops["d512-P2-R2"]) for n in ids) / 60
    best = min(t[n] / flops[n] for n in t) * sum(flops.values()) / 60
    assert out["widths"]["512"] == {"measured": ["d512-P2-R2", "d512-P6-R8"], "interpolated": round(line, 2),
                                    "best_efficiency": round(best, 2)}
    assert best < line  # the cheaper config runs more FLOPs a second here
    assert out["widths"]["256"] is None and out["minutes_64"] == {"interpolated": None, "best_efficiency": None}
    whole = dict(speeds, **{f"d{d}-{c}": v for d in (256, 768, 1024) for c, v in (("P2-R2", 2e6), ("P6-R8", 1e6))})
    assert sweep_stage1.steps_only(paper, whole)["minutes_64"]["interpolated"] > line
    with pytest.raises(ValueError, match=r"not in the Stage 1 grid: \['d512-P5-R2'\]"):
        sweep_stage1.steps_only(paper, {"d512-P5-R2": 1e6})


def test_single_run_speeds_come_from_the_bench_rows_of_stage1_runs():
    """stage1.sh bench's output: the base rows (the run's own step) give the speeds, the fused_adamw rows
    their speed-up; other groups' runs, config-name rows and failed rows are not read. A record of
    earlier speeds is read as it is."""
    rows = [{"model": "CART d256 P6 R8", "run": "stage1/d256-P6-R8", "lever": "base", "oom": True},
            {"model": "CART d256 P2 R2", "run": "stage1/d256-P2-R2", "lever": "base", "tokens_per_s": 2.0e6},
            {"model": "CART d256 P2 R2", "run": "stage1/d256-P2-R2", "lever": "fused_adamw", "tokens_per_s": 2.1e6,
             "speedup_vs_base": 1.05},
            {"model": "CART d256 P6 R2", "run": "stage1/d256-P6-R2", "lever": "fp8", "tokens_per_s": 1.9e6,
             "speedup_vs_base": 0.95},
            {"model": "CART d256 P6 R2", "run": "stage1_variants/code-R2-s42", "lever": "base", "tokens_per_s": 1.0},
            {"model": "CART d256 P6 R6", "lever": "base", "tokens_per_s": 1.0}]
    assert sweep_stage1.single_run_speeds({"rows": rows}) == ({"d256-P2-R2": 2.0e6}, {"d256-P2-R2": 1.05})
    assert sweep_stage1.single_run_speeds({"tokens_per_s": {"d256-P2-R2": 3.0e6}}) == ({"d256-P2-R2": 3.0e6}, {})


def test_a_later_speeds_file_replaces_an_earlier_ones_configs(tmp_path, paper):
    """Every single_run_speeds*.json of the campaign, in name order: a bench file measured later replaces the
    record's speeds of the configs it ran and adds fused AdamW's speed-ups; the others stay."""
    record = {"tokens_per_s": {"d512-P2-R2": 1.7e6, "d512-P6-R8": 0.8e6}}
    measured = {"rows": [{"model": "CART d512 P6 R8", "run": "stage1/d512-P6-R8", "lever": "base", "tokens_per_s": 1.0e6},
                         {"model": "CART d512 P6 R8", "run": "stage1/d512-P6-R8", "lever": "fused_adamw",
                          "tokens_per_s": 1.02e6, "speedup_vs_base": 1.02}]}
    later = {"rows": [{"model": "CART d512 P2 R2", "run": "stage1/d512-P2-R2", "lever": "fused_adamw",
                       "tokens_per_s": 1.75e6, "speedup_vs_base": 1.03}]}
    (tmp_path / "single_run_speeds.json").write_text(json.dumps(record))
    (tmp_path / "single_run_speeds_120000.json").write_text(json.dumps(measured))
    (tmp_path / "single_run_speeds_130000.json").write_text(json.dumps(later))
    paths = sorted(tmp_path.glob(sweep_stage1.SINGLE_RUN_SPEEDS))
    got = sweep_stage1.steps_only_record(paper, paths)
    expected = sweep_stage1.steps_only(paper, {"d512-P2-R2": 1.7e6, "d512-P6-R8": 1.0e6})
    assert got == expected | {"speeds": [p.name for p in paths],
                              "fused_adamw_speedup": {"d512-P6-R8": 1.02, "d512-P2-R2": 1.03}}
    assert sweep_stage1.steps_only_record(paper, []) is None
    # a file measured on another GPU is named, not read; the target GPU's own files are
    h100 = dict(measured, device="NVIDIA H100 80GB HBM3", rows=[dict(measured["rows"][0], tokens_per_s=0.5e6)])
    (tmp_path / "single_run_speeds_140000.json").write_text(json.dumps(h100))
    (tmp_path / "single_run_speeds_120000.json").write_text(json.dumps(dict(measured, device="NVIDIA H200")))
    more = sorted(tmp_path.glob(sweep_stage1.SINGLE_RUN_SPEEDS))
    assert sweep_stage1.steps_only_record(paper, more) == dict(got, other_device_files=["single_run_speeds_140000.json"])
    assert sweep_stage1.steps_only_record(paper, more[-1:]) is None


def test_committed_sweep_metrics_are_what_the_campaign_renders():
    committed = json.loads((ROOT / "metrics" / "sweep_stage1.json").read_text())
    fresh = json.loads(json.dumps(sweep_stage1.summarize(CAMPAIGN, sweep_stage1.load_params(CAMPAIGN / "params.yaml"))))
    assert fresh == committed, "re-run: python -m bench.gpu.sweep_stage1 gpu/stage1"
    assert committed["configs_measured"] >= 16 and committed["widths"]["256"]["mode"] == "measured"


def test_the_cost_summary_reads_complete_runs_and_needs_no_job_log(tmp_path):
    """A run whose summary is not complete is left out (the first one read here: the rest still are);
    without the job log every run is still costed, by phase, and every width's cost is missing; two
    torch versions are both named."""
    root = _campaign_copy(tmp_path)
    committed = json.loads((ROOT / "metrics" / "sweep_stage1.json").read_text())
    first = sorted(root.glob("runs/*/*/summary.json"))[0]
    for path, key, value in ((first, "status", "failed"), (root / "runs/stage1/d256-P2-R2/summary.json", "torch", "2.12.0")):
        summary = json.loads(path.read_text())
        summary[key] = value
        path.write_text(json.dumps(summary))
    (root / "logs" / "job.log").unlink()
    out = sweep_stage1.summarize(root, load_params(root / "params.yaml"))
    assert set(out["runs"]) == set(committed["runs"]) - {f"{first.parent.parent.name}/{first.parent.name}"}
    assert not any("process_s" in c for c in out["runs"].values()) and out["job_steps"] == []
    assert out["torch"] == sorted(["2.12.0", committed["torch"]])
    assert out["widths"]["256"] == {"mode": "missing", "configs": 16, "configs_measured": 0, "minutes": None}
    assert out["projected_gpu_minutes_64"] is None


def test_a_batch_on_another_gpu_is_summarised_apart_from_the_h200s(tmp_path):
    """The committed campaign plus the d768 pair trained again on an H100, imported as bench.gpu.import_runs
    files it (the H100 trainings latest, the earlier ones under earlier/): the H200's minutes and
    projection stay as committed (its pair batch keeps its GPU), the H100's batch is costed under
    other_devices."""
    root = _campaign_copy(tmp_path)
    pair = "stage1/d768-P2-R2,stage1/d768-P6-R8"
    h100 = "NVIDIA H100 80GB HBM3"
    for run_id in pair.split(","):
        run = root / "runs" / run_id
        earlier = run / "earlier" / str(len(list((run / "earlier").glob("*"))) + 1)
        earlier.mkdir(parents=True)
        for name in ("summary.json", "config.json"):
            shutil.copy2(run / name, earlier / name)
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps(summary | {"device": h100}))
    with open(root / "logs" / "job.log", "a") as log:
        log.write(f"stage1 job: parallel 2 mps 1 selection {pair} params params.yaml device {h100}\n"
                  "  pipeline.train stage1 d768-P2-R2 --no-progress               exit 0   150.0s\n"
                  "  pipeline.train stage1 d768-P6-R8 --no-progress               exit 0   240.0s\n"
                  f"train:{pair}: 2 command(s) in 240.0s\n")
    committed = json.loads((ROOT / "metrics" / "sweep_stage1.json").read_text())
    out = sweep_stage1.summarize(root, load_params(root / "params.yaml"))
    for key in ("gpu_minutes_measured", "projected_gpu_minutes_64", "widths"):
        assert out[key] == committed[key], key
    before = committed["other_devices"][h100]
    after = out["other_devices"][h100]
    assert after["gpu_minutes_measured"] == round(before["gpu_minutes_measured"] + 4.0, 2)
    # the pair's latest batch replaces their part of the whole-width batch: still measured, 4 minutes more
    assert after["widths"]["768"]["mode"] == before["widths"]["768"]["mode"] == "measured"
    assert after["widths"]["768"]["minutes"] == round(before["widths"]["768"]["minutes"] + 4.0, 2)
    assert after["widths"]["768"]["steps"] == before["widths"]["768"]["steps"] + [pair]


def test_committed_findings_are_what_the_store_renders():
    assert (CAMPAIGN / "FINDINGS.md").read_text() == stage1_findings.render(CAMPAIGN), \
        "re-run: python -m bench.gpu.stage1_findings gpu/stage1"
    text = (CAMPAIGN / "FINDINGS.md").read_text()
    for paper_ppl in ("184.9", "136.4", "115.0", "97.7"):  # the paper's best per width, beside ours
        assert paper_ppl in text


def test_without_a_measured_spread_no_difference_is_called_within_or_beyond_it(tmp_path):
    """A campaign whose repeated runs are missing has no spread: every comparison says the spread is
    not measured, none is judged against it; without its controls, their sections say they are missing."""
    root = _campaign_copy(tmp_path)
    _edit_store(root, "DELETE FROM runs WHERE \"group\" IN ('stage1_variants', 'stage1_dense')")
    text = stage1_findings.render(root)
    assert "Run-to-run spread (the same config trained again): **—%**" in text
    assert "No width has both yet." in text and "\nNot run yet.\n" in text  # no Dense control, no text reading
    assert "the run-to-run spread is not measured yet" in text
    assert "(spread not measured)" in text and "within the spread" not in text and "beyond the spread" not in text
    repeats = next(line for line in text.splitlines() if line.startswith("Trained again with the same config"))
    assert "spread" not in repeats


def test_the_findings_verdicts_follow_the_store_where_it_says_otherwise(tmp_path):
    """The committed store says yes to most of the paper's claims and its leak never collapsed; a copy
    edited to say otherwise turns each verdict: d512 worse than d256, P = 4 best at d256, a width with
    one config run and one with none, the leak falling below 10."""
    root = _campaign_copy(tmp_path)
    for sql in ("UPDATE runs SET ppl_wikipedia = 2 * ppl_wikipedia WHERE \"group\" = 'stage1' AND d_model = 512",
                "UPDATE runs SET ppl_wikipedia = 100 WHERE run_id = 'stage1/d256-P4-R2'",
                "DELETE FROM runs WHERE (run_id LIKE 'stage1/d1024-%' AND run_id != 'stage1/d1024-P6-R8') "
                "OR run_id LIKE 'stage1/d768-%'",
                "UPDATE eval_log SET ppl = 5 WHERE run_id = 'stage1_variants/leak-s42' AND domain = 'wikipedia' "
                "AND step >= 1500"):
        _edit_store(root, sql)
    text = stage1_findings.render(root)
    assert "- Wider is better at every step, as in the paper: **no** (d256 100.0, d512 195.9, d1024 66.9)." in text
    assert "- At d = 1024 only 1 of 16 configs have run (P6 R8)" in text and "At d = 768" not in text
    assert "- d256: best P = 4 (no); best per P: P2 151.6, P3 149.9, P4 100.0, P6 146.0." in text
    assert "- seed 42: validation PPL first below 10 at step 1500; lowest 5.0 (step 1500);" in text


def _lever_workspace(tmp_path, wall_s: float, ppl_scale: float) -> Path:
    """A GPU workspace whose last batch re-trained the committed d512 pair under the by-iteration lever,
    in wall_s seconds, each final Wikipedia PPL scaled by ppl_scale."""
    ws = tmp_path / "ws"
    pair = ("stage1/d512-P2-R2", "stage1/d512-P6-R8")
    for run_id in pair:
        summary = json.loads((CAMPAIGN / "runs" / run_id / "summary.json").read_text())
        summary["final_eval"]["wikipedia"]["ppl"] *= ppl_scale
        (ws / "runs" / run_id).mkdir(parents=True)
        (ws / "runs" / run_id / "summary.json").write_text(json.dumps(summary))
    (ws / "logs").mkdir()
    (ws / "logs" / "job.log").write_text(
        f"stage1 job: parallel 2 mps 1 selection {','.join(pair)} params params+stage1_by_iteration.yaml\n"
        + "".join(f"  pipeline.train stage1 {r.split('/')[1]} --no-progress               exit 0    60.0s\n" for r in pair)
        + f"train:{','.join(pair)}: 2 command(s) in {wall_s}s\n")
    return ws


@pytest.mark.parametrize("wall_s, ppl_scale, chosen", [(100.0, 1.01, "params+stage1_by_iteration.yaml"),
                                                       (140.0, 1.0, "params.yaml"),     # slower
                                                       (132.6, 1.0, "params.yaml"),     # no faster
                                                       (100.0, 1.05, "params.yaml")])  # beyond the spread
def test_a_lever_is_kept_when_its_batch_is_faster_and_its_ppl_within_the_spread(tmp_path, capsys, wall_s, ppl_scale,
                                                                                chosen):
    """bench/gpu/stage1_lever.py against the committed d512 pair (132.6 s, spread 2.2% from the committed
    repeats): the chosen params file is the last line printed and is recorded in the workspace."""
    from bench.gpu import stage1_lever
    ws = _lever_workspace(tmp_path, wall_s, ppl_scale)
    assert stage1_lever.main([str(ws), str(CAMPAIGN), "params+stage1_by_iteration.yaml"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == chosen
    record = json.loads((ws / "logs" / "lever.json").read_text())
    assert record["wall_s_before"] == 132.6 and record["chosen"] == chosen
    assert (record["params_before"], record["params_after"]) == ("params.yaml", "params+stage1_by_iteration.yaml")
    committed = {r: json.loads((CAMPAIGN / "runs" / r / "summary.json").read_text())["final_eval"]["wikipedia"]["ppl"]
                 for r in record["runs"]}
    assert {r: (v["ppl_before"], v["ppl_after"]) for r, v in record["runs"].items()} == \
        {r: (ppl, ppl * ppl_scale) for r, ppl in committed.items()}
    assert record["spread_pct"] == pytest.approx(max(s["spread_pct"] for s in stage1_findings.Campaign(CAMPAIGN).spread().values()))
    assert {k: round(v["gap_pct"], 6) for k, v in record["runs"].items()} == \
        {r: round(100 * (ppl_scale - 1), 6) for r in ("stage1/d512-P2-R2", "stage1/d512-P6-R8")}
    with pytest.raises(SystemExit, match="ran with params\\+stage1_by_iteration.yaml, not params.yaml"):
        stage1_lever.main([str(ws), str(CAMPAIGN), "params.yaml"])


def test_a_lever_whose_trial_run_did_not_complete_is_not_kept(tmp_path, capsys):
    from bench.gpu import stage1_lever
    ws = _lever_workspace(tmp_path, 100.0, 1.0)
    path = ws / "runs" / "stage1" / "d512-P6-R8" / "summary.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"status": "failed"}))
    assert stage1_lever.main([str(ws), str(CAMPAIGN), "params+stage1_by_iteration.yaml"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "params.yaml"
    record = json.loads((ws / "logs" / "lever.json").read_text())
    assert record["runs"]["stage1/d512-P6-R8"]["gap_pct"] is None and record["within_spread"] is False


def test_a_lever_is_judged_only_against_a_finished_batch_on_the_same_gpu(tmp_path):
    """Wall times of two GPU models, or of a batch cut short, say nothing about a lever."""
    from bench.gpu import stage1_lever
    ws = _lever_workspace(tmp_path, 100.0, 1.0)
    log = ws / "logs" / "job.log"
    text = log.read_text()
    log.write_text(text.replace("params+stage1_by_iteration.yaml\n", "params+stage1_by_iteration.yaml device NVIDIA H100 80GB HBM3\n", 1))
    with pytest.raises(SystemExit, match="on NVIDIA H100 80GB HBM3 to compare with"):
        stage1_lever.compare(ws, CAMPAIGN)
    log.write_text(text.replace("params+stage1_by_iteration.yaml\n", "params+stage1_by_iteration.yaml device NVIDIA H200\n", 1))
    assert stage1_lever.compare(ws, CAMPAIGN)["wall_s_before"] == 132.6
    log.write_text(text.splitlines(keepends=True)[0]
                   + "started: pipeline.train stage1 d512-P2-R2 --no-progress (job 1)\n"
                   + "done: pipeline.train stage1 d512-P2-R2 --no-progress (exit 0, 60.0s)\n")
    with pytest.raises(SystemExit, match="its last batch did not finish"):
        stage1_lever.compare(ws, CAMPAIGN)


@pytest.mark.parametrize("r2_scale, verdict", [((1.10, 1.20), "yes"), ((1.20, 1.10), "no"), ((1.10, 1.01), None)])
def test_the_r_benefit_grows_with_width_only_when_every_widths_change_exceeds_the_spread(tmp_path, r2_scale, verdict):
    """R2 -> R8 at P = 6 per width, each judged against the run-to-run spread; whether it grows with
    width (the paper's Table 6 trend) is said only when every measured width's change exceeds it."""
    root = _campaign_copy(tmp_path)
    con = sqlite3.connect(root / "results.db")
    with con:
        def ppl(group: str, name: str) -> float:
            return con.execute("SELECT ppl_wikipedia FROM runs WHERE \"group\" = ? AND name = ?", (group, name)).fetchone()[0]
        for d, scale in zip((256, 512), r2_scale):  # R2 worse than R8 by a chosen factor
            factor = ppl("stage1", f"d{d}-P6-R8") * scale / ppl("stage1", f"d{d}-P6-R2")
            # at d256 R2's repeats move with it, so the spread stays as committed
            con.execute("UPDATE runs SET ppl_wikipedia = ppl_wikipedia * ? WHERE (\"group\" = 'stage1' AND name = ?)"
                        " OR (? = 256 AND \"group\" = 'stage1_variants' AND name LIKE 'code-R2-%')",
                        (factor, f"d{d}-P6-R2", d))
        con.execute("DELETE FROM runs WHERE \"group\" = 'stage1' AND d_model > 512")
    con.close()
    text = stage1_findings.render(root)
    gains = [100 * (1 / s - 1) for s in r2_scale]
    tags = ["within" if abs(g) <= 2.25 else "beyond" for g in gains]
    assert (f"- Ours: d256 {gains[0]:+.2f}% ({tags[0]} the spread), d512 {gains[1]:+.2f}% ({tags[1]} the spread)."
            in text)
    if verdict:
        assert f"- Our benefit grows with width, as in the paper: **{verdict}**." in text
    else:
        assert "Whether our benefit grows with width is not a finding yet" in text and "grows with width, as" not in text


def test_the_setup_line_names_each_precision_and_cuda_graphs_setting_the_runs_trained_with(tmp_path):
    """run_settings: bf16 under CUDA graphs for every committed run; a run on the CPU is fp32 without graphs
    (`dtype: auto`), one compiled without reduce-overhead or not at all has no graphs, a dtype set is named."""
    assert stage1_findings.run_settings(stage1_findings.Campaign(CAMPAIGN)) == "bf16, CUDA graphs"
    root = _campaign_copy(tmp_path)
    _edit_store(root, "UPDATE runs SET device = 'cpu' WHERE run_id = 'stage1/d256-P2-R2'")
    for name, train in (("d256-P2-R4", {"compile": "off"}), ("d256-P2-R6", {"compile_mode": "default"}),
                        ("d256-P2-R8", {"dtype": "float32"})):
        path = root / "runs" / "stage1" / name / "config.json"
        config = json.loads(path.read_text())
        config["train"] |= train
        path.write_text(json.dumps(config))
    labels = stage1_findings.run_settings(stage1_findings.Campaign(root)).split("; ")
    assert sorted(labels) == ["bf16", "bf16, CUDA graphs", "fp32", "fp32, CUDA graphs"]


def test_a_config_trained_again_is_listed_with_its_earlier_training_and_what_changed(tmp_path):
    """An earlier training kept under runs/<group>/<name>/earlier/ (bench/gpu/import_runs.py) appears
    beside the latest: both final Wikipedia PPLs, the change, the config fields that differ."""
    root = _campaign_copy(tmp_path)
    for folder in root.glob("runs/*/*/earlier"):
        shutil.rmtree(folder)
    run = root / "runs" / "stage1" / "d256-P2-R2"
    summary, config = (json.loads((run / f).read_text()) for f in ("summary.json", "config.json"))
    latest = summary["final_eval"]["wikipedia"]["ppl"]
    summary["final_eval"]["wikipedia"]["ppl"] = latest * 1.1
    config["train"]["lr"] = 1e-3
    (run / "earlier" / "1").mkdir(parents=True)
    for name, data in (("summary.json", summary), ("config.json", config)):
        (run / "earlier" / "1" / name).write_text(json.dumps(data))
    text = stage1_findings.render(root)
    row = f"| stage1/d256-P2-R2 | {latest * 1.1:.1f} | {latest:.1f} | {100 * (1 / 1.1 - 1):+.2f}% | train.lr | {summary['device']} |"
    assert row in text and text.count("| stage1/d") == 1
    assert "Trained again with the same config" not in text  # its lr differed
    # the same config again on the same GPU counts as a repeat; on another GPU it is listed, not counted
    for name, gpu, scale in (("d256-P2-R4", None, 1.01), ("d256-P2-R6", "NVIDIA B200", 1.5)):
        run = root / "runs" / "stage1" / name
        summary, config = (json.loads((run / f).read_text()) for f in ("summary.json", "config.json"))
        device = summary["device"]
        summary["final_eval"]["wikipedia"]["ppl"] *= scale
        summary["device"] = gpu or device
        (run / "earlier" / "1").mkdir(parents=True)
        for f, data in (("summary.json", summary), ("config.json", config)):
            (run / "earlier" / "1" / f).write_text(json.dumps(data))
    text = stage1_findings.render(root)
    assert f"| none | NVIDIA B200 -> {device} |" in text
    assert ("Trained again with the same config on the same GPU model: 1 config, its change at most 0.99% "
            "(median 0.99%), inside the run-to-run spread (2.2%).") in text


def test_a_width_trained_on_two_gpu_models_says_so(tmp_path):
    """Findings name a width whose configs trained on more than one GPU model, with the count on each."""
    root = _campaign_copy(tmp_path)
    _edit_store(root, "UPDATE runs SET device = 'NVIDIA H100 80GB HBM3' WHERE \"group\" = 'stage1' AND name LIKE 'd512-P3-%'")
    text = stage1_findings.render(root)
    assert ("- d = 512 trained on 2 GPU models (NVIDIA H100 80GB HBM3: 4 configs, NVIDIA H200: 12 configs): "
            "its comparisons include") in text
    assert "- d = 256 trained on" not in text and "NVIDIA H100 80GB HBM3, NVIDIA H200 (" in text


def test_a_whole_width_is_read_as_p_and_r_effects_with_a_standard_error():
    """grid_effects on a grid that is exactly P's factor times R's: the factors come back and the rest
    is nil; one cell moved by a factor f leaves a scatter of f^(1/4) (9 degrees of freedom) and a
    standard error sqrt(1/2) of it; a grid with a config missing is not read."""
    import pandas as pd
    p_factor = {2: 1.06, 3: 1.04, 4: 1.02, 6: 1.0}
    r_factor = {2: 1.0, 4: 0.99, 6: 1.005, 8: 1.03}
    rows = [{"n_prelude": P, "n_loops": R, "ppl_wikipedia": 100.0 * p_factor[P] * r_factor[R]}
            for P in p_factor for R in r_factor]
    exact = stage1_findings.grid_effects(pd.DataFrame(rows))
    assert exact["R"] == pytest.approx({R: 100 * (f - 1) for R, f in r_factor.items()}, abs=1e-9)
    assert exact["P"] == pytest.approx({P: 100 * (f - 1) for P, f in p_factor.items()}, abs=1e-9)
    assert exact["scatter_pct"] == pytest.approx(0, abs=1e-9) and exact["se_pct"] == pytest.approx(0, abs=1e-9)
    rows[0]["ppl_wikipedia"] *= 1.04
    moved = stage1_findings.grid_effects(pd.DataFrame(rows))
    sd = math.log(1.04) / 4
    assert moved["scatter_pct"] == pytest.approx(100 * math.expm1(sd), rel=1e-9)
    assert moved["se_pct"] == pytest.approx(100 * math.expm1(sd * math.sqrt(0.5)), rel=1e-9)
    assert stage1_findings.grid_effects(pd.DataFrame(rows[1:])) is None


def test_the_whole_width_section_names_the_widths_where_more_loops_moved_ppl(tmp_path):
    """The committed d512 (R = 8 +1.17% over R = 2, 2.3 standard errors) and d768 (-1.62%, -2.2) are named;
    with d512's R = 8 column brought back to R = 2's level only d768 is, and with d768's too no width is;
    with d256's R = 8 column 5% lower, d256 is, as lowered."""
    root = _campaign_copy(tmp_path)
    _edit_store(root, "DELETE FROM runs WHERE run_id = 'stage1/d1024-P2-R2'")  # d1024 partial, however many ran
    verdict = "- Eight loops instead of two moved PPL by more than two standard errors at: "
    text = stage1_findings.render(root)
    assert verdict + "d512 (raised it), d768 (lowered it)." in text
    assert "| 1024 |" not in text.split("## R and P over")[1].split("##")[0]  # a partial width is not read

    def r8_level_with_r2(d: int) -> float:  # the factor that brings width d's R = 8 mean to R = 2's
        return 1 / (1 + stage1_findings.grid_effects(stage1_findings.Campaign(root).width(d))["R"][8] / 100)

    def scale_r8(d: int, factor: float) -> str:
        _edit_store(root, "UPDATE runs SET ppl_wikipedia = ppl_wikipedia * ? WHERE \"group\" = 'stage1' AND d_model = ?"
                    " AND n_loops = 8", (factor, d))
        return stage1_findings.render(root)
    # the trend from the narrowest whole width to the widest (d256 +0.97% to d768 -1.62%: -2.6 standard errors)
    trend = "R2 -> R8 averaged over P goes from {} at d256 to {} at d768, {} standard errors of that difference: {}."
    assert trend.format("+0.97%", "-1.62%", "-2.6", "**yes**") in text
    assert verdict + "d768 (lowered it)." in scale_r8(512, r8_level_with_r2(512))
    flat = scale_r8(768, r8_level_with_r2(768))
    assert verdict + "no width." in flat
    assert trend.format("+0.97%", "+0.00%", "-1.0", "not a finding (within two standard errors)") in flat
    lowered = scale_r8(256, 0.95)
    assert verdict + "d256 (lowered it)." in lowered
    assert trend.format("-4.07%", "+0.00%", "+4.1", "**no**, it shrinks") in lowered
    ahead = "- Averaged over R, P = 6 is ahead of every other P by more than two standard errors at: "
    assert ahead + "d256, d512, d768." in text
    # d512's P4 row brought level with P6's mean
    _edit_store(root, "UPDATE runs SET ppl_wikipedia = ppl_wikipedia / 1.0329 WHERE \"group\" = 'stage1' AND d_model = 512"
                " AND n_prelude = 4")
    assert ahead + "d256, d768." in stage1_findings.render(root)


def test_a_change_that_rounds_to_zero_is_printed_without_a_sign_flip():
    """-1e-12 % (a float's last bit, which differs between CPUs' summation orders) prints as +0.00%."""
    from bench.gpu.findings import common
    assert stage1_findings._signed(-1e-12) == stage1_findings._signed(1e-12) == "+0.00%"
    assert common._signed(-1e-12) == "+0.0%" and stage1_findings._signed(-0.006) == "-0.01%"


def test_the_power_laws_fit_each_widths_best_and_p6_r8_against_d_and_effective_parameters():
    """The power-law table: ours over each width's best config (lowest Wikipedia PPL) and over P6 R8, against d
    and against the effective parameter count from the store (not the stored count); the paper's over its
    best configs (Table 5) and its cross-scale table's P6 R8 (Table 11), N as its Table 4 prints it."""
    from cart.results import power_law_fit
    from cart.report.paper import PAPER
    c = stage1_findings.Campaign(CAMPAIGN)
    best = [stage1_findings.best_of(c.width(d)) for d in stage1_findings.WIDTHS]
    r8 = c.done[(c.done["n_prelude"] == 6) & (c.done["n_loops"] == 8)].sort_values("d_model")
    text = (CAMPAIGN / "FINDINGS.md").read_text()

    def row(label: str) -> list[str]:
        line = next(x for x in text.splitlines() if x.startswith(f"| {label} |"))
        return [cell.strip().split(" (")[0] for cell in line.strip("|").split("|")[1:]]

    def a(x, y) -> str:
        return f"{power_law_fit(x, y)['exponent']:.3f}"
    ppl = [b["ppl_wikipedia"] for b in best]
    assert row("best, against N") == [a([b["effective_params"] for b in best], ppl),
                                      a([PAPER["throughput"][(d, p[0], p[1])][0] for d, p in PAPER["stage1_best"].items()],
                                        [p[2] for p in PAPER["stage1_best"].values()])]
    assert a([b["stored_params"] for b in best], ppl) != row("best, against N")[0]  # the two counts differ
    assert row("P6 R8, against d") == [a(r8["d_model"], r8["ppl_wikipedia"]),
                                       a(list(PAPER["cross_scale"]), [v[0] for v in PAPER["cross_scale"].values()])]
    assert row("P6 R8, against d")[1] == "0.458"  # as the report's cross-scale figure fits it
