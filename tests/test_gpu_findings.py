"""gpu/FINDINGS.md (bench/gpu/findings/): the committed file is what the committed store renders to, so
none of its numbers can go stale; its claims follow the numbers, and a difference within the run-to-run
spread (seeds, and runs trained twice: runs/*/*/earlier/) is not called a finding."""
import copy
import json
import sqlite3
from pathlib import Path

import pytest

from bench.gpu import findings as gpu_findings
from bench.gpu.findings import common, training

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "gpu"
RANK = common.RANK


@pytest.fixture(scope="module")
def profile():
    return gpu_findings.Profile(GPU)


@pytest.fixture(scope="module")
def seeds_only():
    """The profile with the spread of seeds alone (no run trained twice)."""
    return gpu_findings.Profile(GPU, earlier={})


def _with_runs(profile, change):
    """A copy of the profile whose runs table `change` edited, its spreads measured again."""
    p = copy.copy(profile)
    p.runs = profile.runs.copy()
    change(p.runs)
    p.spreads = p.measure_spreads()
    return p


def test_committed_findings_are_what_the_store_renders():
    assert (GPU / "FINDINGS.md").read_text() == gpu_findings.render(GPU), "re-run: python -m bench.gpu.findings gpu"


def test_check_compares_and_writes_nothing(monkeypatch, capsys):
    before = (GPU / "FINDINGS.md").read_text()
    assert gpu_findings.main([str(GPU), "--check"]) == 0
    monkeypatch.setattr(gpu_findings, "render", lambda root: before + "a stale line\n")
    assert gpu_findings.main([str(GPU), "--check"]) == 1
    assert "differs from the store" in capsys.readouterr().out
    assert (GPU / "FINDINGS.md").read_text() == before


def test_the_width_claim_is_counted_from_the_runs(profile):
    con = sqlite3.connect(GPU / "results.db")
    rows = con.execute("SELECT d_model, ppl_wikipedia FROM runs WHERE \"group\" = 'stage2' AND status = 'complete'")
    ppl = {256: [], 512: []}
    for d, v in rows:
        ppl[d].append(v)
    con.close()
    worse = sum(v > max(ppl[256]) for v in ppl[512])
    assert worse < len(ppl[512])  # the store: not every d=512 run is worse than d=256
    claim = training.row_d512(profile)[1]
    assert f"{worse} of {len(ppl[512])} d=512 runs worse than every d=256 run" in claim
    assert "every d=512 run worse" not in claim

    def d512_all_worse(runs):
        runs.loc[(runs["group"] == "stage2") & (runs["d_model"] == 512), RANK] += 1_000.0
    assert "every d=512 run worse than every d=256 run" in training.row_d512(_with_runs(profile, d512_all_worse))[1]


def test_the_spread_includes_runs_trained_twice(profile, seeds_only):
    retrained = {s.config: s for s in profile.spreads if s.kind == "again"}
    assert set(retrained) == set(profile.earlier) and retrained  # job 5's re-trainings, from runs/*/*/earlier/
    for run_id, earlier in profile.earlier.items():
        now = json.loads((GPU / "runs" / run_id / "summary.json").read_text())
        values = list(retrained[run_id].values.values())
        assert values == [e["summary"]["final_eval"]["wikipedia"]["ppl"] for e in earlier] + [
            now["final_eval"]["wikipedia"]["ppl"]]
    assert profile.noise(256) == max(s.pct for s in profile.spreads if s.d == 256)
    assert seeds_only.noise(256) < profile.noise(256)  # here a re-training moved PPL more than a seed did


def _gap(a, b):
    return 100 * (max(a, b) / min(a, b) - 1)


def test_a_difference_within_the_spread_is_not_a_finding(profile, seeds_only):
    base, d, _ = training._base(profile)
    rows = profile.ablation.set_index("run_id").loc[[f"ablation/{n}" for n in common.ABLATIONS]]
    gaps = {r["variant"]: _gap(r[RANK], base) for _, r in rows.sort_values("delta_ppl_wikipedia_pct",
                                                                          ascending=False).iterrows()}
    within = [name for name, gap in gaps.items() if gap <= profile.noise(d)]
    beyond = [name for name, gap in gaps.items() if gap > profile.noise(d)]
    assert within and beyond  # the store has both kinds
    verdict = training.row_ablations(profile)[3]
    assert f": {common._join(beyond)}; within it, not established: {common._join(within)} " in verdict

    # Stage 1: the best R at each P against its runner-up, under the spread with and without the re-trainings
    con = sqlite3.connect(GPU / "results.db")
    rows = con.execute("SELECT n_prelude, n_loops, ppl_wikipedia FROM runs WHERE \"group\" = 'stage1' "
                       "ORDER BY n_prelude, ppl_wikipedia").fetchall()
    con.close()
    pairs = {}
    for P, R, ppl in rows:
        pairs.setdefault(P, []).append((R, ppl))
    named = {}
    for p in (profile, seeds_only):
        verdict = training.row_stage1(p)[3]
        named[id(p)] = set()
        for P, ((r1, a), (r2, b), *_) in pairs.items():
            said = f"P{P} R{r1} vs R{r2} " in verdict
            assert said == (_gap(a, b) <= p.noise(256)), (P, p.noise(256))
            if said:
                named[id(p)].add(P)
    assert named[id(profile)] != named[id(seeds_only)]  # the re-trainings' spread changes a verdict


def _summary(ppl, **extra):
    return {"final_eval": {"wikipedia": {"ppl": ppl}}, "git_commit": "abc", **extra}


def _write(folder: Path, summary: dict, config: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))


def test_an_import_keeps_a_run_trained_again_as_an_earlier_training(tmp_path):
    """bench/gpu/import_runs.py files the runs; a run whose final evaluation changed was trained again, and
    its first training stays under earlier/, where the findings read it; a re-import of the same
    training (another field changed) adds no training."""
    from bench.gpu.import_runs import file_runs
    dest, ws = tmp_path / "gpu" / "runs", tmp_path / "ws"
    first_config = {"model": {"d_model": 256}, "code_sha256": "one"}
    _write(ws / "stage2" / "d256-R2-s42", _summary(190.0), first_config)
    _write(ws / "dense" / "L7-s42", _summary(200.0), {"model": {}})
    file_runs(ws, dest)
    assert common.earlier_trainings(tmp_path / "gpu") == {}
    _write(ws / "stage2" / "d256-R2-s42", _summary(195.0), {"model": {"d_model": 256, "new": 1}, "code_sha256": "two"})
    file_runs(ws, dest)
    _write(ws / "stage2" / "d256-R2-s42", _summary(195.0, peak_mem_gib=7.5))  # the same training re-imported
    file_runs(ws, dest)
    earlier = common.earlier_trainings(tmp_path / "gpu")
    assert list(earlier) == ["stage2/d256-R2-s42"]
    (first,) = earlier["stage2/d256-R2-s42"]
    assert first["summary"]["final_eval"]["wikipedia"]["ppl"] == 190.0 and first["config"] == first_config
    now = json.loads((dest / "stage2" / "d256-R2-s42" / "summary.json").read_text())
    assert now["final_eval"]["wikipedia"]["ppl"] == 195.0 and now["peak_mem_gib"] == 7.5
    assert gpu_findings.config_changes(first["config"], json.loads(
        (dest / "stage2" / "d256-R2-s42" / "config.json").read_text())) == ([], ["model.new"])
    _write(ws / "stage2" / "d256-R2-s42", _summary(193.0))  # a third training: the second joins the first
    file_runs(ws, dest)
    assert sorted(p.name for p in (dest / "stage2" / "d256-R2-s42" / "earlier").iterdir()) == ["1", "2"]
    assert [t["summary"]["final_eval"]["wikipedia"]["ppl"] for t in common.earlier_trainings(tmp_path / "gpu")
            ["stage2/d256-R2-s42"]] == [190.0, 195.0]


def test_import_records_come_from_calls_json_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "calls.json").write_text(json.dumps({"job1.log": {"date": "1 December 2026", "device_minutes": 12.5}}))
    assert gpu_findings.import_record(tmp_path, "job1.log") == {"date": "1 December 2026", "device_minutes": 12.5}
    with pytest.raises(ValueError, match=r"calls.json: no record of the call that wrote logs/job9.log"):
        gpu_findings.import_record(tmp_path, "job9.log")
    _write(tmp_path / "runs" / "g" / "n" / "earlier" / "1", _summary(1.0))
    (tmp_path / "runs" / "g" / "n" / "earlier" / "1" / "summary.json").unlink()
    with pytest.raises(ValueError, match="an earlier training without its summary.json"):
        common.earlier_trainings(tmp_path)


def test_an_import_of_new_runs_keeps_the_committed_ones(tmp_path):
    """An archive that brings one new run adds it: the committed runs (config, summary, curves, logs,
    the bins' meta) go into the workspace first, so filing it keeps them and the store is rebuilt
    from all of them, even though the archives they came in are gone."""
    from bench.gpu.import_runs import file_runs, seed_from_committed
    dest, ws = tmp_path / "gpu", tmp_path / "ws"
    _write(dest / "runs" / "dense" / "L7-s42", _summary(200.0), {"model": {}})
    (dest / "plots" / "dense" / "L7-s42").mkdir(parents=True)
    (dest / "plots" / "dense" / "L7-s42" / "metrics.json").write_text("{}")
    (dest / "bins_meta.json").write_text('{"files": {}}')
    seed_from_committed(dest, ws)
    _write(ws / "runs" / "stage2" / "d256-R2-s42", _summary(190.0), {"model": {"d_model": 256}})  # the archive's
    file_runs(ws / "runs", dest / "runs")
    assert sorted(p.relative_to(dest / "runs").as_posix() for p in (dest / "runs").glob("*/*")) == \
        ["dense/L7-s42", "stage2/d256-R2-s42"]
    assert (ws / "plots" / "dense" / "L7-s42" / "metrics.json").is_file()
    assert (ws / "data" / "bins" / "meta.json").read_text() == '{"files": {}}'
    assert common.earlier_trainings(dest) == {}  # the committed training filed again is no second training


def test_an_import_adds_each_sessions_batches_to_the_committed_job_log(tmp_path):
    """Each GPU session starts a job log of its own and every collect brings back that log so far: the
    imported log is the committed batches, then each session's log once, its latest collect winning;
    re-importing an archive adds nothing."""
    import tarfile
    from bench.gpu.import_runs import seed_from_committed, unpack_archives
    dest, ws = tmp_path / "gpu", tmp_path / "ws"
    (dest / "logs").mkdir(parents=True)
    committed = "train:stage1/d256-*: 16 command(s) in 450.2s\n"
    (dest / "logs" / "job.log").write_text(committed)

    def archive(name: str, log: str) -> Path:
        src = tmp_path / name
        (src / "logs").mkdir(parents=True)
        (src / "logs" / "job.log").write_text(log)
        with tarfile.open(tmp_path / f"{name}.tgz", "w:gz") as t:
            t.add(src / "logs", arcname="logs")
        return tmp_path / f"{name}.tgz"
    first = "train:stage1/d512-P2-R2: 1 command(s) in 80.0s\n"
    second = first + "train:stage1/d512-P3-*: 4 command(s) in 200.0s\n"
    archives = [archive("collect1", first), archive("collect2", second), archive("again", first)]
    seed_from_committed(dest, ws)
    unpack_archives(archives, ws)
    assert (ws / "logs" / "job.log").read_text() == committed + second


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_import_that_fails_while_filing_leaves_the_destination_as_it_was(tmp_path, monkeypatch):
    """file_workspace writes into a copy of the destination and swaps it in at the end: a failure
    half-way (here while filing the runs, after the report and store were written) changes nothing
    there and leaves no copy behind; a whole filing replaces what it rebuilt and keeps the rest, also
    where an earlier import stopped between the swap's two renames (its old destination is restored)."""
    from bench.gpu import import_runs
    dest, ws = tmp_path / "gpu" / "stage1", tmp_path / "ws"
    _write(dest / "runs" / "dense" / "L7-s42", _summary(200.0), {"model": {}})
    (dest / "report").mkdir()
    (dest / "report" / "REPORT.md").write_text("the committed report\n")
    (dest / "FINDINGS.md").write_text("written by hand-run findings, not by the import\n")
    (ws / "runs").mkdir(parents=True)
    (ws / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    out_dir = ws / import_runs.load_params(ws / "params.yaml")["report"]["out_dir"]
    out_dir.mkdir(parents=True)
    (out_dir / "REPORT.md").write_text("the rebuilt report\n")
    _write(ws / "runs" / "dense" / "L7-s42", _summary(200.0), {"model": {}})
    _write(ws / "runs" / "stage2" / "d256-R2-s42", _summary(190.0), {"model": {"d_model": 256}})
    before = _tree(dest)

    def fail(src, target):
        raise OSError("disk full")
    monkeypatch.setattr(import_runs, "file_runs", fail)
    with pytest.raises(OSError, match="disk full"):
        import_runs.file_workspace(ws, dest)
    assert _tree(dest) == before and sorted(p.name for p in dest.parent.iterdir()) == ["stage1"]
    monkeypatch.undo()
    dest.rename(dest.with_name("stage1.replaced"))  # an import stopped between its two renames
    import_runs.file_workspace(ws, dest)
    after = _tree(dest)
    assert after["report/REPORT.md"] == b"the rebuilt report\n" and after["FINDINGS.md"] == before["FINDINGS.md"]
    assert "runs/stage2/d256-R2-s42/summary.json" in after and sorted(p.name for p in dest.parent.iterdir()) == ["stage1"]


@pytest.mark.slow
def test_importing_nothing_rebuilds_the_committed_campaign_as_committed(tmp_path):
    """`python -m bench.gpu.import_runs` with an empty archive over a copy of gpu/stage1: the store, the
    report, the metrics, the curves and every run's files are rebuilt from what the folder holds, and
    come out as committed (so each GPU session's import adds its runs and changes nothing else)."""
    import shutil
    import subprocess
    import sys
    import tarfile
    dest = tmp_path / "stage1"
    shutil.copytree(GPU / "stage1", dest)
    with tarfile.open(tmp_path / "empty.tgz", "w:gz"):
        pass
    subprocess.run([sys.executable, "-m", "bench.gpu.import_runs", "--profiles", "paper", "paper_offline",
                    "--dest", str(dest), str(tmp_path / "empty.tgz")], cwd=ROOT, check=True, capture_output=True)

    def content(root: Path) -> dict:
        """Every file's bytes, but the store's rows (its file header names the SQLite library that wrote
        it) and only the figures' names (PNG bytes and metadata follow the matplotlib release)."""
        out = {k: (b"" if k.endswith(".png") else v) for k, v in _tree(root).items() if not k.endswith(".db")}
        con = sqlite3.connect(root / "results.db")
        tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out["results.db"] = {t: sorted(map(repr, con.execute(f'SELECT * FROM "{t}"'))) for t in tables}
        con.close()
        return out
    assert content(dest) == content(GPU / "stage1")
