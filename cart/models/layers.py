"""Building blocks shared by the model families: RMSNorm, RoPE, MHA attention, SwiGLU,
the pre-norm layer and the language-model base (tied embedding and head, init, loss).

Attention always goes through F.scaled_dot_product_attention so the flash / memory-efficient
kernels are picked on GPU; tensors are laid out (B, heads, T, head_dim) as SDPA expects.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import IGNORE_INDEX, ConfigBase
from .pattern_attention import PATTERN_CACHES, HeadPatternKVCache, PatternKVCache, pattern_attention
from .patterns import LayerPattern


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class RoPE(nn.Module):
    """Rotary position embedding (rotate-half form). The cos/sin tables of the first `table_len`
    positions are computed once, as buffers: built inside a compiled forward, Inductor fuses them into
    every kernel that applies them and evaluates cos and sin per element (batch x heads x T x head_dim)
    instead of reading a (T, head_dim) table (tables as buffers: +2% tokens/s for CART and Dense on an
    H200). Longer sequences compute theirs on the fly."""

    def __init__(self, head_dim: int, theta: float, table_len: int = 4096):
        super().__init__()
        self.head_dim, self.theta, self.table_len = head_dim, theta, table_len
        for name in ("inv_freq", "cos_table", "sin_table"):
            self.register_buffer(name, None, persistent=False)
        self.build_tables()

    def build_tables(self, device=None) -> None:
        """(Re)build the buffers (never saved): at construction, and for a loader that created the model
        on the meta device (the Hugging Face export's)."""
        self.inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device)
                                              / self.head_dim))
        self.cos_table, self.sin_table = self.compute(self.table_len, device)

    def compute(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.to(device))
        emb = torch.cat([freqs, freqs], dim=-1)  # (T, head_dim)
        return emb.cos(), emb.sin()

    def tables(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if seq_len <= self.cos_table.shape[0]:
            return self.cos_table[:seq_len].to(device), self.sin_table[:seq_len].to(device)
        return self.compute(seq_len, device)

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return (x * cos + rotated * sin).to(x.dtype)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, T, D = x.shape
    return x.view(B, T, n_heads, D // n_heads).transpose(1, 2)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    B, H, T, hd = y.shape
    return y.transpose(1, 2).reshape(B, T, H * hd)


class KVCache:
    """Keys and values of one self-attention layer for every token seen so far, preallocated to
    the decode's max length: `append` writes the new tokens' k, v and returns all of them.

    Static (`position`, the DecodeCache's device-side token count, given): the new tokens are written
    at that position and `append` returns the whole buffer, whose slots not yet written the step's
    mask hides: every call then has the same shapes and no host-side index (CUDA-graph replay)."""

    def __init__(self, batch: int, heads: int, head_dim: int, max_len: int, device, dtype,
                 position: torch.Tensor | None = None):
        self.k = torch.zeros(batch, heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0
        self.position = position

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KVCache: {end} tokens exceed the cache's max_len={self.k.shape[2]}")
        self.length = end
        if self.position is not None:
            slots = self.position + torch.arange(k.shape[2], device=k.device)
            self.k.index_copy_(2, slots, k)
            self.v.index_copy_(2, slots, v)
            return self.k, self.v
        self.k[:, :, end - k.shape[2]:end] = k
        self.v[:, :, end - k.shape[2]:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def nbytes(self) -> int:
        """Bytes held per sequence for the tokens seen so far."""
        return 2 * self.k[0, :, :self.length].numel() * self.k.element_size()


class LatentCache:
    """MLA's decode cache for one attention layer: the latent c = W_down x of every token seen so
    far (d_c values per token, where a KVCache holds 2d), preallocated to the decode's max length.
    Keys and values are up-projected from it when attended: trading that matmul for a cache
    2d / d_c times smaller is MLA's point. `append` writes the new tokens' latents, returns all
    (static, with `position` given: the whole buffer, as KVCache)."""

    def __init__(self, batch: int, d_latent: int, max_len: int, device, dtype,
                 position: torch.Tensor | None = None):
        self.c = torch.zeros(batch, max_len, d_latent, device=device, dtype=dtype)
        self.length = 0
        self.position = position

    def append(self, c: torch.Tensor) -> torch.Tensor:
        end = self.length + c.shape[1]
        if end > self.c.shape[1]:
            raise ValueError(f"LatentCache: {end} tokens exceed the cache's max_len={self.c.shape[1]}")
        self.length = end
        if self.position is not None:
            return self.c.index_copy_(1, self.position + torch.arange(c.shape[1], device=c.device), c)
        self.c[:, end - c.shape[1]:end] = c
        return self.c[:, :end]

    def nbytes(self) -> int:
        """Bytes held per sequence for the tokens seen so far."""
        return self.c[0, :self.length].numel() * self.c.element_size()


class DecodeCache:
    """What a model keeps between decoding calls: the tokens consumed so far (`length`, pads
    included), each row's left padding (`pad`: a batch of prompts of different lengths is
    left-padded to one length; pad positions are never attended to and positions restart at
    each row's first real token), and the family's per-layer state (`layers`, e.g. KVCache).

    A family's `forward_cached(idx, cache)` takes the next t tokens of every row and calls
    `cache.step(t)` for the attention mask and RoPE tables of those positions.

    static=True (CART and Dense): the token count also lives on the device (`position`), the layer
    caches write there, and every call attends over all max_len slots (the mask hides those not
    written yet). A call's shapes and kernels then depend on t alone and nothing is read back to the
    host, so one-token calls can be captured once as a CUDA graph and replayed (cart.generation);
    the masked slots add exact zeros, so the logits are those of the dynamic cache."""

    def __init__(self, batch: int, max_len: int, device, pad: torch.Tensor | None = None, static: bool = False):
        self.batch, self.max_len, self.device = batch, max_len, torch.device(device)
        self.pad = (torch.zeros(batch, dtype=torch.long, device=self.device) if pad is None
                    else pad.to(self.device, torch.long))
        if self.pad.shape != (batch,) or bool((self.pad < 0).any()):
            raise ValueError(f"DecodeCache: pad must be {batch} non-negative counts, got {pad}")
        self.length = 0
        self.position = torch.zeros((), dtype=torch.long, device=self.device) if static else None
        self.layers: list = []
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None  # (max_len, hd) tables, built once

    @property
    def static(self) -> bool:
        return self.position is not None

    def _start(self) -> int | torch.Tensor:
        """The first new token's index: the host's count, or static, the device's."""
        return self.length if self.position is None else self.position

    def positions(self, t: int) -> torch.Tensor:
        """(B, t) position of each new token within its row (negative on left padding)."""
        return self._start() + torch.arange(t, device=self.device)[None, :] - self.pad[:, None]

    def step(self, t: int, rope: "RoPE") -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """For the next t tokens: the (B, 1, t, L) boolean mask of visible keys over the L = length + t
        tokens seen (static: L = max_len) (causal, never a pad key; a pad query sees itself so no row
        is empty) and RoPE tables (B, 1, t, hd)."""
        if self.length + t > self.max_len:
            raise ValueError(f"decoding past max_len={self.max_len}: {self.length} tokens seen, {t} more given")
        q = self._start() + torch.arange(t, device=self.device)[:, None]
        j = torch.arange(self.max_len if self.static else self.length + t, device=self.device)[None, :]
        mask = (j <= q)[None] & (j[None] >= self.pad[:, None, None])
        mask = mask | (j == q)[None]
        return mask[:, None], self._rope_at(self.positions(t), rope)

    def key_rope(self, t: int, rope: "RoPE") -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables (B, 1, L, hd) of every key up to the next t tokens (static: of all max_len
        slots), for caches that hold keys before rotation (MLA's latents are up-projected, then
        rotated, when attended)."""
        keys = torch.arange(self.max_len if self.static else self.length + t, device=self.device)
        return self._rope_at(keys[None, :] - self.pad[:, None], rope)

    def _rope_at(self, positions: torch.Tensor, rope: "RoPE") -> tuple[torch.Tensor, torch.Tensor]:
        if self._rope is None:  # rows for every position a row can reach; row i is the same for any length
            self._rope = rope.tables(self.max_len, self.device)
        cos, sin = self._rope
        pos = positions.clamp(min=0)  # pad positions are never attended: any table row does
        return cos[pos][:, None], sin[pos][:, None]

    def advance(self, t: int) -> None:
        self.length += t
        if self.position is not None:
            self.position += t

    def counters(self) -> tuple[int, list[int], torch.Tensor | None]:
        """The token counts (this cache's, each layer's, the device's), to put back with
        `set_counters` after a call that must leave no trace (a CUDA graph's warm-up and capture)."""
        return (self.length, [layer.length for layer in self.layers],
                None if self.position is None else self.position.clone())

    def set_counters(self, counters: tuple[int, list[int], torch.Tensor | None]) -> None:
        self.length, lengths, position = counters
        for layer, n in zip(self.layers, lengths, strict=True):
            layer.length = n
        if position is not None:
            self.position.copy_(position)

    def count_replayed(self, t: int) -> None:
        """The host-side counts after a replayed call (a CUDA graph runs no Python): the device's
        position advanced inside the graph."""
        self.length += t
        for layer in self.layers:
            layer.length += t

    def nbytes(self) -> int:
        """Bytes the cache holds per sequence for the tokens seen so far (pads included)."""
        return sum(layer.nbytes() for layer in self.layers)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Causal SDPA (training, full sequence) or SDPA under a decode step's mask."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class MHASelfAttention(nn.Module):
    """Standard multi-head attention for the Dense baseline: q, k, v, o all full rank.
    With `cache` = (KVCache, mask) it attends over the cached keys (decoding); with a
    PatternKVCache, over the keys a pattern keeps. `pattern` (the Dense control, docs/ratplus.md,
    This project's adaptation) restricts each query to the keys of an attention pattern; None is causal attention."""

    def __init__(self, cfg: ConfigBase):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                cache: tuple[KVCache, torch.Tensor] | PatternKVCache | HeadPatternKVCache | None = None,
                pattern: LayerPattern | None = None) -> torch.Tensor:
        q, k, v = (split_heads(p(x), self.n_heads) for p in (self.q, self.k, self.v))
        q, k = RoPE.apply(q, *rope), RoPE.apply(k, *rope)
        if isinstance(cache, PATTERN_CACHES):
            return self.o(merge_heads(cache.attend(q, k, v)))
        mask = None
        if cache is not None:
            kv, mask = cache
            k, v = kv.append(k, v)
        y = attend(q, k, v, mask) if pattern is None else pattern_attention(q, k, v, pattern)
        return self.o(merge_heads(y))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ConfigBase):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Layer(nn.Module):
    """Pre-norm residual layer: self-attention then SwiGLU (prelude, coda, Dense, W-core)."""

    def __init__(self, cfg: ConfigBase, attn: nn.Module):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = attn
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache=None,
                **attn_kwargs) -> torch.Tensor:
        """`attn_kwargs` (e.g. an attention `pattern`) go to attentions that take them."""
        if cache is not None:
            attn_kwargs["cache"] = cache
        x = x + self.attn(self.attn_norm(x), rope, **attn_kwargs)
        return x + self.ffn(self.ffn_norm(x))


class SoftmaxCrossEntropy(torch.autograd.Function):
    """Cross-entropy in fp32 over (rows, vocab) logits of any float dtype, skipping IGNORE_INDEX rows,
    mean or sum over the rest: log-sum-exp minus the target's logit, with the backward written out as
    (softmax - one-hot) x the row's weight. Compiled, that backward is one pass that reads the logits
    and writes their gradient, where F.cross_entropy's goes through the fp32 log-softmax and a reduction
    per row: forward + backward at 32,768 x 32,000 bf16 logits on an H200 2.11 ms instead of 2.70 ms
    (bench.throughput.ce_kernels), a CART d256 training step 2.5% faster (docs/performance.md)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, mean: bool) -> torch.Tensor:
        valid = targets != IGNORE_INDEX
        safe = torch.where(valid, targets, 0)
        lse = torch.logsumexp(logits.float(), dim=-1)
        picked = logits.gather(-1, safe[:, None]).squeeze(-1).float()
        total = torch.where(valid, lse - picked, 0.0).sum()
        count = valid.sum() if mean else None
        ctx.save_for_backward(logits, safe, valid, lse, count)
        return total / count if mean else total

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        logits, safe, valid, lse, count = ctx.saved_tensors
        weight = torch.where(valid, grad_loss / count if count is not None else grad_loss, 0.0)
        vocab = torch.arange(logits.shape[-1], device=logits.device)
        softmax = torch.exp(logits.float() - lse[:, None])
        grad = (softmax - (vocab == safe[:, None]).float()) * weight[:, None]
        return grad.to(logits.dtype), None, None


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy in fp32, skipping IGNORE_INDEX targets; reduction "mean" or "sum".
    Under torch.compile it is SoftmaxCrossEntropy (Inductor fuses its backward into one pass); eager,
    F.cross_entropy, whose native kernels beat the written-out backward's temporaries (2x on a CPU)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"lm_loss: reduction must be 'mean' or 'sum', got {reduction!r}")
    logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    if torch.compiler.is_compiling():
        return SoftmaxCrossEntropy.apply(logits, targets, reduction == "mean")
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction=reduction)


class LanguageModel(nn.Module):
    """What every family shares: tied embedding and LM head, RoPE tables, final norm, init, and
    the forward contract `model(idx, targets=None, **runtime)` -> logits, or the mean loss when
    targets are given. A family implements `hidden(idx, **runtime)` (the final hidden states);
    one whose training loss is more than a plain forward overrides `forward`."""

    def __init__(self, cfg: ConfigBase):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rope = RoPE(cfg.head_dim, cfg.rope_theta)
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm_f(x), self.tok_emb.weight)  # tied output projection

    def hidden(self, idx: torch.Tensor, **runtime) -> torch.Tensor:
        raise NotImplementedError

    def check_tokens(self, idx: torch.Tensor, training_step: bool = False) -> None:
        """A ValueError, before any work, for input the forward cannot run: no token (T = 0), or a
        token id outside the vocabulary (torch's embedding would raise a bare IndexError on CPU and
        a device assert on CUDA). The id check reads the tokens back, a host sync, so it is left
        out where that costs: under torch.compile (it would break the graph) and in a training
        step on an accelerator (cart/training/step.py's steps never sync; the bins' declared vocab_size is
        checked against the model's when the training stage opens them)."""
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(f"idx: expected (batch, T) token ids with T >= 1, got shape {tuple(idx.shape)}")
        if torch.compiler.is_compiling() or (training_step and idx.device.type != "cpu") or idx.numel() == 0:
            return
        vocab = self.config.vocab_size
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"idx: token id {lo if lo < 0 else hi} is outside the vocabulary: ids must be in "
                             f"[0, vocab_size={vocab})")

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, **runtime) -> torch.Tensor:
        self.check_tokens(idx, training_step=self.training and targets is not None)
        accepted = self.config.runtime_kwargs() | self.config.training_kwargs()
        unknown = set(runtime) - accepted
        if unknown:
            valid = sorted(accepted) or "none"
            raise ValueError(f"{type(self).__name__}: unknown argument(s) {sorted(unknown)}; valid: {valid}")
        logits = self.head(self.hidden(idx, **runtime))
        return logits if targets is None else lm_loss(logits, targets)

    # ---- cached decoding (families that support it implement these two) ----
    @classmethod
    def has_cached_decoding(cls) -> bool:
        return cls.forward_cached is not LanguageModel.forward_cached

    def has_static_cache(self, **runtime) -> bool:
        """Whether `new_cache(..., static=True, **runtime)` works (the CUDA-graph decoding of cart.generation)."""
        return False

    def new_cache(self, batch: int, max_len: int, pad: torch.Tensor | None = None, **runtime) -> DecodeCache:
        """An empty decode cache for `batch` rows of up to `max_len` tokens (pads included); families
        with `has_static_cache` also take static=True (DecodeCache)."""
        raise NotImplementedError(f"{type(self).__name__} has no cached decoding")

    def forward_cached(self, idx: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
        """Logits (B, t, V) of the next t tokens of every row, appending them to `cache`; equal to
        the matching positions of the full forward."""
        raise NotImplementedError(f"{type(self).__name__} has no cached decoding")

    def _init_weights(self, residual_depth: int | None) -> None:
        """N(0, init_std) for every matrix; None: plain, as the CART authors initialise."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            # output projections write into the residual stream: scale them down with depth
            scaled = residual_depth is not None and name.endswith(("attn.o.weight", "ffn.down.weight"))
            nn.init.normal_(p, 0.0, std / math.sqrt(2 * residual_depth) if scaled else std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
