"""DVC stage: train one run. `python -m pipeline.train <group> <name>`, e.g. `stage2 d128-R4-s42`.

The run's full config comes from the group's declared params keys (cart/experiments.py); outputs
go to runs/<group>/<name>/ (checkpoints), plots/<group>/<name>/ (curves), metrics/<group>/<name>.json.
"""
import argparse
import os
import sys

from cart.experiments import GROUPS, RunPaths, check_in_grid, resolve_run
from cart.training.launch import LAUNCHER_PID_ENV, die_with_launcher
from cart.params import load_params
from cart.data.tokenizer import tokenizer_info
from pipeline._cli import run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("group", choices=list(GROUPS))
    ap.add_argument("name", help="run name encoding its config, e.g. d128-P2-R4 (stage1)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    check_in_grid(params, args.group, args.name)  # a membership check only: the run reads its declared keys
    paths = RunPaths.for_run(args.group, args.name)
    vocab = tokenizer_info(paths.tokenizer_dir)["vocab_size"]
    spec = resolve_run(params, args.group, args.name, vocab)
    if spec.train.nproc > 1 and "LOCAL_RANK" not in os.environ:
        # one process per GPU under torchrun; every process re-reads params and joins DDP. exec keeps
        # this pid, which the workers check their parent against (cart.training.launch.die_with_launcher)
        os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
        os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc_per_node={spec.train.nproc}", "-m", "pipeline.train",
                                  *(argv if argv is not None else sys.argv[1:])])
    if "LOCAL_RANK" in os.environ:  # a worker under torchrun: it must not outlive its launcher
        die_with_launcher()
    from cart.training.trainer import train_run  # torch is imported only once the run is known to be valid
    rank = int(os.environ.get("RANK", "0"))
    train_run(spec, paths, progress=not args.no_progress and rank == 0)


if __name__ == "__main__":
    from cart.training.trainer import NonFiniteError
    run(main, "train", (NonFiniteError,))
