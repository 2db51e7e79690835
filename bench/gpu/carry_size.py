"""What a device call carries, counted as a tar of it, against the 64 MiB a call may carry.

    python -m bench.gpu.carry_size .gpu-stage1      # the checkout and the carried folder
    python -m bench.gpu.carry_size .gpu-sweep --aside gpu

The checkout is what git would send (tracked files and untracked ones it does not ignore), the carried
paths are added whole; each file counts its size padded to 512 bytes and a 512-byte header. With
--aside, the folders a call can do without (`mv gpu ../gpu-aside` before it) are left out of the total
and reported apart. Exits 1 when the total is over the limit, so `pack` can say so before a call is
refused.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

LIMIT = 64 * 2**20
BLOCK = 512


def tar_bytes(size: int) -> int:
    """One regular file's share of a tar: its header and its data padded to whole blocks."""
    return BLOCK + -(-size // BLOCK) * BLOCK


def checkout_files(repo: Path) -> list[Path]:
    """The files a call sends from the working tree, relative to it (deleted tracked files left out)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         check=True, capture_output=True).stdout
    names = dict.fromkeys(n for n in out.decode().split("\0") if n)
    return [Path(n) for n in names if (repo / n).is_file() and not (repo / n).is_symlink()]


def carried_files(repo: Path, path: str) -> list[Path]:
    root = repo / path
    if not root.exists():
        raise SystemExit(f"carry_size: {path} does not exist in {repo}")
    if root.is_file():
        return [Path(path)]
    return [p.relative_to(repo) for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]


def count(repo: Path, carry: list[str], aside: list[str]) -> dict:
    """Bytes per part: "checkout" (less the aside folders), each carried path, each aside folder, "total"."""
    aside_roots = [Path(a) for a in aside]
    parts = {"checkout": 0, **{c: 0 for c in carry}, **{f"aside:{a}": 0 for a in aside}}
    for f in checkout_files(repo):
        under = next((a for a in aside_roots if f.parts[:len(a.parts)] == a.parts), None)
        parts[f"aside:{under}" if under else "checkout"] += tar_bytes((repo / f).stat().st_size)
    for c in carry:
        parts[c] += sum(tar_bytes((repo / f).stat().st_size) for f in carried_files(repo, c))
    parts["total"] = parts["checkout"] + sum(parts[c] for c in carry)
    return parts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("carry", nargs="*", help="the ignored paths the call carries")
    ap.add_argument("--aside", action="append", default=[], metavar="FOLDER",
                    help="a folder of the checkout the call leaves out (moved aside before it)")
    ap.add_argument("--repo", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    parts = count(args.repo, args.carry, args.aside)
    for name, n in parts.items():
        print(f"  {name:<24} {n / 1e6:8.1f} MB")
    over = parts["total"] - LIMIT
    verdict = f"over by {over / 1e6:.1f} MB" if over > 0 else f"{-over / 1e6:.1f} MB to spare"
    print(f"carry: {parts['total'] / 1e6:.1f} of {LIMIT / 1e6:.1f} MB a call carries: {verdict}")
    if over > 0 and not args.aside and (args.repo / "gpu").is_dir():
        print("  (a call that reads nothing under gpu/ can move it aside: --aside gpu counts that)")
    return 1 if over > 0 else 0


if __name__ == "__main__":
    sys.exit(main())
