"""Parameter, FLOPs and MFU accounting in the paper's conventions (docs/cart.md, Accounting).

Each family's config counts its own parameters and forward FLOPs (`count_params`,
`forward_flops`, dispatched by cart.models); this module adds what is family-independent:

stored    = every weight held in memory once (tied embedding counted once, norms included)
effective = weights applied per token (CART: stored + (R - 1) * core)
forward FLOPs per sequence = 2 * (matmul weights applied) * T + 4 * T^2 * d per attention
            application, embedding and LM head excluded (the paper's Table 3)
MFU       = 6 * effective * tokens/s / peak (the paper's Table 4)
"""
from __future__ import annotations

from .models import ConfigBase, count_params, forward_flops

# Dense bf16 tensor-core peaks in FLOP/s, keyed by a substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "RTX 3090": 71e12,
    "RTX 4090": 165e12,
    "L40S": 362e12,
}


def peak_flops_for(device_name: str) -> float | None:
    for key, peak in PEAK_BF16_FLOPS.items():
        if key.lower() in device_name.lower():
            return peak
    return None


def train_flops_per_token(cfg: ConfigBase, seq_len: int) -> float:
    """The real training FLOPs per token: 3x forward (incl. attention) plus the LM head, times the
    family's forward passes per training token (`train_passes`)."""
    head = 2 * cfg.d_model * cfg.vocab_size
    return 3 * (forward_flops(cfg, seq_len) / seq_len + head) * cfg.train_passes()


def mfu(cfg: ConfigBase, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation in the paper's accounting: 6 * N_effective * tokens/s / peak
    (times `train_passes` for families that pass over each training token more than once)."""
    return 6 * count_params(cfg)["effective"] * cfg.train_passes() * tokens_per_s / peak_flops


__all__ = ["PEAK_BF16_FLOPS", "count_params", "forward_flops", "mfu", "peak_flops_for", "train_flops_per_token"]
