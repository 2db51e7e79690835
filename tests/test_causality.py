"""No position sees the future, in every family and ablation, checked so that a one-position leak
cannot hide: weights perturbed far from their init (so attention is sharp and every term counts),
several cut points, exact equality of the logits, and the gradient of the early positions' logits
with respect to the later token embeddings exactly zero."""
import pytest
import torch

from cart.models import CARTConfig, DenseConfig, RATPlusConfig, build_model

V, T = 61, 16
CUTS = (0, 4, 9, 14)  # the last position that must not see what follows it
pytestmark = pytest.mark.usefixtures("one_thread")

CART_FLAGS = {
    "base": {}, "X_unfreeze_kv": {"unfreeze_kv": True}, "Y_R1": {"n_loops": 1},
    "Z_unshare": {"unshare_core": True}, "W_unshare_self": {"unshare_core": True, "self_attn_core": True},
    "HC": {"disable_hyperconnection": True}, "LTI": {"disable_lti": True}, "LIE": {"disable_lie": True},
    "X_paper_code": {"unfreeze_kv": True, "variant": "paper_code"}, "paper_code": {"variant": "paper_code"},
}
SMALL = dict(vocab_size=V, d_model=32, head_dim=8, ffn_multiple=16)
CART = SMALL | dict(n_prelude=2, n_loops=3)


def perturbed(cfg) -> torch.nn.Module:
    """Every parameter moved well off its init: attention scores of O(1) instead of ~0, so a leaked
    key changes the output by far more than rounding."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 0.5))
    return model


def changed_after(a: torch.Tensor, t: int, seed: int) -> torch.Tensor:
    """A copy of `a` with every token after position t replaced by a different one."""
    b = a.clone()
    shift = torch.randint(1, V, b[:, t + 1:].shape, generator=torch.Generator().manual_seed(seed))
    b[:, t + 1:] = (b[:, t + 1:] + shift) % V
    return b


def future_leaks(model, **runtime) -> list[str]:
    """What the checks find, one line per leak; empty when the model is causal."""
    a = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))
    found = []
    with torch.no_grad():
        la = model(a, **runtime)
        for t in CUTS:
            lb = model(changed_after(a, t, seed=t), **runtime)
            # exact on any CPU for a causal model: both forwards run the same kernels on the same shapes,
            # a row's matmul and norm results depend on that row alone, and a masked key adds exactly 0
            if not torch.equal(la[:, :t + 1], lb[:, :t + 1]):
                found.append(f"logits at <= {t} change with later tokens")
            # the check is alive: later positions do see the change
            assert not torch.allclose(la[:, t + 1:], lb[:, t + 1:]), "later tokens changed nothing at all"
    embedded = {}

    def keep(module, args, out):
        out.retain_grad()
        embedded["x"] = out

    hook = model.tok_emb.register_forward_hook(keep)
    try:
        for t in CUTS:
            model.zero_grad(set_to_none=True)
            model(a, **runtime)[:, :t + 1].sum().backward()
            grad = embedded["x"].grad
            if grad[:, t + 1:].count_nonzero():
                found.append(f"gradient of logits <= {t} reaches later embeddings")
            assert grad[:, :t + 1].count_nonzero(), "no gradient reached the earlier embeddings"
    finally:
        hook.remove()
    return found


@pytest.mark.parametrize("name", sorted(CART_FLAGS))
def test_every_cart_variant_is_causal(name):
    assert future_leaks(perturbed(CARTConfig(**(CART | CART_FLAGS[name])))) == []


@pytest.mark.parametrize("n_loops", [1, 5])
def test_cart_at_another_inference_depth_is_causal(n_loops):
    assert future_leaks(perturbed(CARTConfig(**CART)), n_loops=n_loops) == []


def test_dense_is_causal():
    assert future_leaks(perturbed(DenseConfig(**SMALL, n_layers=2))) == []


@pytest.mark.parametrize("pattern", ["dense", "D4", "D3-W2-P1", "W2"])
@pytest.mark.parametrize("arch", ["ratplus", "dense"])
def test_patterned_attention_is_causal(arch, pattern):
    cfg = RATPlusConfig(**SMALL, n_layers=2) if arch == "ratplus" else DenseConfig(**SMALL, n_layers=2)
    assert future_leaks(perturbed(cfg), pattern=pattern) == []


@pytest.mark.parametrize("flags", [{}, {"unfreeze_kv": True}, {"unshare_core": True}],
                         ids=["base", "X", "Z"])
def test_the_leak_collapse_experiment_really_leaks(flags):
    """noncausal_cross_attn is the leak-collapse study's field (the paper's bug: a cross-attention
    without the causal mask): the checks must see it leak in every cut and through the gradient."""
    found = future_leaks(perturbed(CARTConfig(**CART, noncausal_cross_attn=True, **flags)))
    assert len(found) == 2 * len(CUTS)
