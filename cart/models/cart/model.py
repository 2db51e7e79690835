"""CART (Context-Anchored Recurrent Transformer), the torch model: read `CART` first, its docstring
is the forward in equations and names the piece that computes each term.

Below, in reading order: MLA attention (prelude, coda, anchor), the pieces of one loop iteration
(HyperConnection, loop-index embedding, LTI gate, core block), what the core attends to (the
anchor, or the X/W ablations' replacements), the decode cache, and the model. The two readings
(`variant` paper_text / paper_code) and the ablations are chosen once, when the model is built;
config.PAPER_TEXT_VS_CODE lists every difference between the readings.
"""
from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..base import check_int_arg
from .config import CARTConfig
from ..layers import (DecodeCache, LanguageModel, LatentCache, Layer, RMSNorm, RoPE, SwiGLU, attend, merge_heads,
                     split_heads)


# ---- MLA attention: full-rank queries, latent-compressed keys/values (docs/cart.md, Architecture) ----

class LatentKV(nn.Module):
    """MLA key/value projection: c = W_down x (d -> d_c), [k, v] = W_up c (d_c -> 2d).
    Decoding passes the layer's LatentCache: the new tokens' c is appended and every cached
    token's k, v are up-projected from it."""

    def __init__(self, cfg: CARTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.down = nn.Linear(cfg.d_model, cfg.d_latent, bias=False)
        self.up = nn.Linear(cfg.d_latent, 2 * cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, latents: LatentCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.down(x) if latents is None else latents.append(self.down(x))
        k, v = self.up(c).chunk(2, dim=-1)
        return split_heads(k, self.n_heads), split_heads(v, self.n_heads)


# A decoding attention layer's cache argument: its latents, the new tokens' (B, 1, t, L) mask over
# all L tokens seen, and the RoPE tables of those L keys (the latents are rotated after up-projection).
LayerCache = tuple[LatentCache, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


class MLASelfAttention(nn.Module):
    """Full-rank query, latent-compressed K/V, RoPE on q and k, causal.
    With `cache` (decoding) it attends over every cached token."""

    def __init__(self, cfg: CARTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kv = LatentKV(cfg)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                cache: LayerCache | None = None) -> torch.Tensor:
        q = split_heads(self.q(x), self.n_heads)
        latents, mask, key_rope = (None, None, rope) if cache is None else cache
        k, v = self.kv(x, latents)
        q, k = RoPE.apply(q, *rope), RoPE.apply(k, *key_rope)
        return self.o(merge_heads(attend(q, k, v, mask)))


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

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """mask None: x and the anchor are the same T tokens (causal); decoding: the step's mask."""
        q = split_heads(self.q(x), self.n_heads)
        y = attend(q, k, v, mask) if self.causal else F.scaled_dot_product_attention(q, k, v)
        return self.o(merge_heads(y))


# ---- one loop iteration's pieces -----------------------------------------------------------------

class HyperConnection(nn.Module):
    """x_r = sum_j softmax(w)_j * h_{r-j} over a ring buffer of the last `hc_window` states,
    logits initialised [hc_init_logit, 0, 0]: 6 (paper_text, ~the plain residual: 0.995 on h_r)
    or the authors' 1 (0.58 / 0.21 / 0.21)."""

    def __init__(self, cfg: CARTConfig):
        super().__init__()
        init = torch.zeros(cfg.hc_window)
        init[0] = cfg.hc_init_logit
        self.logits = nn.Parameter(init)

    def weights(self) -> torch.Tensor:
        """The blend weights, newest state first (fp32)."""
        return torch.softmax(self.logits.float(), dim=0)

    def forward(self, history: list[torch.Tensor]) -> torch.Tensor:
        w = self.weights().to(history[0].dtype)
        out = w[0] * history[0]
        for j in range(1, len(history)):
            out = out + w[j] * history[j]
        return out


def loop_index_table(n_loops: int, dim: int, device=None) -> torch.Tensor:
    """Fixed sinusoidal table of the loop index, one row per iteration (no row limit)."""
    pos = torch.arange(n_loops, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    pe = torch.zeros(n_loops, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class LoopIndexEmbedding(nn.Module):
    """pe[r], added to the core's input at iteration r.

    sinusoid  (paper_text): a fixed d-dim sinusoid of r; no parameters, any R.
    projected (the authors' code): a lie_dim-dim sinusoid of r from a lie_rows-row table through a
              learned Linear(lie_dim -> d) without bias; R is limited to the table's rows."""

    def __init__(self, cfg: CARTConfig):
        super().__init__()
        self.projected = cfg.lie == "projected"
        self.d_model, self.rows, self.dim = cfg.d_model, cfg.lie_rows, cfg.lie_dim
        if self.projected:
            self.register_buffer("table", None, persistent=False)
            self.build_tables()
            self.proj = nn.Linear(cfg.lie_dim, cfg.d_model, bias=False)

    def build_tables(self, device=None) -> None:
        """(Re)build the projected form's sinusoid table (a buffer, never saved): at construction, and
        for a loader that allocates buffers without their values (the Hugging Face export's)."""
        if self.projected:
            self.table = loop_index_table(self.rows, self.dim, device)

    def forward(self, n_loops: int, device) -> torch.Tensor:
        """(n_loops, d): one row per iteration. The projected table is projected whole and then cut,
        so row r is the same bits for every R (a matmul over R rows would round by R's blocking), and
        a token that exits after k loops holds exactly the state R = k gives it."""
        if not self.projected:
            return loop_index_table(n_loops, self.d_model, device)
        if n_loops > len(self.table):
            raise ValueError(f"n_loops={n_loops}: the projected loop-index embedding has {len(self.table)} rows "
                             f"(lie_rows), one per iteration; run at most {len(self.table)} loops")
        return self.proj(self.table)[:n_loops]


# ---- the state update h_{r+1} = rule(c, delta), delta = y_r - c, per channel ----------------------

# lambda = LTI_CEILING * sigmoid(theta) (reconstructed: the paper writes lambda = sigmoid(theta)): keeps
# rho < 1 even where fp32 rounds sigmoid(theta) to exactly 1 (theta > ~17); a relative change of 1e-6
# elsewhere. paper_code's residual_plus_gate uses sigmoid(a) as the authors do, without it.
LTI_CEILING = 1.0 - 1e-6


def lti_gate(gate: LTIGate, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return gate.lam().to(x.dtype) * x + delta  # paper_text: rho = max(lambda) < 1 for every theta


def residual_plus_gate(gate: LTIGate, u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return (1 + gate.lam().to(u.dtype)) * u + delta  # the authors': their block's residual, plus sigma * u


def plain_residual(gate: LTIGate, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return x + delta  # ablation LTI under paper_text


def doubled_residual(gate: LTIGate, u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return 2 * u + delta  # ablation LTI under the authors' code: their block's residual, plus u ungated


# (core_update, disable_lti) -> the rule
UPDATE_RULES = {("lti_gate", False): lti_gate, ("residual_plus_gate", False): residual_plus_gate,
                ("lti_gate", True): plain_residual, ("residual_plus_gate", True): doubled_residual}


class LTIGate(nn.Module):
    """The state update after the core block, with sigma = sigmoid(theta) per channel. The carried
    state c is x_r, the HyperConnection blend (paper_text), or u_r, the LIE-injected core input (the
    authors' code); the rule (UPDATE_RULES) is fixed by core_update and disable_lti. Disabled, theta
    still exists so rho can be logged."""

    def __init__(self, cfg: CARTConfig):
        super().__init__()
        self.carries_core_input = cfg.core_update == "residual_plus_gate"
        self.rule = UPDATE_RULES[cfg.core_update, cfg.disable_lti]
        theta0 = math.log(cfg.lti_init / (1.0 - cfg.lti_init))
        self.theta = nn.Parameter(torch.full((cfg.d_model,), theta0))

    def lam(self) -> torch.Tensor:
        """Per-channel lambda (lti_gate) or sigma(a) (residual_plus_gate, exactly as the authors')."""
        if self.carries_core_input:
            return torch.sigmoid(self.theta.float())
        return LTI_CEILING * torch.sigmoid(self.theta.float())

    def forward(self, c: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return self.rule(self, c, delta)

    def update(self, x_r: torch.Tensor, u_r: torch.Tensor, y_r: torch.Tensor) -> torch.Tensor:
        """h_{r+1} from the iteration's blend x_r, core input u_r and core output y_r."""
        c = u_r if self.carries_core_input else x_r
        return self(c, y_r - c)


class CoreBlock(nn.Module):
    """The shared block y = u + Attn(norm u; context), then y + SwiGLU(norm y). The attention is
    the cross-attention to the anchor, or MLA self-attention for ablation W; `context` is its
    arguments after the query input, given by the model's kv_source. The core has no K/V weights
    of its own unless it self-attends."""

    def __init__(self, cfg: CARTConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = MLASelfAttention(cfg) if cfg.self_attn_core else MLACrossAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, context: tuple) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), *context)
        return x + self.ffn(self.ffn_norm(x))


# ---- what the core attends to: one of three, chosen by the config (CART.kv_source) -------------------
# Plain objects, not modules: the K/V weights stay the model's own (anchor_norm, anchor_kv), so the
# state_dict keys are the same for every choice; the model is passed in at each call rather than
# held, so that it stays the only owner of its modules. The model asks at three points:
#   before_loop(model, x_p, decoding) -> the anchor the whole loop reads, or None
#   context(model, anchor, x_r, u_r, rope, cache) -> the core attention's arguments at one iteration
#   cached_per_loop: which decode-cache part holds one latent cache per loop ("anchor", "core", None)
# and per_token_exit says whether a token's state depends only on its own loop count (adaptive exit).

class FrozenAnchor:
    """The paper's CART: K, V projected once from the prelude output, read by every iteration.
    The core reads only the anchor (fixed before the loop) and its own token's state."""
    cached_per_loop = None
    per_token_exit = True

    def before_loop(self, model: CART, x: torch.Tensor, decoding: Decoding | None):
        return model.anchor(x, None if decoding is None else decoding.layer("anchor"))

    def context(self, model: CART, anchor, x_r, u_r, rope, cache):
        return anchor


class RecomputedAnchor:
    """Ablation X (unfreeze_kv): K, V projected every iteration from that loop's state, the blend
    x_r (paper_text) or the core input u_r (the authors' code); it reads every token's loop state."""
    cached_per_loop = "anchor"
    per_token_exit = False

    def __init__(self, cfg: CARTConfig):
        self.from_core_input = cfg.unfrozen_kv_input == "core_input"

    def before_loop(self, model: CART, x: torch.Tensor, decoding: Decoding | None):
        return None

    def context(self, model: CART, anchor, x_r, u_r, rope, cache):
        return model.anchor(u_r if self.from_core_input else x_r, cache)


class SelfAttendingCore:
    """Ablation W (self_attn_core): no anchor; the core self-attends (MLA + RoPE) over the loop's state."""
    cached_per_loop = "core"
    per_token_exit = False

    def before_loop(self, model: CART, x: torch.Tensor, decoding: Decoding | None):
        return None

    def context(self, model: CART, anchor, x_r, u_r, rope, cache):
        return rope, cache


# ---- cached decoding ----------------------------------------------------------------------------

class CARTCache(DecodeCache):
    """CART's decode state: MLA's latent c = W_down x per token, one cache per prelude layer, for
    the coda and for the anchor: (P + 2) * d_c values per token, against 2d per layer for a Dense
    KV cache. The cross-attending core caches nothing for any R, it only reads the anchor; X (the
    anchor recomputed from each loop's state) and W (a self-attending core) keep one latent cache
    per loop instead. R is fixed per cache: every loop's state of every earlier token is
    summarised by the anchor alone."""

    def __init__(self, cfg: CARTConfig, batch: int, max_len: int, n_loops: int, device, dtype,
                 pad: torch.Tensor | None = None, static: bool = False):
        super().__init__(batch, max_len, device, pad, static)

        def latents(n: int) -> list[LatentCache]:
            return [LatentCache(batch, cfg.d_latent, max_len, self.device, dtype, self.position) for _ in range(n)]

        self.n_loops = n_loops
        self.exit_threshold: float | None = None  # adaptive exit (CART.new_cache sets it)
        self.prelude = latents(cfg.n_prelude)
        self.anchor = latents(0 if cfg.self_attn_core else n_loops if cfg.unfreeze_kv else 1)
        self.core = latents(n_loops if cfg.self_attn_core else 0)
        self.coda = latents(1)
        self.layers = self.prelude + self.anchor + self.core + self.coda


class Decoding(NamedTuple):
    """One forward_cached call as the layers see it: the cache, the new tokens' mask over every
    token seen, and the RoPE tables of every key position."""
    cache: CARTCache
    mask: torch.Tensor
    key_rope: tuple[torch.Tensor, torch.Tensor]

    def layer(self, part: str, i: int = 0) -> LayerCache:
        """The cache argument of the i-th attention layer of `part` (prelude, anchor, core, coda)."""
        return getattr(self.cache, part)[i], self.mask, self.key_rope


class CART(LanguageModel):
    """CART(d, P, R). The forward (`hidden`, then the tied head), for token ids idx:

        x_p     = Prelude(Embed(idx))               P MLA self-attention layers           prelude
        K, V    = LatentKV(norm(x_p)), once         the anchor, MLA's latent K/V          anchor, anchor_norm, anchor_kv
        h_0 = x_p;  for r = 0 .. R-1:                                                     recur -> loop -> iteration
            x_r     = sum_j w_j h_{r-j}             HyperConnection, last hc_window states hyper
            u_r     = x_r + pe[r]                   loop-index embedding                  lie
            y_r     = u_r + CrossAttn(norm(u_r); K, V), then + SwiGLU(norm(.))            core[0]
            h_{r+1} = lambda * x_r + (y_r - x_r)    LTI gate, lambda in (0, 1)^d          gate
        logits  = Head(Coda(h_R))                   one MLA layer, final norm, tied head  coda, head

    The cross-attention is causal (position t reads anchor positions <= t) and the anchor is the
    core's only K/V, so the core has no K/V weights. One core block, looped R times, is the whole
    depth of the middle: R may differ between calls (`n_loops`).

    What the readings and ablations change is a piece chosen once, in __init__:
      kv_source   what the core attends to: FrozenAnchor (above); RecomputedAnchor (X, unfreeze_kv:
                  K, V from every loop's state); SelfAttendingCore (W, self_attn_core: no anchor)
      gate.rule   paper_text's update above; the authors' h_{r+1} = (1 + sigma) u_r + (y_r - u_r);
                  disable_lti: the plain residual (UPDATE_RULES)
      core        one shared block, or R blocks (Z, unshare_core)
      hyper, lie  None when disabled (HC: x_r = h_r; LIE: u_r = x_r); lie is a fixed d-dim sinusoid
                  (paper_text) or a learned projection of a lie_dim sinusoid (paper_code)
      anchor_norm RMSNorm (paper_text) or identity (paper_code)

    Beside the main path, each in its own method:
      backprop_loops  truncated backpropagation through the last k iterations (training; `recur`, `loop`)
      exit_threshold  adaptive exit, per token (inference; `loop_with_exit`)
      new_cache / forward_cached  cached decoding: the same `recur` with the layers' latent caches
      compile_by_iteration        torch.compile one graph per iteration, reused for every r and R
    """

    def __init__(self, cfg: CARTConfig):
        super().__init__(cfg)
        # modules in this order: _init_weights draws them in registration order
        self.prelude = nn.ModuleList([Layer(cfg, MLASelfAttention(cfg)) for _ in range(cfg.n_prelude)])
        if not cfg.self_attn_core:
            self.anchor_norm = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.anchor_norm else nn.Identity()
            self.anchor_kv = LatentKV(cfg)  # its own module, not shared with a prelude layer
        n_blocks = cfg.n_loops if cfg.unshare_core else 1
        self.core = nn.ModuleList([CoreBlock(cfg) for _ in range(n_blocks)])
        self.hyper = None if cfg.disable_hyperconnection else HyperConnection(cfg)
        self.gate = LTIGate(cfg)
        self.lie = None if cfg.disable_lie else LoopIndexEmbedding(cfg)
        self.coda = Layer(cfg, MLASelfAttention(cfg))
        self.kv_source = (SelfAttendingCore() if cfg.self_attn_core else
                          RecomputedAnchor(cfg) if cfg.unfreeze_kv else FrozenAnchor())
        self.last_loops_used: torch.Tensor | None = None  # (B, T) loops each token ran, after an adaptive exit
        self._init_weights(cfg.n_prelude + cfg.n_loops + 1 if cfg.init == "depth_scaled" else None)

    # ---- the forward ----
    def hidden(self, idx: torch.Tensor, n_loops: int | None = None,
               backprop_loops: int | None = None, exit_threshold: float | None = None) -> torch.Tensor:
        """The coda's output (B, T, d): the equations of the class docstring, head excluded."""
        R = self.loop_count(n_loops)
        exit_threshold = self.check_exit(exit_threshold, backprop_loops)
        x = self.tok_emb(idx)
        rope = self.rope.tables(idx.shape[1], idx.device)
        for layer in self.prelude:
            x = layer(x, rope)
        h = self.recur(x, R, rope, backprop_loops=backprop_loops, exit_threshold=exit_threshold)
        return self.coda(h, rope)

    def anchor(self, x: torch.Tensor, cache: LayerCache | None = None):
        """(k, v, mask) the core attends to: mask None in the full forward (causal over the same
        tokens); decoding, the new tokens' latents join the cached ones and the step's mask applies."""
        latents, mask, _ = (None, None, None) if cache is None else cache
        return (*self.anchor_kv(self.anchor_norm(x), latents), mask)

    def recur(self, x: torch.Tensor, R: int, rope, decoding: Decoding | None = None,
              backprop_loops: int | None = None, exit_threshold: float | None = None) -> torch.Tensor:
        """h_0 = x_p -> h_R, for the full forward (decoding None: attention causal within the T
        tokens) and for cached decoding (the anchor's and W's latents cached).

        backprop_loops = k (training; None = all): truncated backpropagation through the last k
        iterations, as Huginn trains (Geiping et al. 2025). The first R - k iterations run without
        autograd (no activations kept, so memory is bounded by k, not R), and the state they hand on,
        h_0's copies in the HyperConnection window included, is a constant: the prelude output then
        reaches the loss only through the anchor K, V that the last k iterations read, and the shared
        core, gate, HC and LIE get gradient from those k iterations alone. k >= R is full
        backpropagation. Values are the same either way. (X and W read no anchor of h_0, so their
        prelude would get no gradient at all: cart.loop_sampling rejects truncation for them.)"""
        anchor = self.kv_source.before_loop(self, x, decoding)
        pe = None if self.lie is None else self.lie(R, x.device)
        frozen = 0 if backprop_loops is None else max(0, R - check_int_arg("backprop_loops", backprop_loops))
        # the window [h_r, h_{r-1}, ...], newest first; h_0 until R fills it. Views of x rather than x
        # itself: the same values and gradient, and a compiled iteration sees distinct tensors from
        # r = 0 on (Dynamo compiles one graph per pattern of repeated inputs).
        history = [x] + [x.view_as(x) for _ in range(self.config.hc_window - 1)]
        if exit_threshold is not None:
            return self.loop_with_exit(history, R, pe, anchor, rope, exit_threshold)[0]
        return self.loop(history, R, frozen, pe, anchor, rope, decoding)[0]

    def loop(self, history: list[torch.Tensor], R: int, frozen: int, pe: torch.Tensor | None, anchor, rope,
             decoding: Decoding | None) -> list[torch.Tensor]:
        """R iterations from the state window `history`, the first `frozen` without autograd."""
        per_loop = None if decoding is None else self.kv_source.cached_per_loop  # X's or W's latents
        for r in range(R):
            # the window is a constant where truncation starts (r = frozen); detached on entering the
            # no-grad iterations too, so they all see the same kind of input (one compiled graph)
            if frozen and r in (0, frozen):
                history = [h.detach() for h in history]
            with torch.no_grad() if r < frozen else contextlib.nullcontext():
                # pe[r] cloned (d numbers): a compiled iteration then sees a row, not a view of the
                # R-row table, whose size R Dynamo would guard on. Inline rather than in a helper:
                # under compile_by_iteration every function this loop calls is a compiled frame, and
                # one taking r would be guarded on r.
                history = self.iteration(history, None if pe is None else pe[r].clone(), anchor, rope,
                                         self.core[r % len(self.core)],  # one shared block, or R (ablation Z)
                                         None if per_loop is None else decoding.layer(per_loop, r))
        return history

    def iteration(self, history: list[torch.Tensor], pe_r: torch.Tensor | None, anchor, rope, core: CoreBlock,
                  cache: LayerCache | None = None) -> list[torch.Tensor]:
        """One loop iteration: the window [h_r, h_{r-1}, ...] -> [h_{r+1}, h_r, ...]. A function of
        tensors and modules, never of the loop index r, so that a compiled model runs it as one
        graph for every r and every R (compile_by_iteration)."""
        x_r = history[0] if self.hyper is None else self.hyper(history)
        u_r = x_r if pe_r is None else x_r + pe_r.to(x_r.dtype)
        y_r = core(u_r, self.kv_source.context(self, anchor, x_r, u_r, rope, cache))
        return [self.gate.update(x_r, u_r, y_r)] + history[:-1]

    # ---- the call's R, and the adaptive exit ----
    def loop_count(self, n_loops: int | None) -> int:
        """The R of a call: the trained one by default; any R unless the core is unshared."""
        cfg = self.config
        R = cfg.n_loops if n_loops is None else check_int_arg("n_loops", n_loops)
        if cfg.unshare_core and R != len(self.core):
            raise ValueError(f"n_loops={R}: an unshared core has exactly {len(self.core)} blocks")
        return R

    def check_exit(self, exit_threshold, backprop_loops: int | None = None) -> float | None:
        """The adaptive-exit threshold of a call (None: run all R), checked at the API boundary."""
        if exit_threshold is None:
            return None
        if isinstance(exit_threshold, bool) or not isinstance(exit_threshold, (int, float)) or not exit_threshold >= 0:
            raise ValueError(f"exit_threshold: expected a number >= 0 (a relative change of the state), "
                             f"got {exit_threshold!r}")
        if not self.kv_source.per_token_exit:
            raise ValueError("exit_threshold: this CART's core reads every token's loop state (unfreeze_kv or "
                             "self_attn_core), so tokens cannot stop looping one by one; leave it None")
        if self.training or backprop_loops is not None:
            raise ValueError("exit_threshold: adaptive exit is for inference; call model.eval() and leave "
                             "backprop_loops None")
        return float(exit_threshold)

    def loop_with_exit(self, history: list[torch.Tensor], R: int, pe: torch.Tensor | None, anchor, rope,
                       threshold: float) -> list[torch.Tensor]:
        """Adaptive exit (inference): each token stops looping once its state changes by less than
        `threshold`, ||h_{r+1} - h_r|| / ||h_r|| < threshold, or at R, and keeps its window from then
        on; the loop stops once no token is left looping. Sets last_loops_used, the iterations each
        token ran. Only under the frozen anchor (kv_source.per_token_exit): the core then reads the
        anchor and its own token's state alone, so a token that exits after k iterations has exactly
        the state R = k gives it, whatever the other tokens do."""
        looping = torch.ones(history[0].shape[:-1], dtype=torch.bool, device=history[0].device)
        used = torch.zeros(looping.shape, dtype=torch.int64, device=looping.device)
        for r in range(R):
            new = self.iteration(history, None if pe is None else pe[r].clone(), anchor, rope,
                                 self.core[r % len(self.core)])
            used += looping
            h, h_next = history[0].float(), new[0].float()
            change = (h_next - h).norm(dim=-1) / h.norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
            keep = looping[..., None]
            history = [torch.where(keep, n, old) for n, old in zip(new, history)]
            looping = looping & (change >= threshold)
            if not bool(looping.any()):
                break
        self.last_loops_used = used
        return history

    # ---- compiling ----
    def compile_by_iteration(self) -> None:
        """Have torch.compile run the loop over r (`loop`) as plain Python and compile what it calls:
        one graph per iteration, reused for every r and every R, as Huginn compiles its recurrence
        (`torch._dynamo.disable(recursive=False)` on iterate_forward, seal-rg/recurrent-pretraining).
        Training with a sampled R needs it: by default Dynamo unrolls the loop into one graph per
        distinct R and, past its recompile limit (8 per function), runs every further R eagerly,
        silently. A fixed-R run keeps the default, one graph for the whole unrolled model.

        `recur` and the loop-index table run eagerly too, so that R enters no compiled frame as a
        size: traced, the table's arange(R) guards on R's value (one graph per R) and, once Dynamo
        makes R dynamic, on R >= 2 (a further graph when R = 1 is drawn). What is left is the int R
        passed through forward, which Dynamo turns dynamic at the second distinct R (one recompile)."""
        self.loop = torch.compiler.disable(self.loop, recursive=False)
        self.recur = torch.compiler.disable(self.recur, recursive=False)
        if self.lie is not None:
            self.lie.forward = torch.compiler.disable(self.lie.forward)

    # ---- cached decoding (the cache layout: CARTCache) ----
    def has_static_cache(self, exit_threshold: float | None = None, **runtime) -> bool:
        return exit_threshold is None  # an adaptive exit reads the host each iteration

    def new_cache(self, batch: int, max_len: int, pad: torch.Tensor | None = None,
                  n_loops: int | None = None, exit_threshold: float | None = None, static: bool = False) -> CARTCache:
        """An empty cache for `batch` rows of up to `max_len` tokens, decoding with R = n_loops
        (default: the trained R) and the adaptive exit `exit_threshold` for its whole life; static:
        see DecodeCache (an adaptive exit reads the host each iteration, so it cannot be replayed)."""
        if self.config.noncausal_cross_attn:
            raise ValueError("CARTConfig.noncausal_cross_attn: a cross-attention that sees the future "
                             "cannot decode token by token")
        p = self.tok_emb.weight
        cache = CARTCache(self.config, batch, max_len, self.loop_count(n_loops), p.device, p.dtype, pad, static)
        cache.exit_threshold = self.check_exit(exit_threshold)
        return cache

    def forward_cached(self, idx: torch.Tensor, cache: CARTCache) -> torch.Tensor:
        t = idx.shape[1]
        mask, rope = cache.step(t, self.rope)
        decoding = Decoding(cache, mask, cache.key_rope(t, self.rope))
        x = self.tok_emb(idx)
        for i, layer in enumerate(self.prelude):
            x = layer(x, rope, decoding.layer("prelude", i))
        x = self.coda(self.recur(x, cache.n_loops, rope, decoding, exit_threshold=cache.exit_threshold), rope,
                      decoding.layer("coda"))
        cache.advance(t)
        return self.head(x)

    # ---- what the training log records about the gate and the HyperConnection ----
    @torch.no_grad()
    def spectral_radius(self) -> float:
        """max_i lambda_i, the gate's largest per-channel factor (what the paper logs as rho).

        Under paper_text's lti_gate it is the spectral radius of h -> lambda * h, < 1, so the carried
        state contracts. Under the authors' residual_plus_gate the core's input is carried with the
        factor 1 + sigma(a) in (1, 2) (the block's own residual plus the gate), so this number
        (max sigma(a)) does not bound the state's growth; it is logged because the paper reports it."""
        return self.gate.lam().max().item()

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """What the paper claims about the gate and the HyperConnection but never logged: lambda
        (sigma(a) under paper_code) min / mean / max over channels, and the HC softmax weights
        (hc_weight_0 = the newest state). One host sync."""
        lam = self.gate.lam()
        names = ["lti_gate_min", "lti_gate_mean", "lti_gate_max"]
        values = [lam.min(), lam.mean(), lam.max()]
        if self.hyper is not None:
            w = self.hyper.weights()
            names += [f"hc_weight_{j}" for j in range(len(w))]
            values += list(w)
        return dict(zip(names, torch.stack(values).tolist()))
