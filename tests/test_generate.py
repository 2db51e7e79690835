"""Cached decoding (CART with every ablation, Dense) against the full forward, and cart.generation.generate():
greedy against a naive argmax loop, seeded sampling, top-k / top-p, EOS, bad input."""
import pytest
import torch

from cart.generation import generate, has_cached_decoding, sample
from cart.models import CARTConfig, DenseConfig, build_model
from cart.models.layers import LanguageModel
from conftest import assert_decisive_argmax

V = 61
pytestmark = pytest.mark.usefixtures("one_thread")

# every CART ablation flag, one at a time and all compatible ones together
CART_FLAGS = {
    "base": {}, "X": {"unfreeze_kv": True}, "Z": {"unshare_core": True}, "W": {"self_attn_core": True},
    "HC": {"disable_hyperconnection": True}, "LTI": {"disable_lti": True}, "LIE": {"disable_lie": True},
    "WZ-HC-LTI-LIE": {"self_attn_core": True, "unshare_core": True, "disable_hyperconnection": True,
                      "disable_lti": True, "disable_lie": True},
}


def tiny(arch: str = "cart", **flags) -> LanguageModel:
    """A tiny model whose every parameter is perturbed away from its init, so attention, the HC
    mixing, the LTI gate and the norms all shape the logits."""
    torch.manual_seed(0)
    cfg = (DenseConfig(vocab_size=V, d_model=32, head_dim=8, ffn_multiple=16, n_layers=2) if arch == "dense" else
           CARTConfig(vocab_size=V, d_model=32, head_dim=8, ffn_multiple=16, n_prelude=2, n_loops=3, **flags))
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.15 if p.dim() >= 2 else 0.5))
    return model


def ragged_rows(lengths=(9, 4, 6), seed=1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g) for n in lengths]


def left_pad(rows: list[torch.Tensor], width: int, pad_id: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        idx[b, width - len(r):] = r
    return idx, torch.tensor([width - len(r) for r in rows])


def check_cached_matches_full(model, runtime: dict, prefill_chunks=(5, 4), static: bool = False):
    """Rows of different lengths, left-padded to one prompt, then 4 more tokens each; the prompt is
    fed in chunks, then one token per call. Every real position's logits must equal the full
    forward of that row alone (fp32, 1e-5). static: the CUDA-graph-ready cache (DecodeCache)."""
    prompts = ragged_rows()
    width = sum(prefill_chunks)
    cont = torch.randint(0, V, (len(prompts), 4), generator=torch.Generator().manual_seed(2))
    padded, pad = left_pad(prompts, width)
    seq = torch.cat([padded, cont], dim=1)
    with torch.no_grad():
        cache = model.new_cache(len(prompts), seq.shape[1], pad=pad, **runtime, **({"static": True} if static else {}))
        steps, start = list(prefill_chunks) + [1] * cont.shape[1], 0
        got = []
        for t in steps:
            got.append(model.forward_cached(seq[:, start:start + t], cache))
            start += t
        got = torch.cat(got, dim=1)
        for b in range(len(prompts)):
            alone = model(seq[b:b + 1, int(pad[b]):], **runtime)[0]
            torch.testing.assert_close(got[b, int(pad[b]):], alone, atol=1e-5, rtol=1e-5)
    return cache


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("flags", CART_FLAGS, ids=list(CART_FLAGS))
@pytest.mark.parametrize("n_loops", [None, 1, 5])
def test_cart_cached_decoding_equals_full_forward(flags, n_loops, static):
    model = tiny(**CART_FLAGS[flags])
    if model.config.unshare_core and n_loops is not None:
        pytest.skip("an unshared core runs its trained R only")
    runtime = {} if n_loops is None else {"n_loops": n_loops}
    check_cached_matches_full(model, runtime, static=static)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_dense_cached_decoding_equals_full_forward(static):
    check_cached_matches_full(tiny("dense"), {}, static=static)


@pytest.mark.parametrize("arch", ["cart", "cart-X", "cart-W", "dense"])
def test_static_cache_has_fixed_shapes_and_counts_on_the_device(arch):
    """What CUDA-graph replay relies on: every one-token call of a static cache attends over all
    max_len slots (the same shapes at every step), the layer caches write at the device's position,
    and a call undone by set_counters leaves no trace: the next real token's logits and every count
    are those of a cache that never saw the undone call (its slot is written again first)."""
    model = tiny(*arch.split("-")[:1], **CART_FLAGS.get(arch[5:], {}))
    seq = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        plain, static = model.new_cache(2, 9), model.new_cache(2, 9, static=True)
        for cache in (plain, static):
            model.forward_cached(seq[:, :5], cache)
        assert static.static and not plain.static and int(static.position) == 5
        shapes = []
        for i in range(5, 9):
            before = static.counters()
            model.forward_cached(seq[:, (i + 3) % 9:(i + 3) % 9 + 1], static)  # a warm-up / capture call
            static.set_counters(before)
            mask, _ = static.step(1, model.rope)
            shapes.append(mask.shape)
            got, want = model.forward_cached(seq[:, i:i + 1], static), model.forward_cached(seq[:, i:i + 1], plain)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            assert static.length == plain.length == int(static.position) == i + 1
            assert [layer.length for layer in static.layers] == [layer.length for layer in plain.layers]
        assert set(shapes) == {(2, 1, 1, 9)}
        assert static.nbytes() == plain.nbytes() > 0
        counts = plain.counters()  # a dynamic cache's counts: no device position
        assert counts == (9, [9] * len(plain.layers), None)
        plain.set_counters((4, [4] * len(plain.layers), None))
        assert plain.length == 4 and {layer.length for layer in plain.layers} == {4}
        with pytest.raises(ValueError, match="zip"):  # one count per layer, no fewer
            plain.set_counters((4, [4], None))


def test_count_replayed_advances_the_host_counts_a_replay_skips():
    """A replayed CUDA graph runs the kernels (the device position advances) but no Python: emulated
    here by putting the host counts back after a call; count_replayed then restores the counts a
    plain call leaves."""
    model = tiny()
    seq = torch.randint(0, V, (1, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cache = model.new_cache(1, 6, static=True)
        model.forward_cached(seq[:, :4], cache)
        length, lengths, _ = cache.counters()
        model.forward_cached(seq[:, 4:5], cache)
        cache.set_counters((length, lengths, None))  # as after a replay: host counts untouched
        assert int(cache.position) == 5 and cache.length == 4
        assert cache.positions(1).tolist() == [[5]]  # a static cache's next position is the device's
        cache.count_replayed(1)
        assert cache.length == 5 and all(layer.length == 5 for layer in cache.layers)
        torch.testing.assert_close(model.forward_cached(seq[:, 5:6], cache)[0, -1], model(seq)[0, -1],
                                   atol=1e-5, rtol=1e-5)


def test_cached_decoding_sees_earlier_tokens():
    """The cache carries context: a different first token changes a later token's cached logits
    (so the equality above is not equality of position-wise functions)."""
    model = tiny()
    a = torch.randint(0, V, (1, 6), generator=torch.Generator().manual_seed(3))
    b = a.clone()
    b[0, 0] = (a[0, 0] + 1) % V
    with torch.no_grad():
        outs = []
        for seq in (a, b):
            cache = model.new_cache(1, 6)
            model.forward_cached(seq[:, :5], cache)
            outs.append(model.forward_cached(seq[:, 5:], cache))
    assert (outs[0] - outs[1]).abs().max() > 1e-3


@pytest.mark.parametrize("flags,n_loops", [("base", 3), ("base", 8), ("X", 3), ("X", 5), ("W", 4), ("Z", 3)])
def test_cache_bytes_per_token_match_the_config(flags, n_loops):
    """The cache actually allocated and filled holds kv_cache_values_per_token() values per token:
    (P + 2) latents for CART, one more per loop for X and W, independent of R otherwise."""
    model = tiny(**CART_FLAGS[flags])
    cache = check_cached_matches_full(model, {"n_loops": n_loops})
    tokens = cache.length
    assert cache.nbytes() == tokens * model.config.kv_cache_values_per_token(n_loops=n_loops) * 4
    dense = tiny("dense")
    cache = check_cached_matches_full(dense, {})
    assert cache.nbytes() == cache.length * dense.config.kv_cache_values_per_token() * 4


def test_cache_sizes_at_paper_scale():
    """CART d=1024 P=6 caches 8 latents of 256 values per token; Dense 7L / 12L cache K and V."""
    cart = CARTConfig(d_model=1024, n_prelude=6, n_loops=6)
    assert cart.kv_cache_values_per_token() == 8 * 256
    assert cart.kv_cache_values_per_token(n_loops=10) == 8 * 256
    assert cart.replace(unfreeze_kv=True).kv_cache_values_per_token() == (7 + 6) * 256
    assert DenseConfig(d_model=1024, n_layers=7).kv_cache_values_per_token() == 7 * 2 * 1024
    assert DenseConfig(d_model=1024, n_layers=12).kv_cache_values_per_token() == 12 * 2 * 1024


@pytest.mark.parametrize("flags", CART_FLAGS, ids=list(CART_FLAGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_allocates_exactly_what_the_config_counts(flags, dtype):
    """Preallocated, before any token: max_len slots of kv_cache_values_per_token() values per row,
    in the model's dtype; no latent cache that is never filled (it would cost memory, not bytes)."""
    model = tiny(**CART_FLAGS[flags]).to(dtype)
    R = 3 if "Z" in flags else 5  # an unshared core runs its own R only
    cache = model.new_cache(2, 11, n_loops=R)
    assert cache.nbytes() == 0
    assert all(layer.c.dtype == dtype and layer.c.shape[:2] == (2, 11) for layer in cache.layers)
    assert sum(layer.c.shape[2] for layer in cache.layers) == model.config.kv_cache_values_per_token(n_loops=R)


@pytest.mark.parametrize("arch", ["cart", "dense"])
def test_unpadded_decoding_without_a_pad_argument(arch):
    """The common case, a batch of equal-length prompts: no `pad`, every row starts at position 0."""
    model = tiny(arch)
    seq = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cache = model.new_cache(2, 7)
        got = torch.cat([model.forward_cached(seq[:, :4], cache)] +
                        [model.forward_cached(seq[:, i:i + 1], cache) for i in range(4, 7)], dim=1)
        torch.testing.assert_close(got, model(seq), atol=1e-5, rtol=1e-5)
    assert cache.pad.tolist() == [0, 0] and cache.length == 7


def test_an_empty_decode_cache_holds_no_bytes():
    from cart.models.layers import DecodeCache
    assert DecodeCache(2, 5, "cpu").nbytes() == 0


@pytest.mark.parametrize("pattern", [None, "D4-W2-P1"])
def test_dense_cache_is_in_the_models_dtype(pattern):
    model = tiny("dense").to(torch.bfloat16)
    cache = model.new_cache(2, 9, pattern=pattern)
    assert len(cache.layers) == 2 and all(layer.k.dtype == layer.v.dtype == torch.bfloat16 for layer in cache.layers)


def test_noncausal_cross_attention_cannot_decode():
    """The leak-collapse experiment's model sees the future: it has no token-by-token decoding."""
    with pytest.raises(ValueError, match=r"^CARTConfig\.noncausal_cross_attn: a cross-attention that sees the "
                                         r"future cannot decode token by token$"):
        tiny(noncausal_cross_attn=True).new_cache(1, 4)


# ---- generate() ----

# Smallest top-2 logit gap of every step of naive_greedy: the tokens it is compared with come from
# other computations (cached decoding, a padded batch) whose logits agree with it to about 1e-5 (the
# cached-vs-full checks above), so a gap of 1e-3 leaves no token to float rounding on any CPU.
GREEDY_MARGIN = 1e-3


def naive_greedy(model, prompt: torch.Tensor, n: int, eos=None, **runtime) -> torch.Tensor:
    """Argmax over the full forward of the whole sequence, one token at a time; each argmax decisive."""
    seq = prompt.clone()
    with torch.no_grad():
        for _ in range(n):
            logits = model(seq[None], **runtime)[0, -1]
            assert_decisive_argmax(logits, GREEDY_MARGIN, "naive_greedy")
            nxt = logits.argmax()
            seq = torch.cat([seq, nxt[None]])
            if eos is not None and int(nxt) == eos:
                break
    return seq


@pytest.mark.parametrize("arch,runtime", [("cart", {}), ("cart", {"n_loops": 5}), ("dense", {})])
@pytest.mark.parametrize("use_cache", [None, False])
def test_greedy_generate_equals_naive_argmax_loop(arch, runtime, use_cache):
    model = tiny(arch)
    prompts = ragged_rows()
    out = generate(model, prompts, max_new_tokens=6, temperature=0, use_cache=use_cache, **runtime)
    for p, o in zip(prompts, out):
        assert torch.equal(o, naive_greedy(model, p, 6, **runtime))


def test_padded_tensor_input_equals_list_input():
    model = tiny()
    prompts = ragged_rows()
    padded, pad = left_pad(prompts, 9)
    mask = (torch.arange(9)[None, :] >= pad[:, None]).long()
    out = generate(model, padded, max_new_tokens=5, attention_mask=mask, temperature=0)
    listed = generate(model, prompts, max_new_tokens=5, temperature=0)
    # exact by construction: both are the same (3, 9) left-padded batch through the same calls; the pads'
    # ids differ (7 here, pad_token_id in the list's) but masked keys add exactly zero
    assert torch.equal(out[:, :9], padded)
    for b, o in enumerate(listed):
        assert torch.equal(out[b, 9:], o[len(prompts[b]):])


def test_seeded_sampling_is_reproducible():
    model = tiny()
    prompts = ragged_rows()

    def draw(seed):
        return generate(model, prompts, max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.95,
                        generator=torch.Generator().manual_seed(seed))
    a, b, c = draw(0), draw(0), draw(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_sample_top_k_and_top_p_keep_exactly_their_tokens():
    """top-p keeps the smallest set of most likely tokens whose mass reaches p (probabilities are
    powers of two, so the boundary 0.75 is exact)."""
    probs = (0.5, 0.25, 0.125, 0.125)
    logits = torch.tensor([probs]).log().expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    assert set(sample(logits, 1.0, top_p=0.75, generator=g).tolist()) == {0, 1}
    assert set(sample(logits, 1.0, top_p=0.76, generator=g).tolist()) == {0, 1, 2}
    assert set(sample(logits, 1.0, top_p=0.5, generator=g).tolist()) == {0}
    assert set(sample(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    assert set(sample(logits, 1.0, generator=g).tolist()) == {0, 1, 2, 3}
    assert set(sample(logits, 0, top_k=3).tolist()) == {0}
    # temperature 0.5 squares the probabilities: the top token's share rises from 0.5 to 0.25 / sum p^2
    share = (sample(logits, 0.5, generator=g) == 0).float().mean().item()
    assert share == pytest.approx(0.25 / sum(p ** 2 for p in probs), abs=0.025)


def first_eos_end(new: torch.Tensor, eos: int) -> int:
    hits = (new == eos).nonzero()
    return len(new) if len(hits) == 0 else int(hits[0]) + 1


def test_eos_stops_each_row_and_pads_it():
    model = tiny()
    prompts = ragged_rows()
    free = generate(model, prompts, max_new_tokens=8, temperature=0)
    eos = int(free[0][len(prompts[0]) + 2])  # a token row 0 emits
    out = generate(model, prompts, max_new_tokens=8, temperature=0, eos_token_id=eos)
    # exact by construction: a finished row stays in the batch, so both runs make the same calls on the
    # same shapes up to the last step the shorter one takes
    for p, f, o in zip(prompts, free, out):  # list output: cut right after the row's first EOS
        assert torch.equal(o, f[:len(p) + first_eos_end(f[len(p):], eos)])
    assert len(out[0]) < len(free[0]) and int(out[0][-1]) == eos

    batch = torch.stack([p[-4:] for p in prompts])
    free = generate(model, batch, max_new_tokens=8, temperature=0)
    eos = int(free[1, 4 + 1])
    out = generate(model, batch, max_new_tokens=8, temperature=0, eos_token_id=eos, pad_token_id=0)
    ends = [first_eos_end(f[4:], eos) for f in free]
    assert out.shape[1] == 4 + max(ends)  # decoding stops once every row has finished
    for f, o, end in zip(free, out, ends):  # tensor output: pad_token_id after a row's EOS
        assert torch.equal(o[:4 + end], f[:4 + end]) and bool((o[4 + end:] == 0).all())


def test_generation_stops_when_every_row_has_finished():
    model = tiny()
    prompt = ragged_rows((5,))[0]
    first = int(generate(model, [prompt], max_new_tokens=1, temperature=0)[0][-1])
    out = generate(model, prompt[None], max_new_tokens=8, temperature=0, eos_token_id=[first, V - 1])
    assert out.shape == (1, 6) and int(out[0, -1]) == first


def test_max_len_caps_the_new_tokens():
    model = tiny()
    out = generate(model, ragged_rows((5,)), max_new_tokens=8, temperature=0, max_len=7)
    assert len(out[0]) == 7


def test_uncached_fallback_for_a_family_without_a_cache():
    class NoCache(type(tiny("dense"))):
        new_cache = LanguageModel.new_cache
        forward_cached = LanguageModel.forward_cached
    model = NoCache(tiny("dense").config)
    model.load_state_dict(tiny("dense").state_dict())
    assert not has_cached_decoding(model) and has_cached_decoding(tiny("dense"))
    prompts = ragged_rows()
    out = generate(model.eval(), prompts, max_new_tokens=4, temperature=0)
    assert all(torch.equal(o, naive_greedy(model, p, 4)) for p, o in zip(prompts, out))
    with pytest.raises(ValueError, match="use_cache: NoCache has no cached decoding"):
        generate(model, prompts, max_new_tokens=4, use_cache=True)


@pytest.mark.parametrize("kwargs,message", [
    ({"prompts": [torch.zeros(9, dtype=torch.long)], "max_len": 8}, r"max_len: must be an int larger than the "
                                                                     r"longest prompt \(9 tokens\)"),
    ({"n_loops": "8"}, r"n_loops: expected an int, got '8'"),
    ({"n_loops": 0}, r"n_loops: must be >= 1"),
    ({"prompts": [torch.zeros(0, dtype=torch.long)]}, r"prompts\[0\]: expected a non-empty 1-D LongTensor"),
    ({"prompts": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1], [0, 0, 0]])},
     r"row\(s\) \[1\] have no real token \(empty prompt\)"),
    ({"prompts": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 0]])}, "left-padded"),
    ({"prompts": [torch.tensor([V])]}, r"token ids must be in \[0, 61\)"),
    ({"temperature": -1.0}, "temperature: must be a number >= 0"),
    ({"top_p": 0.0}, r"top_p: must be None or in \(0, 1\]"),
    ({"top_k": 0}, "top_k: must be None or an int >= 1"),
    ({"eos_token_id": V}, r"eos_token_id: expected a token id"),
    ({"max_new_tokens": 0}, "max_new_tokens: must be an int >= 1"),
    ({"n_layers": 3}, r"unknown model argument\(s\) \['n_layers'\] for CART; valid: \['exit_threshold', 'n_loops'\]"),
    ({"cuda_graph": True}, r"cuda_graph: needs cached decoding on a CUDA device .* got CART on cpu with no arguments"),
    ({"cuda_graph": True, "use_cache": False}, r"cuda_graph: .* got CART on cpu"),
    ({"compile_step": True}, r"compile_step: compiles the CUDA-graph step; it needs cuda_graph"),
])
def test_bad_input_is_one_clear_error(kwargs, message):
    kwargs = {"prompts": ragged_rows(), "max_new_tokens": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        generate(tiny(), **kwargs)


def test_dense_rejects_n_loops_in_generate():
    with pytest.raises(ValueError, match=r"unknown model argument\(s\) \['n_loops'\] for Dense; valid: \['pattern'\]"):
        generate(tiny("dense"), ragged_rows(), 3, n_loops=4)


def test_dense_static_cache_is_for_causal_attention_only():
    with pytest.raises(ValueError, match=r"new_cache: static=True is for causal attention; pattern 'D4-W2-P1'"):
        tiny("dense").new_cache(1, 8, pattern="D4-W2-P1", static=True)
    assert tiny("dense").has_static_cache() and not tiny("dense").has_static_cache(pattern="D4-W2-P1")
    assert tiny().has_static_cache(n_loops=4) and not tiny().has_static_cache(exit_threshold=0.1)
    # a family without a static cache of its own (LRT, RAT+ inherit this) says so
    assert not LanguageModel(DenseConfig(vocab_size=V, d_model=32, head_dim=8, n_layers=1)).has_static_cache()


def _family(arch: str) -> LanguageModel:
    from cart.models import config_from_dict
    if arch in ("cart", "dense"):
        return tiny(arch)
    return build_model(config_from_dict({"arch": arch, "vocab_size": V, "d_model": 32, "head_dim": 8,
                                         "ffn_multiple": 16, "n_layers": 2})).eval()


@pytest.mark.parametrize("arch,runtime", [("cart", {}), ("cart", {"exit_threshold": 0.1}), ("dense", {}),
                                          ("dense", {"pattern": "D4"}), ("lrt", {}), ("ratplus", {})])
def test_a_cache_beyond_the_devices_memory_is_refused_before_it_is_allocated(arch, runtime):
    """10^12 new tokens: the allocator would be asked for terabytes (and fail, or on an overcommitting
    host start paging); refused up front, whatever the family and its setting."""
    with pytest.raises(ValueError, match=r"^max_new_tokens: decoding 2 row\(s\) of up to 1,000,000,000,005 tokens "
                                         r"needs at least [\d,.]+ GiB for the decode cache, more than the cpu memory"):
        generate(_family(arch), ragged_rows((5, 3)), 10**12, temperature=0, **runtime)


def test_the_cache_bound_counts_what_the_family_reports():
    """Dense reports 2 d values per layer and token: at 10^10 tokens the bound is its fp32 K/V (4.7 TiB) and
    the RoPE tables (596 GiB) together."""
    model = tiny("dense")
    per_token = model.config.kv_cache_values_per_token() * 4 + 2 * model.config.head_dim * 4
    with pytest.raises(ValueError, match=rf"needs at least {per_token * 10**10 / 2**30:,.1f} GiB"):
        generate(model, [torch.tensor([1])], max_new_tokens=10**10 - 1, temperature=0)


def _nan_weights(model: LanguageModel) -> LanguageModel:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return model


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("use_cache", [None, False])
def test_nan_weights_are_refused_not_decoded_as_token_zero(temperature, use_cache):
    with pytest.raises(ValueError, match=r"^generate: the model's logits for the prompt are not finite \(NaN or inf\) "
                                         r"in row\(s\) \[0, 1, 2\]: its weights, or its forward under its default "
                                         r"arguments, are not finite; no tokens returned$"):
        generate(_nan_weights(tiny()), ragged_rows(), 4, temperature=temperature, use_cache=use_cache)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logits_that_turn_nan_while_decoding_are_refused(temperature):
    """Row 1's third step comes out NaN: greedy would pick token 0, sampling would fail inside multinomial
    (a device assert on a GPU); both end in one ValueError naming the row, after the loop (no sync per token)."""
    model = tiny()
    real, calls = model.forward_cached, []

    def nan_in_row_1_at_step_3(idx, cache):
        logits = real(idx, cache)
        calls.append(1)
        return logits.index_fill(0, torch.tensor([1]), float("nan")) if len(calls) == 3 else logits
    model.forward_cached = nan_in_row_1_at_step_3
    with pytest.raises(ValueError, match=r"^generate: the model's logits for a new token are not finite \(NaN or inf\) "
                                         r"in row\(s\) \[1\]:"):
        generate(model, ragged_rows(), 5, temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 5  # the prompt and 4 steps: every new token was decoded, then refused
