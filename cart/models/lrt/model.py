"""LRT (Latent Recurrent Transformer) on our Dense backbone (docs/lrt.md, with its section "This project's adaptation").

    m_t   = RMSNorm(h_t^(source))            the source layer's output at token t (the norm's gain
                                             is applied where m~ is read: see `blocks`)
    m~_t  = m_{t-1}, m~_0 = 0                  token t reads the previous token's memory
    before block i:  x <- x + gamma_i * m~                         (inject_resid)
    in its attention: k <- k + a * W^K_fb m~,  v <- v + a * W^V_fb m~   (inject_kv)
                      a = 2 sigmoid(G_i u[..., :gate_channels]) per head, u = the normed input

The backbone's parameters have Dense's names (a Dense state dict loads into it), and with
W_fb = 0 and gamma = 0 the model computes Dense's function.

Training (`forward(idx, targets)` in train mode) is interleaved parallel training (docs/lrt.md, Training):
pass 0 runs every position with zero memory and fills a key/value buffer per layer and the
memory H; subset pass i (i = 0..S-1, in order) reruns the positions t with t % S == i, each
reading m~_t = H[t-1] from the latest H, writes its fresh keys/values into the buffer before
attending to it (query t sees entries j <= t) and its memory into H. The loss is the mean of the
S + 1 passes' mean losses. Inference (`lrt_mode`): "sequential", the default of the plain forward,
the Hugging Face forward and decoding alike, is the exact token-by-token recurrence (through the
decode cache), so a row's logits are the same alone, in a left-padded batch or decoded with a cache;
"merged" scores each position by the last parallel training pass that computed it (an
approximation at S < T, about as fast as one training step), "zero" is pass 0 (zero memory).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import (DecodeCache, KVCache, Layer, LanguageModel, MHASelfAttention, RMSNorm, RoPE, attend, lm_loss,
                     merge_heads, split_heads)
from .config import DEFAULT_LRT_MODE, LRT_MODES, LRTConfig


class FeedbackAttention(MHASelfAttention):
    """Dense's MHA whose keys and values also take the memory's, gated per head. With `cache` =
    (store, mask) the new keys/values go through `store.append` (a KVCache when decoding, a
    SubsetWrite in a subset pass) and the queries attend to what it returns under `mask`.
    Returns the output and the keys/values attended to (pass 0 keeps them as its buffer)."""

    def __init__(self, cfg: LRTConfig):
        super().__init__(cfg)
        self.gate_channels = cfg.gate_channels
        self.fb_gate = nn.Linear(cfg.gate_channels, cfg.n_heads, bias=False) if cfg.inject_kv else None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None, cache=None):
        q, k, v = (split_heads(p(x), self.n_heads) for p in (self.q, self.k, self.v))
        if memory_kv is not None:
            gate = 2 * torch.sigmoid(self.fb_gate(x[..., :self.gate_channels]))  # (B, t, H), 1 at init
            gate = gate.transpose(1, 2).unsqueeze(-1)  # (B, H, t, 1)
            k_fb, v_fb = memory_kv
            k, v = k + gate * k_fb, v + gate * v_fb
        q, k = RoPE.apply(q, *rope), RoPE.apply(k, *rope)
        mask = None
        if cache is not None:
            store, mask = cache
            k, v = store.append(k, v)
        return self.o(merge_heads(attend(q, k, v, mask))), (k, v)


class FeedbackLayer(Layer):
    """Dense's pre-norm layer (same parameter names) around a FeedbackAttention."""

    def __init__(self, cfg: LRTConfig):
        super().__init__(cfg, FeedbackAttention(cfg))

    def forward(self, x, rope, memory_kv=None, cache=None):
        out, kv = self.attn(self.attn_norm(x), rope, memory_kv, cache)
        x = x + out
        return x + self.ffn(self.ffn_norm(x)), kv


class FeedbackKV(nn.Module):
    """W^K_fb, W^V_fb: the memory's keys and values, split into heads."""

    def __init__(self, cfg: LRTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.k = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_heads(self.k(memory), self.n_heads), split_heads(self.v(memory), self.n_heads)


class Subset:
    """Subset pass i of S over T positions: the positions t with t % S == i, and how to write a
    tensor of theirs into a full-length one."""

    def __init__(self, i: int, S: int, T: int, device):
        all_positions = torch.arange(T, device=device)
        self.positions = all_positions[i::S]
        self.member = all_positions % S == i
        # a member's index in `positions` (a cumsum: inductor failed to compile (t - i) // S here)
        self.slot = (self.member.cumsum(0) - 1).clamp(min=0)
        self.mask = all_positions[None, :] <= self.positions[:, None]  # query t sees entries j <= t

    def write(self, full: torch.Tensor, new: torch.Tensor, dim: int) -> torch.Tensor:
        """`full` with its entries at the subset's positions (along `dim`) replaced by `new`, out of
        place. A select over a gather rather than index_copy: torch 2.13's inductor (CPU) dropped
        the zero-fill of index_copy's backward here and corrupted the compiled gradients."""
        member = self.member.view(-1, *[1] * (full.dim() - dim - 1))
        return torch.where(member, new.index_select(dim, self.slot), full)


class SubsetWrite:
    """One layer's key/value buffer as a subset pass sees it: `append` writes the subset's fresh
    keys/values at its positions and returns the whole buffer. Out of place, so the gradient
    flows into the passes that wrote the other entries (unless they were detached)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, subset: Subset):
        self.k, self.v, self.subset = k, v, subset

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.subset.write(self.k, k, 2), self.subset.write(self.v, v, 2)


class LRTCache(DecodeCache):
    """DecodeCache plus LRT's recurrent state: `memory` (B, 1, d), the memory of each row's last
    token, read by its next one (zero at a row's first real token). `zero_memory`: decode with
    zero memory throughout (pass 0's semantics)."""

    def __init__(self, batch: int, max_len: int, device, pad: torch.Tensor | None, d_model: int,
                 dtype: torch.dtype, zero_memory: bool):
        super().__init__(batch, max_len, device, pad)
        self.memory = torch.zeros(batch, 1, d_model, device=device, dtype=dtype)
        self.zero_memory = zero_memory


def check_lrt_mode(mode: str, valid=LRT_MODES) -> str:
    if mode not in valid:
        raise ValueError(f"lrt_mode: {mode!r} is not one of {list(valid)}")
    return mode


class LRT(LanguageModel):
    def __init__(self, cfg: LRTConfig):
        super().__init__(cfg)
        self.layers = nn.ModuleList([FeedbackLayer(cfg) for _ in range(cfg.n_layers)])
        # (reconstructed) its own gain, applied where the memory is read (`blocks`)
        self.memory_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.feedback = (nn.ModuleList([FeedbackKV(cfg) for _ in range(cfg.n_feedback_pairs)])
                         if cfg.inject_kv else None)
        self.resid_gamma = (nn.Parameter(torch.full((cfg.n_layers,), float(cfg.resid_gate_init)))
                            if cfg.inject_resid else None)
        # W_fb initialised like the backbone's k, v (our N(0, init_std) where nanochat uses c_v's uniform)
        self._init_weights(cfg.n_layers)
        for layer in self.layers:
            if layer.attn.fb_gate is not None:
                nn.init.zeros_(layer.attn.fb_gate.weight)  # every gate starts at 2 sigmoid(0) = 1

    def blocks(self, x: torch.Tensor, rope, memory: torch.Tensor | None, caches: list):
        """Every layer over the tokens x (B, t, d) whose memory is `memory` (B, t, d), the m~ of
        each token as carried (normed, before the memory norm's gain); None is zero memory, which
        injects nothing (gamma * 0 and a * W_fb 0 add 0). caches[i]: None (causal attention among
        these tokens) or layer i's (store, mask). Returns the final hidden states, the memory
        these tokens produce (as carried) and each layer's attended keys/values.

        The gain of m = RMSNorm(h) multiplies the memory where it is read, not where it is made:
        the same m~ (g * n = shift(g * n)), but under detach_memory, which cuts the carried state
        from the graph, the gain still learns from how the memory is used, as W_fb and the gates do."""
        cfg = self.config
        if memory is not None:
            memory = memory * self.memory_norm.weight
        feedback_kv = None
        if memory is not None and self.feedback is not None and len(self.feedback) == 1:
            feedback_kv = self.feedback[0](memory)  # shared: one projection serves every layer
        kvs, source = [], None
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            if memory is not None and self.resid_gamma is not None:
                x = x + self.resid_gamma[i] * memory
            if memory is not None and self.feedback is not None and len(self.feedback) > 1:
                feedback_kv = self.feedback[i](memory)
            x, kv = layer(x, rope, feedback_kv, cache)
            kvs.append(kv)
            if i + 1 == cfg.source:
                source = x
        return x, F.rms_norm(source, (source.shape[-1],), None, self.memory_norm.eps), kvs

    def interleaved(self, idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Interleaved parallel training's passes over idx (B, T): [(positions, final hidden
        states (B, len(positions), d))] for pass 0 (every position, zero memory) and then each
        non-empty subset pass i (positions t with t % S == i), in the order they run."""
        cfg = self.config
        T = idx.shape[1]
        S, detach = cfg.interleaved_passes, cfg.detach_memory
        all_positions = torch.arange(T, device=idx.device)
        emb = self.tok_emb(idx)  # embedded once: every pass reads the same token embeddings
        cos, sin = self.rope.tables(T, idx.device)
        x, memory, kvs = self.blocks(emb, (cos, sin), None, [None] * cfg.n_layers)
        passes = [(all_positions, x)]
        for i in range(min(S, T)):  # static index sets: no data-dependent shapes for torch.compile
            subset = Subset(i, S, T, idx.device)
            pos = subset.positions
            H = memory.detach() if detach else memory
            previous = torch.cat([torch.zeros_like(H[:, :1]), H[:, :-1]], dim=1)[:, pos]  # m~_t = H[t-1]
            caches = [(SubsetWrite(k.detach() if detach else k, v.detach() if detach else v, subset), subset.mask)
                      for k, v in kvs]
            x, new_memory, kvs = self.blocks(emb[:, pos], (cos[pos], sin[pos]), previous, caches)
            memory = subset.write(memory, new_memory, 1)
            passes.append((pos, x))
        return passes

    def hidden(self, idx: torch.Tensor, lrt_mode: str = DEFAULT_LRT_MODE) -> torch.Tensor:
        mode = check_lrt_mode(lrt_mode)
        if mode == "sequential":
            return self.decode(idx, self.new_cache(idx.shape[0], idx.shape[1]))
        if mode == "zero":
            rope = self.rope.tables(idx.shape[1], idx.device)
            return self.blocks(self.tok_emb(idx), rope, None, [None] * self.config.n_layers)[0]
        (_, x), *subsets = self.interleaved(idx)
        for pos, x_subset in subsets:  # each position keeps the last pass that computed it
            x = x.index_copy(1, pos, x_subset)
        return x

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, **runtime) -> torch.Tensor:
        """Train mode with targets: the interleaved training loss, the mean over the passes run
        (S + 1; T + 1 when S > T leaves subsets empty) of each pass's mean loss over its positions.
        Otherwise the `lrt_mode` logits (or their mean loss); by default the exact recurrence."""
        if not (self.training and targets is not None):
            return super().forward(idx, targets, **runtime)
        self.check_tokens(idx, training_step=True)
        if runtime:
            raise ValueError(f"LRT: {sorted(runtime)} select an evaluation mode; in train mode with targets "
                             "the loss is always the interleaved one (call model.eval() to evaluate)")
        losses = [lm_loss(self.head(x), targets[:, pos]) for pos, x in self.interleaved(idx)]
        return sum(losses) / len(losses)

    # ---- cached decoding: the exact recurrence ----
    def new_cache(self, batch: int, max_len: int, pad: torch.Tensor | None = None,
                  lrt_mode: str = DEFAULT_LRT_MODE) -> LRTCache:
        """lrt_mode "sequential" (exact recurrence) or "zero" (zero memory throughout). A prompt is
        consumed token by token, so prefill is exact (no parallel prefill)."""
        check_lrt_mode(lrt_mode, ("sequential", "zero"))
        cfg, p = self.config, self.tok_emb.weight
        cache = LRTCache(batch, max_len, p.device, pad, cfg.d_model, p.dtype, zero_memory=lrt_mode == "zero")
        cache.layers = [KVCache(batch, cfg.n_heads, cfg.head_dim, max_len, p.device, p.dtype) for _ in self.layers]
        return cache

    def decode(self, idx: torch.Tensor, cache: LRTCache) -> torch.Tensor:
        """Final hidden states of the next t tokens of every row, one token at a time: each
        token's memory is the previous token's, so this loop over tokens is the recurrence."""
        out = []
        for s in range(idx.shape[1]):
            mask, rope = cache.step(1, self.rope)
            memory = None
            if not cache.zero_memory:  # a row's first real token (and its pads) read zero memory
                memory = cache.memory.masked_fill((cache.positions(1) <= 0)[..., None], 0.0)
            x, cache.memory, _ = self.blocks(self.tok_emb(idx[:, s:s + 1]), rope, memory,
                                             [(kv, mask) for kv in cache.layers])
            cache.advance(1)
            out.append(x)
        return torch.cat(out, dim=1)

    def forward_cached(self, idx: torch.Tensor, cache: LRTCache) -> torch.Tensor:
        return self.head(self.decode(idx, cache))
