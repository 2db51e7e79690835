"""Model configurations. Each dataclass validates itself on construction and raises a
ValueError that names the offending field, so a bad params.yaml fails before any work starts.

Choices the paper leaves open are marked (reconstructed) and exposed as fields.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, get_type_hints


def _check_fields(obj) -> None:
    """Type-check every field against its annotation (int, float, bool, str, optional)."""
    hints = get_type_hints(type(obj))
    for f in fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        allowed = getattr(hint, "__args__", (hint,))
        if value is None and type(None) in allowed:
            continue
        ok = False
        for t in allowed:
            if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                ok = True
            elif t is int and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            elif t in (bool, str) and isinstance(value, t):
                ok = True
        if not ok:
            names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
            raise ValueError(f"{type(obj).__name__}.{f.name}: expected {names}, got {value!r}")


def _require(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{field}: {msg}")


@dataclass(frozen=True)
class _Common:
    """Fields shared by CART and Dense: vocabulary, width, attention and FFN geometry."""

    vocab_size: int = 32_000
    d_model: int = 1024
    head_dim: int = 64
    ffn_multiple: int = 256  # SwiGLU hidden = ffn_multiple * ceil(int(8d/3) / ffn_multiple)
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def _validate_common(self) -> None:
        _check_fields(self)
        name = type(self).__name__
        for f in ("vocab_size", "d_model", "head_dim", "ffn_multiple"):
            _require(getattr(self, f) > 0, f"{name}.{f}", f"must be positive, got {getattr(self, f)}")
        _require(self.d_model % self.head_dim == 0, f"{name}.d_model",
                 f"must be divisible by head_dim={self.head_dim}, got {self.d_model}")
        _require(self.head_dim % 2 == 0, f"{name}.head_dim", f"must be even for RoPE, got {self.head_dim}")
        _require(self.rope_theta > 0, f"{name}.rope_theta", "must be positive")
        _require(self.norm_eps > 0, f"{name}.norm_eps", "must be positive")
        _require(self.init_std > 0, f"{name}.init_std", "must be positive")

    @property
    def n_heads(self) -> int:
        return self.d_model // self.head_dim

    @property
    def ffn_hidden(self) -> int:
        m = self.ffn_multiple
        return m * math.ceil(int(8 * self.d_model / 3) / m)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"arch": self.arch}


@dataclass(frozen=True)
class CARTConfig(_Common):
    """CART(d, P, R): P prelude layers, a once-computed MLA anchor, one core block looped R times,
    one coda layer. The flags at the bottom are the paper's ablations (spec section 1)."""

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

    arch = "cart"

    def __post_init__(self):
        self._validate_common()
        _require(self.n_prelude >= 1, "CARTConfig.n_prelude", f"must be >= 1, got {self.n_prelude}")
        _require(self.n_loops >= 1, "CARTConfig.n_loops", f"must be >= 1, got {self.n_loops}")
        _require(self.kv_latent_ratio >= 1 and self.d_model % self.kv_latent_ratio == 0,
                 "CARTConfig.kv_latent_ratio",
                 f"must divide d_model={self.d_model}, got {self.kv_latent_ratio}")
        _require(self.hc_window >= 1, "CARTConfig.hc_window", f"must be >= 1, got {self.hc_window}")
        _require(0.0 < self.lti_init < 1.0, "CARTConfig.lti_init", f"must be in (0, 1), got {self.lti_init}")
        _require(not (self.unfreeze_kv and self.self_attn_core), "CARTConfig.unfreeze_kv",
                 "cannot be combined with self_attn_core (a self-attention core has no anchor)")

    @property
    def d_latent(self) -> int:
        return self.d_model // self.kv_latent_ratio


@dataclass(frozen=True)
class DenseConfig(_Common):
    """The baseline: n_layers of standard MHA + SwiGLU + RoPE, same embedding and norms."""

    n_layers: int = 7

    arch = "dense"

    def __post_init__(self):
        self._validate_common()
        _require(self.n_layers >= 1, "DenseConfig.n_layers", f"must be >= 1, got {self.n_layers}")


ModelConfig = CARTConfig | DenseConfig

ARCHS = {"cart": CARTConfig, "dense": DenseConfig}


def config_from_dict(d: dict, where: str = "model") -> ModelConfig:
    """Build a model config from a plain dict with an `arch` key; unknown keys are an error."""
    d = dict(d)
    arch = d.pop("arch", "cart")
    if arch not in ARCHS:
        raise ValueError(f"{where}.arch: unknown architecture {arch!r}; valid: {sorted(ARCHS)}")
    cls = ARCHS[arch]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for arch={arch!r}; valid: {sorted(known)}")
    return cls(**d)
