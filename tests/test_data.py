"""Data stages: corpus sources (builtin / local / hf through `datasets`), the tokenizer, the token
bins and their reader (the API training and evaluation depend on), integrity checks, bad inputs.

The real samples in ../shared/data (never copied into the repo) are used where present."""
import copy
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # nothing here may touch a hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cart.data.corpus import DomainSource, build_corpus, corpus_params, iter_texts, plan_domain, stream_documents
from cart.data.bins import (CHUNK_MAP_FILE, BatchReader, bins_params, build_bins, domains, open_bin, read_meta,
                       token_dtype, val_batches)
from cart.params import load_params
from cart.data.tokenizer import build_tokenizer, load_tokenizer, tokenizer_info, tokenizer_params

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PARAMS = load_params(ROOT / "params.yaml")
LLAMA_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"


def merged(section: str, **overrides) -> dict:
    """A params section from the repo's params.yaml with overrides (so the real schema is exercised)."""
    out = copy.deepcopy(PARAMS[section])
    out.update(overrides)
    return out


def cparams(**overrides):
    return corpus_params({"corpus": merged("corpus", **overrides)})


def tparams(**overrides):
    return tokenizer_params({"tokenizer": merged("tokenizer", **overrides)})


def bparams(**overrides):
    return bins_params({"bins": merged("bins", **overrides)})


def shared(*parts) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"real data sample not available: {path} (the workplace's ../shared/data beside the repo)")
    return path


def docs_of(corpus_dir, domain, split):
    return list(iter_texts(corpus_dir, domain, split))


# ---------------------------------------------------------------------------------------------
# one small builtin build shared by many tests
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("builtin")
    cp = cparams(train_tokens=40_000, val_tokens=12_000)
    manifest = build_corpus(cp, root / "corpus", progress=False)
    info = build_tokenizer(tparams(vocab_size=512), root / "corpus", root / "tokenizer", progress=False)
    meta = build_bins(bparams(chunk_tokens=256, workers=2), root / "corpus", root / "tokenizer", root / "bins",
                      progress=False)
    return {"root": root, "corpus": root / "corpus", "tok": root / "tokenizer", "bins": root / "bins",
            "manifest": manifest, "info": info, "meta": meta}


# ---------------------------------------------------------------------------------------------
# params
# ---------------------------------------------------------------------------------------------

def test_default_params_parse_and_profile_is_big_enough():
    cp, tp, bp = corpus_params(PARAMS), tokenizer_params(PARAMS), bins_params(PARAMS)
    assert list(cp.domains) == ["tinystories", "wikipedia", "fineweb_edu"]
    assert all(d.source == "builtin" for d in cp.domains.values())
    assert tp.kind == "train" and tp.vocab_size == 2048 and bp.chunk_tokens == 1024
    assert set(bp.mixture) == set(cp.domains)
    seq = PARAMS["stage2"]["run"]["seq_len"]
    assert bp.chunk_tokens % seq == 0 and bp.chunk_tokens % PARAMS["stage1"]["run"]["seq_len"] == 0


@pytest.mark.parametrize("section,bad,needle", [
    ("corpus", {"train_tokenz": 5}, "train_tokenz"),
    ("corpus", {"domains": {"tinystories": {"source": "ftp"}}}, "corpus.domains.tinystories.source"),
    ("corpus", {"domains": {"tinystories": {"source": "builtin", "train_files": "x.txt"}}}, "train_files"),
    ("corpus", {"domains": {"tinystories": {"source": "local"}}}, "train_files"),
    ("corpus", {"domains": {"tinystories": {"source": "builtin", "colour": 1}}}, "colour"),
    ("corpus", {"domains": {}}, "domains"),
    ("corpus", {"domains": {"Bad Name": {"source": "builtin"}}}, "Bad Name"),
    ("corpus", {"val_tokens": 0}, "val_tokens"),
    ("tokenizer", {"kind": "file", "file": None}, "tokenizer: file"),
    ("tokenizer", {"vocab_size": 100}, "vocab_size"),
    ("tokenizer", {"model_type": "wordpiece"}, "tokenizer.model_type"),
    ("bins", {"dtype": "int8"}, "bins.dtype"),
    ("bins", {"mixture": {"tinystories": -1.0}}, "mixture.tinystories"),
    ("bins", {"chunk_tokens": 1}, "chunk_tokens"),
    ("bins", {"shuffle": True}, "shuffle"),
])
def test_bad_params_name_the_key(section, bad, needle):
    build = {"corpus": cparams, "tokenizer": tparams, "bins": bparams}[section]
    with pytest.raises(ValueError) as e:
        build(**bad)
    assert needle in str(e.value)
    if "source" in needle:
        assert "builtin" in str(e.value) and "local" in str(e.value) and "hf" in str(e.value)  # lists valid ones


# ---------------------------------------------------------------------------------------------
# corpus sources
# ---------------------------------------------------------------------------------------------

def test_builtin_corpus_splits_are_disjoint_deterministic_and_distinct(built, tmp_path):
    corpus, manifest = built["corpus"], built["manifest"]
    assert list(manifest["domains"]) == ["tinystories", "wikipedia", "fineweb_edu"]
    texts = {}
    for d, m in manifest["domains"].items():
        assert m["source"] == "builtin"
        tr, va = docs_of(corpus, d, "train"), docs_of(corpus, d, "val")
        assert tr and va and len(tr) == m["train"]["docs"] and len(va) == m["val"]["docs"]
        assert not set(tr) & set(va), f"{d}: a document is in both train and val"
        assert m["train"]["approx_tokens"] >= 40_000 and m["val"]["approx_tokens"] >= 12_000
        texts[d] = set(tr) | set(va)
    assert not texts["wikipedia"] & texts["fineweb_edu"]  # the two stdlib roles get different material
    vocab = {w.strip('.,!?"\'').lower() for t in texts["tinystories"] for w in t.split()}
    assert 100 < len(vocab) < 600, f"story vocabulary should be narrow, got {len(vocab)} words"
    # same seed: byte-identical; another seed: different stories
    again = build_corpus(cparams(train_tokens=40_000, val_tokens=12_000), tmp_path / "a", progress=False)
    assert again["domains"]["tinystories"]["train"]["sha256"] == manifest["domains"]["tinystories"]["train"]["sha256"]
    assert again["domains"]["wikipedia"]["val"]["sha256"] == manifest["domains"]["wikipedia"]["val"]["sha256"]
    other = build_corpus(cparams(seed=1, train_tokens=40_000, val_tokens=12_000,
                                 domains={"tinystories": {"source": "builtin"}}), tmp_path / "b", progress=False)
    assert other["domains"]["tinystories"]["train"]["sha256"] != manifest["domains"]["tinystories"]["train"]["sha256"]


def _write_local_files(tmp: Path) -> dict[str, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    docs = {s: [f"{s} document number {i}: the quick brown fox jumps over the lazy dog." for i in range(n)]
            for s, n in (("train", 40), ("val", 10))}
    (tmp / "train.txt").write_text("\n".join(docs["train"]) + "\n\n")   # blank lines are dropped
    (tmp / "val.txt").write_text("\n".join(docs["val"]) + "\n")
    for s in ("train", "val"):
        (tmp / f"{s}.jsonl").write_text("".join(json.dumps({"body": t, "id": i}) + "\n"
                                                for i, t in enumerate(docs[s])))
        pq.write_table(pa.table({"text": docs[s], "n": list(range(len(docs[s])))}), tmp / f"{s}.parquet")
    return docs


@pytest.mark.parametrize("ext,extra", [("txt", {}), ("jsonl", {"text_field": "body"}), ("parquet", {})])
def test_local_source_reads_txt_jsonl_parquet(tmp_path, ext, extra):
    docs = _write_local_files(tmp_path)
    spec = {"source": "local", "train_files": str(tmp_path / f"train.{ext}"),
            "val_files": [str(tmp_path / f"val.{ext}")], **extra}
    m = build_corpus(cparams(train_tokens=10**9, val_tokens=10**9, domains={"loc": spec}), tmp_path / "c",
                     progress=False)
    assert docs_of(tmp_path / "c", "loc", "train") == docs["train"]   # every document, in file order
    assert docs_of(tmp_path / "c", "loc", "val") == docs["val"]
    assert m["domains"]["loc"]["details"]["format"] == {"txt": "text", "jsonl": "json", "parquet": "parquet"}[ext]


def test_local_source_without_val_files_is_carved_deterministically(tmp_path):
    docs = _write_local_files(tmp_path)
    spec = {"loc": {"source": "local", "train_files": [str(tmp_path / "train.jsonl")], "text_field": "body"}}
    build_corpus(cparams(train_tokens=10**9, val_tokens=10**9, domains=spec), tmp_path / "a", progress=False)
    tr, va = docs_of(tmp_path / "a", "loc", "train"), docs_of(tmp_path / "a", "loc", "val")
    assert va and tr and sorted(tr + va) == sorted(docs["train"]) and not set(tr) & set(va)
    build_corpus(cparams(train_tokens=10**9, val_tokens=10**9, domains=spec), tmp_path / "b", progress=False)
    assert docs_of(tmp_path / "b", "loc", "val") == va
    # size targets stop the stream early (approximate: whitespace words x 1.3)
    small = build_corpus(cparams(train_tokens=100, val_tokens=20, domains=spec), tmp_path / "s", progress=False)
    assert 100 <= small["domains"]["loc"]["train"]["approx_tokens"] < 100 + 20 * 1.3 + 1
    assert len(docs_of(tmp_path / "s", "loc", "train")) < len(docs["train"]) // 2


def test_hf_source_goes_through_load_dataset_with_name_and_splits(tmp_path):
    """The hub path (`load_dataset(name, config, split=..., streaming=True)`) pointed at a local
    dataset folder: `datasets` resolves it exactly as it resolves a hub repository."""
    repo = tmp_path / "fake_hub_dataset"
    repo.mkdir()
    train = [f"training story {i} about a cat." for i in range(30)]
    valid = [f"validation story {i} about a dog." for i in range(7)]
    (repo / "train.jsonl").write_text("".join(json.dumps({"story": t}) + "\n" for t in train))
    (repo / "validation.jsonl").write_text("".join(json.dumps({"story": t}) + "\n" for t in valid))
    spec = {"tinystories": {"source": "hf", "name": str(repo), "split": "train", "val_split": "validation",
                            "text_field": "story"}}
    m = build_corpus(cparams(train_tokens=10**9, val_tokens=10**9, domains=spec), tmp_path / "c", progress=False)
    assert docs_of(tmp_path / "c", "tinystories", "train") == train
    assert docs_of(tmp_path / "c", "tinystories", "val") == valid
    assert m["domains"]["tinystories"]["details"]["name"] == str(repo)
    # the loader function itself, with the builder-style call the local source uses
    assert list(stream_documents("json", None, "train", "story", data_files=str(repo / "train.jsonl"))) == train
    with pytest.raises(ValueError, match="no field 'text'"):
        list(stream_documents(str(repo), None, "train", "text"))


def test_hf_defaults_are_the_specs_corpora_and_planning_touches_nothing():
    plans = {d: plan_domain(d, DomainSource(source="hf"), 0).describe
             for d in ("tinystories", "wikipedia", "fineweb_edu")}
    assert plans["tinystories"] == {"name": "roneneldan/TinyStories", "config": None, "split": "train",
                                   "val_split": "validation", "text_field": "text"}
    assert (plans["wikipedia"]["name"], plans["wikipedia"]["config"]) == ("wikimedia/wikipedia", "20231101.en")
    assert (plans["fineweb_edu"]["name"], plans["fineweb_edu"]["config"]) == ("HuggingFaceFW/fineweb-edu",
                                                                               "sample-10BT")
    with pytest.raises(ValueError, match="corpus.domains.books.name"):
        plan_domain("books", DomainSource(source="hf"), 0)
    with pytest.raises(ValueError, match="builtin"):
        plan_domain("books", DomainSource(source="builtin"), 0)


def test_local_source_errors_name_the_key_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"corpus.domains.x.train_files.*nope\.txt"):
        build_corpus(cparams(domains={"x": {"source": "local", "train_files": str(tmp_path / "nope.txt")}}),
                     tmp_path / "c", progress=False)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match=r"corpus.domains.x.train_files: file is empty.*empty\.txt"):
        build_corpus(cparams(domains={"x": {"source": "local", "train_files": str(tmp_path / "empty.txt")}}),
                     tmp_path / "c", progress=False)
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    with pytest.raises(ValueError, match="corpus.domains.x: no train documents"):
        build_corpus(cparams(domains={"x": {"source": "local", "train_files": str(tmp_path / "blank.txt")}}),
                     tmp_path / "c", progress=False)
    (tmp_path / "a.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match="corpus.domains.x.format"):
        build_corpus(cparams(domains={"x": {"source": "local", "train_files": str(tmp_path / "a.csv")}}),
                     tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


def test_corpus_output_is_atomic(tmp_path):
    """A failure while gathering leaves the previous output untouched and no temporary directory."""
    good = tmp_path / "good.txt"
    good.write_text("".join(f"line {i} of a good file\n" for i in range(40)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"other": f"no text field {i}"}) + "\n" for i in range(5)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "sentinel").write_text("old")
    spec = {"a": {"source": "local", "train_files": str(good)}, "b": {"source": "local", "train_files": str(bad)}}
    with pytest.raises(ValueError, match="no field 'text'"):
        build_corpus(cparams(train_tokens=10**6, val_tokens=10**6, domains=spec), out, progress=False)
    assert (out / "sentinel").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.txt", "out"]


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200) | st.sampled_from(["", " ", "  a  ", "\n\n", "a\r\nb", "\t1234.5", "🤖 中文"]))
def test_trained_tokenizer_round_trips_any_text(built, text):
    sp = load_tokenizer(built["tok"])
    assert sp.decode(sp.encode(text)) == text


def test_tokenizer_json_describes_the_model(built):
    info = tokenizer_info(built["tok"])
    model = built["tok"] / "tokenizer.model"
    assert info["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert info["vocab_size"] == 512 == load_tokenizer(built["tok"]).get_piece_size()
    assert (info["kind"], info["bos_id"], info["eos_id"]) == ("train", 1, 2)
    assert list(info["bytes_per_token"]) == ["tinystories", "wikipedia", "fineweb_edu"]
    # measured on the validation text exactly as laid out in the validation bins (EOS after each doc)
    for d, bpt in info["bytes_per_token"].items():
        n_bytes = sum(len(t.encode()) for t in docs_of(built["corpus"], d, "val"))
        assert bpt == pytest.approx(n_bytes / built["meta"]["files"][f"val_{d}.bin"]["tokens"], rel=1e-12)
    assert info["bytes_per_token"]["tinystories"] > info["bytes_per_token"]["fineweb_edu"]  # simple text


def test_tokenizer_errors(built, tmp_path):
    (tmp_path / "junk.model").write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(ValueError, match="junk.model is not a SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        build_tokenizer(tparams(kind="file", file=str(tmp_path / "junk.model")), built["corpus"], tmp_path / "t",
                        progress=False)
    with pytest.raises(FileNotFoundError, match=r"tokenizer.file: not found.*missing.model"):
        build_tokenizer(tparams(kind="file", file=str(tmp_path / "missing.model")), built["corpus"],
                        tmp_path / "t", progress=False)
    with pytest.raises(FileNotFoundError, match="run the tokenizer stage"):
        load_tokenizer(tmp_path / "nothing_here")
    with pytest.raises(FileNotFoundError, match="tokenizer info not found"):
        tokenizer_info(tmp_path)
    with pytest.raises(ValueError, match="tokenizer.vocab_size=200000 is too large"):
        build_tokenizer(tparams(vocab_size=200_000, train_chars=20_000), built["corpus"], tmp_path / "t",
                        progress=False)
    assert not (tmp_path / "t").exists()


def test_tokenizer_kind_file_copies_the_model(built, tmp_path):
    src = built["tok"] / "tokenizer.model"
    info = build_tokenizer(tparams(kind="file", file=str(src)), built["corpus"], tmp_path / "t", progress=False)
    assert (tmp_path / "t" / "tokenizer.model").read_bytes() == src.read_bytes()
    assert info["kind"] == "file" and info["sha256"] == built["info"]["sha256"]
    assert info["bytes_per_token"] == pytest.approx(built["info"]["bytes_per_token"])


# ---------------------------------------------------------------------------------------------
# bins: layout, round trip, mixture
# ---------------------------------------------------------------------------------------------

def _domain_stream(sp, corpus, domain) -> np.ndarray:
    out = []
    for ids in sp.encode(docs_of(corpus, domain, "train"), out_type=int):
        out.extend(ids)
        out.append(sp.eos_id())
    return np.array(out, dtype=np.int64)


def test_bins_meta_and_files(built):
    meta = read_meta(built["bins"])
    assert meta == built["meta"]
    assert (meta["dtype"], meta["vocab_size"], meta["chunk_tokens"]) == ("uint16", 512, 256)
    assert meta["tokenizer_sha256"] == built["info"]["sha256"]
    assert meta["source"] == {d: "builtin" for d in ("tinystories", "wikipedia", "fineweb_edu")}
    assert domains(built["bins"]) == ["tinystories", "wikipedia", "fineweb_edu"]
    assert set(meta["files"]) == {"train.bin"} | {f"val_{d}.bin" for d in meta["domains"]}
    for name, entry in meta["files"].items():
        path = built["bins"] / name
        assert entry["bytes"] == path.stat().st_size == 2 * entry["tokens"]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # equal mixture weights: equal chunks per domain, the scarcest domain fully used
    assert len(set(meta["chunks"].values())) == 1
    assert meta["n_chunks"] * 256 == meta["files"]["train.bin"]["tokens"] == sum(meta["tokens"].values())
    assert meta["chunks"]["tinystories"] == min(meta["available_tokens"][d] // 256 for d in meta["domains"])
    assert not list(built["bins"].glob(".*")), "temporary files left behind"


def test_val_bins_decode_back_to_the_validation_documents(built):
    sp = load_tokenizer(built["tok"])
    for d in domains(built["bins"]):
        arr = np.asarray(open_bin(built["bins"], f"val_{d}", verify_hash=True))
        docs = docs_of(built["corpus"], d, "val")
        ends = np.nonzero(arr == sp.eos_id())[0]
        assert len(ends) == len(docs) and ends[-1] == len(arr) - 1
        starts = np.concatenate([[0], ends[:-1] + 1])
        assert [sp.decode(arr[s:e].tolist()) for s, e in zip(starts, ends)] == docs


def test_train_chunks_each_come_from_one_domain_in_shuffled_order(built):
    """Every chunk_tokens window of train.bin is a verbatim slice of ONE domain's token stream, and it
    decodes back to that domain's text; chunks are interleaved (pre-shuffled), not grouped."""
    sp, meta = load_tokenizer(built["tok"]), built["meta"]
    C = meta["chunk_tokens"]
    train = np.asarray(open_bin(built["bins"], "train.bin", verify_hash=True), dtype=np.int64).reshape(-1, C)
    cmap = np.load(built["bins"] / CHUNK_MAP_FILE)
    assert cmap.shape == (meta["n_chunks"], 2)
    streams = {d: _domain_stream(sp, built["corpus"], d) for d in meta["domains"]}
    for d, s in streams.items():
        assert len(s) == meta["available_tokens"][d]
    for row, (di, k) in zip(train, cmap):
        np.testing.assert_array_equal(row, streams[meta["domains"][di]][k * C:(k + 1) * C])
    d0 = meta["domains"][cmap[0, 0]]
    text = sp.decode([t for t in train[0].tolist() if t != sp.eos_id()])
    assert text[:40] in "".join(docs_of(built["corpus"], d0, "train"))
    for i, d in enumerate(meta["domains"]):  # each domain's chunks are a prefix of its stream, each once
        assert sorted(cmap[cmap[:, 0] == i, 1].tolist()) == list(range(meta["chunks"][d]))
    runs = np.count_nonzero(np.diff(cmap[:, 0])) + 1
    assert runs > len(cmap) / 3, "chunks look grouped by domain, not shuffled"


def test_bins_are_deterministic_and_worker_count_does_not_matter(built, tmp_path):
    one = build_bins(bparams(chunk_tokens=256, workers=1), built["corpus"], built["tok"], tmp_path / "w1",
                     progress=False)
    assert {k: v["sha256"] for k, v in one["files"].items()} == \
        {k: v["sha256"] for k, v in built["meta"]["files"].items()}
    # every file of the output, meta.json included: a rebuild DVC hashes the same retrains nothing downstream
    assert {f.name: f.read_bytes() for f in (tmp_path / "w1").iterdir()} == \
        {f.name: f.read_bytes() for f in built["bins"].iterdir()}
    reseeded = build_bins(bparams(chunk_tokens=256, seed=7), built["corpus"], built["tok"], tmp_path / "s7",
                          progress=False)
    assert reseeded["files"]["train.bin"]["sha256"] != built["meta"]["files"]["train.bin"]["sha256"]
    assert reseeded["files"]["val_wikipedia.bin"] == built["meta"]["files"]["val_wikipedia.bin"]


def test_mixture_weights_and_uint32(built, tmp_path):
    mix = {"tinystories": 2.0, "wikipedia": 1.0, "fineweb_edu": 0.0}
    meta = build_bins(bparams(chunk_tokens=256, mixture=mix, dtype="uint32"), built["corpus"], built["tok"],
                      tmp_path / "b", progress=False)
    c = meta["chunks"]
    assert c["fineweb_edu"] == 0 and c["tinystories"] in (2 * c["wikipedia"], 2 * c["wikipedia"] + 1)
    assert meta["mixture"] == pytest.approx({"tinystories": 2 / 3, "wikipedia": 1 / 3, "fineweb_edu": 0.0})
    assert meta["dtype"] == "uint32" and open_bin(tmp_path / "b", "train.bin").dtype == np.uint32
    assert (tmp_path / "b" / "val_fineweb_edu.bin").is_file()   # weight 0: no training chunks, still evaluated
    v32 = np.asarray(open_bin(tmp_path / "b", "val_tinystories"))
    np.testing.assert_array_equal(v32, np.asarray(open_bin(built["bins"], "val_tinystories")))


def test_bins_bad_inputs_fail_before_writing(built, tmp_path):
    out = tmp_path / "b"
    with pytest.raises(ValueError, match=r"bins.mixture.*missing \['fineweb_edu'\]"):
        build_bins(bparams(mixture={"tinystories": 1.0, "wikipedia": 1.0}), built["corpus"], built["tok"], out,
                   progress=False)
    with pytest.raises(ValueError, match=r"unknown \['books'\]"):
        build_bins(bparams(mixture={"tinystories": 1, "wikipedia": 1, "fineweb_edu": 1, "books": 1}),
                   built["corpus"], built["tok"], out, progress=False)
    with pytest.raises(ValueError, match="fewer training tokens than one chunk"):
        build_bins(bparams(chunk_tokens=10**7), built["corpus"], built["tok"], out, progress=False)
    with pytest.raises(FileNotFoundError, match="corpus manifest not found"):
        build_bins(bparams(), tmp_path / "no_corpus", built["tok"], out, progress=False)
    with pytest.raises(FileNotFoundError, match="tokenizer info not found"):
        build_bins(bparams(), built["corpus"], tmp_path / "no_tok", out, progress=False)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_token_dtype_refuses_a_vocab_it_cannot_hold():
    assert token_dtype("auto", 32_000) == np.uint16 and token_dtype("auto", 65_536) == np.uint16
    assert token_dtype("auto", 65_537) == np.uint32 and token_dtype("uint32", 100_000) == np.uint32
    with pytest.raises(ValueError, match=r"bins.dtype: uint16 cannot hold token ids up to 99,999"):
        token_dtype("uint16", 100_000)


# ---------------------------------------------------------------------------------------------
# reader: BatchReader and val_batches
# ---------------------------------------------------------------------------------------------

def test_batch_reader_windows_never_mix_domains(built):
    meta = built["meta"]
    C, T, B = meta["chunk_tokens"], 64, 4
    cmap = np.load(built["bins"] / CHUNK_MAP_FILE)
    train = np.asarray(open_bin(built["bins"], "train.bin"), dtype=np.int64)
    r = BatchReader(built["bins"], T, B)
    assert r.tokens_per_batch == T * B
    n_windows = len(train) // T
    seen_ignored = 0
    for b in range(n_windows // B):
        with warnings.catch_warnings():  # the last batch may end the epoch
            warnings.simplefilter("ignore")
            x, y = r.next_batch()
        assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64
        for i in range(B):
            start = (b * B + i) * T
            np.testing.assert_array_equal(x[i].numpy(), train[start:start + T])   # file order
            assert start // C == (start + T - 1) // C                             # inside one chunk
            np.testing.assert_array_equal(y[i, :-1].numpy(), train[start + 1:start + T])
            ends_chunk = (start + T) % C == 0
            assert (y[i, -1].item() == -1) == ends_chunk
            if not ends_chunk:
                assert y[i, -1].item() == train[start + T]
            seen_ignored += ends_chunk
    assert seen_ignored == (n_windows // B) * B * T // C
    assert len({int(cmap[k, 0]) for k in range(len(cmap))}) == 3


def test_batch_reader_keeps_the_cross_chunk_target_as_the_authors_dataset(built):
    """cross_chunk_target "keep": every window's targets are the next T tokens of the file, the last
    one from the next chunk too (the CART authors' FixedOrderDataset), except at the file's end."""
    T, B = 64, 4
    train = np.asarray(open_bin(built["bins"], "train.bin"), dtype=np.int64)
    r = BatchReader(built["bins"], T, B, cross_chunk_target="keep")
    n_batches = len(train) // (T * B)
    for b in range(n_batches):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x, y = r.next_batch()
        for i in range(B):
            start = (b * B + i) * T
            end = start + T
            np.testing.assert_array_equal(x[i].numpy(), train[start:end])
            if end < len(train):
                np.testing.assert_array_equal(y[i].numpy(), train[start + 1:end + 1])
            else:
                assert y[i, -1].item() == -1
    with pytest.raises(ValueError, match="cross_chunk_target: 'ignore' or 'keep'"):
        BatchReader(built["bins"], T, B, cross_chunk_target="drop")


def test_batch_reader_resumes_at_the_exact_token_and_wraps(built):
    a = BatchReader(built["bins"], 128, 3)
    for _ in range(5):
        a.next_batch()
    state = a.state_dict()
    assert state == {"position": 5 * 3 * 128, "epoch": 0}
    expected = [a.next_batch() for _ in range(3)]
    b = BatchReader(built["bins"], 128, 3, verify_hash=False)
    b.load_state_dict(json.loads(json.dumps(state)))       # survives a JSON/checkpoint round trip
    for (ex, ey), (x, y) in zip(expected, (b.next_batch() for _ in range(3))):
        assert torch.equal(ex, x) and torch.equal(ey, y)
    # wrap-around: epoch counter and a warning, then the same first batch again
    n = built["meta"]["files"]["train.bin"]["tokens"]
    c = BatchReader(built["bins"], 128, 1, verify_hash=False)
    first = c.next_batch()
    c.load_state_dict({"position": n - 128, "epoch": 0})
    with pytest.warns(UserWarning, match="wrapping around to epoch 1"):
        c.next_batch()
    assert c.state_dict() == {"position": 0, "epoch": 1}
    assert torch.equal(c.next_batch()[0], first[0])
    with pytest.raises(ValueError, match="not a window start"):
        c.load_state_dict({"position": 100, "epoch": 0})


def test_batch_reader_requires_seq_len_to_divide_chunks(built):
    with pytest.raises(ValueError, match=r"seq_len=100 .*chunk_tokens=256"):
        BatchReader(built["bins"], 100, 2)


def test_val_batches(built):
    T, n, bs = 32, 10, 4
    batches = val_batches(built["bins"], "wikipedia", T, n, bs)
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]
    val = np.asarray(open_bin(built["bins"], "val_wikipedia"), dtype=np.int64)
    x = torch.cat([b[0] for b in batches]).numpy()
    y = torch.cat([b[1] for b in batches]).numpy()
    windows = val[:n * (T + 1)].reshape(n, T + 1)    # the first n non-overlapping windows
    np.testing.assert_array_equal(x, windows[:, :-1])
    np.testing.assert_array_equal(y, windows[:, 1:])
    again = val_batches(built["bins"], "wikipedia", T, n, bs)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    # overlapping: stride T, window i's last target is window i + 1's first input (the authors')
    over = val_batches(built["bins"], "wikipedia", T, n, bs, windows="overlapping")
    xo = torch.cat([b[0] for b in over]).numpy()
    yo = torch.cat([b[1] for b in over]).numpy()
    np.testing.assert_array_equal(xo, val[:n * T].reshape(n, T))
    np.testing.assert_array_equal(yo, val[1:n * T + 1].reshape(n, T))
    have = built["meta"]["files"]["val_tinystories.bin"]["tokens"]
    with pytest.raises(ValueError, match=f"val_tinystories.bin has {have:,} tokens"):
        val_batches(built["bins"], "tinystories", 1024, 1000, 8)
    with pytest.raises(ValueError, match="unknown domain 'books'"):
        val_batches(built["bins"], "books", T, n, bs)


# ---------------------------------------------------------------------------------------------
# integrity: truncated / extended / altered bins
# ---------------------------------------------------------------------------------------------

def test_damaged_bins_are_detected(built, tmp_path):
    bins = tmp_path / "bins"
    shutil.copytree(built["bins"], bins)
    train = bins / "train.bin"
    data = train.read_bytes()
    train.write_bytes(data[:-2])                              # truncated by one token
    for fn in (lambda: open_bin(bins, "train.bin"), lambda: BatchReader(bins, 128, 2, verify_hash=False)):
        with pytest.raises(ValueError, match=r"train.bin .*truncated.*re-run the bins stage"):
            fn()
    train.write_bytes(data + b"\0\0")                         # extended
    with pytest.raises(ValueError, match="extended"):
        open_bin(bins, "train")
    altered = bytearray(data)
    altered[1000] ^= 0xFF                                     # same size, different content
    train.write_bytes(bytes(altered))
    assert open_bin(bins, "train.bin").shape == (len(data) // 2,)   # size check alone cannot see it
    with pytest.raises(ValueError, match="sha256 .* does not match"):
        open_bin(bins, "train.bin", verify_hash=True)
    with pytest.raises(ValueError, match="altered"):
        BatchReader(bins, 128, 2)                             # verify_hash defaults to True
    (bins / "val_wikipedia.bin").write_bytes(b"\1\0" * 5000)  # val bins are always hash-checked
    with pytest.raises(ValueError, match="val_wikipedia.bin"):
        val_batches(bins, "wikipedia", 32, 2, 2)
    (bins / "val_tinystories.bin").unlink()
    with pytest.raises(FileNotFoundError, match="val_tinystories.bin is missing"):
        open_bin(bins, "val_tinystories")
    with pytest.raises(ValueError, match="not listed"):
        open_bin(bins, "val_books")
    (bins / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="run the bins stage"):
        read_meta(bins)


# ---------------------------------------------------------------------------------------------
# the real samples in ../shared/data with the Llama-2 tokenizer
# ---------------------------------------------------------------------------------------------

def test_real_samples_with_llama2_tokenizer(tmp_path):
    ts, wiki_raw = shared("tinystories", "valid.txt"), shared("wikitext2", "wiki.test.raw")
    wiki_val, fineweb, llama = shared("wikitext2", "valid.txt"), shared("fineweb", "fineweb_subset.json"), \
        shared("tokenizer", "llama2_tokenizer.model")
    doms = {
        "tinystories": {"source": "local", "train_files": str(ts), "sample_by": "paragraph"},
        "wikipedia": {"source": "local", "train_files": str(wiki_raw), "val_files": str(wiki_val)},
        "fineweb_edu": {"source": "local", "train_files": [str(fineweb)], "text_field": "text"},
    }
    manifest = build_corpus(cparams(train_tokens=60_000, val_tokens=15_000, domains=doms), tmp_path / "corpus",
                            progress=False)
    assert manifest["domains"]["fineweb_edu"]["details"]["format"] == "json"
    assert docs_of(tmp_path / "corpus", "tinystories", "train")[0].startswith("Spot. Spot saw the shiny car")
    assert "\r" not in "".join(docs_of(tmp_path / "corpus", "wikipedia", "train"))  # CRLF file read as lines
    assert "<unk>" in "".join(docs_of(tmp_path / "corpus", "wikipedia", "val"))     # the tokenized split
    info = build_tokenizer(tparams(kind="file", file=str(llama)), tmp_path / "corpus", tmp_path / "tok",
                           progress=False)
    assert info["vocab_size"] == 32_000 and info["sha256"] == LLAMA_SHA256
    assert (info["bos_id"], info["eos_id"]) == (1, 2)
    assert all(2.0 < v < 6.0 for v in info["bytes_per_token"].values())
    meta = build_bins(bparams(), tmp_path / "corpus", tmp_path / "tok", tmp_path / "bins", progress=False)
    assert (meta["vocab_size"], meta["dtype"], meta["tokenizer_sha256"]) == (32_000, "uint16", LLAMA_SHA256)
    assert meta["source"] == {"tinystories": "local", "wikipedia": "local", "fineweb_edu": "local"}
    assert meta["n_chunks"] > 0 and min(meta["tokens"].values()) > 30_000
    sp = load_tokenizer(tmp_path / "tok")
    val = np.asarray(open_bin(tmp_path / "bins", "val_fineweb_edu", verify_hash=True))
    first_end = int(np.nonzero(val == 2)[0][0])
    assert sp.decode(val[:first_end].tolist()) == docs_of(tmp_path / "corpus", "fineweb_edu", "val")[0]
    x, y = BatchReader(tmp_path / "bins", 1024, 2).next_batch()
    assert x.max() < 32_000 and y.min() >= -1


def test_unique_by_drops_documents_whose_field_repeats_an_earlier_one(tmp_path):
    """Two dumps of one wiki: the second file's revision of a title already read is dropped, with
    every other document kept in file order; a field the rows lack is named."""
    first = [{"title": "Anarchism", "text": "anarchism, 2019 revision"}, {"title": "Apollo", "text": "apollo"}]
    second = [{"title": "Anarchism", "text": "anarchism, 2015 revision"}, {"title": "Zebra", "text": "zebra"}]
    for name, rows in (("a.jsonl", first), ("b.jsonl", second)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"source": "local", "train_files": [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")],
            "val_files": [str(tmp_path / "a.jsonl")], "unique_by": "title"}
    m = build_corpus(cparams(train_tokens=10**9, val_tokens=10**9, domains={"wiki": spec}), tmp_path / "c",
                     progress=False)
    # val (a.jsonl) is read first and its texts are dropped from train as exact duplicates
    assert docs_of(tmp_path / "c", "wiki", "train") == ["zebra"]
    assert m["domains"]["wiki"]["details"]["unique_by"] == "title"
    without = {k: v for k, v in spec.items() if k != "unique_by"}
    build_corpus(cparams(train_tokens=10**9, val_tokens=10**9, domains={"wiki": without}), tmp_path / "d",
                 progress=False)
    assert docs_of(tmp_path / "d", "wiki", "train") == ["anarchism, 2015 revision", "zebra"]
    with pytest.raises(ValueError, match="has no field 'name'"):
        build_corpus(cparams(train_tokens=10**9, val_tokens=10**9, domains={"wiki": dict(spec, unique_by="name")}),
                     tmp_path / "e", progress=False)
    (tmp_path / "t.txt").write_text("one\ntwo\n")
    with pytest.raises(ValueError, match="unique_by: names a field"):
        build_corpus(cparams(train_tokens=10**9, val_tokens=10**9, domains={"t": {
            "source": "local", "train_files": str(tmp_path / "t.txt"), "unique_by": "title"}}), tmp_path / "f",
            progress=False)
