"""DVC stage: train (or copy) the SentencePiece tokenizer into data/tokenizer/. `python -m pipeline.tokenizer`

params.yaml `tokenizer.kind`: train (SentencePiece bpe|unigram on the corpus's training text) or
file (a given tokenizer.model, e.g. Llama-2's). Writes tokenizer.model and tokenizer.json (vocab
size, sha256, bytes/token per domain measured on the validation text).
"""
import argparse
import time

from cart.params import load_params
from cart.data.tokenizer import build_tokenizer, tokenizer_params
from pipeline._cli import run


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--out", default="data/tokenizer")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    params = tokenizer_params(load_params(args.params))
    info = build_tokenizer(params, args.corpus, args.out, progress=not args.no_progress)
    bpt = ", ".join(f"{d} {v:.2f}" for d, v in info["bytes_per_token"].items())
    what = f"{info['model_type']} trained" if info["kind"] == "train" else f"file {info['file']}"
    print(f"tokenizer: {what}, vocab {info['vocab_size']:,}, bytes/token (val) {bpt} -> {args.out} "
          f"(2 files) in {time.perf_counter() - t0:.1f}s")
    return info


if __name__ == "__main__":
    run(main, "tokenizer")
