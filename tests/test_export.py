"""Hugging Face export (pipeline/export.py, cart/hf/): the folder loads through transformers' Auto
classes with its own copy of the code, reproduces the run's logits and its tokenizer, generates
through transformers' loop with the model's cache, and scores lm-eval items as the project's
adapter does; lm-eval's command line runs the adapter as `--model cart`."""
import copy
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml
import torch.nn.functional as F

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from cart.evaluation import benchmarks as B  # noqa: E402
from conftest import smoke_benchmark_text  # noqa: E402
from cart.training.checkpoint import load_run_model, save_weights, write_run_config  # noqa: E402
from cart.generation import generate  # noqa: E402
from cart.evaluation.harness import CARTLM, evaluate_benchmarks, quiet_lm_eval  # noqa: E402
from cart.hf.export import export_run  # noqa: E402
from cart.models import ARCHS, CARTConfig, DenseConfig, LRTConfig, RATPlusConfig, build_model  # noqa: E402
from cart.data.tokenizer import train_sentencepiece  # noqa: E402
from test_harness import make_run, make_tokenizer, write_release_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LLAMA2 = ROOT.parent / "shared" / "data" / "tokenizer" / "llama2_tokenizer.model"
REAL_BENCH = ROOT.parent / "shared" / "data" / "benchmarks"
SEQ_LEN = 48
TEXTS = ["Once upon a time", "The quick brown fox jumps over the lazy dog", "A"]
# top-2 logit gap of every greedy token compared across two computations of it (transformers' loop and
# the native one): far above their float differences (cached against full: within 1e-5, test_generate)
GREEDY_MARGIN = 1e-3

pytestmark = pytest.mark.usefixtures("one_thread")
quiet_lm_eval()


def write_tokenizer(d: Path, model: bytes) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer.model").write_bytes(model)
    sha = hashlib.sha256(model).hexdigest()
    (d / "tokenizer.json").write_text(json.dumps({"vocab_size": 512, "kind": "train", "sha256": sha,
                                                 "bytes_per_token": {}, "bos_id": 1, "eos_id": 2}))
    return d


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """A tokenizer trained as the tokenizer stage trains one (identity normalisation, byte fallback)."""
    lines = smoke_benchmark_text().splitlines() + ["The quick brown fox jumps over the lazy dog 12345."] * 3
    return write_tokenizer(tmp_path_factory.mktemp("tok"), train_sentencepiece(lines, "bpe", 512))


@pytest.fixture(scope="module")
def cart_run(tok_dir, tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "stage2" / "cart", tok_dir, n_loops=2, seq_len=SEQ_LEN)


@pytest.fixture(scope="module")
def dense_run(tok_dir, cart_run) -> Path:
    run = cart_run.parent / "dense"
    torch.manual_seed(1)
    model = build_model(DenseConfig(vocab_size=512, d_model=64, head_dim=32, n_layers=2))
    run.mkdir()
    save_weights(model, run / "model.safetensors")
    info = json.loads((tok_dir / "tokenizer.json").read_text())
    write_run_config(run, {"model": model.config.to_dict(), "run": {"seq_len": SEQ_LEN},
                           "tokenizer": {"vocab_size": 512, "sha256": info["sha256"]}})
    return run


@pytest.fixture(scope="module")
def cart_hf(cart_run, tok_dir, tmp_path_factory) -> Path:
    return export_run(cart_run, tmp_path_factory.mktemp("hf") / "cart_export", tok_dir)


@pytest.fixture(scope="module")
def loaded(cart_hf):
    return AutoModelForCausalLM.from_pretrained(cart_hf, trust_remote_code=True).eval()


def native(run: Path):
    return load_run_model(run)[0]


def encode(tok_dir: Path, text: str) -> list[int]:
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model")).encode(text)


# ---- the folder and its round trip -----------------------------------------------------------

def test_export_writes_a_self_describing_folder(cart_hf):
    names = {p.name for p in cart_hf.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "configuration_cart.py",
            "modeling_cart.py", "families.py", "cart_model.py", "cart_config.py", "layers.py", "base.py"} <= names
    cfg = json.loads((cart_hf / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_cart.CartLMForCausalLM"
    assert cfg["cart_model"]["arch"] == "cart" and cfg["max_position_embeddings"] == SEQ_LEN
    assert not any(name.startswith(".") for name in os.listdir(cart_hf.parent))  # no temporary folder left


def test_loaded_model_runs_the_folders_own_code_and_equals_the_run(loaded, cart_run, tok_dir):
    assert type(loaded).__module__.startswith("transformers_modules.")
    assert type(loaded.cart).__module__.startswith("transformers_modules.")
    model = native(cart_run)
    ids = torch.tensor([encode(tok_dir, TEXTS[1])])
    with torch.no_grad():  # exact by construction: the same code on the same weights and shapes
        assert torch.equal(loaded(ids).logits, model(ids))
        for R in (1, 5):  # n_loops per call
            assert torch.equal(loaded(ids, n_loops=R).logits, model(ids, n_loops=R))
        assert not torch.equal(loaded(ids, n_loops=5).logits, loaded(ids).logits)


def test_n_loops_set_at_export_is_the_default(cart_run, tok_dir, tmp_path):
    out = export_run(cart_run, tmp_path / "cart_r4", tok_dir, n_loops=4)
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ids = torch.tensor([encode(tok_dir, TEXTS[0])])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, native(cart_run)(ids, n_loops=4))


def test_export_is_named_by_its_config_name(cart_run, dense_run, tok_dir, tmp_path, monkeypatch, capsys):
    """Without an out dir, pipeline.export writes hf/<config name>, R the exported loop count."""
    from cart.hf.export import export_name
    from pipeline.export import main
    cfg = load_run_model(cart_run)[1]
    assert export_name(cart_run) == f"cart-d{cfg.d_model}-P{cfg.n_prelude}-R{cfg.n_loops}"
    assert export_name(dense_run) == "dense-d64-L2"
    with pytest.raises(ValueError, match="n_loops: the 'dense' family has no loop count"):
        export_name(dense_run, n_loops=4)
    monkeypatch.chdir(tmp_path)
    out = main([str(cart_run), "--tokenizer", str(tok_dir), "--n-loops", "4"])
    name = f"cart-d{cfg.d_model}-P{cfg.n_prelude}-R4"
    assert out == Path("hf") / name and (tmp_path / "hf" / name / "config.json").is_file()
    assert f"export: wrote hf/{name} ({name}, from {cart_run})" in capsys.readouterr().out


def test_dense_run_exports_too(dense_run, tok_dir, tmp_path):
    out = export_run(dense_run, tmp_path / "dense_export", tok_dir)
    assert not (out / "cart_model.py").exists() and (out / "dense_model.py").exists()
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ids = torch.tensor([encode(tok_dir, TEXTS[1])])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, native(dense_run)(ids))


# every family and variant, each with the module layout its flags build (buffers included)
SMALL = dict(vocab_size=512, d_model=64, head_dim=32)
EXPORT_CASES = {
    "cart_paper_text": CARTConfig(**SMALL, n_prelude=1, n_loops=2),
    "cart_paper_code": CARTConfig(**SMALL, n_prelude=1, n_loops=2, variant="paper_code", hc_init_logit=1.0,
                                  norm_eps=1e-6),
    "cart_paper_code_unshared": CARTConfig(**SMALL, n_prelude=1, n_loops=2, variant="paper_code", unshare_core=True),
    "cart_paper_code_no_lie": CARTConfig(**SMALL, n_prelude=1, n_loops=2, variant="paper_code", disable_lie=True),
    "cart_unfreeze_kv": CARTConfig(**SMALL, n_prelude=1, n_loops=2, variant="paper_code", unfreeze_kv=True),
    "cart_self_attn_core": CARTConfig(**SMALL, n_prelude=1, n_loops=2, unshare_core=True, self_attn_core=True),
    "cart_no_hc_no_lti": CARTConfig(**SMALL, n_prelude=1, n_loops=2, disable_hyperconnection=True, disable_lti=True),
    "dense": DenseConfig(**SMALL, n_layers=2),
    "lrt_shared": LRTConfig(**SMALL, n_layers=2),
    "lrt_layerwise": LRTConfig(**SMALL, n_layers=2, variant="layerwise"),
    "ratplus": RATPlusConfig(**SMALL, n_layers=2),
    "ratplus_no_recurrence": RATPlusConfig(**SMALL, n_layers=2, apply_recurrence=False, joint_train=False),
}


def save_run(run: Path, model, tok_dir: Path) -> Path:
    """A run folder as the training stage writes one (config.json + model.safetensors)."""
    run.mkdir(parents=True)
    save_weights(model, run / "model.safetensors")
    info = json.loads((tok_dir / "tokenizer.json").read_text())
    write_run_config(run, {"model": model.config.to_dict(), "run": {"seq_len": SEQ_LEN},
                           "tokenizer": {"vocab_size": 512, "sha256": info["sha256"]}})
    return run


@pytest.fixture(scope="module")
def family_export(tok_dir, tmp_path_factory):
    """case -> (the run's model, its exported folder), each case exported once per module. Matrices
    drawn wider than the training init (as test_harness.make_model does), so that a runtime argument
    visibly moves greedy tokens, not only logits."""
    done = {}

    def get(case: str):
        if case not in done:
            torch.manual_seed(0)
            model = build_model(EXPORT_CASES[case]).eval()
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() >= 2:
                        p.normal_(0.0, 0.2)
            root = tmp_path_factory.mktemp(case)
            done[case] = model, export_run(save_run(root / "runs" / "g" / case, model, tok_dir), root / "hf", tok_dir)
        return done[case]
    return get


def load_hf(folder: Path, **kwargs):
    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, **kwargs).eval()


def test_export_cases_cover_every_family():
    assert {cfg.arch for cfg in EXPORT_CASES.values()} == set(ARCHS)


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_every_family_exports_with_its_buffers_rebuilt(case, family_export, tok_dir):
    """transformers allocates the buffers a checkpoint does not hold (RoPE's tables, the projected
    loop-index table) without values: loaded through the Auto classes, every buffer equals the run's
    model's and so do the logits (the same code on the same weights and shapes: bit-equal)."""
    model, folder = family_export(case)
    loaded = load_hf(folder)
    want = dict(model.named_buffers())
    got = dict(loaded.cart.named_buffers())
    assert got.keys() == want.keys()
    for name, buffer in want.items():
        assert torch.equal(got[name], buffer), name
    ids = torch.tensor([encode(tok_dir, TEXTS[1])])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids))


# ---- the families' inference-time arguments through transformers -------------------------------

RUNTIME_CASES = [("cart_paper_code", "exit_threshold", 10.0),  # every token stops after one loop
                 ("dense", "pattern", "D2"), ("ratplus", "pattern", "D2"), ("lrt_shared", "lrt_mode", "zero")]


def test_runtime_args_are_every_familys():
    from cart.hf.configuration_cart import RUNTIME_ARGS
    assert set(RUNTIME_ARGS) == set().union(*(cfg.runtime_kwargs() for cfg in EXPORT_CASES.values()))


@pytest.mark.parametrize("case,name,value", RUNTIME_CASES)
def test_forward_honours_each_runtime_arg(case, name, value, family_export, tok_dir):
    """Passed to forward or set in the config (from_pretrained(..., name=value), as lm-eval's
    `--model hf --model_args` does), the argument reaches the model: the logits are the native
    model's under it, and differ from the default's."""
    model, folder = family_export(case)
    ids = torch.tensor([encode(tok_dir, TEXTS[1])])
    with torch.no_grad():  # exact by construction: the same code on the same weights and shapes
        want = model(ids, **{name: value})
        assert not torch.equal(want, model(ids))
        assert torch.equal(load_hf(folder)(ids, **{name: value}).logits, want)
        assert torch.equal(load_hf(folder, **{name: value})(ids).logits, want)


def test_generate_honours_the_pattern(family_export, tok_dir):
    """generate() hands the argument to every step and to the decode cache it builds."""
    from conftest import assert_greedy_decisive
    model, folder = family_export("ratplus")
    prompt = torch.tensor(encode(tok_dir, TEXTS[1]))
    hf = load_hf(folder)
    assert not torch.equal(generate(model, [prompt], 6, temperature=0)[0],
                           generate(model, [prompt], 6, temperature=0, pattern="D2")[0])
    for pattern in (None, "D2"):
        runtime = {} if pattern is None else {"pattern": pattern}
        want = generate(model, [prompt], 6, temperature=0, **runtime)[0]
        # transformers' uncached loop runs other shapes than the native cache: tokens equal where decisive
        assert_greedy_decisive(model, prompt, want, GREEDY_MARGIN, **runtime)
        for use_cache in (True, False):
            got = hf.generate(prompt[None], max_new_tokens=6, do_sample=False, use_cache=use_cache,
                              eos_token_id=None, **runtime)[0]
            assert torch.equal(got, want), (pattern, use_cache)


def test_lrt_is_the_exact_recurrence_in_every_forward(family_export, tok_dir):
    """LRT's default is one mode everywhere: a left-padded batch's rows are each row alone under
    the plain forward, and transformers' generate with or without the cache continues as
    cart.generate does (the uncached steps re-run the forward: exact too). In float64: with these
    wide weights the recurrence amplifies float32 rounding of a padded batch to ~1e-4."""
    model, folder = family_export("lrt_shared")
    model, hf = copy.deepcopy(model).double(), load_hf(folder).double()
    rows = [torch.tensor(encode(tok_dir, t)) for t in TEXTS[:2]]
    width = max(len(r) for r in rows)
    ids = torch.stack([F.pad(r, (width - len(r), 0), value=0) for r in rows])
    mask = torch.stack([F.pad(torch.ones(len(r), dtype=torch.long), (width - len(r), 0)) for r in rows])
    with torch.no_grad():
        batched = hf(ids, attention_mask=mask).logits
        for b, row in enumerate(rows):
            torch.testing.assert_close(batched[b, width - len(row):], model(row[None])[0], atol=1e-10, rtol=0)
        assert torch.equal(hf(rows[1][None]).logits, model(rows[1][None]))
    want = generate(model, [rows[0]], 6, temperature=0)[0]
    for use_cache in (True, False):
        got = hf.generate(rows[0][None], max_new_tokens=6, do_sample=False, use_cache=use_cache, eos_token_id=None)[0]
        assert torch.equal(got, want), use_cache


@pytest.mark.parametrize("case,name,value", [("cart_paper_text", "pattern", "D2"), ("dense", "exit_threshold", 0.1),
                                             ("lrt_shared", "n_loops", 2), ("ratplus", "lrt_mode", "zero")])
def test_runtime_arg_of_another_family_is_refused(case, name, value, family_export):
    _, folder = family_export(case)
    arch = EXPORT_CASES[case].arch
    message = f"{name}: the {arch!r} family does not take it"
    with pytest.raises(ValueError, match=message):
        load_hf(folder)(torch.tensor([[5, 6, 7]]), **{name: value})
    with pytest.raises(ValueError, match=message):
        load_hf(folder, **{name: value})


def test_two_exports_of_one_name_load_their_own_family(cart_run, dense_run, tok_dir, tmp_path):
    """transformers keys the model class it registers by config class: folders of one name holding
    different families must not share one (a Dense folder loaded after a CART one stays Dense)."""
    folders = {arch: export_run(run, tmp_path / arch / "hf", tok_dir) for arch, run in
               (("cart", cart_run), ("dense", dense_run))}
    for arch, folder in folders.items():
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
        assert model.cart.config.arch == arch


def test_exported_config_of_another_family_is_refused(cart_hf, tmp_path):
    folder = tmp_path / "relabelled"
    shutil.copytree(cart_hf, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["cart_model"]["arch"] = "dense"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="cart_model.arch: this folder holds the 'cart' family, the config asks "
                                         "for 'dense'"):
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)


def test_left_padded_batch_and_labels(loaded, cart_run, tok_dir):
    """A left-padded batch gives each row's own logits; labels give the shifted LM loss."""
    tok = AutoTokenizer.from_pretrained(loaded.name_or_path, trust_remote_code=True)
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    model = native(cart_run)
    with torch.no_grad():
        out = loaded(**batch).logits
        for b, text in enumerate(TEXTS):
            ids = encode(tok_dir, text)
            torch.testing.assert_close(out[b, -len(ids):], model(torch.tensor([ids]))[0], atol=1e-5, rtol=1e-5)
        ids = torch.tensor([encode(tok_dir, TEXTS[1])])
        loss = loaded(ids, labels=ids).loss
        want = F.cross_entropy(model(ids)[0, :-1], ids[0, 1:])
    torch.testing.assert_close(loss, want)


def test_exported_folder_loads_without_the_cart_package(cart_hf, cart_run, tok_dir):
    """A fresh interpreter in which `import cart` fails loads the model and the tokenizer."""
    script = f"""
import sys, json
sys.modules["cart"] = None  # any import of this package now raises ImportError
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(cart_hf)!r}, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained({str(cart_hf)!r}, trust_remote_code=True).eval()
ids = tok({TEXTS[1]!r}, return_tensors="pt").input_ids
with torch.no_grad():
    print(json.dumps({{"ids": ids[0].tolist(), "logits": model(ids).logits[0, -1].tolist()}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cart_hf.parent, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["ids"] == encode(tok_dir, TEXTS[1])
    with torch.no_grad():
        want = native(cart_run)(torch.tensor([got["ids"]]))[0, -1]
    torch.testing.assert_close(torch.tensor(got["logits"]), want, atol=1e-5, rtol=1e-5)


# ---- the tokenizer ---------------------------------------------------------------------------

def probe_texts() -> list[str]:
    texts = smoke_benchmark_text().splitlines()[:200] + [" leading", "two  spaces  ", "x  1 and 23", "tab\there", "\n\nnl",
                                                   "ünïcödé 😀 中文", "a</s>b<s>c", "", " "]
    data = ROOT.parent / "shared" / "data"
    for name in ("tinystories/valid_sample.txt", "wikitext2/wiki.test.raw"):
        if (data / name).is_file():
            texts += (data / name).read_text(encoding="utf-8")[:40_000].splitlines()
    return texts


def test_exported_tokenizer_encodes_and_decodes_as_sentencepiece(cart_hf, tok_dir):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(cart_hf, trust_remote_code=True)
    assert tok.eos_token_id == sp.eos_id() and tok.bos_token_id == sp.eos_id()  # the prefix lm-eval uses
    for text in probe_texts():
        ids = sp.encode(text)
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == sp.decode(ids), text


@pytest.mark.skipif(not LLAMA2.is_file(), reason="the Llama-2 tokenizer sample is not here")
def test_llama2_tokenizer_converts_exactly():
    """The paper's tokenizer: SentencePiece BPE whose whitespace pieces score lowest, so merges must
    follow the scores, not the ids (whitespace runs before a word or a digit tell them apart)."""
    from cart.hf.tokenizer import to_hf_tokenizer
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2))
    tok = to_hf_tokenizer(LLAMA2, model_max_length=4096, prefix_token_id=1, probe_texts=tuple(probe_texts()))
    for text in ("  Hello", "x  1", " = Robert Boulter = "):
        assert tok.encode(text) == sp.encode(text)


def test_unsupported_sentencepiece_model_is_refused_before_writing(cart_run, tmp_path):
    """SentencePiece's default normaliser (nmt_nfkc, extra whitespace removed) is not reproduced:
    one message naming it, and no folder."""
    tok = make_tokenizer(tmp_path / "nfkc_tok")  # tests/test_harness.py's tokenizer: SentencePiece defaults
    run = make_run(tmp_path / "runs" / "g" / "nfkc", tok, seq_len=SEQ_LEN)
    with pytest.raises(ValueError, match=r"normalization 'nmt_nfkc' \(only identity\), remove_extra_whitespaces"):
        export_run(run, tmp_path / "out", tok)
    assert not (tmp_path / "out").exists()


# ---- generation through transformers ---------------------------------------------------------

@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("n_loops", [None, 5])
def test_hf_generate_equals_native_greedy(loaded, cart_run, tok_dir, use_cache, n_loops):
    from conftest import assert_greedy_decisive
    tok = AutoTokenizer.from_pretrained(loaded.name_or_path, trust_remote_code=True)
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    runtime = {} if n_loops is None else {"n_loops": n_loops}
    calls = []
    forward_cached = loaded.cart.forward_cached
    loaded.cart.forward_cached = lambda idx, cache: calls.append(idx.shape[1]) or forward_cached(idx, cache)
    try:
        out = loaded.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=use_cache, **runtime)
    finally:
        del loaded.cart.forward_cached
    want = generate(native(cart_run), [torch.tensor(encode(tok_dir, t)) for t in TEXTS], 6, temperature=0,
                    eos_token_id=tok.eos_token_id, **runtime)
    width = batch["input_ids"].shape[1]
    for b, w in enumerate(want):
        # transformers' padded batch (and, uncached, the whole sequence each step) against the native
        # cache: other shapes, so the tokens are compared where every argmax is decisive
        assert_greedy_decisive(native(cart_run), torch.tensor(encode(tok_dir, TEXTS[b])), w, GREEDY_MARGIN,
                               **runtime)
        new = w[len(encode(tok_dir, TEXTS[b])):]
        assert torch.equal(out[b, width:width + len(new)], new)
    # with the cache: the padded prompt once, then one token per step; without: the whole left-padded
    # sequence every step (decoded through a fresh cache, which is how a padded batch is run)
    steps = out.shape[1] - width
    assert calls == ([width] + [1] * (steps - 1) if use_cache else list(range(width, width + steps)))


def test_hf_beam_search_needs_use_cache_false(loaded):
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="beam_search is not supported with this model's cache.*use_cache=False"):
        loaded.generate(ids, max_new_tokens=2, num_beams=2, do_sample=False)
    assert loaded.generate(ids, max_new_tokens=2, num_beams=2, do_sample=False, use_cache=False).shape == (1, 5)


# ---- lm-eval ---------------------------------------------------------------------------------

def item_logliks(results: dict, task: str) -> list[float]:
    return [float(r[0][0]) for s in sorted(results["samples"][task], key=lambda s: s["doc_id"]) for r in s["resps"]]


def test_lm_eval_hf_model_scores_items_as_the_cart_adapter(cart_hf, cart_run, tok_dir):
    """`--model hf --model_args pretrained=<folder>,trust_remote_code=True` against CARTLM on the
    project's task files: the same per-item log-likelihoods."""
    import lm_eval
    common = dict(tasks=["cart_hellaswag", "cart_lambada_openai"], limit=5, log_samples=True, bootstrap_iters=0,
                  task_manager=B.task_manager("builtin"))
    lm = CARTLM.from_run(cart_run, tok_dir, n_loops=3, progress=False)
    ours = lm_eval.simple_evaluate(model=lm, **common)
    hf = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={cart_hf},trust_remote_code=True,n_loops=3",
                                 device="cpu", batch_size=2, **common)
    for task in common["tasks"]:
        a, b = item_logliks(ours, task), item_logliks(hf, task)
        assert len(a) == len(b) > 0
        assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.slow
def test_lm_eval_command_line_runs_model_cart(cart_run, tok_dir, tmp_path):
    """`python -m cart.evaluation.lm_eval_cli --model cart --model_args checkpoint=<run>,n_loops=3 ...` (lm-eval's
    own CLI, the adapter registered) scores items as CARTLM does in process."""
    import lm_eval
    out = tmp_path / "lm_eval_out"
    cmd = [sys.executable, "-m", "cart.evaluation.lm_eval_cli", "--model", "cart", "--model_args",
           f"checkpoint={cart_run},tokenizer={tok_dir},n_loops=3", "--tasks", "cart_hellaswag",
           "--include_path", str(B.TASK_DIR), "--metadata", json.dumps({"source": "builtin"}), "--limit", "4",
           "--log_samples", "--output_path", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(glob.glob(str(out / "*" / "samples_cart_hellaswag_*.jsonl"))[0])]
    got = [float(r[0][0]) for row in sorted(rows, key=lambda r: r["doc_id"]) for r in row["resps"]]
    lm = CARTLM.from_run(cart_run, tok_dir, n_loops=3, progress=False)
    want = lm_eval.simple_evaluate(model=lm, tasks=["cart_hellaswag"], limit=4, log_samples=True, bootstrap_iters=0,
                                   task_manager=B.task_manager("builtin"))
    assert got == pytest.approx(item_logliks(want, "cart_hellaswag"), abs=1e-4)


def cli_samples(out: Path, task: str) -> list[float]:
    rows = [json.loads(line) for line in open(glob.glob(str(out / "**" / f"samples_{task}_*.jsonl"),
                                                        recursive=True)[0])]
    return [float(r[0][0]) for row in sorted(rows, key=lambda r: r["doc_id"]) for r in row["resps"]]


@pytest.fixture(scope="module")
def long_run(tok_dir, cart_run) -> Path:
    """A run whose context holds a real HellaSwag item in the small tokenizer's pieces."""
    return make_run(cart_run.parent / "long", tok_dir, n_loops=2, seq_len=512)


@pytest.mark.slow
@pytest.mark.skipif(not REAL_BENCH.is_dir(), reason="the real benchmark files are not here")
def test_readme_lm_eval_commands_run_on_the_real_benchmark_files(long_run, tok_dir, tmp_path):
    """The README's commands on the real files (HellaSwag and PIQA have no train file there): the
    short `--model cart` one run where params.yaml's benchmarks section names the files (its
    relative local_dir taken from params.yaml's folder), and `--model hf` on an export with the
    files in --metadata. Both score each item as the pipeline's evaluation does in process."""
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["benchmarks"].update(source="local", local_dir=os.path.relpath(REAL_BENCH, project))
    (project / "params.yaml").write_text(yaml.safe_dump({"benchmarks": params["benchmarks"]}))
    hf = export_run(long_run, tmp_path / "hf", tok_dir)
    tasks = ["hellaswag", "piqa"]
    common = ["--tasks", ",".join(f"cart_{t}" for t in tasks), "--include_path", str(B.TASK_DIR), "--limit", "3",
              "--log_samples", "--device", "cpu"]
    commands = {"cart": ["--model", "cart", "--model_args", f"checkpoint={long_run},tokenizer={tok_dir}"],
                "hf": ["--model", "hf", "--model_args", f"pretrained={hf},trust_remote_code=True", "--metadata",
                       json.dumps({"source": "local", "local_dir": str(REAL_BENCH)})]}
    lm = CARTLM.from_run(long_run, tok_dir, progress=False)
    _, want = evaluate_benchmarks(lm, tasks, source="local", local_dir=REAL_BENCH, limit=3, bootstrap_iters=0,
                                  log_samples=True)
    for model, args in commands.items():
        out = tmp_path / f"out_{model}"
        proc = subprocess.run([sys.executable, "-m", "cart.evaluation.lm_eval_cli", *args, *common, "--output_path", str(out)],
                              capture_output=True, text=True, cwd=project, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        for task in tasks:
            got = cli_samples(out, f"cart_{task}")
            assert len(got) == 3 * (4 if task == "hellaswag" else 2)
            assert got == pytest.approx(item_logliks(want, f"cart_{task}"), abs=1e-4)


def test_lm_eval_cli_metadata_comes_from_params_or_fails_up_front(tmp_path, monkeypatch, capsys):
    """No --metadata source: params.yaml's benchmarks section, or one error saying what to pass;
    a missing file (a few-shot split's too) is named before any model is loaded."""
    from cart.evaluation.lm_eval_cli import benchmark_metadata, main
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["benchmarks"]
    monkeypatch.chdir(tmp_path)
    assert benchmark_metadata(["hellaswag"], None, 0) is None  # lm-eval's own tasks: nothing to add
    with pytest.raises(FileNotFoundError, match=r"cart_hellaswag: no --metadata source and no params.yaml here"):
        benchmark_metadata(["cart_hellaswag"], {"checkpoint": "x"}, 0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"benchmarks": {**params, "source": "hub"}}))
    with pytest.raises(ValueError, match=r"benchmarks.source 'hub' is lm-eval's own tasks \(--tasks piqa\)"):
        benchmark_metadata(["cart_piqa"], None, 0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"benchmarks": {**params, "source": "local",
                                                                         "local_dir": "bench"}}))
    write_release_files(tmp_path / "bench", fewshot=False)
    got = benchmark_metadata(["cart_piqa"], {"checkpoint": "x"}, 0)
    assert got == {"checkpoint": "x", "source": "local", "local_dir": str(tmp_path / "bench")}
    assert "cart_piqa read" in capsys.readouterr().err
    assert benchmark_metadata(["cart_piqa"], {"source": "builtin"}, 5) == {"source": "builtin"}
    monkeypatch.setattr(sys, "argv", sys.argv)  # main() sets it, as lm-eval's parser reads it
    with pytest.raises(SystemExit, match=r"^lm_eval_cli: error: piqa: 2-shot evaluation draws its examples from "
                                         r"the train split .*piqa/train.jsonl is missing"):
        main(["--model", "cart", "--model_args", "checkpoint=nowhere", "--tasks", "cart_piqa", "--num_fewshot", "2"])


def test_model_cart_is_registered_with_lm_eval():
    from lm_eval.api.registry import get_model
    assert get_model("cart") is CARTLM


def test_model_cart_args_are_checked():
    with pytest.raises(ValueError, match=r"unknown model_args \['pretrained'\]; valid: \['checkpoint'"):
        CARTLM.create_from_arg_string("pretrained=x")
    with pytest.raises(ValueError, match=r"need checkpoint=<run dir>"):
        CARTLM.create_from_arg_string("n_loops=3")
    with pytest.raises(ValueError, match=r"^--model cart: model_args dtype: 'float8' is not one of "
                                         r"\['auto', 'float32', 'bfloat16'\]$"):
        CARTLM.create_from_arg_string("checkpoint=nowhere,dtype=float8")


# ---- bad input -------------------------------------------------------------------------------

def test_export_refuses_a_run_without_weights(cart_run, tok_dir, tmp_path):
    run = tmp_path / "runs" / "g" / "no_weights"
    run.mkdir(parents=True)
    (run / "config.json").write_text((cart_run / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"not a run with weights \(needs config.json and model.safetensors"):
        export_run(run, tmp_path / "out", tok_dir)
    assert not (tmp_path / "out").exists()


def test_export_never_overwrites_a_folder(cart_run, tok_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        export_run(cart_run, out, tok_dir)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_export_cli_reports_bad_input_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.export", str(tmp_path / "nowhere"), str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"export: error: {tmp_path / 'nowhere'}: not a run with weights "
                                                f"(needs config.json and model.safetensors, as the training stage "
                                                f"writes them)"]


def test_dense_export_rejects_n_loops(dense_run, tok_dir, tmp_path):
    with pytest.raises(ValueError, match="n_loops: the 'dense' family has no loop count"):
        export_run(dense_run, tmp_path / "out", tok_dir, n_loops=4)


def _run_with_weights(cart_run: Path, tmp_path: Path, change) -> Path:
    """A copy of cart_run whose weights `change` rewrote."""
    import shutil

    import safetensors.torch
    run = tmp_path / "runs" / "g" / "changed"
    shutil.copytree(cart_run, run)
    w = safetensors.torch.load_file(str(run / "model.safetensors"))
    safetensors.torch.save_file({k: change(k, v) for k, v in w.items()}, str(run / "model.safetensors"))
    return run


def test_export_of_nan_weights_blames_the_run_naming_the_tensor(cart_run, tok_dir, tmp_path):
    def one_nan(name, t):
        return t.flatten().index_fill(0, torch.tensor([3]), float("nan")).view_as(t) if name == "norm_f.weight" else t
    run = _run_with_weights(cart_run, tmp_path, one_nan)
    with pytest.raises(ValueError, match=r"^checkpoint .*/model\.safetensors: tensor norm_f\.weight holds NaN or "
                                         r"infinite values$"):
        export_run(run, tmp_path / "out", tok_dir)
    assert not (tmp_path / "out").exists()


def test_export_of_a_run_whose_forward_overflows_blames_the_run(cart_run, tok_dir, tmp_path):
    """Finite weights (3e38) whose attention scores overflow to inf - inf: the run's own logits are NaN."""
    run = _run_with_weights(cart_run, tmp_path, lambda name, t: t.fill_(3e38) if name.endswith("attn_norm.weight") else t)
    with pytest.raises(ValueError, match=r"changed: the run's own model gives non-finite logits \(its forward under "
                                         r"its default arguments overflows\); nothing was exported$"):
        export_run(run, tmp_path / "out", tok_dir)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [tmp_path / "runs"]
