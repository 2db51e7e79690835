"""The data stages under DVC, in a temporary copy of the repository (cart/, pipeline/, params.yaml
and dvc.yaml's corpus/tokenizer/bins entries): `dvc repro bins` builds
corpus -> tokenizer -> bins with the default params, and a tokenizer param change marks the
tokenizer and bins stages as changed but not the corpus."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd, env):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_dvc_repro_data_stages_and_param_change_invalidates_only_downstream(tmp_path):
    if shutil.which("dvc") is None or shutil.which("git") is None:
        pytest.skip("dvc or git is not on PATH")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    # the data stages' entries exactly as in dvc.yaml (the rest of the DAG needs files not copied here)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    data_stages = {k: stages[k] for k in ("corpus", "tokenizer", "bins")}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": data_stages}, sort_keys=False))
    for d in ("cart", "pipeline"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env.pop("PYTHONPATH", None)
    _run(["git", "init", "-q"], repo, env)
    _run(["dvc", "init", "-q"], repo, env)
    out = _run(["dvc", "repro", "bins"], repo, env)
    assert "corpus: " in out and "tokenizer: " in out and "bins: " in out   # each stage's summary line

    meta = json.loads((repo / "data" / "bins" / "meta.json").read_text())
    info = json.loads((repo / "data" / "tokenizer" / "tokenizer.json").read_text())
    assert meta["tokenizer_sha256"] == info["sha256"] and info["vocab_size"] == 2048
    assert meta["files"]["train.bin"]["tokens"] >= 300_000          # the default training reads ~61k/run
    assert all(meta["files"][f"val_{d}.bin"]["tokens"] >= 50 * 1025 for d in meta["domains"])
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"corpus", "tokenizer", "bins"} <= set(lock["stages"])

    status = json.loads(_run(["dvc", "status", "--json", "corpus", "tokenizer", "bins"], repo, env) or "{}")
    assert status == {}, f"freshly reproduced stages should be up to date: {status}"

    params = (repo / "params.yaml").read_text()
    assert params.count("  vocab_size: 2048") == 1
    (repo / "params.yaml").write_text(params.replace("  vocab_size: 2048", "  vocab_size: 1024"))
    status = json.loads(_run(["dvc", "status", "--json", "corpus", "tokenizer", "bins"], repo, env) or "{}")
    assert "tokenizer" in status and "corpus" not in status, status
    assert any("params.yaml" in str(entry) for entry in status["tokenizer"])
    # bins reads the tokenizer's output: it is stale once the tokenizer re-runs
    _run(["dvc", "repro", "tokenizer"], repo, env)
    status = json.loads(_run(["dvc", "status", "--json", "corpus", "tokenizer", "bins"], repo, env) or "{}")
    assert set(status) == {"bins"}, status
