"""DistributedDataParallel setup for runs launched by torchrun (one process per GPU).

Every rank reads the same batch stream and keeps every world-th micro-batch, so the global
tokens per optimizer step, the data position and the checkpoint are the same as a one-process
run with the same params (grad_accum is split across ranks). Rank 0 alone writes logs,
evaluations and checkpoints.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    built from the config (RoPE's tables, the loop-index sinusoid), the same on every rank."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, bucket_cap_mb=bucket_cap_mb,
               gradient_as_bucket_view=gradient_as_bucket_view, broadcast_buffers=False)


def no_sync(model: torch.nn.Module, last_micro_batch: bool):
    """Skip DDP's gradient all-reduce on every micro-batch but the last of an optimizer step."""
    if last_micro_batch or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
