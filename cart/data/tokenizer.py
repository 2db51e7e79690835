"""Tokenizer: a SentencePiece model trained on the corpus, or a given one (the paper: Llama-2).

The tokenizer stage (`python -m pipeline.tokenizer`) writes

    data/tokenizer/tokenizer.model   the SentencePiece model
    data/tokenizer/tokenizer.json    {"vocab_size", "kind", "sha256" (of tokenizer.model),
                                      "bytes_per_token": {domain: float}, "bos_id", "eos_id", ...}

`bytes_per_token[domain]` is measured on that domain's VALIDATION text as laid out in the
validation bins: UTF-8 bytes of the documents / (their tokens + one EOS separator per document),
so BPB = loss / ln 2 / bytes_per_token for a validation window (cart/training/validation.py).

A trained tokenizer uses byte fallback and no normalisation, so decode(encode(x)) == x for any
text. Control ids follow Llama: unk 0, bos 1, eos 2, no pad.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal

import sentencepiece as spm

from .corpus import iter_texts, read_manifest
from ..io import read_json, sha256_file
from ..params import build, section

MODEL_FILE = "tokenizer.model"
INFO_FILE = "tokenizer.json"
MIN_TRAIN_VOCAB = 384            # 256 byte pieces + 3 control ids + room for merges
_MAX_SENTENCE_BYTES = 8192       # longer lines are cut into pieces for training


@dataclass(frozen=True)
class TokenizerParams:
    kind: Literal["train", "file"]
    model_type: Literal["bpe", "unigram"]     # kind train
    vocab_size: int                           # kind train
    file: str | None                          # kind file: path to a SentencePiece .model
    train_chars: int                          # kind train: at most this many characters of training text

    def __post_init__(self):
        if self.kind == "train":
            if not MIN_TRAIN_VOCAB <= self.vocab_size <= 1_000_000:
                raise ValueError(f"vocab_size: must be in [{MIN_TRAIN_VOCAB}, 1000000] for kind 'train', "
                                 f"got {self.vocab_size}")
            if self.train_chars < 10_000:
                raise ValueError(f"train_chars: must be >= 10000, got {self.train_chars}")
        if self.kind == "file" and not self.file:
            raise ValueError("file: required for kind 'file' (path to a SentencePiece tokenizer.model)")


def tokenizer_params(params: dict) -> TokenizerParams:
    return build(TokenizerParams, section(params, "tokenizer"), "tokenizer")


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------

def _model_path(tok_dir: str | os.PathLike) -> Path:
    p = Path(tok_dir)
    return p if p.is_file() else p / MODEL_FILE


def load_model_bytes(data: bytes, what: str) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except Exception as e:  # sentencepiece raises RuntimeError / OSError with a terse message
        raise ValueError(f"{what} is not a SentencePiece model ({type(e).__name__}: {e})") from None
    if sp.get_piece_size() == 0:
        raise ValueError(f"{what} is not a SentencePiece model (no pieces)")
    return sp


def load_tokenizer(tok_dir: str | os.PathLike) -> spm.SentencePieceProcessor:
    """The SentencePiece model in `tok_dir` (or at `tok_dir` if it is a file)."""
    path = _model_path(tok_dir)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer model not found: {path}; run the tokenizer stage "
                                f"(`dvc repro tokenizer` or `python -m pipeline.tokenizer`)")
    return load_model_bytes(path.read_bytes(), str(path))


def tokenizer_info(tok_dir: str | os.PathLike) -> dict:
    """data/tokenizer/tokenizer.json: vocab_size, kind, sha256, bytes_per_token, bos_id, eos_id."""
    info = read_json(Path(tok_dir) / INFO_FILE, "tokenizer info")
    missing = {"vocab_size", "kind", "sha256", "bytes_per_token", "bos_id", "eos_id"} - set(info)
    if missing:
        raise ValueError(f"{Path(tok_dir) / INFO_FILE} lacks {sorted(missing)}; re-run the tokenizer stage")
    return info


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------

def encode_texts(sp: spm.SentencePieceProcessor, texts: list[str], threads: int = 1) -> list[list[int]]:
    return sp.encode(texts, out_type=int, num_threads=threads) if texts else []


def bytes_per_token(sp: spm.SentencePieceProcessor, texts: Iterable[str], batch: int = 512) -> float:
    """UTF-8 bytes / (tokens + 1 EOS per document): the ratio of the validation bins' layout."""
    n_bytes = n_tokens = 0
    buf: list[str] = []

    def flush():
        nonlocal n_tokens
        n_tokens += sum(len(ids) + 1 for ids in encode_texts(sp, buf, threads=os.cpu_count() or 1))
        buf.clear()

    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        buf.append(text)
        if len(buf) >= batch:
            flush()
    flush()
    if n_tokens == 0:
        raise ValueError("bytes_per_token: no text")
    return n_bytes / n_tokens


def _training_lines(corpus_dir: Path, domains: list[str], train_chars: int) -> Iterator[str]:
    """Up to train_chars characters of training text, an equal share from each domain, as lines
    (SentencePiece's unit), in corpus order: deterministic."""
    share = train_chars // len(domains)
    for domain in domains:
        used = 0
        for text in iter_texts(corpus_dir, domain, "train"):
            for line in text.splitlines():
                while line:
                    piece, line = line[:_MAX_SENTENCE_BYTES // 4], line[_MAX_SENTENCE_BYTES // 4:]
                    if piece.strip():
                        yield piece
                        used += len(piece)
            if used >= share:
                break


def train_sentencepiece(lines: Iterable[str], model_type: str, vocab_size: int) -> bytes:
    """Train a byte-fallback SentencePiece model; returns the serialized model."""
    buf = io.BytesIO()
    source_errors: list[Exception] = []

    def source():  # SentencePiece wraps an error of its line source in a RuntimeError: keep the original
        try:
            yield from lines
        except Exception as e:
            source_errors.append(e)
            raise

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=source(), model_writer=buf, model_type=model_type, vocab_size=vocab_size,
            byte_fallback=True, character_coverage=0.9995, normalization_rule_name="identity",
            remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
            max_sentence_length=_MAX_SENTENCE_BYTES, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            num_threads=max(1, os.cpu_count() or 1), minloglevel=2)
    except RuntimeError as e:
        if source_errors:  # e.g. a damaged corpus file (cart.data.corpus.iter_texts): its own one-line message
            raise source_errors[0] from None
        msg = str(e)
        if "Vocabulary size" in msg or "vocab_size" in msg:
            raise ValueError(f"tokenizer.vocab_size={vocab_size} is too large for the training text "
                             f"(SentencePiece: {msg.strip()}); lower it or raise tokenizer.train_chars / "
                             f"corpus.train_tokens") from None
        raise
    return buf.getvalue()


def build_tokenizer(params: TokenizerParams, corpus_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    progress: bool = True) -> dict:
    """Train (or copy) the tokenizer and measure bytes/token per domain; written atomically."""
    from tqdm import tqdm

    from .corpus import atomic_dir
    corpus_dir = Path(corpus_dir)
    manifest = read_manifest(corpus_dir)
    domains = list(manifest["domains"])
    if not domains:
        raise ValueError(f"{corpus_dir}: the corpus has no domains; re-run the corpus stage")
    info: dict = {"kind": params.kind}
    if params.kind == "file":
        path = Path(os.path.expanduser(params.file))
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer.file: not found: {path} (cwd {os.getcwd()})")
        model = path.read_bytes()
        info["file"] = str(params.file)
    else:
        lines = _training_lines(corpus_dir, domains, params.train_chars)
        lines = tqdm(lines, desc="tokenizer: train lines", unit="line", disable=not progress, mininterval=0.5)
        model = train_sentencepiece(lines, params.model_type, params.vocab_size)
        info |= {"model_type": params.model_type, "train_chars": params.train_chars}
    sp = load_model_bytes(model, str(params.file) if params.kind == "file" else "the trained model")
    if sp.eos_id() < 0:
        raise ValueError(f"tokenizer.file: {params.file} has no EOS id; the bins separate documents with EOS")
    bpt = {}
    for d in tqdm(domains, desc="tokenizer: bytes/token", disable=not progress):
        bpt[d] = bytes_per_token(sp, iter_texts(corpus_dir, d, "val"))
    info |= {"vocab_size": sp.get_piece_size(), "sha256": hashlib.sha256(model).hexdigest(),
             "bytes_per_token": bpt, "bos_id": sp.bos_id(), "eos_id": sp.eos_id(), "unk_id": sp.unk_id(),
             "pad_id": sp.pad_id(), "bytes_per_token_note": "validation text bytes / (tokens + 1 EOS per doc)"}
    with atomic_dir(out_dir) as tmp:
        (tmp / MODEL_FILE).write_bytes(model)
        assert sha256_file(tmp / MODEL_FILE) == info["sha256"]
        import json
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")  # domains in corpus order
    return info
