"""Behaviour of the model library: the LTI gate, ablation flags, variable R, bf16, generation, config
and runtime-argument validation, and that a tiny CART can learn. Causality: test_causality.py; what
each ablation does inside the forward: test_ablation_behaviour.py."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cart import CARTConfig, DenseConfig, LTIGate, build_model, generate
from cart.models import config_from_dict
from cart.models.ratplus.config import RATPlusConfig
from conftest import assert_compiled_step_matches_eager

SMALL = dict(vocab_size=61, d_model=32, head_dim=8, n_prelude=2, n_loops=3, ffn_multiple=16)
VARIANTS = {
    "base": {}, "X_unfreeze_kv": {"unfreeze_kv": True}, "Y_R1": {"n_loops": 1},
    "Z_unshare": {"unshare_core": True}, "W_unshare_self": {"unshare_core": True, "self_attn_core": True},
    "HC": {"disable_hyperconnection": True}, "LTI": {"disable_lti": True}, "LIE": {"disable_lie": True},
}
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**flags) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(CARTConfig(**(SMALL | flags))).eval()


def test_package_exports_every_familys_config_and_model():
    """`from cart import LRTConfig, RATPlusConfig, ...`: each family's config and model class, as the
    registry names them."""
    import importlib

    import cart
    from cart.models import ARCHS, config_class
    for arch in ARCHS:
        cfg = config_class(arch)
        module, model_name = cfg.model_class.split(":")
        assert getattr(cart, cfg.__name__) is cfg and cfg.__name__ in cart.__all__
        assert getattr(cart, model_name) is getattr(importlib.import_module(module), model_name)
        assert model_name in cart.__all__


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=16))
def test_lti_spectral_radius_below_one_for_any_theta(thetas):
    gate = LTIGate(CARTConfig(**(SMALL | {"d_model": len(thetas) * 8, "head_dim": 8})))
    with torch.no_grad():
        gate.theta.copy_(torch.tensor(thetas * 8))
    lam = gate.lam()
    assert (lam < 1).all() and (lam >= 0).all()


def test_spectral_radius_reported_and_init_value():
    m = tiny()
    assert m.spectral_radius() == pytest.approx(0.9, abs=1e-5)
    with torch.no_grad():
        m.gate.theta[3] = 50.0  # fp32 sigmoid rounds to exactly 1 here; rho must stay < 1
    assert m.spectral_radius() < 1.0


def test_disable_lti_is_the_plain_residual():
    gate = LTIGate(CARTConfig(**SMALL, disable_lti=True))
    x, delta = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    assert torch.equal(gate(x, delta), x + delta)
    gated = LTIGate(CARTConfig(**SMALL))
    assert torch.allclose(gated(x, delta), 0.9 * x + delta, atol=1e-5)
    # rho is still logged with the gate disabled
    assert 0 < build_model(CARTConfig(**SMALL, disable_lti=True)).spectral_radius() < 1


@pytest.mark.parametrize("flag", ["disable_hyperconnection", "disable_lie", "disable_lti"])
def test_disabling_machinery_changes_the_function(flag):
    base = tiny()
    with torch.no_grad():  # move HC off its near-identity init so it does something visible
        base.hyper.logits.copy_(torch.tensor([0.5, 0.3, 0.2]))
    variant = tiny(**{flag: True})
    missing, unexpected = variant.load_state_dict(base.state_dict(), strict=False)
    assert not missing and set(unexpected) <= {"hyper.logits"}
    x = torch.randint(0, 61, (2, 10))
    with torch.no_grad():
        assert not torch.allclose(base(x), variant(x), atol=1e-4)


def test_variable_r_same_weights_any_depth():
    m = tiny()
    x = torch.randint(0, 61, (2, 10))
    outs = {}
    with torch.no_grad():
        for R in range(1, 17):
            outs[R] = m(x, n_loops=R)
            assert outs[R].shape == (2, 10, 61) and torch.isfinite(outs[R]).all()
        assert torch.equal(m(x), outs[3])  # n_loops=None uses the configured R
    assert not torch.allclose(outs[1], outs[16])


def test_unshared_core_rejects_other_depths():
    with pytest.raises(ValueError, match="n_loops=4"):
        tiny(unshare_core=True)(torch.randint(0, 61, (1, 4)), n_loops=4)


@pytest.mark.parametrize("name", ["base", "X_unfreeze_kv", "HC", "LTI"])
@pytest.mark.parametrize("variant", ["paper_text", "paper_code"])
def test_a_bf16_model_computes_in_bf16(name, variant):
    """Cast to bf16 (weights and all), the state stays bf16 through the gate and the
    HyperConnection (fp32 gate factors would promote it and break the next bf16 matmul)."""
    torch.manual_seed(0)
    m = build_model(CARTConfig(**(SMALL | VARIANTS[name]), variant=variant)).eval()
    x = torch.randint(0, 61, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(x)
        out = m.to(torch.bfloat16)(x)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.006  # measured <= 0.0025 with bf16 weights too


@pytest.mark.parametrize("value,message", [
    (2.5, "n_loops: expected an int, got 2.5"), (True, "n_loops: expected an int, got True"),
    ("3", "n_loops: expected an int, got '3'"), (0, "n_loops: must be >= 1, got 0"),
    (torch.tensor(3), "n_loops: expected an int"),
])
def test_bad_n_loops_is_one_message_at_every_entry_point(value, message):
    """model(idx, n_loops=...), new_cache (cached decoding) and generate() (cached or not) all
    refuse a bad R before any work, with one message naming the argument."""
    m = tiny()
    idx = torch.randint(0, 61, (1, 4))
    calls = {"forward": lambda: m(idx, n_loops=value), "new_cache": lambda: m.new_cache(1, 8, n_loops=value),
             "generate": lambda: generate(m, idx, max_new_tokens=2, n_loops=value),
             "generate_uncached": lambda: generate(m, idx, max_new_tokens=2, use_cache=False, n_loops=value)}
    for name, call in calls.items():
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value).startswith(message), name


def test_dense_rejects_n_loops():
    m = build_model(DenseConfig(vocab_size=61, d_model=32, head_dim=8, n_layers=1))
    with pytest.raises(ValueError, match=r"unknown argument.*n_loops"):
        m(torch.randint(0, 61, (1, 4)), n_loops=2)


@pytest.mark.parametrize("name", ["base", "X_unfreeze_kv", "LTI"])
def test_bf16_autocast_stays_within_bf16_rounding(name):
    """At init the logits span ~0.5 and bf16 autocast moves them by ~0.0015 (measured: bf16 keeps
    8 significant bits, ~0.4% per rounding); 0.005 allows ~3x that, a hundred times below a real
    difference such as a dropped gate or norm."""
    m = tiny(**VARIANTS[name])
    x = torch.randint(0, 61, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x).float()
    diff = (out - ref).abs().max().item()
    assert 0 < diff < 0.005  # > 0: the forward really ran in bf16


def test_generate_greedy_matches_argmax():
    from conftest import assert_decisive_argmax
    m = tiny()
    prompt = torch.randint(0, 61, (1, 5))
    out = generate(m, prompt, max_new_tokens=4, temperature=0)
    assert out.shape == (1, 9) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        for i in range(5, 9):
            # cached decoding against the full forward: equal tokens only where the argmax is decisive
            # (top-2 gap 1e-3 against float differences of ~1e-6 at these logits' scale, ~0.1)
            logits = m(out[:, :i])[0, -1]
            assert_decisive_argmax(logits, 1e-3)
            assert out[0, i] == logits.argmax()
    sampled = generate(m, prompt, max_new_tokens=3, temperature=1.0, top_k=5)
    assert sampled.shape == (1, 8) and int(sampled.max()) < 61


def test_tiny_cart_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model(CARTConfig(**SMALL)).train()
    x = torch.randint(0, 61, (4, 17))
    inp, tgt = x[:, :-1], x[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(model(inp).reshape(-1, 61), tgt.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(61), rel=0.1)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kwargs,field", [
    ({"d_model": 100, "head_dim": 64}, "d_model"),
    ({"n_prelude": 0}, "n_prelude"),
    ({"n_loops": 0}, "n_loops"),
    ({"vocab_size": -1}, "vocab_size"),
    ({"head_dim": 7, "d_model": 28}, "head_dim"),
    ({"kv_latent_ratio": 3}, "kv_latent_ratio"),
    ({"lti_init": 1.0}, "lti_init"),
    ({"unfreeze_kv": True, "self_attn_core": True}, "unfreeze_kv"),
    ({"disable_lti": "yes"}, "disable_lti"),
    ({"n_loops": 2.5}, "n_loops"),
    ({"n_loops": True}, "n_loops"),
    ({"hc_window": 0}, "hc_window"),
    ({"lie_dim": 3}, "lie_dim"),
    ({"lie_rows": 0}, "lie_rows"),
    ({"lie": "projected", "variant": "paper_code", "n_loops": 17}, "n_loops"),
])
def test_bad_cart_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CARTConfig(**kwargs)


def test_bad_dense_config_and_unknown_keys():
    with pytest.raises(ValueError, match="n_layers"):
        DenseConfig(n_layers=0)
    with pytest.raises(ValueError, match="n_loopz"):
        config_from_dict({"arch": "cart", "n_loopz": 3})
    with pytest.raises(ValueError, match="arch"):
        config_from_dict({"arch": "rnn"})


@pytest.mark.slow
def test_compiled_training_step_matches_eager():
    """The GPU fast path (torch.compile of model + loss, as the training stage uses it) computes the
    same loss and gradients as the plain eager path; checked here with the CPU inductor backend."""
    assert_compiled_step_matches_eager(tiny, torch.randint(0, 61, (2, 17)))


@pytest.mark.parametrize("cfg,depth", [
    (CARTConfig(**SMALL), 2 + 3 + 1), (CARTConfig(**SMALL, variant="paper_code"), None),
    (DenseConfig(vocab_size=61, d_model=32, head_dim=8, n_layers=3, ffn_multiple=16), 3),
    (RATPlusConfig(vocab_size=61, d_model=32, head_dim=8, n_layers=3, ffn_multiple=16), 3),
], ids=["cart_depth_scaled", "cart_plain", "dense", "ratplus"])
def test_initialisation_follows_the_config(cfg, depth):
    """Matrices N(0, 0.02); under depth-scaled init the residual output projections (attention o,
    SwiGLU down) N(0, 0.02 / sqrt(2 L)); norm gains 1; the gate at lti_init; HC logits [6 or 1, 0, 0]."""
    torch.manual_seed(0)
    model = build_model(cfg)
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue
        scaled = depth is not None and name.endswith(("attn.o.weight", "ffn.down.weight"))
        std = 0.02 / math.sqrt(2 * depth) if scaled else 0.02
        assert p.std().item() == pytest.approx(std, rel=0.15), name
        assert abs(p.mean().item()) < 0.2 * std, name
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or name == "norm_f.weight":
            assert torch.equal(p, torch.ones_like(p)), name
    if isinstance(cfg, CARTConfig):
        torch.testing.assert_close(torch.sigmoid(model.gate.theta), torch.full((32,), 0.9))
        assert model.hyper.logits.tolist() == [cfg.hc_init_logit, 0.0, 0.0]


def test_lm_loss_skips_ignored_targets_and_honours_the_reduction():
    from cart.models.base import IGNORE_INDEX
    from cart.models.layers import lm_loss
    logits = torch.randn(2, 5, 61, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 61, (2, 5), generator=torch.Generator().manual_seed(1))
    per_token = torch.nn.functional.cross_entropy(logits.view(-1, 61), targets.view(-1), reduction="none")
    assert torch.allclose(lm_loss(logits, targets, reduction="sum"), per_token.sum())
    targets[0, 4] = targets[1, 4] = IGNORE_INDEX  # a window's last target that would cross domains
    kept = per_token.view(2, 5)[:, :4]
    assert torch.allclose(lm_loss(logits, targets), kept.mean())
    assert torch.allclose(lm_loss(logits, targets, reduction="sum"), kept.sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_softmax_cross_entropy_equals_f_cross_entropy_in_loss_and_gradient(dtype, reduction):
    """The compiled path's written-out backward ((softmax - one-hot) x row weight, ignored rows 0) gives
    F.cross_entropy's loss and gradient, in the logits' dtype, for an upstream gradient other than 1."""
    from cart.models.base import IGNORE_INDEX
    from cart.models.layers import SoftmaxCrossEntropy
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(24, 97, generator=gen)).to(dtype)
    targets = torch.randint(0, 97, (24,), generator=gen)
    targets[::5] = IGNORE_INDEX
    ours, ref = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    loss = SoftmaxCrossEntropy.apply(ours, targets, reduction == "mean")
    expected = torch.nn.functional.cross_entropy(ref.float(), targets, ignore_index=IGNORE_INDEX, reduction=reduction)
    (3 * loss).backward()
    (3 * expected).backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert ours.grad.dtype == dtype
    assert ours.grad[::5].abs().max() == 0  # ignored rows
    torch.testing.assert_close(ours.grad.float(), ref.grad.float(), rtol=0,
                               atol=(1e-6 if dtype == torch.float32 else 1e-3) * ref.grad.abs().max().item())


def test_lm_loss_uses_the_written_out_backward_only_when_compiled(monkeypatch):
    """Eager, F.cross_entropy (its native kernels are 2x faster on a CPU than the written-out backward's
    temporaries); traced by torch.compile, SoftmaxCrossEntropy; both the same loss and gradient."""
    from cart.models import layers
    calls = []
    original = layers.SoftmaxCrossEntropy.forward
    monkeypatch.setattr(layers.SoftmaxCrossEntropy, "forward",
                        staticmethod(lambda ctx, *args: calls.append(1) or original(ctx, *args)))
    logits = torch.randn(2, 6, 33, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 33, (2, 6), generator=torch.Generator().manual_seed(1))
    targets[1, 5] = layers.IGNORE_INDEX
    results = []
    for fn in (layers.lm_loss, torch.compile(layers.lm_loss, backend="aot_eager")):
        x = logits.clone().requires_grad_(True)
        loss = fn(x, targets)
        loss.backward()
        results.append((loss.detach(), x.grad))
        assert len(calls) == (0 if fn is layers.lm_loss else 1)
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum', got 'none'"):
        layers.lm_loss(logits, targets, reduction="none")


def test_rope_tables_are_computed_once_and_serve_every_length():
    """RoPE's cos/sin tables for the first table_len positions are buffers computed once (so a compiled
    forward reads them instead of evaluating cos and sin for every element): tables() returns views of
    them for T <= table_len and computes longer ones, both the rotary angles cos/sin(t * theta^(-2i/d))
    with each frequency twice (rotate-half); the tables are not saved in checkpoints."""
    from cart.models.layers import RoPE
    rope = RoPE(head_dim=8, theta=10_000.0, table_len=16)
    # buffers: they move with the model (.to(device)) and are rebuilt by build_tables, never saved
    assert {name for name, _ in rope.named_buffers()} == {"inv_freq", "cos_table", "sin_table"}
    cpu = torch.device("cpu")
    for T in (1, 16):
        cos, sin = rope.tables(T, cpu)
        assert cos.shape == sin.shape == (T, 8)
        assert cos.data_ptr() == rope.cos_table.data_ptr() and sin.data_ptr() == rope.sin_table.data_ptr()
    cos, sin = rope.tables(40, cpu)
    assert cos.shape == (40, 8) and cos.data_ptr() != rope.cos_table.data_ptr()
    assert torch.equal(cos[:16], rope.cos_table) and torch.equal(sin[:16], rope.sin_table)
    for t in (5, 15, 39):
        for i in range(4):
            angle = t * 10_000.0 ** (-2 * i / 8)
            for j in (i, i + 4):
                assert math.isclose(cos[t, j], math.cos(angle), rel_tol=1e-5, abs_tol=1e-6)
                assert math.isclose(sin[t, j], math.sin(angle), rel_tol=1e-5, abs_tol=1e-6)
    model = build_model(CARTConfig(**SMALL))
    assert not [k for k in model.state_dict() if "table" in k or "inv_freq" in k]
    # a bf16 model's tables are bf16 buffers; past them the fp32 on-the-fly tables must not promote the
    # rotated bf16 queries and keys to fp32
    rope = rope.to(torch.bfloat16)
    x = torch.randn(1, 2, 40, 8, dtype=torch.bfloat16)
    for T in (16, 40):
        cos, sin = rope.tables(T, cpu)
        assert cos.dtype == (torch.bfloat16 if T == 16 else torch.float32)
        assert RoPE.apply(x[:, :, :T], cos, sin).dtype == torch.bfloat16


def family_models():
    """A tiny model of every family, in eval mode."""
    from cart.models import ARCHS, LRTConfig
    shape = dict(vocab_size=61, d_model=32, head_dim=8, ffn_multiple=16)
    configs = [CARTConfig(**SMALL), DenseConfig(**shape, n_layers=2), LRTConfig(**shape, n_layers=2, gate_channels=16),
               RATPlusConfig(**shape, n_layers=2, sparse_pattern="D2")]
    assert {c.arch for c in configs} == set(ARCHS)
    torch.manual_seed(0)
    return {c.arch: build_model(c).eval() for c in configs}


@pytest.mark.parametrize("arch", ["cart", "dense", "lrt", "ratplus"])
@pytest.mark.parametrize("bad", [61, 1000, -1])
def test_a_token_outside_the_vocabulary_is_one_value_error(arch, bad):
    """Plain forward, eval loss and training loss alike: a ValueError naming the id and vocab_size,
    not torch's IndexError from the embedding."""
    model = family_models()[arch]
    idx = torch.randint(0, 61, (2, 6))
    idx[1, 3] = bad
    message = rf"idx: token id {bad} is outside the vocabulary: ids must be in \[0, vocab_size=61\)"
    with pytest.raises(ValueError, match=message):
        model(idx)
    with pytest.raises(ValueError, match=message):
        model(idx, targets=torch.zeros_like(idx))
    model.train()
    with pytest.raises(ValueError, match=message):
        model(idx, targets=torch.zeros_like(idx))


def test_the_id_check_names_the_id_outside_the_vocabulary_whatever_the_others():
    """The message names the offending id: the one above the vocabulary when the smallest id is 0
    (inside it), and a lone token is checked as any other."""
    model = family_models()["dense"]
    with pytest.raises(ValueError, match=r"^idx: token id 61 is outside the vocabulary"):
        model(torch.tensor([[0, 5, 61]]))
    with pytest.raises(ValueError, match=r"^idx: token id 61 is outside the vocabulary"):
        model(torch.tensor([[61]]))


def test_the_id_check_reads_no_ids_from_an_empty_batch_nor_under_torch_compile(monkeypatch):
    """No row: nothing to read back (min() of no ids would raise). While dynamo traces, reading the ids
    back would break the graph, so only the shape is checked there."""
    model = family_models()["dense"]
    model.check_tokens(torch.zeros(0, 4, dtype=torch.long))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    model.check_tokens(torch.tensor([[3, 61]]))
    with pytest.raises(ValueError, match=r"T >= 1"):
        model.check_tokens(torch.zeros(1, 0, dtype=torch.long))


@pytest.mark.parametrize("arch", ["cart", "dense", "lrt", "ratplus"])
def test_an_empty_sequence_is_one_value_error(arch):
    model = family_models()[arch]
    empty = torch.zeros(2, 0, dtype=torch.long)
    message = r"idx: expected \(batch, T\) token ids with T >= 1, got shape \(2, 0\)"
    for mode in ("eval", "train"):
        getattr(model, mode)()
        with pytest.raises(ValueError, match=message):
            model(empty)
        with pytest.raises(ValueError, match=message):
            model(empty, targets=empty)


@pytest.mark.parametrize("arch", ["cart", "dense", "lrt", "ratplus"])
def test_the_input_checks_leave_the_compiled_forward_one_graph(arch):
    """The token-id check reads the tokens back: outside torch.compile's graph, so a compiled
    forward (fullgraph: a graph break is an error) and training loss still trace whole."""
    model = family_models()[arch]
    idx, y = torch.randint(0, 61, (2, 6)), torch.randint(0, 61, (2, 6))
    torch._dynamo.reset()
    kwargs = {"lrt_mode": "merged"} if arch == "lrt" else {}  # the sequential mode's loop unrolls per token
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(idx, **kwargs), model(idx, **kwargs), atol=1e-6, rtol=1e-6)
    model.train()
    substep = model.config.train_substeps()[0]
    torch.testing.assert_close(compiled(idx, targets=y, **substep), model(idx, targets=y, **substep),
                               atol=1e-6, rtol=1e-6)
