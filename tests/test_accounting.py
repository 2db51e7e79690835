"""Accounting against the paper's numbers (CART_SPEC.md section 2; paper Tables 1, 3, 4)."""
import pytest

from cart import CARTConfig, DenseConfig, build_model, count_params, forward_flops, mfu
from cart.models import config_from_dict

# (d, R) -> (stored, effective) in millions, paper Table 1 and the spec.
PAPER_PARAMS = {
    (256, 6): (14.4, 18.0),
    (512, 6): (41.1, 55.5),
    (768, 6): (75.3, 104.8),
    (1024, 6): (125.1, 178.8),
    (1024, 8): (125.1, 200.3),
    (1024, 10): (125.1, 221.8),
}


@pytest.mark.parametrize("d,R", sorted(PAPER_PARAMS))
def test_cart_params_match_paper(d, R):
    stored, effective = PAPER_PARAMS[(d, R)]
    got = count_params(CARTConfig(d_model=d, n_prelude=6, n_loops=R))
    assert got["stored"] / 1e6 == pytest.approx(stored, rel=0.005)
    assert got["effective"] / 1e6 == pytest.approx(effective, rel=0.005)


@pytest.mark.parametrize("layers,millions", [(7, 122.7), (12, 187.0), (17, 251.0)])
def test_dense_params_match_paper(layers, millions):
    got = count_params(DenseConfig(d_model=1024, n_layers=layers))
    assert got["stored"] == got["effective"]
    assert got["stored"] / 1e6 == pytest.approx(millions, rel=0.005)


@pytest.mark.parametrize("cfg,gflops", [
    (DenseConfig(n_layers=7), 214),
    (CARTConfig(n_loops=6), 355),
    (CARTConfig(n_loops=8), 407),
    (CARTConfig(n_loops=10), 460),
    (DenseConfig(n_layers=17), 520),
])
def test_forward_flops_match_paper_table3(cfg, gflops):
    assert forward_flops(cfg, 1024) / 1e9 == pytest.approx(gflops, rel=0.01)


@pytest.mark.parametrize("d,R,tok_s,paper_mfu", [
    (256, 6, 134_985, 0.20), (512, 6, 71_244, 0.33), (768, 6, 45_556, 0.40),
    (1024, 6, 32_393, 0.49), (1024, 10, 25_681, 0.48),
])
def test_mfu_reproduces_paper_table4(d, R, tok_s, paper_mfu):
    # the paper's RTX 3090 numbers, peak 71 TFLOP/s bf16; the paper rounds to whole percent
    assert mfu(CARTConfig(d_model=d, n_loops=R), tok_s, 71e12) == pytest.approx(paper_mfu, abs=0.006)


SMALL = dict(vocab_size=97, d_model=64, head_dim=16, n_prelude=2, n_loops=3, ffn_multiple=32)
VARIANTS = [
    {}, {"unfreeze_kv": True}, {"unshare_core": True}, {"unshare_core": True, "self_attn_core": True},
    {"self_attn_core": True}, {"disable_hyperconnection": True}, {"disable_lti": True},
    {"disable_lie": True}, {"n_loops": 1},
]


@pytest.mark.parametrize("flags", VARIANTS, ids=lambda f: "-".join(f) or "base")
def test_stored_count_equals_built_model(flags):
    cfg = CARTConfig(**(SMALL | flags))
    assert count_params(cfg)["stored"] == build_model(cfg).num_params()


@pytest.mark.parametrize("layers", [1, 3])
def test_dense_stored_count_equals_built_model(layers):
    cfg = DenseConfig(vocab_size=97, d_model=64, head_dim=16, n_layers=layers, ffn_multiple=32)
    assert count_params(cfg)["stored"] == build_model(cfg).num_params()


def test_ablation_accounting_follows_the_paper():
    base = CARTConfig(d_model=1024)
    unshared = count_params(base.replace(unshare_core=True))
    # Z: every iteration gets its own core, so effective == stored == CART's effective count
    assert unshared["stored"] == unshared["effective"] == count_params(base)["effective"]
    # W: self-attention cores add their own latent K/V and drop the anchor: slightly larger
    w = count_params(base.replace(unshare_core=True, self_attn_core=True))
    assert unshared["stored"] < w["stored"] < 1.03 * unshared["stored"]
    # Y: R=1 has no leverage
    y = count_params(base.replace(n_loops=1))
    assert y["stored"] == y["effective"]
    # X: K, V recomputed each iteration adds anchor projections of effective compute
    x = count_params(base.replace(unfreeze_kv=True))
    assert x["stored"] == count_params(base)["stored"] < x["effective"]
    assert forward_flops(base.replace(unfreeze_kv=True), 1024) > forward_flops(base, 1024)


def test_config_round_trips_through_dict():
    cfg = CARTConfig(**SMALL, disable_lie=True)
    assert config_from_dict(cfg.to_dict()) == cfg
    dense = DenseConfig(n_layers=3)
    assert config_from_dict(dense.to_dict()) == dense
