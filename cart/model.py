"""CART (Context-Anchored Recurrent Transformer) and the Dense baseline.

CART(d, P, R):  tokens -> embedding -> P prelude layers -> x_p
                anchor: K, V = LatentKV(norm(x_p)), computed once
                h_0 = x_p; for r in 0..R-1:
                    x_r = HyperConnection(h_r, h_{r-1}, h_{r-2})
                    y   = CoreBlock(x_r + pe[r], K, V)          # cross-attn + SwiGLU
                    h_{r+1} = lambda * x_r + (y - x_r)           # LTI gate, lambda in (0,1)^d
                coda layer -> norm -> tied LM head
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import CARTConfig, DenseConfig, ModelConfig
from .layers import (Layer, LatentKV, MHASelfAttention, MLACrossAttention, MLASelfAttention,
                     RMSNorm, RoPE, SwiGLU)

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


class _LM(nn.Module):
    """Shared parts of both models: tied embedding / head, RoPE, init, sizes."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rope = RoPE(cfg.head_dim, cfg.rope_theta)
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm_f(x), self.tok_emb.weight)  # tied output projection

    def _init_weights(self, residual_depth: int) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            # output projections write into the residual stream: scale them down with depth
            scaled = name.endswith(("attn.o.weight", "ffn.down.weight"))
            nn.init.normal_(p, 0.0, std / math.sqrt(2 * residual_depth) if scaled else std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class CART(_LM):
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

    def forward(self, idx: torch.Tensor, n_loops: int | None = None) -> torch.Tensor:
        cfg = self.config
        R = cfg.n_loops if n_loops is None else n_loops
        if R < 1:
            raise ValueError(f"n_loops must be >= 1, got {R}")
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

        return self.head(self.coda(history[0], rope))

    @torch.no_grad()
    def spectral_radius(self) -> float:
        return self.gate.lam().max().item()


class Dense(_LM):
    def __init__(self, cfg: DenseConfig):
        super().__init__(cfg)
        self.layers = nn.ModuleList([Layer(cfg, MHASelfAttention(cfg)) for _ in range(cfg.n_layers)])
        self._init_weights(cfg.n_layers)

    def forward(self, idx: torch.Tensor, n_loops: int | None = None) -> torch.Tensor:
        if n_loops is not None:
            raise ValueError("n_loops applies to CART only; the Dense baseline has no loop")
        x = self.tok_emb(idx)
        rope = self.rope.tables(idx.shape[1], idx.device)
        for layer in self.layers:
            x = layer(x, rope)
        return self.head(x)


def build_model(config: ModelConfig) -> nn.Module:
    if isinstance(config, CARTConfig):
        return CART(config)
    if isinstance(config, DenseConfig):
        return Dense(config)
    raise TypeError(f"build_model: expected CARTConfig or DenseConfig, got {type(config).__name__}")


@torch.no_grad()
def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, n_loops: int | None = None) -> torch.Tensor:
    """Sample without a KV cache: re-run the whole prefix for every token (correct, not fast).
    temperature=0 is greedy."""
    was_training = model.training
    model.eval()
    kwargs = {} if n_loops is None else {"n_loops": n_loops}
    for _ in range(max_new_tokens):
        logits = model(idx, **kwargs)[:, -1, :].float()
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1)
        idx = torch.cat([idx, nxt], dim=1)
    model.train(was_training)
    return idx
