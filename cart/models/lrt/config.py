"""Config and accounting of LRT (Latent Recurrent Transformer) on our Dense backbone
(docs/lrt.md, with its section "This project's adaptation").

LRT is Dense plus a recurrent memory: m_t = RMSNorm(h_t^(source)), the source layer's output at
token t, is read by token t + 1 (m~_t = m_{t-1}, zero at a row's first token) at every layer,
(a) as gated keys/values, k += a * W^K_fb m~, v += a * W^V_fb m~, with per-head gates
    a = 2 sigmoid(G u[..., :gate_channels]) of the layer's normed input u (G starts at zero, a = 1);
(b) as a residual injection x <- x + gamma_i * m~ before block i.
`shared` holds one (W^K_fb, W^V_fb) pair for all layers, `layerwise` one pair per layer; gates
and gammas are per layer in both.

Accounting:
    stored    = Dense of the same shape + overhead (nothing is reused per token: effective = stored)
    overhead  = [inject_kv] (pairs * 2 d^2 + L * gate_channels * H) + [inject_resid] L + d
                pairs = 1 (shared) or L (layerwise); + d is the memory's RMSNorm gain.
                The spec's 2 d d_kv + L (1 + 64 H) with d_kv = d (MHA) and our gate: one a_fb per
                head (gate_channels * H weights per layer) instead of nanochat's triple gate.
    forward   = Dense's + 2 T ([inject_kv] (pairs * 2 d^2 + L * gate_channels * H)): the shared
                pair projects the memory once per token and every layer reuses it.
    training  = pass 0 over every token + S subset passes that together cover every token once:
                2 forward passes per training token (`train_passes`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from ..base import ConfigBase, require
from ..dense.config import DenseConfig

LRT_MODES = ("merged", "sequential", "zero")  # inference modes of the forward (`lrt_mode`)
# The default of every forward and of decoding: the exact recurrence, so the plain forward, a
# left-padded batch and cached decoding give a row the same logits; "merged" and "zero" are asked
# for by name.
DEFAULT_LRT_MODE = "sequential"


@dataclass(frozen=True)
class LRTConfig(ConfigBase):
    n_layers: int = 8
    variant: Literal["shared", "layerwise"] = "shared"  # (reconstructed) shared is the paper's default
    # The memory is the output of layer `source_layer`, 1-based (1..n_layers; n_layers = the last
    # layer). None: round(0.75 * n_layers), halves rounded up, the "upper-middle" layer the paper's
    # ablation found best (reconstructed: the paper gives no index; the released code uses the last).
    source_layer: int | None = None
    inject_kv: bool = True  # (a) gated feedback keys/values in every layer's attention
    inject_resid: bool = True  # (b) x <- x + gamma_i * m~ before every block
    interleaved_passes: int = 2  # S: subset passes after pass 0; subset i = positions t with t % S == i
    # (reconstructed) no gradient through the memory read from H or the buffer into the passes that
    # made them; the parameters that read it (W_fb, gates, gammas, the memory norm's gain) still learn
    detach_memory: bool = False
    resid_gate_init: float = 0.1  # initial gamma_i (the spec's 0.1)
    # (reconstructed) the gate reads the first gate_channels channels of the normed input (the
    # spec's u[..., :32]; the released code reads all d)
    gate_channels: int = 32

    arch: ClassVar[str] = "lrt"
    model_class: ClassVar[str] = "cart.models.lrt.model:LRT"

    def _validate(self) -> None:
        L = self.n_layers
        require(L >= 1, "LRTConfig.n_layers", f"must be >= 1, got {L}")
        require(self.source_layer is None or 1 <= self.source_layer <= L, "LRTConfig.source_layer",
                f"must be None or a 1-based layer index in 1..{L} (n_layers), got {self.source_layer}")
        # Neither injection leaves Dense at twice Dense's training cost: ask for arch "dense" instead.
        require(self.inject_kv or self.inject_resid, "LRTConfig.inject_kv",
                "inject_kv and inject_resid are both off, so the memory reaches nothing; turn one on "
                "(or use arch 'dense')")
        require(self.interleaved_passes >= 1, "LRTConfig.interleaved_passes",
                f"must be >= 1 (S subset passes), got {self.interleaved_passes}")
        require(math.isfinite(self.resid_gate_init), "LRTConfig.resid_gate_init",
                f"must be finite, got {self.resid_gate_init}")
        require(1 <= self.gate_channels <= self.d_model, "LRTConfig.gate_channels",
                f"must be in 1..d_model={self.d_model}, got {self.gate_channels}")

    @property
    def source(self) -> int:
        """The resolved 1-based source layer."""
        return (3 * self.n_layers + 2) // 4 if self.source_layer is None else self.source_layer

    @property
    def n_feedback_pairs(self) -> int:
        return 1 if self.variant == "shared" else self.n_layers

    def runtime_kwargs(self) -> frozenset[str]:
        return frozenset({"lrt_mode"})

    def validation_kwargs(self) -> dict:
        """Training's validation scores the parallel training passes ("merged"), named here since
        it is not the default: T sequential steps per batch would slow every evaluation during
        training, and the evaluate stage reports every mode (`eval_lrt.modes`) anyway."""
        return {"lrt_mode": "merged"}

    def train_passes(self) -> float:
        return 2.0

    def dense(self) -> DenseConfig:
        """The Dense baseline of the same shape (the backbone LRT adds its memory to)."""
        shared = {f: getattr(self, f) for f in ("vocab_size", "d_model", "head_dim", "ffn_multiple",
                                                "rope_theta", "norm_eps", "init_std", "n_layers")}
        return DenseConfig(**shared)

    # ---- accounting ----
    def _feedback_weights(self) -> int:
        """Matmul weights of the KV feedback: the W_fb pairs and the per-layer gates."""
        if not self.inject_kv:
            return 0
        d = self.d_model
        return self.n_feedback_pairs * 2 * d * d + self.n_layers * self.gate_channels * self.n_heads

    def count_params(self) -> dict[str, int]:
        overhead = self._feedback_weights() + (self.n_layers if self.inject_resid else 0) + self.d_model
        stored = self.dense().count_params()["stored"] + overhead
        return {"stored": stored, "effective": stored, "overhead": overhead}

    def forward_flops(self, seq_len: int) -> int:
        return self.dense().forward_flops(seq_len) + 2 * self._feedback_weights() * seq_len
