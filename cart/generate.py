"""Sampling from any model family."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, n_loops: int | None = None) -> torch.Tensor:
    """Sample without a KV cache: re-run the whole prefix for every token (correct, not fast).
    temperature=0 is greedy."""
    was_training = model.training
    model.eval()
    kwargs = {} if n_loops is None else {"n_loops": n_loops}  # CART: any R at inference
    for _ in range(max_new_tokens):
        logits = model(idx, **kwargs)[:, -1, :].float()
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1)
        idx = torch.cat([idx, nxt], dim=1)
    model.train(was_training)
    return idx
