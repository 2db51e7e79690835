"""Analytic parameter, FLOPs and MFU accounting in the paper's conventions (spec section 2).

stored    = every weight held in memory once (tied embedding counted once, norms included)
effective = stored + (R - 1) * core: the shared core block counts once per iteration
forward FLOPs per sequence = 2 * (matmul weights applied) * T + 4 * T^2 * d per attention
            application, embedding and LM head excluded (the paper's Table 3)
MFU       = 6 * effective * tokens/s / peak (the paper's Table 4)
"""
from __future__ import annotations

from .config import DenseConfig, ModelConfig

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


def _mla_attn(d: int, dc: int) -> int:
    return 2 * d * d + _latent_kv(d, dc)  # q + o + latent kv


def _latent_kv(d: int, dc: int) -> int:
    return d * dc + dc * 2 * d


def _parts(cfg: ModelConfig) -> dict[str, int]:
    """Matmul weights of each kind of block (no norms)."""
    d, h = cfg.d_model, cfg.ffn_hidden
    ffn = 3 * d * h
    if isinstance(cfg, DenseConfig):
        return {"layer": 4 * d * d + ffn}
    dc = cfg.d_latent
    core_attn = _mla_attn(d, dc) if cfg.self_attn_core else 2 * d * d
    return {
        "layer": _mla_attn(d, dc) + ffn,
        "anchor_kv": 0 if cfg.self_attn_core else _latent_kv(d, dc),
        "core": core_attn + ffn,
    }


def count_params(cfg: ModelConfig) -> dict[str, int]:
    d = cfg.d_model
    emb = cfg.vocab_size * d
    parts = _parts(cfg)
    layer = parts["layer"] + 2 * d  # two RMSNorm gains
    if isinstance(cfg, DenseConfig):
        stored = emb + cfg.n_layers * layer + d
        return {"stored": stored, "effective": stored}
    anchor = parts["anchor_kv"] + (d if parts["anchor_kv"] else 0)
    core = parts["core"] + 2 * d
    n_blocks = cfg.n_loops if cfg.unshare_core else 1
    machinery = d + (0 if cfg.disable_hyperconnection else cfg.hc_window)  # LTI theta, HC logits
    stored = emb + cfg.n_prelude * layer + anchor + n_blocks * core + machinery + layer + d
    reuse = 0 if cfg.unshare_core else (cfg.n_loops - 1) * core
    if cfg.unfreeze_kv:  # the anchor projection runs every iteration instead of once
        reuse += (cfg.n_loops - 1) * anchor
    return {"stored": stored, "effective": stored + reuse}


def forward_flops(cfg: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs for one sequence of seq_len tokens, embedding and LM head excluded."""
    T, d = seq_len, cfg.d_model
    parts = _parts(cfg)
    attn = 4 * T * T * d  # QK^T and AV, full T^2 as the paper counts it
    if isinstance(cfg, DenseConfig):
        return cfg.n_layers * (2 * parts["layer"] * T + attn)
    R = cfg.n_loops
    anchor_calls = R if cfg.unfreeze_kv else 1
    weights = (cfg.n_prelude + 1) * parts["layer"] + anchor_calls * parts["anchor_kv"] + R * parts["core"]
    return 2 * weights * T + (cfg.n_prelude + R + 1) * attn


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """The real training FLOPs per token: 3x forward (incl. attention) plus the LM head."""
    head = 2 * cfg.d_model * cfg.vocab_size
    return 3 * (forward_flops(cfg, seq_len) / seq_len + head)


def mfu(cfg: ModelConfig, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation in the paper's accounting: 6 * N_effective * tokens/s / peak."""
    return 6 * count_params(cfg)["effective"] * tokens_per_s / peak_flops
