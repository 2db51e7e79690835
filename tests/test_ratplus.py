"""RAT+ (cart/models/ratplus/model.py) and the Dense control at a pattern: the parallel scan, the mixer
against its definition, causality, cached decoding per pattern, accounting, the joint-training
sub-steps, learning, and validation."""
import math

import pytest
import torch
import torch.nn.functional as F

from cart.models import build_model, config_from_dict
from cart.models.dense.config import DenseConfig
from cart.models.layers import RoPE
from cart.models.pattern_attention import HeadPatternKVCache, head_pattern_mask
from cart.models.patterns import (DENSE, HeadPatterns, Pattern, cache_slots, head_patterns, layer_patterns,
                                  parse_layer_pattern, parse_pattern, visible_set)
from cart.models.ratplus.model import gated_recurrence, linear_scan
from cart.models.ratplus.config import RATPlusConfig, attention_flops, kv_cache_bytes, recurrence_flops

V = 61
SMALL = dict(vocab_size=V, d_model=32, head_dim=8, n_layers=2, ffn_multiple=16)
# per head groups ("+") on SMALL's 4 heads: two groups of two heads, or one pattern per head
PER_HEAD = ["dense+D4", "D4-W8-P2+W8", "D16+W3-P2+D5+dense", "W3+D4,dense"]
DECODE_PATTERNS = ["dense", "D16", "D4-W8-P2", "W8", "W8-P2", "D3-W2-P5", "dense,D4"] + PER_HEAD


@pytest.fixture(autouse=True)
def _threads(one_thread):
    pass


def ratplus(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(RATPlusConfig(**(SMALL | kw))).eval()


def dense_control(seed=0):
    torch.manual_seed(seed)
    return build_model(DenseConfig(**SMALL)).eval()


def perturbed(model, std=0.3, seed=1):
    """Weights far from init (larger gates and attention logits), so that a leak would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if p.dim() == 1 else 0.0))
    return model


# ---- the recurrence ----

def loop_scan(a, b):
    h, out = torch.zeros_like(b[..., 0, :]), []
    for t in range(a.shape[-2]):
        h = a[..., t, :] * h + b[..., t, :]
        out.append(h)
    return torch.stack(out, dim=-2)


@pytest.mark.parametrize("T", [1, 2, 37, 100])
def test_scan_matches_the_step_by_step_loop_forward_and_gradients(T):
    g = torch.Generator().manual_seed(T)
    a = torch.rand(2, 3, T, 5, generator=g).requires_grad_()  # gates in (0, 1)
    b = torch.randn(2, 3, T, 5, generator=g).requires_grad_()
    weights = torch.randn(2, 3, T, 5, generator=g)
    h = linear_scan(a, b)
    ref = loop_scan(a, b)
    torch.testing.assert_close(h, ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad((h * weights).sum(), (a, b))
    ref_grads = torch.autograd.grad((ref * weights).sum(), (a, b))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(37, 5), (3, 37, 5), (2, 2, 3, 16, 4)], ids=["2d", "3d", "5d"])
def test_scan_runs_along_dim_minus_two_at_any_rank(shape):
    """linear_scan scans dim -2 whatever the leading dims (not dim 2, which is -2 only at rank 4):
    forward and both gradients equal the loop's."""
    g = torch.Generator().manual_seed(len(shape))
    a = torch.rand(shape, generator=g).requires_grad_()
    b = torch.randn(shape, generator=g).requires_grad_()
    weights = torch.randn(shape, generator=g)
    h, ref = linear_scan(a, b), loop_scan(a, b)
    torch.testing.assert_close(h, ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad((h * weights).sum(), (a, b))
    for got, want in zip(grads, torch.autograd.grad((ref * weights).sum(), (a, b))):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(1, 2, 7, 3), (2, 9, 4)])
def test_scan_backward_passes_gradcheck_in_float64(shape):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(shape, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(linear_scan, (a, b))


def test_gated_recurrence_is_the_spec_recurrence_with_a_carried_state():
    g = torch.Generator().manual_seed(0)
    gate = torch.rand(1, 2, 50, 4, generator=g)
    k, v = torch.randn(1, 2, 50, 4, generator=g), torch.randn(1, 2, 50, 4, generator=g)
    h = gated_recurrence(gate, k, v)
    kt, vt = torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)
    for t in range(50):  # k~_t = g_t k~_{t-1} + (1 - g_t) k_t from a zero state, never reset
        kt = gate[:, :, t] * kt + (1 - gate[:, :, t]) * k[:, :, t]
        vt = gate[:, :, t] * vt + (1 - gate[:, :, t]) * v[:, :, t]
        torch.testing.assert_close(h[:, :, t], torch.cat([kt, vt], -1), atol=1e-6, rtol=1e-5)
    # split anywhere: the second part started from the first part's last state is the same scan
    first = gated_recurrence(gate[:, :, :19], k[:, :, :19], v[:, :, :19])
    second = gated_recurrence(gate[:, :, 19:], k[:, :, 19:], v[:, :, 19:], initial=first[:, :, -1:])
    torch.testing.assert_close(torch.cat([first, second], 2), h, atol=1e-6, rtol=1e-5)


def test_recurrence_is_computed_in_fp32_under_bf16_inputs():
    g = torch.Generator().manual_seed(0)
    gate = torch.rand(1, 1, 4096, 8, generator=g) * 0.02 + 0.98  # slow gates: long memories
    k = torch.randn(1, 1, 4096, 8, generator=g).bfloat16()
    h = gated_recurrence(gate, k, k)
    assert h.dtype == torch.float32
    torch.testing.assert_close(h, gated_recurrence(gate, k.float(), k.float()), atol=0, rtol=0)
    torch.testing.assert_close(h, loop_scan(torch.cat([gate, gate], -1), (1 - torch.cat([gate, gate], -1))
                                            * torch.cat([k, k], -1).float()), atol=1e-5, rtol=1e-4)


# ---- the mixer against its definition ----

def reference_mixer(mixer, u, pattern, rope_before=False):
    """The spec's mixer written out: a Python loop for the recurrence and, per head, the visible
    set of that head's pattern (a Pattern: every head's; HeadPatterns: its group's) as a list of
    keys. rope_before=True rotates k before the recurrence instead of after."""
    B, T, d = u.shape
    H = mixer.n_heads
    hd = d // H
    o, q, k, v, f = mixer.in_proj(u).chunk(5, dim=-1)
    q, k, v, f = (x.view(B, T, H, hd).transpose(1, 2) for x in (q, k, v, f))
    g = torch.sigmoid(f)
    cos, sin = RoPE(hd, 10_000.0).tables(T, u.device)
    if rope_before:
        k = RoPE.apply(k, cos, sin)
    kt, vt, ks, vs = torch.zeros_like(k[:, :, 0]), torch.zeros_like(v[:, :, 0]), [], []
    for t in range(T):
        kt = g[:, :, t] * kt + (1 - g[:, :, t]) * k[:, :, t]
        vt = g[:, :, t] * vt + (1 - g[:, :, t]) * v[:, :, t]
        ks.append(kt)
        vs.append(vt)
    k, v = torch.stack(ks, 2), torch.stack(vs, 2)
    if not rope_before:
        k = RoPE.apply(k, cos, sin)
    q = RoPE.apply(q, cos, sin)
    out = torch.zeros_like(q)
    for h, head_pattern in enumerate(head_patterns(pattern, H)):
        for t in range(T):
            keys = sorted(visible_set(head_pattern, t))
            p = torch.softmax(q[:, h, t:t + 1] @ k[:, h, keys].transpose(-1, -2) / math.sqrt(hd), dim=-1)
            out[:, h, t:t + 1] = p @ v[:, h, keys]
    y = out.transpose(1, 2).reshape(B, T, d) * torch.sigmoid(o)
    return mixer.o(y)


@pytest.mark.parametrize("text", ["dense", "D16", "D4-W8-P2", "W8-P2", "D5", "dense+D4", "D16+W3-P2+D5+dense"])
def test_mixer_equals_its_definition(text):
    # T = 40 crosses multiples of D: a recurrence reset there (RAT's chunks) would not match
    model = perturbed(ratplus())
    mixer, T = model.layers[0].attn, 40
    u = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(3))
    rope = model.rope.tables(T, u.device)
    pattern = parse_layer_pattern(text)
    with torch.no_grad():
        got = mixer(u, rope, pattern=pattern)
        torch.testing.assert_close(got, reference_mixer(mixer, u, pattern), atol=1e-5, rtol=1e-5)
        # the check sees where RoPE goes: rotating k before the recurrence gives other outputs
        assert (got - reference_mixer(mixer, u, pattern, rope_before=True)).abs().max() > 1e-2


def test_without_recurrence_the_mixer_attends_the_raw_keys():
    model = perturbed(ratplus(apply_recurrence=False))
    mixer, T = model.layers[0].attn, 12
    u = torch.randn(1, T, 32)
    o, q, k, v = mixer.in_proj(u).chunk(4, dim=-1)
    q, k, v = (x.view(1, T, 4, 8).transpose(1, 2) for x in (q, k, v))
    cos, sin = model.rope.tables(T, u.device)
    y = F.scaled_dot_product_attention(RoPE.apply(q, cos, sin), RoPE.apply(k, cos, sin), v, is_causal=True)
    want = mixer.o(y.transpose(1, 2).reshape(1, T, 32) * torch.sigmoid(o))
    torch.testing.assert_close(mixer(u, model.rope.tables(T, u.device), pattern=DENSE), want, atol=1e-6, rtol=0)


# ---- causality ----

@pytest.mark.parametrize("text", ["dense", "D4", "D4-W8-P2", "W3", "dense,D4", "D4-K2-B4", "D4+dense,W3+D4-K2-B4"])
def test_no_key_after_the_query_is_ever_visible(text):
    model = perturbed(ratplus())
    g = torch.Generator().manual_seed(5)
    a = torch.randint(0, V, (2, 30), generator=g)
    for cut in (0, 7, 16, 28):
        b = a.clone()
        b[:, cut + 1:] = torch.randint(0, V, (2, 30 - cut - 1), generator=g)
        with torch.no_grad():
            assert torch.equal(model(a, pattern=text)[:, :cut + 1], model(b, pattern=text)[:, :cut + 1])
        # and no gradient flows from outputs up to `cut` into any later input
        emb = []
        handle = model.tok_emb.register_forward_hook(lambda m, i, out: emb.append(out) or out.retain_grad())
        model(a, pattern=text)[:, :cut + 1].square().sum().backward()
        handle.remove()
        assert emb[0].grad[:, :cut + 1].abs().sum() > 0
        assert torch.equal(emb[0].grad[:, cut + 1:], torch.zeros_like(emb[0].grad[:, cut + 1:]))
        model.zero_grad()


# ---- cached decoding ----

def decode_in_chunks(model, rows, pad, pattern, chunks):
    """Left-pad `rows` (lists of token ids) to one length, decode them chunk by chunk, return the
    logits of each row's real tokens."""
    length = max(len(r) + p for r, p in zip(rows, pad))
    idx = torch.zeros(len(rows), length, dtype=torch.long)
    for i, (r, p) in enumerate(zip(rows, pad)):
        idx[i, p:p + len(r)] = torch.tensor(r)
    cache = model.new_cache(len(rows), length, pad=torch.tensor(pad), pattern=pattern)
    outs, start = [], 0
    for n in chunks:
        outs.append(model.forward_cached(idx[:, start:start + n], cache))
        start += n
    assert start == length
    logits = torch.cat(outs, dim=1)
    return [logits[i, p:p + len(r)] for i, (r, p) in enumerate(zip(rows, pad))], cache


@pytest.mark.parametrize("family", ["ratplus", "ratplus_no_recurrence", "dense_control"])
@pytest.mark.parametrize("text", DECODE_PATTERNS)
def test_cached_decoding_equals_the_parallel_forward(family, text):
    model = {"ratplus": lambda: ratplus(), "ratplus_no_recurrence": lambda: ratplus(apply_recurrence=False),
             "dense_control": dense_control}[family]()
    perturbed(model, std=0.15)
    g = torch.Generator().manual_seed(7)
    rows = [torch.randint(0, V, (n,), generator=g).tolist() for n in (40, 33)]
    pad = [0, 7]
    # a long prefill chunk (longer than the window), single tokens, then mid-sized chunks
    logits, cache = decode_in_chunks(model, rows, pad, text, [12, 1, 1, 3, 9, 1, 13])
    with torch.no_grad():
        for row, got in zip(rows, logits):
            torch.testing.assert_close(got, model(torch.tensor([row]), pattern=text)[0], atol=1e-5, rtol=1e-5)
    for layer_cache, layer in zip(cache.layers, layer_patterns(text, 2)):
        kv = layer_cache[0] if family.startswith("ratplus") else layer_cache
        # a per-head layer keeps one cache per head group, each with its group's heads and pattern
        groups = kv.groups if isinstance(layer, HeadPatterns) else [kv]
        assert isinstance(kv, HeadPatternKVCache) == isinstance(layer, HeadPatterns)
        assert [(c.pattern, c.k.shape[1]) for c in groups] == [(p, b - a) for a, b, p in
                                                               (layer.spans(4) if isinstance(layer, HeadPatterns)
                                                                else [(0, 4, layer)])]
        for c in groups:
            # the spec's P + W + 1 + floor(T / D): the "+1" is the current token, attended from its projection
            assert c.slots + (0 if c.pattern.is_dense else 1) == cache_slots(c.pattern, 40)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", ["ratplus", "ratplus_no_recurrence", "dense_control"])
@pytest.mark.parametrize("text", ["dense", "D16", "W16-P4", "D3-W2-P5", "W8", "dense,D4", "W64-P4"] + PER_HEAD)
def test_kv_cache_bytes_is_what_the_decode_cache_allocates(family, text, dtype):
    """The accounting against the bytes of every tensor of keys, values and recurrent state the
    decode cache allocates for T tokens (T = 40: W64 is capped at T)."""
    T = 40
    model = {"ratplus": lambda: ratplus(), "ratplus_no_recurrence": lambda: ratplus(apply_recurrence=False),
             "dense_control": dense_control}[family]().to(dtype)
    cache = model.new_cache(3, T, pattern=text)
    allocated = 0
    for layer in cache.layers:
        kv, state = layer if isinstance(layer, tuple) else (layer, None)
        groups = kv.groups if isinstance(kv, HeadPatternKVCache) else [kv]
        allocated += sum(c.k[0].nbytes + c.v[0].nbytes for c in groups) + (0 if state is None else state.h[0].nbytes)
    assert kv_cache_bytes(model.config, text, T, torch.finfo(dtype).bits // 8) == allocated


def test_dense_without_pattern_keeps_its_plain_cache():
    model = perturbed(dense_control(), std=0.15)
    rows = [list(range(1, 20)), list(range(5, 17))]
    logits, cache = decode_in_chunks(model, rows, [0, 7], None, [4, 1, 14])
    assert type(cache.layers[0]).__name__ == "KVCache"
    with torch.no_grad():
        for row, got in zip(rows, logits):
            torch.testing.assert_close(got, model(torch.tensor([row]))[0], atol=1e-5, rtol=1e-5)


def last_recurrent_states(model, row, pattern):
    """(k~, v~) at the last position of `row` in every layer of the full forward (the mixer's
    input captured by a hook, then its gate, keys and values through the spec recurrence)."""
    inputs = []
    hooks = [layer.attn.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for layer in model.layers]
    with torch.no_grad():
        model(torch.tensor([row]), pattern=pattern)
        for h in hooks:
            h.remove()
        states = []
        for layer, u in zip(model.layers, inputs):
            mixer = layer.attn
            _, _, k, v, f = (x.view(1, len(row), mixer.n_heads, -1).transpose(1, 2)
                             for x in mixer.in_proj(u).chunk(5, dim=-1))
            states.append(gated_recurrence(torch.sigmoid(f), k, v)[..., -1:, :])
    return states


def test_decode_cache_carries_the_recurrent_state_of_the_full_forward():
    """A fresh cache holds a zero fp32 state (B, H, 1, 2 head_dim) per layer (none without the
    recurrence); after chunked decoding of left-padded rows each row's state is the full forward's
    (k~, v~) at its last token."""
    model = perturbed(ratplus(), std=0.15)
    cache = model.new_cache(2, 30, pad=torch.tensor([0, 7]), pattern="D4-W8-P2")
    for _, state in cache.layers:
        assert state.h.dtype == torch.float32 and torch.equal(state.h, torch.zeros(2, 4, 1, 16))
    assert all(state is None for _, state in ratplus(apply_recurrence=False).new_cache(2, 30).layers)
    g = torch.Generator().manual_seed(11)
    rows = [torch.randint(0, V, (n,), generator=g).tolist() for n in (30, 23)]
    _, cache = decode_in_chunks(model, rows, [0, 7], "D4-W8-P2", [5, 1, 11, 13])
    for i, row in enumerate(rows):
        for (_, state), want in zip(cache.layers, last_recurrent_states(model, row, "D4-W8-P2")):
            torch.testing.assert_close(state.h[i:i + 1], want, atol=1e-5, rtol=1e-5)


def test_decode_cache_without_a_pattern_is_for_the_eval_pattern():
    """new_cache(pattern=None) decodes under eval_pattern (as the eval-mode forward), not train_pattern."""
    model = perturbed(ratplus(joint_train=False, train_pattern="D4", eval_pattern="W8-P2"), std=0.15)
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(0, V, (n,), generator=g).tolist() for n in (24, 19)]
    logits, cache = decode_in_chunks(model, rows, [0, 5], None, [10, 1, 13])
    with torch.no_grad():
        for row, got in zip(rows, logits):
            torch.testing.assert_close(got, model.eval()(torch.tensor([row]))[0], atol=1e-5, rtol=1e-5)
    assert [kv.pattern for kv, _ in cache.layers] == [parse_pattern("W8-P2")] * 2
    # decoding is evaluation: a model left in training mode still gets the eval_pattern's cache
    assert [kv.pattern for kv, _ in model.train().new_cache(1, 8).layers] == [parse_pattern("W8-P2")] * 2


@pytest.mark.parametrize("family", ["ratplus", "dense_control"])
@pytest.mark.parametrize("text", [None, "D4-W8-P2"])
def test_bf16_model_decodes_in_bf16_as_its_full_forward(family, text):
    """A bf16 model: the recurrence's fp32 k~, v~ go back to bf16 for attention, the decode cache
    keeps bf16 keys and values, and cached decoding gives the bf16 full forward's logits."""
    if family == "ratplus" and text is None:
        text = "dense"
    model = {"ratplus": ratplus, "dense_control": dense_control}[family]()
    model = perturbed(model, std=0.15).to(torch.bfloat16)
    g = torch.Generator().manual_seed(4)
    rows = [torch.randint(0, V, (n,), generator=g).tolist() for n in (20, 14)]
    logits, cache = decode_in_chunks(model, rows, [0, 6], text, [8, 1, 11])
    for layer_cache in cache.layers:
        kv = layer_cache[0] if family == "ratplus" else layer_cache
        assert kv.k.dtype == kv.v.dtype == torch.bfloat16
    with torch.no_grad():
        for row, got in zip(rows, logits):
            want = model(torch.tensor([row]), pattern=text)[0]
            assert got.dtype == want.dtype == torch.bfloat16
            torch.testing.assert_close(got.float(), want.float(), atol=0.05, rtol=0.05)


def test_topk_patterns_have_no_decode_cache():
    with pytest.raises(ValueError, match=r"pattern: D4-K2.*top-k"):
        ratplus().new_cache(1, 16, pattern="D4-K2")


# ---- the Dense control ----

def test_dense_control_at_the_dense_pattern_is_the_plain_dense_forward():
    model = perturbed(dense_control())
    x = torch.randint(0, V, (2, 24))
    with torch.no_grad():
        plain = model(x)
        assert torch.equal(model(x, pattern="dense"), plain)
        assert torch.equal(model(x, pattern=(DENSE, DENSE)), plain)
        assert not torch.allclose(model(x, pattern="D4"), plain, atol=1e-3)
    with pytest.raises(ValueError, match=r"pattern: 'D0': Pattern\.dilation"):
        model(x, pattern="D0")


# ---- accounting ----

@pytest.mark.parametrize("kw", [{}, {"apply_recurrence": False}, {"n_layers": 3, "d_model": 64, "head_dim": 16}])
def test_param_count_is_the_formula_and_the_built_model(kw):
    cfg = RATPlusConfig(**(SMALL | kw))
    d, L = cfg.d_model, cfg.n_layers
    in_proj = (5 if cfg.apply_recurrence else 4) * d * d
    assert cfg.count_params()["stored"] == V * d + L * (in_proj + d * d + 3 * d * cfg.ffn_hidden + 2 * d) + d
    assert cfg.count_params()["stored"] == sum(p.numel() for p in build_model(cfg).parameters())


def test_apply_recurrence_false_removes_exactly_the_gate_projection():
    cfg = RATPlusConfig(**(SMALL | {"n_layers": 3}))
    base = cfg.replace(apply_recurrence=False)
    assert cfg.count_params()["stored"] - base.count_params()["stored"] == 3 * 32 * 32
    assert (sum(p.numel() for p in build_model(cfg).parameters())
            - sum(p.numel() for p in build_model(base).parameters())) == 3 * 32 * 32


def test_forward_flops_dense_convention_plus_the_recurrence():
    cfg = RATPlusConfig(**SMALL)
    d, L, T, ffn = 32, 2, 128, cfg.ffn_hidden
    assert recurrence_flops(cfg, T) == L * 3 * 2 * d * T
    assert cfg.forward_flops(T) == L * (2 * (6 * d * d + 3 * d * ffn) * T + 4 * T * T * d) + L * 6 * d * T
    assert recurrence_flops(cfg.replace(apply_recurrence=False), T) == 0


@pytest.mark.parametrize("config", [RATPlusConfig(**SMALL), DenseConfig(**SMALL)], ids=["ratplus", "dense"])
@pytest.mark.parametrize("text", ["dense", "D16", "D4-W8-P2", "W8-P2", "dense,D4"] + PER_HEAD)
def test_attention_flops_count_the_visible_keys(config, text):
    """4 head_dim per visible (query, key) pair of every head, from each head's mask."""
    T = 50
    want = sum(4 * 8 * int(head_pattern_mask(p, 4, T).sum()) for p in layer_patterns(text, 2))
    assert attention_flops(config, text, T) == want


def test_attention_flops_and_kv_cache_shrink_about_d_fold():
    cfg, T = RATPlusConfig(**(SMALL | {"n_layers": 1})), 4096
    dense = attention_flops(cfg, "dense", T)
    assert dense == 2 * 32 * T * (T + 1)
    ratio = dense / attention_flops(cfg, "D64", T)
    assert 0.95 * 64 < ratio < 64  # the own key of every query keeps it just under D
    kv = kv_cache_bytes(cfg, "D64", T, 2)
    # 64 stored slots of k and v (the spec's 65 counts the current key) in bf16, the fp32 state (k~, v~)
    assert kv == 2 * 32 * 64 * 2 + 2 * 32 * 4
    assert kv_cache_bytes(DenseConfig(**(SMALL | {"n_layers": 1})), "D64", T, 2) == 2 * 32 * 64 * 2  # no state
    assert kv_cache_bytes(cfg, "dense", T, 2) == 2 * 32 * T * 2 + 2 * 32 * 4
    with pytest.raises(ValueError, match="pattern: D64-K8"):
        attention_flops(cfg, "D64-K8", T)
    # every layer's head split is checked before any layer is counted: the first layer's top-k error
    # does not hide the second layer's uneven split (n_heads = 4)
    with pytest.raises(ValueError, match=r"pattern: dense\+D4\+W8 gives 3 head groups"):
        attention_flops(RATPlusConfig(**SMALL), "D64-K8,dense+D4+W8", T)


# ---- training ----

def test_substep_names_are_the_logged_loss_names():
    """The trainer logs each sub-step's loss as loss_<name>: loss_sparse, loss_dense (the authors'
    names) for joint training, loss_train for one update at train_pattern."""
    assert RATPlusConfig(**SMALL, sparse_pattern="D8").train_substep_names() == ("sparse", "dense")
    assert RATPlusConfig(**SMALL, joint_train=False, train_pattern="D4-W8").train_substep_names() == ("train",)


def test_a_family_with_one_update_names_its_one_substep():
    """ConfigBase's default: one plain update per batch, one sub-step name (its loss is logged as
    loss_substep0 beside loss)."""
    assert DenseConfig(**SMALL).train_substep_names() == ("substep0",)


def test_joint_training_substeps_are_sparse_then_dense():
    cfg = RATPlusConfig(**SMALL, sparse_pattern="D8")
    sparse, dense = cfg.train_substeps()
    assert sparse == {"pattern": (Pattern(dilation=8),) * 2} and dense == {"pattern": (DENSE,) * 2}
    assert cfg.train_passes() == 2
    fixed = RATPlusConfig(**SMALL, joint_train=False, train_pattern="D4-W8")
    assert fixed.train_substeps() == ({"pattern": (parse_pattern("D4-W8"),) * 2},) and fixed.train_passes() == 1
    model = perturbed(ratplus(sparse_pattern="D8"), std=0.15).train()
    x = torch.randint(0, V, (2, 33))
    losses = [model(x[:, :-1], targets=x[:, 1:], **kw) for kw in cfg.train_substeps()]
    assert torch.equal(losses[1], model(x[:, :-1], targets=x[:, 1:], pattern="dense"))
    assert torch.equal(losses[0], model(x[:, :-1], targets=x[:, 1:], pattern="D8"))
    assert abs(losses[0].item() - losses[1].item()) > 1e-3


def test_joint_training_takes_a_per_head_sparse_pattern():
    """A per-head hybrid trains as the sparse sub-step, as a per-layer one does: the sub-step's
    loss is the model's at that pattern, and differs from each of its groups' patterns alone."""
    cfg = RATPlusConfig(**SMALL, sparse_pattern="dense+D4")
    sparse, dense = cfg.train_substeps()
    assert sparse == {"pattern": (HeadPatterns((DENSE, Pattern(dilation=4))),) * 2} and dense["pattern"] == (DENSE,) * 2
    model = perturbed(ratplus(sparse_pattern="dense+D4"), std=0.15).train()
    x = torch.randint(0, V, (2, 33), generator=torch.Generator().manual_seed(2))
    loss = model(x[:, :-1], targets=x[:, 1:], **sparse)
    assert torch.equal(loss, model(x[:, :-1], targets=x[:, 1:], pattern="dense+D4"))
    for whole in ("dense", "D4"):
        assert abs(loss.item() - model(x[:, :-1], targets=x[:, 1:], pattern=whole).item()) > 1e-3
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    torch._dynamo.reset()  # the per-head groups trace as one graph (fullgraph: a break is an error)
    compiled = torch.compile(lambda inp, tgt: model(inp, targets=tgt, **sparse), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x[:, :-1], x[:, 1:]), loss, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["ratplus", "dense_control"])
def test_generate_decodes_a_per_head_pattern_as_the_full_forward(family):
    from cart.generation import generate
    model = perturbed({"ratplus": ratplus, "dense_control": dense_control}[family](), std=0.15)
    prompts = [torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(n)) for n in (9, 4)]
    cached = generate(model, prompts, 6, temperature=0, pattern="dense+D4,W3+D4")
    assert all(torch.equal(a, b) for a, b in
               zip(cached, generate(model, prompts, 6, temperature=0, pattern="dense+D4,W3+D4", use_cache=False)))
    assert any(not torch.equal(a, b) for a, b in zip(cached, generate(model, prompts, 6, temperature=0)))


def test_evaluation_settings_take_per_layer_and_per_head_patterns():
    from cart.evaluation.session import PPLSettings, RATPlusEval
    ppl = PPLSettings(seq_len=32, n_seqs=2, batch_size=2)
    assert RATPlusEval(["dense", "dense,D4", "dense+D4"], [0], ppl).patterns[2] == "dense+D4"
    with pytest.raises(ValueError, match=r"patterns: 'X2': bad term 'X2'"):
        RATPlusEval(["dense", "D4+X2"], [0], ppl)


def test_default_pattern_is_train_pattern_in_training_and_eval_pattern_in_eval():
    model = perturbed(ratplus(joint_train=False, train_pattern="D4", eval_pattern="W2"), std=0.15)
    x = torch.randint(0, V, (1, 20))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model(x, pattern="W2"))
        assert torch.equal(model.train()(x), model(x, pattern="D4"))


def test_tiny_ratplus_learns_with_two_updates_per_batch():
    model = ratplus(sparse_pattern="D4").train()
    x = torch.randint(0, V, (4, 33), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = {}
    for _ in range(60):
        for kw in model.config.train_substeps():  # as the training loop: one update per sub-step
            loss = model(x[:, :-1], targets=x[:, 1:], **kw)
            first.setdefault(str(kw["pattern"][0]), loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert first["D4"] == pytest.approx(math.log(V), rel=0.1)
    with torch.no_grad():
        for pattern in ("D4", "dense"):
            assert model(x[:, :-1], targets=x[:, 1:], pattern=pattern).item() < 0.5 * first[pattern]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager on CPU, on purpose
def test_flex_kernel_model_equals_the_sdpa_model():
    sdpa, flex = ratplus(), ratplus(attention_kernel="flex")
    flex.load_state_dict(sdpa.state_dict())
    x = torch.randint(0, V, (2, 40))
    with torch.no_grad():
        for pattern in ("D4-W8-P2", "dense+D4-W8-P2", "D4+W3+dense+D3-P2"):
            torch.testing.assert_close(flex(x, pattern=pattern), sdpa(x, pattern=pattern), atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
def test_attention_kernel_setting_picks_the_attention_form(kernel, monkeypatch):
    """attention_kernel='flex' runs the two-branch (FlexAttention) form in every sparse layer,
    'sdpa' the masked SDPA; the same values either way (test_flex_kernel_model_equals_the_sdpa_model)."""
    from cart.models import pattern_attention as pa
    calls, two_branch = [], pa.two_branch_attention
    monkeypatch.setattr(pa, "two_branch_attention", lambda *args: calls.append(1) or two_branch(*args))
    model = ratplus(attention_kernel=kernel)
    with torch.no_grad():
        model(torch.randint(0, V, (1, 24)), pattern="D4-W8")
    assert len(calls) == (2 if kernel == "flex" else 0)


def test_bf16_autocast_is_finite_and_close():
    model = perturbed(ratplus(), std=0.1)
    x = torch.randint(0, V, (2, 40))
    with torch.no_grad():
        full = model(x, pattern="D4")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x, pattern="D4")
    assert torch.isfinite(half.float()).all()
    assert (half.float() - full).abs().max() < 0.1 * full.abs().max()


# ---- validation ----

@pytest.mark.parametrize("kw,match", [
    ({"n_layers": 0}, r"RATPlusConfig\.n_layers"),
    ({"sparse_pattern": "D0"}, r"RATPlusConfig\.sparse_pattern: 'D0': Pattern\.dilation"),
    ({"sparse_pattern": "dense"}, r"RATPlusConfig\.sparse_pattern: joint training needs a sparse pattern"),
    ({"eval_pattern": "D4,D4,D4"}, r"RATPlusConfig\.eval_pattern: 3 per-layer patterns for n_layers=2"),
    ({"eval_pattern": "D4+W2+dense"}, r"RATPlusConfig\.eval_pattern: D4\+W2\+dense gives 3 head groups, which do "
                                      r"not split n_heads=4 evenly"),
    ({"sparse_pattern": "dense+dense"}, r"RATPlusConfig\.sparse_pattern: joint training needs a sparse pattern"),
    ({"train_pattern": "D8"}, r"RATPlusConfig\.train_pattern: is for runs without joint training"),
    ({"joint_train": False, "train_pattern": "W-1"}, r"RATPlusConfig\.train_pattern: 'W-1': bad term"),
    ({"attention_kernel": "triton"}, r"RATPlusConfig\.attention_kernel"),
    ({"apply_recurrence": 1}, r"RATPlusConfig\.apply_recurrence"),
])
def test_bad_config_names_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        RATPlusConfig(**(SMALL | kw))


def test_bad_runtime_pattern_names_the_argument():
    model = ratplus()
    x = torch.randint(0, V, (1, 8))
    with pytest.raises(ValueError, match=r"pattern: 3 per-layer patterns for n_layers=2"):
        model(x, pattern="D4,D4,D4")
    with pytest.raises(ValueError, match=r"pattern: dense\+D4\+W2 gives 3 head groups, which do not split n_heads=4"):
        model(x, pattern="dense+D4+W2")
    with pytest.raises(ValueError, match=r"pattern: dense\+D4\+W2 gives 3 head groups"):
        model.new_cache(1, 8, pattern="dense+D4+W2")
    with pytest.raises(ValueError, match=r"unknown argument.*n_loops"):
        model(x, n_loops=2)


def test_config_round_trips_through_its_dict():
    cfg = RATPlusConfig(**SMALL, joint_train=False, train_pattern="dense,D8", apply_recurrence=False)
    assert config_from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["arch"] == "ratplus"


@pytest.mark.slow
def test_compiled_joint_training_matches_eager():
    """The GPU training path compiles the loss (cart/training/step.py): both sub-steps trace as one graph each
    (fullgraph: no break in the scan, the pattern masks or the pattern arguments) and give the eager
    loss and gradients; checked with the CPU inductor backend (minutes on a small CPU)."""
    model = ratplus(sparse_pattern="D4").train()
    x = torch.randint(0, V, (2, 33))

    def loss_fn(inp, tgt, **kw):
        return model(inp, targets=tgt, **kw)
    compiled = torch.compile(loss_fn, fullgraph=True)
    params = list(model.parameters())
    for kw in model.config.train_substeps():
        eager = loss_fn(x[:, :-1], x[:, 1:], **kw)
        fast = compiled(x[:, :-1], x[:, 1:], **kw)
        assert fast.item() == pytest.approx(eager.item(), rel=1e-5)
        for a, b in zip(torch.autograd.grad(eager, params), torch.autograd.grad(fast, params)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
