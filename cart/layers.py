"""Building blocks shared by CART and Dense: RMSNorm, RoPE, MLA and MHA attention, SwiGLU.

Attention always goes through F.scaled_dot_product_attention so the flash / memory-efficient
kernels are picked on GPU; tensors are laid out (B, heads, T, head_dim) as SDPA expects.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import CARTConfig, ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class RoPE(nn.Module):
    """Rotary position embedding (rotate-half form). Tables are rebuilt when T grows."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def tables(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.to(device))
        emb = torch.cat([freqs, freqs], dim=-1)  # (T, head_dim)
        return emb.cos(), emb.sin()

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return (x * cos + rotated * sin).to(x.dtype)


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, T, D = x.shape
    return x.view(B, T, n_heads, D // n_heads).transpose(1, 2)


def _merge(y: torch.Tensor) -> torch.Tensor:
    B, H, T, hd = y.shape
    return y.transpose(1, 2).reshape(B, T, H * hd)


class LatentKV(nn.Module):
    """MLA key/value projection: c = W_down x (d -> d_c), [k, v] = W_up c (d_c -> 2d)."""

    def __init__(self, cfg: CARTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.down = nn.Linear(cfg.d_model, cfg.d_latent, bias=False)
        self.up = nn.Linear(cfg.d_latent, 2 * cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.up(self.down(x)).chunk(2, dim=-1)
        return _heads(k, self.n_heads), _heads(v, self.n_heads)


class MLASelfAttention(nn.Module):
    """Full-rank query, latent-compressed K/V, RoPE on q and k, causal."""

    def __init__(self, cfg: CARTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kv = LatentKV(cfg)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q = _heads(self.q(x), self.n_heads)
        k, v = self.kv(x)
        q, k = RoPE.apply(q, *rope), RoPE.apply(k, *rope)
        return self.o(_merge(F.scaled_dot_product_attention(q, k, v, is_causal=True)))


class MLACrossAttention(nn.Module):
    """Queries from the recurrent state, keys/values from the frozen anchor.

    Causal: prelude and core read the same token sequence, so position t may only attend to
    anchor positions <= t; otherwise the anchor leaks token t+1 into the prediction for t (the
    paper saw the loss collapse to ~0). No RoPE here (reconstructed): the anchor keys already
    carry position through the prelude.
    """

    def __init__(self, cfg: CARTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.causal = not cfg.noncausal_cross_attn
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = _heads(self.q(x), self.n_heads)
        return self.o(_merge(F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)))


class MHASelfAttention(nn.Module):
    """Standard multi-head attention for the Dense baseline: q, k, v, o all full rank."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q, k, v = (_heads(p(x), self.n_heads) for p in (self.q, self.k, self.v))
        q, k = RoPE.apply(q, *rope), RoPE.apply(k, *rope)
        return self.o(_merge(F.scaled_dot_product_attention(q, k, v, is_causal=True)))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Layer(nn.Module):
    """Pre-norm residual layer: self-attention then SwiGLU (prelude, coda, Dense, W-core)."""

    def __init__(self, cfg: ModelConfig, attn: nn.Module):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = attn
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope)
        return x + self.ffn(self.ffn_norm(x))
