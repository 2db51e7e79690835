"""Text generation for every model family: one `generate()`.

    out = generate(model, [prompt_a, prompt_b], max_new_tokens=64, temperature=0)       # greedy
    out = generate(model, ids, max_new_tokens=64, attention_mask=mask, top_p=0.9,
                   eos_token_id=2, generator=torch.Generator().manual_seed(0), n_loops=8)

Prompts are a list of 1-D token tensors (any lengths) or a (B, T) tensor, left-padded, with an
`attention_mask` marking its real tokens. Rows are left-padded to one length and decoded together:
with the family's cache (`model.new_cache` / `model.forward_cached`, the contract in
cart/models/layers.py) when it has one, each step feeds one token per row; otherwise every step
re-runs the full forward over each row's tokens (correct, slow). Runtime arguments (CART's
`n_loops`) pass through to the model.

On a GPU, CART and Dense decode from a static cache whose one-token step is captured once as a CUDA
graph and replayed (`cuda_graph`, `GraphedDecodeStep`): a step at small batch is hundreds of small
kernels, and launching them from Python takes longer than running them.

Sampling: temperature 0 is greedy; otherwise logits / temperature, then top-k, then top-p
(nucleus), then one draw from `generator` (seed it for reproducible samples). A row that emits
`eos_token_id` is finished: it gets `pad_token_id` from then on, and decoding stops when every row
has finished or after max_new_tokens.

Refused with a ValueError: a cache that cannot fit the device's memory (before it is allocated),
and non-finite logits (NaN weights would otherwise decode as token 0 over and over).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn


def has_cached_decoding(model: nn.Module) -> bool:
    """Whether the model's family implements `new_cache` / `forward_cached`."""
    return bool(getattr(model, "has_cached_decoding", lambda: False)())


@torch.no_grad()
def generate(model: nn.Module, prompts: torch.Tensor | Sequence[torch.Tensor], max_new_tokens: int, *,
             attention_mask: torch.Tensor | None = None, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, eos_token_id: int | Sequence[int] | None = None, pad_token_id: int = 0,
             generator: torch.Generator | None = None, max_len: int | None = None, use_cache: bool | None = None,
             cuda_graph: bool | None = None, compile_step: bool = False,
             **runtime) -> torch.Tensor | list[torch.Tensor]:
    """Continue each prompt by up to max_new_tokens tokens.

    prompts:        a list of 1-D LongTensors, or a (B, T) LongTensor (left-padded if
                    `attention_mask`, (B, T) of 1 = real token / 0 = pad, is given).
    max_len:        the most tokens a row may hold, prompt + new (default: the longest prompt +
                    max_new_tokens); the cache is allocated for it and generation stops there.
    use_cache:      None = the family's cache if it has one; False = always the full forward.
    cuda_graph:     replay each one-token step from a CUDA graph (the same logits); None = where it
                    can (a CUDA model, a family with a static cache, no adaptive exit).
    compile_step:   torch.compile that step before capturing it: fused kernels, about twice the
                    tokens/s at batch 1 on an H200 (metrics/bench_gpu.json), logits equal up to float
                    rounding; the compile (tens of seconds) is paid per prompt length.
    generator:      a torch.Generator on the model's device, for reproducible sampling.
    runtime:        the model's inference-time arguments (`model.config.runtime_kwargs()`).
    Returns the input's form: a list of 1-D tensors (prompt + new tokens, up to and including EOS),
    or a (B, T + n) tensor (the input followed by the new tokens, pad_token_id after a row's EOS).
    """
    was_list = not isinstance(prompts, torch.Tensor)
    vocab = model.config.vocab_size
    idx, pad = _left_pad(prompts, attention_mask, pad_token_id, vocab)
    _check_sampling(max_new_tokens, temperature, top_k, top_p, vocab)
    stop = _token_ids("eos_token_id", eos_token_id, vocab)
    unknown = set(runtime) - model.config.runtime_kwargs()
    if unknown:
        raise ValueError(f"generate: unknown model argument(s) {sorted(unknown)} for {type(model).__name__}; "
                         f"valid: {sorted(model.config.runtime_kwargs()) or 'none'}")
    B, T = idx.shape
    if max_len is None:
        max_len = T + max_new_tokens
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len <= T:
        raise ValueError(f"max_len: must be an int larger than the longest prompt ({T} tokens) to leave room "
                         f"for new tokens, got {max_len!r}")
    n_new = min(max_new_tokens, max_len - T)
    if use_cache is None:
        use_cache = has_cached_decoding(model)
    elif use_cache and not has_cached_decoding(model):
        raise ValueError(f"use_cache: {type(model).__name__} has no cached decoding; pass use_cache=None or False")
    if use_cache:
        _check_cache_fits(model, B, T + n_new, runtime)
    graph_ok = (use_cache and idx.device.type == "cuda"
                and getattr(model, "has_static_cache", lambda **_: False)(**runtime))
    if cuda_graph is None:
        cuda_graph = graph_ok
    elif cuda_graph and not graph_ok:
        raise ValueError(f"cuda_graph: needs cached decoding on a CUDA device by a family with a static cache for "
                         f"these arguments (CART without exit_threshold, Dense without pattern); got "
                         f"{type(model).__name__} on {idx.device} with {runtime or 'no arguments'}")

    if compile_step and not cuda_graph:
        raise ValueError("compile_step: compiles the CUDA-graph step; it needs cuda_graph (a CUDA model whose "
                         "family has a static cache)")

    if stop is not None:
        stop = stop.to(idx.device)
    was_training = model.training
    model.eval()
    try:
        seqs = idx  # the uncached path re-reads every row's tokens
        if use_cache:
            cache = model.new_cache(B, T + n_new, pad=pad, **runtime, **({"static": True} if cuda_graph else {}))
            logits = model.forward_cached(idx, cache)[:, -1]  # the prompt: one call, never replayed
            step = (GraphedDecodeStep(model, cache, compile=compile_step) if cuda_graph and n_new > 1
                    else partial(model.forward_cached, cache=cache))
        else:
            logits = _last_logits_uncached(model, seqs, pad, runtime)
        _refuse_nonfinite(~torch.isfinite(logits).all(dim=-1), "the prompt", runtime)  # NaN weights stop here
        finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
        nonfinite = torch.zeros(B, dtype=torch.bool, device=idx.device)  # read once at the end: no sync per token
        new = []
        for i in range(n_new):
            bad = ~torch.isfinite(logits).all(dim=-1)
            nonfinite |= bad
            logits = logits.float().masked_fill(bad[:, None], 0.0)  # so sampling never sees a NaN (a device assert)
            nxt = sample(logits, temperature, top_k, top_p, generator)
            nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
            new.append(nxt)
            if stop is not None:
                finished |= torch.isin(nxt, stop)
                if bool(finished.all()):  # a host sync per token, only when rows can finish early
                    break
            if i == n_new - 1:
                break
            if use_cache:
                logits = step(nxt[:, None])[:, -1]
            else:
                seqs = torch.cat([seqs, nxt[:, None]], dim=1)
                logits = _last_logits_uncached(model, seqs, pad, runtime)
    finally:
        model.train(was_training)
    _refuse_nonfinite(nonfinite, "a new token", runtime)
    out = torch.stack(new, dim=1)
    if not was_list:
        return torch.cat([prompts, out], dim=1)
    rows = []
    for b in range(B):
        gen = out[b]
        if stop is not None:
            ends = torch.isin(gen, stop).nonzero()
            gen = gen if len(ends) == 0 else gen[:int(ends[0]) + 1]
        rows.append(torch.cat([idx[b, int(pad[b]):], gen]))
    return rows


def _refuse_nonfinite(rows: torch.Tensor, where: str, runtime: dict) -> None:
    """ValueError when any of `rows` (a (B,) bool tensor on the device) is set: logits that are not finite."""
    if bool(rows.any()):
        raise ValueError(f"generate: the model's logits for {where} are not finite (NaN or inf) in row(s) "
                         f"{rows.nonzero()[:, 0].tolist()}: its weights, or its forward under "
                         f"{runtime or 'its default arguments'}, are not finite; no tokens returned")


def _check_cache_fits(model: nn.Module, batch: int, max_len: int, runtime: dict) -> None:
    """Refuse, before anything is allocated, a decode cache that cannot fit the device's memory. The
    bytes counted are a floor of what the cache allocates: the RoPE tables (cos, sin in float32) of
    every position, which every family's DecodeCache builds, plus the values per token the family
    reports for these arguments (none where it reports nothing, e.g. under an attention pattern)."""
    param = next(model.parameters())
    total = _device_memory(param.device)
    if total is None:
        return
    try:
        per_token = model.config.kv_cache_values_per_token(**runtime)
    except (NotImplementedError, TypeError):
        per_token = 0
    need = 2 * max_len * model.config.head_dim * 4 + batch * max_len * per_token * param.element_size()
    if need > total:
        raise ValueError(f"max_new_tokens: decoding {batch} row(s) of up to {max_len:,} tokens needs at least "
                         f"{need / 2**30:,.1f} GiB for the decode cache, more than the {param.device.type} memory "
                         f"({total / 2**30:,.1f} GiB); ask for fewer tokens")


def _device_memory(device: torch.device) -> int | None:
    """Total memory of `device` in bytes (physical RAM for the CPU); None where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # not a POSIX system
            return None
    return None


class GraphedDecodeStep:
    """`forward_cached` of one token per row on a static cache, captured once as a CUDA graph and
    replayed: `step(idx)` (B, 1) -> logits (B, 1, V), the graph's output buffer, overwritten by the
    next call. The capture and its warm-up calls leave the cache's counts as they found them (the
    slot they write is written again by the real step before any query can see it)."""

    def __init__(self, model: nn.Module, cache, compile: bool = False):
        """compile: torch.compile the step before capturing it (fewer, fused kernels; compiles once,
        for the cache's length at capture: the replays never return to Python)."""
        if not getattr(cache, "static", False) or cache.device.type != "cuda":
            raise ValueError("GraphedDecodeStep: needs a static cache on a CUDA device (new_cache(..., static=True))")
        self.model, self.cache = model, cache
        self.idx = torch.zeros(cache.batch, 1, dtype=torch.long, device=cache.device)
        step = torch.compile(model.forward_cached, dynamic=False) if compile else model.forward_cached
        before = cache.counters()
        side = torch.cuda.Stream(cache.device)  # warm-up off the default stream, as torch.cuda.graph asks
        side.wait_stream(torch.cuda.current_stream(cache.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                step(self.idx, cache)
                cache.set_counters(before)
        torch.cuda.current_stream(cache.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step(self.idx, cache)
        cache.set_counters(before)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.cache.length + 1 > self.cache.max_len:
            raise ValueError(f"decoding past max_len={self.cache.max_len}: {self.cache.length} tokens seen")
        self.idx.copy_(idx)
        self.graph.replay()
        self.cache.count_replayed(1)
        return self.logits


def sample(logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from (B, V) logits: argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted to the top_k tokens, then to the smallest set whose
    probability reaches top_p."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # the tokens before it already reach top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _last_logits_uncached(model, seqs: torch.Tensor, pad: torch.Tensor, runtime: dict) -> torch.Tensor:
    """(B, V) next-token logits by the full forward: one batch when no row is padded, else row by
    row over each row's real tokens (the full forward has no notion of padding)."""
    if not bool(pad.any()):
        return model(seqs, **runtime)[:, -1]
    return torch.cat([model(seqs[b:b + 1, int(pad[b]):], **runtime)[:, -1] for b in range(seqs.shape[0])])


def _left_pad(prompts, attention_mask, pad_token_id: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) left-padded token ids and each row's pad count, from either input form."""
    _token_ids("pad_token_id", pad_token_id, vocab)
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2 or prompts.dtype != torch.long or prompts.shape[0] == 0 or prompts.shape[1] == 0:
            raise ValueError(f"prompts: expected a non-empty (B, T) LongTensor, got shape {tuple(prompts.shape)} "
                             f"{prompts.dtype}")
        if attention_mask is None:
            pad = torch.zeros(prompts.shape[0], dtype=torch.long, device=prompts.device)
        else:
            if attention_mask.shape != prompts.shape:
                raise ValueError(f"attention_mask: shape {tuple(attention_mask.shape)} != prompts' "
                                 f"{tuple(prompts.shape)}")
            real = attention_mask.to(prompts.device).bool()
            pad = (~real).sum(dim=1)
            left = torch.arange(prompts.shape[1], device=prompts.device)[None, :] >= pad[:, None]
            if not torch.equal(real, left):
                raise ValueError("attention_mask: rows must be left-padded (zeros, then ones): pad on the left")
            if bool((pad == prompts.shape[1]).any()):
                raise ValueError(f"prompts: row(s) {(pad == prompts.shape[1]).nonzero()[:, 0].tolist()} have no "
                                 f"real token (empty prompt)")
        idx = prompts.masked_fill(torch.arange(prompts.shape[1], device=prompts.device)[None, :] < pad[:, None],
                                  pad_token_id)
    else:
        prompts = list(prompts)
        if attention_mask is not None:
            raise ValueError("attention_mask: only for a padded (B, T) tensor of prompts, not a list")
        if not prompts:
            raise ValueError("prompts: an empty list")
        for i, p in enumerate(prompts):
            if not isinstance(p, torch.Tensor) or p.dim() != 1 or p.dtype != torch.long or p.numel() == 0:
                raise ValueError(f"prompts[{i}]: expected a non-empty 1-D LongTensor, got "
                                 f"{tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__}")
        T = max(p.numel() for p in prompts)
        idx = torch.full((len(prompts), T), pad_token_id, dtype=torch.long, device=prompts[0].device)
        for i, p in enumerate(prompts):
            idx[i, T - p.numel():] = p
        pad = torch.tensor([T - p.numel() for p in prompts], dtype=torch.long, device=idx.device)
    if bool(((idx < 0) | (idx >= vocab)).any()):
        raise ValueError(f"prompts: token ids must be in [0, {vocab})")
    return idx, pad


def _check_sampling(max_new_tokens, temperature, top_k, top_p, vocab) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 0:
        raise ValueError(f"temperature: must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k: must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p: must be None or in (0, 1], got {top_p!r}")


def _token_ids(name: str, ids, vocab: int) -> torch.Tensor | None:
    """None, or the ids as a 1-D tensor, each checked to be a token of the vocabulary."""
    if ids is None:
        return None
    values = [ids] if isinstance(ids, int) else list(ids) if isinstance(ids, (list, tuple)) else None
    if not values or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < vocab for i in values):
        raise ValueError(f"{name}: expected a token id (or a list of them) in [0, {vocab}), got {ids!r}")
    return torch.tensor(values)
