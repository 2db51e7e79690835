"""The Dense baseline: n_layers of standard MHA + SwiGLU + RoPE, tied embedding (docs/cart.md, The Dense baseline).

With a runtime `pattern` (patterns.py) it is also RAT+'s control: the same attention restricted to a
dilated/local/hybrid pattern, without the recurrence (docs/ratplus.md, This project's adaptation)."""
from __future__ import annotations

import torch
from torch import nn

from .config import DenseConfig
from ..layers import DecodeCache, KVCache, Layer, LanguageModel, MHASelfAttention
from ..pattern_attention import PATTERN_CACHES, pattern_kv_cache
from ..patterns import layer_patterns


class Dense(LanguageModel):
    def __init__(self, cfg: DenseConfig):
        super().__init__(cfg)
        self.layers = nn.ModuleList([Layer(cfg, MHASelfAttention(cfg)) for _ in range(cfg.n_layers)])
        self._init_weights(cfg.n_layers)

    def hidden(self, idx: torch.Tensor, pattern=None) -> torch.Tensor:
        """`pattern`: None is causal attention; else a pattern string, Pattern or per-layer list."""
        patterns = ((None,) * len(self.layers) if pattern is None
                    else layer_patterns(pattern, len(self.layers), n_heads=self.config.n_heads))
        x = self.tok_emb(idx)
        rope = self.rope.tables(idx.shape[1], idx.device)
        for layer, p in zip(self.layers, patterns):
            x = layer(x, rope, pattern=p)
        return x

    def has_static_cache(self, pattern=None) -> bool:
        return pattern is None

    def new_cache(self, batch: int, max_len: int, pad: torch.Tensor | None = None, pattern=None,
                  static: bool = False) -> DecodeCache:
        """Every key (KVCache), or with a `pattern` only the keys it can still show (PatternKVCache);
        static: see DecodeCache (causal attention only)."""
        cfg, p = self.config, self.tok_emb.weight
        if static and pattern is not None:
            raise ValueError(f"new_cache: static=True is for causal attention; pattern {pattern!r} keeps its own cache")
        cache = DecodeCache(batch, max_len, p.device, pad, static)
        if pattern is None:
            cache.layers = [KVCache(batch, cfg.n_heads, cfg.head_dim, max_len, p.device, p.dtype, cache.position)
                            for _ in self.layers]
        else:
            cache.layers = [pattern_kv_cache(pi, batch, cfg.n_heads, cfg.head_dim, max_len, cache.pad, p.device, p.dtype)
                            for pi in layer_patterns(pattern, cfg.n_layers, n_heads=cfg.n_heads)]
        return cache

    def forward_cached(self, idx: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
        mask, rope = cache.step(idx.shape[1], self.rope)
        x = self.tok_emb(idx)
        for layer, kv in zip(self.layers, cache.layers):
            x = layer(x, rope, kv if isinstance(kv, PATTERN_CACHES) else (kv, mask))
        cache.advance(idx.shape[1])
        return self.head(x)
