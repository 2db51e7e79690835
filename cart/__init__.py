"""CART: Context-Anchored Recurrent Transformer, its ablations and the Dense baseline."""
from .accounting import count_params, forward_flops, mfu, peak_flops_for, train_flops_per_token
from .config import CARTConfig, DenseConfig, ModelConfig, config_from_dict
from .model import CART, CoreBlock, Dense, HyperConnection, LTIGate, build_model, generate

__all__ = [
    "CART", "CARTConfig", "CoreBlock", "Dense", "DenseConfig", "HyperConnection", "LTIGate",
    "ModelConfig", "build_model", "config_from_dict", "count_params", "forward_flops", "generate",
    "mfu", "peak_flops_for", "train_flops_per_token",
]
