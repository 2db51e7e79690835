"""Attention under a pattern pi = (D, W, P) (patterns.py): the boolean visible-key mask, the
attention itself, and the decode cache that keeps only the keys a pattern can still see.

Shared by RAT+ and by the Dense control (plain attention run at the same patterns). Tensors are
(B, heads, T, head_dim) as F.scaled_dot_product_attention expects.

Two implementations of the same attention, checked equal in tests/test_patterns.py:
- "sdpa": one SDPA call under the (T, T) mask; a dense pattern takes the plain causal path
  (`is_causal=True`, no mask), so dense training is exactly as fast as before. Works everywhere.
- "flex": the spec's two-branch form (docs/ratplus.md, Model) with FlexAttention block masks: a
  local/sink branch over all keys and a strided branch over only the strided keys k[d_st::D],
  merged by their log-sum-exp. Its cost grows with W + P + T / D instead of T, which is what makes
  a long dilated prefill cheap on a GPU (compiled there; eager elsewhere, which is slow).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .patterns import HeadPatterns, LayerPattern, Pattern, cache_regions, head_patterns


def visible(t: torch.Tensor, j: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Elementwise: does query position t see key position j under the static terms of pattern?"""
    D, W, P = pattern.dilation, pattern.window, pattern.sink
    seen = (t - j <= W) | (j < P)
    if D > 0:
        seen = seen | ((j + 1) % D == 0)
    return seen & (j <= t)


def pattern_mask(pattern: Pattern, seq_len: int, device=None) -> torch.Tensor:
    """(T, T) boolean mask of S_pi(t): row t marks the keys query t sees (the static terms)."""
    pos = torch.arange(seq_len, device=device)
    return visible(pos[:, None], pos[None, :], pattern)


def topk_block_mask(q: torch.Tensor, k: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """(B, H, T, T) keys of the top-k block term (reconstructed, Quest/MoBA-style): query t sees its
    own block up to t and the `topk` blocks, among those that end before its own block, whose mean
    key has the largest dot product with q_t."""
    B, H, T, hd = k.shape
    n, n_blocks = pattern.block, math.ceil(T / pattern.block)
    means = F.pad(k.float(), (0, 0, 0, n_blocks * n - T)).view(B, H, n_blocks, n, hd).mean(dim=3)
    scores = q.float() @ means.transpose(-1, -2)  # (B, H, T, n_blocks)
    block_of = torch.arange(T, device=k.device) // n
    past = torch.arange(n_blocks, device=k.device)[None, :] < block_of[:, None]  # (T, n_blocks)
    best = scores.masked_fill(~past, float("-inf")).topk(min(pattern.topk, n_blocks), dim=-1).indices
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, best, True) & past  # fewer past blocks than k
    pos = torch.arange(T, device=k.device)
    own_block = (block_of[None, :] == block_of[:, None]) & (pos[None, :] <= pos[:, None])
    return chosen[..., block_of] | own_block


def head_pattern_mask(pattern: LayerPattern, n_heads: int, seq_len: int, device=None) -> torch.Tensor:
    """(n_heads, T, T) boolean mask of each head's S_pi(t) (a Pattern: the same for every head)."""
    return torch.stack([pattern_mask(p, seq_len, device) for p in head_patterns(pattern, n_heads)])


def pattern_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: LayerPattern | None,
                      kernel: str = "sdpa") -> torch.Tensor:
    """Attention of every query over the keys its pattern shows it (None or dense: causal). A
    per-head pattern runs each group of heads (B, heads of the group, T, hd) at its own pattern,
    through the same paths a whole layer at that pattern takes."""
    if isinstance(pattern, HeadPatterns):
        return torch.cat([pattern_attention(q[:, a:b], k[:, a:b], v[:, a:b], p, kernel)
                          for a, b, p in pattern.spans(q.shape[1])], dim=1)
    if pattern is None or pattern.is_dense:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if kernel == "flex" and not pattern.topk:
        return two_branch_attention(q, k, v, pattern)
    mask = pattern_mask(pattern, q.shape[-2], q.device)
    if pattern.topk:
        mask = mask | topk_block_mask(q, k, pattern)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ---- the two-branch form (docs/ratplus.md, Model: the efficient form) ----

def strided_start(pattern: Pattern) -> int:
    """d_st: the first strided key j >= P, so k[d_st::D] are the strided keys the sinks do not cover."""
    D, P = pattern.dilation, pattern.sink
    return P + (D - 1 - P) % D


def local_branch(pattern: Pattern):
    """FlexAttention mask_mod of the local/sink branch over all keys: the window and the sinks."""
    W, P = pattern.window, pattern.sink

    def mask_mod(b, h, t, j):
        return (j <= t) & ((t - j <= W) | (j < P))
    return mask_mod


def strided_branch(pattern: Pattern):
    """FlexAttention mask_mod of the strided branch over k[d_st::D]: compacted key c (position
    d_st + c D) is seen iff floor((t - W) / D) > c + floor(P / D), i.e. it is a sink-free strided
    key older than the window, so the two branches never share a key."""
    D, W, shift = pattern.dilation, pattern.window, pattern.sink // pattern.dilation

    def mask_mod(b, h, t, c):
        return torch.div(t - W, D, rounding_mode="floor") > c + shift
    return mask_mod


@functools.cache
def _flex_attention(compiled: bool):
    """FlexAttention (imported on first use: the sdpa kernel needs no recent torch); it is fast
    only compiled, so it is compiled for CUDA and run eagerly elsewhere (tests)."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def two_branch_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """The pattern's attention as a local/sink branch plus a strided branch merged by log-sum-exp:
    out = (e^lse1 o1 + e^lse2 o2) / (e^lse1 + e^lse2), exact because the branches are disjoint."""
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask
    flex = _flex_attention(q.is_cuda)
    T = q.shape[-2]
    local_mask = create_block_mask(local_branch(pattern), None, None, T, T, device=q.device)
    out, aux = flex(q, k, v, block_mask=local_mask, return_aux=AuxRequest(lse=True))
    start = strided_start(pattern) if pattern.dilation > 1 else T
    if start >= T:  # local only, or no strided key yet
        return out
    ks, vs = k[..., start::pattern.dilation, :], v[..., start::pattern.dilation, :]
    strided_mask = create_block_mask(strided_branch(pattern), None, None, T, ks.shape[-2], device=q.device)
    out2, aux2 = flex(q, ks, vs, block_mask=strided_mask, return_aux=AuxRequest(lse=True))
    # weight of the strided branch; a query with no strided key yet has lse2 = -inf, weight 0
    w2 = torch.sigmoid(aux2.lse - aux.lse).unsqueeze(-1).to(out.dtype)
    return out + w2 * (out2 - out)


# ---- decoding ----

class PatternKVCache:
    """The keys and values one attention layer keeps to decode under a static pattern (docs/ratplus.md,
    Inference): one buffer of three regions, the first P positions (sinks), a ring of the last W
    tokens, and the strided positions (pos + 1 = 0 mod D), min(P, T) + min(W, T) + floor(T / D)
    slots; the new tokens' own keys are attended straight from the projection (the spec's "+1").

    Rows may be left-padded (`pad`, as DecodeCache): pad keys are never seen and positions restart
    at each row's first real token. `attend` runs the new tokens' attention over the cached keys
    they see plus their own, then stores them; any number of tokens per call (prefill in chunks)."""

    SINK, RING, STRIDED = 0, 1, 2

    def __init__(self, pattern: Pattern, batch: int, heads: int, head_dim: int, max_len: int,
                 pad: torch.Tensor, device, dtype):
        if pattern.topk:
            raise ValueError(f"pattern: {pattern} has a top-k term, which may pick any earlier block, so its "
                             "decode cache would keep every key; evaluate it with the full forward")
        self.pattern, self.pad, self.length = pattern, pad, 0
        sizes = cache_regions(pattern, max_len)  # the accounting (kv_cache_bytes) counts the same
        self.first_ring_slot, self.first_strided_slot = sizes[0], sizes[0] + sizes[1]
        self.region = torch.repeat_interleave(torch.tensor([self.SINK, self.RING, self.STRIDED], device=device),
                                              torch.tensor(sizes, device=device))
        self.k = torch.zeros(batch, heads, sum(sizes), head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((batch, sum(sizes)), -1, dtype=torch.long, device=device)  # -1: empty slot

    @property
    def slots(self) -> int:
        """Keys stored between calls (the new tokens' own keys come on top)."""
        return self.k.shape[2]

    def positions(self, t: int) -> torch.Tensor:
        """(B, t) position of each of the next t tokens within its row (negative on left padding)."""
        return torch.arange(self.length, self.length + t, device=self.pos.device)[None, :] - self.pad[:, None]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = q.shape[2]
        pos = self.positions(t)
        W, P = self.pattern.window, self.pattern.sink
        # cached keys: each earlier position is seen from exactly one region (the split of
        # visible_count): the ring inside the window, sinks and strided keys only beyond it
        tq, j = pos[:, :, None], self.pos[:, None, :]
        in_window = tq - j <= W
        seen_cached = (j >= 0) & torch.where(self.region == self.RING, in_window, ~in_window)
        seen_cached &= (self.region != self.STRIDED) | (j >= P)
        # the new tokens among themselves; a pad query sees itself so no row is empty
        seen_new = visible(tq, pos[:, None, :], self.pattern) & (pos[:, None, :] >= 0)
        seen_new |= torch.eye(t, dtype=torch.bool, device=pos.device)
        mask = torch.cat([seen_cached, seen_new], dim=-1)[:, None]
        keys = torch.cat([self.k, k.to(self.k.dtype)], dim=2)
        values = torch.cat([self.v, v.to(self.v.dtype)], dim=2)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        self._store(k, v, pos)
        return out

    def _store(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> None:
        D, P, t = self.pattern.dilation, self.pattern.sink, k.shape[2]
        ring = self.first_strided_slot - self.first_ring_slot
        if ring:  # the last `ring` tokens, in every row alike (a pad's negative position hides it)
            n = min(ring, t)
            slots = self.first_ring_slot + torch.arange(self.length + t - n, self.length + t, device=pos.device) % ring
            self.k[:, :, slots], self.v[:, :, slots] = k[:, :, t - n:], v[:, :, t - n:]
            self.pos[:, slots] = pos[:, t - n:]
        # sinks and strided keys sit at per-row positions (rows are padded differently)
        writes = [((pos >= 0) & (pos < P), pos)]
        if D > 0:
            writes.append(((pos >= 0) & ((pos + 1) % D == 0), self.first_strided_slot + (pos + 1) // D - 1))
        for selected, slot in writes:
            rows, cols = selected.nonzero(as_tuple=True)
            slots = slot[rows, cols]
            self.k[rows, :, slots], self.v[rows, :, slots] = k[rows, :, cols], v[rows, :, cols]
            self.pos[rows, slots] = pos[rows, cols]
        self.length += t

    def nbytes(self) -> int:
        """Bytes held per sequence (keys and values of every slot)."""
        return 2 * self.k[0].numel() * self.k.element_size()


class HeadPatternKVCache:
    """The decode cache of a layer whose heads run different patterns (HeadPatterns): one
    PatternKVCache per group of heads, each keeping what its pattern can still show."""

    def __init__(self, pattern: HeadPatterns, batch: int, heads: int, head_dim: int, max_len: int,
                 pad: torch.Tensor, device, dtype):
        self.pattern = pattern
        self.spans = pattern.spans(heads)
        self.groups = [PatternKVCache(p, batch, b - a, head_dim, max_len, pad, device, dtype) for a, b, p in self.spans]

    @property
    def length(self) -> int:
        return self.groups[0].length

    def positions(self, t: int) -> torch.Tensor:
        return self.groups[0].positions(t)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([cache.attend(q[:, a:b], k[:, a:b], v[:, a:b])
                          for cache, (a, b, _) in zip(self.groups, self.spans)], dim=1)

    def nbytes(self) -> int:
        return sum(cache.nbytes() for cache in self.groups)


PATTERN_CACHES = (PatternKVCache, HeadPatternKVCache)  # what `pattern_kv_cache` returns


def pattern_kv_cache(pattern: LayerPattern, batch: int, heads: int, head_dim: int, max_len: int,
                     pad: torch.Tensor, device, dtype) -> PatternKVCache | HeadPatternKVCache:
    """The decode cache of one attention layer at `pattern` (one pattern, or one per head group)."""
    cls = HeadPatternKVCache if isinstance(pattern, HeadPatterns) else PatternKVCache
    return cls(pattern, batch, heads, head_dim, max_len, pad, device, dtype)


__all__ = ["HeadPatternKVCache", "PATTERN_CACHES", "PatternKVCache", "head_pattern_mask", "local_branch",
           "pattern_attention", "pattern_kv_cache", "pattern_mask", "strided_branch", "strided_start",
           "topk_block_mask", "two_branch_attention", "visible"]
