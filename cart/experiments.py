"""From params.yaml to concrete training runs.

A run is identified by `<group>/<name>`; the name encodes the config so dvc.yaml can generate it
from a grid (stage1 `d128-P2-R4`, stage2 `d128-R4-s42`, dense `L5-s42`, ablation `<variant>`),
and this module is the one place that parses it back. Settings shared by every run live in the
`model` and `train` sections; each group adds its own `run` block (Dense and the ablations use
Stage 2's, as in the paper).
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass
from typing import Literal

from .models import CARTConfig, DenseConfig, ModelConfig, config_from_dict
from .params import build, section

GROUPS = ("stage1", "stage2", "dense", "ablation")
_NAME = {
    "stage1": re.compile(r"d(?P<d_model>\d+)-P(?P<n_prelude>\d+)-R(?P<n_loops>\d+)"),
    "stage2": re.compile(r"d(?P<d_model>\d+)-R(?P<n_loops>\d+)-s(?P<seed>\d+)"),
    "dense": re.compile(r"L(?P<n_layers>\d+)-s(?P<seed>\d+)"),
}
# Fields a group decides; the shared `model` section may not set them.
_PER_RUN_FIELDS = {"vocab_size", "d_model", "n_prelude", "n_loops", "noncausal_cross_attn",
                   "unfreeze_kv", "unshare_core", "self_attn_core", "disable_hyperconnection",
                   "disable_lti", "disable_lie"}


@dataclass(frozen=True)
class RunSettings:
    steps: int
    seq_len: int
    micro_batch: int
    grad_accum: int
    eval_every: int

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"{f.name}: must be >= 1, got {getattr(self, f.name)}")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.micro_batch * self.grad_accum


@dataclass(frozen=True)
class TrainSettings:
    device: Literal["auto", "cpu", "cuda"]
    dtype: Literal["auto", "float32", "bfloat16"]
    compile: Literal["auto", "on", "off"]
    optimizer: Literal["adamw8bit", "adamw"]
    lr: float
    lr_width_scaling: bool
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    log_every: int
    eval_seqs: int
    checkpoint_every: int
    deterministic: bool
    nproc: int = 1  # processes (GPUs) per run; > 1 launches the run under torchrun with DDP
    # which parameters weight decay applies to: matrices only (ours), or all (the CART authors' code)
    weight_decay_scope: Literal["matrices", "all"] = "matrices"

    def __post_init__(self):
        checks = {
            "lr": self.lr > 0, "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "warmup_steps": self.warmup_steps >= 0, "weight_decay": self.weight_decay >= 0,
            "beta1": 0 <= self.beta1 < 1, "beta2": 0 <= self.beta2 < 1, "grad_clip": self.grad_clip >= 0,
            "log_every": self.log_every >= 1, "eval_seqs": self.eval_seqs >= 1,
            "checkpoint_every": self.checkpoint_every >= 1, "nproc": self.nproc >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: out of range, got {getattr(self, name)}")

    def peak_lr(self, d_model: int) -> float:
        """(reconstructed) the paper's peak lr was lost; lr * 512/d is the spec's rule."""
        return self.lr * (512 / d_model if self.lr_width_scaling else 1.0)


@dataclass(frozen=True)
class RunSpec:
    group: str
    name: str
    seed: int
    model: ModelConfig
    run: RunSettings
    train: TrainSettings
    variant: str | None = None

    @property
    def run_id(self) -> str:
        return f"{self.group}/{self.name}"

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "group": self.group, "name": self.name, "seed": self.seed,
                "variant": self.variant, "model": self.model.to_dict(),
                "run": dataclasses.asdict(self.run), "train": dataclasses.asdict(self.train)}


def model_defaults(params: dict) -> dict:
    defaults = dict(section(params, "model"))
    bad = sorted(set(defaults) & _PER_RUN_FIELDS)
    if bad:
        raise ValueError(f"model.{bad[0]}: set per run by the stage1/stage2/dense/ablation sections, "
                         f"not in the shared model section")
    config_from_dict({"arch": "cart", **defaults}, where="model")  # validates every key and value once
    return defaults


def _dense_fields(defaults: dict) -> dict:
    names = {f.name for f in dataclasses.fields(DenseConfig)}
    return {k: v for k, v in defaults.items() if k in names}


def resolve_run(params: dict, group: str, name: str, vocab_size: int) -> RunSpec:
    """The full spec of run `<group>/<name>`, validated; ValueError names the bad key."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; valid: {list(GROUPS)}")
    defaults = model_defaults(params)
    train = build(TrainSettings, section(params, "train"), "train")
    run_key = "stage1.run" if group == "stage1" else "stage2.run"
    run = build(RunSettings, section(params, run_key), run_key)
    if train.warmup_steps >= run.steps:
        raise ValueError(f"train.warmup_steps={train.warmup_steps} must be < {run_key}.steps={run.steps}")
    variant = None
    if group == "ablation":
        variants = section(params, "ablation.variants")
        if name not in variants:
            raise ValueError(f"ablation variant {name!r} not in ablation.variants: {sorted(variants)}")
        variant = name
        fields = dict(section(params, "ablation.base")) | dict(variants[name] or {})
        seed = section(params, "ablation.seed")
        model = config_from_dict({"arch": "cart", **defaults, **fields, "vocab_size": vocab_size},
                                 where=f"ablation.variants.{name}")
    else:
        m = _NAME[group].fullmatch(name)
        if not m:
            raise ValueError(f"run name {name!r} does not match {group}'s pattern {_NAME[group].pattern}")
        fields = {k: int(v) for k, v in m.groupdict().items()}
        seed = fields.pop("seed", None)
        if group == "stage1":
            seed = section(params, "stage1.seed")
            model = CARTConfig(**defaults, **fields, vocab_size=vocab_size)
        elif group == "stage2":
            model = CARTConfig(**defaults, **fields, n_prelude=section(params, "stage2.n_prelude"),
                               vocab_size=vocab_size)
        else:
            model = DenseConfig(**_dense_fields(defaults), **fields, d_model=section(params, "dense.d_model"),
                                vocab_size=vocab_size)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"{group} seed must be an integer, got {seed!r}")
    return RunSpec(group=group, name=name, seed=seed, model=model, run=run, train=train, variant=variant)


@dataclass(frozen=True)
class Stage1Grid:
    d_model: list[int]
    n_prelude: list[int]
    n_loops: list[int]


@dataclass(frozen=True)
class Stage2Grid:
    d_model: list[int]
    n_loops: list[int]
    seed: list[int]


@dataclass(frozen=True)
class DenseGrid:
    n_layers: list[int]
    seed: list[int]


def run_names(params: dict) -> dict[str, list[str]]:
    """Every run the profile's DAG will train, per group (what dvc.yaml's matrices expand to)."""
    g1 = build(Stage1Grid, section(params, "stage1.grid"), "stage1.grid")
    g2 = build(Stage2Grid, section(params, "stage2.grid"), "stage2.grid")
    gd = build(DenseGrid, section(params, "dense.grid"), "dense.grid")
    variants = section(params, "ablation.variants")
    if not isinstance(variants, dict):
        raise ValueError(f"ablation.variants: expected a mapping of name -> flags, got {variants!r}")
    return {
        "stage1": [f"d{d}-P{p}-R{r}" for d, p, r in itertools.product(g1.d_model, g1.n_prelude, g1.n_loops)],
        "stage2": [f"d{d}-R{r}-s{s}" for d, r, s in itertools.product(g2.d_model, g2.n_loops, g2.seed)],
        "dense": [f"L{n}-s{s}" for n, s in itertools.product(gd.n_layers, gd.seed)],
        "ablation": list(variants),
    }


def validate_profile(params: dict, vocab_size: int = 32_000) -> dict[str, list[str]]:
    """Resolve every run of the profile, so a bad grid entry fails before any training."""
    names = run_names(params)
    for group, group_names in names.items():
        if not group_names:
            raise ValueError(f"{group}: the grid is empty")
        for name in group_names:
            resolve_run(params, group, name, vocab_size)
    return names
