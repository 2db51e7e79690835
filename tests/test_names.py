"""The name grammar (cart/models/names.py): run names of every group template and config names of
every family read back to the fields they were written from, names on disk and in the benchmarks'
JSON read as before, and a bad name fails naming itself and the forms expected."""
import glob
import re
from pathlib import Path

import pytest

from cart.experiments import GROUPS, run_names
from cart.models import CARTConfig, DenseConfig, count_params
from cart.models.names import (CONFIG_FORMS, NAMED_CONFIGS, NameForm, config_from_name, config_name, name_of,
                               parse_config_name)
from cart.params import load_params
from pipeline.profile import apply_profile

ROOT = Path(__file__).resolve().parents[1]
FORMS = [form for g in GROUPS.values() for form in g.forms]


def _values(form, i: int) -> dict:
    """Field values for a template: integers of one and several digits, zero, variants of one and
    of several words (a variant may hold '-' and words that look like field words)."""
    variants = ["X", "lr3e-4", "code-R8", "a_b-s1"]
    return {f: variants[i % len(variants)] if f == "variant" else [0, 7, 42, 1024][(i + k) % 4]
            for k, f in enumerate(form.placeholders)}


@pytest.mark.parametrize("form", FORMS, ids=[f"{f.stage_name}:{f.template}" for f in FORMS])
def test_every_group_template_reads_back_what_it_wrote(form):
    for i in range(4):
        fields = _values(form, i)
        name = form.format(**fields)
        assert form.name_form.parse(name) == fields
        assert form.format(**form.name_form.parse(name)) == name


@pytest.mark.parametrize("profile", ["default", "paper", "gpu"])
def test_every_planned_run_name_reads_back_in_its_group(profile):
    params = (load_params(ROOT / "params.yaml") if profile == "default"
              else apply_profile(profile, ROOT / "params.yaml"))
    for group, names in run_names(params).items():
        g = GROUPS[group]
        for name in names:
            assert g.form_of(name).format(**g.parse(name)) == name


def test_committed_run_names_keep_their_names():
    """Every run whose metrics are committed (metrics/, gpu/...) reads back to the same name."""
    files = [Path(p) for p in glob.glob(str(ROOT / "**" / "metrics" / "*" / "*.json"), recursive=True)]
    runs = [(p.parent.name, p.stem) for p in files if p.parent.name in GROUPS]
    assert len(runs) > 50  # the gpu profile's committed runs are among them
    for group, name in runs:
        g = GROUPS[group]
        assert g.form_of(name).format(**g.parse(name)) == name, f"{group}/{name}"


@pytest.mark.parametrize("arch", sorted(CONFIG_FORMS))
def test_every_family_config_name_reads_back(arch):
    form = CONFIG_FORMS[arch]
    fields = {f: 64 * (k + 1) if f == "d_model" else k + 2 for k, f in enumerate(form.fields)}
    name = config_name(arch, **fields)
    assert parse_config_name(name) == (arch, fields)
    config = config_from_name(name, vocab_size=97)
    assert type(config).arch == arch and all(getattr(config, f) == v for f, v in fields.items())
    assert name_of(config) == name
    for flag in form.flags:
        flagged = config_name(arch, **fields, **{flag: True})
        assert getattr(config_from_name(flagged), flag) is True and name_of(config_from_name(flagged)) == flagged


def test_named_configs_are_the_papers_models():
    for name, fields in NAMED_CONFIGS.items():
        assert config_name(**fields) == name and name_of(config_from_name(name)) == name
    table12 = config_from_name("cart-d1024-P6-R6")
    assert (table12.d_model, table12.n_prelude, table12.n_loops) == (1024, 6, 6)
    # docs/cart.md: Dense 7L matches CART d1024's stored parameters, 122.7M
    assert round(count_params(config_from_name("dense-d1024-L7"))["stored"] / 1e6, 1) == 122.7
    assert {"cart-d1024-P4-R10", "dense-d1024-L12", "dense-d1024-L17"} <= set(NAMED_CONFIGS)


def _parse_config_before(name: str, vocab: int):
    """bench.throughput.train_step's parser before the name grammar, the reference the names in use must still meet."""
    kind, *parts = name.split("-")
    unfreeze = kind == "cart" and parts[-1:] == ["X"]
    parts = parts[:-1] if unfreeze else parts
    fields = {p[0]: int(p[1:]) for p in parts}
    if kind == "cart" and {"d", "R"} <= set(fields) <= {"d", "R", "P"}:
        return CARTConfig(vocab_size=vocab, d_model=fields["d"], n_loops=fields["R"], n_prelude=fields.get("P", 6),
                          unfreeze_kv=unfreeze)
    if kind == "dense" and {"L"} <= set(fields) <= {"L", "d"}:
        return DenseConfig(vocab_size=vocab, d_model=fields.get("d", 1024), n_layers=fields["L"])
    raise ValueError(name)


def _bench_names_in_use() -> set[str]:
    """Config names in the committed benchmark JSON (metrics/, gpu/bench/) and the GPU scripts."""
    names = set()
    for path in [*glob.glob(str(ROOT / "metrics" / "*.json")), *glob.glob(str(ROOT / "gpu" / "bench" / "**" / "*.json"),
                                                                             recursive=True)]:
        names |= set(re.findall(r'"((?:cart|dense)-[A-Za-z0-9-]+)"', Path(path).read_text()))
    for path in glob.glob(str(ROOT / "bench" / "**" / "*.sh"), recursive=True):
        names |= set(re.findall(r"\b((?:cart|dense)-(?:[dPRL]\d+-?)+(?:X\b)?)", Path(path).read_text()))
    return {n.rstrip("-") for n in names}


def test_bench_and_decode_names_parse_as_before():
    """bench.throughput.train_step's parse_config (bench's decode benchmark reads its names with it too)."""
    from bench.throughput.train_step import DEFAULT_CONFIGS, parse_config
    in_use = _bench_names_in_use()
    assert {"cart-d1024-R6", "cart-d1024-R6-X", "dense-L7", "dense-L12-d1024", "dense-L7-d1024"} <= in_use
    others = {"cart-R6-d256", "cart-d256-R6-P4", "cart-P2-d64-R3", "dense-d512-L3", "cart-d64-R3-X"}
    for name in in_use | others:
        assert parse_config(name, 97) == _parse_config_before(name, 97), name
    assert [(c.d_model, c.n_loops) for c in map(lambda n: parse_config(n, 97), DEFAULT_CONFIGS[:12])] == \
        [(d, r) for d in (256, 512, 768, 1024) for r in (6, 8, 10)]
    assert DEFAULT_CONFIGS[12:] == ["dense-d1024-L7", "dense-d1024-L12"]


@pytest.mark.parametrize("name", ["cart-d64", "cart-d64-R3-L2", "cart-d064-R3", "cart-d64-d128-R3", "cart-d64-R",
                                  "cart-d64-R3-Y", "dense-R3", "dense-L2-X", "gpt-d64-L2", "cart", "", "cart-d64--R3"])
def test_a_bad_config_name_is_named_with_the_forms_expected(name):
    with pytest.raises(ValueError) as e:
        parse_config_name(name)
    assert f"bad config name {name!r}" in str(e.value)
    assert "cart-d<d_model>[-P<n_prelude>]-R<n_loops>[-X]" in str(e.value) and "dense[-d<d_model>]-L<n_layers>" in str(e.value)


def test_the_benchmarks_take_cart_and_dense_alone():
    from bench.throughput.train_step import parse_config
    parse_config_name("lrt-d64-L2")
    with pytest.raises(ValueError, match=r"bad config name 'lrt-d64-L2': expected cart-d.* or dense\[-d<d_model>\]"
                                         r"-L<n_layers> \(words"):
        parse_config("lrt-d64-L2", 97)


def test_an_override_contradicting_the_name_is_refused():
    assert config_from_name("cart-d64-R3", vocab_size=97, n_loops=3, lti_init=0.5).lti_init == 0.5
    with pytest.raises(ValueError, match=r"config_from_name\('cart-d64-R3'\): n_loops=4 contradicts the name's 3"):
        config_from_name("cart-d64-R3", n_loops=4)
    with pytest.raises(ValueError, match=r"config name 'dense-L2': unknown key\(s\) \['n_loops'\]"):
        config_from_name("dense-L2", n_loops=4)


@pytest.mark.parametrize("group,name", [("stage1", "d64-R2"), ("stage1", "d64-P2-R02"), ("stage2", "d64-R2-s"),
                                        ("stage2", "d64-R2-s42-x"), ("dense", "L2"), ("lrt", "shared"),
                                        ("lrt", "shared--s42"), ("stage1_dense", "d64-L2-s42")])
def test_a_bad_run_name_is_named_with_its_groups_pattern(group, name):
    g = GROUPS[group]
    patterns = " or ".join(repr(f.template) for f in g.forms)
    with pytest.raises(ValueError, match=re.escape(f"run name {name!r} does not match {group}'s pattern {patterns}")):
        g.parse(name)


@pytest.mark.parametrize("template", ["x{d_model}", "d{n_loops}", "R{n_loops}-R{n_loops}", "{variant}-{variant}",
                                      "d{d_model}x", "{seed}", "d{d_model!r}", "s{seed:3}"])
def test_a_template_outside_the_grammar_is_refused(template):
    with pytest.raises(ValueError, match=re.escape(f"name template {template!r}")):
        NameForm(template)


def test_format_refuses_what_would_not_read_back():
    form = NameForm("{variant}-s{seed}")
    for bad in ({"variant": "a b", "seed": 1}, {"variant": "a--b", "seed": 1}, {"variant": "a", "seed": -1},
                {"variant": "a", "seed": True}, {"variant": "a"}):
        with pytest.raises(ValueError):
            form.format(**bad)
    with pytest.raises(ValueError, match="n_loops: a name holds a non-negative integer"):
        config_name("cart", d_model=64, n_prelude=2, n_loops=2.0)
    with pytest.raises(ValueError, match="cart config name: expected the fields"):
        config_name("cart", d_model=64, n_loops=2)
