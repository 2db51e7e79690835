"""CART (Context-Anchored Recurrent Transformer).

CART(d, P, R):  tokens -> embedding -> P prelude layers -> x_p
                anchor: K, V = LatentKV(norm(x_p)), computed once
                h_0 = x_p; for r in 0..R-1:
                    x_r = HyperConnection(h_r, h_{r-1}, h_{r-2})
                    y   = CoreBlock(x_r + pe[r], K, V)          # cross-attn + SwiGLU
                    h_{r+1} = lambda * x_r + (y - x_r)           # LTI gate, lambda in (0,1)^d
                coda layer -> norm -> tied LM head

The prelude, coda and anchor use MLA (multi-head latent attention): full-rank queries and
latent-compressed keys/values (CART_SPEC.md section 1).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import check_int_arg
from .cart_config import CARTConfig
from .layers import Layer, LanguageModel, RMSNorm, RoPE, SwiGLU, merge_heads, split_heads


class LatentKV(nn.Module):
    """MLA key/value projection: c = W_down x (d -> d_c), [k, v] = W_up c (d_c -> 2d)."""

    def __init__(self, cfg: CARTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.down = nn.Linear(cfg.d_model, cfg.d_latent, bias=False)
        self.up = nn.Linear(cfg.d_latent, 2 * cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.up(self.down(x)).chunk(2, dim=-1)
        return split_heads(k, self.n_heads), split_heads(v, self.n_heads)


class MLASelfAttention(nn.Module):
    """Full-rank query, latent-compressed K/V, RoPE on q and k, causal."""

    def __init__(self, cfg: CARTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kv = LatentKV(cfg)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q = split_heads(self.q(x), self.n_heads)
        k, v = self.kv(x)
        q, k = RoPE.apply(q, *rope), RoPE.apply(k, *rope)
        return self.o(merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True)))


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
        q = split_heads(self.q(x), self.n_heads)
        return self.o(merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)))



# lambda = LTI_CEILING * sigmoid(theta): keeps rho < 1 even where fp32 rounds sigmoid(theta) to 1.
LTI_CEILING = 1.0 - 1e-6


class HyperConnection(nn.Module):
    """x_r = sum_j softmax(w)_j * h_{r-j} over a ring buffer of the last `hc_window` states,
    initialised close to the plain residual (all weight on h_r)."""

    def __init__(self, cfg: CARTConfig):
        super().__init__()
        init = torch.zeros(cfg.hc_window)
        init[0] = cfg.hc_init_logit
        self.logits = nn.Parameter(init)

    def forward(self, history: list[torch.Tensor]) -> torch.Tensor:
        w = torch.softmax(self.logits.float(), dim=0).to(history[0].dtype)
        out = w[0] * history[0]
        for j in range(1, len(history)):
            out = out + w[j] * history[j]
        return out


def loop_index_table(n_loops: int, dim: int, device=None) -> torch.Tensor:
    """Fixed sinusoidal loop-index embedding, one row per iteration; no row limit, so inference
    can run any R."""
    pos = torch.arange(n_loops, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    pe = torch.zeros(n_loops, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class LTIGate(nn.Module):
    """h_{r+1} = lambda * x_r + delta_r with lambda = sigmoid(theta) per channel (reconstructed
    form). Its spectral radius max(lambda) is < 1 for every theta. With `disabled` the update is
    the plain residual x_r + delta_r, but theta still exists so rho can be logged."""

    def __init__(self, cfg: CARTConfig):
        super().__init__()
        self.disabled = cfg.disable_lti
        theta0 = math.log(cfg.lti_init / (1.0 - cfg.lti_init))
        self.theta = nn.Parameter(torch.full((cfg.d_model,), theta0))

    def lam(self) -> torch.Tensor:
        return LTI_CEILING * torch.sigmoid(self.theta.float())

    def forward(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        if self.disabled:
            return x + delta
        return self.lam().to(x.dtype) * x + delta


class CoreBlock(nn.Module):
    """The shared block: pre-norm attention (cross to the anchor, or self for ablation W) and
    pre-norm SwiGLU. The core has no K/V weights of its own unless it self-attends."""

    def __init__(self, cfg: CARTConfig):
        super().__init__()
        self.self_attn = cfg.self_attn_core
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = MLASelfAttention(cfg) if cfg.self_attn_core else MLACrossAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x, anchor_kv, rope):
        h = self.attn_norm(x)
        x = x + (self.attn(h, rope) if self.self_attn else self.attn(h, *anchor_kv))
        return x + self.ffn(self.ffn_norm(x))


class CART(LanguageModel):
    def __init__(self, cfg: CARTConfig):
        super().__init__(cfg)
        self.prelude = nn.ModuleList([Layer(cfg, MLASelfAttention(cfg)) for _ in range(cfg.n_prelude)])
        if not cfg.self_attn_core:
            self.anchor_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.anchor_kv = LatentKV(cfg)  # its own module, not shared with a prelude layer
        n_blocks = cfg.n_loops if cfg.unshare_core else 1
        self.core = nn.ModuleList([CoreBlock(cfg) for _ in range(n_blocks)])
        self.hyper = None if cfg.disable_hyperconnection else HyperConnection(cfg)
        self.gate = LTIGate(cfg)
        self.coda = Layer(cfg, MLASelfAttention(cfg))
        self._init_weights(cfg.n_prelude + cfg.n_loops + 1)

    def anchor(self, x: torch.Tensor):
        return self.anchor_kv(self.anchor_norm(x))

    def hidden(self, idx: torch.Tensor, n_loops: int | None = None) -> torch.Tensor:
        cfg = self.config
        R = cfg.n_loops if n_loops is None else check_int_arg("n_loops", n_loops)
        if cfg.unshare_core and R != len(self.core):
            raise ValueError(f"n_loops={R}: an unshared core has exactly {len(self.core)} blocks")
        x = self.tok_emb(idx)
        rope = self.rope.tables(idx.shape[1], idx.device)
        for layer in self.prelude:
            x = layer(x, rope)
        # X (unfreeze_kv) recomputes K, V inside the loop instead, so the pre-loop anchor is skipped
        anchor_kv = None if cfg.self_attn_core or cfg.unfreeze_kv else self.anchor(x)
        pe = None if cfg.disable_lie else loop_index_table(R, cfg.d_model, idx.device)

        history = [x] * cfg.hc_window  # newest first; copies of h_0 until R fills it
        for r in range(R):
            x_r = history[0] if self.hyper is None else self.hyper(history)
            y = x_r if pe is None else x_r + pe[r].to(x_r.dtype)
            kv = self.anchor(x_r) if cfg.unfreeze_kv else anchor_kv
            y = self.core[r if cfg.unshare_core else 0](y, kv, rope)
            history = [self.gate(x_r, y - x_r)] + history[:-1]
        return self.coda(history[0], rope)

    @torch.no_grad()
    def spectral_radius(self) -> float:
        return self.gate.lam().max().item()
