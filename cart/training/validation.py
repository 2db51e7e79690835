"""Validation loss, perplexity and bits per byte."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from ..device import autocast
from ..models.base import IGNORE_INDEX
from ..models.layers import lm_loss


class NonFiniteEvaluation(ValueError):
    """An evaluation that came out NaN or infinite: the model's logits are not finite (its weights,
    or its forward at the evaluated setting). Recorded as a failure, never as a number."""


@torch.no_grad()
def eval_loss(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
              on_batch: Callable[[nn.Module, torch.Tensor], None] | None = None, **runtime) -> tuple[float, int]:
    """Mean next-token loss (nats) over all target tokens in `batches`, and the token count.
    `runtime`: the family's inference-time arguments (CART's n_loops, ...); `on_batch(model,
    targets)` after each batch's forward (e.g. to read what the model noted of it)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype):
            logits = model(x, **runtime)
        total += lm_loss(logits, y, reduction="sum").item()
        if on_batch is not None:
            on_batch(model, y)
        count += int((y != IGNORE_INDEX).sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("eval_loss: no target tokens to evaluate")
    return total / count, count


def perplexity(loss_nats: float) -> float:
    return math.exp(min(loss_nats, 700.0))


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    """BPB = (loss / ln 2) * tokens/bytes, i.e. log2(PPL) / (bytes per token) for that text."""
    return loss_nats / math.log(2) / bytes_per_token
