"""The plan a store is built against: which runs params.yaml expects (so missing ones are reported),
the ablation base, and the fields a run's name encodes."""
from __future__ import annotations

import dataclasses
from typing import Iterable

from ..experiments import group_of
from .schema import GROUPS


@dataclasses.dataclass
class RunPlan:
    """What the store is built against. expected maps run_id -> known fields of a run that may not
    exist yet (group, name, d_model, n_prelude, n_loops, n_layers, seed, variant, flags)."""

    expected: dict[str, dict] = dataclasses.field(default_factory=dict)
    ablation_base: dict | None = None  # {"d_model", "n_prelude", "n_loops"}
    ablation_seed: int | None = None
    profile: str | None = None


def parse_run_name(group: str, name: str) -> dict:
    """The fields a run's name encodes (cart.experiments' templates), and its family; {} for a
    directory whose name no longer matches its group's template."""
    g = group_of(group)
    try:
        return {"arch": g.arch, **g.parse(name)}
    except ValueError:
        return {"arch": g.arch}


def plan_from_params(params: dict, groups: Iterable[str] = GROUPS) -> RunPlan:
    """The runs params.yaml's grids expand to (cart.experiments.run_names), described from the
    groups' plan keys alone."""
    from ..experiments import describe_run, plan_keys, run_names
    from ..params import section, view

    groups = tuple(groups)
    p = view(params, plan_keys(groups))
    expected = {f"{group}/{name}": describe_run(p, group, name)
                for group, names in run_names(p, groups).items() for name in names}
    base = dict(section(p, "ablation.base")) if "ablation" in groups else None
    seed = section(p, "ablation.seed") if "ablation" in groups else None
    return RunPlan(expected=expected, ablation_base=base, ablation_seed=seed)
