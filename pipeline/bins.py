"""DVC stage: tokenize the corpus into token bins under data/bins/. `python -m pipeline.bins`

train.bin interleaves the domains in bins.chunk_tokens-token chunks by bins.mixture (pre-shuffled
with bins.seed); val_<domain>.bin holds each domain's validation stream; meta.json describes them.
"""
import argparse
import time

from cart.data.bins import bins_params, build_bins
from cart.params import load_params
from pipeline._cli import run


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--tokenizer", default="data/tokenizer")
    ap.add_argument("--out", default="data/bins")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    params = bins_params(load_params(args.params))
    meta = build_bins(params, args.corpus, args.tokenizer, args.out, progress=not args.no_progress)
    parts = ", ".join(f"{d} {meta['tokens'][d]:,}/{meta['val_tokens'][d]:,}" for d in meta["domains"])
    print(f"bins: train/val tokens {parts}; train.bin {meta['n_chunks']:,} chunks of {meta['chunk_tokens']} "
          f"({meta['dtype']}) -> {args.out} ({len(meta['files']) + 2} files) in {time.perf_counter() - t0:.1f}s")
    return meta


if __name__ == "__main__":
    run(main, "bins")
