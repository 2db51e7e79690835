"""DVC stage: gather train/validation text per domain into data/corpus/. `python -m pipeline.corpus`

Sources per domain come from params.yaml `corpus.domains.<domain>.source` (builtin | local | hf);
see cart/data/corpus.py and docs/results.md (Data).
"""
import argparse
import time

from cart.data.corpus import corpus_params, build_corpus
from cart.params import load_params
from pipeline._cli import run


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/corpus")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    params = corpus_params(load_params(args.params))
    manifest = build_corpus(params, args.out, progress=not args.no_progress)
    doms = manifest["domains"]
    parts = [f"{d} ({m['source']}) {m['train']['approx_tokens']:,}/{m['val']['approx_tokens']:,}"
             for d, m in doms.items()]
    short = [d for d, m in doms.items() if m["train"]["approx_tokens"] < params.train_tokens]
    note = f"; sources smaller than corpus.train_tokens (all of their text used): {short}" if short else ""
    print(f"corpus: ~train/val tokens (words x 1.3): {', '.join(parts)} -> {args.out} "
          f"({2 * len(doms) + 1} files) in {time.perf_counter() - t0:.1f}s{note}")
    return manifest


if __name__ == "__main__":
    run(main, "corpus")
