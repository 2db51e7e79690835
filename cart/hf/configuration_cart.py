"""Hugging Face config of a model of this project (any family of cart.models).

`cart_model` is the project's own model config as a dict (with its `arch`), exactly what a run's
config.json records under "model". RUNTIME_ARGS are the inference-time arguments of the families'
forward (CART's loop count `n_loops` and adaptive `exit_threshold`, the attention `pattern` of RAT+
and Dense, LRT's `lrt_mode`): each is a config field too, the default of every call that does not
pass one (None: the model's own default); a family refuses the ones it does not take.

Imports only transformers and its sibling families.py (in an exported folder, the generated one
naming the folder's family): this file is copied into exported model folders.
"""
from transformers import PretrainedConfig

# transformers registers the model class it loads from a folder under this config class, and reuses
# that registration for any later folder whose config class is the same module: the module is named
# by the folder's name and a hash of this file and its relative imports. Importing the family makes
# that hash cover the family's source, so two exports of one name (a CART and a Dense folder both
# called "hf") never share a model class in one process.
from .families import ARCH

# the union of the families' runtime_kwargs() (cart.models; tests/test_export.py checks it)
RUNTIME_ARGS = ("n_loops", "exit_threshold", "pattern", "lrt_mode")


class CartLMConfig(PretrainedConfig):
    model_type = "cart_lm"

    def __init__(self, cart_model: dict | None = None, n_loops: int | None = None,
                 exit_threshold: float | None = None, pattern: str | None = None, lrt_mode: str | None = None,
                 max_position_embeddings: int = 1024, **kwargs):
        self.cart_model = dict(cart_model or {})
        arch = self.cart_model.get("arch")
        if ARCH is not None and arch is not None and arch != ARCH:
            raise ValueError(f"cart_model.arch: this folder holds the {ARCH!r} family, the config asks for {arch!r}")
        self.n_loops, self.exit_threshold, self.pattern, self.lrt_mode = n_loops, exit_threshold, pattern, lrt_mode
        # the context the model was trained at: lm-eval and generation read it as the window
        self.max_position_embeddings = max_position_embeddings
        self.vocab_size = self.cart_model.get("vocab_size")
        self.hidden_size = self.cart_model.get("d_model")
        kwargs.setdefault("tie_word_embeddings", True)  # the LM head is the embedding matrix
        super().__init__(**kwargs)
