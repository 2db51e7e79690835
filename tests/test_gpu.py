"""GPU-only checks of the fast path (skipped where there is no CUDA device or no bitsandbytes):
run them on a GPU machine with `python -m pytest tests/test_gpu.py`."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_adamw8bit_without_syncs_matches_bitsandbytes():
    """The optimizer the training stage uses gives bit-identical weights to bitsandbytes' own
    AdamW8bit (whose step syncs the GPU after every parameter), on both of its update paths:
    8-bit blockwise states for large tensors and 32-bit states for small ones."""
    bnb = pytest.importorskip("bitsandbytes")
    from cart import CARTConfig, build_model
    from cart.step import adamw8bit_class
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
