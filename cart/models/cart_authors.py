"""Load a checkpoint of the authors' CART (github.com/ccapps42/CART) into our `paper_code` model.

    sd = torch.load("checkpoints/<config_id>/step_30500.pt", weights_only=False)["model_state_dict"]
    model = from_authors_state_dict(sd, CARTConfig(d_model=1024, n_prelude=6, n_loops=6, variant="paper_code"))

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
so those unused weights are dropped when the config disables them.
"""
from __future__ import annotations

import torch

from .cart import CART
from .cart_config import CARTConfig

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


def from_authors_state_dict(state_dict: dict[str, torch.Tensor], config: CARTConfig) -> CART:
    """Our CART (variant paper_code) with the weights of the authors' state dict; ValueError naming
    every missing or unexpected key, or the first tensor whose shape does not fit the config."""
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

    model = CART(config)
    ours = model.state_dict()
    shapes = {t: ours[o].shape for t, o in direct.items()}  # the shape each of their tensors must have
    for pair, o in fused:
        rows, cols = ours[o].shape
        shapes |= {t: torch.Size((rows // 2, cols)) for t in pair}
    if not config.disable_lie:
        shapes["lie.pe"] = model.lie.table.shape
    for key, shape in shapes.items():
        if state_dict[key].shape != shape:
            raise ValueError(f"from_authors_state_dict: {key} has shape {tuple(state_dict[key].shape)}; "
                             f"{_describe(config)} needs {tuple(shape)}")
    if not config.disable_lie and not torch.allclose(state_dict["lie.pe"].float(), model.lie.table, atol=1e-6):
        raise ValueError(f"from_authors_state_dict: lie.pe is not the loop-index sinusoid table of "
                         f"lie_rows={config.lie_rows}, lie_dim={config.lie_dim}")
    loaded = {o: state_dict[t] for t, o in direct.items()}
    loaded |= {o: torch.cat([state_dict[k], state_dict[v]], dim=0) for (k, v), o in fused}
    model.load_state_dict({k: v.to(ours[k].dtype) for k, v in loaded.items()}, strict=True)
    return model


def _describe(cfg: CARTConfig) -> str:
    flags = [f for f in ("unfreeze_kv", "unshare_core", "self_attn_core", "disable_hyperconnection", "disable_lti",
                         "disable_lie") if getattr(cfg, f)]
    return f"CART(d={cfg.d_model}, P={cfg.n_prelude}, R={cfg.n_loops}{''.join(', ' + f for f in flags)})"
