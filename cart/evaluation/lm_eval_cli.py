"""lm-eval's own command line with this project's adapter registered as `--model cart`:

    python -m cart.evaluation.lm_eval_cli --model cart --model_args checkpoint=runs/stage2/d1024-R6-s42,n_loops=8 \\
        --tasks cart_hellaswag --include_path cart/evaluation/benchmarks/tasks \\
        --metadata '{"source": "local", "local_dir": "../shared/data/benchmarks"}'

lm-eval 0.4 finds models only in its own registry: it has no plugin entry points, so a model
defined elsewhere must be registered in the process that runs the CLI. Importing cart.evaluation.harness
registers CARTLM under "cart" (`@register_model("cart")`); this module does that, then runs
lm-eval's own command line (its parser and its `run`). The project's task YAMLs (cart_hellaswag,
...) read their records from `--metadata`: {"source": "builtin"} (the generated smoke set, never
a benchmark result) or {"source": "local", "local_dir": <benchmark files>}. Without a source there,
the `benchmarks` section of ./params.yaml supplies it (what the pipeline's evaluation stages read;
relative folders taken from here), and the choice is printed. Before any model is loaded, the
benchmark files of every cart task are looked up (a missing one is named with its format, a
few-shot split included). Installed, the same command is `cart-lm-eval ...`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..params import PARAMS_FILE


def main(argv: list[str] | None = None) -> None:
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    from . import harness  # noqa: F401  (registers --model cart)

    sys.argv = ["lm_eval"] + (sys.argv[1:] if argv is None else list(argv))
    setup_logging()
    cli = HarnessCLI()
    args = cli.parse_args()
    if getattr(args, "command", None) == "run":
        try:
            args.metadata = benchmark_metadata(args.tasks or [], args.metadata, args.num_fewshot or 0)
        except (ValueError, FileNotFoundError) as e:
            sys.exit(f"lm_eval_cli: error: {e}")
    cli.execute(args)


def benchmark_metadata(tasks: list[str], metadata: dict | None, num_fewshot: int,
                       params_file: Path = Path(PARAMS_FILE)) -> dict | None:
    """--metadata for `tasks`: as given, or, where the project's tasks need a source it lacks, with
    the source and folder of params.yaml's `benchmarks` section; their files checked."""
    from . import benchmarks as B

    ours = [task for task in B.TASKS if B.harness_name(task, "local") in tasks]
    if not ours:
        return metadata
    metadata = dict(metadata or {})
    if metadata.get("source") is None:
        metadata.update(params_source(params_file, ours))
        print(f"lm_eval_cli: {', '.join(B.harness_name(t, 'local') for t in ours)} read "
              f"{json.dumps({k: metadata[k] for k in ('source', 'local_dir')})} (from {params_file}'s "
              f"benchmarks section; --metadata overrides it)", file=sys.stderr)
    source = metadata["source"]
    if source not in ("builtin", "local"):
        raise ValueError(f"--metadata source: the cart_* tasks read 'builtin' or 'local', got {source!r}")
    if source == "local":
        if not metadata.get("local_dir"):
            raise ValueError("--metadata: source 'local' needs local_dir (a folder of benchmark files)")
        B.check_local_files(metadata["local_dir"], ours, num_fewshot)
    return metadata


def params_source(params_file: Path, tasks: list[str]) -> dict:
    """{"source", "local_dir"} of params.yaml's benchmarks section (local_dir relative to its folder)."""
    from .benchmarks import harness_name
    from .harness import BenchmarkSettings, local_dir_of
    from ..params import build, load_params, section

    if not params_file.is_file():
        raise FileNotFoundError(f"{harness_name(tasks[0], 'local')}: no --metadata source and no {params_file} "
                                f"here to take it from; pass --metadata "
                                f"'{{\"source\": \"local\", \"local_dir\": \"<benchmark files>\"}}' "
                                f"(or {{\"source\": \"builtin\"}}, the generated smoke set)")
    settings = build(BenchmarkSettings, section(load_params(params_file), "benchmarks"), "benchmarks")
    if settings.source == "hub":
        raise ValueError(f"{params_file}: benchmarks.source 'hub' is lm-eval's own tasks (--tasks "
                         f"{', '.join(tasks)}); the cart_* tasks need --metadata with source 'builtin' or 'local'")
    local_dir = local_dir_of(settings, params_file.resolve().parent)
    return {"source": settings.source, "local_dir": None if local_dir is None else str(local_dir)}


if __name__ == "__main__":
    main()
