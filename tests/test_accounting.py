"""Accounting against the paper's numbers (docs/cart.md, Accounting; paper Tables 1, 3, 4), compared at
the precision the paper prints them, and against the built model: stored = its parameters, effective
and FLOPs = the weights its forward actually applies, counted with hooks."""
import pytest
import torch
from torch import nn

from cart import CARTConfig, DenseConfig, build_model, count_params, forward_flops, mfu
from cart.models import config_from_dict
from cart.models.cart.model import MLACrossAttention, MLASelfAttention
from cart.models.layers import MHASelfAttention, RMSNorm

# (d, R) -> (stored, effective) in millions as paper Table 1 prints them (0.1 M).
PAPER_PARAMS = {
    (256, 6): (14.4, 18.0),
    (512, 6): (41.1, 55.5),
    (768, 6): (75.3, 104.8),
    (1024, 6): (125.1, 178.8),
    (1024, 8): (125.1, 200.3),
    (1024, 10): (125.1, 221.8),
}
# The one printed number we do not reproduce (docs/cart.md lists it): d=512 stored is 41,035,267 by the
# paper's own formula (docs/cart.md, Accounting), which prints as 41.0 M; the paper prints 41.1 M. Its
# effective count, 55.5 M, and every other row match, so the formula is not in doubt.
KNOWN_DIFFERENCES = {(512, 6, "stored"): 41.0}


@pytest.mark.parametrize("d,R", sorted(PAPER_PARAMS))
def test_cart_params_match_paper_at_its_printed_precision(d, R):
    got = count_params(CARTConfig(d_model=d, n_prelude=6, n_loops=R))
    for i, kind in enumerate(("stored", "effective")):
        printed = KNOWN_DIFFERENCES.get((d, R, kind), PAPER_PARAMS[(d, R)][i])
        assert round(got[kind] / 1e6, 1) == printed, kind


# Dense params as the paper prints them: 122.7 M, "~187 M", "~251 M" (the last two to 1 M)
@pytest.mark.parametrize("layers,millions,digits", [(7, 122.7, 1), (12, 187, 0), (17, 251, 0)])
def test_dense_params_match_paper(layers, millions, digits):
    got = count_params(DenseConfig(d_model=1024, n_layers=layers))
    assert got["stored"] == got["effective"]
    assert round(got["stored"] / 1e6, digits) == millions


@pytest.mark.parametrize("cfg,gflops", [
    (DenseConfig(n_layers=7), 214),
    (CARTConfig(n_loops=6), 355),
    (CARTConfig(n_loops=8), 407),
    (CARTConfig(n_loops=10), 460),
    (DenseConfig(n_layers=17), 520),
])
def test_forward_flops_match_paper_table3(cfg, gflops):
    assert round(forward_flops(cfg, 1024) / 1e9) == gflops  # the paper prints whole GFLOPs


@pytest.mark.parametrize("d,R,tok_s,paper_percent", [
    (256, 6, 134_985, 20), (512, 6, 71_244, 33), (768, 6, 45_556, 40),
    (1024, 6, 32_393, 49), (1024, 10, 25_681, 48),
])
def test_mfu_reproduces_paper_table4(d, R, tok_s, paper_percent):
    # the paper's RTX 3090 numbers, peak 71 TFLOP/s bf16, printed as whole percent
    assert round(100 * mfu(CARTConfig(d_model=d, n_loops=R), tok_s, 71e12)) == paper_percent


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
    # X: K, V recomputed each iteration adds anchor projections (and their norm) of effective
    # compute; test_effective_and_flops_are_what_the_forward_applies checks the exact amount
    x = count_params(base.replace(unfreeze_kv=True))
    assert x["stored"] == count_params(base)["stored"] < x["effective"]
    assert forward_flops(base.replace(unfreeze_kv=True), 1024) > forward_flops(base, 1024)


def test_config_round_trips_through_dict():
    cfg = CARTConfig(**SMALL, disable_lie=True)
    assert config_from_dict(cfg.to_dict()) == cfg
    dense = DenseConfig(n_layers=3)
    assert config_from_dict(dense.to_dict()) == dense


def applied(model, T: int = 8) -> tuple[int, int, int]:
    """What one forward over T tokens applies, counted with hooks: (weights applied per token, matmul
    weights applied per token, attention calls). Every call of a Linear or RMSNorm applies its weights
    to every token; anything else (embedding, LTI gate, HC logits) counts once, as the paper counts
    it. A projection of the loop index (paper_code's LIE) maps one row per loop, not per token, so it
    is a stored weight but no per-token matmul (as CARTConfig.forward_flops says)."""
    per_token, matmul, attention = [0], [0], [0]
    lie = getattr(getattr(model, "lie", None), "proj", None)

    def count(module, args, out):
        n = sum(p.numel() for p in module.parameters(recurse=False))
        per_token[0] += n
        if isinstance(module, nn.Linear) and module is not lie:
            matmul[0] += n

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Linear, RMSNorm))]
    hooks += [m.register_forward_hook(lambda *a: attention.__setitem__(0, attention[0] + 1))
              for m in model.modules() if isinstance(m, (MLASelfAttention, MLACrossAttention, MHASelfAttention))]
    with torch.no_grad():
        model(torch.zeros(1, T, dtype=torch.long))
    for h in hooks:
        h.remove()
    counted = {id(p) for m in model.modules() if isinstance(m, (nn.Linear, RMSNorm)) for p in m.parameters()}
    once = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return per_token[0] + once, matmul[0], attention[0]


@pytest.mark.parametrize("variant", ["paper_text", "paper_code"])
@pytest.mark.parametrize("flags", VARIANTS, ids=lambda f: "-".join(f) or "base")
def test_effective_and_flops_are_what_the_forward_applies(flags, variant):
    cfg = CARTConfig(**(SMALL | flags), variant=variant)
    T = 8
    per_token, matmul, attention = applied(build_model(cfg), T)
    assert count_params(cfg)["effective"] == per_token
    assert forward_flops(cfg, T) == 2 * matmul * T + attention * 4 * T * T * cfg.d_model


@pytest.mark.parametrize("layers", [1, 3])
def test_dense_flops_are_what_the_forward_applies(layers):
    cfg = DenseConfig(vocab_size=97, d_model=64, head_dim=16, n_layers=layers, ffn_multiple=32)
    per_token, matmul, attention = applied(build_model(cfg), 8)
    assert count_params(cfg)["effective"] == per_token
    assert forward_flops(cfg, 8) == 2 * matmul * 8 + attention * 4 * 8 * 8 * cfg.d_model


@pytest.mark.parametrize("device_name,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-40GB", 312e12),
    ("NVIDIA GeForce RTX 3090", 71e12), ("NVIDIA GeForce RTX 4090", 165e12), ("NVIDIA L40S", 362e12),
    ("nvidia h100 pcie", 989e12),  # torch's names vary in case
    ("NVIDIA GeForce GTX 1080", None), ("", None),
])
def test_peak_flops_are_looked_up_by_device_name(device_name, peak):
    from cart.accounting import peak_flops_for
    assert peak_flops_for(device_name) == peak


@pytest.mark.parametrize("cfg", [CARTConfig(**SMALL), DenseConfig(vocab_size=97, d_model=64, head_dim=16, n_layers=2,
                                                                   ffn_multiple=32)], ids=["cart", "dense"])
def test_training_flops_per_token_are_three_passes_of_forward_and_head(cfg):
    """Forward per token plus the tied LM head (2 FLOPs per weight of the V x d embedding), times 3
    for forward + backward, times the family's passes per training token."""
    from cart.accounting import train_flops_per_token
    head = 2 * build_model(cfg).tok_emb.weight.numel()
    assert train_flops_per_token(cfg, 16) == 3 * (forward_flops(cfg, 16) / 16 + head)


def test_joint_training_doubles_training_flops_and_mfu():
    from cart.accounting import train_flops_per_token
    from cart.models import RATPlusConfig
    joint = RATPlusConfig(vocab_size=97, d_model=64, head_dim=16, n_layers=2, ffn_multiple=32)
    single = joint.replace(joint_train=False)
    assert train_flops_per_token(joint, 16) == 2 * train_flops_per_token(single, 16)
    assert mfu(joint, 1000.0, 1e12) == 2 * mfu(single, 1000.0, 1e12) == 2 * 6 * count_params(single)["effective"] * 1e-9
