"""Data parallelism for runs launched by torchrun (one process per GPU): DistributedDataParallel, or
FSDP2 (`fully_shard`: parameters, gradients and optimizer state sharded across the ranks), as
train.data_parallel picks.

Every rank reads the same batch stream and keeps every world-th micro-batch, so the global
tokens per optimizer step, the data position and the checkpoint are the same as a one-process
run with the same params (grad_accum is split across ranks). Rank 0 alone writes logs,
evaluations and checkpoints; under FSDP2 every rank takes part in what needs the whole model
(evaluation, the gate's diagnostics, gathering a checkpoint), and rank 0 alone writes.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.AVG if value.is_cuda else dist.ReduceOp.SUM)
            if not value.is_cuda:  # gloo has no AVG
                value /= self.world
        return value


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes in the environment; a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local), device


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device, bucket_cap_mb: int = 25,
         gradient_as_bucket_view: bool = False) -> torch.nn.Module:
    """DDP around `model` when the run has several processes (train.ddp_* pick the buckets). Buffers are
    not re-broadcast before every forward (DDP's default): every buffer of these models is a constant
    built from the config (RoPE's tables, the loop-index sinusoid), the same on every rank. A model
    already sharded by `shard` is returned as it is: FSDP2 does its own gradient reduction."""
    if not info.enabled or is_sharded(model):
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, bucket_cap_mb=bucket_cap_mb,
               gradient_as_bucket_view=gradient_as_bucket_view, broadcast_buffers=False)


def no_sync(model: torch.nn.Module, last_micro_batch: bool):
    """Skip the gradient reduction on every micro-batch but the last of an optimizer step: DDP's
    all-reduce (its no_sync context, read at forward time), or FSDP2's reduce-scatter (its
    requires_gradient_sync flag, read in the backward that follows the forward, so it is set here and
    left set: the last micro-batch sets it back on; the skipped micro-batches accumulate unsharded
    gradients)."""
    if is_sharded(model):
        model.set_requires_gradient_sync(last_micro_batch)
        return contextlib.nullcontext()
    if last_micro_batch or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


# ---- FSDP2 (train.data_parallel: fsdp2) ----

def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The units FSDP2 shards one by one: every element of the model's outermost layer lists
    (Dense's and RAT+'s layers, CART's prelude and core blocks, LRT's layers and feedback pairs);
    what is left (embedding and tied head, final norm, CART's coda, gate and HyperConnection) goes
    with the root."""
    out, inside = [], set()
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not any(name.startswith(p + ".") for p in inside):
            out.extend(module)
            inside.add(name)
    return out


def shard(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """FSDP2 over the run's processes: `fully_shard` each block, then the root (torch's own API; the
    parameters become DTensors sharded along dim 0, all-gathered block by block in forward and
    backward, gradients reduce-scattered). Parameters stay in their dtype: the step's autocast picks
    each op's precision as it does under DDP (docs/performance.md says why no MixedPrecisionPolicy).
    The optimizer must be built after this, on the sharded parameters. A no-op for one process."""
    if not info.enabled:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device.type, (info.world,))
    for block in blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (e.g. clip_grad_norm_'s total norm over sharded gradients); a plain tensor as is."""
    from torch.distributed.tensor import DTensor
    return value.full_tensor() if isinstance(value, DTensor) else value


@contextlib.contextmanager
def gathered(model: nn.Module):
    """Every parameter whole while inside (FSDP2 unshards each sharded module, on every rank: a
    collective), for reading the model outside its forward (the gate's spectral radius and
    diagnostics). Nothing to do for an unsharded model."""
    if not is_sharded(model):
        yield model
        return
    from torch.distributed.fsdp import FSDPModule
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.unshard()
    try:
        yield model
    finally:
        for m in units:
            m.reshard()


def _full_options(**extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **extra)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0's CPU (empty on the other ranks), gathered from the
    shards by torch.distributed.checkpoint; every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(model, options=_full_options(cpu_offload=True))


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The whole optimizer state on rank 0's CPU (empty on the other ranks) in the format of an
    unsharded optimizer's state_dict(): parameters numbered in param-group order, so a checkpoint
    reads the same whether one process or several sharded wrote it. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    state = get_optimizer_state_dict(model, opt, options=_full_options(cpu_offload=True))
    if not state:
        return state
    number = {fqn: i for i, fqn in enumerate(_param_fqns(model, opt))}
    return {"state": {number[fqn]: v for fqn, v in state["state"].items()},
            "param_groups": [g | {"params": [number[fqn] for fqn in g["params"]]} for g in state["param_groups"]]}


def load_full_model_state(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load a whole (unsharded) state dict, as full_model_state returns it, into the sharded model:
    every rank passes the whole state and keeps its shard (torch.distributed.checkpoint's
    set_model_state_dict, strict: every key)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict
    set_model_state_dict(model, weights, options=_full_options())


def load_full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a whole optimizer state in an unsharded optimizer's format (what full_optimizer_state
    writes, and what a one-process run writes) into the sharded optimizer; every rank passes all of it."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    fqns = _param_fqns(model, opt)
    by_name = {"state": {fqns[i]: v for i, v in state["state"].items()},
               "param_groups": [g | {"params": [fqns[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, opt, by_name, options=_full_options())


def _param_fqns(model: nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """The name of each of the optimizer's parameters, in the order optimizer.state_dict() numbers them."""
    name = {id(p): n for n, p in model.named_parameters()}
    return [name[id(p)] for group in opt.param_groups for p in group["params"]]


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
