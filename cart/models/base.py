"""What every model family's config shares: the validated frozen dataclass base, the common
fields (vocabulary, width, attention and FFN geometry) and the accounting interface.

Torch-free on purpose: the summaries, the results store and the report read configs and count
parameters without importing torch. Each family's config module (`<family>_config.py`) adds its
own fields, validation and accounting; its model module (`<family>.py`) holds the torch code.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, get_type_hints

from ..params import check_value

IGNORE_INDEX = -1  # a target the loss skips (a window's last target when it would cross domains)


def check_fields(obj) -> None:
    """Type-check every field against its annotation, with the same rules (and messages) as
    params.yaml's loader: a bool is not an int, an int is a valid float, Literal lists its choices."""
    hints = get_type_hints(type(obj))
    for f in fields(obj):
        check_value(hints[f.name], getattr(obj, f.name), f"{type(obj).__name__}.{f.name}")


def require(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{field}: {msg}")


def check_int_arg(name: str, value, minimum: int = 1) -> int:
    """Validate a runtime integer argument such as `n_loops` at the API boundary, one message
    naming it, instead of a failure deep inside torch."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name}: expected an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class ConfigBase:
    """Vocabulary, width, attention and FFN geometry, shared by every family.

    Subclasses set `arch` (the registry key, stored in run configs) and `model_class`
    ("module:Class" of the torch model, imported only when a model is built), validate their own
    fields in `_validate`, and implement `count_params` and `forward_flops`."""

    vocab_size: int = 32_000
    d_model: int = 1024
    head_dim: int = 64
    ffn_multiple: int = 256  # SwiGLU hidden = ffn_multiple * ceil(int(8d/3) / ffn_multiple)
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    arch: ClassVar[str] = ""
    model_class: ClassVar[str] = ""

    def __post_init__(self):
        check_fields(self)
        name = type(self).__name__
        for f in ("vocab_size", "d_model", "head_dim", "ffn_multiple"):
            require(getattr(self, f) > 0, f"{name}.{f}", f"must be positive, got {getattr(self, f)}")
        require(self.head_dim % 2 == 0, f"{name}.head_dim", f"must be even for RoPE, got {self.head_dim}")
        require(self.d_model % self.head_dim == 0, f"{name}.head_dim",
                f"must divide d_model={self.d_model}, got {self.head_dim}")
        require(self.rope_theta > 0, f"{name}.rope_theta", "must be positive")
        require(self.norm_eps > 0, f"{name}.norm_eps", "must be positive")
        require(self.init_std > 0, f"{name}.init_std", "must be positive")
        self._validate()

    def _validate(self) -> None:
        """Family-specific checks; ValueError naming `<Config>.<field>`."""

    @property
    def n_heads(self) -> int:
        return self.d_model // self.head_dim

    @property
    def ffn_hidden(self) -> int:
        m = self.ffn_multiple
        return m * math.ceil(int(8 * self.d_model / 3) / m)

    @property
    def layer_weights(self) -> int:
        """Matmul weights of one standard layer: MHA (q, k, v, o) + SwiGLU (no norms)."""
        return 4 * self.d_model ** 2 + 3 * self.d_model * self.ffn_hidden

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"arch": self.arch}

    # ---- accounting (the paper's conventions; see cart/accounting.py) ----
    def count_params(self) -> dict[str, int]:
        """{"stored": weights held once, "effective": weights applied per token}."""
        raise NotImplementedError

    def forward_flops(self, seq_len: int) -> int:
        """Forward FLOPs for one sequence of seq_len tokens, embedding and LM head excluded:
        2 x matmul weights applied x T + 4 T^2 d per full causal attention."""
        raise NotImplementedError

    def dense_layer_flops(self, seq_len: int) -> int:
        """Forward FLOPs of one standard (Dense) layer at this width: the unit the paper's FLOPs
        table compares architectures in."""
        return 2 * self.layer_weights * seq_len + 4 * seq_len * seq_len * self.d_model

    def train_passes(self) -> float:
        """Forward(+backward) passes over each training token per batch, relative to one plain
        forward: 1 here; ~2 for LRT's interleaved training, 2 for RAT+'s joint training. Training
        MFU and training-compute axes multiply by it; `forward_flops` stays one inference forward."""
        return float(len(self.train_substeps()))

    def train_substeps(self) -> tuple[dict, ...]:
        """Forward keyword arguments of each optimizer update made per batch: one plain update
        by default; a family trained jointly under several settings (RAT+) returns several."""
        return ({},)

    def train_substep_names(self) -> tuple[str, ...]:
        """A name for each of `train_substeps()`: a family with several logs each one's loss as
        `loss_<name>` beside `loss` (the last sub-step's)."""
        return tuple(f"substep{i}" for i in range(len(self.train_substeps())))

    def runtime_kwargs(self) -> frozenset[str]:
        """Inference-time keyword arguments the model's forward accepts (e.g. `n_loops`)."""
        return frozenset()

    def validation_kwargs(self) -> dict:
        """Runtime arguments of the training stage's periodic validation loss (the curves and the
        run summary's final evaluation): none by default, the model's own default forward."""
        return {}

    def training_kwargs(self) -> frozenset[str]:
        """Keyword arguments the model's forward accepts from training alone (e.g. CART's
        `backprop_loops`): they change gradients, never outputs, so inference does not offer them."""
        return frozenset()

    def kv_cache_values_per_token(self, **runtime) -> int:
        """Values the model's decode cache holds per token of context under the given runtime
        arguments (e.g. CART's n_loops); bytes = values x the cache dtype's size."""
        raise NotImplementedError(f"{type(self).__name__} has no cached decoding")
