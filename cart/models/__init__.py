"""The model families, in one registry.

One folder per family, `cart/models/<family>/`: `config.py` (a torch-free config dataclass: fields,
validation, accounting) and `model.py` (the torch model), plus what belongs to that family alone.
What several families share sits here: base.py (the config base), layers.py (attention, FFN,
norms, caches), patterns.py and pattern_attention.py (attention patterns: RAT+ and its Dense
control). `build_model`, `count_params`, `forward_flops` and the run specs dispatch on the config;
nothing else in the package names a family's modules.

    arch     config                           model                 what
    cart     cart.config.CARTConfig           cart.model.CART       prelude -> anchor K/V -> looped core -> coda
    dense    dense.config.DenseConfig         dense.model.Dense     the standard Transformer baseline
    lrt      lrt.config.LRTConfig             lrt.model.LRT         Dense + the previous token's latent state as memory
    ratplus  ratplus.config.RATPlusConfig     ratplus.model.RATPlus recurrence-augmented attention, run at a pattern

Family modules are imported on first use, so code that handles one family depends (for Python
and for DVC's stage deps) on that family's files alone (cart/code_deps.py).

Every model's forward is `model(idx, targets=None, **runtime)`: logits (B, T, V) without
targets, the mean next-token training loss with them (a training loss that is not a plain
forward, such as LRT's interleaved passes, lives there). `runtime` holds the family's
inference-time arguments (`config.runtime_kwargs()`, e.g. CART's `n_loops`, the attention
`pattern` of RAT+ and of the Dense control, patterns.py).
"""
from __future__ import annotations

import importlib
from dataclasses import fields

from .base import IGNORE_INDEX, ConfigBase

# arch -> (config module, config class); the config names its model as "module:Class"
FAMILIES: dict[str, tuple[str, str]] = {
    "cart": ("cart.config", "CARTConfig"),
    "dense": ("dense.config", "DenseConfig"),
    "lrt": ("lrt.config", "LRTConfig"),
    "ratplus": ("ratplus.config", "RATPlusConfig"),
}
ARCHS = tuple(FAMILIES)
ModelConfig = ConfigBase


def config_class(arch: str, where: str = "model") -> type[ConfigBase]:
    if arch not in FAMILIES:
        raise ValueError(f"{where}.arch: unknown architecture {arch!r}; valid: {sorted(FAMILIES)}")
    module, name = FAMILIES[arch]
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def family_modules(arch: str) -> tuple[str, str]:
    """The dotted module names of a family's config and model (what its runs depend on)."""
    config_module = f"{__name__}.{FAMILIES[arch][0]}"
    return config_module, config_class(arch).model_class.split(":")[0]


def config_from_dict(d: dict, where: str = "model") -> ConfigBase:
    """Build a model config from a plain dict with an `arch` key; unknown keys are an error."""
    d = dict(d)
    cls = config_class(d.pop("arch", "cart"), where)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for arch={cls.arch!r}; valid: {sorted(known)}")
    return cls(**d)


def build_model(config: ConfigBase):
    if not isinstance(config, ConfigBase) or type(config).arch not in FAMILIES:
        raise TypeError(f"build_model: expected a model config of one of {sorted(FAMILIES)}, "
                        f"got {type(config).__name__}")
    module, name = type(config).model_class.split(":")
    return getattr(importlib.import_module(module), name)(config)


def count_params(config: ConfigBase) -> dict[str, int]:
    return config.count_params()


def forward_flops(config: ConfigBase, seq_len: int) -> int:
    return config.forward_flops(seq_len)


def __getattr__(name: str):
    """`from cart.models import CARTConfig` works without importing every family up front."""
    for arch, (_, cls_name) in FAMILIES.items():
        if name == cls_name:
            return config_class(arch)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ARCHS", "ConfigBase", "FAMILIES", "IGNORE_INDEX", "ModelConfig", "build_model", "config_class",
           "config_from_dict", "count_params", "family_modules", "forward_flops"]
