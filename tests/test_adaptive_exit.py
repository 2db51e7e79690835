"""CART's adaptive exit at inference (issue 20): every token stops looping once its state moves by
less than the threshold, with exactly the state R = (its loop count) gives it; cached decoding with
the exit equals the full forward with it; bad settings are one message naming the argument."""
import pytest
import torch

from cart.generation import generate
from cart.models import build_model
from cart.models.cart.config import CARTConfig


def tiny(**fields):
    torch.manual_seed(0)
    cfg = CARTConfig(**{"vocab_size": 64, "d_model": 32, "head_dim": 16, "ffn_multiple": 32, "n_prelude": 1,
                        "n_loops": 4} | fields)
    model = build_model(cfg).eval()
    with torch.no_grad():  # away from init, so no symmetry of the initial weights helps
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def core_inputs(model):
    """The coda's input of every forward (the loop's final states), appended as they come."""
    seen = []
    model.coda.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    return seen


@pytest.mark.parametrize("fields", [{}, {"variant": "paper_code"}, {"disable_hyperconnection": True},
                                    {"disable_lie": True}])
def test_each_token_exits_with_the_state_of_its_own_loop_count(fields):
    model, idx = tiny(**fields), torch.randint(0, 64, (3, 12))
    states = core_inputs(model)
    R = 8
    with torch.no_grad():
        at = {}
        for k in range(1, R + 1):
            model.hidden(idx, n_loops=k)
            at[k] = states[-1]
        # thresholds that split the tokens: the median relative change of iteration r + 1 over tokens
        change = [((at[r + 1] - at[r]).norm(dim=-1) / at[r].norm(dim=-1)) for r in range(1, R)]
        mixed = 0
        for t in [float(c.median()) for c in change]:
            model.hidden(idx, n_loops=R, exit_threshold=t)
            used, final = model.last_loops_used, states[-1]
            assert used.shape == idx.shape and int(used.min()) >= 1 and int(used.max()) <= R
            # exact by construction: the exit path runs each iteration on the whole (3, 12) batch with
            # the same operations and loop-index row as R = k does, and only selects which state a token keeps
            for k in used.unique().tolist():
                assert torch.equal(final[used == k], at[k][used == k]), (t, k)
            mixed += len(used.unique()) > 1
    assert mixed >= 3, "no threshold split the tokens: the test would not see a per-token exit"


@pytest.mark.parametrize("fields", [{"n_loops": 6}, {"n_loops": 6, "unshare_core": True}])
def test_threshold_zero_runs_every_loop_and_a_huge_one_stops_after_the_first(fields):
    model, idx = tiny(**fields), torch.randint(0, 64, (2, 10))
    with torch.no_grad():  # exact by construction: the same iterations on the same shapes, every state kept
        assert torch.equal(model(idx, n_loops=6, exit_threshold=0.0), model(idx, n_loops=6))
        assert bool((model.last_loops_used == 6).all())
        if model.config.unshare_core:  # R is the number of blocks; block 0 alone differs from R = 1
            return
        assert torch.equal(model(idx, n_loops=6, exit_threshold=1e9), model(idx, n_loops=1))
        assert bool((model.last_loops_used == 1).all())


def test_a_token_that_moved_by_exactly_the_threshold_keeps_looping():
    """The exit is for a change *less* than the threshold: set it to one token's own first-step
    change and that token runs a second iteration, while the tokens that moved less stop after one."""
    model, idx = tiny(), torch.randint(0, 64, (2, 10))
    states = core_inputs(model)
    prelude_out = []
    model.prelude[-1].register_forward_hook(lambda mod, args, out: prelude_out.append(out))
    with torch.no_grad():
        model.hidden(idx, n_loops=1)
        h, h_next = prelude_out[-1].float(), states[-1].float()  # h_0 and h_1
        change = (h_next - h).norm(dim=-1) / h.norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
        t = float(change.flatten().sort().values[change.numel() // 2])  # one token's change, exactly
        model.hidden(idx, n_loops=4, exit_threshold=t)
    used = model.last_loops_used
    # exact by construction: the exit path computes this first change with the same operations on the
    # same (2, 10) states as the R = 1 forward above, and t is one of those float32 values
    assert int((change == t).sum()) >= 1 and bool((change < t).any())
    assert torch.equal(used == 1, change < t)


def test_loops_used_are_integer_counts_set_by_an_exit():
    model, idx = tiny(), torch.randint(0, 64, (2, 10))
    assert model.last_loops_used is None  # no adaptive exit has run
    with torch.no_grad():
        model(idx, n_loops=3, exit_threshold=0.0)
    assert model.last_loops_used.dtype == torch.int64
    assert torch.equal(model.last_loops_used, torch.full((2, 10), 3))


def test_looping_stops_once_every_token_has_exited():
    model, idx = tiny(), torch.randint(0, 64, (2, 10))
    calls = []
    model.core[0].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(idx, n_loops=16, exit_threshold=1e9)
    assert len(calls) == 1


# Relative distance every token's change keeps from a threshold that two computations of it (cached
# decoding one token at a time, the full forward) must judge alike: their states agree to ~1e-6
# relative, so their changes (ratios of norms of order 0.1 to 1) to ~1e-5; 1e-4 leaves no exit to rounding.
EXIT_MARGIN = 1e-4
GREEDY_MARGIN = 1e-3  # top-2 logit gap; the logits agree to 1e-5 (asserted below)


def loop_changes(model, idx: torch.Tensor, R: int) -> torch.Tensor:
    """(R, B, T): every token's relative change ||h_r - h_{r-1}|| / ||h_{r-1}|| at iterations r = 1..R,
    each state h_r from a plain forward at n_loops = r (the states an exit path computes)."""
    seen = []
    hooks = [model.prelude[-1].register_forward_hook(lambda mod, args, out: seen.append(out)),
             model.coda.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))]
    try:
        for k in range(1, R + 1):
            model.hidden(idx, n_loops=k)
    finally:
        for hook in hooks:
            hook.remove()
    hs = [h.float() for h in [seen[0]] + seen[1::2]]  # h_0, then each forward's coda input h_k
    return torch.stack([(b - a).norm(dim=-1) / a.norm(dim=-1) for a, b in zip(hs, hs[1:])])


@pytest.mark.parametrize("r", [2, 4])
def test_cached_decoding_with_the_exit_equals_the_full_forward_with_it(r):
    from conftest import assert_greedy_decisive
    model = tiny()
    prompts = [torch.randint(0, 64, (n,)) for n in (5, 9)]
    with torch.no_grad():
        # a threshold that splits the prompt's tokens at iteration r + 1, in the middle of the widest
        # gap between their changes there, not on any of them
        change = loop_changes(model, prompts[1][None], r + 1)[r].flatten().sort().values
        i = int(((change[1:] - change[:-1]) / change[:-1]).argmax())
        t = float((change[i] + change[i + 1]) / 2)
        cache = model.new_cache(1, 16, n_loops=8, exit_threshold=t)
        cached = torch.cat([model.forward_cached(prompts[1][None, i:i + 1], cache) for i in range(9)], dim=1)
        full = model(prompts[1][None], n_loops=8, exit_threshold=t)
        used = model.last_loops_used
        kw = dict(max_new_tokens=6, temperature=0.0, n_loops=8, exit_threshold=t)
        gen_cached = generate(model, prompts, use_cache=True, **kw)
        gen_full = generate(model, prompts, use_cache=False, **kw)
        for p, seq in zip(prompts, gen_full):  # every token of every row decisive: exit and argmax
            distance = ((loop_changes(model, seq[None], 8) - t).abs() / t).min()
            assert distance > EXIT_MARGIN, f"a token's change sits {float(distance):.2g} (relative) from t"
            assert_greedy_decisive(model, p, seq, GREEDY_MARGIN, n_loops=8, exit_threshold=t)
    assert len(used.unique()) > 1, "the threshold split no tokens: the test would not see the exit"
    assert torch.allclose(cached, full, atol=1e-5, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(gen_cached, gen_full))


@pytest.mark.parametrize("value", [True, "0.1", -0.1, float("nan")])
def test_bad_threshold_is_one_message_naming_it(value):
    with pytest.raises(ValueError, match=r"exit_threshold: expected a number >= 0"):
        tiny()(torch.zeros(1, 4, dtype=torch.long), exit_threshold=value)


@pytest.mark.parametrize("fields", [{"unfreeze_kv": True}, {"self_attn_core": True, "unshare_core": True}])
def test_a_core_reading_every_tokens_state_cannot_exit_per_token(fields):
    with pytest.raises(ValueError, match="exit_threshold: this CART's core reads every token's loop state"):
        tiny(**fields)(torch.zeros(1, 4, dtype=torch.long), exit_threshold=0.1)


def test_exit_is_for_inference_only():
    model, idx = tiny(), torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"exit_threshold: adaptive exit is for inference"):
        model.train()(idx, exit_threshold=0.1)
    with pytest.raises(ValueError, match=r"exit_threshold: adaptive exit is for inference"):
        model.eval()(idx, exit_threshold=0.1, backprop_loops=2)
