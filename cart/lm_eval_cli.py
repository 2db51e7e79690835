"""lm-eval's own command line with this project's adapter registered as `--model cart`:

    python -m cart.lm_eval_cli --model cart --model_args checkpoint=runs/stage2/d1024-R6-s42,n_loops=8 \\
        --tasks cart_hellaswag --include_path "$(python -c 'import cart.benchmarks as B; print(B.TASK_DIR)')" \\
        --metadata '{"source": "local", "local_dir": "/path/to/benchmarks"}'

lm-eval 0.4 finds models only in its own registry: it has no plugin entry points, so a model
defined elsewhere must be registered in the process that runs the CLI. Importing cart.harness
registers CARTLM under "cart" (`@register_model("cart")`); this module does that, then hands every
argument to lm-eval's `cli_evaluate`. The project's task YAMLs (cart_hellaswag, ...) read their
records from `--metadata`: {"source": "builtin"} (the smoke set) or {"source": "local",
"local_dir": <benchmark files>}. Installed, the same command is `cart-lm-eval ...`.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    from . import harness  # noqa: F401  (registers --model cart)

    sys.argv = ["lm_eval"] + (sys.argv[1:] if argv is None else list(argv))
    cli_evaluate()


if __name__ == "__main__":
    main()
