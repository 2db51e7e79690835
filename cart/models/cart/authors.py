"""Load a checkpoint of the authors' CART (github.com/ccapps42/CART) into our `paper_code` model.

    model = load_authors_checkpoint("checkpoints/<config_id>/step_30500.pt",
                                    CARTConfig(d_model=1024, n_prelude=6, n_loops=6, variant="paper_code"))

Their train/train_one.py saves {"step", "config": model.config, "model_state_dict",
"optimizer_state_dict"}, where the config is their CARTConfig dataclass (module model.config), so a
plain `torch.load(..., weights_only=True)` refuses the file, and `weights_only=False` would run
whatever the file's pickle asks for. `load_authors_checkpoint` reads it with weights_only=True and one
more class allowed under that name, a stand-in that only holds attributes (AuthorsConfig): nothing in
the file can run code, and a file that asks for anything else is refused. Their config is then checked
against ours (the fields both have: sizes and ablation flags). A .safetensors file (their state dict,
tensors only) loads too. `from_authors_state_dict` takes a state dict already in memory.

Their parameter names (model/cart.py, layers.py, attention.py, hyper.py, lti.py, lie.py) and ours:

    embedding.weight                      tok_emb.weight
    prelude.{i}. / coda. / core[.{i}].    prelude.{i}. / coda. / core.{i}.   (their shared core has no index)
        norm1.weight, norm2.weight            attn_norm.weight, ffn_norm.weight
        attn.q_proj.weight, attn.o_proj       attn.q.weight, attn.o.weight
        attn.kv_down.weight                   attn.kv.down.weight
        attn.k_up.weight + attn.v_up.weight   attn.kv.up.weight (rows: K then V)
        ffn.gate/up/down.weight               ffn.gate/up/down.weight
    kv_proj.kv_down / k_up + v_up         anchor_kv.down / anchor_kv.up
    hyper.weights                         hyper.logits
    lti.a_param                           gate.theta
    lie.proj.weight, lie.pe (buffer)      lie.proj.weight, lie.table (a fixed buffer, checked, not loaded)
    final_norm.weight                     norm_f.weight

Their model builds hyper and lie even when disable_hyper / disable_lie bypass them; ours does not,
so those unused weights are dropped (their shapes still checked) when the config disables them.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .model import CART
from .config import CARTConfig

_SELF_ATTN = {"attn.q_proj.weight": "attn.q.weight", "attn.kv_down.weight": "attn.kv.down.weight",
              "attn.o_proj.weight": "attn.o.weight"}
_CROSS_ATTN = {"attn.q_proj.weight": "attn.q.weight", "attn.o_proj.weight": "attn.o.weight"}
_BLOCK = {"norm1.weight": "attn_norm.weight", "norm2.weight": "ffn_norm.weight", "ffn.gate.weight": "ffn.gate.weight",
          "ffn.up.weight": "ffn.up.weight", "ffn.down.weight": "ffn.down.weight"}
# (their K and V up-projections) -> our fused up-projection, K rows first (LatentKV.forward chunks it)
_SELF_KV_UP = (("attn.k_up.weight", "attn.v_up.weight"), "attn.kv.up.weight")
_ANCHOR_KV_UP = (("kv_proj.k_up.weight", "kv_proj.v_up.weight"), "anchor_kv.up.weight")


def _plan(cfg: CARTConfig) -> tuple[dict[str, str], list[tuple[tuple[str, str], str]], list[str]]:
    """(their key -> our key, (their K, their V) -> our fused key, their keys we drop)."""
    direct = {"embedding.weight": "tok_emb.weight", "final_norm.weight": "norm_f.weight",
              "lti.a_param": "gate.theta"}
    fused: list[tuple[tuple[str, str], str]] = []
    dropped: list[str] = []

    def block(theirs: str, ours: str, self_attn: bool) -> None:
        for t, o in (_BLOCK | (_SELF_ATTN if self_attn else _CROSS_ATTN)).items():
            direct[theirs + t] = ours + o
        if self_attn:
            (k, v), up = _SELF_KV_UP
            fused.append(((theirs + k, theirs + v), ours + up))

    for i in range(cfg.n_prelude):
        block(f"prelude.{i}.", f"prelude.{i}.", self_attn=True)
    block("coda.", "coda.", self_attn=True)
    if cfg.unshare_core:
        for i in range(cfg.n_loops):
            block(f"core.{i}.", f"core.{i}.", cfg.self_attn_core)
    else:
        block("core.", "core.0.", cfg.self_attn_core)
    if not cfg.self_attn_core:
        direct["kv_proj.kv_down.weight"] = "anchor_kv.down.weight"
        fused.append(_ANCHOR_KV_UP)
    if cfg.disable_hyperconnection:
        dropped.append("hyper.weights")
    else:
        direct["hyper.weights"] = "hyper.logits"
    if cfg.disable_lie:
        dropped += ["lie.proj.weight", "lie.pe"]
    else:
        direct["lie.proj.weight"] = "lie.proj.weight"
    return direct, fused, dropped


class AuthorsConfig:
    """What the unpickler builds for their config object (model.config.CARTConfig): the attributes
    it was saved with, and nothing else (no methods of theirs run)."""

    def __repr__(self) -> str:
        return f"AuthorsConfig({vars(self)})"


AUTHORS_CONFIG_GLOBAL = "model.config.CARTConfig"

# their config field -> ours, for the fields that decide the model's function or shapes
_CONFIG_FIELDS = {"vocab_size": "vocab_size", "d_model": "d_model", "n_prelude": "n_prelude", "n_loops": "n_loops",
                  "d_head": "head_dim", "mla_compression_ratio": "kv_latent_ratio", "n_hyper": "hc_window",
                  "lie_dim": "lie_dim", "rms_norm_eps": "norm_eps", "rope_base": "rope_theta",
                  "unfreeze_kv": "unfreeze_kv", "unshare_core": "unshare_core", "self_attn_core": "self_attn_core",
                  "disable_hyper": "disable_hyperconnection", "disable_lti": "disable_lti",
                  "disable_lie": "disable_lie"}


def load_authors_checkpoint(path: str | Path, config: CARTConfig) -> CART:
    """Our CART (variant paper_code) with the weights of one of the authors' checkpoints: their .pt
    (read without running any of its code) or a .safetensors file of their state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_authors_checkpoint: no file {path}")
    if path.suffix == ".safetensors":
        return from_authors_state_dict(_read_safetensors(path), config)
    payload = _read_pt(path)
    if not isinstance(payload, Mapping):
        raise ValueError(f"load_authors_checkpoint: {path} holds a {type(payload).__name__}, not their checkpoint "
                         f"(a dict with model_state_dict) or a state dict")
    if "config" in payload:
        _check_authors_config(payload["config"], config, path)
    return from_authors_state_dict(payload.get("model_state_dict", payload), config)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"load_authors_checkpoint: {path} is not a readable safetensors file: {e}") from None


def _read_pt(path: Path):
    """torch.load with weights_only=True, their config class allowed as the attribute-only stand-in."""
    try:
        with torch.serialization.safe_globals([(AuthorsConfig, AUTHORS_CONFIG_GLOBAL)]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        asked = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if asked is None:
            raise ValueError(f"load_authors_checkpoint: {path} is not a readable torch checkpoint (its pickle is "
                             f"damaged, or another format)") from None
        raise ValueError(f"load_authors_checkpoint: {path} was refused and nothing in it was run: it asks for "
                         f"{asked.group(1)}, and only tensors, plain values and their config "
                         f"({AUTHORS_CONFIG_GLOBAL}) are read") from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"load_authors_checkpoint: {path} is not a readable torch checkpoint (truncated, or "
                         f"another format): {str(e).splitlines()[0].split('. ')[0]}") from None


def _check_authors_config(theirs, config: CARTConfig, path: Path) -> None:
    """Their config (the stand-in, or a plain dict) agrees with ours on every field both have."""
    fields = vars(theirs) if isinstance(theirs, AuthorsConfig) else theirs
    if not isinstance(fields, Mapping):
        raise ValueError(f"load_authors_checkpoint: {path}: 'config' is a {type(theirs).__name__}, not their "
                         f"{AUTHORS_CONFIG_GLOBAL}")
    for their_field, our_field in _CONFIG_FIELDS.items():
        if their_field in fields and fields[their_field] != getattr(config, our_field):
            raise ValueError(f"load_authors_checkpoint: {path} was trained with {their_field}="
                             f"{fields[their_field]!r}, the config has {our_field}={getattr(config, our_field)!r}")


def from_authors_state_dict(state_dict: Mapping[str, torch.Tensor], config: CARTConfig) -> CART:
    """Our CART (variant paper_code) with the weights of the authors' state dict; ValueError naming
    every missing or unexpected key, or the first tensor that is not a finite floating-point tensor of
    the shape the config needs (the weights they drop included)."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"from_authors_state_dict: expected a state dict (names -> tensors), got "
                         f"{type(state_dict).__name__}; pass a state dict, or use load_authors_checkpoint(path, "
                         f"config) for a checkpoint file")
    if not isinstance(config, CARTConfig) or config.variant != "paper_code":
        raise ValueError(f"from_authors_state_dict: config must be a CARTConfig with variant='paper_code' (the "
                         f"authors' model), got {getattr(config, 'variant', type(config).__name__)!r}")
    direct, fused, dropped = _plan(config)
    expected = set(direct) | {k for pair, _ in fused for k in pair} | set(dropped)
    if not config.disable_lie:
        expected.add("lie.pe")
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(f"from_authors_state_dict: the state dict does not fit {_describe(config)}: "
                         f"missing {missing}, unexpected {unexpected}")
    for key in sorted(state_dict):
        _check_weight(key, state_dict[key])

    model = CART(config)
    ours = model.state_dict()
    shapes = {t: ours[o].shape for t, o in direct.items()}  # the shape each of their tensors must have
    for pair, o in fused:
        rows, cols = ours[o].shape
        shapes |= {t: torch.Size((rows // 2, cols)) for t in pair}
    shapes |= _dropped_shapes(config, dropped)
    if not config.disable_lie:
        shapes["lie.pe"] = model.lie.table.shape
    for key, shape in shapes.items():
        if state_dict[key].shape != shape:
            raise ValueError(f"from_authors_state_dict: {key} has shape {tuple(state_dict[key].shape)}; "
                             f"{_describe(config)} needs {tuple(shape)}")
    if not config.disable_lie:
        pe = state_dict["lie.pe"]
        # their table, computed in fp32 like ours and saved in the checkpoint's dtype: equal to within
        # one rounding step of that dtype at magnitude 1 (the sinusoid's range)
        if not torch.allclose(pe.float(), model.lie.table, rtol=0.0, atol=max(1e-6, torch.finfo(pe.dtype).eps)):
            raise ValueError(f"from_authors_state_dict: lie.pe is not the loop-index sinusoid table of "
                             f"lie_rows={config.lie_rows}, lie_dim={config.lie_dim}")
    loaded = {o: state_dict[t] for t, o in direct.items()}
    loaded |= {o: torch.cat([state_dict[k], state_dict[v]], dim=0) for (k, v), o in fused}
    model.load_state_dict({k: v.to(ours[k].dtype) for k, v in loaded.items()}, strict=True)
    return model


def _check_weight(key: str, value) -> None:
    """A weight is a finite floating-point torch.Tensor (an int tensor would be cast silently)."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"from_authors_state_dict: {key} is a {type(value).__name__}, not a torch.Tensor")
    if not value.is_floating_point():
        raise ValueError(f"from_authors_state_dict: {key} is {value.dtype}, not a floating-point weight")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"from_authors_state_dict: {key} holds NaN or infinite values")


def _dropped_shapes(cfg: CARTConfig, dropped: list[str]) -> dict[str, torch.Size]:
    """The shapes their model gives the weights our config does not build."""
    shapes = {"hyper.weights": torch.Size((cfg.hc_window,)), "lie.proj.weight": torch.Size((cfg.d_model, cfg.lie_dim)),
              "lie.pe": torch.Size((cfg.lie_rows, cfg.lie_dim))}
    return {key: shapes[key] for key in dropped}


def _describe(cfg: CARTConfig) -> str:
    flags = [f for f in ("unfreeze_kv", "unshare_core", "self_attn_core", "disable_hyperconnection", "disable_lti",
                         "disable_lie") if getattr(cfg, f)]
    return f"CART(d={cfg.d_model}, P={cfg.n_prelude}, R={cfg.n_loops}{''.join(', ' + f for f in flags)})"
