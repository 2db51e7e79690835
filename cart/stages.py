"""What each DVC stage reads: its params keys and its code, declared once.

dvc.yaml lists, per stage, the params keys and the code files the stage depends on. Both are
facts about the code, so they are derived here and tests/test_stages.py checks dvc.yaml against
them: each training group's params are its own list (cart.experiments.GROUPS), the summaries'
and the results store's are the keys their run plan reads, the others are declared below; the
code is the stage module's import closure plus the model families it runs (cart/code_deps.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from .code_deps import code_closure, family_closure
from .evaluation.session import STUDIES, study_params
from .experiments import GROUPS, plan_keys


def train_command(group: str, name: str, python: str = "python") -> list[str]:
    """The command that trains run `<group>/<name>`: dvc.yaml's training stages run exactly this
    (tests/test_stages.py checks every one), and bench/gpu/job.py runs it where there is no DVC."""
    return [python, "-m", "pipeline.train", group, name]


def training_stages() -> dict[str, str]:
    """Every training stage of dvc.yaml (a matrix or foreach, by its name) -> the group it trains."""
    return {form.stage_name: g.name for g in GROUPS.values() for form in g.forms}


@dataclass(frozen=True)
class Stage:
    """A DVC stage: its module, the params keys it reads (dvc.yaml `params:`, exactly; `{name}`
    is a matrix stage's run name), and the model families whose configs, or configs and models,
    it runs (the registry imports those lazily, so they are not in the module's imports)."""

    module: str
    params: tuple[str, ...]
    models: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()

    def code(self) -> list[str]:
        files = set(code_closure(self.module))
        for arch in self.models:
            files |= set(family_closure(arch))
        for arch in self.configs:
            files |= set(family_closure(arch, config_only=True))
        return sorted(files)


def stages() -> dict[str, Stage]:
    """Every stage of dvc.yaml (a matrix stage once, by its group name)."""
    every_arch = tuple(dict.fromkeys(g.arch for g in GROUPS.values()))
    table = {
        "corpus": Stage("pipeline.corpus", ("corpus",)),
        "tokenizer": Stage("pipeline.tokenizer", ("tokenizer",)),
        "bins": Stage("pipeline.bins", ("bins",)),
    }
    for g in GROUPS.values():
        for form in g.forms:  # a group's runs may come from more than one stage (the multi-seed ablations)
            table[form.stage_name] = Stage("pipeline.train", form.params, models=(g.arch,))
    table["summarize"] = Stage("pipeline.summarize", plan_keys(GROUPS), configs=every_arch)
    table |= {
        "benchmarks": Stage("pipeline.benchmarks", ("benchmarks",), models=("cart",)),
        "variable_r": Stage("pipeline.variable_r", ("benchmarks", "variable_r", "corpus.domains"), models=("cart",)),
        **{f"eval_{study}": Stage("pipeline.evaluate", study_params(study), models=spec["models"])
           for study, spec in STUDIES.items()},
        "results": Stage("pipeline.results", ("profile", *plan_keys(GROUPS)), configs=every_arch),
        "report": Stage("pipeline.report", ("report",), configs=every_arch),
    }
    return table
