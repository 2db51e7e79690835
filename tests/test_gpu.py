"""GPU-only checks of the fast path (skipped where there is no CUDA device or no bitsandbytes):
run them on a GPU machine with `python -m pytest tests/test_gpu.py`."""
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_adamw8bit_without_syncs_matches_bitsandbytes():
    """The optimizer the training stage uses gives bit-identical weights to bitsandbytes' own
    AdamW8bit (whose step syncs the GPU after every parameter), on both of its update paths:
    8-bit blockwise states for large tensors and 32-bit states for small ones."""
    bnb = pytest.importorskip("bitsandbytes")
    from cart import CARTConfig, build_model
    from cart.training.step import adamw8bit_class
    torch.manual_seed(0)
    ref = build_model(CARTConfig(vocab_size=512, d_model=64, head_dim=16, n_prelude=1, n_loops=2)).cuda()
    ours = build_model(CARTConfig(vocab_size=512, d_model=64, head_dim=16, n_prelude=1, n_loops=2)).cuda()
    ours.load_state_dict(ref.state_dict())
    before = [p.detach().clone() for p in ours.parameters()]
    opts = [bnb.optim.AdamW8bit(ref.parameters(), lr=1e-2, weight_decay=0.1),
            adamw8bit_class()(ours.parameters(), lr=1e-2, weight_decay=0.1)]
    g = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(5):
        for a, b in zip(ref.parameters(), ours.parameters()):
            a.grad = torch.randn(a.shape, device="cuda", generator=g)
            b.grad = a.grad.clone()
        for opt in opts:
            opt.step()
    dtypes = {s["state1"].dtype for s in opts[1].state.values()}
    assert dtypes == {torch.uint8, torch.float32}  # both update paths ran
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), ours.parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(ours.parameters(), before))  # every tensor was updated


@pytest.mark.parametrize("flags", [{}, {"unfreeze_kv": True}, {"self_attn_core": True}, "dense"])
def test_cuda_graph_decoding_equals_the_eager_cache(flags):
    """generate() on a GPU replays each one-token step from a CUDA graph: the same greedy tokens as
    the eager dynamic cache, for a ragged batch (fp32); the replayed logits equal an eager call on the
    same static cache."""
    from cart import CARTConfig, DenseConfig, build_model
    from cart.generation import GraphedDecodeStep, generate
    from conftest import assert_greedy_decisive
    torch.manual_seed(0)
    common = dict(vocab_size=97, d_model=64, head_dim=16)
    cfg = DenseConfig(**common, n_layers=2) if flags == "dense" else CARTConfig(**common, n_prelude=2, n_loops=3, **flags)
    model = build_model(cfg).cuda().eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=g).cuda() for n in (9, 4, 6)]
    graphed = generate(model, prompts, max_new_tokens=12, temperature=0)  # cuda_graph None: on here
    eager = generate(model, prompts, max_new_tokens=12, temperature=0, cuda_graph=False)
    # the graphed, eager and compiled steps differ by float rounding (the compiled one fuses kernels):
    # their tokens are compared where every argmax is decisive (smallest top-2 gap here ~0.17)
    for p, e in zip(prompts, eager):
        assert_greedy_decisive(model, p, e, 1e-3)
    assert all(torch.equal(a, b) for a, b in zip(graphed, eager))
    compiled = generate(model, prompts, max_new_tokens=12, temperature=0, compile_step=True)
    assert all(torch.equal(a, b) for a, b in zip(compiled, eager))
    with torch.no_grad():
        seq = torch.randint(0, 97, (2, 10), generator=g).cuda()
        replay, plain = model.new_cache(2, 10, static=True), model.new_cache(2, 10, static=True)
        for cache in (replay, plain):
            model.forward_cached(seq[:, :6], cache)
        step = GraphedDecodeStep(model, replay)
        for i in range(6, 10):
            assert torch.equal(step(seq[:, i:i + 1]), model.forward_cached(seq[:, i:i + 1], plain))
        assert replay.length == plain.length == 10 and replay.nbytes() == plain.nbytes()
        with pytest.raises(ValueError, match="decoding past max_len=10"):
            step(seq[:, :1])
        # compiled before capture: fused kernels, the same logits up to float rounding
        compiled, plain = model.new_cache(2, 10, static=True), model.new_cache(2, 10, static=True)
        for cache in (compiled, plain):
            model.forward_cached(seq[:, :6], cache)
        step = GraphedDecodeStep(model, compiled, compile=True)
        for i in range(6, 10):
            torch.testing.assert_close(step(seq[:, i:i + 1]), model.forward_cached(seq[:, i:i + 1], plain),
                                       atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("lever,library", [("fused_loss", "liger_kernel"), ("cce", "cut_cross_entropy"),
                                           ("cce_exact", "cut_cross_entropy")])
def test_fused_head_losses_equal_the_models_loss_and_gradients(lever, library, compile):
    """bench.throughput.train_step's head-loss levers (Liger's fused linear cross-entropy, Cut Cross-Entropy with and
    without its gradient filter, each after the compiled hidden states) give the model's own training loss
    and gradients: Liger in fp32 (bf16 would hide a wrong row); under bf16 autocast (Cut Cross-Entropy's
    backward takes nothing else) every lever's loss is the model's to bf16 rounding of its logits and its
    gradients point the model's way (cosine; the filter, bf16 eps / 32, drops nothing here, where every
    softmax entry is ~1/512)."""
    pytest.importorskip(library)
    from cart import CARTConfig, build_model
    from cart.models.base import IGNORE_INDEX
    from bench.throughput.train_step import make_bench_loss_fn
    torch.manual_seed(0)
    model = build_model(CARTConfig(vocab_size=512, d_model=64, head_dim=16, n_prelude=1, n_loops=2)).cuda()
    x, y = torch.randint(0, 512, (2, 64), device="cuda"), torch.randint(0, 512, (2, 64), device="cuda")
    y[0, :5] = IGNORE_INDEX
    loss_fn = make_bench_loss_fn(model, frozenset({lever}), compile, None)

    def loss_and_grads(f, bf16):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = f(x, y)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]
    if lever == "fused_loss":
        (ref, ref_grads), (got, grads) = loss_and_grads(model, False), loss_and_grads(loss_fn, False)
        assert torch.allclose(got, ref, rtol=1e-5, atol=0)
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r, rtol=1e-3, atol=1e-5)
    (ref, ref_grads), (got, grads) = loss_and_grads(model, True), loss_and_grads(loss_fn, True)
    assert torch.allclose(got, ref, rtol=2e-3, atol=0)
    # the parameters the head and loss touch first, then all of them as one vector (many of the rest get
    # bf16 gradients of 1e-7..1e-5 at init, too small for a per-parameter direction)
    named = dict(zip([n for n, _ in model.named_parameters()], zip(grads, ref_grads)))
    for name in ("tok_emb.weight", "norm_f.weight"):
        assert F.cosine_similarity(*(t.flatten().float() for t in named[name]), dim=0) > 0.99, name
    flat = [torch.cat([t.flatten().float() for t in ts]) for ts in (grads, ref_grads)]
    assert F.cosine_similarity(*flat, dim=0) > 0.999


def test_graphed_gradient_accumulation_equals_the_eager_step():
    """train.compile_mode: reduce-overhead with gradient accumulation: train_step over 3 micro-batches
    through the CUDA-graphed compiled loss, two steps (warm-up, recording and replays all met), gives the
    eager loss's losses and gradients (fp32; without copying the first backward's gradients out, the
    next replay overwrites them: pytorch/pytorch#169545)."""
    from cart import CARTConfig, build_model
    from cart.training.step import make_loss_fn, train_step
    torch.manual_seed(0)
    model = build_model(CARTConfig(vocab_size=256, d_model=64, head_dim=16, n_prelude=1, n_loops=2)).cuda()
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator(device="cuda").manual_seed(0)
    steps = [[(torch.randint(0, 256, (2, 32), device="cuda", generator=g),
               torch.randint(0, 256, (2, 32), device="cuda", generator=g)) for _ in range(3)] for _ in range(3)]
    results = {}
    for graphed in (False, True):
        loss_fn = make_loss_fn(model, graphed, "reduce-overhead" if graphed else None)
        results[graphed] = []
        for batches in steps:
            loss, _ = train_step(loss_fn, batches, params, 0.0, torch.device("cuda"), torch.float32, graphed=graphed)
            results[graphed].append((loss.clone(), [p.grad.clone() for p in params]))
            model.zero_grad(set_to_none=True)
    for (loss_e, grads_e), (loss_g, grads_g) in zip(results[False], results[True]):
        assert torch.allclose(loss_g, loss_e, rtol=1e-5, atol=0)
        for a, b in zip(grads_g, grads_e):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def test_compiled_lm_loss_equals_f_cross_entropy_on_bf16_logits():
    """Inductor's kernels for lm_loss's written-out backward (one pass: softmax - one-hot, in fp32,
    written as bf16) give F.cross_entropy's loss and gradient on the LM head's bf16 logits, 32K vocab."""
    from cart.models.layers import IGNORE_INDEX, lm_loss
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (3 * torch.randn(4, 256, 32000, device="cuda", generator=g)).to(torch.bfloat16)
    targets = torch.randint(0, 32000, (4, 256), device="cuda", generator=g)
    targets[:, ::7] = IGNORE_INDEX
    ours, ref = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    loss = torch.compile(lm_loss, fullgraph=True)(ours, targets)
    expected = F.cross_entropy(ref.float().view(-1, 32000), targets.view(-1), ignore_index=IGNORE_INDEX)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert ours.grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours.grad.float(), ref.grad.float(), rtol=0, atol=1e-3 * ref.grad.abs().max().item())
