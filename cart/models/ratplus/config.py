"""Config and accounting of RAT+ (docs/ratplus.md): recurrence-augmented attention, trained dense
(with active recurrence learning) and run at a dilated/local/hybrid pattern at inference.

Our adaptation (docs/ratplus.md, This project's adaptation): the RAT+ mixer replaces attention in our Dense backbone (pre-norm,
RMSNorm, SwiGLU FFN, tied embedding), so RAT+ and the Dense control run at the same patterns and
differ in the mixer alone. Patterns are strings (patterns.py) so params, run names and configs
hold them as they are.

Per layer: 5d^2 input projection [o, q, k, v, f] (4d^2 without the recurrence gate f), d^2 output,
SwiGLU, two RMSNorm gains; plus the tied V x d embedding and the final norm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..base import ConfigBase, require
from ..patterns import DENSE, LayerPattern, head_patterns, layer_patterns, stored_slots, visible_count

# Elementwise FLOPs of the recurrence per state channel and token: g * h, (1 - g) * k, their sum
# (reconstructed count; the gate's sigmoid and 1 - g, shared by k and v, are not counted).
RECURRENCE_FLOPS_PER_CHANNEL = 3
STATE_BYTES = 4  # the recurrent state is carried in fp32 whatever the model's dtype (ratplus.RecurrentState)


@dataclass(frozen=True)
class RATPlusConfig(ConfigBase):
    n_layers: int = 7
    # Active recurrence learning: every batch makes a sparse update (all layers at sparse_pattern)
    # then a dense one, two optimizer steps (the paper's pretraining). False: one update at train_pattern.
    joint_train: bool = True
    # The paper's sparse sub-step is D=64, W=P=0 at T=4096 (64 strided keys, each a summary of 64
    # tokens). (reconstructed) At smoke scale (T=128) D=64 would leave 2 strided keys; D16 keeps 8,
    # each summarising 16 tokens, and matches the largest dilation we evaluate (train at the largest D).
    sparse_pattern: str = "D16"
    # A run without joint training trains at this fixed pattern: "dense" for dense-only
    # pretraining, the target pattern (e.g. "D8") for resolution adaptation.
    train_pattern: str = "dense"
    eval_pattern: str = "dense"  # the pattern of a plain forward in eval mode
    apply_recurrence: bool = True  # False: the gated-attention baseline (spec apply_re=false), no gate f
    # How a sparse pattern's attention runs (pattern_attention.py; the same numbers): "sdpa" under a
    # mask, or "flex", the spec's two-branch form, cheaper for long dilated prefill on a GPU.
    attention_kernel: Literal["sdpa", "flex"] = "sdpa"

    arch: ClassVar[str] = "ratplus"
    model_class: ClassVar[str] = "cart.models.ratplus.model:RATPlus"

    def _validate(self) -> None:
        require(self.n_layers >= 1, "RATPlusConfig.n_layers", f"must be >= 1, got {self.n_layers}")
        for name in ("sparse_pattern", "train_pattern", "eval_pattern"):
            self.patterns(name)
        if self.joint_train:
            require(all(not p.is_dense for p in self.patterns("sparse_pattern")), "RATPlusConfig.sparse_pattern",
                    f"joint training needs a sparse pattern in every layer, got {self.sparse_pattern!r}")
            require(self.train_pattern == "dense", "RATPlusConfig.train_pattern",
                    f"is for runs without joint training (joint training runs sparse_pattern then dense), "
                    f"got {self.train_pattern!r} with joint_train=True")

    def patterns(self, name: str) -> tuple[LayerPattern, ...]:
        """The per-layer patterns of the pattern field `name` (e.g. "sparse_pattern"); a per-head
        one must split n_heads evenly."""
        return layer_patterns(getattr(self, name), self.n_layers, f"RATPlusConfig.{name}", self.n_heads)

    def train_substeps(self) -> tuple[dict, ...]:
        if self.joint_train:  # sparse first, as the authors' trainer
            return {"pattern": self.patterns("sparse_pattern")}, {"pattern": (DENSE,) * self.n_layers}
        return ({"pattern": self.patterns("train_pattern")},)

    def train_substep_names(self) -> tuple[str, ...]:
        """Logged as loss_sparse and loss_dense, the two sub-steps' losses the authors log."""
        return ("sparse", "dense") if self.joint_train else ("train",)

    def runtime_kwargs(self) -> frozenset[str]:
        return frozenset({"pattern"})

    # ---- accounting ----
    @property
    def mixer_weights(self) -> int:
        """Matmul weights of one mixer: the input projection [o, q, k, v, (f)] and the output."""
        return (5 if self.apply_recurrence else 4) * self.d_model ** 2 + self.d_model ** 2

    def count_params(self) -> dict[str, int]:
        d = self.d_model
        layer = self.mixer_weights + 3 * d * self.ffn_hidden + 2 * d  # + two RMSNorm gains
        stored = self.vocab_size * d + self.n_layers * layer + d  # tied embedding, final norm
        return {"stored": stored, "effective": stored}

    def forward_flops(self, seq_len: int) -> int:
        """At the dense pattern, in the project's convention (4 T^2 d per attention, as Dense and
        CART), plus the recurrence; `attention_flops` counts a pattern's visible keys exactly."""
        T, weights = seq_len, self.mixer_weights + 3 * self.d_model * self.ffn_hidden
        return self.n_layers * (2 * weights * T + 4 * T * T * self.d_model) + recurrence_flops(self, T)


def attention_flops(config: ConfigBase, pattern, seq_len: int) -> int:
    """Forward attention FLOPs of one sequence under `pattern` (a string, Pattern, HeadPatterns or
    per-layer list), summed over layers and heads: 4 head_dim sum_t |S_pi(t)| per head, 4 d sum_t
    |S_pi(t)| for a layer whose heads share pi (docs/ratplus.md, Cost accounting: q.k and p.v, 2 FLOPs
    per multiply-add, over the keys each query sees). For RAT+ and the Dense control (any config with
    n_layers). Dense: 2 d T (T + 1); W = P = 0: about 4 d T + 2 d T^2 / D."""
    total = 0
    for layer in layer_patterns(pattern, config.n_layers, n_heads=config.n_heads):
        if layer.topk:
            raise ValueError(f"pattern: {layer} selects blocks by content; its FLOPs depend on the data")
        heads = head_patterns(layer, config.n_heads)
        visible = {p: sum(visible_count(p, t) for t in range(seq_len)) for p in set(heads)}
        total += sum(4 * config.head_dim * visible[p] for p in heads)
    return total


def kv_cache_bytes(config: ConfigBase, pattern, seq_len: int, bytes_per_value: int) -> int:
    """Decode-cache bytes of one sequence of seq_len tokens under `pattern`, summed over layers, as
    the cache allocates them (PatternKVCache, RecurrentState): the keys and values of each head's
    `stored_slots` positions (2 head_dim values each, at bytes_per_value: the model's dtype), plus
    RAT+'s recurrent state (k~, v~: 2 d values per layer, always fp32) when it has a recurrence.
    The spec's P + W + 1 + floor(T / D) (`cache_slots`) counts the current token's key too, which
    is attended from its projection and never stored. Not counted: the cache's int64 position of
    each slot per row (bookkeeping of ragged batches, shared by the heads)."""
    d, hd = config.d_model, config.head_dim
    state = 2 * d * STATE_BYTES if isinstance(config, RATPlusConfig) and config.apply_recurrence else 0
    return sum(sum(2 * hd * stored_slots(p, seq_len) * bytes_per_value for p in head_patterns(layer, config.n_heads))
               + state for layer in layer_patterns(pattern, config.n_layers, n_heads=config.n_heads))


def recurrence_flops(config: RATPlusConfig, seq_len: int) -> int:
    """Elementwise FLOPs of the gated recurrence of k and v over one sequence (O(T d) per layer)."""
    if not config.apply_recurrence:
        return 0
    return config.n_layers * RECURRENCE_FLOPS_PER_CHANNEL * 2 * config.d_model * seq_len


__all__ = ["RATPlusConfig", "attention_flops", "kv_cache_bytes", "recurrence_flops"]
