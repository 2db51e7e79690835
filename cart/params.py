"""params.yaml -> validated dataclasses.

PyYAML parses the file; `build` maps one section onto a (possibly nested) dataclass, rejecting
unknown keys (typos), missing keys and wrong types with a ValueError that names the full key
path, e.g. `stage2.run.seq_len: expected int, got '1024'`. The dataclass's own __post_init__
then checks ranges. No stage re-declares a default: defaults live in params.yaml, and the
dataclasses here only say what shape the values must have.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

PARAMS_FILE = "params.yaml"


def load_params(path: str | Path = PARAMS_FILE) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path} (run from the repository root)")
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections at the top level")
    return data


def section(params: dict, dotted: str) -> Any:
    """params['a']['b'] for 'a.b', with an error naming the missing key."""
    node = params
    for i, part in enumerate(dotted.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(dotted.split(".")[:i + 1])
            raise ValueError(f"params.yaml: missing key {where!r}")
        node = node[part]
    return node


def view(params: dict, keys) -> dict:
    """A copy of params holding only the dotted `keys` (e.g. "stage2.run", "model.common"): a stage
    resolved from its view cannot read a key it did not declare (and DVC does not track)."""
    out: dict = {}
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = section(params, key)
    return out


def build(cls, data: Any, where: str):
    """Instantiate dataclass `cls` from `data` (a mapping), validating keys and types."""
    return _convert(cls, data, where)


def check_value(tp, value: Any, where: str) -> None:
    """Raise a ValueError naming `where` unless value fits annotation `tp`."""
    _convert(tp, value, where)


def _convert(tp, value: Any, where: str):
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        hints = get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
        missing = [n for n, f in fields.items() if n not in value
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}")
        kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in value.items()}
        try:
            return tp(**kwargs)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ValueError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of "
                         f"{[getattr(a, '__name__', str(a)) for a in args]}")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        (item,) = get_args(tp)[:1] or (Any,)
        out = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        _, item = get_args(tp)
        return {k: _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (bool, str):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"{where}: unsupported annotation {tp!r}")
    raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
