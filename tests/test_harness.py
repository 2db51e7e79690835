"""The lm-eval adapter (cart/evaluation/harness.py) against log-likelihoods computed by hand from the model,
and the offline task YAMLs (cart/evaluation/benchmarks/) against lm-eval's own built-in tasks."""
import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

import cart
from cart.evaluation import benchmarks as B
from cart.evaluation.benchmarks import smoke
from conftest import smoke_benchmark_text
from cart.training.checkpoint import save_weights, write_run_config
from cart.evaluation.harness import CARTLM, BenchmarkSettings, Tokenizer, evaluate_benchmarks, quiet_lm_eval
from cart.params import build

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LM_EVAL_TASKS = Path(lm_eval.__file__).resolve().parent / "tasks"
BUILTIN_YAML = {"hellaswag": "hellaswag/hellaswag.yaml", "arc_challenge": "arc/arc_challenge.yaml",
                "lambada_openai": "lambada/lambada_openai.yaml", "piqa": "piqa/piqa.yaml"}
VOCAB = 512

quiet_lm_eval()


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- helpers shared with tests/test_harness_pipeline.py -----------------------------------------

def make_tokenizer(d: Path, domains=("tinystories", "wikipedia", "fineweb_edu")) -> Path:
    """A tiny SentencePiece BPE model (byte fallback, bos 1, eos 2) trained on the smoke set."""
    import sentencepiece as spm

    d.mkdir(parents=True, exist_ok=True)
    lines = smoke_benchmark_text().splitlines() + ["The quick brown fox jumps over the lazy dog."] * 3
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(d / "tokenizer"),
                                   vocab_size=VOCAB, model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1,
                                   eos_id=2, pad_id=-1, minloglevel=2)
    (d / "tokenizer.vocab").unlink(missing_ok=True)
    sha = hashlib.sha256((d / "tokenizer.model").read_bytes()).hexdigest()
    info = {"vocab_size": VOCAB, "kind": "train", "sha256": sha, "bytes_per_token": {k: 3.5 for k in domains},
            "bos_id": 1, "eos_id": 2}
    (d / "tokenizer.json").write_text(json.dumps(info))
    return d


def make_model(vocab=VOCAB, n_loops=2, d_model=64, seed=0):
    """A tiny random CART; matrices drawn wider than the training init so that context and R
    visibly move the scores (at init_std=0.02 the next-token distribution is nearly uniform)."""
    torch.manual_seed(seed)
    model = cart.build_model(cart.CARTConfig(vocab_size=vocab, d_model=d_model, head_dim=32, n_prelude=1,
                                             n_loops=n_loops))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    return model.eval()


def make_run(run_dir: Path, tok_dir: Path, n_loops=2, d_model=64, seed=0, seq_len=64, tokenizer=None,
             vocab=None) -> Path:
    """A fake run directory as the training stage writes it (config.json + model.safetensors)."""
    info = json.loads((tok_dir / "tokenizer.json").read_text())
    model = make_model(vocab or info["vocab_size"], n_loops, d_model, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model, run_dir / "model.safetensors")
    rec = tokenizer if tokenizer is not None else {"vocab_size": info["vocab_size"], "sha256": info["sha256"]}
    write_run_config(run_dir, {"run_id": f"{run_dir.parent.name}/{run_dir.name}", "model": model.config.to_dict(),
                               "run": {"seq_len": seq_len}, "tokenizer": rec})
    return run_dir


# lm-eval's batched, padded log-likelihoods agree with hand_ll's to 1e-4 (asserted below; ~1e-5 seen):
# a choice it takes (the best-scoring answer, or whether a continuation is greedy) is compared with
# the hand computation's only where the alternatives are 1e-3 apart, so float rounding decides none
DECISIVE = 1e-3


def hand_ll(model, ctx_ids, cont_ids, n_loops=None, max_length=None, greedy_margin=None):
    """sum_i log p(cont_i | everything before it), one sequence at a time, no batching. greedy_margin:
    assert that at every continuation position the target's log-probability is further than this
    from the best other token's (the greedy flag is then the same for any computation within it)."""
    ids = list(ctx_ids) + list(cont_ids)
    if max_length is not None:
        ids = ids[-(max_length + 1):]
    kwargs = {} if n_loops is None else {"n_loops": n_loops}
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ids[:-1]]), **kwargs)[0].double(), dim=-1)
    first = len(ids) - len(cont_ids) - 1  # the position whose output predicts cont[0]
    lps = [logp[first + i, t].item() for i, t in enumerate(cont_ids)]
    greedy = all(logp[first + i].argmax().item() == t for i, t in enumerate(cont_ids))
    if greedy_margin is not None:
        for i, t in enumerate(cont_ids):
            row = logp[first + i]
            gap = abs(float(row[t] - torch.cat([row[:t], row[t + 1:]]).max()))
            assert gap > greedy_margin, f"continuation token {i}: greedy or not is {gap:.2g} from a tie"
    return sum(lps), greedy


def hand_pair(sp, context: str, continuation: str):
    """lm-eval's split of (context, continuation) into tokens: encode both joined, cut at the context."""
    whole, ctx = sp.encode(context + continuation), sp.encode(context)
    return ctx, whole[len(ctx):]


def req(context, continuation):
    return Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=0)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return Tokenizer(tok_dir)


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture
def lm(model, tok):
    return CARTLM(model, tok, batch_size=3, max_length=256, progress=False)


PAIRS = [("Tom walks into the garden and sees a red ball.", " Tom picks up the ball."),
         ("Question: Which of these is a fruit?\nAnswer:", " apple"),
         ("Anna", " and Ben went to the park."),
         ("To keep milk cold,", " put it in the fridge."),
         ("A", " b"),
         ("Lily had a kite, and Sam wanted to hold it. \"Can I hold your kite?\" asked", " Sam")]


# ---- the adapter ----------------------------------------------------------------------------------

def test_loglikelihood_equals_hand_computed_sums(lm, model, tok):
    got = lm.loglikelihood([req(c, x) for c, x in PAIRS], disable_tqdm=True)  # batches of 3, padded
    for (c, x), (ll, greedy) in zip(PAIRS, got):
        want, want_greedy = hand_ll(model, *hand_pair(tok.sp, c, x), greedy_margin=DECISIVE)
        assert ll == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy
    assert len({round(ll, 3) for ll, _ in got}) == len(PAIRS)  # results are not shuffled together


def test_context_is_truncated_from_the_left(model, tok):
    lm = CARTLM(model, tok, batch_size=2, max_length=10, progress=False)
    ctx = "Tom walks into the garden and sees a red ball. Then he walks into the kitchen and sees a cup."
    (ll, _), (short, _) = lm.loglikelihood([req(ctx, " Tom smiles."), req("Tom", " smiles.")], disable_tqdm=True)
    c, x = hand_pair(tok.sp, ctx, " Tom smiles.")
    assert len(c) + len(x) > 11
    assert ll == pytest.approx(hand_ll(model, c, x, max_length=10)[0], abs=1e-4)
    assert ll != pytest.approx(hand_ll(model, c, x)[0], abs=1e-3)  # the cut changed the score
    assert short == pytest.approx(hand_ll(model, *hand_pair(tok.sp, "Tom", " smiles."))[0], abs=1e-4)


def test_empty_context_and_prefix_use_the_document_separator(lm, model, tok):
    """The bins end every document with EOS, so EOS is what precedes a document's first token."""
    (ll, _), = lm.loglikelihood([req("", "Tom and Anna")], disable_tqdm=True)
    assert lm.prefix_token_id == tok.eos_id == 2
    assert ll == pytest.approx(hand_ll(model, [tok.eos_id], tok.sp.encode("Tom and Anna"))[0], abs=1e-4)
    pre = CARTLM(model, tok, prefix_context="eos", progress=False)
    (ll, _), = pre.loglikelihood([req("Tom and", " Anna")], disable_tqdm=True)
    ctx, cont = hand_pair(tok.sp, "Tom and", " Anna")
    assert ll == pytest.approx(hand_ll(model, [tok.eos_id] + ctx, cont)[0], abs=1e-4)


def test_loglikelihood_rolling_scores_every_token_once(model, tok):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    text = "Tom walks into the garden and sees a red ball. Anna and Ben went to the park with a kite."
    ids = tok.sp.encode(text)
    long_lm = CARTLM(model, tok, batch_size=2, max_length=256, progress=False)
    (whole,) = long_lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    assert whole == pytest.approx(hand_ll(model, [tok.eos_id], ids)[0], abs=1e-4)

    short_lm = CARTLM(model, tok, batch_size=2, max_length=8, progress=False)
    (windowed,) = short_lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)],
                                                 disable_tqdm=True)
    wins = [make_disjoint_window(w) for w in get_rolling_token_windows(ids, tok.eos_id, 8, 1)]
    assert sum(len(cont) for _, cont in wins) == len(ids)
    assert windowed == pytest.approx(sum(hand_ll(model, c, x)[0] for c, x in wins), abs=1e-4)
    assert windowed != pytest.approx(whole, abs=1e-3)


def test_n_loops_reaches_the_model(lm, model, tok):
    pairs = PAIRS[:3]
    reqs = [req(c, x) for c, x in pairs]
    default = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    lm.n_loops = 2  # the trained R
    assert [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)] == pytest.approx(default, abs=1e-5)
    for r in (1, 5):
        lm.n_loops = r
        got = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
        want = [hand_ll(model, *hand_pair(tok.sp, c, x), n_loops=r)[0] for c, x in pairs]
        assert got == pytest.approx(want, abs=1e-4)
        assert all(abs(g - d) > 1e-3 for g, d in zip(got, default))


@pytest.mark.parametrize("value,message", [(2.5, "n_loops: expected an int, got 2.5"),
                                           (True, "n_loops: expected an int, got True"),
                                           (0, "n_loops: must be >= 1, got 0")])
def test_bad_n_loops_is_refused_when_set_not_when_scoring(model, tok, value, message):
    """lm-eval's `--model_args n_loops=2.5` reaches the adapter as a float: one message up front."""
    with pytest.raises(ValueError, match=f"^{message}$"):
        CARTLM(model, tok, n_loops=value, progress=False)
    lm = CARTLM(model, tok, progress=False)
    with pytest.raises(ValueError, match=f"^{message}$"):
        lm.n_loops = value
    assert lm.n_loops is None


def test_n_loops_on_a_model_without_loops_is_refused(tok):
    from cart.models import DenseConfig, build_model
    dense = build_model(DenseConfig(vocab_size=VOCAB, d_model=32, head_dim=16, n_layers=1, ffn_multiple=16))
    with pytest.raises(ValueError, match="^n_loops: Dense has no loop count"):
        CARTLM(dense, tok, n_loops=2, progress=False)


def test_bf16_autocast_path_stays_close_to_fp32(model, tok):
    pairs = [req(c, x) for c, x in PAIRS]
    fp32 = CARTLM(model, tok, batch_size=4, max_length=256, progress=False).loglikelihood(pairs, disable_tqdm=True)
    bf16 = CARTLM(model, tok, batch_size=4, max_length=256, dtype=torch.bfloat16,
                  progress=False).loglikelihood(pairs, disable_tqdm=True)
    assert [b for b, _ in bf16] == pytest.approx([a for a, _ in fp32], rel=0.05)
    assert [b for b, _ in bf16] != [a for a, _ in fp32]  # autocast did run in bf16


def test_generate_until_is_greedy_and_stops(lm, model, tok):
    ctx = "Tom walks into the garden and"
    ids = torch.tensor([tok.sp.encode(ctx)])
    full = tok.sp.decode(cart.generate(model, ids, 12, temperature=0)[0, ids.shape[1]:].tolist())
    (out,) = lm.generate_until([Instance("generate_until", {}, (ctx, {"until": [], "max_gen_toks": 12}), 0)],
                               disable_tqdm=True)
    assert out == full
    stop = full[len(full) // 2:][:2]
    (cut,) = lm.generate_until([Instance("generate_until", {}, (ctx, {"until": [stop], "max_gen_toks": 12}), 0)],
                               disable_tqdm=True)
    assert cut == full.split(stop)[0]


def test_adapter_rejects_a_model_of_another_vocabulary(tok):
    with pytest.raises(ValueError, match="vocab_size"):
        CARTLM(make_model(vocab=VOCAB + 8), tok)


def test_tokenizer_model_must_match_its_info(tmp_path, tok_dir):
    d = tmp_path / "tok"
    shutil.copytree(tok_dir, d)
    info = json.loads((d / "tokenizer.json").read_text())
    (d / "tokenizer.json").write_text(json.dumps({**info, "sha256": "e" * 64}))
    with pytest.raises(ValueError, match="not the model tokenizer.json describes"):
        Tokenizer(d)


def test_mismatched_tokenizer_is_rejected(tmp_path, tok_dir):
    ok = make_run(tmp_path / "runs/stage2/d64-R2-s42", tok_dir)
    assert CARTLM.from_run(ok, tok_dir, progress=False).max_length == 64  # the run's seq_len
    other = make_run(tmp_path / "runs/stage2/other", tok_dir,
                     tokenizer={"vocab_size": VOCAB, "sha256": "0" * 64})
    with pytest.raises(ValueError, match="tokenizer mismatch.*sha256"):
        CARTLM.from_run(other, tok_dir)
    wrong_vocab = make_run(tmp_path / "runs/stage2/vocab", tok_dir, vocab=VOCAB * 2,
                           tokenizer={"vocab_size": VOCAB * 2, "sha256": "1" * 64})
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        CARTLM.from_run(wrong_vocab, tok_dir)
    unknown = make_run(tmp_path / "runs/stage2/unknown", tok_dir, tokenizer={})
    with pytest.raises(ValueError, match="records no tokenizer"):
        CARTLM.from_run(unknown, tok_dir)


# ---- task YAMLs: the same tasks as lm-eval's built-ins -----------------------------------------

PROMPT_KEYS = ("output_type", "training_split", "validation_split", "test_split", "fewshot_split", "doc_to_text",
               "doc_to_target", "doc_to_choice", "target_delimiter", "fewshot_delimiter", "fewshot_config",
               "metric_list", "num_fewshot", "description", "should_decontaminate", "doc_to_decontamination_query",
               "generation_kwargs", "filter_list", "process_results", "metadata")


@pytest.mark.parametrize("task", B.TASKS)
def test_task_yaml_matches_the_builtin_task(task):
    ours = load_yaml(B.TASK_DIR / f"cart_{task}.yaml", resolve_func=False)
    theirs = load_yaml(LM_EVAL_TASKS / BUILTIN_YAML[task], resolve_func=False)
    assert ours["task"] == f"cart_{task}" and theirs["task"] == task
    for key in PROMPT_KEYS:
        assert ours.get(key) == theirs.get(key), key
    assert set(ours) - set(theirs) <= {"custom_dataset"}
    assert ("process_docs" in ours) == ("process_docs" in theirs)


def test_hellaswag_preprocessing_matches_the_harness():
    import datasets
    from lm_eval.tasks.hellaswag import utils as theirs

    from cart.evaluation.benchmarks.loaders import hellaswag_process_docs

    rows = smoke.generate("hellaswag")["validation"] + [
        {"activity_label": "Home and Garden", "ctx_a": "[header] How to plant a tree [title] Dig a hole.",
         "ctx_b": "make  sure", "endings": ["[step] it is  deep.", "x", "y [substeps] z", "w"], "label": "0"}]
    ds = datasets.Dataset.from_list([{k: r[k] for k in ("activity_label", "ctx_a", "ctx_b", "endings", "label")}
                                     for r in rows])
    assert hellaswag_process_docs(ds).to_list() == theirs.process_docs(ds).to_list()


# Release-format copies of smoke items (what the benchmark authors publish), written by the test.
def write_release_files(local_dir: Path, fewshot=True) -> dict:
    hub = {t: smoke.generate(t) for t in B.TASKS}
    (local_dir / "hellaswag").mkdir(parents=True)
    for split, name in (("validation", "hellaswag_val.jsonl"), ("train", "hellaswag_train.jsonl")):
        if split == "train" and not fewshot:
            continue
        rows = [dict(r, label=int(r["label"])) for r in hub["hellaswag"][split]]
        (local_dir / "hellaswag" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (local_dir / "arc_challenge").mkdir()
    for split, name in (("test", "ARC-Challenge-Test.jsonl"), ("train", "ARC-Challenge-Train.jsonl")):
        rows = [{"id": r["id"], "question": {"stem": r["question"], "choices": [
            {"text": t, "label": lab} for t, lab in zip(r["choices"]["text"], r["choices"]["label"])]},
            "answerKey": r["answerKey"]} for r in hub["arc_challenge"][split]]
        (local_dir / "arc_challenge" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (local_dir / "lambada_openai").mkdir()
    (local_dir / "lambada_openai" / "lambada_test.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in hub["lambada_openai"]["test"]))
    (local_dir / "piqa").mkdir()
    for split, stem in (("validation", "valid"), ("train", "train")):
        if split == "train" and not fewshot:
            continue
        rows = hub["piqa"][split]
        (local_dir / "piqa" / f"{stem}.jsonl").write_text(
            "".join(json.dumps({k: r[k] for k in ("goal", "sol1", "sol2")}) + "\n" for r in rows))
        (local_dir / "piqa" / f"{stem}-labels.lst").write_text("".join(f"{r['label']}\n" for r in rows))
    return hub


def builtin_task_with_docs(task: str, splits: dict):
    """lm-eval's own built-in task config, fed `splits` (hub layout) instead of the hub dataset."""
    import datasets

    cfg = load_yaml(LM_EVAL_TASKS / BUILTIN_YAML[task], resolve_func=True)
    cfg.pop("tag", None)
    cfg["task"] = f"builtin_{task}"
    cfg["custom_dataset"] = lambda **_: datasets.DatasetDict(
        {k: datasets.Dataset.from_list(v) for k, v in splits.items()})
    return cfg


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    return d, write_release_files(d / "bench")


@pytest.fixture(scope="module")
def local_zero_shot(release_dir, model, tok):
    """Our local task YAMLs, 0-shot, on the release-format files: (rows, lm-eval results)."""
    lm = CARTLM(model, tok, batch_size=3, max_length=256, progress=False)
    return evaluate_benchmarks(lm, list(B.TASKS), source="local", local_dir=release_dir[0] / "bench",
                               num_fewshot=0, limit=5, bootstrap_iters=10, log_samples=True)


@pytest.mark.parametrize("shots", [0, 2])
def test_local_tasks_score_like_the_builtin_tasks(release_dir, local_zero_shot, lm, shots):
    local_dir, hub = release_dir[0] / "bench", release_dir[1]
    if shots == 0:
        rows, ours = local_zero_shot
    else:
        rows, ours = evaluate_benchmarks(lm, list(B.TASKS), source="local", local_dir=local_dir,
                                         num_fewshot=shots, limit=5, bootstrap_iters=10, log_samples=True)
    theirs = lm_eval.simple_evaluate(model=lm, tasks=[builtin_task_with_docs(t, hub[t]) for t in B.TASKS],
                                     num_fewshot=shots, limit=5, bootstrap_iters=10, log_samples=True,
                                     task_manager=B.task_manager("builtin"))
    for t in B.TASKS:
        a, b = ours["results"][f"cart_{t}"], theirs["results"][f"builtin_{t}"]
        for m in B.METRICS[t]:
            assert a[f"{m},none"] == b[f"{m},none"], (t, m)
        sa, sb = ours["samples"][f"cart_{t}"], theirs["samples"][f"builtin_{t}"]
        assert [s["arguments"] for s in sa] == [s["arguments"] for s in sb]  # the same prompts, shots included
    assert {r["task"] for r in rows} == set(B.TASKS) and len(rows) == 8


def _preprocess(text):  # HellaSwag's published cleanup of WikiHow artefacts
    text = re.sub("\\[.*?\\]", "", text.strip().replace(" [title]", ". "))
    return text.replace("  ", " ")


def hand_prompt(task, doc):
    """(context, [continuations], gold) of a 0-shot item, written out by hand from the task's published
    prompt: HellaSwag 'label: ctx_a Ctx_b' + ' ending'; ARC/PIQA 'Question: ...\\nAnswer:' + ' choice'."""
    if task == "hellaswag":
        q = _preprocess(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())
        return q, [" " + _preprocess(e) for e in doc["endings"]], int(doc["label"])
    if task == "arc_challenge":
        return (f"Question: {doc['question']}\nAnswer:", [" " + t for t in doc["choices"]["text"]],
                doc["choices"]["label"].index(doc["answerKey"]))
    if task == "piqa":
        return f"Question: {doc['goal']}\nAnswer:", [" " + doc["sol1"], " " + doc["sol2"]], doc["label"]
    ctx, word = doc["text"].rsplit(" ", 1)
    return ctx, [" " + word], 0


def check_against_hand(results, model, sp, tasks, names):
    """Per item: choice log-likelihoods by hand -> acc/acc_norm (LAMBADA: greedy, ppl) as logged."""
    from conftest import assert_decisive_argmax
    for task, name in zip(tasks, names):
        samples = results["samples"][name]
        accs, norms, lls = [], [], []
        for s in samples:
            ctx, conts, gold = hand_prompt(task, s["doc"])
            margin = DECISIVE if task == "lambada_openai" else None  # its acc is the greedy flag
            scores = [hand_ll(model, *hand_pair(sp, ctx, c), greedy_margin=margin) for c in conts]
            got = [r[0] for r in s["filtered_resps"]]
            assert got == pytest.approx([ll for ll, _ in scores], abs=1e-4), task
            if task == "lambada_openai":
                accs.append(float(scores[0][1]))
                lls.append(scores[0][0])
                assert s["acc"] == accs[-1]
                continue
            ll = [x for x, _ in scores]
            assert_decisive_argmax(torch.tensor(ll), DECISIVE, f"{task} choices (acc)")
            # acc_norm ranks log-likelihood per character: an error of DECISIVE / 2 in each of two
            # choices' log-likelihoods moves their gap by at most DECISIVE / (the shorter's length)
            chars = [len(c[1:]) for c in conts]
            assert_decisive_argmax(torch.tensor([x / n for x, n in zip(ll, chars)]), DECISIVE / min(chars),
                                   f"{task} choices (acc_norm)")
            pred = max(range(len(ll)), key=ll.__getitem__)
            norm = max(range(len(ll)), key=lambda i: ll[i] / len(conts[i][1:]))  # minus the " " delimiter
            accs.append(float(pred == gold))
            norms.append(float(norm == gold))
            assert (s["acc"], s["acc_norm"]) == (accs[-1], norms[-1]), task
        agg = results["results"][name]
        assert agg["acc,none"] == pytest.approx(sum(accs) / len(accs))
        if norms:
            assert agg["acc_norm,none"] == pytest.approx(sum(norms) / len(norms))
        if lls:  # lm-eval batches (and pads) what hand_ll scores alone: the same 1e-4 as each loglik
            assert agg["perplexity,none"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-4)


def test_acc_and_acc_norm_follow_hand_computed_choice_loglikelihoods(local_zero_shot, model, tok):
    check_against_hand(local_zero_shot[1], model, tok.sp, B.TASKS, [f"cart_{t}" for t in B.TASKS])


def test_builtin_smoke_set_runs_end_to_end(lm):
    for shots in (0, 3):
        rows, res = evaluate_benchmarks(lm, list(B.TASKS), source="builtin", num_fewshot=shots, limit=4,
                                        bootstrap_iters=10)
        assert [(r["task"], r["metric"]) for r in rows] == [(t, m) for t in B.TASKS for m in B.METRICS[t]]
        for r in rows:
            if r["metric"] == "perplexity":
                assert r["value"] > 1
            else:
                assert 0.0 <= r["value"] <= 1.0
        assert all(res["results"][f"cart_{t}"]["sample_len"] == 4 for t in B.TASKS)


def test_missing_benchmark_file_names_the_file_and_format(tmp_path):
    write_release_files(tmp_path / "bench")
    (tmp_path / "bench/hellaswag/hellaswag_val.jsonl").unlink()
    with pytest.raises(B.BenchmarkFileError, match=r"hellaswag/hellaswag_val\.jsonl.*JSON Lines.*ctx_a"):
        B.check_local_files(tmp_path / "bench", B.TASKS)
    (tmp_path / "bench/piqa/valid-labels.lst").unlink()
    from cart.evaluation.benchmarks.loaders import read_local
    with pytest.raises(B.BenchmarkFileError, match=r"piqa/valid-labels\.lst.*0 or 1"):
        read_local("piqa", tmp_path / "bench")
    with pytest.raises(B.BenchmarkFileError, match="is not a folder"):
        B.check_local_files(tmp_path / "nowhere", ["piqa"])


def test_fewshot_without_a_train_file(tmp_path, lm):
    write_release_files(tmp_path / "bench", fewshot=False)
    with pytest.raises(B.BenchmarkFileError, match=r"hellaswag_train\.jsonl.*fewshot_fallback"):
        B.task_specs(["hellaswag"], "local", tmp_path / "bench", num_fewshot=2)
    assert B.task_specs(["hellaswag"], "local", tmp_path / "bench", num_fewshot=0)[0]["training_split"] is None
    _, res = evaluate_benchmarks(lm, ["hellaswag"], source="local", local_dir=tmp_path / "bench",
                                 num_fewshot=2, limit=5, bootstrap_iters=10, log_samples=True,
                                 fewshot_fallback="eval_split")
    for s in res["samples"]["cart_hellaswag"]:
        context = s["arguments"][0][0]
        own = _preprocess(s["doc"]["activity_label"] + ": " + s["doc"]["ctx_a"] + " " +
                          s["doc"]["ctx_b"].capitalize())
        assert context.count("\n\n") == 2 and context.endswith(own)
        assert context.count(own) == 1  # the evaluated item is never one of its own examples
        # (smoke items are unique, so another item cannot share its query)


def test_real_benchmark_files_load_and_score_consistently(tmp_path):
    bench, sp_model = SHARED / "benchmarks", SHARED / "tokenizer" / "llama2_tokenizer.model"
    if not bench.is_dir() or not sp_model.is_file():
        pytest.skip(f"real benchmark samples / Llama-2 tokenizer not found under {SHARED}")
    from cart.evaluation.benchmarks.loaders import read_local

    sizes = {t: {k: len(v) for k, v in read_local(t, bench).items()} for t in B.TASKS}
    assert sizes["arc_challenge"] == {"train": 1119, "validation": 299, "test": 1172}
    assert sizes["piqa"] == {"validation": 1838} and sizes["lambada_openai"] == {"test": 5153}
    assert sizes["hellaswag"] == {"validation": 10042}  # the full file comes before the subset
    arc = read_local("arc_challenge", bench)["test"][0]
    assert arc["question"].startswith("An astronomer observes") and arc["choices"]["label"] == list("ABCD")
    assert arc["answerKey"] == "C"

    tdir = tmp_path / "llama2"
    tdir.mkdir()
    (tdir / "tokenizer.model").symlink_to(sp_model)  # a link, not a copy
    sha = hashlib.sha256(sp_model.read_bytes()).hexdigest()
    (tdir / "tokenizer.json").write_text(json.dumps({"vocab_size": 32000, "kind": "file", "sha256": sha,
                                                     "bytes_per_token": {}, "bos_id": 1, "eos_id": 2}))
    tok = Tokenizer(tdir)
    model = make_model(vocab=32000, d_model=32)
    lm = CARTLM(model, tok, batch_size=4, max_length=512, progress=False)
    _, res = evaluate_benchmarks(lm, list(B.TASKS), source="local", local_dir=bench, num_fewshot=0, limit=2,
                                 bootstrap_iters=10, log_samples=True)
    check_against_hand(res, model, tok.sp, B.TASKS, [f"cart_{t}" for t in B.TASKS])


def test_benchmark_params_are_validated(tmp_path):
    from cart.params import load_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    good = dict(params["benchmarks"])
    assert build(BenchmarkSettings, good, "benchmarks").source == "builtin"
    with pytest.raises(ValueError, match=r"benchmarks: unknown key\(s\) \['limt'\]"):
        build(BenchmarkSettings, {**good, "limt": 3}, "benchmarks")
    with pytest.raises(ValueError, match="local_dir"):
        build(BenchmarkSettings, {**good, "source": "local", "local_dir": None}, "benchmarks")
    with pytest.raises(ValueError, match="benchmarks.source"):
        build(BenchmarkSettings, {**good, "source": "web"}, "benchmarks")
    with pytest.raises(ValueError, match="tasks"):
        build(BenchmarkSettings, {**good, "tasks": ["hellaswag", "mmlu"]}, "benchmarks")
    with pytest.raises(ValueError, match="missing key"):
        build(BenchmarkSettings, {k: v for k, v in good.items() if k != "limit"}, "benchmarks")


def test_every_task_file_is_package_data():
    """A non-editable install carries the lm-eval task files: pyproject's package-data globs match
    every YAML under cart/."""
    import tomllib
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cart"]
    packaged = {p for g in globs for p in (root / "cart").glob(g)}
    assert packaged and packaged == set((root / "cart").rglob("*.yaml"))
