"""CART: Context-Anchored Recurrent Transformer, its ablations, the Dense baseline, and the
other efficient designs of the project, as model families of one registry (cart.models).

Exports are lazy: `import cart` (and the torch-free stages that import cart.results or
cart.params) does not import torch; `from cart import build_model` does when it is first used.
"""
import importlib

_EXPORTS = {
    "ARCHS": "cart.models", "CARTConfig": "cart.models", "DenseConfig": "cart.models", "LRTConfig": "cart.models",
    "RATPlusConfig": "cart.models", "ModelConfig": "cart.models", "build_model": "cart.models",
    "config_from_dict": "cart.models", "count_params": "cart.models", "forward_flops": "cart.models",
    "mfu": "cart.accounting", "peak_flops_for": "cart.accounting", "train_flops_per_token": "cart.accounting",
    "CART": "cart.models.cart.model", "CoreBlock": "cart.models.cart.model", "HyperConnection": "cart.models.cart.model",
    "LTIGate": "cart.models.cart.model", "Dense": "cart.models.dense.model", "LRT": "cart.models.lrt.model",
    "RATPlus": "cart.models.ratplus.model", "generate": "cart.generation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cart' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
