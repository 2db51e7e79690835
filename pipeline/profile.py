"""Switch params.yaml to a named profile: `python -m pipeline.profile paper`.

A profile is an overlay in configs/<name>.yaml: its mappings are merged key by key into
params.yaml and its lists and scalars replace what is there; a mapping of named runs or domains
(`variants`, `domains`, `mixture`) replaces the default's whole. The result is validated (every run
of every group resolves) before params.yaml is rewritten, atomically. `git checkout params.yaml`
returns to the default (smoke) profile.
"""
import argparse
from pathlib import Path

import yaml

from cart.data.corpus import corpus_params
from cart.data.bins import bins_params
from cart.experiments import validate_profile
from cart.io import atomic_write_text
from cart.params import build, load_params, section
from cart.report import ReportSettings
from cart.data.tokenizer import tokenizer_params
from pipeline._cli import run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# Mappings that name a set of things (runs, data domains): an overlay's replaces the base's whole,
# so a profile with other variants or domains does not inherit the default ones.
REPLACED_MAPPINGS = ("variants", "domains", "mixture")


def merge(base: dict, overlay: dict) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in REPLACED_MAPPINGS:
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def validate_all(params: dict) -> None:
    """Every stage's params, checked the way the stage itself will check them."""
    from cart.evaluation.session import STUDIES, study_settings, variable_r_settings
    corpus_params(params)
    tokenizer_params(params)
    bins_params(params)
    validate_profile(params)
    variable_r_settings(params)  # and benchmarks
    for study in STUDIES:
        study_settings(params, study)
    build(ReportSettings, section(params, "report"), "report")


def apply_profile(name: str, params_path: Path) -> dict:
    overlay_path = CONFIGS / f"{name}.yaml"
    if not overlay_path.is_file():
        valid = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
        raise ValueError(f"unknown profile {name!r}; valid: {valid}")
    overlay = load_params(overlay_path)
    base = load_params(params_path)
    unknown = sorted(set(overlay) - set(base))
    if unknown:
        raise ValueError(f"{overlay_path}: unknown top-level section(s) {unknown}; valid: {sorted(base)}")
    merged = merge(base, overlay)
    validate_all(merged)
    return merged


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    merged = apply_profile(args.name, args.params)
    header = (f"# Profile {args.name!r}: configs/{args.name}.yaml applied by `python -m pipeline.profile "
              f"{args.name}`.\n# `git checkout {args.params}` restores the default profile.\n")
    atomic_write_text(args.params, header + yaml.safe_dump(merged, sort_keys=False, width=100))
    print(f"params: profile {args.name!r} written to {args.params}")


if __name__ == "__main__":
    run(main, "profile")
