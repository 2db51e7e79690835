"""One optimizer step, shared by the training stage and the throughput benchmark, so the
benchmark measures exactly the code that trains: device/dtype choice, the optimizer, the
(compiled) loss, gradient accumulation and clipping."""
from __future__ import annotations

import math

import torch

from . import distributed
from ..device import autocast
from ..experiments import TrainSettings


def lr_multiplier(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine decay to `floor` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, t: TrainSettings, d_model: int, device: torch.device,
                   world: int = 1) -> torch.optim.Optimizer:
    """AdamW. `weight_decay_scope` "matrices": decay on matrices only, since norms' gains, the LTI
    theta and the HyperConnection logits are per-channel scalars that decay would pull toward 0
    (the gate toward lambda = 0.5), which is a prior on the architecture, not regularisation.
    "all": decay on every parameter, as the CART authors' AdamW8bit(model.parameters()) does.
    `zero_optimizer` with world > 1 processes: the same AdamW, its state sharded across them."""
    params = [p for p in model.parameters() if p.requires_grad]
    if t.weight_decay_scope == "all":
        groups = [{"params": params, "weight_decay": t.weight_decay}]
    else:
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    lr, betas = t.peak_lr(d_model), (t.beta1, t.beta2)
    if t.optimizer == "adamw8bit":
        if device.type != "cuda":
            raise ValueError("train.optimizer: adamw8bit (bitsandbytes) needs a CUDA device; use adamw on CPU")
        cls, options = adamw8bit_class(), {"lr": lr, "betas": betas}
    else:
        cls, options = torch.optim.AdamW, {"lr": lr, "betas": betas, "fused": device.type == "cuda"}
    if t.zero_optimizer and world > 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        return ZeroRedundancyOptimizer(groups, optimizer_class=cls, **options)
    return cls(groups, **options)


def adamw8bit_class() -> type:
    """bitsandbytes' AdamW8bit with its per-parameter host sync taken out.

    bitsandbytes' Optimizer8bit.step calls torch.cuda.synchronize() after every parameter's
    update (bitsandbytes/optim/optimizer.py, 0.50.2), which paged optimizer states need and
    plain device states do not: the updates are kernels on one stream, so stream order already
    serialises them. On an H100 those ~60 syncs per step drain the GPU queue and leave the GPU idle
    while Python launches each next update (~10% of a CART d1024 step). This step() is the same
    loop (same state init, same per-parameter update kernels, same order) without the syncs, so
    its updates are bit-identical; paged optimizers keep bitsandbytes' own step()."""
    import bitsandbytes as bnb

    class AdamW8bit(bnb.optim.AdamW8bit):
        @torch.no_grad()
        def step(self, closure=None):
            if self.is_paged:
                return super().step(closure)
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            if not self.initialized:
                self.check_overrides()
                self.to_gpu()
                self.initialized = True
            for gindex, group in enumerate(self.param_groups):
                for pindex, p in enumerate(group["params"]):
                    if p.grad is None:
                        continue
                    if len(self.state[p]) == 0:
                        self.init_state(group, p, gindex, pindex)
                    self.update_step(group, p, gindex, pindex)
            return loss

    return AdamW8bit


# torch.compile modes whose compiled loss replays CUDA graphs: train_step needs graphed=True under them
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def make_loss_fn(model: torch.nn.Module, compile: bool, mode: str | None = None):
    """(x, y, **forward kwargs) -> mean training loss, through the model's forward (so DDP's hooks
    run and a family's own training loss is used). Compiled together with the loss, so the LM
    head's logits and the cross-entropy fuse instead of materialising fp32 logits for the whole
    micro-batch."""
    def loss_fn(x, y, **kwargs):
        return model(x, targets=y, **kwargs)
    return torch.compile(loss_fn, mode=mode) if compile else loss_fn


def check_float8(device: torch.device) -> None:
    """What train.fp8 needs, checked before any work: a CUDA device and torchao."""
    if device.type != "cuda":
        raise ValueError(f"train.fp8: float8 training needs a CUDA GPU with FP8 (H100, H200, L40, RTX 4090); this "
                         f"run's device is {device}; set train.fp8: false")
    try:
        import torchao.float8  # noqa: F401
    except ImportError as e:
        raise ValueError(f"train.fp8: needs torchao (pip install torchao): {e}") from None


def to_float8(model: torch.nn.Module, device: torch.device) -> None:
    """torchao's float8 training for every nn.Linear whose dims are multiples of 16 (the tied LM head
    is F.linear on the embedding, so it stays in bf16)."""
    check_float8(device)
    from torchao.float8 import convert_to_float8_training
    convert_to_float8_training(model, module_filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear)
                               and m.in_features % 16 == 0 and m.out_features % 16 == 0)


def train_step(loss_fn, batches, params, grad_clip: float, device: torch.device, dtype: torch.dtype,
               ddp_model: torch.nn.Module | None = None, forward_kwargs: dict | None = None,
               graphed: bool = False):
    """Forward/backward over the micro-batches of one optimizer step (gradient accumulation) and
    clip. Returns (sum of micro-batch losses, pre-clip grad norm) as device tensors: no host sync,
    so the caller decides when to look. With DDP, gradients are all-reduced on the last
    micro-batch only; with FSDP2, reduce-scattered on the last one. `forward_kwargs` go to every forward (e.g. one sub-step's attention pattern).
    `graphed`: loss_fn replays CUDA graphs (a compile mode in CUDA_GRAPH_MODES). The first backward's
    gradients then become the parameters' .grad while still living in the graph's output memory,
    which the next micro-batch's replay overwrites (pytorch/pytorch#169545: an error, or silently
    wrong sums); they are copied out once, so later micro-batches accumulate into our own tensors."""
    loss_sum = torch.zeros((), device=device)
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, dtype), distributed.no_sync(ddp_model, i == len(batches) - 1):
            loss = loss_fn(x, y, **(forward_kwargs or {}))
        (loss / len(batches)).backward()
        loss_sum += loss.detach()
        if graphed and i == 0 and len(batches) > 1:
            for p in params:
                if p.grad is not None:
                    p.grad = p.grad.clone()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    return loss_sum, distributed.full_tensor(grad_norm)  # FSDP2: the norm over every shard, replicated
