"""Atomic writes under SIGKILL, damaged checkpoints, disk-space refusal."""
import os
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from cart import CARTConfig, build_model
from cart.checkpoint import load_weights, save_weights
from cart.io import atomic_write_bytes, require_free_space

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


def test_disk_space_is_checked_before_writing(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda _: usage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(OSError, match="not enough disk space for bins"):
        require_free_space(tmp_path, 500 << 20, "bins")
    monkeypatch.setattr("shutil.disk_usage", lambda _: usage(10 << 30, 0, 10 << 30))
    require_free_space(tmp_path, 500 << 20, "bins")  # enough: no error
