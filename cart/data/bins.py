"""Token bins: written by the bins stage, read by training and evaluation.

Layout of data/bins/ (`python -m pipeline.bins`):

    train.bin            every domain's training tokens, interleaved in `bins.chunk_tokens`-token
                         chunks (each chunk from ONE domain) by the mixture weights; consumed once,
                         in file order. `bins.stream`: shuffled (chunks pre-shuffled with
                         `bins.seed`) or fixed_cycle (the CART authors' stream: a fixed cycle of
                         `mixture[d]` chunks of each domain in corpus order, e.g. 3:3:4, each
                         domain's chunks in source order, until a domain runs out)
    train_chunks.npy     int32 (n_chunks, 2): (domain index into meta["domains"], chunk index in
                         that domain's stream) of every chunk of train.bin, for audits
    val_<domain>.bin     that domain's validation tokens, one contiguous stream
    meta.json            dtype, vocab_size, chunk_tokens, tokenizer_sha256, source, tokens, files
                         ({name: {tokens, bytes, sha256}}), n_chunks, ... (written last)

A domain's stream is its documents' tokens, each document followed by the EOS id
(`bins.document_format: eos`) or, as the CART authors' bins, BOS + text + EOS (`bos_eos`); the
validation bins too. Tokens are uint16 (uint32 when the vocabulary does not fit), raw
little-endian, read with numpy memmap.

Reader API (the training loop and evaluation depend on exactly these names):
`read_meta`, `open_bin`, `BatchReader`, `val_batches`, `domains`.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..io import read_json, sha256_file
from ..models.base import IGNORE_INDEX
from ..params import build, section

META_FILE = "meta.json"
TRAIN_FILE = "train.bin"
CHUNK_MAP_FILE = "train_chunks.npy"
FORMAT_VERSION = 1
_REQUIRED_META = ("dtype", "vocab_size", "chunk_tokens", "tokenizer_sha256", "source", "tokens", "files",
                  "n_chunks", "domains")
_RERUN = "re-run the bins stage (`dvc repro -f bins` or `python -m pipeline.bins`)"


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------

def read_meta(bins_dir: str | os.PathLike) -> dict:
    """data/bins/meta.json; a clear error when the bins were never built."""
    path = Path(bins_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"bins metadata not found: {path}; run the bins stage "
                                f"(`dvc repro bins` or `python -m pipeline.bins`)")
    meta = read_json(path, "bins metadata")
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks {missing} (written by an older version?); {_RERUN}")
    return meta


def domains(bins_dir: str | os.PathLike) -> list[str]:
    """The domains with a validation bin, in corpus order."""
    return list(read_meta(bins_dir)["domains"])


def _bin_name(name: str) -> str:
    return name if name.endswith(".bin") else f"{name}.bin"


def open_bin(bins_dir: str | os.PathLike, name: str, verify_hash: bool = False,
             meta: dict | None = None) -> np.memmap:
    """A read-only memmap of one bin ("train.bin", "val_tinystories" ...), checked against meta.json:
    its size always (a truncated or extended file is refused), its sha256 when `verify_hash`."""
    meta = read_meta(bins_dir) if meta is None else meta
    fname = _bin_name(name)
    entry = meta["files"].get(fname)
    if entry is None:
        raise ValueError(f"{fname} is not listed in {Path(bins_dir) / META_FILE} "
                         f"(files: {sorted(meta['files'])})")
    path = Path(bins_dir) / fname
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {_RERUN}")
    dtype = np.dtype(meta["dtype"])
    expected = entry["tokens"] * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected or actual != entry["bytes"]:
        raise ValueError(f"{path} is {actual:,} bytes but meta.json records {entry['tokens']:,} {dtype} tokens "
                         f"({expected:,} bytes): the file is {'truncated' if actual < expected else 'extended'} "
                         f"or from another build; {_RERUN}")
    if verify_hash:
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise ValueError(f"{path}: sha256 {digest[:12]}... does not match meta.json "
                             f"({entry['sha256'][:12]}...): the file was altered; {_RERUN}")
    return np.memmap(path, dtype=dtype, mode="r", shape=(entry["tokens"],))


class BatchReader:
    """Training batches from train.bin, read sequentially (consumed once, in file order).

    Each row is a window of seq_len tokens starting at a multiple of seq_len; its targets are the
    next tokens. `chunk_tokens % seq_len == 0`, so a window's inputs never span two chunks, i.e. never
    two domains. The last target of a window ending at a chunk boundary comes from the next chunk
    (often another domain): `cross_chunk_target` "ignore" makes it IGNORE_INDEX (-1), "keep" trains on
    it, as the CART authors' FixedOrderDataset does (1 target in chunk_tokens). The last window of the
    file has no next token: IGNORE_INDEX either way. When the file runs out the reader wraps around,
    counts an epoch and warns. state_dict()/load_state_dict() resume at the exact token."""

    def __init__(self, bins_dir: str | os.PathLike, seq_len: int, micro_batch: int, verify_hash: bool = True,
                 cross_chunk_target: Literal["ignore", "keep"] = "ignore"):
        if seq_len < 1 or micro_batch < 1:
            raise ValueError(f"BatchReader: seq_len ({seq_len}) and micro_batch ({micro_batch}) must be >= 1")
        if cross_chunk_target not in ("ignore", "keep"):
            raise ValueError(f"cross_chunk_target: 'ignore' or 'keep', got {cross_chunk_target!r}")
        self.keep_cross_chunk = cross_chunk_target == "keep"
        self.meta = read_meta(bins_dir)
        self.chunk_tokens = int(self.meta["chunk_tokens"])
        if self.chunk_tokens % seq_len:
            raise ValueError(f"seq_len={seq_len} must divide bins.chunk_tokens={self.chunk_tokens} so that "
                             f"every training window lies in one domain; pick a seq_len that divides it "
                             f"or rebuild the bins with another chunk_tokens")
        self.seq_len, self.micro_batch = seq_len, micro_batch
        self.data = open_bin(bins_dir, TRAIN_FILE, verify_hash=verify_hash, meta=self.meta)
        self.n_tokens = len(self.data)
        self.position = 0
        self.epoch = 0

    @property
    def tokens_per_batch(self) -> int:
        return self.micro_batch * self.seq_len

    def _window(self, start: int) -> tuple[np.ndarray, np.ndarray]:
        end = start + self.seq_len
        x = np.asarray(self.data[start:end], dtype=np.int64)
        y = np.empty_like(x)
        if end >= self.n_tokens or (end % self.chunk_tokens == 0 and not self.keep_cross_chunk):
            y[:-1] = x[1:]
            y[-1] = IGNORE_INDEX
        else:
            y[:] = self.data[start + 1:end + 1]
        return x, y

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(self.micro_batch):
            x, y = self._window(self.position)
            xs.append(x)
            ys.append(y)
            self.position += self.seq_len
            if self.position >= self.n_tokens:
                self.position = 0
                self.epoch += 1
                warnings.warn(f"train.bin exhausted ({self.n_tokens:,} tokens); wrapping around to epoch "
                              f"{self.epoch}: training data now repeats", stacklevel=2)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    def state_dict(self) -> dict:
        return {"position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        pos, epoch = int(state["position"]), int(state["epoch"])
        if not 0 <= pos < self.n_tokens or pos % self.seq_len:
            raise ValueError(f"BatchReader.load_state_dict: position {pos} is not a window start of this "
                             f"train.bin ({self.n_tokens:,} tokens, seq_len {self.seq_len}); the bins or "
                             f"seq_len changed since the checkpoint")
        if epoch < 0:
            raise ValueError(f"BatchReader.load_state_dict: epoch {epoch} < 0")
        self.position, self.epoch = pos, epoch


def val_batches(bins_dir: str | os.PathLike, domain: str, seq_len: int, n_seqs: int,
                batch_size: int, windows: Literal["disjoint", "overlapping"] = "disjoint",
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first n_seqs windows of seq_len + 1 tokens of val_<domain>.bin, as (x, y) = (window[:-1],
    window[1:]) int64 batches of up to batch_size rows. Deterministic. `windows` "disjoint": no token
    in two windows (stride seq_len + 1); "overlapping": stride seq_len, so every token but the first is
    a target once (the CART authors' eval_perplexity)."""
    if windows not in ("disjoint", "overlapping"):
        raise ValueError(f"windows: 'disjoint' or 'overlapping', got {windows!r}")
    if seq_len < 1 or n_seqs < 1 or batch_size < 1:
        raise ValueError(f"val_batches: seq_len ({seq_len}), n_seqs ({n_seqs}) and batch_size ({batch_size}) "
                         f"must be >= 1")
    meta = read_meta(bins_dir)
    if domain not in meta["domains"]:
        raise ValueError(f"unknown domain {domain!r}; the bins have {meta['domains']}")
    data = open_bin(bins_dir, f"val_{domain}", verify_hash=True, meta=meta)
    stride = seq_len + 1 if windows == "disjoint" else seq_len
    need = (n_seqs - 1) * stride + seq_len + 1
    if len(data) < need:
        raise ValueError(f"val_{domain}.bin has {len(data):,} tokens; {n_seqs} {windows} windows of seq_len + 1 = "
                         f"{seq_len + 1} tokens need {need:,}: raise corpus.val_tokens or lower "
                         f"train.eval_seqs / seq_len")
    tokens = torch.from_numpy(np.asarray(data[:need], dtype=np.int64))
    rows = tokens.unfold(0, seq_len + 1, stride)
    return [(rows[i:i + batch_size, :-1].clone(), rows[i:i + batch_size, 1:].clone())
            for i in range(0, n_seqs, batch_size)]


# ---------------------------------------------------------------------------------------------
# writing (the bins stage)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BinsParams:
    chunk_tokens: int
    mixture: dict[str, float]  # fixed_cycle: whole chunks of each domain per cycle
    seed: int
    workers: int
    dtype: Literal["auto", "uint16", "uint32"]
    stream: Literal["shuffled", "fixed_cycle"] = "shuffled"
    document_format: Literal["eos", "bos_eos"] = "eos"

    def __post_init__(self):
        if self.chunk_tokens < 2:
            raise ValueError(f"chunk_tokens: must be >= 2, got {self.chunk_tokens}")
        if self.workers < 1:
            raise ValueError(f"workers: must be >= 1, got {self.workers}")
        if not self.mixture:
            raise ValueError("mixture: empty; give a weight per corpus domain")
        for d, w in self.mixture.items():
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"mixture.{d}: weights must be finite and >= 0, got {w}")
        if sum(self.mixture.values()) <= 0:
            raise ValueError("mixture: the weights sum to 0; give at least one domain a positive weight")
        if self.stream == "fixed_cycle":
            for d, w in self.mixture.items():
                if w != int(w):
                    raise ValueError(f"mixture.{d}: stream fixed_cycle takes whole chunks per cycle "
                                     f"(e.g. 3, 3, 4), got {w}")


def bins_params(params: dict) -> BinsParams:
    return build(BinsParams, section(params, "bins"), "bins")


def token_dtype(name: str, vocab_size: int) -> np.dtype:
    """uint16 when every id (< vocab_size) fits, else uint32; a forced dtype that cannot hold the
    vocabulary is an error."""
    if name == "auto":
        return np.dtype(np.uint16 if vocab_size - 1 <= np.iinfo(np.uint16).max else np.uint32)
    dt = np.dtype(name)
    if vocab_size - 1 > np.iinfo(dt).max:
        raise ValueError(f"bins.dtype: {name} cannot hold token ids up to {vocab_size - 1:,} (tokenizer vocab "
                         f"{vocab_size:,}; max {np.iinfo(dt).max:,}); use uint32 or auto")
    return dt


_worker_sp = None


def _worker_init(model_path: str) -> None:
    global _worker_sp
    from .tokenizer import load_tokenizer
    _worker_sp = load_tokenizer(model_path)


def _encode_batch(args: tuple[list[str], int | None, int, str]) -> np.ndarray:
    """Documents as [BOS +] tokens + EOS (no BOS when `bos` is None)."""
    texts, bos, eos, dtype = args
    ids = _worker_sp.encode(texts, out_type=int)
    head = 0 if bos is None else 1
    out = np.empty(sum(head + len(t) + 1 for t in ids), dtype=dtype)
    i = 0
    for t in ids:
        if bos is not None:
            out[i] = bos
        i += head
        out[i:i + len(t)] = t
        out[i + len(t)] = eos
        i += len(t) + 1
    return out


def _batched(texts, size: int):
    buf = []
    for t in texts:
        buf.append(t)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _write_stream(texts, path: Path, bos: int | None, eos: int, dtype: np.dtype, pool, bar,
                  batch_docs: int = 256) -> int:
    """Tokenize documents ([BOS before and] EOS after each) into a raw token file; returns the token count."""
    jobs = ((b, bos, eos, dtype.str) for b in _batched(texts, batch_docs))
    results = pool.imap(_encode_batch, jobs) if pool is not None else map(_encode_batch, jobs)
    n = 0
    with open(path, "wb") as f:
        for arr in results:
            f.write(arr.tobytes())
            n += len(arr)
            bar.update(len(arr))
    return n


def _require_chunks(available_chunks: dict[str, int], weights: dict[str, float], chunk_tokens: int) -> None:
    for d, n in available_chunks.items():
        if weights[d] > 0 and n == 0:
            raise ValueError(f"bins: domain {d!r} has fewer training tokens than one chunk "
                             f"(bins.chunk_tokens={chunk_tokens}); raise corpus.train_tokens, lower "
                             f"bins.chunk_tokens, or give it mixture weight 0")


def plan_mixture(available_chunks: dict[str, int], weights: dict[str, float], chunk_tokens: int) -> dict[str, int]:
    """Chunks per domain honouring the normalised weights: the largest total the scarcest domain
    (relative to its weight) allows; weight-0 domains contribute none."""
    _require_chunks(available_chunks, weights, chunk_tokens)
    total_w = sum(weights.values())
    w = {d: weights[d] / total_w for d in available_chunks}
    total = min(n / w[d] for d, n in available_chunks.items() if w[d] > 0)
    return {d: min(available_chunks[d], int(math.floor(total * w[d] + 1e-9))) for d in available_chunks}


def shuffled_order(used: dict[str, int], seed: int) -> np.ndarray:
    """(n_chunks, 2) int32 rows (domain index, chunk index): the first used[d] chunks of every
    domain, in a seeded random order."""
    order = np.concatenate([np.stack([np.full(n, i, np.int32), np.arange(n, dtype=np.int32)], 1)
                            for i, n in enumerate(used.values())])
    return order[np.random.default_rng(seed).permutation(len(order))]


def fixed_cycle_order(available_chunks: dict[str, int], counts: dict[str, int], chunk_tokens: int) -> np.ndarray:
    """(n_chunks, 2) int32 rows (domain index, chunk index), the CART authors' stream
    (data/build_bins.py interleave_stage2): the cycle of counts[d] chunks of each domain, in
    domain order, repeated, each domain's chunks in source order, stopping at the first chunk a
    domain no longer has (possibly mid-cycle)."""
    _require_chunks(available_chunks, counts, chunk_tokens)
    available, per_cycle = list(available_chunks.values()), [counts[d] for d in available_chunks]
    cycle = [i for i, c in enumerate(per_cycle) for _ in range(c)]
    full = min(n // c for n, c in zip(available, per_cycle) if c > 0)
    taken = [full * c for c in per_cycle]
    tail = []
    for i in cycle:  # the last, partial cycle
        if taken[i] == available[i]:
            break
        tail.append(i)
        taken[i] += 1
    domain = np.array(cycle * full + tail, dtype=np.int32)
    chunk = np.zeros_like(domain)
    for i in range(len(available)):
        rows = domain == i
        chunk[rows] = np.arange(np.count_nonzero(rows), dtype=np.int32)
    return np.stack([domain, chunk], 1)


def build_bins(params: BinsParams, corpus_dir: str | os.PathLike, tok_dir: str | os.PathLike,
               out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Tokenize the corpus into out_dir (written atomically; meta.json last)."""
    import json
    import multiprocessing as mp

    from tqdm import tqdm

    from .corpus import atomic_dir, corpus_file, iter_texts, read_manifest
    from ..io import require_free_space
    from .tokenizer import MODEL_FILE, load_tokenizer, tokenizer_info

    # ---- everything that can be wrong is checked before any tokenizing ----
    corpus_dir, tok_dir, out_dir = Path(corpus_dir), Path(tok_dir), Path(out_dir)
    manifest = read_manifest(corpus_dir)
    doms = list(manifest["domains"])
    info = tokenizer_info(tok_dir)
    sp = load_tokenizer(tok_dir)
    model_sha = sha256_file(tok_dir / MODEL_FILE)
    if model_sha != info["sha256"]:
        raise ValueError(f"{tok_dir / MODEL_FILE} does not match tokenizer.json's sha256; re-run the tokenizer stage")
    vocab, eos = sp.get_piece_size(), sp.eos_id()
    if vocab != info["vocab_size"] or eos < 0:
        raise ValueError(f"{tok_dir}: tokenizer.json disagrees with tokenizer.model; re-run the tokenizer stage")
    bos = None if params.document_format == "eos" else sp.bos_id()
    if bos is not None and bos < 0:
        raise ValueError(f"bins.document_format: bos_eos needs a tokenizer with a BOS id; {tok_dir} has none "
                         f"(use eos)")
    dtype = token_dtype(params.dtype, vocab)
    missing, extra = sorted(set(doms) - set(params.mixture)), sorted(set(params.mixture) - set(doms))
    if missing or extra:
        raise ValueError(f"bins.mixture: needs a weight for every corpus domain {doms}"
                         + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
    for d in doms:
        for split in ("train", "val"):
            if not corpus_file(corpus_dir, d, split).is_file():
                raise FileNotFoundError(f"{corpus_file(corpus_dir, d, split)} is missing; re-run the corpus stage")
            if manifest["domains"][d][split]["docs"] == 0 and (split == "val" or params.mixture[d] > 0):
                role = manifest["domains"][d].get("role", "train")
                hint = f"give it bins.mixture.{d}: 0 (an evaluation-only domain)" if role == "eval" else \
                    f"fix corpus.domains.{d}"
                raise ValueError(f"corpus domain {d!r} has no {split} documents; {hint}")
    bpt = info["bytes_per_token"]
    est_tokens = {d: sum(manifest["domains"][d][s]["bytes"] for s in ("train", "val")) / bpt.get(d, 1.0)
                  for d in doms}
    # per-domain training streams + train.bin + val bins, with a 25% margin
    require_free_space(out_dir.parent, int(1.25 * 2 * sum(est_tokens.values()) * dtype.itemsize), "bins")

    # ---- tokenize ----
    ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
    pool = ctx.Pool(params.workers, _worker_init, (str(tok_dir / MODEL_FILE),)) if params.workers > 1 else None
    if pool is None:
        _worker_init(str(tok_dir / MODEL_FILE))
    meta_files: dict[str, dict] = {}
    stream_tokens: dict[str, int] = {}
    val_tokens: dict[str, int] = {}
    try:
        with atomic_dir(out_dir) as tmp:
            bar = tqdm(total=int(sum(est_tokens.values())), desc="bins: tokenize", unit="tok", disable=not progress,
                       dynamic_ncols=True, mininterval=0.5)
            for d in doms:
                bar.set_postfix_str(d)
                n = _write_stream(iter_texts(corpus_dir, d, "val"), tmp / f"val_{d}.bin", bos, eos, dtype, pool, bar)
                val_tokens[d] = n
                stream_tokens[d] = _write_stream(iter_texts(corpus_dir, d, "train"), tmp / f".stream_{d}.tmp", bos,
                                                 eos, dtype, pool, bar)
            bar.close()
            if pool is not None:
                pool.close()

            # ---- interleave chunks by the mixture: pre-shuffled, or the authors' fixed cycle ----
            C = params.chunk_tokens
            available = {d: stream_tokens[d] // C for d in doms}
            if params.stream == "fixed_cycle":
                chunk_map = fixed_cycle_order(available, {d: int(params.mixture[d]) for d in doms}, C)
            else:
                chunk_map = shuffled_order(plan_mixture(available, params.mixture, C), params.seed)
            used = {d: int(np.count_nonzero(chunk_map[:, 0] == i)) for i, d in enumerate(doms)}
            n_chunks = len(chunk_map)
            out = np.memmap(tmp / TRAIN_FILE, dtype=dtype, mode="w+", shape=(n_chunks * C,)).reshape(n_chunks, C)
            block = max(1, (64 << 20) // (C * dtype.itemsize))  # copy ~64 MB of chunks at a time
            for i, d in enumerate(tqdm(doms, desc="bins: interleave", disable=not progress)):
                if used[d] == 0:
                    continue
                src = np.memmap(tmp / f".stream_{d}.tmp", dtype=dtype, mode="r",
                                shape=(stream_tokens[d],))[:used[d] * C].reshape(used[d], C)
                rows = np.nonzero(chunk_map[:, 0] == i)[0]
                for s in range(0, len(rows), block):
                    r = rows[s:s + block]
                    out[r] = src[chunk_map[r, 1]]
                del src
            out.flush()
            del out
            for d in doms:
                (tmp / f".stream_{d}.tmp").unlink()
            np.save(tmp / CHUNK_MAP_FILE, chunk_map)

            # ---- meta.json, last ----
            for fname in [TRAIN_FILE] + [f"val_{d}.bin" for d in doms]:
                size = (tmp / fname).stat().st_size
                meta_files[fname] = {"tokens": size // dtype.itemsize, "bytes": size,
                                     "sha256": sha256_file(tmp / fname)}
            total_w = sum(params.mixture.values())
            meta = {
                "format": FORMAT_VERSION, "dtype": dtype.name, "vocab_size": vocab, "chunk_tokens": C,
                "tokenizer_sha256": model_sha, "eos_id": eos, "domains": doms,
                "stream": params.stream, "document_format": params.document_format,
                "source": {d: manifest["domains"][d]["source"] for d in doms},
                "tokens": {d: used[d] * C for d in doms},
                "available_tokens": stream_tokens, "val_tokens": val_tokens,
                "mixture": {d: params.mixture[d] / total_w for d in doms},
                "chunks": used, "n_chunks": n_chunks, "seed": params.seed,
                "chunk_map": {"file": CHUNK_MAP_FILE, "sha256": sha256_file(tmp / CHUNK_MAP_FILE)},
                "files": meta_files,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    finally:
        if pool is not None:
            pool.terminate()
    return meta
