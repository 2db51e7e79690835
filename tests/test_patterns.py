"""Attention patterns (cart/models/patterns.py, pattern_attention.py): the string syntax and its
validation, the visible sets against their definition, the dense fast path, the two-branch form
and the top-k block term."""
import re

import pytest
import torch
import torch.nn.functional as F

from cart.models import pattern_attention as pa
from cart.models.patterns import (DENSE, HeadPatterns, Pattern, cache_slots, format_patterns, head_patterns,
                                  layer_patterns, parse_layer_pattern, parse_pattern, visible_count, visible_set)

STATIC = ["dense", "D1", "D2", "D4", "D16", "D4-W8-P2", "D4-W3-P6", "D5-P7", "D8-W2", "D3-W40", "W8", "W0",
          "W8-P2", "P3", "D16-W256-P4"]
SPARSE = [p for p in STATIC if p not in ("dense", "D1")]


@pytest.fixture(autouse=True)
def _threads(one_thread):
    pass


def qkv(T, seed=0, B=2, H=2, hd=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, hd, generator=g) for _ in range(3))


@pytest.mark.parametrize("text,fields", [
    ("dense", (1, 0, 0, 0, 64)), ("D16", (16, 0, 0, 0, 64)), ("D16-W256-P4", (16, 256, 4, 0, 64)),
    ("W64", (-1, 64, 0, 0, 64)), ("W64-P4", (-1, 64, 4, 0, 64)), ("P4", (-1, 0, 4, 0, 64)), ("W0", (-1, 0, 0, 0, 64)),
    ("D64-K8", (64, 0, 0, 8, 64)), ("K8-B16", (-1, 0, 0, 8, 16)), ("D4-W8-P2", (4, 8, 2, 0, 64)),
])
def test_pattern_strings_round_trip(text, fields):
    p = parse_pattern(text)
    assert (p.dilation, p.window, p.sink, p.topk, p.block) == fields
    assert str(p) == text and parse_pattern(str(p)) == p
    assert hash(p) == hash(Pattern(*fields))


def test_non_canonical_strings_parse_to_the_canonical_pattern():
    assert parse_pattern("D1") == DENSE and str(parse_pattern("D1")) == "dense"
    assert str(parse_pattern("P4-W64-D16")) == "D16-W64-P4"
    assert str(parse_pattern("D8-K2-B64")) == "D8-K2"


def test_one_pattern_for_all_layers_or_one_per_layer():
    d64 = Pattern(dilation=64)
    assert layer_patterns("D64", 3) == (d64,) * 3
    assert layer_patterns(d64, 2) == (d64, d64)
    assert layer_patterns("dense,D64", 2) == (DENSE, d64)
    assert layer_patterns([DENSE, d64], 2) == (DENSE, d64)
    assert format_patterns((DENSE, d64)) == "dense,D64" and format_patterns((d64,) * 4) == "D64"
    assert format_patterns([d64]) == "D64" and format_patterns((DENSE,)) == "dense"  # a one-layer model


def test_the_edges_of_each_valid_range_are_accepted():
    assert Pattern(dilation=-1, topk=2, block=1).block == 1 and str(parse_pattern("K2-B1")) == "K2-B1"
    assert Pattern(dilation=2, window=0, sink=0).dilation == 2


@pytest.mark.parametrize("fields", [dict(window=4), dict(sink=4), dict(topk=2), dict(sink=1, topk=1)])
def test_dense_takes_no_other_term(fields):
    with pytest.raises(ValueError, match=r"^Pattern\.dilation: 1 \(dense\) already sees every key; window, sink and "
                                         r"topk must be 0, got "):
        Pattern(dilation=1, **fields)


@pytest.mark.parametrize("text", [16, None, ("D4",)])
def test_parse_pattern_names_where_a_non_string_came_from(text):
    with pytest.raises(ValueError, match=rf"^RATPlusConfig\.eval_pattern: expected a pattern string \(.*D16-W256-P4.*\), "
                                         rf"got {re.escape(repr(text))}$"):
        parse_pattern(text, "RATPlusConfig.eval_pattern")


@pytest.mark.parametrize("make,match", [
    (lambda: parse_pattern("D0"), r"pattern: 'D0': Pattern\.dilation"),
    (lambda: Pattern(dilation=-2), r"Pattern\.dilation"),
    (lambda: Pattern(dilation=4, window=-1), r"Pattern\.window"),
    (lambda: Pattern(dilation=4, sink=-1), r"Pattern\.sink"),
    (lambda: Pattern(dilation=4, topk=-1), r"Pattern\.topk"),
    (lambda: Pattern(topk=2, block=0, dilation=-1), r"Pattern\.block"),
    (lambda: Pattern(dilation=4, window=1.5), r"Pattern\.window: expected an int"),
    (lambda: parse_pattern("D1-W4"), r"Pattern\.dilation: 1 \(dense\)"),
    (lambda: parse_pattern("X5"), r"pattern: 'X5': bad term 'X5'"),
    (lambda: parse_pattern("D16-D8"), r"D given twice"),
    (lambda: parse_pattern(""), r"bad term ''"),
    (lambda: parse_pattern("d16"), r"bad term 'd16'"),
    (lambda: layer_patterns("D4,D4,D4", 2, "RATPlusConfig.eval_pattern"),
     r"RATPlusConfig\.eval_pattern: 3 per-layer patterns for n_layers=2"),
    (lambda: layer_patterns(16, 2), r"pattern: expected a pattern string"),
])
def test_bad_patterns_fail_with_one_message_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("text", STATIC)
@pytest.mark.parametrize("T", [1, 7, 37])
def test_mask_and_counts_equal_the_definition(text, T):
    p = parse_pattern(text)
    mask = pa.pattern_mask(p, T)
    for t in range(T):
        assert set(mask[t].nonzero().flatten().tolist()) == visible_set(p, t)
        assert visible_count(p, t) == len(visible_set(p, t))
    assert not mask.triu(1).any()  # no key after its query
    assert mask.diagonal().all()  # a query always sees itself


def test_visible_set_definition_by_hand():
    # the spec's examples: pure dilated sees itself and D-1, 2D-1, ...; local-only W+1 keys plus P
    assert visible_set(Pattern(dilation=4), 10) == {3, 7, 10}
    assert visible_set(parse_pattern("W2-P1"), 10) == {0, 8, 9, 10}
    assert visible_set(parse_pattern("D4-W2-P2"), 12) == {0, 1, 3, 7, 10, 11, 12}


def test_dense_takes_the_plain_causal_sdpa_path(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return sdpa(*args, **kwargs)
    monkeypatch.setattr(pa.F, "scaled_dot_product_attention", spy)
    q, k, v = qkv(13)
    for pattern in (None, DENSE):
        assert torch.equal(pa.pattern_attention(q, k, v, pattern), sdpa(q, k, v, is_causal=True))
    assert calls == [{"is_causal": True}] * 2  # no mask built
    assert torch.equal(pa.pattern_mask(DENSE, 13), torch.ones(13, 13, dtype=torch.bool).tril())


@pytest.mark.parametrize("text", SPARSE)
def test_masked_attention_equals_attention_over_the_visible_set(text):
    p, T = parse_pattern(text), 21
    q, k, v = qkv(T)
    out = pa.pattern_attention(q, k, v, p)
    for t in (0, 4, 13, 20):
        keys = sorted(visible_set(p, t))
        ref = F.scaled_dot_product_attention(q[:, :, t:t + 1], k[:, :, keys], v[:, :, keys])
        torch.testing.assert_close(out[:, :, t:t + 1], ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("text", [p for p in SPARSE if not p.startswith(("W", "P"))])
@pytest.mark.parametrize("T", [5, 37, 64])
def test_two_branches_are_disjoint_and_their_union_is_the_pattern(text, T):
    p = parse_pattern(text)
    t, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    local = pa.local_branch(p)(0, 0, t, j)
    start = pa.strided_start(p)
    strided = torch.zeros(T, T, dtype=torch.bool)
    compact = torch.arange(start, max(start, T), p.dilation)  # the strided keys, in branch order
    if len(compact):
        strided[:, compact] = pa.strided_branch(p)(0, 0, t, torch.arange(len(compact))[None, :])
    assert ((compact + 1) % p.dilation == 0).all() and (compact >= p.sink).all()
    assert not (local & strided).any()
    assert torch.equal(local | strided, pa.pattern_mask(p, T))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager on CPU, on purpose
@pytest.mark.parametrize("text", ["D2", "D2-W3-P1", "D4", "D4-W8-P2", "D5-P7", "D3-W40", "W8-P2", "D16-W4-P4",
                                  "D64"])
def test_two_branch_lse_merge_equals_the_masked_attention(text):
    p = parse_pattern(text)
    q, k, v = qkv(37, seed=1, hd=16)
    torch.testing.assert_close(pa.two_branch_attention(q, k, v, p), pa.pattern_attention(q, k, v, p),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pa.pattern_attention(q, k, v, p, kernel="flex"), pa.pattern_attention(q, k, v, p),
                               atol=1e-5, rtol=1e-5)


def reference_topk_keys(q, k, p, b, h, t):
    """Keys of the top-k term for one query, from its definition."""
    n = p.block
    own = t // n
    scores = {c: float(q[b, h, t] @ k[b, h, c * n:(c + 1) * n].mean(0)) for c in range(own)}
    best = sorted(scores, key=scores.get, reverse=True)[:p.topk]
    return {j for c in best for j in range(c * n, (c + 1) * n)} | set(range(own * n, t + 1))


@pytest.mark.parametrize("text", ["K2-B4", "D8-K1-B4", "W2-K3-B5", "D4-W3-P2-K2-B3"])
def test_topk_block_term_matches_its_definition(text):
    p, T = parse_pattern(text), 23
    q, k, v = qkv(T, seed=2)
    chosen = pa.topk_block_mask(q, k, p)
    assert not chosen.triu(1).any()
    for b in range(2):
        for h in range(2):
            for t in range(T):
                assert set(chosen[b, h, t].nonzero().flatten().tolist()) == reference_topk_keys(q, k, p, b, h, t)
    out = pa.pattern_attention(q, k, v, p)
    b, h, t = 1, 0, 21
    keys = sorted(reference_topk_keys(q, k, p, b, h, t) | visible_set(p, t))
    ref = F.scaled_dot_product_attention(q[b, h, t:t + 1], k[b, h, keys], v[b, h, keys])
    torch.testing.assert_close(out[b, h, t:t + 1], ref, atol=1e-6, rtol=0)


def test_cache_slots_follow_the_spec():
    T = 4096
    assert cache_slots(DENSE, T) == T
    assert cache_slots(parse_pattern("D64"), T) == 65  # the spec: 65 slots instead of 4096
    assert cache_slots(parse_pattern("D16-W256-P4"), T) == 4 + 256 + 1 + 256
    assert cache_slots(parse_pattern("W256-P4"), T) == 261
    assert cache_slots(parse_pattern("D64-K8"), T) == T
    assert cache_slots(parse_pattern("W256-P4"), 10) == 4 + 10 + 1  # P and W capped at T



@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_kernel_takes_the_two_branch_form_for_static_patterns_only(monkeypatch):
    calls = []
    two_branch = pa.two_branch_attention

    def spy(q, k, v, pattern):
        calls.append(str(pattern))
        return two_branch(q, k, v, pattern)
    monkeypatch.setattr(pa, "two_branch_attention", spy)
    q, k, v = qkv(23)
    static, topk = parse_pattern("D4-W2-P1"), parse_pattern("D4-W2-P1-K2-B4")
    pa.pattern_attention(q, k, v, static)
    assert calls == []  # the default kernel is the masked SDPA
    pa.pattern_attention(q, k, v, static, kernel="flex")
    assert calls == ["D4-W2-P1"]
    # the top-k term depends on the keys, which the block masks cannot express: masked SDPA, the same output
    assert torch.equal(pa.pattern_attention(q, k, v, topk, kernel="flex"), pa.pattern_attention(q, k, v, topk))
    assert calls == ["D4-W2-P1"]
    # a per-head pattern passes the kernel on to each group of heads: its static group takes the two branches
    pa.pattern_attention(q, k, v, parse_layer_pattern("dense+D4-W2-P1"), kernel="flex")
    assert calls == ["D4-W2-P1", "D4-W2-P1"]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("text", ["D2", "D4-W8-P2"])
def test_two_branch_form_keeps_the_input_dtype(text):
    p = parse_pattern(text)
    q, k, v = (x.bfloat16() for x in qkv(37, seed=1, hd=16))
    out = pa.two_branch_attention(q, k, v, p)
    assert out.dtype == torch.bfloat16
    ref = pa.pattern_attention(q.float(), k.float(), v.float(), p)
    assert ref.abs().max() < 4  # where a bf16 ulp is at most 2^-6: the merge rounds a few times, two ulps
    torch.testing.assert_close(out.float(), ref, atol=2 * 2 ** -6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("text", ["D4-W8-P2", "W3-P2", "D3", "D5-P7", "W0"])
def test_decode_cache_bytes_are_the_spec_slots(text, dtype):
    p, max_len, heads, hd = parse_pattern(text), 40, 3, 4
    cache = pa.PatternKVCache(p, 1, heads, hd, max_len, torch.zeros(1, dtype=torch.long), "cpu", dtype)
    # the spec's slots less the "+1" (the current token, attended from its projection), K and V
    slots = cache_slots(p, max_len) - 1
    assert cache.nbytes() == 2 * slots * heads * hd * torch.finfo(dtype).bits // 8


def test_a_topk_pattern_stores_every_key_and_has_no_cache_regions():
    from cart.models.patterns import cache_regions, stored_slots
    p = parse_pattern("D4-K2")
    assert stored_slots(p, 37) == 37
    with pytest.raises(ValueError, match=r"^pattern: D4-K2 has a top-k term, which may pick any earlier block; "
                                         r"it has no pattern cache$"):
        cache_regions(p, 37)


def test_decode_cache_refuses_a_topk_pattern():
    with pytest.raises(ValueError, match=r"^pattern: D4-K2 has a top-k term, which may pick any earlier block, so "
                                         r"its decode cache would keep every key; evaluate it with the full forward$"):
        pa.PatternKVCache(parse_pattern("D4-K2"), 1, 1, 4, 8, torch.zeros(1, dtype=torch.long), "cpu", torch.float32)


@pytest.mark.parametrize("text", ["D4-W3-P2", "W3-P2", "D3", "D5-P7", "P2"])
def test_decode_cache_holds_exactly_the_keys_the_pattern_can_still_show(text):
    """After each chunk, the three regions (docs/ratplus.md, Inference) hold the first P positions, the
    last W tokens and the strided positions (pos + 1 = 0 mod D), each with its own K and V; a slot
    not yet written holds position -1 and zeros. Row 1 is left-padded by 3: its pads are never kept
    as real keys."""
    from collections import Counter
    p, max_len, pad = parse_pattern(text), 16, torch.tensor([0, 3])
    D, W, P = p.dilation, p.window, p.sink
    q, k, v = qkv(max_len, seed=3, H=2, hd=4)
    cache = pa.PatternKVCache(p, 2, 2, 4, max_len, pad, "cpu", torch.float32)
    length = 0
    for n in (5, 1, 1, 3, 6):
        cache.attend(q[:, :, length:length + n], k[:, :, length:length + n], v[:, :, length:length + n])
        length += n
        for b in range(2):
            real = range(length - int(pad[b]))  # this row's positions so far
            kept = Counter([j for j in real if j < P] + [j for j in real if j >= len(real) - W]
                           + [j for j in real if D > 0 and (j + 1) % D == 0])
            held = cache.pos[b].tolist()
            assert Counter(j for j in held if j >= 0) == kept
            for slot, j in enumerate(held):
                col = j + int(pad[b])  # the token's index in this row
                if j >= 0:
                    assert torch.equal(cache.k[b, :, slot], k[b, :, col]) and torch.equal(cache.v[b, :, slot], v[b, :, col])
            if b == 0:  # no pad: every slot not holding a kept key is empty
                assert held.count(-1) == cache.slots - sum(kept.values())
                empty = torch.tensor(held) == -1
                assert not cache.k[b, :, empty].any() and not cache.v[b, :, empty].any()


# ---- per-head patterns ----

PER_HEAD = ["dense+D4", "D4-W8-P2+W3", "D16+W3-P2+D5+dense", "W0+P3", "D3+D4-K2-B4"]


def test_per_head_pattern_strings_round_trip_and_split_the_heads():
    hp = parse_layer_pattern("dense+D4-W8")
    assert hp == HeadPatterns((DENSE, Pattern(dilation=4, window=8))) and str(hp) == "dense+D4-W8"
    assert parse_layer_pattern(str(hp)) == hp and hash(hp) == hash(HeadPatterns((DENSE, parse_pattern("D4-W8"))))
    assert hp.spans(4) == ((0, 2, DENSE), (2, 4, Pattern(dilation=4, window=8)))
    assert hp.heads(2) == (DENSE, Pattern(dilation=4, window=8)) and head_patterns(DENSE, 3) == (DENSE,) * 3
    assert not hp.is_dense and HeadPatterns((DENSE, DENSE)).is_dense and parse_layer_pattern("D3+D4-K2").topk == 2
    assert layer_patterns("dense+D4,D8", 2, n_heads=4) == (HeadPatterns((DENSE, Pattern(dilation=4))), Pattern(dilation=8))
    assert layer_patterns(hp, 2) == (hp, hp) and layer_patterns("W2+D4", 3) == (parse_layer_pattern("W2+D4"),) * 3
    assert format_patterns(layer_patterns("dense+D4,D8", 2)) == "dense+D4,D8" and format_patterns((hp, hp)) == str(hp)


@pytest.mark.parametrize("make,match", [
    (lambda: layer_patterns("dense+D4+W2", 2, n_heads=4),
     r"^pattern: dense\+D4\+W2 gives 3 head groups, which do not split n_heads=4 evenly; give a number of groups "
     r"that divides 4$"),
    (lambda: parse_layer_pattern("dense+D4+W2").heads(4), r"^pattern: dense\+D4\+W2 gives 3 head groups"),
    (lambda: parse_layer_pattern(4), r"^pattern: expected a pattern string \('dense' or .*, got 4$"),
    (lambda: layer_patterns("dense+", 2), r"^pattern: '': bad term ''"),
    (lambda: HeadPatterns((DENSE,)), r"^HeadPatterns\.groups: expected a tuple of 2 or more Patterns"),
    (lambda: HeadPatterns([DENSE, DENSE]), r"^HeadPatterns\.groups: expected a tuple of 2 or more Patterns"),
])
def test_bad_per_head_patterns_fail_with_one_message(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("text", [p for p in PER_HEAD if "K" not in p])
@pytest.mark.parametrize("H", [4, 8])
@pytest.mark.parametrize("T", [1, 7, 37])
def test_per_head_masks_equal_the_definition_head_by_head(text, H, T):
    """Head h's mask is S_pi(t) of its group's pattern, the group being h // (H / groups)."""
    hp = parse_layer_pattern(text)
    n = len(hp.groups)
    mask = pa.head_pattern_mask(hp, H, T)
    assert mask.shape == (H, T, T)
    for h in range(H):
        own = hp.groups[h // (H // n)]
        for t in range(T):
            assert set(mask[h, t].nonzero().flatten().tolist()) == visible_set(own, t)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager on CPU, on purpose
@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
@pytest.mark.parametrize("text", PER_HEAD)
def test_per_head_attention_equals_attention_over_each_heads_visible_set(text, kernel):
    hp, T, H = parse_layer_pattern(text), 21, 4
    q, k, v = qkv(T, H=H)
    out = pa.pattern_attention(q, k, v, hp, kernel)
    for h, own in enumerate(hp.heads(H)):
        if own.topk:  # the content-scored blocks: the whole group's attention, as a whole layer at `own`
            group = next((a, b) for a, b, p in hp.spans(H) if a <= h < b)
            whole = pa.pattern_attention(q[:, group[0]:group[1]], k[:, group[0]:group[1]], v[:, group[0]:group[1]], own)
            torch.testing.assert_close(out[:, h], whole[:, h - group[0]], atol=1e-6, rtol=0)
            continue
        for t in (0, 4, 13, 20):
            keys = sorted(visible_set(own, t))
            ref = F.scaled_dot_product_attention(q[:, h, t:t + 1], k[:, h, keys], v[:, h, keys])
            torch.testing.assert_close(out[:, h, t:t + 1], ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("text", [p for p in PER_HEAD if "K" not in p])
def test_per_head_decode_cache_attends_as_the_full_attention_and_keeps_each_groups_keys(text):
    """Decoded in chunks over left-padded rows, each head's output is the full attention's at its
    pattern; each group's cache is the pattern cache of its heads and pattern."""
    hp, H, max_len, pad = parse_layer_pattern(text), 4, 16, torch.tensor([0, 3])
    q, k, v = qkv(max_len, seed=3, H=H, hd=4)
    cache = pa.pattern_kv_cache(hp, 2, H, 4, max_len, pad, "cpu", torch.float32)
    assert isinstance(cache, pa.HeadPatternKVCache)
    assert [(c.pattern, c.k.shape[1]) for c in cache.groups] == [(p, b - a) for a, b, p in hp.spans(H)]
    outs, length = [], 0
    for n in (5, 1, 1, 3, 6):
        outs.append(cache.attend(q[:, :, length:length + n], k[:, :, length:length + n], v[:, :, length:length + n]))
        length += n
    out = torch.cat(outs, dim=2)
    assert cache.length == max_len and cache.nbytes() == sum(c.nbytes() for c in cache.groups)
    for b in range(2):
        p0 = int(pad[b])
        full = pa.pattern_attention(q[b:b + 1, :, p0:], k[b:b + 1, :, p0:], v[b:b + 1, :, p0:], hp)
        torch.testing.assert_close(out[b:b + 1, :, p0:], full, atol=1e-6, rtol=0)
