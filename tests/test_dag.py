"""The DVC DAG end to end on a tiny profile, in a temporary git repo: a full `dvc repro`, a param
edit that re-runs only what depends on it, and `dvc metrics diff` across branches."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, tiny_params, write_params

pytestmark = pytest.mark.slow


def sh(cwd: Path, *cmd: str) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dag")
    for item in ("cart", "pipeline", "configs", "dvc.yaml", ".dvcignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d / item)
    p = tiny_params()
    p["ablation"]["variants"] = {"X": {"unfreeze_kv": True}, "Y": {"n_loops": 1}}
    p["benchmarks"]["limit"] = 4
    p["variable_r"].update(n_loops=[1, 2, 3], ppl={"seq_len": 32, "n_seqs": 2, "batch_size": 2})
    write_params(d, p)
    sh(d, "git", "init", "-q", "-b", "main")
    sh(d, "git", "config", "user.email", "t@example.com")
    sh(d, "git", "config", "user.name", "test")
    sh(d, "dvc", "init", "-q")
    sh(d, "dvc", "config", "core.analytics", "false")
    sh(d, "dvc", "repro", "-q")
    sh(d, "git", "add", "-A")
    sh(d, "git", "commit", "-qm", "baseline")
    return d


def test_full_dag_produces_metrics_store_and_report(repo):
    assert "up to date" in sh(repo, "dvc", "status").lower() or sh(repo, "dvc", "status").strip() == ""
    stage2 = json.loads((repo / "metrics/stage2.json").read_text())
    assert stage2["best_run_id"].startswith("stage2/")
    assert (repo / "results/results.db").stat().st_size > 0
    report = (repo / "reports/REPORT.md").read_text()
    assert "Table" in report or "table" in report
    assert (repo / "reports/figures/variable_r.png").stat().st_size > 0 and (repo / "eval/ratplus.tsv").is_file()
    assert (repo / "reports/figures/sampled_r.png").stat().st_size > 0  # issue 20's study, end to end
    assert json.loads((repo / "metrics/sampled_r.json").read_text())["runs"]["n_complete"] == 3
    # a second repro does nothing
    assert "didn't change" in sh(repo, "dvc", "repro").lower() or "up to date" in sh(repo, "dvc", "status").lower()


def _changed_stages(repo: Path) -> set[str]:
    status = json.loads(sh(repo, "dvc", "status", "--json"))
    return {name.split("@")[0] if "@" in name else name for name in status}


def test_param_edit_invalidates_only_dependents(repo):
    original = (repo / "params.yaml").read_text()
    try:
        p = yaml.safe_load(original)
        p["stage2"]["run"]["steps"] = 10
        write_params(repo, p)
        changed = _changed_stages(repo)
        assert {"stage2", "dense", "ablation"} <= changed
        assert not changed & {"corpus", "tokenizer", "bins", "stage1"}
        p = yaml.safe_load(original)
        p["model"]["cart"]["lti_init"] = 0.8  # a CART-only field: no Dense baseline re-runs
        write_params(repo, p)
        changed = _changed_stages(repo)
        assert {"stage1", "stage2", "ablation"} <= changed and "dense" not in changed
        p = yaml.safe_load(original)
        p["tokenizer"]["vocab_size"] = 600
        write_params(repo, p)
        changed = _changed_stages(repo)
        assert "tokenizer" in changed and "corpus" not in changed
    finally:
        (repo / "params.yaml").write_text(original)


def test_metrics_diff_across_branches(repo):
    # A Stage 1 seed on a branch: Stage 1 retrains, nothing else trains, and `dvc metrics diff`
    # shows exactly the Stage 1 files (and the summaries built from them) as changed.
    sh(repo, "git", "checkout", "-q", "-b", "stage1-seed")
    bins_mtime = (repo / "data/bins/train.bin").stat().st_mtime_ns
    stage2_mtime = (repo / "runs/stage2/d32-R2-s42/model.safetensors").stat().st_mtime_ns
    try:
        p = yaml.safe_load((repo / "params.yaml").read_text())
        p["stage1"]["seed"] += 1
        write_params(repo, p)
        sh(repo, "dvc", "repro", "-q")
        sh(repo, "git", "add", "-A")
        sh(repo, "git", "commit", "-qm", "stage1 seed")
        diff = json.loads(sh(repo, "dvc", "metrics", "diff", "main", "--json"))
        changed = {path for path, metrics in diff.items() for m in metrics.values()
                   if m.get("diff") not in (None, 0)}
        assert "metrics/stage1/d32-P1-R2.json" in changed
        assert not any(p.startswith(("metrics/stage2", "metrics/dense", "metrics/ablation")) for p in changed)
        assert (repo / "data/bins/train.bin").stat().st_mtime_ns == bins_mtime  # data stages not re-run
        assert (repo / "runs/stage2/d32-R2-s42/model.safetensors").stat().st_mtime_ns == stage2_mtime
    finally:
        sh(repo, "git", "checkout", "-q", "main")
