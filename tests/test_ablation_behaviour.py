"""What each CART ablation does inside the forward, observed with hooks on the modules: how many
times the anchor K/V is computed and from which tensor, which core block runs at each loop, which
loop-index row is added to the core's input, and that the cross-attention has no RoPE. Each test
names a behaviour an ablation flag promises (docs/cart.md, Ablations), so a flag that silently
does something else fails here even where the logits stay plausible.

torch.equal is used only where the test reruns a module on the very tensor the hook recorded as its
input (the same operation on the same values and shape, so the same bits on any CPU); an added
table row, a sum computed another way, is compared at float rounding."""
import math

import pytest
import torch
import torch.nn.functional as F

from cart.models import CARTConfig, build_model

SMALL = dict(vocab_size=61, d_model=32, head_dim=8, n_prelude=2, n_loops=3, ffn_multiple=16)
pytestmark = pytest.mark.usefixtures("one_thread")


def perturbed(**flags) -> torch.nn.Module:
    """Weights off their init so the HyperConnection blends, the gate and the norms all matter."""
    torch.manual_seed(0)
    model = build_model(CARTConfig(**(SMALL | flags))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.dim() >= 2 else 0.5))
    return model


def trace(model, n_loops=None) -> dict:
    """One forward with every interesting module recorded, in call order."""
    rec = {"anchor_in": [], "core": [], "core_in": [], "blend": [], "state": [], "cross": []}
    hooks = [
        model.prelude[-1].register_forward_hook(lambda m, a, out: rec.__setitem__("prelude_out", out)),
        model.tok_emb.register_forward_hook(lambda m, a, out: rec.__setitem__("embedded", out)),
        model.gate.register_forward_hook(lambda m, a, out: rec["state"].append(out)),
    ]
    if hasattr(model, "anchor_kv"):
        hooks.append(model.anchor_kv.register_forward_pre_hook(lambda m, a: rec["anchor_in"].append(a[0])))
    if model.hyper is not None:
        hooks.append(model.hyper.register_forward_hook(lambda m, a, out: rec["blend"].append(out)))
    def core_called(i):
        def hook(module, args):  # returns None: a pre-hook's return value would replace the inputs
            rec["core"].append(i)
            rec["core_in"].append(args[0])
        return hook

    for i, block in enumerate(model.core):
        hooks.append(block.register_forward_pre_hook(core_called(i)))
        hooks.append(block.attn.register_forward_hook(lambda m, a, out: rec["cross"].append((m, a, out))))
    try:
        with torch.no_grad():
            model(torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(1)), n_loops=n_loops)
    finally:
        for h in hooks:
            h.remove()
    return rec


def reference_sinusoid(rows: int, dim: int) -> torch.Tensor:
    """pe[r, 2i] = sin(r / 10000^(2i/dim)), pe[r, 2i+1] = cos(...), written from the formula."""
    pe = torch.empty(rows, dim)
    for r in range(rows):
        for i in range(0, dim, 2):
            angle = r / 10_000 ** (i / dim)
            pe[r, i], pe[r, i + 1] = math.sin(angle), math.cos(angle)
    return pe


# ---- the anchor ----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["paper_text", "paper_code"])
def test_frozen_anchor_is_computed_once_from_the_prelude_output(variant):
    model = perturbed(variant=variant)
    rec = trace(model)
    assert len(rec["anchor_in"]) == 1
    with torch.no_grad():  # norm(x_p) in the paper's text, x_p itself in the authors' code
        expected = model.anchor_norm(rec["prelude_out"])
    assert torch.equal(rec["anchor_in"][0], expected)
    assert variant == "paper_code" or not torch.allclose(rec["anchor_in"][0], rec["prelude_out"])
    assert not torch.allclose(rec["prelude_out"], rec["embedded"])  # the prelude did something


@pytest.mark.parametrize("variant,source", [("paper_text", "blend"), ("paper_code", "core_in")])
def test_unfrozen_anchor_is_recomputed_every_loop_from_that_loops_state(variant, source):
    """X: K, V from x_r (the HyperConnection blend, paper text) or from u_r (the core's input,
    the authors' code) at every iteration, never from the prelude output."""
    model = perturbed(variant=variant, unfreeze_kv=True)
    rec = trace(model)
    R = model.config.n_loops
    assert len(rec["anchor_in"]) == R and len(rec[source]) == R
    with torch.no_grad():
        for r in range(R):
            assert torch.equal(rec["anchor_in"][r], model.anchor_norm(rec[source][r])), f"loop {r}"
        # loop 0's blend of three copies of x_p is x_p itself; from loop 1 on the state has moved
        later = torch.stack(rec["anchor_in"][1:])
        assert not torch.allclose(later, model.anchor_norm(rec["prelude_out"]).expand_as(later), atol=1e-2)


def test_unfrozen_anchor_without_hyperconnection_reads_the_previous_state():
    model = perturbed(unfreeze_kv=True, disable_hyperconnection=True)
    rec = trace(model)
    states = [rec["prelude_out"]] + rec["state"]  # h_0 = x_p, then h_1, h_2, ...
    with torch.no_grad():
        for r in range(model.config.n_loops):
            assert torch.equal(rec["anchor_in"][r], model.anchor_norm(states[r])), f"loop {r}"


def test_self_attending_core_has_no_anchor():
    model = perturbed(unshare_core=True, self_attn_core=True)
    assert not hasattr(model, "anchor_kv")
    assert len(trace(model)["core"]) == model.config.n_loops


# ---- which core block, which state ---------------------------------------------------------

@pytest.mark.parametrize("flags,blocks", [
    ({}, [0, 0, 0]), ({"unshare_core": True}, [0, 1, 2]),
    ({"unshare_core": True, "self_attn_core": True}, [0, 1, 2]), ({"n_loops": 1}, [0]),
])
def test_each_loop_runs_its_core_block(flags, blocks):
    model = perturbed(**flags)
    assert trace(model)["core"] == blocks


def test_shared_core_runs_once_per_loop_at_any_inference_depth():
    assert trace(perturbed(), n_loops=5)["core"] == [0] * 5


def test_state_carried_between_loops_is_the_gate_output():
    """h_{r+1} = gate(...) becomes the newest entry of the HyperConnection window of loop r+1,
    the older entries shift, and the window starts as copies of h_0 = x_p."""
    model = perturbed()
    rec = trace(model)
    h = [rec["prelude_out"]] + rec["state"]
    with torch.no_grad():
        for r in range(model.config.n_loops):
            window = [h[max(r - j, 0)] for j in range(model.config.hc_window)]
            assert torch.equal(rec["blend"][r], model.hyper(window)), f"loop {r}"


# ---- the loop-index embedding --------------------------------------------------------------

@pytest.mark.parametrize("n_loops", [None, 6])
def test_loop_r_adds_row_r_of_the_sinusoid(n_loops):
    model = perturbed()
    rec = trace(model, n_loops)
    R = n_loops or model.config.n_loops
    table = reference_sinusoid(R, model.config.d_model)
    for r in range(R):
        added = rec["core_in"][r] - rec["blend"][r]
        torch.testing.assert_close(added, table[r].expand_as(added), atol=1e-5, rtol=0)
        assert r == 0 or (table[r] - table[0]).abs().max() > 1e-2  # rows differ far above the tolerance


def test_loop_r_adds_the_projection_of_row_r_in_the_authors_code():
    model = perturbed(variant="paper_code")
    rec = trace(model)
    table = reference_sinusoid(model.config.lie_rows, model.config.lie_dim)
    with torch.no_grad():
        rows = table @ model.lie.proj.weight.T
    for r in range(model.config.n_loops):
        added = rec["core_in"][r] - rec["blend"][r]
        torch.testing.assert_close(added, rows[r].expand_as(added), atol=1e-5, rtol=0)


def test_disabled_loop_index_adds_nothing():
    rec = trace(perturbed(disable_lie=True))
    assert all(torch.equal(u, x) for u, x in zip(rec["core_in"], rec["blend"]))


# ---- the cross-attention ---------------------------------------------------------------------

@pytest.mark.parametrize("flags", [{}, {"unfreeze_kv": True}, {"unshare_core": True}], ids=["base", "X", "Z"])
def test_cross_attention_is_causal_attention_without_rope(flags):
    """out = W_o attn(W_q h, K, V), causal, queries NOT rotated (reconstructed, docs/cart.md):
    recomputed from the module's own inputs and weights."""
    rec = trace(perturbed(**flags))
    assert len(rec["cross"]) == 3
    for module, (h, k, v, mask), out in rec["cross"]:
        assert mask is None
        q = module.q(h).view(*h.shape[:2], module.n_heads, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.testing.assert_close(out, module.o(y.transpose(1, 2).reshape(h.shape)), atol=1e-6, rtol=1e-6)
