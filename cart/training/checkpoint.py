"""Run directories and checkpoints.

runs/<group>/<name>/
    config.json         everything needed to rebuild the run: model config, run settings, seed,
                        tokenizer and data fingerprints
    model.safetensors   weights (safetensors: no pickle, detects truncation)
    trainer_state.pt    optimizer, scheduler, RNG and data-reader state for an exact resume
                        (plain tensors and dicts, loaded with weights_only=True)
    summary.json        written last, when the run completes or fails
Every file is written atomically, and trainer_state.pt records the sha256 of the weights it
belongs to, so a kill between the two writes is detected instead of resuming from a mismatch.
"""
from __future__ import annotations

from pathlib import Path

import safetensors.torch
from safetensors import SafetensorError
import torch
from torch import nn

from ..io import atomic_path, atomic_write_json, read_json, sha256_file
from ..models import ModelConfig, build_model, config_from_dict

CONFIG, WEIGHTS, STATE, SUMMARY = "config.json", "model.safetensors", "trainer_state.pt", "summary.json"


def save_weights(model: nn.Module | dict[str, torch.Tensor], path: str | Path) -> str:
    """Write weights atomically: a model's, or a whole state dict (an FSDP2 run's, gathered by
    distributed.full_model_state; the models share no tensor between two names, so the file is the one
    save_model writes); return their sha256."""
    with atomic_path(path) as tmp:
        if isinstance(model, dict):
            safetensors.torch.save_file(model, str(tmp))
        else:
            safetensors.torch.save_model(_unwrap(model), str(tmp))
        digest = sha256_file(tmp)
    return digest


def load_weights(model: nn.Module, path: str | Path) -> None:
    tensors = read_weights(model, path)
    try:
        _unwrap(model).load_state_dict(tensors)
    except RuntimeError as e:  # load_state_dict's shape mismatches
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ValueError(f"checkpoint {path} does not match the model (trained with another config?): "
                         f"{first}") from None


def read_weights(model: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """The whole weights of a checkpoint, checked (the model's names, floating point in the file, finite):
    what load_weights loads, and what an FSDP2 run's every rank reads to keep its shard
    (distributed.load_full_model_state)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {path}")
    try:
        tensors = safetensors.torch.load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"checkpoint {path} is corrupted or not a safetensors file: {e}") from e
    expected = set(_unwrap(model).state_dict())
    if set(tensors) != expected:
        raise ValueError(f"checkpoint {path} does not match the model: missing {sorted(expected - set(tensors))[:5]}, "
                         f"unexpected {sorted(set(tensors) - expected)[:5]} (was it trained with another config?)")
    check_weights(path, tensors)
    return tensors


def check_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """The weights about to be loaded are finite, and floating point in the file: load_state_dict would
    cast an integer tensor silently (the file's dtypes are read from its header alone)."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            dtype = f.get_slice(name).get_dtype()
            if not dtype.startswith(("F", "BF")):
                raise ValueError(f"checkpoint {path}: tensor {name} is {dtype} in the file, not a floating-point "
                                 f"weight")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"checkpoint {path}: tensor {name} holds NaN or infinite values")


def save_state(state: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"trainer state {path} is corrupted: {e}; delete it to restart the run") from e


def write_run_config(run_dir: str | Path, cfg: dict) -> None:
    atomic_write_json(Path(run_dir) / CONFIG, cfg)


def read_run_config(run_dir: str | Path) -> dict:
    return read_json(Path(run_dir) / CONFIG, "run config")


def load_run_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig, dict]:
    """Rebuild a trained model from its run directory: (model in eval mode, model config, run config)."""
    run_dir = Path(run_dir)
    run_cfg = read_run_config(run_dir)
    model_cfg = config_from_dict(run_cfg["model"], where=f"{run_dir / CONFIG}: model")
    model = build_model(model_cfg)
    load_weights(model, run_dir / WEIGHTS)
    return model.to(device).eval(), model_cfg, run_cfg


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    return getattr(model, "module", model)  # DistributedDataParallel wrapper
