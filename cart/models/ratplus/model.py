"""RAT+ (docs/ratplus.md): attention over keys and values smoothed by a full-sequence gated linear
recurrence, so a dilated pattern's few keys still summarise the whole prefix.

Mixer (docs/ratplus.md, Model), on our Dense backbone (pre-norm Layer, SwiGLU FFN, tied embedding):
    u = RMSNorm(x);  [o, q, k, v, f] = u W_in;  g = sigmoid(f) in fp32, per head and channel
    k~_t = g_t k~_{t-1} + (1 - g_t) k_t,  v~_t likewise  (zero initial state, never reset)
    y = W_out( attention_pi(RoPE(q), RoPE(k~), v~) * sigmoid(o) )
RoPE goes on k~ after the recurrence, at absolute positions. The recurrence runs as a parallel
scan (`linear_scan`), never a loop over T.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import DecodeCache, LanguageModel, Layer, RoPE, merge_heads, split_heads
from ..pattern_attention import HeadPatternKVCache, PatternKVCache, pattern_attention, pattern_kv_cache
from ..patterns import layer_patterns
from .config import RATPlusConfig


def _scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t along dim -2 with h_{-1} = 0, as a parallel odd/even scan: compose
    each pair (2i, 2i+1) into one step, scan the half-length sequence (the odd positions), then fill
    in the even positions from their odd predecessors. O(T) work in 2 log2(T) parallel steps;
    only products of gates in (0, 1), no division, so nothing can overflow."""
    T = a.shape[-2]
    if T == 1:
        return b
    if T % 2:  # pad with the identity step (a, b) = (1, 0)
        a, b = F.pad(a, (0, 0, 0, 1), value=1.0), F.pad(b, (0, 0, 0, 1))
    a_even, a_odd, b_even, b_odd = a[..., 0::2, :], a[..., 1::2, :], b[..., 0::2, :], b[..., 1::2, :]
    h_odd = _scan(a_odd * a_even, a_odd * b_even + b_odd)
    h_even = b_even + a_even * F.pad(h_odd[..., :-1, :], (0, 0, 1, 0))
    return torch.stack([h_even, h_odd], dim=-2).flatten(-3, -2)[..., :T, :]


class LinearScan(torch.autograd.Function):
    """h = scan(a, b) with the spec's backward: the reverse scan of the output gradient with the
    gate shifted by one (delta_t = dh_t + a_{t+1} delta_{t+1}), then db = delta and
    da_t = h_{t-1} delta_t. Saves a and h only, not the scan's intermediate levels."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = _scan(a, b)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, dh: torch.Tensor):
        a, h = ctx.saved_tensors
        next_gate = F.pad(a[..., 1:, :], (0, 0, 0, 1))
        delta = _scan(next_gate.flip(-2), dh.flip(-2)).flip(-2)
        previous_h = F.pad(h[..., :-1, :], (0, 0, 1, 0))
        return previous_h * delta, delta


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return LinearScan.apply(a, b)


def gated_recurrence(g: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     initial: torch.Tensor | None = None) -> torch.Tensor:
    """k~ and v~ of k~_t = g_t k~_{t-1} + (1 - g_t) k_t (same gate for v), over dim -2, in fp32:
    (B, H, T, 2 head_dim), k~ then v~. `initial` (B, H, 1, 2 head_dim) is the state before the
    first position (decoding); zero by default."""
    a = torch.cat([g, g], dim=-1).float()
    b = (1 - a) * torch.cat([k, v], dim=-1).float()
    if initial is not None:
        b = torch.cat([b[..., :1, :] + a[..., :1, :] * initial, b[..., 1:, :]], dim=-2)
    return linear_scan(a, b)


class RecurrentState:
    """The last (k~, v~) of one layer for every row, carried between decoding calls."""

    def __init__(self, batch: int, heads: int, head_dim: int, device):
        self.h = torch.zeros(batch, heads, 1, 2 * head_dim, device=device, dtype=torch.float32)

    def advance(self, g: torch.Tensor, k: torch.Tensor, v: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """The recurrence over the new tokens; `real` (B, t) is False on left padding, where the
        state stays zero (gate and input zeroed), so each row starts at its first real token."""
        real = real[:, None, :, None]
        h = gated_recurrence(g * real, k * real, v * real, initial=self.h)
        self.h = h[..., -1:, :]
        return h


class RATPlusMixer(nn.Module):
    """The RAT+ mixer (module docstring), in place of attention in the pre-norm Layer."""

    def __init__(self, cfg: RATPlusConfig):
        super().__init__()
        self.n_heads, self.recurrent, self.kernel = cfg.n_heads, cfg.apply_recurrence, cfg.attention_kernel
        self.n_inputs = 5 if cfg.apply_recurrence else 4  # [o, q, k, v] and the recurrence gate f
        self.in_proj = nn.Linear(cfg.d_model, self.n_inputs * cfg.d_model, bias=False)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)  # named as MHA's: init scales it with depth

    def forward(self, u: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                cache: tuple[PatternKVCache | HeadPatternKVCache, RecurrentState | None] | None = None,
                pattern=None) -> torch.Tensor:
        kv_cache, state = cache or (None, None)
        out_gate, q, k, v, *f = self.in_proj(u).chunk(self.n_inputs, dim=-1)
        q, k, v = (split_heads(x, self.n_heads) for x in (q, k, v))
        if self.recurrent:
            g = torch.sigmoid(split_heads(f[0], self.n_heads).float())
            if state is None:
                h = gated_recurrence(g, k, v)
            else:  # decoding: carry on from the state, zero on left padding
                h = state.advance(g, k, v, kv_cache.positions(u.shape[1]) >= 0)
            k, v = h.to(v.dtype).chunk(2, dim=-1)
        q, k = RoPE.apply(q, *rope), RoPE.apply(k, *rope)  # after the recurrence
        y = pattern_attention(q, k, v, pattern, self.kernel) if kv_cache is None else kv_cache.attend(q, k, v)
        return self.o(merge_heads(y) * torch.sigmoid(out_gate))


class RATPlus(LanguageModel):
    def __init__(self, cfg: RATPlusConfig):
        super().__init__(cfg)
        self.layers = nn.ModuleList([Layer(cfg, RATPlusMixer(cfg)) for _ in range(cfg.n_layers)])
        # parsed once: the forward (maybe compiled) only reads these tuples of frozen Patterns
        self.default_patterns = {True: cfg.patterns("train_pattern"), False: cfg.patterns("eval_pattern")}
        self._init_weights(cfg.n_layers)

    def patterns_for(self, pattern=None):
        """Per-layer patterns of a runtime `pattern` (string, Pattern, HeadPatterns or list); None:
        the config's train_pattern in training mode (the sub-steps always pass theirs), eval_pattern
        in eval."""
        if pattern is None:
            return self.default_patterns[self.training]
        return layer_patterns(pattern, len(self.layers), n_heads=self.config.n_heads)

    def hidden(self, idx: torch.Tensor, pattern=None) -> torch.Tensor:
        x = self.tok_emb(idx)
        rope = self.rope.tables(idx.shape[1], idx.device)
        for layer, p in zip(self.layers, self.patterns_for(pattern)):
            x = layer(x, rope, pattern=p)
        return x

    def new_cache(self, batch: int, max_len: int, pad: torch.Tensor | None = None, pattern=None) -> DecodeCache:
        """A decode cache per layer for its pattern (eval_pattern by default): the sinks, the
        window ring and the strided keys (PatternKVCache) and the recurrent state."""
        cfg, p = self.config, self.tok_emb.weight
        cache = DecodeCache(batch, max_len, p.device, pad)
        patterns = self.default_patterns[False] if pattern is None else self.patterns_for(pattern)
        cache.layers = [(pattern_kv_cache(pi, batch, cfg.n_heads, cfg.head_dim, max_len, cache.pad, p.device, p.dtype),
                         RecurrentState(batch, cfg.n_heads, cfg.head_dim, p.device) if cfg.apply_recurrence else None)
                        for pi in patterns]
        return cache

    def forward_cached(self, idx: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
        _, rope = cache.step(idx.shape[1], self.rope)  # the layers' caches build their own masks
        x = self.tok_emb(idx)
        for layer, layer_cache in zip(self.layers, cache.layers):
            x = layer(x, rope, layer_cache)
        cache.advance(idx.shape[1])
        return self.head(x)
