"""bench/gpu/carry_size.py: what a device call carries, counted as the tar of it that tar itself writes."""
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from bench.gpu import carry_size

SIZES = {"tracked.txt": 1000, "gpu/run/summary.json": 600, "new.py": 513, ".gitignore": None,
         ".carry/data.tar.xz": 5000, ".carry/params.yaml": 1}


@pytest.fixture
def repo(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / ".gitignore").write_text(".carry/\n*.log\n")
    for name, size in SIZES.items():
        if size is not None:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(b"x" * size)
    (tmp_path / "gone.txt").write_text("tracked, then deleted")
    git("add", "tracked.txt", "gpu", "gone.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "files")
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "train.log").write_bytes(b"x" * 4096)  # ignored and not carried: travels nowhere
    return tmp_path


def tar_of(root: Path, names) -> int:
    """The bytes tar writes for these files, less its closing blocks and record padding."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for n in names:
            tar.add(root / n, arcname=n, recursive=False)
        return tar.offset


def test_the_count_is_the_tar_of_the_checkout_and_the_carried_paths(repo):
    parts = carry_size.count(repo, [".carry"], [])
    checkout = ["tracked.txt", "gpu/run/summary.json", "new.py", ".gitignore"]
    assert parts["checkout"] == tar_of(repo, checkout)
    assert parts[".carry"] == tar_of(repo, [".carry/data.tar.xz", ".carry/params.yaml"])
    assert parts["total"] == tar_of(repo, checkout + [".carry/data.tar.xz", ".carry/params.yaml"])


def test_a_folder_set_aside_leaves_the_total_and_is_reported_apart(repo):
    parts = carry_size.count(repo, [".carry"], ["gpu"])
    assert parts["aside:gpu"] == tar_of(repo, ["gpu/run/summary.json"])
    assert parts["checkout"] == tar_of(repo, ["tracked.txt", "new.py", ".gitignore"])
    assert parts["total"] == parts["checkout"] + parts[".carry"]


def test_over_the_limit_the_command_fails_and_names_the_way_out(repo, monkeypatch, capsys):
    total = carry_size.count(repo, [".carry"], [])["total"]
    monkeypatch.setattr(carry_size, "LIMIT", total)
    assert carry_size.main([".carry", "--repo", str(repo)]) == 0
    monkeypatch.setattr(carry_size, "LIMIT", total - 1)
    assert carry_size.main([".carry", "--repo", str(repo)]) == 1
    out = capsys.readouterr().out
    assert "over by 0.0 MB" in out and "--aside gpu" in out
    with pytest.raises(SystemExit, match=r"\.missing does not exist"):
        carry_size.main([".missing", "--repo", str(repo)])
