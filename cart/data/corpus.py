"""Corpus: text per domain, split into train and validation, written as JSONL.

Layout written by the corpus stage (`python -m pipeline.corpus`):

    data/corpus/manifest.json              what was gathered (source, docs, words, bytes, sha256)
    data/corpus/<domain>/train.jsonl       one {"text": ...} object per line
    data/corpus/<domain>/val.jsonl

`corpus.domains.<domain>.source` picks where a domain's text comes from:

* ``builtin`` - text the project generates itself (`cart/data/builtin_text.py`), so `dvc repro` works anywhere offline: a seeded
  narrow-vocabulary story generator (the TinyStories role), and natural-language text shipped with
  every Python install (the wikipedia role: the `pydoc_data` reference topics plus module and class
  docstrings of the standard library; the fineweb_edu role: its function and method docstrings).
* ``local`` - text / JSON(L) / parquet files, read through `datasets.load_dataset("text"|"json"|
  "parquet", data_files=...)`: the same code path as the hub.
* ``hf`` - the real corpora, streamed with `datasets.load_dataset(name, config, split=...,
  streaming=True)` (the spec's names are in `HF_DEFAULTS`).

Sizes: `corpus.train_tokens` / `corpus.val_tokens` are approximate per-domain targets. Before a
tokenizer exists a document's tokens are ESTIMATED as whitespace words x 1.3 (`TOKENS_PER_WORD`);
documents are taken in stream order until the estimate reaches the target (or the source runs out).
Where a domain has no separate validation source, each document goes to validation with probability
val/(train+val), decided by a hash of (corpus.seed, document index): deterministic and disjoint; or,
with `holdout: tail` (local files), validation is the LAST documents of the source (e.g. the last
Wikipedia articles) and training the ones before them. Exact duplicate texts are dropped, so train
and val never share a document; with `unique_by: <field>` (local JSON), so is every document whose
field repeats an earlier one's (two Wikipedia dumps hold other revisions of the same titles). A domain with `role: eval` is held out entirely: all of its text
goes to validation (an out-of-domain perplexity set), none to training.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

from .builtin_text import generate_stories, stdlib_documents
from ..params import build, section

SOURCES = ("builtin", "local", "hf")
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
TOKENS_PER_WORD = 1.3          # the pre-tokenizer size estimate: tokens ~ whitespace words x 1.3
_DOMAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_FORMAT_BY_SUFFIX = {".txt": "text", ".text": "text", ".raw": "text", ".json": "json", ".jsonl": "json",
                     ".ndjson": "json", ".parquet": "parquet"}
_COMPRESSION_SUFFIXES = (".xz", ".gz", ".bz2", ".zst", ".lz4")  # `datasets` decompresses these itself

# The paper's corpora (docs/cart.md, Data), used by `source: hf` unless params override them.
# val_split None: validation is carved from the training stream by hash (the paper's held-out
# "shard 40" / "shard 97" are the authors' own sharding and cannot be recovered).
HF_DEFAULTS: dict[str, dict] = {
    "tinystories": {"name": "roneneldan/TinyStories", "config": None, "split": "train",
                    "val_split": "validation", "text_field": "text"},
    "wikipedia": {"name": "wikimedia/wikipedia", "config": "20231101.en", "split": "train",
                  "val_split": None, "text_field": "text"},
    "fineweb_edu": {"name": "HuggingFaceFW/fineweb-edu", "config": "sample-10BT", "split": "train",
                    "val_split": None, "text_field": "text"},
}
BUILTIN_DOMAINS = ("tinystories", "wikipedia", "fineweb_edu")

# keys each source may set (besides `source`); anything else set is an error naming the key
_SOURCE_KEYS = {
    "builtin": set(),
    "local": {"train_files", "val_files", "format", "sample_by", "text_field", "holdout", "unique_by"},
    "hf": {"name", "config", "split", "val_split", "text_field"},
}


# ---------------------------------------------------------------------------------------------
# params
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DomainSource:
    """One `corpus.domains.<domain>` entry. Keys a source does not use must be left out."""
    source: Literal["builtin", "local", "hf"]
    train_files: str | list[str] | None = None     # local: path(s) or glob(s), relative to the cwd
    val_files: str | list[str] | None = None       # local: validation file(s); absent: carved by hash
    format: Literal["text", "json", "parquet"] | None = None   # local: absent: from the extension
    sample_by: Literal["line", "paragraph", "document"] | None = None  # local text: absent: line
    text_field: str | None = None                  # local json/parquet, hf: absent: "text"
    name: str | None = None                        # hf: dataset (absent: HF_DEFAULTS[domain])
    config: str | None = None                      # hf: configuration name
    split: str | None = None                       # hf: training split
    val_split: str | None = None                   # hf: validation split (absent: carved by hash)
    holdout: Literal["hash", "tail"] | None = None # local without val_files: how val is carved (absent: hash)
    unique_by: str | None = None                   # local json/parquet: drop a document whose field repeats
    role: Literal["train", "eval"] = "train"       # eval: validation text only (out-of-domain PPL)

    def __post_init__(self):
        allowed = _SOURCE_KEYS[self.source]
        for key in ("train_files", "val_files", "format", "sample_by", "text_field", "name", "config",
                    "split", "val_split", "holdout", "unique_by"):
            if getattr(self, key) is not None and key not in allowed:
                users = [s for s, keys in _SOURCE_KEYS.items() if key in keys]
                raise ValueError(f"{key}: only used by source {' / '.join(users)}, not {self.source!r}; "
                                 f"remove it")
        if self.source == "local":
            if not self.train_files:
                raise ValueError("train_files: required for source 'local' (a path, glob or list of them)")
            if self.holdout is not None and self.val_files:
                raise ValueError("holdout: carves validation out of train_files; not used with val_files")
            if self.sample_by is not None and self.format not in (None, "text"):
                raise ValueError(f"sample_by: only used by format 'text', not {self.format!r}")
            if self.unique_by is not None and self.format == "text":
                raise ValueError("unique_by: names a field of JSON or parquet rows; format 'text' has none")
        for key in ("train_files", "val_files"):
            v = getattr(self, key)
            if isinstance(v, list) and not v:
                raise ValueError(f"{key}: empty list")

    @staticmethod
    def files(value: str | list[str] | None) -> list[str]:
        return [] if value is None else [value] if isinstance(value, str) else list(value)


@dataclass(frozen=True)
class CorpusParams:
    seed: int
    train_tokens: int        # approximate per-domain target (whitespace words x 1.3)
    val_tokens: int          # approximate per-domain target
    domains: dict[str, DomainSource]

    def __post_init__(self):
        if self.train_tokens < 1:
            raise ValueError(f"train_tokens: must be >= 1, got {self.train_tokens}")
        if self.val_tokens < 1:
            raise ValueError(f"val_tokens: must be >= 1, got {self.val_tokens}")
        if not self.domains:
            raise ValueError("domains: at least one domain is needed")
        for name in self.domains:
            if not _DOMAIN_NAME.match(str(name)):
                raise ValueError(f"domains.{name}: domain names must match [a-z0-9_]+ (they name files)")


def corpus_params(params: dict) -> CorpusParams:
    return build(CorpusParams, section(params, "corpus"), "corpus")


# ---------------------------------------------------------------------------------------------
# atomic directory output (shared by the data stages)
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; on success swap it in as `path`.

    On any exception the temporary directory is removed and `path` is left as it was. The swap
    is two renames (old -> trash, tmp -> path): a kill between them leaves `path` absent, never
    half-written, so a later stage cannot trust a partial output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (*path.parent.glob(f".{glob.escape(path.name)}.*.tmp"),
                  *path.parent.glob(f".{glob.escape(path.name)}.*.old")):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed run (DVC runs one stage at a time)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        trash = None
        if path.exists() or path.is_symlink():
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, trash / path.name)
        os.replace(tmp, path)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# reading a written corpus
# ---------------------------------------------------------------------------------------------

def read_manifest(corpus_dir: str | os.PathLike) -> dict:
    path = Path(corpus_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"corpus manifest not found: {path}; run the corpus stage "
                                f"(`dvc repro corpus` or `python -m pipeline.corpus`)")
    return json.loads(path.read_text())


def corpus_file(corpus_dir: str | os.PathLike, domain: str, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(corpus_dir) / domain / f"{split}.jsonl"


def iter_texts(corpus_dir: str | os.PathLike, domain: str, split: str) -> Iterator[str]:
    """The documents of one domain and split, in corpus order.

    The corpus stage writes UTF-8 (JSON escapes anything else), so bytes that are not UTF-8 mean a
    damaged or hand-edited file: rejected, not replaced (replacing would silently train the
    tokenizer and the model on U+FFFD), with one message naming the file and the byte offset."""
    path = corpus_file(corpus_dir, domain, split)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}; re-run the corpus stage")
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not UTF-8 at byte {offset + e.start} ({e.reason}); the corpus stage "
                                 f"writes UTF-8, so the file is damaged: re-run the corpus stage") from None
            offset += len(raw)
            if line.strip():
                yield json.loads(line)["text"]


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------

def approx_tokens(text: str) -> float:
    """The pre-tokenizer size estimate: whitespace words x TOKENS_PER_WORD."""
    return len(text.split()) * TOKENS_PER_WORD


def stream_documents(path_or_name: str, config: str | None = None, split: str = "train",
                     text_field: str = "text", data_files=None, unique_by: str | None = None,
                     **builder_kwargs) -> Iterator[str]:
    """Texts of one split through `datasets.load_dataset(..., streaming=True)`.

    The one loader behind both `local` (path_or_name = "text" | "json" | "parquet", data_files =
    local files) and `hf` (a hub dataset name and config): the same code path, so the hub loader is
    tested by pointing it at local files. `unique_by`: a row whose value of that field was seen in an
    earlier row is skipped."""
    import datasets  # slow import, only where used
    kwargs = dict(builder_kwargs)
    if data_files is not None:
        kwargs["data_files"] = data_files
    ds = datasets.load_dataset(path_or_name, config, split=split, streaming=True, **kwargs)
    seen_keys: set = set()
    for i, row in enumerate(ds):
        if text_field not in row:
            raise ValueError(f"{path_or_name}: rows have no field {text_field!r} (fields: {sorted(row)}); "
                             f"set text_field")
        if unique_by is not None:
            if unique_by not in row:
                raise ValueError(f"{path_or_name}: row {i} has no field {unique_by!r} (fields: {sorted(row)}); "
                                 f"fix unique_by")
            if row[unique_by] in seen_keys:
                continue
            seen_keys.add(row[unique_by])
        text = row[text_field]
        if text is None:
            continue
        if not isinstance(text, str):
            raise ValueError(f"{path_or_name}: field {text_field!r} of row {i} is {type(text).__name__}, "
                             f"not text")
        yield text


def _local_format(spec: DomainSource, files: list[str], where: str) -> str:
    if spec.format is not None:
        return spec.format
    suffixes = {_FORMAT_BY_SUFFIX.get(_data_suffix(f)) for f in files}
    if None in suffixes or len(suffixes) != 1:
        raise ValueError(f"{where}.format: cannot infer the format of {files} from the file extension "
                         f"(known: {sorted(_FORMAT_BY_SUFFIX)}); set format: text | json | parquet")
    return suffixes.pop()


def _data_suffix(path: str) -> str:
    """The suffix that names a file's format, under a compression suffix (`x.jsonl.xz` -> `.jsonl`)."""
    p = Path(path.lower())
    return p.with_suffix("").suffix if p.suffix in _COMPRESSION_SUFFIXES else p.suffix


def _expand(patterns: list[str], where: str) -> list[str]:
    out = []
    for pat in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pat))) if glob.has_magic(pat) else [os.path.expanduser(pat)]
        if not matches:
            raise FileNotFoundError(f"{where}: no file matches {pat!r} (cwd {os.getcwd()})")
        for m in matches:
            if not Path(m).is_file():
                raise FileNotFoundError(f"{where}: file not found: {m} (cwd {os.getcwd()})")
            if Path(m).stat().st_size == 0:
                raise ValueError(f"{where}: file is empty: {m}")
        out.extend(matches)
    return out


@dataclass(frozen=True)
class _Plan:
    """A resolved domain: how to stream its train (and optionally val) documents."""
    train: Callable[[], Iterable[str]]
    val: Callable[[], Iterable[str]] | None
    describe: dict
    size: Callable[[], float] | None = None   # approx tokens of a finite source, when cheap to know
    holdout: str = "hash"                      # how val is carved from `train` when `val` is None


def _offline_datasets_env() -> None:
    # local files never need the hub; make sure nothing tries (must precede `import datasets`)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def plan_domain(domain: str, spec: DomainSource, seed: int) -> _Plan:
    """Check a domain's source (files exist, names known) and say how to read it: cheap, no reading."""
    where = f"corpus.domains.{domain}"
    if spec.source == "builtin":
        if domain not in BUILTIN_DOMAINS:
            raise ValueError(f"{where}.source: 'builtin' has text for {list(BUILTIN_DOMAINS)} only, not "
                             f"{domain!r}; use source local or hf")
        if domain == "tinystories":
            return _Plan(lambda: generate_stories(seed), None, {"generator": "stories", "seed": seed})
        return _Plan(lambda: stdlib_documents()[domain], None,
                     {"text": "python stdlib docs", "python": sys.version.split()[0]},
                     size=lambda: sum(approx_tokens(t) for t in stdlib_documents()[domain]))
    if spec.source == "local":
        train_files = _expand(spec.files(spec.train_files), f"{where}.train_files")
        val_files = _expand(spec.files(spec.val_files), f"{where}.val_files") if spec.val_files else None
        fmt = _local_format(spec, train_files + (val_files or []), where)
        field = "text" if fmt == "text" else (spec.text_field or "text")
        kwargs = {"sample_by": spec.sample_by} if spec.sample_by else {}
        if spec.unique_by is not None:
            if fmt == "text":
                raise ValueError(f"{where}.unique_by: names a field of JSON or parquet rows; {train_files} "
                                 f"are plain text")
            kwargs["unique_by"] = spec.unique_by
        _offline_datasets_env()

        def reader(files):
            return lambda: stream_documents(fmt, None, "train", field, data_files=files, **kwargs)
        holdout = spec.holdout or "hash"
        return _Plan(reader(train_files), reader(val_files) if val_files else None,
                     {"format": fmt, "train_files": train_files, "val_files": val_files, "text_field": field,
                      **kwargs, **({"holdout": holdout} if not val_files else {})}, holdout=holdout)
    # hf
    base = HF_DEFAULTS.get(domain, {})
    name = spec.name or base.get("name")
    if not name:
        raise ValueError(f"{where}.name: required for source 'hf' (no default dataset for domain "
                         f"{domain!r}; defaults exist for {sorted(HF_DEFAULTS)})")
    use_base = spec.name is None or spec.name == base.get("name")
    config = spec.config if spec.config is not None else (base.get("config") if use_base else None)
    split = spec.split or (base.get("split") if use_base else None) or "train"
    val_split = spec.val_split if spec.val_split is not None else (base.get("val_split") if use_base else None)
    field = spec.text_field or base.get("text_field") or "text"
    return _Plan(lambda: stream_documents(name, config, split, field),
                 (lambda: stream_documents(name, config, val_split, field)) if val_split else None,
                 {"name": name, "config": config, "split": split, "val_split": val_split, "text_field": field})


def _unit(seed: int, index: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


class _SplitWriter:
    def __init__(self, path: Path, target: float):
        self.path, self.target = path, target
        self.f = open(path, "w", encoding="utf-8")
        self.h = hashlib.sha256()
        self.docs = self.words = self.bytes = 0
        self.approx = 0.0

    @property
    def full(self) -> bool:
        return self.approx >= self.target

    def add(self, text: str) -> float:
        line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
        data = line.encode("utf-8")
        self.f.write(line)
        self.h.update(data)
        n = len(text.split())
        self.docs += 1
        self.words += n
        self.bytes += len(text.encode("utf-8"))
        self.approx += n * TOKENS_PER_WORD
        return n * TOKENS_PER_WORD

    def close(self) -> dict:
        self.f.close()
        return {"docs": self.docs, "words": self.words, "approx_tokens": round(self.approx),
                "bytes": self.bytes, "sha256": self.h.hexdigest()}


def gather_domain(plan: _Plan, out_dir: Path, train_tokens: int, val_tokens: int, seed: int,
                  domain: str = "", progress: bool = False, role: str = "train") -> dict:
    """Stream a domain's documents into out_dir/{train,val}.jsonl up to the approximate targets
    (role "eval": validation only, from the val source if there is one, else the train files)."""
    from tqdm import tqdm
    out_dir.mkdir(parents=True, exist_ok=True)
    writers = {s: _SplitWriter(out_dir / f"{s}.jsonl", t) for s, t in (("train", train_tokens), ("val", val_tokens))}
    seen: set[bytes] = set()
    bar = tqdm(total=train_tokens + val_tokens, desc=f"corpus {domain}", unit="tok~", disable=not progress,
               dynamic_ncols=True, mininterval=0.5)

    def accept(text: str) -> str | None:
        text = text.strip()
        if not text:
            return None
        key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if key in seen:
            return None
        seen.add(key)
        return text

    try:
        if role == "eval":  # an out-of-domain set: everything to validation, nothing to train
            va = writers["val"]
            for raw in (plan.val or plan.train)():
                if va.full:
                    break
                text = accept(raw)
                if text is not None:
                    bar.update(round(va.add(text)))
        elif plan.val is None and plan.holdout == "tail":  # val = the source's last documents
            docs = [t for t in map(accept, plan.train()) if t is not None]
            first_val = len(docs)
            approx = 0.0
            while first_val > 1 and approx < val_tokens:
                first_val -= 1
                approx += len(docs[first_val].split()) * TOKENS_PER_WORD
            for text in docs[:first_val]:
                if writers["train"].full:
                    break
                bar.update(round(writers["train"].add(text)))
            for text in docs[first_val:]:
                bar.update(round(writers["val"].add(text)))
        elif plan.val is None:  # one stream, carved by hash
            rate = val_tokens / (train_tokens + val_tokens)
            size = plan.size() if plan.size is not None else None
            if size is not None and size < train_tokens + val_tokens:
                rate = min(0.5, val_tokens / size)  # a small finite source: fill val first, train gets the rest
            tr, va = writers["train"], writers["val"]
            for i, raw in enumerate(plan.train()):
                if tr.full and va.full:
                    break
                text = accept(raw)
                if text is None:
                    continue
                to_val = (_unit(seed, i) < rate and not va.full) or tr.full
                bar.update(round((va if to_val else tr).add(text)))
        else:
            for split, stream in (("val", plan.val), ("train", plan.train)):
                w = writers[split]
                for raw in stream():
                    if w.full:
                        break
                    text = accept(raw)
                    if text is not None:
                        bar.update(round(w.add(text)))
    finally:
        bar.close()
        stats = {s: w.close() for s, w in writers.items()}
    for split in SPLITS if role == "train" else ("val",):
        if stats[split]["docs"] == 0:
            raise ValueError(f"corpus.domains.{domain}: no {split} documents from {plan.describe} "
                             f"(empty source?)")
    return stats


def build_corpus(params: CorpusParams, out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Gather every domain into out_dir (written atomically: all of it, or nothing)."""
    plans = {d: plan_domain(d, spec, params.seed) for d, spec in params.domains.items()}  # validate first
    manifest = {"seed": params.seed, "train_tokens": params.train_tokens, "val_tokens": params.val_tokens,
                "token_estimate": f"whitespace words x {TOKENS_PER_WORD}", "domains": {}}
    with atomic_dir(out_dir) as tmp:
        for domain, plan in plans.items():
            role = params.domains[domain].role
            stats = gather_domain(plan, tmp / domain, params.train_tokens, params.val_tokens, params.seed,
                                  domain, progress, role)
            manifest["domains"][domain] = {"source": params.domains[domain].source, "role": role,
                                           "details": plan.describe, **stats}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # keeps the params' domain order
    return manifest
