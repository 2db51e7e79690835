"""Atomic writes under SIGKILL, damaged checkpoints, disk-space refusal."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from cart import CARTConfig, build_model
from cart.training.checkpoint import load_weights, save_weights
from cart.io import atomic_write_bytes, require_free_space
from conftest import run_spec

ROOT = Path(__file__).resolve().parents[1]

SLOW_WRITER = """
import sys, time
from cart.io import atomic_path
with atomic_path(sys.argv[1]) as tmp, open(tmp, "wb") as f:
    for _ in range(10_000):
        f.write(b"new" * 10_000)
        f.flush()
        print("wrote", flush=True)
        time.sleep(0.01)
"""


def test_kill_during_atomic_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_bytes(target, b"old complete content")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)], env=env, stdout=subprocess.PIPE)
    for _ in range(3):  # it is mid-write
        assert proc.stdout.readline().startswith(b"wrote")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert target.read_bytes() == b"old complete content"
    atomic_write_bytes(target, b"new")  # a later writer is not blocked by the leftover temp file
    assert target.read_bytes() == b"new"


def test_failed_atomic_write_leaves_no_temp_file(tmp_path):
    from cart.io import atomic_path
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def _tiny(d=32):
    return build_model(CARTConfig(vocab_size=50, d_model=d, head_dim=16, n_prelude=1, n_loops=2, ffn_multiple=16))


def test_checkpoint_from_another_config_is_refused(tmp_path):
    save_weights(_tiny(32), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="another config|does not match"):
        load_weights(_tiny(64), tmp_path / "w.safetensors")


def test_corrupted_checkpoint_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(_tiny(), path)
    good = path.read_bytes()
    path.write_bytes(b"\x00garbage" + good[50:])
    with pytest.raises(ValueError, match="corrupted"):
        load_weights(_tiny(), path)
    path.write_bytes(good[:-100])  # truncated
    with pytest.raises(ValueError, match="corrupted"):
        load_weights(_tiny(), path)


def test_round_trip_is_exact(tmp_path):
    model = _tiny()
    save_weights(model, tmp_path / "w.safetensors")
    other = _tiny()
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    load_weights(other, tmp_path / "w.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("change,message", [
    (lambda t: t.long(), r"tensor tok_emb\.weight is I64 in the file, not a floating-point weight"),
    (lambda t: t.index_fill(0, torch.tensor([3]), float("nan")), r"tensor tok_emb\.weight holds NaN or infinite"),
    (lambda t: t.index_fill(0, torch.tensor([3]), float("-inf")), r"tensor tok_emb\.weight holds NaN or infinite")],
    ids=["int64", "nan", "-inf"])
def test_run_with_non_float_or_non_finite_weights_is_refused(tmp_path, change, message):
    """load_state_dict would cast an int64 tensor to float silently, and NaN weights would give NaN
    evaluations and exports: both refused on load, naming the tensor and the file."""
    from safetensors.torch import save_file

    from cart.training.checkpoint import load_run_model, write_run_config
    model = _tiny()
    run = tmp_path / "runs" / "g" / "r"
    run.mkdir(parents=True)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(weights | {"tok_emb.weight": change(weights["tok_emb.weight"])}, run / "model.safetensors")
    write_run_config(run, {"model": model.config.to_dict()})
    with pytest.raises(ValueError, match=rf"^checkpoint {re.escape(str(run / 'model.safetensors'))}: {message}"):
        load_run_model(run)
    save_file(weights, run / "model.safetensors")
    assert torch.equal(load_run_model(run)[0].tok_emb.weight, weights["tok_emb.weight"])


def test_disk_space_is_checked_before_writing(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda _: usage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(OSError, match="not enough disk space for bins"):
        require_free_space(tmp_path, 500 << 20, "bins")
    monkeypatch.setattr("shutil.disk_usage", lambda _: usage(10 << 30, 0, 10 << 30))
    require_free_space(tmp_path, 500 << 20, "bins")  # enough: no error


# ---- reliability findings (issue 16): each test failed before its fix -----------------------

def _strict_json(path: Path):
    """json.loads as a strict reader: NaN and Infinity are not JSON."""
    def reject(constant):
        raise ValueError(f"{path.name}: {constant} is not valid JSON")
    return json.loads(path.read_text(), parse_constant=reject)


def test_diverged_run_writes_null_not_nan_and_the_failure(tiny_project):
    from cart.training.checkpoint import SUMMARY
    from cart.experiments import RunPaths
    from cart.training.trainer import NonFiniteError, Trainer
    from conftest import tiny_params, write_params
    p = tiny_params()
    p["train"].update(lr=1e6, lr_width_scaling=False, grad_clip=0.0, checkpoint_every=1)
    write_params(tiny_project, p)
    spec = run_spec()
    paths = RunPaths.for_run(spec.group, spec.name)
    with pytest.raises(NonFiniteError):
        Trainer(spec, paths, progress=False).run()
    for path in (paths.run_dir / SUMMARY, paths.metrics_file):
        data = _strict_json(path)
        assert data["status"] == "failed" and data["spectral_radius"] is None, path.name
    assert "non-finite" in _strict_json(paths.run_dir / SUMMARY)["failure"]


def _retrain_with_steps(project: Path, steps: int):
    from cart.experiments import RunPaths
    from cart.training.trainer import train_run
    from conftest import tiny_params, write_params
    p = tiny_params()
    p["stage2"]["run"].update(steps=steps, eval_every=steps // 2)
    write_params(project, p)
    spec = run_spec()
    paths = RunPaths.for_run(spec.group, spec.name)
    return train_run(spec, paths, progress=False), paths


def test_changed_config_with_broken_data_keeps_the_old_run(tiny_project):
    """The stale run's files go only once the new config, data and model are accepted."""
    first, paths = _retrain_with_steps(tiny_project, 12)
    before = {f.name: f.read_bytes() for f in paths.run_dir.iterdir() if f.is_file()}
    (tiny_project / "data/bins/train.bin").unlink()
    with pytest.raises((FileNotFoundError, ValueError)):
        _retrain_with_steps(tiny_project, 8)
    assert {f.name: f.read_bytes() for f in paths.run_dir.iterdir() if f.is_file()} == before


def test_a_replaced_completed_run_keeps_its_weights(tiny_project, capsys):
    from cart.results import memory_store, load_runs
    first, paths = _retrain_with_steps(tiny_project, 12)
    old = {name: (paths.run_dir / name).read_bytes() for name in ("config.json", "summary.json", "model.safetensors")}
    second, _ = _retrain_with_steps(tiny_project, 8)
    assert second["status"] == "complete" and second["steps"] == 8
    [kept] = (paths.run_dir / "replaced").iterdir()
    assert {f.name: f.read_bytes() for f in kept.iterdir()} == old
    assert "kept in" in capsys.readouterr().out
    _retrain_with_steps(tiny_project, 6)  # a third config: both earlier runs are kept
    assert len(list((paths.run_dir / "replaced").iterdir())) == 2
    assert json.loads((paths.run_dir / "summary.json").read_text())["steps"] == 6
    con = memory_store(tiny_project, groups=["stage2"])
    assert list(load_runs(con)["run_id"]) == ["stage2/d32-R2-s42"]  # replaced/ is not a run


def test_corpus_bytes_that_are_not_utf8_are_one_line_naming_file_and_offset(tiny_data, tmp_path):
    """Rejected, not replaced (cart.data.corpus.iter_texts says why): the tokenizer stage, which reads
    the corpus inside SentencePiece's trainer, stops with one line instead of a traceback."""
    shutil.copytree(tiny_data / "data/corpus", tmp_path / "data/corpus")
    shutil.copy(tiny_data / "params.yaml", tmp_path / "params.yaml")
    damaged = tmp_path / "data/corpus/wikipedia/train.jsonl"
    raw = damaged.read_bytes()
    at = raw.index(b"\n", len(raw) // 2) + 20  # inside a document's text
    damaged.write_bytes(raw[:at] + b"\xff" + raw[at:])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "pipeline.tokenizer", "--no-progress"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"tokenizer: error: data/corpus/wikipedia/train.jsonl: not UTF-8 at byte {at} (invalid start byte); "
        "the corpus stage writes UTF-8, so the file is damaged: re-run the corpus stage"]


def _params_with(tmp_path: Path, path: str, value) -> Path:
    import yaml
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    node = params
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    out = tmp_path / "params.yaml"
    out.write_text(yaml.safe_dump(params, sort_keys=False))
    return out


@pytest.mark.parametrize("group", ["stage2", "dense"])
def test_an_empty_grid_is_one_error_naming_it(tmp_path, group):
    from pipeline import summarize
    key = "stage2.grid.d_model" if group == "stage2" else "dense.grid.n_layers"
    params = _params_with(tmp_path, key, [])
    with pytest.raises(ValueError, match=rf"^{key}: expected a non-empty list, got \[\]$"):
        summarize.main([group, "--params", str(params), "--root", str(tmp_path), "--out", str(tmp_path / "s.json")])


def test_head_dim_error_names_the_runs_own_width(tmp_path):
    from cart.experiments import validate_profile
    from cart.params import load_params
    params = load_params(_params_with(tmp_path, "model.common.head_dim", 48))
    with pytest.raises(ValueError, match=r"^CARTConfig\.head_dim: must divide d_model=64, got 48$"):
        validate_profile(params, vocab_size=2048)  # the default profile's first run has d=64


def test_a_run_name_outside_the_grid_is_refused_before_anything_runs(tmp_path, monkeypatch):
    from pipeline import train
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"stage2/d96-R3-s7 is not in params.yaml's stage2 grid; valid: \["):
        train.main(["stage2", "d96-R3-s7"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no run folder, no data read


# ---- full disks, stale temporary files, strict JSON ----------------------------------------------

def _python_write(tmp):
    raise OSError(28, "No space left on device")


def _torch_save(tmp):
    raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")  # no errno to go by


def _sqlite_write(tmp):
    import sqlite3
    raise sqlite3.OperationalError("database or disk is full")


@pytest.mark.parametrize("writer,free", [(_python_write, 10 << 30), (_torch_save, 4096), (_sqlite_write, 0)])
def test_a_write_that_fills_the_disk_says_so_naming_the_file(tmp_path, monkeypatch, writer, free):
    """What each writer raises when the disk fills: an errno, or (torch.save, SQLite) words alone, when
    the filesystem then has (almost) no free space."""
    from cart.io import atomic_path
    target = tmp_path / "results.db"
    target.write_bytes(b"old")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda _: usage(10 << 30, (10 << 30) - free, free))
    with pytest.raises(OSError, match=rf"^\[Errno 28\] the disk is full: writing {target} failed \(") as e:
        with atomic_path(target) as tmp:
            writer(tmp)
    assert e.value.errno == 28
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["results.db"]


def test_a_failed_write_on_a_disk_with_room_keeps_its_own_error(tmp_path):
    from cart.io import atomic_path
    with pytest.raises(RuntimeError, match="^boom$"):
        with atomic_path(tmp_path / "x.bin"):
            raise RuntimeError("boom")


def test_a_stage_on_a_full_disk_is_one_line_saying_so(tmp_path, monkeypatch, capsys):
    """The stages' one way out (pipeline/_cli.py) prints it, no traceback."""
    from pipeline._cli import run
    from cart.io import atomic_write_json
    real_write = Path.write_bytes

    def full(self, data):
        real_write(self, data[:1])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(SystemExit) as e:
        run(lambda: atomic_write_json(tmp_path / "m.json", {"a": 1}), "summarize")
    assert e.value.code == 1
    assert capsys.readouterr().err.startswith(f"summarize: error: [Errno 28] the disk is full: writing "
                                              f"{tmp_path / 'm.json'} failed")


def test_json_is_written_strictly_naming_the_key_of_a_nan(tmp_path):
    from cart.io import atomic_write_json
    target = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match=rf"^{target}: results\.R2\.ppl:wiki\.1 is nan, which is not JSON; "
                                         r"nothing written$"):
        atomic_write_json(target, {"results": {"R2": {"ppl:wiki": [1.0, float("nan")]}}})
    with pytest.raises(ValueError, match=r": loss is inf, which is not JSON"):
        atomic_write_json(target, {"loss": float("inf")})
    assert list(tmp_path.iterdir()) == []
    atomic_write_json(target, {"loss": 1.5, "ppl": None})
    assert _strict_json(target) == {"loss": 1.5, "ppl": None}


def test_stale_temporary_files_of_our_naming_are_removed_and_nothing_else(tmp_path):
    from cart.io import atomic_path, remove_stale_temps
    (tmp_path / "results.db").write_bytes(b"db")
    left = [".results.db.k1l2m3.tmp", ".results.db.k1l2m3.tmp-journal", ".model.safetensors.a8b9.tmp"]
    kept = ["results.db", ".results.db", "results.db.tmp", ".other.txt", "notes.tmp"]
    for name in left + kept[1:]:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(p.name for p in remove_stale_temps(tmp_path, "results.db")) == sorted(left[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + left[2:])
    assert [p.name for p in remove_stale_temps(tmp_path)] == left[2:]
    with atomic_path(tmp_path / "results.db") as tmp:  # the temporary name atomic_path really uses matches
        tmp.write_bytes(b"new")
        assert [p.name for p in remove_stale_temps(tmp_path, "results.db")] == [tmp.name]
        tmp.write_bytes(b"new")
