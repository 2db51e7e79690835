"""From params.yaml to concrete training runs: the one home of run identity.

A run is `<group>/<name>`. Each group (a DVC matrix stage) trains one model family; its name
template (e.g. stage1 `d{d_model}-P{n_prelude}-R{n_loops}`, in the name grammar of
cart/models/names.py: R is n_loops) both builds the names the grid expands to and parses a name
back to its fields (the ablations have a second template, `<variant>-s<seed>`,
for their multi-seed variants: a second DVC stage), and `RunPaths` is where a run's files live. Each
group also declares exactly which params keys its runs read (`Group.params`, equal to dvc.yaml's
`params:` for the stage, checked by tests/test_stages.py): runs are resolved from a view of
params.yaml holding those keys alone, so a run can never depend on a key DVC does not track.

Model fields come from `model.common` (every family) and `model.<arch>` (that family only), so a
CART-only field re-runs CART runs and nothing else.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, get_type_hints

from .loop_sampling import LoopSampling
from .models import ModelConfig, config_from_dict
from .models.names import NameForm
from .params import build, check_value, section, view


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
    # DDP's gradient buckets (torch's defaults 25 MiB, copies): what each all-reduce carries while
    # backward goes on, and whether .grad views the bucket instead of being copied into it
    ddp_bucket_cap_mb: int = 25
    ddp_gradient_as_bucket_view: bool = False
    # shard the optimizer's state across the DDP ranks (torch's ZeroRedundancyOptimizer): each rank
    # keeps and updates 1/nproc of it, then broadcasts its parameters; the same updates as unsharded
    zero_optimizer: bool = False
    # how several processes split the work: ddp (every rank holds the whole model and optimizer state,
    # gradients all-reduced) or fsdp2 (torch's fully_shard per block, then the root: parameters,
    # gradients and optimizer state sharded, all-gathered block by block); checkpoints hold the whole
    # unsharded state either way. No effect on one process
    data_parallel: Literal["ddp", "fsdp2"] = "ddp"
    # which parameters weight decay applies to: matrices only (ours), or all (the CART authors' code)
    weight_decay_scope: Literal["matrices", "all"] = "matrices"
    # the R of each optimizer step (cart/loop_sampling.py); fixed: the model's n_loops, as the paper
    loop_sampling: LoopSampling = LoopSampling()
    # gradients through the last k loop iterations only (CART.recur, Huginn's truncation); None: all
    backprop_loops: int | None = None
    # opt-in speed levers that bench.throughput.train_step measures (metrics/bench_gpu.json, docs/performance.md):
    # torch.compile's mode (reduce-overhead: CUDA graphs over the compiled step, 1.28-1.34x at d256 and
    # 1.02x at d1024 on an H200; the paper profile's Stage 2 and Dense groups use it) and torchao's float8
    # training of the linear layers (a CUDA GPU with FP8; loss parity held at d1024 over 300 real-data
    # steps, but 1.02x there and 0.74x at d256)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "default"
    # what one compiled graph covers in a looped model (CART): the whole unrolled model and loss, or
    # the loop's iteration (one graph for every r and every R, so configs of one width that differ
    # only in R, and in P for all but the prelude, reuse Inductor's cached graphs: less compile per
    # config, a little more Python between graphs each step). auto: iteration when R is sampled per
    # step (it must: Dynamo would compile a graph per R, eager past 8), else model. Models without a
    # loop always compile whole
    compile_scope: Literal["auto", "model", "iteration"] = "auto"
    fp8: bool = False
    # how windows are cut from the bins (cart/data/bins.py): the last target of a training window that ends
    # on a chunk boundary ignored (no target from another domain) or kept (the CART authors'), and
    # validation windows disjoint or overlapping by one token (stride seq_len, the authors')
    cross_chunk_target: Literal["ignore", "keep"] = "ignore"
    val_windows: Literal["disjoint", "overlapping"] = "disjoint"

    def __post_init__(self):
        checks = {
            "lr": self.lr > 0, "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "warmup_steps": self.warmup_steps >= 0, "weight_decay": self.weight_decay >= 0,
            "beta1": 0 <= self.beta1 < 1, "beta2": 0 <= self.beta2 < 1, "grad_clip": self.grad_clip >= 0,
            "log_every": self.log_every >= 1, "eval_seqs": self.eval_seqs >= 1,
            "checkpoint_every": self.checkpoint_every >= 1, "nproc": self.nproc >= 1,
            "ddp_bucket_cap_mb": self.ddp_bucket_cap_mb >= 1,
            "backprop_loops": self.backprop_loops is None or self.backprop_loops >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: out of range, got {getattr(self, name)}")
        if self.compile_scope == "model" and self.loop_sampling.varies:
            raise ValueError("compile_scope: model compiles a graph per R, and past 8 runs the rest eagerly; "
                             "with a sampled R (loop_sampling) use auto or iteration")
        if self.zero_optimizer and self.data_parallel == "fsdp2":
            raise ValueError("zero_optimizer: ZeroRedundancyOptimizer shards a DDP run's optimizer state; "
                             "data_parallel: fsdp2 shards it already; set zero_optimizer: false or data_parallel: ddp")

    @property
    def compiles_by_iteration(self) -> bool:
        """Whether a compiled looped model compiles its loop one iteration at a time."""
        return self.compile_scope == "iteration" or (self.compile_scope == "auto" and self.loop_sampling.varies)

    def peak_lr(self, d_model: int) -> float:
        """(reconstructed) the paper's peak lr was lost; lr * 512/d is the spec's rule."""
        return self.lr * (512 / d_model if self.lr_width_scaling else 1.0)


@dataclass(frozen=True)
class RunPaths:
    """Where a run's files live: checkpoints, curves, the metrics file DVC compares, and the data
    it reads."""

    run_dir: Path
    plots_dir: Path
    metrics_file: Path
    bins_dir: Path
    tokenizer_dir: Path

    @classmethod
    def for_run(cls, group: str, name: str, root: Path = Path(".")) -> "RunPaths":
        return cls(root / "runs" / group / name, root / "plots" / group / name,
                   root / "metrics" / group / f"{name}.json", root / "data" / "bins", root / "data" / "tokenizer")


@dataclass(frozen=True)
class RunSpec:
    group: str
    name: str
    seed: int
    model: ModelConfig
    run: RunSettings
    train: TrainSettings
    variant: str | None = None
    init_from: str | None = None  # run_id whose final weights this run starts from (else random init)

    @property
    def run_id(self) -> str:
        return f"{self.group}/{self.name}"

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "group": self.group, "name": self.name, "seed": self.seed,
                "variant": self.variant, "init_from": self.init_from, "model": self.model.to_dict(),
                "run": dataclasses.asdict(self.run), "train": dataclasses.asdict(self.train)}


@dataclass(frozen=True)
class RunFields:
    """What a group decides for one run beyond the family's shared model fields."""

    model: dict
    seed: int
    variant: str | None = None
    train: dict = dataclasses.field(default_factory=dict)  # TrainSettings fields overridden for the run
    init_from: str | None = None
    # where each overridden training setting is written (its full params key), for error messages
    train_from: dict = dataclasses.field(default_factory=dict)
    run: dict = dataclasses.field(default_factory=dict)  # RunSettings fields overridden for the run
    run_from: str = ""  # the params key of those overrides


# ---- groups --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Group:
    """A group of runs: one DVC matrix stage, one model family.

    template  the run name, `{field}` placeholders for integers (`{variant}` for a free name)
    params    the params keys a run reads (dvc.yaml's `params:`; `{variant}` = the run's variant)
    run_key   the run-settings block (Dense and the ablations use Stage 2's, as in the paper)
    grid      the params keys the group's runs are expanded from
    expand    params -> every name-field dict the grid expands to
    fields    (params view, name fields) -> RunFields
    stage     the DVC stage's name ("" = the group's)
    more      runs of the same group from a second DVC stage, named by its own template (the
              ablations' multi-seed variants: a DVC foreach or matrix makes one stage per item, so
              `<variant>` runs and `<variant>-s<seed>` runs cannot come from one stage)
    """

    name: str
    arch: str
    template: str
    params: tuple[str, ...]
    run_key: str
    grid: tuple[str, ...]
    expand: Callable[[dict], list[dict]]
    fields: Callable[[dict, dict], RunFields]
    stage: str = ""
    more: "Group | None" = None

    @property
    def forms(self) -> tuple["Group", ...]:
        """The group's DVC stages, each a Group of its own template, params and grid."""
        return (self,) if self.more is None else (self, *self.more.forms)

    @property
    def stage_name(self) -> str:
        return self.stage or self.name

    def __post_init__(self):
        self.name_form  # a template outside the name grammar fails where the group is declared

    @functools.cached_property
    def name_form(self) -> NameForm:
        """The template as the name grammar reads it (cart/models/names.py)."""
        return NameForm(self.template)

    @property
    def placeholders(self) -> list[str]:
        return list(self.name_form.fields)

    def format(self, **fields) -> str:
        return self.name_form.format(**fields)

    def _match(self, name: str) -> dict | None:
        return self.name_form.match(name)

    def form_of(self, name: str) -> "Group":
        """The stage a run name belongs to: the last form whose template matches (a later form's
        template is the more specific, e.g. `{variant}-s{seed}` after `{variant}`)."""
        for form in reversed(self.forms):
            if form._match(name) is not None:
                return form
        patterns = " or ".join(repr(f.template) for f in self.forms)
        raise ValueError(f"run name {name!r} does not match {self.name}'s pattern {patterns}")

    def parse(self, name: str) -> dict:
        return self.form_of(name)._match(name)

    def keys(self, name: str) -> tuple[str, ...]:
        form = self.form_of(name)
        variant = form._match(name).get("variant", "")
        return tuple(k.replace("{variant}", variant) for k in form.params)

    def names(self, params: dict) -> list[str]:
        """Every run the grids expand to. A name must read back as a run of the stage that made it
        (e.g. a single-seed ablation variant named `A-s1` would read as multi-seed variant A's)."""
        out = []
        for form in self.forms:
            for f in form.expand(params):
                name = form.format(**f)
                other = self.form_of(name)
                if other is not form:
                    key = f"{form.grid[0]}.{f['variant']}" if "variant" in f else form.grid[0]
                    raise ValueError(f"{key}: run name {name!r} reads as a run of {other.grid[0]} (pattern "
                                     f"{other.template!r}); rename it")
                out.append(name)
        return out

    @property
    def grids(self) -> tuple[str, ...]:
        """The params keys naming the group's runs, over all its stages."""
        return tuple(dict.fromkeys(k for form in self.forms for k in form.grid))

    @property
    def plan_keys(self) -> tuple[str, ...]:
        """What describing the group's runs reads (no model build): the grid, the run settings and
        the group's own keys, not the shared model and train sections."""
        own = (k for form in self.forms for k in form.params
               if not k.startswith(("model.", "train")) and "{variant}" not in k)
        return tuple(dict.fromkeys((*self.grids, self.run_key, *own)))


def _grid(params: dict, key: str, names: tuple[str, ...]) -> list[dict]:
    grid = section(params, key)
    if not isinstance(grid, dict) or sorted(grid) != sorted(names):
        raise ValueError(f"{key}: expected the lists {list(names)}, got {grid!r}")
    for n in names:
        if not isinstance(grid[n], list) or not grid[n]:
            raise ValueError(f"{key}.{n}: expected a non-empty list, got {grid[n]!r}")
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def _variant_names(params: dict, key: str, may_be_empty: bool = False) -> list[str]:
    variants = section(params, key)
    if not isinstance(variants, dict) or not (variants or may_be_empty):
        what = "a mapping" if may_be_empty else "a non-empty mapping"
        raise ValueError(f"{key}: expected {what} of name -> fields, got {variants!r}")
    return list(variants)


def _seeds(params: dict, key: str) -> list[int]:
    seeds = section(params, key)
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ValueError(f"{key}: expected a non-empty list of distinct integer seeds, e.g. [42, 137, 271], "
                         f"got {seeds!r}")
    return seeds


def _variant_entry(p: dict, key: str, run_overrides: bool = False) -> tuple[dict, dict, dict]:
    """A variant's (model fields, train overrides, run overrides): a mapping of config fields, with an
    optional `train:` mapping of training settings and, where the group allows it, a `run:` mapping of
    run settings (e.g. a longer run than the group's)."""
    entry = section(p, key) or {}
    if not isinstance(entry, dict):
        raise ValueError(f"{key}: expected a mapping of config fields, got {entry!r}")
    entry = dict(entry)
    train = entry.pop("train", None) or {}
    if not isinstance(train, dict):
        raise ValueError(f"{key}.train: expected a mapping of training settings, got {train!r}")
    run = entry.pop("run", None) or {} if run_overrides else {}
    if not isinstance(run, dict):
        raise ValueError(f"{key}.run: expected a mapping of run settings, got {run!r}")
    return entry, train, run


def _train_overrides(*sources: tuple[str, dict]) -> tuple[dict, dict]:
    """The training settings a run overrides, merged from (params key, mapping) pairs in order
    (later wins; a setting is replaced whole, e.g. a variant's `loop_sampling` is not merged into
    the group's), and the full params key each one comes from."""
    merged, origin = {}, {}
    for where, block in sources:
        block = block or {}
        if not isinstance(block, dict):
            raise ValueError(f"{where}: expected a mapping of training settings, got {block!r}")
        for k, v in block.items():
            merged[k], origin[k] = v, f"{where}.{k}"
    return merged, origin


def _grid_fields(p: dict, model: dict, seed: int, train_key: str) -> RunFields:
    """A grid run: its model fields and seed, and the group's `train_key` overrides."""
    merged, origin = _train_overrides((train_key, section(p, train_key)))
    return RunFields(model, seed, train=merged, train_from=origin)


def _model_keys(arch: str) -> tuple[str, str]:
    return "model.common", f"model.{arch}"


def _ablation_fields(p: dict, f: dict, variants: str = "ablation.variants") -> RunFields:
    """An ablation run: ablation.base, then its entry of `variants`; seed from its name (a
    multi-seed variant's run) or ablation.seed."""
    name = f["variant"]
    fields, train, _ = _variant_entry(p, f"{variants}.{name}")
    merged, origin = _train_overrides(("ablation.train", section(p, "ablation.train")),
                                      (f"{variants}.{name}.train", train))
    seed = f["seed"] if "seed" in f else section(p, "ablation.seed")
    return RunFields(dict(section(p, "ablation.base")) | fields, seed, name, merged, train_from=origin)


# The ablation variants trained at several seeds (the paper's P=4, R=10 spot check is a 3-seed mean):
# runs `<variant>-s<seed>` of the ablation group, from a DVC matrix of their own.
MULTI_SEED = "ablation.multi_seed"
_ABLATION_MULTI_SEED = Group(
    "ablation", "cart", "{variant}-s{seed}",
    (*_model_keys("cart"), "train", "stage2.run", "ablation.base", "ablation.train",
     f"{MULTI_SEED}.variants.{{variant}}"), "stage2.run", (f"{MULTI_SEED}.variants", f"{MULTI_SEED}.seeds"),
    lambda p: [{"variant": v, "seed": s} for v in _variant_names(p, f"{MULTI_SEED}.variants", may_be_empty=True)
               for s in _seeds(p, f"{MULTI_SEED}.seeds")],
    lambda p, f: _ablation_fields(p, f, f"{MULTI_SEED}.variants"), stage="ablation_multi_seed")


def _variant_group(name: str, arch: str, run_key: str = "stage2.run", parent: str | None = None,
                   train_only: tuple[str, ...] | None = None, shared_train: str | None = None,
                   run_overrides: bool = False) -> Group:
    """Runs `<variant>-s<seed>` of one family, same run settings as Stage 2 unless `run_key` says:
    every run sets `<name>.base` (e.g. d_model, n_layers), then its entry of `<name>.variants`
    (model fields, and optional `train:` overrides), on top of the group's `<name>.train` overrides
    (and before them those of `shared_train`, another group's, e.g. Stage 1's recipe); seeds from
    `<name>.seeds`. With `parent`, each run starts from the final weights of run
    `<parent>/<name.init_from>-s<seed>` (e.g. RAT+ resolution adaptation from a pretrained run).
    With `train_only`, the variants differ in training alone: an entry holds nothing but `train:`,
    which must set each of the named settings (every run trains the model of `<name>.base`).
    With `run_overrides`, an entry may hold a `run:` mapping of run settings over `run_key`'s."""
    keys = (*_model_keys(arch), "train", run_key, *((shared_train,) if shared_train else ()), f"{name}.base",
            f"{name}.train", f"{name}.variants.{{variant}}")
    keys += (f"{name}.init_from",) if parent else ()

    def expand(p: dict) -> list[dict]:
        seeds = _seeds(p, f"{name}.seeds")
        return [{"variant": v, "seed": s} for v in _variant_names(p, f"{name}.variants") for s in seeds]

    def fields(p: dict, f: dict) -> RunFields:
        key = f"{name}.variants.{f['variant']}"
        model, train, run = _variant_entry(p, key, run_overrides)
        if train_only is not None:
            if model:
                raise ValueError(f"{key}.{sorted(model)[0]}: {name} variants differ in training alone (a `train:` "
                                 f"mapping); every run trains the model of {name}.base")
            for k in train_only:
                if k not in train:
                    raise ValueError(f"{key}.train.{k}: every {name} variant sets it (the setting its runs compare)")
        shared = ((shared_train, section(p, shared_train)),) if shared_train else ()
        merged, origin = _train_overrides(*shared, (f"{name}.train", section(p, f"{name}.train")),
                                          (f"{key}.train", train))
        base = section(p, f"{name}.base")
        if not isinstance(base, dict):
            raise ValueError(f"{name}.base: expected a mapping of model fields, got {base!r}")
        init = f"{parent}/{section(p, f'{name}.init_from')}-s{f['seed']}" if parent else None
        return RunFields(dict(base) | model, f["seed"], f["variant"], merged, init, origin, run, f"{key}.run")

    return Group(name, arch, "{variant}-s{seed}", keys, run_key, (f"{name}.variants", f"{name}.seeds"),
                 expand, fields)


GROUPS: dict[str, Group] = {g.name: g for g in (
    Group("stage1", "cart", "d{d_model}-P{n_prelude}-R{n_loops}",
          (*_model_keys("cart"), "train", "stage1.run", "stage1.seed", "stage1.train"), "stage1.run",
          ("stage1.grid",), lambda p: _grid(p, "stage1.grid", ("d_model", "n_prelude", "n_loops")),
          lambda p, f: _grid_fields(p, f, section(p, "stage1.seed"), "stage1.train")),
    # Stage 1's controls at its run settings, seed and recipe (not in the paper): Dense per width ...
    Group("stage1_dense", "dense", "d{d_model}-L{n_layers}",
          (*_model_keys("dense"), "train", "stage1.run", "stage1.seed", "stage1.train"), "stage1.run",
          ("stage1_dense.grid",), lambda p: _grid(p, "stage1_dense.grid", ("d_model", "n_layers")),
          lambda p, f: _grid_fields(p, f, section(p, "stage1.seed"), "stage1.train")),
    # ... and CART variants (the other reading, the leak, other seeds), a variant's run may be longer
    _variant_group("stage1_variants", "cart", run_key="stage1.run", shared_train="stage1.train",
                   run_overrides=True),
    Group("stage2", "cart", "d{d_model}-R{n_loops}-s{seed}",
          (*_model_keys("cart"), "train", "stage2.run", "stage2.n_prelude", "stage2.train"), "stage2.run",
          ("stage2.grid",), lambda p: _grid(p, "stage2.grid", ("d_model", "n_loops", "seed")),
          lambda p, f: _grid_fields(p, {"d_model": f["d_model"], "n_loops": f["n_loops"],
                                        "n_prelude": section(p, "stage2.n_prelude")}, f["seed"], "stage2.train")),
    Group("dense", "dense", "L{n_layers}-s{seed}",
          (*_model_keys("dense"), "train", "stage2.run", "dense.d_model", "dense.train"), "stage2.run",
          ("dense.grid",), lambda p: _grid(p, "dense.grid", ("n_layers", "seed")),
          lambda p, f: _grid_fields(p, {"n_layers": f["n_layers"], "d_model": section(p, "dense.d_model")},
                                    f["seed"], "dense.train")),
    Group("ablation", "cart", "{variant}",
          (*_model_keys("cart"), "train", "stage2.run", "ablation.seed", "ablation.base", "ablation.train",
           "ablation.variants.{variant}"), "stage2.run", ("ablation.variants",),
          lambda p: [{"variant": v} for v in _variant_names(p, "ablation.variants")], _ablation_fields,
          more=_ABLATION_MULTI_SEED),
    _variant_group("sweep_cart", "cart", run_key="sweep_cart.run"),
    _variant_group("sweep_dense", "dense", run_key="sweep_dense.run"),
    _variant_group("lrt", "lrt"),
    _variant_group("ratplus", "ratplus"),
    _variant_group("ratplus_adapt", "ratplus", run_key="ratplus_adapt.run", parent="ratplus"),
    # CART at one config trained with a fixed, a uniform and a Poisson-lognormal R per step
    _variant_group("sampled_r", "cart", train_only=("loop_sampling",)),
)}
# Fields a group decides per run; the shared model sections may not set them.
_PER_RUN_FIELDS = {"vocab_size", "d_model", "n_prelude", "n_loops", "n_layers", "noncausal_cross_attn",
                   "unfreeze_kv", "unshare_core", "self_attn_core", "disable_hyperconnection", "disable_lti",
                   "disable_lie"}


def group_of(name: str) -> Group:
    if name not in GROUPS:
        raise ValueError(f"unknown group {name!r}; valid: {list(GROUPS)}")
    return GROUPS[name]


def model_defaults(params: dict, arch: str) -> dict:
    """model.common + model.<arch>: the family's shared fields, before a run adds its own."""
    common = section(params, "model.common")
    family = params["model"].get(arch) or {} if isinstance(params.get("model"), dict) else {}
    for key, block in (("model.common", common), (f"model.{arch}", family)):
        if not isinstance(block, dict):
            raise ValueError(f"{key}: expected a mapping of model fields, got {block!r}")
        bad = sorted(set(block) & _PER_RUN_FIELDS)
        if bad:
            raise ValueError(f"{key}.{bad[0]}: set per run by the group's grid or variants, not in the "
                             f"shared model sections")
    return dict(common) | dict(family)


def resolve_run(params: dict, group: str, name: str, vocab_size: int) -> RunSpec:
    """The full spec of run `<group>/<name>`, validated; ValueError names the bad key. Reads only
    the group's declared params keys."""
    g = group_of(group)
    fields = g.parse(name)
    try:
        p = view(params, g.keys(name))
    except ValueError:  # e.g. a variant's own key exists only for the grid's variants: say which runs do
        check_in_grid(params, group, name)
        raise
    form = g.form_of(name)
    rf = form.fields(p, fields)
    train = _train_settings(section(p, "train"), rf, f"{group} run {name}")
    run = _run_settings(p, g.run_key, rf)
    if train.warmup_steps >= run.steps:
        raise ValueError(f"{rf.train_from.get('warmup_steps', 'train.warmup_steps')}={train.warmup_steps} must be "
                         f"< {g.run_key}.steps={run.steps}")
    if not isinstance(rf.seed, int) or isinstance(rf.seed, bool):
        raise ValueError(f"{group} seed must be an integer, got {rf.seed!r}")
    where = f"{form.grid[0]}.{rf.variant}" if group == "ablation" else f"{group} run {name}"
    model = config_from_dict({"arch": g.arch, **model_defaults(p, g.arch), **rf.model, "vocab_size": vocab_size},
                             where=where)
    # the sampled-R checks against the model, naming where the run's loop_sampling is written
    origin = rf.train_from.get("loop_sampling") or rf.train_from.get("backprop_loops")
    train.loop_sampling.check_model(model, train.backprop_loops, origin.rsplit(".", 1)[0] if origin else "train")
    return RunSpec(group=group, name=name, seed=rf.seed, model=model, run=run, train=train, variant=rf.variant,
                   init_from=rf.init_from)


def _run_settings(p: dict, run_key: str, rf: RunFields) -> RunSettings:
    """The group's run settings with the run's own overrides (a variant's `run:`) on top; a bad
    override is named at the key it is written."""
    base = section(p, run_key)
    if not isinstance(base, dict):
        raise ValueError(f"{run_key}: expected a mapping of run settings, got {base!r}")
    unknown = sorted(set(rf.run) - {f.name for f in dataclasses.fields(RunSettings)})
    if unknown:
        raise ValueError(f"{rf.run_from}.{unknown[0]}: unknown run setting; valid: "
                         f"{[f.name for f in dataclasses.fields(RunSettings)]}")
    return build(RunSettings, dict(base) | rf.run, rf.run_from if rf.run else run_key)


def _train_settings(shared: dict, rf: RunFields, run: str) -> TrainSettings:
    """`train` with the run's overrides on top. A bad override fails naming the params key it is
    written at (e.g. `sampled_r.variants.uniform.train.loop_sampling.r_min`), not `train.<field>`."""
    hints = get_type_hints(TrainSettings)
    for k, v in rf.train.items():
        where = rf.train_from.get(k, f"{run}: train override {k}")
        if k not in hints:
            raise ValueError(f"{where}: unknown training setting; valid: {sorted(hints)}")
        check_value(hints[k], v, where)
    try:
        return build(TrainSettings, dict(shared) | rf.train, "train")
    except ValueError as e:  # a range check of TrainSettings itself ("train: lr: out of range, ...")
        msg = str(e)
        for k, where in rf.train_from.items():
            for prefix in (f"train: {k}: ", f"train.{k}: "):
                if msg.startswith(prefix):
                    raise ValueError(f"{where}: {msg[len(prefix):]}") from None
        raise


def describe_run(params: dict, group: str, name: str) -> dict:
    """What a planned run is, without building its model (it may not exist yet): its family, the
    fields its name and group set, seed, variant and run settings. Reads the group's plan keys."""
    g = group_of(group)
    p = view(params, g.plan_keys)
    rf = g.form_of(name).fields(p, g.parse(name))
    run = _run_settings(p, g.run_key, rf)
    return {"group": group, "name": name, "arch": g.arch, **rf.model, "seed": rf.seed, "variant": rf.variant,
            "init_from": rf.init_from, "planned_steps": run.steps, "seq_len": run.seq_len,
            "tokens_per_step": run.tokens_per_step}


def plan_keys(groups) -> tuple[str, ...]:
    """The params keys a plan of these groups reads (the summary and results stages' params)."""
    return tuple(dict.fromkeys(k for g in groups for k in group_of(g).plan_keys))


def grid_keys(groups) -> tuple[str, ...]:
    """The params keys naming these groups' runs (what `run_names` reads)."""
    return tuple(dict.fromkeys(k for g in groups for k in group_of(g).grids))


def run_names(params: dict, groups=None) -> dict[str, list[str]]:
    """Every run the profile's DAG will train, per group (what dvc.yaml's matrices expand to)."""
    return {name: g.names(params) for name, g in GROUPS.items()
            if groups is None or name in groups}


def check_in_grid(params: dict, group: str, name: str) -> None:
    """A run name must be one the grid expands to (dvc.yaml only generates those; a hand-typed
    name outside it would train a run nothing tracks)."""
    names = run_names(params, [group_of(group).name])[group]
    if name not in names:
        raise ValueError(f"{group}/{name} is not in params.yaml's {group} grid; valid: {names}")


def check_model_section(params: dict) -> None:
    """`model` holds `common` and one block per family, nothing else (a typo would be read by no run)."""
    from .models import FAMILIES
    model = section(params, "model")
    valid = ["common", *FAMILIES]
    unknown = sorted(set(model) - set(valid)) if isinstance(model, dict) else None
    if unknown is None or unknown:
        raise ValueError(f"model: unknown key(s) {unknown if unknown else model!r}; valid: {valid} "
                         f"(shared fields go in model.common, a family's own in model.<family>)")


def validate_profile(params: dict, vocab_size: int = 32_000) -> dict[str, list[str]]:
    """Resolve every run of the profile, so a bad grid entry fails before any training."""
    check_model_section(params)
    names = run_names(params)
    for group, group_names in names.items():
        for name in group_names:
            resolve_run(params, group, name, vocab_size)
    return names
