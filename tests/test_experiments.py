"""params.yaml -> runs: every profile resolves, and bad params fail up front naming the key."""
import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cart import CARTConfig, DenseConfig
from cart.experiments import resolve_run, validate_profile
from cart.params import load_params
from pipeline.profile import apply_profile

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = load_params(ROOT / "params.yaml")


def test_default_profile_resolves_every_run():
    names = validate_profile(DEFAULT, vocab_size=2048)
    assert all(names.values())
    spec = resolve_run(DEFAULT, "stage2", names["stage2"][0], 2048)
    assert isinstance(spec.model, CARTConfig) and spec.model.n_prelude == DEFAULT["stage2"]["n_prelude"]
    dense = resolve_run(DEFAULT, "dense", names["dense"][0], 2048)
    assert isinstance(dense.model, DenseConfig) and dense.model.d_model == DEFAULT["dense"]["d_model"]
    assert dense.run == spec.run  # Dense uses Stage 2's run settings, as in the paper


def test_ablation_variants_change_only_their_flag():
    base = DEFAULT["ablation"]["base"]
    x = resolve_run(DEFAULT, "ablation", "X", 2048)
    assert x.model.unfreeze_kv and x.model.d_model == base["d_model"] and x.variant == "X"
    assert x.seed == DEFAULT["ablation"]["seed"]
    assert resolve_run(DEFAULT, "ablation", "Y", 2048).model.n_loops == 1


def test_paper_profile_expands_to_the_papers_runs(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text())
    merged = apply_profile("paper", p)
    counts = {g: len(n) for g, n in validate_profile(merged).items()}
    assert counts == {"stage1": 64, "stage1_dense": 4, "stage1_variants": 10, "stage2": 36, "dense": 6,
                      "ablation": 10, "sweep_cart": 3, "sweep_dense": 3, "lrt": 2, "ratplus": 2, "ratplus_adapt": 2,
                      "sampled_r": 3}
    # 7 single-seed ablations and the P=4, R=10 spot check at the paper's 3 seeds (Table 9)
    spot = [resolve_run(merged, "ablation", f"P4-s{s}", 32_000) for s in (42, 137, 271)]
    assert [(r.seed, r.variant, r.model.n_prelude, r.model.n_loops, r.model.d_model) for r in spot] == \
        [(s, "P4", 4, 10, 1024) for s in (42, 137, 271)]
    spec = resolve_run(merged, "stage2", "d1024-R6-s42", 32_000)
    assert spec.run.tokens_per_step == 32_768 and spec.run.steps == 30_500
    assert resolve_run(merged, "stage1", "d256-P6-R6", 32_000).run.tokens_per_step == 16_384
    # CUDA graphs where they were measured (fixed R on one GPU): Stage 1, Stage 2 and their controls
    runs = [("stage2", "d256-R10-s137"), ("dense", "L7-s42"), ("stage1", "d256-P6-R6"), ("ablation", "P4-s42"),
            ("stage1_dense", "d1024-L7"), ("stage1_variants", "text-R2-s137")]
    modes = {g: resolve_run(merged, g, n, 32_000).train.compile_mode for g, n in runs}
    assert modes == {"stage2": "reduce-overhead", "dense": "reduce-overhead", "stage1": "reduce-overhead",
                     "ablation": "default", "stage1_dense": "reduce-overhead", "stage1_variants": "reduce-overhead"}


def test_stage1_controls_share_stage1s_run_settings_seed_and_recipe(tmp_path):
    """Dense per width and the CART variants train at Stage 1's settings; a variant's `run:` mapping
    (the leak's longer run) overrides the run settings of that variant alone."""
    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text())
    merged = apply_profile("paper", p)
    stage1 = resolve_run(merged, "stage1", "d256-P6-R6", 32_000)
    dense = resolve_run(merged, "stage1_dense", "d512-L7", 32_000)
    assert (dense.run, dense.train, dense.seed) == (stage1.run, stage1.train, stage1.seed)
    assert isinstance(dense.model, DenseConfig) and (dense.model.d_model, dense.model.n_layers) == (512, 7)
    text = resolve_run(merged, "stage1_variants", "text-R2-s137", 32_000)
    assert (text.run, text.train, text.seed) == (stage1.run, stage1.train, 137)
    assert (text.model.variant, text.model.n_loops, text.model.d_model, text.model.n_prelude) == \
        ("paper_text", 2, 256, 6)
    leak = resolve_run(merged, "stage1_variants", "leak-s42", 32_000)
    assert leak.model.noncausal_cross_attn and leak.model.variant == "paper_code"
    assert (leak.run.steps, leak.run.eval_every) == (6000, 100)
    assert (leak.run.seq_len, leak.run.micro_batch) == (stage1.run.seq_len, stage1.run.micro_batch)
    merged["stage1_variants"]["variants"]["leak"]["run"] = {"stepz": 10}
    with pytest.raises(ValueError, match=r"stage1_variants.variants.leak.run.stepz: unknown run setting"):
        resolve_run(merged, "stage1_variants", "leak-s42", 32_000)
    merged["stage1_variants"]["variants"]["leak"]["run"] = {"steps": 0}
    with pytest.raises(ValueError, match=r"stage1_variants.variants.leak.run: steps: must be >= 1"):
        resolve_run(merged, "stage1_variants", "leak-s42", 32_000)


@pytest.mark.parametrize("overlays", [["local_data"], ["local_eval"], ["paper", "local_eval"]])
def test_every_profile_validates(tmp_path, overlays):
    from pipeline.profile import main, validate_all
    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text())
    validate_all(load_params(p))  # the default profile itself
    for name in overlays:
        main([name, "--params", str(p)])
    assert yaml.safe_load(p.read_text())["profile"] == overlays[-1]


def test_unknown_profile_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown profile 'papr'.*paper"):
        apply_profile("papr", ROOT / "params.yaml")


def _edit(path: str, value):
    params = copy.deepcopy(DEFAULT)
    node = params
    *parents, last = path.split(".")
    for k in parents:
        node = node[k]
    node[last] = value
    return params


@pytest.mark.parametrize("path,value,key", [
    ("train.lrr", 1e-3, "lrr"),
    ("train.lr", "fast", "train.lr"),
    ("train.lr", -1.0, "lr"),
    ("train.optimizer", "sgd", "train.optimizer"),
    ("train.warmup_steps", 10_000, "warmup_steps"),
    ("stage2.run.seq_len", 0, "seq_len"),
    ("stage2.run.steps", "60", "stage2.run.steps"),
    ("stage1.grid.d_model", [100], "d_model"),
    ("stage1.grid.n_prelude", [0], "n_prelude"),
    ("stage2.grid.n_loops", [0], "n_loops"),
    ("stage2.grid.seed", [], "stage2"),
    ("model.d_model", 64, "model: unknown key"),
    ("model.common.d_model", 64, "model.common.d_model"),
    ("model.common.head_dmi", 64, "head_dmi"),
    ("model.cart.n_loops", 3, "model.cart.n_loops"),
    ("model.common.head_dim", 48, "head_dim"),
    ("ablation.variants.X", {"unfreeze_kvv": True}, "ablation.variants.X"),
])
def test_bad_params_fail_up_front_naming_the_key(path, value, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        validate_profile(_edit(path, value), vocab_size=2048)


def _multi_seed(variants: dict, seeds: list) -> dict:
    return _edit("ablation.multi_seed", {"seeds": seeds, "variants": variants})


def test_a_multi_seed_ablation_variant_trains_one_run_per_seed():
    p = _multi_seed({"P1": {"n_prelude": 1, "n_loops": 3}}, [42, 7])
    names = validate_profile(p, vocab_size=2048)["ablation"]
    assert names == [*DEFAULT["ablation"]["variants"], "P1-s42", "P1-s7"]  # single-seed names unchanged
    run = resolve_run(p, "ablation", "P1-s7", 2048)
    assert (run.seed, run.variant, run.model.n_prelude, run.model.n_loops) == (7, "P1", 1, 3)
    assert run.model.d_model == DEFAULT["ablation"]["base"]["d_model"]  # on top of ablation.base
    from cart.experiments import GROUPS, check_in_grid
    assert GROUPS["ablation"].keys("P1-s7")[-1] == "ablation.multi_seed.variants.P1"
    assert GROUPS["ablation"].keys("X")[-1] == "ablation.variants.X"
    check_in_grid(p, "ablation", "P1-s42")
    with pytest.raises(ValueError, match="not in params.yaml's ablation grid"):
        check_in_grid(p, "ablation", "P1-s8")  # what pipeline/train.py checks before training


def test_variants_without_seeds_keep_their_names_and_the_ablation_seed():
    p = _edit("ablation.seed", 5)
    names = validate_profile(p, vocab_size=2048)["ablation"]
    assert names == list(DEFAULT["ablation"]["variants"])
    assert {resolve_run(p, "ablation", n, 2048).seed for n in names} == {5}


@pytest.mark.parametrize("seeds", [[], [42, 42], [42, "137"], [True], 42, None])
def test_bad_multi_seed_seeds_fail_naming_the_key(seeds):
    with pytest.raises(ValueError, match=r"^ablation\.multi_seed\.seeds: expected a non-empty list of distinct "
                                         r"integer seeds, e\.g\. \[42, 137, 271\], got"):
        validate_profile(_multi_seed({"P1": {"n_prelude": 1}}, seeds), vocab_size=2048)


def test_multi_seed_variant_errors_name_their_key():
    with pytest.raises(ValueError, match=r"ablation\.multi_seed\.variants\.P1"):
        validate_profile(_multi_seed({"P1": {"n_preluded": 1}}, [42]), vocab_size=2048)
    with pytest.raises(ValueError, match=r"^ablation\.multi_seed\.variants: expected a mapping"):
        validate_profile(_multi_seed(None, [42]), vocab_size=2048)
    with pytest.raises(ValueError, match="missing key 'ablation.multi_seed'"):
        validate_profile({**DEFAULT, "ablation": {k: v for k, v in DEFAULT["ablation"].items() if k != "multi_seed"}})


def test_a_single_seed_variant_may_not_be_named_like_a_seeded_run():
    p = _edit("ablation.variants", {"A-s1": {"unfreeze_kv": True}})
    with pytest.raises(ValueError, match=r"^ablation\.variants\.A-s1: run name 'A-s1' reads as a run of "
                                         r"ablation\.multi_seed\.variants"):
        validate_profile(p, vocab_size=2048)


def test_bad_run_names_are_rejected():
    with pytest.raises(ValueError, match="pattern"):
        resolve_run(DEFAULT, "stage1", "d64-R2", 2048)
    with pytest.raises(ValueError, match="not in params.yaml's ablation grid"):
        resolve_run(DEFAULT, "ablation", "Q", 2048)
    with pytest.raises(ValueError, match="unknown group"):
        resolve_run(DEFAULT, "stage3", "x", 2048)


_values = st.one_of(st.integers(-3, 5000), st.floats(-1, 1e4, allow_nan=False), st.booleans(),
                    st.text(max_size=5), st.none(), st.lists(st.integers(-2, 300), max_size=3))
_paths = st.sampled_from([
    "train.lr", "train.warmup_steps", "train.device", "train.eval_seqs", "train.grad_clip", "train.beta2",
    "stage1.run.steps", "stage1.run.micro_batch", "stage1.grid.d_model", "stage1.grid.n_loops",
    "stage2.n_prelude", "stage2.run.grad_accum", "stage2.grid.seed", "dense.d_model", "dense.grid.n_layers",
    "model.common.head_dim", "model.cart.kv_latent_ratio", "model.cart.lti_init", "ablation.seed", "ablation.base.n_loops",
    "corpus.train_tokens", "corpus.seed", "corpus.domains.wikipedia.source", "tokenizer.kind",
    "tokenizer.vocab_size", "tokenizer.model_type", "bins.chunk_tokens", "bins.workers", "bins.dtype",
    "benchmarks.limit", "benchmarks.source", "benchmarks.num_fewshot", "variable_r.n_loops", "report.dpi",
])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_paths, _values), min_size=1, max_size=3))
def test_random_params_are_accepted_or_rejected_with_a_named_key(edits):
    """Every stage's validation (pipeline.profile.validate_all) either accepts a params dict or
    raises a ValueError naming an edited key: never a traceback from deep inside a library."""
    from pipeline.profile import validate_all
    params = copy.deepcopy(DEFAULT)
    for path, value in edits:
        params = _edit_in(params, path, value)
    try:
        validate_all(params)
    except ValueError as e:
        named = [p for p, _ in edits if p.split(".")[-1] in str(e) or p.split(".")[0] in str(e)]
        assert named, f"error does not name an edited key: {e}"
    # anything else (TypeError, ZeroDivisionError, a torch error...) fails the test


def _edit_in(params, path, value):
    node = params
    *parents, last = path.split(".")
    for k in parents:
        node = node[k]
    node[last] = value
    return params


def test_profile_cli_writes_valid_params(tmp_path):
    from pipeline.profile import main
    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text())
    main(["paper", "--params", str(p)])
    written = yaml.safe_load(p.read_text())
    assert written["profile"] == "paper" and written["stage2"]["run"]["steps"] == 30_500
    assert written["tokenizer"]["kind"] == "file" and written["benchmarks"]["num_fewshot"] == [0, 5]
    assert written["report"] == DEFAULT["report"]  # sections the overlay leaves alone are kept
