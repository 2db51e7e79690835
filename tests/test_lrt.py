"""LRT (docs/lrt.md: checks that catch a wrong implementation, on our Dense backbone): causality of every pass and of
decoding, schedule exactness (S = T is the exact recurrence), cached decoding against a
cache-free reference, zero memory = Dense, the loss and its supervision, detach_memory, the
parameter and FLOP accounting, ragged batched decoding, config validation and learning."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cart.accounting import train_flops_per_token
from cart.models import DenseConfig, LRTConfig, build_model, config_from_dict
from cart.models.base import IGNORE_INDEX
from cart.models.layers import RoPE
from conftest import assert_compiled_step_matches_eager

pytestmark = pytest.mark.usefixtures("one_thread")

V = 61
SMALL = dict(vocab_size=V, d_model=32, head_dim=8, n_layers=3, ffn_multiple=16, gate_channels=16)


def perturbed(**flags):
    """A tiny LRT (eval mode) whose memory machinery is far from its init, so it acts: random
    gates (zero at init), gammas, memory-norm gains and larger W_fb."""
    torch.manual_seed(0)
    m = build_model(LRTConfig(**(SMALL | flags))).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "fb_gate" in name or name == "resid_gamma":
                p.copy_(torch.randn_like(p) * 0.5)
            elif name.startswith("feedback."):
                p.copy_(torch.randn_like(p) * 0.2)
            elif name.startswith("memory_norm."):
                p.add_(torch.randn_like(p) * 0.1)
    return m


def tokens(B=2, T=12, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def change_after(idx, t, seed=2):
    """idx with every token after position t redrawn (so each one differs)."""
    other = idx.clone()
    other[:, t + 1:] = (idx[:, t + 1:] + torch.randint(1, V, idx[:, t + 1:].shape,
                                                       generator=torch.Generator().manual_seed(seed))) % V
    return other


def capture_embeddings(model):
    """Replace the token embeddings' output by a leaf tensor (store["emb"]) to differentiate by."""
    store = {}

    def hook(module, inputs, output):
        store["emb"] = output.detach().requires_grad_()
        return store["emb"]

    return store, model.tok_emb.register_forward_hook(hook)


def naive_recurrence(m, idx):
    """The exact recurrence without a cache or subsets: T full causal passes, pass k reading
    m~ = shift(memory of pass k - 1). After pass k positions < k are exact (position 0 always
    reads zero), so after T passes every position is."""
    B, T = idx.shape
    emb, rope = m.tok_emb(idx), m.rope.tables(T, idx.device)
    memory = torch.zeros(B, T, m.config.d_model)
    for _ in range(T):
        previous = torch.cat([torch.zeros_like(memory[:, :1]), memory[:, :-1]], dim=1)
        x, memory, _ = m.blocks(emb, rope, previous, [None] * m.config.n_layers)
    return m.head(x)


# ---- causality ----
@pytest.mark.parametrize("S", [2, 3])
@pytest.mark.parametrize("t", [0, 4, 7, 10])
def test_every_interleaved_pass_is_causal(S, t):
    m = perturbed(interleaved_passes=S)
    a = tokens()
    b = change_after(a, t)
    with torch.no_grad():
        passes_a, passes_b = m.interleaved(a), m.interleaved(b)
    assert len(passes_a) == S + 1
    for (pos, xa), (_, xb) in zip(passes_a, passes_b):
        early = pos <= t
        assert torch.equal(xa[:, early], xb[:, early])
        if (~early).any():  # the change does reach later positions
            assert not torch.allclose(xa[:, ~early], xb[:, ~early])


@pytest.mark.parametrize("t", [2, 6, 9])
def test_no_gradient_from_later_tokens_into_earlier_outputs(t):
    m = perturbed(interleaved_passes=3)
    store, handle = capture_embeddings(m)
    early = sum(x[:, pos <= t].sum() for pos, x in m.interleaved(tokens()))
    handle.remove()
    early.backward()
    grad = store["emb"].grad
    assert torch.equal(grad[:, t + 1:], torch.zeros_like(grad[:, t + 1:]))
    assert (grad[:, :t + 1].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("t", [0, 5, 9])
def test_decoding_is_causal(t):
    m = perturbed()
    a = tokens()
    b = change_after(a, t)
    with torch.no_grad():
        la, lb = (m.forward_cached(x, m.new_cache(2, 12)) for x in (a, b))
    assert torch.equal(la[:, :t + 1], lb[:, :t + 1])
    assert not torch.allclose(la[:, t + 1:], lb[:, t + 1:])


# ---- schedule exactness and decoding ----
def test_s_equal_t_is_the_exact_recurrence_and_s_below_t_is_not():
    T = 12
    exact = perturbed(interleaved_passes=T)
    x = tokens(T=T)
    with torch.no_grad():
        sequential = exact(x, lrt_mode="sequential")
        assert torch.allclose(exact(x, lrt_mode="merged"), sequential, atol=1e-5, rtol=0)  # the last pass per position
        y = tokens(T=T, seed=3)
        exact.train()
        loss = exact(x, targets=y)  # (l_0 + sum over the T one-position passes) / (T + 1)
        exact.eval()
        per_position = F.cross_entropy(sequential.transpose(1, 2), y, reduction="none").mean(0)
        l0 = F.cross_entropy(exact(x, lrt_mode="zero").transpose(1, 2), y)
        assert loss.item() == pytest.approx(((l0 + per_position.sum()) / (T + 1)).item(), abs=1e-5)
        # S < T: even positions (S = 2) read pass 0's memory, not the recurrence's
        approximate = perturbed(interleaved_passes=2)
        assert (approximate(x, lrt_mode="merged") - sequential).abs().max() > 1e-2


def test_cached_decoding_equals_the_cache_free_recurrence():
    m = perturbed()
    x = tokens(T=10)
    with torch.no_grad():
        reference = naive_recurrence(m, x)
        cache = m.new_cache(2, 10)
        chunks = [m.forward_cached(x[:, :4], cache), m.forward_cached(x[:, 4:5], cache),
                  m.forward_cached(x[:, 5:], cache)]
        assert torch.allclose(torch.cat(chunks, dim=1), reference, atol=1e-5, rtol=0)
        assert torch.allclose(m(x, lrt_mode="sequential"), reference, atol=1e-5, rtol=0)
        # the recurrence matters: zero memory is far from it
        assert (m(x, lrt_mode="zero") - reference).abs().max() > 1e-2


def test_ragged_left_padded_decoding_equals_each_row_alone():
    m = perturbed()
    rows = [tokens(1, 9, seed=4)[0], tokens(1, 5, seed=5)[0], tokens(1, 7, seed=6)[0]]
    new = tokens(3, 3, seed=7)
    width = max(len(r) for r in rows)
    pad = torch.tensor([width - len(r) for r in rows])
    prompt = torch.stack([F.pad(r, (int(p), 0), value=0) for r, p in zip(rows, pad)])
    with torch.no_grad():
        cache = m.new_cache(3, width + 3, pad=pad)
        batched = torch.cat([m.forward_cached(prompt, cache), m.forward_cached(new, cache)], dim=1)
        for b, row in enumerate(rows):
            alone = m.forward_cached(torch.cat([row, new[b]])[None], m.new_cache(1, len(row) + 3))
            assert torch.allclose(batched[b, int(pad[b]):], alone[0], atol=1e-5, rtol=0)


def test_the_default_forward_is_the_exact_recurrence():
    """No lrt_mode given, the forward (logits and eval loss) is the exact recurrence, the mode
    decoding runs: the same code path, so equal bit for bit; "merged" is another function."""
    m = perturbed()
    x, y = tokens(), tokens(seed=3)
    with torch.no_grad():
        sequential = m(x, lrt_mode="sequential")
        assert torch.equal(m(x), sequential)
        assert torch.equal(m(x, y), m(x, y, lrt_mode="sequential"))
        assert torch.allclose(sequential, naive_recurrence(m, x), atol=1e-5, rtol=0)
        assert (m(x, lrt_mode="merged") - sequential).abs().max() > 1e-2


def test_generate_with_and_without_cache_is_the_greedy_argmax_of_the_default_forward():
    """cart.generate, cached (the default) or not, continues each prompt by the argmax of the
    default forward over what came before; batched left-padded prompts decode as each row alone."""
    from cart.generation import generate
    m = perturbed()
    prompts = [tokens(1, 7, seed=4)[0], tokens(1, 3, seed=5)[0]]
    cached = generate(m, prompts, 5, temperature=0)
    assert all(torch.equal(a, b) for a, b in zip(cached, generate(m, prompts, 5, temperature=0, use_cache=False)))
    with torch.no_grad():
        for prompt, out in zip(prompts, cached):
            alone = generate(m, [prompt], 5, temperature=0)[0]
            assert torch.equal(alone, out)
            for t in range(len(prompt), len(out)):  # batch 1, token by token either way: bit-equal logits
                assert out[t] == m(out[None, :t])[0, -1].argmax()


def test_training_validation_names_the_merged_passes():
    """The training stage's periodic validation stays the parallel passes (merged), by name now
    that it is not the default."""
    from cart.training.validation import eval_loss
    m = perturbed()
    cfg = m.config
    x, y = tokens(), tokens(seed=3)
    assert cfg.validation_kwargs() == {"lrt_mode": "merged"}
    loss, _ = eval_loss(m, [(x, y)], **cfg.validation_kwargs())
    with torch.no_grad():
        want = F.cross_entropy(m(x, lrt_mode="merged").transpose(1, 2), y).item()
    assert loss == pytest.approx(want, rel=1e-6)


def test_zero_memory_decoding_equals_pass_zero():
    m = perturbed()
    x = tokens()
    with torch.no_grad():
        decoded = m.forward_cached(x, m.new_cache(2, 12, lrt_mode="zero"))
        assert torch.allclose(decoded, m(x, lrt_mode="zero"), atol=1e-5, rtol=0)


# ---- zero memory is Dense ----
def test_dense_weights_load_into_the_backbone_and_zero_feedback_is_dense():
    shape = {k: v for k, v in SMALL.items() if k != "gate_channels"}
    torch.manual_seed(3)
    dense = build_model(DenseConfig(**shape)).eval()
    for variant in ("shared", "layerwise"):
        m = perturbed(variant=variant)
        missing, unexpected = m.load_state_dict(dense.state_dict(), strict=False)
        assert not unexpected
        assert set(missing) == {n for n, _ in m.named_parameters()} - set(dense.state_dict())
        x = tokens()
        with torch.no_grad():
            want = dense(x)
            # zero memory is Dense's computation, op for op, whatever the feedback weights
            assert torch.equal(m(x, lrt_mode="zero"), want)
            assert (m(x) - want).abs().max() > 1e-2  # perturbed feedback is active
            m.resid_gamma.zero_()
            for p in m.feedback.parameters():
                p.zero_()
            # gates stay random: with W_fb = 0 and gamma = 0 the memory must still change nothing
            assert torch.allclose(m(x), want, atol=1e-5, rtol=0)
            assert torch.allclose(m(x, lrt_mode="sequential"), want, atol=1e-5, rtol=0)


def test_initialisation_gates_at_one_and_gamma_at_resid_gate_init():
    m = build_model(LRTConfig(**SMALL, resid_gate_init=0.25))
    u = torch.randn(2, 5, 32)
    for layer in m.layers:  # a = 2 sigmoid(G u) = 1 for any input: the memory enters at full weight
        assert torch.equal(2 * torch.sigmoid(layer.attn.fb_gate(u[..., :16])), torch.ones(2, 5, 4))
    assert torch.equal(m.resid_gamma.detach(), torch.full((3,), 0.25))
    assert all(p.abs().sum() > 0 for p in m.feedback.parameters())


def test_the_memory_is_the_normed_output_of_the_source_layer():
    """blocks carries m before the norm's gain and multiplies it in where m~ is read: the memory
    the next tokens see is memory_norm(h) (the gain is perturbed away from 1, so it shows)."""
    for source in (1, 2, 3):
        m = perturbed(source_layer=source)
        seen = {}
        m.layers[source - 1].register_forward_hook(lambda mod, inp, out: seen.update(x=out[0]))
        x = tokens()
        with torch.no_grad():
            _, memory, _ = m.blocks(m.tok_emb(x), m.rope.tables(12, x.device), None, [None] * 3)
            torch.testing.assert_close(memory * m.memory_norm.weight, m.memory_norm(seen["x"]), atol=1e-6, rtol=0)
            assert (m.memory_norm.weight - 1).abs().max() > 0.05


@pytest.mark.parametrize("layers,source", [(1, 1), (2, 2), (3, 2), (4, 3), (6, 5), (8, 6), (10, 8), (12, 9)])
def test_default_source_layer_is_three_quarters_rounded_half_up(layers, source):
    assert LRTConfig(n_layers=layers).source == source
    assert LRTConfig(n_layers=layers, source_layer=1).source == 1


# ---- the loss and its supervision ----
@pytest.mark.parametrize("S,T", [(1, 11), (2, 11), (3, 11), (5, 12), (12, 12), (20, 7)])
def test_each_position_is_supervised_once_across_the_subsets(S, T):
    m = perturbed(interleaved_passes=S)
    with torch.no_grad():
        (pass0, _), *subsets = m.interleaved(tokens(T=T))
    assert torch.equal(pass0, torch.arange(T))
    assert len(subsets) == min(S, T)  # S > T: the empty subsets are not run
    covered = torch.cat([pos for pos, _ in subsets])
    assert torch.equal(covered.sort().values, torch.arange(T))
    for i, (pos, _) in enumerate(subsets):
        assert torch.equal(pos % S, torch.full_like(pos, i))


@pytest.mark.parametrize("S", [1, 3])
def test_training_loss_is_the_mean_of_the_pass_losses(S):
    m = perturbed(interleaved_passes=S)
    x, y = tokens(T=11), tokens(T=11, seed=8)
    y[0, 4] = y[1, 0] = y[1, 9] = IGNORE_INDEX
    m.train()
    loss = m(x, targets=y)
    m.eval()
    with torch.no_grad():  # the merged logits are each subset pass's, at its positions
        ce_merged = F.cross_entropy(m(x, lrt_mode="merged").transpose(1, 2), y, ignore_index=IGNORE_INDEX,
                                    reduction="none")
        ce_zero = F.cross_entropy(m(x, lrt_mode="zero").transpose(1, 2), y, ignore_index=IGNORE_INDEX,
                                  reduction="none")
    valid = y != IGNORE_INDEX
    t = torch.arange(11)
    pass_losses = [ce_zero[valid].mean()]
    for i in range(S):
        subset = valid & (t % S == i)
        pass_losses.append(ce_merged[subset].mean())
    assert loss.item() == pytest.approx((sum(pass_losses) / (S + 1)).item(), abs=1e-6)


@pytest.mark.parametrize("detach", [False, True])
def test_detach_memory_cuts_the_gradient_through_buffer_and_memory(detach):
    """l_1 (the subset of even positions, S = 2) reaches the odd positions' tokens only through
    pass 0: its keys/values in the buffer and its memory H. detach_memory cuts both."""
    m = perturbed(interleaved_passes=2, detach_memory=detach)
    x, y = tokens(), tokens(seed=9)
    store, handle = capture_embeddings(m)
    _, (pos, h) = m.interleaved(x)[:2]
    handle.remove()
    F.cross_entropy(m.head(h).transpose(1, 2), y[:, pos]).backward()
    odd = store["emb"].grad[:, 1::2]
    assert pos.tolist() == list(range(0, 12, 2))
    assert torch.equal(odd, torch.zeros_like(odd)) == detach


@pytest.mark.parametrize("detach", [False, True])
def test_subset_pass_backpropagates_into_the_buffered_keys_and_values(detach):
    """Each layer's buffer of pass 0's keys and values, fed to subset pass 0 (S = 2, the even
    positions) from separate leaves: the pass's loss reaches the keys and the values of exactly
    the entries it attends to without rewriting them (odd j with an even query t > j);
    detach_memory cuts both."""
    m = perturbed(interleaved_passes=2, detach_memory=detach)
    x, y = tokens(), tokens(seed=9)
    leaves = []

    def buffer_leaves(module, inputs, output):  # pass 0 only: the first call of each layer
        if len(leaves) == m.config.n_layers:
            return output
        out, (k, v) = output
        leaves.append((k.detach().requires_grad_(), v.detach().requires_grad_()))
        return out, leaves[-1]

    handles = [layer.attn.register_forward_hook(buffer_leaves) for layer in m.layers]
    _, (pos, h) = m.interleaved(x)[:2]
    for handle in handles:
        handle.remove()
    F.cross_entropy(m.head(h).transpose(1, 2), y[:, pos]).backward()
    T = x.shape[1]
    attended = [j % 2 == 1 and j < T - 1 for j in range(T)]
    for k, v in leaves:
        for leaf in (k, v):
            if detach:
                assert leaf.grad is None
            else:
                assert (leaf.grad.abs().sum(dim=(0, 1, 3)) > 0).tolist() == attended


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("variant", ["shared", "layerwise"])
def test_every_parameter_is_trained(variant, detach):
    """detach_memory cuts the carried memory from the graph, not the parameters that read it:
    the memory norm's gain learns too."""
    m = perturbed(variant=variant, detach_memory=detach).train()
    m(tokens(), targets=tokens(seed=10)).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---- accounting ----
def overhead_formula(d, L, H, gate_channels, variant, kv=True, resid=True):
    """Parameters LRT adds to Dense: the W_fb pairs (d -> d each) and per-layer per-head gates,
    the gammas, the memory norm's gain."""
    pairs = 1 if variant == "shared" else L
    return (pairs * 2 * d * d + L * gate_channels * H if kv else 0) + (L if resid else 0) + d


@pytest.mark.parametrize("variant", ["shared", "layerwise"])
@pytest.mark.parametrize("kv,resid", [(True, True), (True, False), (False, True)])
def test_built_model_adds_exactly_the_overhead_formula(variant, kv, resid):
    cfg = LRTConfig(**SMALL, variant=variant, inject_kv=kv, inject_resid=resid)
    dense = DenseConfig(**{k: v for k, v in SMALL.items() if k != "gate_channels"})
    built = build_model(cfg).num_params()
    assert built - build_model(dense).num_params() == overhead_formula(32, 3, 4, 16, variant, kv, resid)
    counted = cfg.count_params()
    assert counted["stored"] == counted["effective"] == built
    assert counted["overhead"] == built - dense.count_params()["stored"]


def test_overhead_at_d1024_12_layers():
    """d=1024, 12 layers, vocab 32000 (H = 16, gates read 32 channels). Shared adds one d -> d
    pair, 2 d^2 / (12 * 12.25 d^2 + V d) = 1.13% of our tied-embedding Dense (the paper's
    0.25-0.37% is of a backbone with untied embeddings and value embeddings per layer);
    layerwise adds a pair per layer."""
    dense = DenseConfig(vocab_size=32_000, d_model=1024, n_layers=12).count_params()["stored"]
    shared = LRTConfig(vocab_size=32_000, d_model=1024, n_layers=12).count_params()
    layerwise = LRTConfig(vocab_size=32_000, d_model=1024, n_layers=12, variant="layerwise").count_params()
    assert shared["overhead"] == overhead_formula(1024, 12, 16, 32, "shared") == 2_104_332
    assert layerwise["overhead"] == overhead_formula(1024, 12, 16, 32, "layerwise") == 25_173_004
    assert shared["stored"] == dense + shared["overhead"]
    assert 0.011 < shared["overhead"] / dense < 0.0115
    assert 0.13 < layerwise["overhead"] / dense < 0.14


@pytest.mark.parametrize("variant", ["shared", "layerwise"])
def test_forward_flops_count_the_feedback_projections(variant):
    """One inference forward with memory: torch's FLOP counter measures its matmuls (it does not
    count the CPU attention kernel, so attention's 4 T^2 d per layer is added as Dense counts it)."""
    cfg = LRTConfig(**SMALL, variant=variant)
    m = build_model(cfg).eval()
    x, T = tokens(), 12
    memory = torch.randn(2, T, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m.blocks(m.tok_emb(x), m.rope.tables(T, x.device), memory, [None] * 3)
    attention = 3 * 4 * T * T * 32
    assert counter.get_total_flops() + 2 * attention == 2 * cfg.forward_flops(T)  # 2 sequences
    dense = DenseConfig(**{k: v for k, v in SMALL.items() if k != "gate_channels"}).forward_flops(T)
    pairs = 1 if variant == "shared" else 3
    assert cfg.forward_flops(T) == dense + 2 * T * (pairs * 2 * 32 * 32 + 3 * 16 * 4)


def test_training_counts_two_passes_per_token():
    cfg = LRTConfig(**SMALL)
    assert cfg.train_passes() == 2.0 and cfg.train_substeps() == ({},)
    assert train_flops_per_token(cfg, 64) == 3 * (cfg.forward_flops(64) / 64 + 2 * 32 * V) * 2
    assert cfg.runtime_kwargs() == {"lrt_mode"}


# ---- interface ----
@pytest.mark.parametrize("kwargs,field,valid", [
    ({"n_layers": 0}, "n_layers", "must be >= 1, got 0"),
    ({"source_layer": 0}, "source_layer", "1-based layer index in 1..3 (n_layers), got 0"),
    ({"source_layer": 4}, "source_layer", "1-based layer index in 1..3 (n_layers), got 4"),
    ({"variant": "both"}, "variant", "'both'"),
    ({"inject_kv": False, "inject_resid": False}, "inject_kv",
     "inject_kv and inject_resid are both off, so the memory reaches nothing; turn one on (or use arch 'dense')"),
    ({"interleaved_passes": 0}, "interleaved_passes", "must be >= 1 (S subset passes), got 0"),
    ({"interleaved_passes": 1.5}, "interleaved_passes", "1.5"),
    ({"detach_memory": "yes"}, "detach_memory", "'yes'"),
    ({"resid_gate_init": float("nan")}, "resid_gate_init", "must be finite, got nan"),
    ({"gate_channels": 0}, "gate_channels", "must be in 1..d_model=32, got 0"),
    ({"gate_channels": 33}, "gate_channels", "must be in 1..d_model=32, got 33"),
])
def test_bad_config_names_the_field_and_what_is_valid(kwargs, field, valid):
    with pytest.raises(ValueError, match=rf"^LRTConfig\.{field}: ") as e:
        LRTConfig(**(SMALL | kwargs))
    assert valid in str(e.value)


@pytest.mark.parametrize("kwargs", [{"source_layer": 1}, {"source_layer": 3}, {"gate_channels": 1},
                                    {"gate_channels": 32}, {"interleaved_passes": 1}, {"inject_kv": False},
                                    {"inject_resid": False}])
def test_the_edges_of_each_valid_range_are_accepted(kwargs):
    assert LRTConfig(**(SMALL | kwargs))


def test_bad_runtime_arguments_name_the_argument():
    m = perturbed()
    x = tokens()
    with pytest.raises(ValueError, match=r"lrt_mode: 'exact' is not one of"):
        m(x, lrt_mode="exact")
    with pytest.raises(ValueError, match=r"unknown argument.*n_loops"):
        m(x, n_loops=2)
    with pytest.raises(ValueError, match=r"lrt_mode: 'merged' is not one of \['sequential', 'zero'\]"):
        m.new_cache(2, 12, lrt_mode="merged")
    m.train()
    with pytest.raises(ValueError, match=r"^LRT: \['lrt_mode'\] select an evaluation mode; in train mode with targets "
                                         r"the loss is always the interleaved one \(call model\.eval\(\) to evaluate\)$"):
        m(x, targets=x, lrt_mode="merged")


def test_feedback_attention_adds_the_gated_memory_keys_and_values():
    """Each layer's keys and values take the memory's, gated per head: k + a K_fb, v + a V_fb with
    a = 2 sigmoid(G u) (1 at init), before RoPE; then causal attention and the output projection."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 7, 32, generator=g)
    k_fb, v_fb = (torch.randn(2, 4, 7, 8, generator=g) for _ in range(2))
    for m, at_init in ((build_model(LRTConfig(**SMALL)), True), (perturbed(), False)):
        attn = m.layers[1].attn
        cos, sin = rope = m.rope.tables(7, x.device)
        heads = lambda t: t.view(2, 7, 4, 8).transpose(1, 2)  # noqa: E731
        a = torch.ones(2, 4, 7, 1) if at_init else 2 * torch.sigmoid(attn.fb_gate(x[..., :16])).transpose(1, 2)[..., None]
        q, k, v = heads(attn.q(x)), heads(attn.k(x)) + a * k_fb, heads(attn.v(x)) + a * v_fb
        y = F.scaled_dot_product_attention(RoPE.apply(q, cos, sin), RoPE.apply(k, cos, sin), v, is_causal=True)
        want = attn.o(y.transpose(1, 2).reshape(2, 7, 32))
        with torch.no_grad():
            got, (k_seen, v_seen) = attn(x, rope, (k_fb, v_fb))
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(v_seen, v, atol=1e-6, rtol=1e-5)


def test_eval_mode_with_targets_is_the_mean_loss_of_the_logits():
    m, x = perturbed(), tokens()
    y = tokens(seed=5)
    with torch.no_grad():
        for mode in ("sequential", "zero"):
            logits = m(x, lrt_mode=mode)
            want = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            torch.testing.assert_close(m(x, y, lrt_mode=mode), want, atol=1e-6, rtol=1e-6)
    m.train()
    assert m(x).shape == (2, 12, V)  # train mode without targets: the logits


def test_decode_cache_is_in_the_models_dtype():
    m = build_model(LRTConfig(**SMALL)).to(torch.bfloat16)
    cache = m.new_cache(3, 10)
    assert cache.memory.dtype == torch.bfloat16 and cache.memory.shape == (3, 1, 32) and not cache.memory.any()
    assert all(layer.k.dtype == layer.v.dtype == torch.bfloat16 for layer in cache.layers)


def test_memory_norm_is_rms_norm_with_the_configured_eps():
    m = build_model(LRTConfig(**SMALL, norm_eps=1e-2))
    x = torch.full((1, 1, 32), 0.05)  # mean square 2.5e-3: comparable to eps, so eps shows
    with torch.no_grad():
        torch.testing.assert_close(m.memory_norm(x), x / math.sqrt(2.5e-3 + 1e-2), atol=1e-7, rtol=1e-6)


def test_config_round_trips_through_the_registry():
    cfg = LRTConfig(**SMALL, variant="layerwise", source_layer=1, detach_memory=True)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert type(build_model(cfg)).__name__ == "LRT"


def test_bf16_autocast_training_and_merged_eval():
    m = perturbed().train()
    x, y = tokens(), tokens(seed=11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(x, targets=y)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(m(x, targets=y).item(), abs=0.05)
    m.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m(x)
    assert torch.isfinite(logits.float()).all()


def test_tiny_lrt_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model(LRTConfig(**SMALL)).train()
    x = torch.randint(0, V, (4, 17))
    inp, tgt = x[:, :-1], x[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = model(inp, targets=tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(V), rel=0.1)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
def test_compiled_training_step_matches_eager():
    """The training stage's compiled loss (torch.compile of model + loss, CPU inductor here)
    computes the same interleaved loss and gradients as eager."""
    assert_compiled_step_matches_eager(perturbed, tokens(T=17))


def test_output_projections_are_initialised_scaled_with_depth():
    """Dense's init: N(0, init_std) for every matrix, the residual writers (attention o, FFN down)
    scaled by 1 / sqrt(2 n_layers). Sample std of 32 x 32 (or more) draws: within 10% of its value."""
    cfg = LRTConfig(**SMALL)
    torch.manual_seed(0)
    m = build_model(cfg)
    for layer in m.layers:
        for p, want in ((layer.attn.q.weight, cfg.init_std), (layer.attn.o.weight, cfg.init_std / math.sqrt(6)),
                        (layer.ffn.down.weight, cfg.init_std / math.sqrt(6))):
            assert abs(p.std().item() / want - 1) < 0.1


@pytest.mark.parametrize("flags", [dict(), dict(variant="layerwise"), dict(variant="layerwise", n_layers=2),
                                   dict(n_layers=2, inject_kv=False)])
def test_blocks_inject_the_memory_before_every_layer(flags):
    """x <- x + gamma_i m~ before block i, and block i's attention takes W_fb's keys/values of m~
    (one shared pair, or layer i's own)."""
    m = perturbed(**flags)
    g = torch.Generator().manual_seed(6)
    emb, memory = torch.randn(2, 9, 32, generator=g), torch.randn(2, 9, 32, generator=g)
    rope = m.rope.tables(9, emb.device)
    with torch.no_grad():
        x, read = emb, memory * m.memory_norm.weight  # the memory as read: its norm's gain applied
        for i, layer in enumerate(m.layers):
            x = x + m.resid_gamma[i] * read if m.config.inject_resid else x
            kv = None if m.feedback is None else m.feedback[0 if len(m.feedback) == 1 else i](read)
            x, _ = layer(x, rope, kv)
        got, _, _ = m.blocks(emb, rope, memory, [None] * len(m.layers))
    torch.testing.assert_close(got, x, atol=0, rtol=0)
