"""Config and accounting of CART(d, P, R): P prelude layers, a once-computed MLA anchor, one core
block looped R times, one coda layer. The flags are the paper's ablations (CART_SPEC.md section 1).

Accounting (the paper's conventions, section 2):
    stored    = every weight held in memory once (tied embedding once, norms included)
    effective = stored + (R - 1) * core: the shared core counts once per iteration
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import ConfigBase, require


@dataclass(frozen=True)
class CARTConfig(ConfigBase):
    n_prelude: int = 6
    n_loops: int = 6
    kv_latent_ratio: int = 4  # d_c = d / kv_latent_ratio
    hc_window: int = 3  # HyperConnection ring buffer of the last 3 states
    hc_init_logit: float = 6.0  # (reconstructed) softmax([6,0,0]) = 0.995 on h_r: ~plain residual
    lti_init: float = 0.9  # (reconstructed) initial per-channel lambda = sigmoid(theta)
    # ablations, all off by default
    unfreeze_kv: bool = False  # X: K, V recomputed from the evolving state every iteration
    unshare_core: bool = False  # Z: R distinct core blocks
    self_attn_core: bool = False  # W: core layers use MLA self-attention + RoPE, no anchor
    disable_hyperconnection: bool = False  # HC: x_r = h_r
    disable_lti: bool = False  # LTI: plain residual h_{r+1} = x_r + delta_r
    disable_lie: bool = False  # LIE: no loop-index embedding
    # Test-only: a cross-attention that sees the future, to prove the causality test can fail.
    noncausal_cross_attn: bool = False

    arch: ClassVar[str] = "cart"
    model_class: ClassVar[str] = "cart.models.cart:CART"

    def _validate(self) -> None:
        require(self.n_prelude >= 1, "CARTConfig.n_prelude", f"must be >= 1, got {self.n_prelude}")
        require(self.n_loops >= 1, "CARTConfig.n_loops", f"must be >= 1, got {self.n_loops}")
        require(self.kv_latent_ratio >= 1 and self.d_model % self.kv_latent_ratio == 0,
                "CARTConfig.kv_latent_ratio", f"must divide d_model={self.d_model}, got {self.kv_latent_ratio}")
        require(self.hc_window >= 1, "CARTConfig.hc_window", f"must be >= 1, got {self.hc_window}")
        require(0.0 < self.lti_init < 1.0, "CARTConfig.lti_init", f"must be in (0, 1), got {self.lti_init}")
        require(not (self.unfreeze_kv and self.self_attn_core), "CARTConfig.unfreeze_kv",
                "cannot be combined with self_attn_core (a self-attention core has no anchor)")

    @property
    def d_latent(self) -> int:
        return self.d_model // self.kv_latent_ratio

    def runtime_kwargs(self) -> frozenset[str]:
        return frozenset({"n_loops"})

    def kv_cache_values_per_token(self, n_loops: int | None = None) -> int:
        """MLA latents (d_c each) of the prelude layers, the coda and the anchor; X caches one
        anchor latent per loop and W one self-attention latent per loop instead (CART.new_cache)."""
        R = self.n_loops if n_loops is None else n_loops
        per_loop = 1 if self.unfreeze_kv or self.self_attn_core else 0
        once = 0 if per_loop else 1  # the frozen anchor
        return self.d_latent * (self.n_prelude + 1 + once + per_loop * R)

    # ---- accounting ----
    def _parts(self) -> dict[str, int]:
        """Matmul weights of each kind of block (no norms)."""
        d, dc = self.d_model, self.d_latent
        ffn = 3 * d * self.ffn_hidden
        latent_kv = d * dc + dc * 2 * d  # W_down, W_up
        mla = 2 * d * d + latent_kv  # q + o + latent kv
        return {
            "layer": mla + ffn,
            "anchor_kv": 0 if self.self_attn_core else latent_kv,
            "core": (mla if self.self_attn_core else 2 * d * d) + ffn,  # a cross-attending core has no K/V
        }

    def count_params(self) -> dict[str, int]:
        d, parts = self.d_model, self._parts()
        layer = parts["layer"] + 2 * d  # two RMSNorm gains
        anchor = parts["anchor_kv"] + (d if parts["anchor_kv"] else 0)  # + the anchor's norm
        core = parts["core"] + 2 * d
        n_blocks = self.n_loops if self.unshare_core else 1
        machinery = d + (0 if self.disable_hyperconnection else self.hc_window)  # LTI theta, HC logits
        stored = self.vocab_size * d + self.n_prelude * layer + anchor + n_blocks * core + machinery + layer + d
        reuse = 0 if self.unshare_core else (self.n_loops - 1) * core
        if self.unfreeze_kv:  # the anchor projection runs every iteration instead of once
            reuse += (self.n_loops - 1) * anchor
        return {"stored": stored, "effective": stored + reuse}

    def forward_flops(self, seq_len: int) -> int:
        T, R, parts = seq_len, self.n_loops, self._parts()
        anchor_calls = R if self.unfreeze_kv else 1
        weights = (self.n_prelude + 1) * parts["layer"] + anchor_calls * parts["anchor_kv"] + R * parts["core"]
        return 2 * weights * T + (self.n_prelude + R + 1) * 4 * T * T * self.d_model
