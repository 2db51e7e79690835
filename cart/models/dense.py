"""The Dense baseline: n_layers of standard MHA + SwiGLU + RoPE, tied embedding (CART_SPEC.md section 1)."""
from __future__ import annotations

import torch
from torch import nn

from .dense_config import DenseConfig
from .layers import DecodeCache, KVCache, Layer, LanguageModel, MHASelfAttention


class Dense(LanguageModel):
    def __init__(self, cfg: DenseConfig):
        super().__init__(cfg)
        self.layers = nn.ModuleList([Layer(cfg, MHASelfAttention(cfg)) for _ in range(cfg.n_layers)])
        self._init_weights(cfg.n_layers)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx)
        rope = self.rope.tables(idx.shape[1], idx.device)
        for layer in self.layers:
            x = layer(x, rope)
        return x

    def new_cache(self, batch: int, max_len: int, pad: torch.Tensor | None = None) -> DecodeCache:
        cfg, p = self.config, self.tok_emb.weight
        cache = DecodeCache(batch, max_len, p.device, pad)
        cache.layers = [KVCache(batch, cfg.n_heads, cfg.head_dim, max_len, p.device, p.dtype) for _ in self.layers]
        return cache

    def forward_cached(self, idx: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
        mask, rope = cache.step(idx.shape[1], self.rope)
        x = self.tok_emb(idx)
        for layer, kv in zip(self.layers, cache.layers):
            x = layer(x, rope, (kv, mask))
        cache.advance(idx.shape[1])
        return self.head(x)
