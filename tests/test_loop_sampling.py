"""Training with a sampled recurrence depth (cart/loop_sampling.py): the sampler's distributions,
bad settings, truncated backpropagation (CART.recur), compiling one iteration for every R, and
the training loop: per-step R logged, exact resume of the R sequence, the same R on DDP ranks."""
import json
import math
import shutil
import signal

import numpy as np
import pytest
import safetensors.torch
import torch
from torch._dynamo.utils import counters

from cart.training.checkpoint import SUMMARY
from cart.training.curves import read_curves
from cart.experiments import RunPaths, TrainSettings, resolve_run
from cart.loop_sampling import LoopSampling
from cart.models import build_model, count_params
from cart.models.cart.model import CART
from cart.models.cart.config import CARTConfig
from cart.models.layers import lm_loss
from cart.params import build, load_params
from cart.training.trainer import Interrupted, Trainer, train_run
from conftest import run_spec, tiny_params, write_params
from test_train import _run_cli

DRAWS = 20_000


def draws(sampling: LoopSampling, n_loops: int, seed: int = 0, n: int = DRAWS) -> np.ndarray:
    return np.array([sampling.sample(n_loops, seed, step) for step in range(n)])


def tiny_cart(**fields) -> CART:
    torch.manual_seed(0)
    cfg = CARTConfig(vocab_size=64, d_model=32, head_dim=16, ffn_multiple=32, n_prelude=1, n_loops=4, **fields)
    return build_model(cfg)


# ---- the sampler ---------------------------------------------------------------------------------

def test_uniform_draws_every_r_in_range_with_the_uniform_moments():
    r = draws(LoopSampling("uniform", r_min=2, r_max=8), n_loops=5)
    n = 8 - 2 + 1
    assert set(r) == set(range(2, 9))
    mean, var = 5.0, (n * n - 1) / 12  # the discrete uniform's
    assert abs(r.mean() - mean) < 4 * math.sqrt(var / DRAWS)
    # the sample variance's standard error from the distribution's fourth central moment
    m4 = np.mean((np.arange(2, 9) - mean) ** 4)
    assert abs(r.var() - var) < 4 * math.sqrt((m4 - var ** 2) / DRAWS)


@pytest.mark.parametrize("n_loops,sigma", [(4, 0.5), (10, 0.3)])
def test_poisson_lognormal_has_mean_n_loops_and_huginns_variance(n_loops, sigma):
    """R = 1 + Poisson(L), log L ~ N(log(n_loops - 1) - sigma^2/2, sigma): E[R] = n_loops and
    Var[R] = E[L] + Var[L] = m + m^2 (exp(sigma^2) - 1), m = n_loops - 1."""
    r = draws(LoopSampling("poisson_lognormal", sigma=sigma), n_loops)
    m = n_loops - 1
    var = m + m * m * (math.exp(sigma ** 2) - 1)
    assert r.min() >= 1
    assert abs(r.mean() - n_loops) < 4 * math.sqrt(var / DRAWS)
    # the sample variance's standard error, estimated from the draws' own fourth central moment
    m4 = np.mean((r - r.mean()) ** 4)
    assert abs(r.var() - var) < 4 * math.sqrt((m4 - r.var() ** 2) / DRAWS)


def test_poisson_lognormal_clamps_at_r_max():
    free = draws(LoopSampling("poisson_lognormal", sigma=0.5), 6, n=2000)
    clamped = draws(LoopSampling("poisson_lognormal", sigma=0.5, r_max=8), 6, n=2000)
    assert (free > 8).any() and np.array_equal(clamped, np.minimum(free, 8))


def test_r_is_a_function_of_seed_and_step_alone():
    s = LoopSampling("uniform", r_min=1, r_max=15)
    forward = [s.sample(8, 42, step) for step in range(200)]
    assert [s.sample(8, 42, step) for step in reversed(range(200))] == forward[::-1]  # no hidden state
    assert [s.sample(8, 43, step) for step in range(200)] != forward  # the seed matters
    assert LoopSampling().sample(8, 42, 7) == 8  # fixed: the model's n_loops


# ---- bad settings --------------------------------------------------------------------------------

def train_settings(**changes) -> dict:
    return load_params()["train"] | changes


@pytest.mark.parametrize("sampling,message", [
    ({"scheme": "uniform", "r_min": 5, "r_max": 3}, r"train\.loop_sampling: r_min: 5 > r_max 3"),
    ({"scheme": "uniform", "r_min": 0, "r_max": 4}, r"train\.loop_sampling: r_min: must be >= 1"),
    ({"scheme": "geometric"}, r"train\.loop_sampling\.scheme: 'geometric' is not one of \['fixed', 'uniform', 'poisson"),
    ({"scheme": "uniform", "r_min": 1}, r"train\.loop_sampling: r_min, r_max: the uniform scheme needs both"),
    ({"scheme": "poisson_lognormal"}, r"train\.loop_sampling: sigma: .* needs sigma > 0"),
    ({"scheme": "poisson_lognormal", "sigma": 0.5, "r_min": 2}, r"train\.loop_sampling: r_min: the poisson_lognormal"),
    ({"scheme": "fixed", "r_max": 9}, r"train\.loop_sampling: r_max: the fixed scheme does not read it"),
    ({"scheme": "uniform", "r_min": 1, "r_max": 3, "mean": 2}, r"train\.loop_sampling: unknown key\(s\) \['mean'\]"),
])
def test_bad_loop_sampling_is_one_error_naming_the_key(sampling, message):
    with pytest.raises(ValueError, match=message):
        build(TrainSettings, train_settings(loop_sampling=sampling), "train")


def test_bad_backprop_loops_is_named():
    with pytest.raises(ValueError, match=r"train: backprop_loops: out of range, got 0"):
        build(TrainSettings, train_settings(backprop_loops=0), "train")


def _resolve(params: dict, group: str, name: str):
    return resolve_run(params, group, name, vocab_size=512)


@pytest.mark.parametrize("group,name,train,message", [
    ("stage2", "d32-R2-s42", {"loop_sampling": {"scheme": "uniform", "r_min": 1, "r_max": 4}},
     r"train\.loop_sampling\.r_max: uniform R must average the model's n_loops=2 .* use r_max=3"),
    ("stage2", "d32-R2-s42", {"loop_sampling": {"scheme": "uniform", "r_min": 1, "r_max": 3}, "backprop_loops": 1}, None),
    ("dense", "L2-s42", {"loop_sampling": {"scheme": "uniform", "r_min": 1, "r_max": 3}},
     r"train\.loop_sampling\.scheme: uniform samples R per step, which only a CART model with a shared core can "
     r"run; this run trains a 'dense' model"),
    ("ablation", "Z", {"loop_sampling": {"scheme": "poisson_lognormal", "sigma": 0.5}},
     r"train\.loop_sampling\.scheme: .* this run trains an unshared core"),
    ("dense", "L2-s42", {"backprop_loops": 1}, r"train\.backprop_loops: .* needs a CART model"),
    ("ablation", "X", {"backprop_loops": 1}, r"train\.backprop_loops: .* prelude without gradient"),
    ("ablation", "W", {"backprop_loops": 1}, r"train\.backprop_loops: .* prelude without gradient"),
    ("ablation", "Z", {"backprop_loops": 1}, r"train\.backprop_loops: 1 < n_loops=2 would leave the first 1 block\(s\) of an unshared core without"),
    ("ablation", "Z", {"backprop_loops": 2}, None),  # k = R: nothing truncated
    ("stage2", "d32-R2-s42", {"loop_sampling": {"scheme": "poisson_lognormal", "sigma": 0.5, "r_max": 2}},
     r"train\.loop_sampling\.r_max: a clamp at 2 <= the mean R \(the model's n_loops=2\)"),
    ("ablation", "Y", {"loop_sampling": {"scheme": "poisson_lognormal", "sigma": 0.5}},
     r"train\.loop_sampling\.scheme: poisson_lognormal .* the model has n_loops=1"),
])
def test_settings_the_model_cannot_train_with_are_rejected_before_training(group, name, train, message):
    p = tiny_params()
    p["train"].update(train)
    if message is None:
        _resolve(p, group, name)
    else:
        with pytest.raises(ValueError, match=message):
            _resolve(p, group, name)


def test_projected_loop_index_needs_r_within_its_table():
    p = tiny_params()
    p["model"]["cart"] = {"variant": "paper_code"}  # lie: projected, lie_rows 16
    del p["model"]["common"]["norm_eps"]  # the variant's own
    p["train"]["loop_sampling"] = {"scheme": "poisson_lognormal", "sigma": 0.5}
    with pytest.raises(ValueError, match=r"train\.loop_sampling\.r_max: .* lie_rows=16 .* got r_max=None"):
        _resolve(p, "stage2", "d32-R2-s42")
    p["train"]["loop_sampling"]["r_max"] = 16
    assert _resolve(p, "stage2", "d32-R2-s42").train.loop_sampling.r_max == 16


# ---- truncated backpropagation -------------------------------------------------------------------

def _loss(model, idx, **kw):
    """The loss on the model's logits: outside `model`, so a compiled model and the eager one share
    the loss's formulation (traced by Dynamo, lm_loss is a different op order than eager's)."""
    return lm_loss(model(idx, **kw), torch.roll(idx, -1, 1))


def _grads(model, idx, forward=None, **kw) -> dict:
    """Every parameter's gradient of the loss, through `forward` (default: the model itself)."""
    model.zero_grad(set_to_none=True)
    _loss(model if forward is None else forward, idx, **kw).backward()
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def test_backprop_through_all_loops_when_k_covers_r(one_thread):
    model, idx = tiny_cart(), torch.randint(0, 64, (2, 12))
    full = _grads(model, idx)
    for k in (4, 9):
        truncated = _grads(model, idx, backprop_loops=k)
        assert all(torch.equal(full[n], truncated[n]) for n in full)
    fewer = _grads(model, idx, backprop_loops=3)
    assert not torch.equal(full["core.0.ffn.down.weight"], fewer["core.0.ffn.down.weight"])
    with torch.no_grad():  # the values never change
        assert torch.equal(model(idx), model(idx, backprop_loops=1))


def test_truncation_leaves_the_earlier_iterations_out_of_the_gradient(one_thread):
    """An unshared core (ablation Z) gives each iteration its own block: with R = 4 and k = 2 the
    first two blocks run without autograd (no activations kept) and get no gradient at all, and
    the last two get exactly the gradient of full backpropagation (nothing after them was cut)."""
    model, idx = tiny_cart(unshare_core=True), torch.randint(0, 64, (2, 12))
    full = _grads(model, idx)
    tracked = []
    hooks = [block.register_forward_hook(lambda m, args, out: tracked.append(out.requires_grad)) for block in model.core]
    truncated = _grads(model, idx, backprop_loops=2)
    for h in hooks:
        h.remove()
    assert tracked == [False, False, True, True]
    for r, block in enumerate(model.core):
        for name, p in block.named_parameters():
            if r < 2:
                assert p.grad is None, (r, name)
            else:
                assert torch.equal(p.grad, full[f"core.{r}.{name}"]), (r, name)
    assert truncated["prelude.0.attn.q.weight"].abs().sum() > 0


@pytest.mark.parametrize("R,k", [(2, 1), (4, 1), (4, 3)])
def test_truncated_prelude_output_reaches_the_loss_through_the_anchor_alone(one_thread, R, k):
    """The core's state starts as the prelude output x and the anchor K, V are projected from it.
    Feed the two from separate leaves: with truncation the state leaf gets no gradient (h_0's
    copies in the HyperConnection window included, which R - k < 3 leaves in the window), the
    anchor leaf does; without truncation both do."""
    model = tiny_cart()
    rope = model.rope.tables(12, "cpu")
    weights = torch.randn(2, 12, 32)

    def leaves(**kw):
        state = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
        anchor_src = state.detach().clone().requires_grad_()
        model.anchor = lambda x, cache=None: CART.anchor(model, anchor_src, cache)
        (model.recur(state, R, rope, **kw) * weights).sum().backward()
        del model.anchor
        return state.grad, anchor_src.grad

    state_grad, anchor_grad = leaves(backprop_loops=k)
    assert state_grad is None and anchor_grad.abs().sum() > 0
    state_grad, anchor_grad = leaves()
    assert state_grad.abs().sum() > 0 and anchor_grad.abs().sum() > 0


@pytest.mark.parametrize("R,k", [(4, 2), (3, 1)])
def test_truncated_iterations_start_from_a_constant_window(one_thread, R, k):
    """The first R - k iterations run without autograd, and every one of them, like iteration R - k
    where backpropagation starts, reads a window of constants (h_0's copies detached from r = 0
    on: one kind of input, one compiled graph); the later ones track gradients from their inputs."""
    model, idx = tiny_cart(), torch.randint(0, 64, (2, 12))
    runs = []

    def iteration(history, *args, **kw):
        runs.append((torch.is_grad_enabled(), any(h.requires_grad for h in history)))
        return CART.iteration(model, history, *args, **kw)

    model.iteration = iteration
    _loss(model, idx, n_loops=R, backprop_loops=k).backward()
    assert runs == [(False, False)] * (R - k) + [(True, False)] + [(True, True)] * (k - 1)


# ---- torch.compile: one graph per iteration, not per R -------------------------------------------

def _compiled_run(loss_fn, idx, rs, **kw) -> int:
    """Train-style forward/backward at each R of `rs` through a compiled loss; Dynamo's graph count."""
    for R in rs:
        loss_fn(idx, n_loops=R, **kw).backward()
    assert counters["frames"]["total"] == counters["frames"]["ok"], "Dynamo fell back to eager for a frame"
    return counters["stats"]["unique_graphs"]


def test_compile_by_iteration_hides_only_the_loop_over_r_from_dynamo(one_thread):
    """What compile_by_iteration sets up, checked without compiling (mutmut's trampolines, a frame
    around every function, would hide `loop` from a real compile: the test below is deselected
    under mutmut): `loop` and `recur` skipped by Dynamo but not what they call (the iteration is
    traced), the loop-index table skipped with everything it calls; eager values unchanged."""
    model, idx = tiny_cart(), torch.randint(0, 64, (2, 12))
    before = {"loop": model.loop, "recur": model.recur, "lie": model.lie.forward}
    with torch.no_grad():
        reference = model(idx, n_loops=3)
    model.compile_by_iteration()
    for name, fn in (("loop", model.loop), ("recur", model.recur), ("lie", model.lie.forward)):
        assert fn._torchdynamo_disable and fn._torchdynamo_orig_callable == before[name], name
        assert fn._torchdynamo_disable_recursive == (name == "lie"), name
    with torch.no_grad():
        assert torch.equal(model(idx, n_loops=3), reference)


@pytest.mark.parametrize("backprop_loops", [None, 2])
def test_compile_by_iteration_compiles_no_graph_for_a_new_r(one_thread, backprop_loops):
    """Dynamo's default unrolls the loop (a new graph for every R, eager past 8); compiled one
    iteration at a time, R values never seen before compile nothing, and the gradients are eager's."""
    model, idx = tiny_cart(), torch.randint(0, 64, (2, 12))
    kw = {} if backprop_loops is None else {"backprop_loops": backprop_loops}
    eager = _grads(model, idx, n_loops=5, **kw)
    model.compile_by_iteration()
    torch._dynamo.reset()
    counters.clear()
    loss_fn = torch.compile(lambda x, **a: _loss(model, x, **a), backend="eager")  # as make_loss_fn does
    # a second R makes n_loops dynamic (one recompile); after that no R, 1 included, compiles a graph
    # (R is never a size inside a compiled frame, so Dynamo's 0/1 size specialisation never applies)
    # Under truncation an R <= k backpropagates through every iteration, whose inputs then require
    # grad: graphs of their own, compiled once at R = k.
    eager_core = []  # the core block run outside a compiled frame (recorded at run time, never traced)
    model.core[0].register_forward_pre_hook(lambda *a: None if torch.compiler.is_compiling() else eager_core.append(1))
    first = _compiled_run(loss_fn, idx, [3, 4] + ([backprop_loops] if backprop_loops else []), **kw)
    assert _compiled_run(loss_fn, idx, range(1, 13), **kw) == first
    assert not eager_core, "an iteration ran eagerly: only the loop over r is to run as plain Python"
    compiled = _grads(model, idx, torch.compile(model, backend="eager"), n_loops=5, **kw)
    assert all(torch.equal(eager[n], compiled[n]) for n in eager)
    torch._dynamo.reset()


# ---- the training loop ---------------------------------------------------------------------------

UNIFORM = {"scheme": "uniform", "r_min": 1, "r_max": 3}  # around stage2 d32-R2's n_loops = 2


def _sampling_project(project, **train):
    p = tiny_params()
    p["train"].update(loop_sampling=UNIFORM, **train)
    write_params(project, p)


@pytest.fixture
def recorded_kwargs(monkeypatch):
    """The forward kwargs of every train_step the loop makes, in order."""
    import cart.training.trainer as T
    real, calls = T.train_step, []

    def recording(*args, **kwargs):
        calls.append(dict(kwargs.get("forward_kwargs", args[7] if len(args) > 7 else {})))
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "train_step", recording)
    return calls


def test_each_step_runs_and_logs_its_sampled_r(tiny_project, recorded_kwargs):
    _sampling_project(tiny_project, backprop_loops=2)
    spec = run_spec()
    paths = RunPaths.for_run(spec.group, spec.name)
    summary = train_run(spec, paths, progress=False)
    expected = [LoopSampling(**UNIFORM).sample(2, spec.seed, s) for s in range(12)]
    assert len(set(expected)) == 3  # the 12 steps see every R of U{1..3}
    # 2 micro-batches each, but one train_step per optimizer step: R is drawn per step
    assert recorded_kwargs == [{"n_loops": r, "backprop_loops": 2} for r in expected]
    train, _ = read_curves(paths.plots_dir)
    assert list(train["step"]) == list(range(1, 13)) and list(train["n_loops"]) == expected
    # accounting at the mean R: the model's n_loops
    assert summary["params"] == count_params(spec.model) and spec.model.n_loops == 2


def test_fixed_r_passes_nothing_and_logs_no_r(tiny_project, recorded_kwargs):
    spec = run_spec()
    paths = RunPaths.for_run(spec.group, spec.name)
    train_run(spec, paths, progress=False)
    assert recorded_kwargs == [{}] * 12
    assert "n_loops" not in read_curves(paths.plots_dir)[0]


def _weights(path) -> dict:
    return safetensors.torch.load_file(str(path))


def test_resumed_run_reproduces_the_r_sequence_and_the_weights(tiny_project, recorded_kwargs):
    _sampling_project(tiny_project)
    spec = run_spec()
    paths = RunPaths.for_run(spec.group, spec.name)
    train_run(spec, paths, progress=False)
    reference_r, reference_curves = list(recorded_kwargs), read_curves(paths.plots_dir)[0]
    reference = _weights(paths.run_dir / "model.safetensors")
    shutil.rmtree(paths.run_dir)
    shutil.rmtree(paths.plots_dir)
    recorded_kwargs.clear()

    trainer = Trainer(spec, paths, progress=False)
    import cart.training.trainer as T
    step = T.train_step

    def interrupt_at_step_7(*args, **kwargs):  # as SIGTERM does: checkpoint at the step, then stop
        out = step(*args, **kwargs)
        if len(recorded_kwargs) == 7:
            trainer._signal = signal.SIGTERM
        return out

    T.train_step = interrupt_at_step_7
    try:
        with pytest.raises(Interrupted):
            trainer.run()
    finally:
        T.train_step = step
    assert len(recorded_kwargs) == 7 and not (paths.run_dir / SUMMARY).exists()
    Trainer(spec, paths, progress=False).run()
    assert recorded_kwargs == reference_r
    assert read_curves(paths.plots_dir)[0]["n_loops"].equals(reference_curves["n_loops"])
    resumed = _weights(paths.run_dir / "model.safetensors")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_ddp_ranks_train_the_same_r_as_one_process(tiny_data, tmp_path):
    """train.nproc: 2 (gloo): each rank draws R itself; if a rank drew another R than the
    one-process run, its half of the gradient would differ and so would the weights."""
    finals, curves = {}, {}
    for nproc in (1, 2):
        proj = tmp_path / f"nproc{nproc}"
        proj.mkdir()
        shutil.copytree(tiny_data / "data", proj / "data")
        _sampling_project(proj, nproc=nproc)
        proc = _run_cli(proj)
        out = proc.stdout.read().decode()
        assert proc.wait(timeout=600) == 0, out
        run = proj / "runs/stage2/d32-R2-s42"
        finals[nproc] = _weights(run / "model.safetensors")
        curves[nproc] = read_curves(proj / "plots/stage2/d32-R2-s42")[0]["n_loops"]
        assert json.loads((run / SUMMARY).read_text())["status"] == "complete"
    assert curves[1].equals(curves[2]) and curves[1].nunique() == 3
    for k in finals[1]:
        assert torch.allclose(finals[1][k], finals[2][k], atol=1e-4), k
