"""Hugging Face wrapper around a model of this project: `AutoModelForCausalLM` loading, `forward`
returning logits (and the shifted LM loss given labels), and transformers' own `generate()`.

Generation keeps the family's own decode cache (`new_cache` / `forward_cached`; CART: MLA latents,
no per-loop state) instead of transformers' Cache classes, which hold per-layer K/V and could not
carry CART's anchor. It lives in a slot that `generate` passes to every forward call (`cart_cache`),
sized to the generation's max_length; greedy search and sampling use it, every other search
(beam search, assisted decoding) needs `use_cache=False`. Without a cache each step re-runs the
full forward, which is exact too (LRT's forward and cache both default to its exact recurrence). The family's inference-time arguments (RUNTIME_ARGS: `n_loops`,
`exit_threshold`, `pattern`, `lrt_mode`) come from a call, else from the config; one the family does
not take is refused (ValueError naming it), never dropped.

Copied, with configuration_cart.py and the family's source, into exported folders: it imports
only transformers, torch and its siblings.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_cart import RUNTIME_ARGS, CartLMConfig
from .families import build_model, config_from_dict


class CartCacheSlot:
    """Where generate() keeps the model's decode cache between steps: created on the first
    forward, when the prompt's left padding (from its attention mask) is known."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.cache = None


class CartLMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = CartLMConfig
    base_model_prefix = "cart"
    main_input_name = "input_ids"
    _no_split_modules = []

    def __init__(self, config: CartLMConfig):
        super().__init__(config)
        self.cart = build_model(config_from_dict(config.cart_model))
        self.runtime()  # a config default the family does not take fails here, at load
        self.post_init()

    def _init_weights(self, module):
        """Weights come from the checkpoint. The buffers it does not hold (non-persistent: RoPE's
        tables, the loop-index sinusoid) are constants of the config; transformers allocates them
        without values, so every module holding such buffers rebuilds them (`build_tables`)."""
        if hasattr(module, "build_tables"):
            device = next((b.device for b in module.buffers(recurse=False)), None)
            module.build_tables(None if device is None or device.type == "meta" else device)

    def get_input_embeddings(self):
        return self.cart.tok_emb

    def set_input_embeddings(self, value):
        self.cart.tok_emb = value

    def runtime(self, **call) -> dict:
        """The family's inference-time arguments for one call: each of RUNTIME_ARGS from the call,
        else from the config; None leaves the model's default."""
        args = {name: call.get(name) if call.get(name) is not None else getattr(self.config, name, None)
                for name in RUNTIME_ARGS}
        args = {name: value for name, value in args.items() if value is not None}
        accepted = self.cart.config.runtime_kwargs()
        for name in args:
            if name not in accepted:
                raise ValueError(f"{name}: the {self.cart.config.arch!r} family does not take it (it takes "
                                 f"{sorted(accepted) or 'no inference-time argument'})")
        return args

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, n_loops: int | None = None,
                exit_threshold: float | None = None, pattern: str | None = None, lrt_mode: str | None = None,
                cart_cache: CartCacheSlot | None = None, return_dict: bool | None = None, **kwargs) -> CausalLMOutput:
        """Logits (B, T, V). A left-padded batch (attention_mask zeros before the tokens) is
        decoded as each row alone; right padding needs nothing (the model is causal). With labels,
        the mean cross-entropy of position t predicting labels[t + 1] (-100 = ignored), as in transformers."""
        runtime = self.runtime(n_loops=n_loops, exit_threshold=exit_threshold, pattern=pattern, lrt_mode=lrt_mode)
        if cart_cache is not None:  # generate(): the prompt, then one token per row per call
            if cart_cache.cache is None:
                pad = left_padding(attention_mask, input_ids)
                cart_cache.cache = self.cart.new_cache(input_ids.shape[0], cart_cache.max_len, pad=pad, **runtime)
            logits = self.cart.forward_cached(input_ids, cart_cache.cache)
        elif (pad := left_padding(attention_mask, input_ids)) is not None and bool(pad.any()):
            if not self.cart.has_cached_decoding():
                raise ValueError(f"attention_mask: {type(self.cart).__name__} cannot run a left-padded batch "
                                 f"(it has no cached decoding); pad on the right")
            cache = self.cart.new_cache(input_ids.shape[0], input_ids.shape[1], pad=pad, **runtime)
            logits = self.cart.forward_cached(input_ids, cache)
        else:
            logits = self.cart(input_ids, **runtime)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    # ---- transformers' generation loop, with the family's cache ----
    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size,
                                      max_cache_length, *args, **kwargs):
        """Called by generate() before the first step (the same signature in transformers 5.x)."""
        if not generation_config.use_cache or not self.cart.has_cached_decoding():
            return
        mode = getattr(generation_mode, "value", generation_mode)
        if mode not in ("greedy_search", "sample"):
            raise ValueError(f"generate: {mode} is not supported with this model's cache (it cannot reorder "
                             f"or crop rows); pass use_cache=False")
        model_kwargs["cart_cache"] = CartCacheSlot(max_cache_length + 1)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, cart_cache=None, **kwargs):
        if cart_cache is not None and cart_cache.cache is not None:
            input_ids = input_ids[:, cart_cache.cache.length:]  # only the tokens the cache has not seen
        return {"input_ids": input_ids, "attention_mask": attention_mask, "cart_cache": cart_cache,
                **{name: kwargs.get(name) for name in RUNTIME_ARGS}}


def left_padding(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor | None:
    """Each row's count of leading pad positions (attention_mask 0), or None without a mask;
    a mask with a gap between real tokens is an error."""
    if attention_mask is None:
        return None
    real = attention_mask.to(input_ids.device).bool()
    if real.shape != input_ids.shape:
        raise ValueError(f"attention_mask: shape {tuple(real.shape)} != input_ids' {tuple(input_ids.shape)}")
    pad = real.int().argmax(dim=1)  # first real token
    n_real = real.sum(dim=1)
    pos = torch.arange(real.shape[1], device=real.device)[None, :]
    contiguous = (pos >= pad[:, None]) & (pos < (pad + n_real)[:, None])
    if not torch.equal(contiguous, real) or bool((n_real == 0).any()):
        raise ValueError("attention_mask: each row must be pads, then its tokens, then pads (and hold a token)")
    return pad
