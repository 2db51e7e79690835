"""Config and accounting of the Dense baseline: n_layers of standard MHA + SwiGLU + RoPE."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..base import ConfigBase, require


@dataclass(frozen=True)
class DenseConfig(ConfigBase):
    """The baseline: n_layers of standard MHA + SwiGLU + RoPE, same embedding and norms as CART."""

    n_layers: int = 7

    arch: ClassVar[str] = "dense"
    model_class: ClassVar[str] = "cart.models.dense.model:Dense"

    def _validate(self) -> None:
        require(self.n_layers >= 1, "DenseConfig.n_layers", f"must be >= 1, got {self.n_layers}")

    def runtime_kwargs(self) -> frozenset[str]:
        return frozenset({"pattern"})  # the Dense control of RAT+: attention at a pattern (dense/model.py)

    def kv_cache_values_per_token(self) -> int:
        return self.n_layers * 2 * self.d_model  # K and V of every layer

    def count_params(self) -> dict[str, int]:
        d = self.d_model
        layer = self.layer_weights + 2 * d  # two RMSNorm gains
        stored = self.vocab_size * d + self.n_layers * layer + d  # tied embedding, final norm
        return {"stored": stored, "effective": stored}

    def forward_flops(self, seq_len: int) -> int:
        return self.n_layers * self.dense_layer_flops(seq_len)
