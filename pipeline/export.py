"""Export a training run as a Hugging Face model folder: `python -m pipeline.export <run dir> [<out dir>]`.

    python -m pipeline.export runs/stage2/d1024-R6-s42 [hf/cart-d1024-P6-R6] [--n-loops 8]

Without <out dir> the folder is hf/<config name>, the exported model's name in the grammar of
cart/models/names.py (R the exported loop count: `--n-loops 8` gives hf/cart-d1024-P6-R8).

The folder (cart/hf/export.py lists its files) loads with
`AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)` and
`AutoTokenizer.from_pretrained(out)`, with transformers and torch only: the modeling code and the
model family's source are copied into it. The export checks the folder against the run's model
before moving it into place; an existing non-empty <out dir> is refused, never overwritten.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline._cli import run

TOKENIZER = Path("data/tokenizer")
HF_ROOT = Path("hf")


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a training run: runs/<group>/<name>")
    ap.add_argument("out_dir", type=Path, nargs="?", default=None,
                    help="a new (or empty) folder for the Hugging Face model (default: hf/<config name>)")
    ap.add_argument("--tokenizer", type=Path, default=TOKENIZER,
                    help=f"the tokenizer the run was trained with (default {TOKENIZER}; checked by sha256)")
    ap.add_argument("--n-loops", type=int, default=None,
                    help="CART: the loop count R the exported config runs by default (default: the trained R)")
    ap.add_argument("--prefix-token", choices=("eos", "bos"), default="eos",
                    help="the token lm-eval starts empty contexts and rolling windows with (default eos, the "
                         "document separator the project trains with, as CARTLM does)")
    args = ap.parse_args(argv)
    from cart.hf.export import export_name, export_run

    name = export_name(args.run_dir, args.n_loops)
    out_dir = args.out_dir if args.out_dir is not None else HF_ROOT / name
    out = export_run(args.run_dir, out_dir, args.tokenizer, n_loops=args.n_loops, prefix_token=args.prefix_token)
    print(f"export: wrote {out} ({name}, from {args.run_dir})")
    return out


if __name__ == "__main__":
    run(main, "export")
