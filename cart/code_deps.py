"""The code a module depends on inside the project, read from its imports.

`code_closure` follows every `import` of a project module, at any depth of a file (a function's
lazy import included), so it is a superset of what can run, and the functions a package's YAML
files name (lm-eval task files: `!function cart.evaluation.benchmarks.loaders.piqa`). Model families are imported lazily
by the registry (cart/models/__init__.py), so a family's files are added by name
(`family_closure`). A training run's code fingerprint (cart/training/trainer.py) hashes `training_code`, the
same files its DVC stage lists as deps (cart/stages.py, checked against dvc.yaml by tests).
"""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cart", "pipeline")
_YAML_FUNCTION = re.compile(r"!function\s+([\w.]+)")


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    return _imports_of(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _imports_of(path: Path, mtime_ns: int) -> frozenset[str]:
    """Project modules a file imports, absolute or relative, plus their parent packages (importing
    `cart.models.cart.model` runs cart/__init__.py and cart/models/__init__.py first). Cached per version
    of the file."""
    package = path.relative_to(ROOT).parts[:-1]  # where relative imports start, for modules and __init__ alike
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import submodule`
    if path.name == "__init__.py":  # functions the package's own YAML files (not a subpackage's) name
        for yaml_file in path.parent.rglob("*.yaml"):
            owner = next(d for d in yaml_file.parents if (d / "__init__.py").is_file())
            if owner == path.parent:
                found.update(m.rsplit(".", 1)[0] for m in _YAML_FUNCTION.findall(yaml_file.read_text()))
    out = set()
    for mod in found:
        parts = mod.split(".")
        if parts[0] in PACKAGES:
            out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(m for m in out if _module_file(m) is not None)


def code_closure(*modules: str) -> list[str]:
    """Repository-relative paths of the modules and every project file they import, transitively."""
    seen: set[str] = set()
    # importing a module runs its parent packages' __init__.py first
    todo = [".".join(m.split(".")[:i]) for m in modules for i in range(1, m.count(".") + 2)]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        path = _module_file(mod)
        if path is None:
            raise ValueError(f"no project module {mod!r}")
        seen.add(mod)
        todo += sorted(_imports(path) - seen)
    return sorted(str(_module_file(m).relative_to(ROOT)) for m in seen)


def family_closure(arch: str, config_only: bool = False) -> list[str]:
    """The files a model family's runs execute beyond the shared code: its config and model (or
    its config alone, for stages that count parameters but build no model)."""
    from .models import family_modules
    config, model = family_modules(arch)
    return code_closure(config) if config_only else code_closure(config, model)


def training_code(arch: str) -> list[str]:
    """Every library file a training run of this family depends on (the run's code fingerprint)."""
    return sorted(set(code_closure("cart.training.trainer")) | set(family_closure(arch)))
