"""The model families the Hugging Face wrapper (modeling_cart.py) can hold: in this package, the
registry of cart.models. An exported folder holds a generated families.py instead, naming the one
family whose source files were copied beside it (cart/hf/export.py), so it needs no `cart` install."""
from ..models import build_model, config_from_dict

ARCH = None  # the family an exported folder holds; here every family of the registry

__all__ = ["ARCH", "build_model", "config_from_dict"]
