"""Between GPU jobs: pick what the later runs use from the earlier ones, as the paper's protocol does
(Stage 1 picks P for Stage 2) and as a fair comparison needs (each family at its own best lr):

    python -m bench.gpu.choose            # reads metrics/{stage1,sweep_cart,sweep_dense}.json

writes configs/gpu_chosen.yaml, an overlay applied after `gpu` (python -m pipeline.profile gpu_chosen):
Stage 2's and the ablations' P = Stage 1's best P at the largest screened width; CART's peak lr = the
CART sweep's best; Dense's, LRT's and RAT+'s = the Dense sweep's best (both on the same backbone);
RAT+ adaptation at 0.1 x that (the authors' ratio). The chosen values are committed back into
configs/gpu.yaml, so the profile as committed is what ran.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from cart.io import atomic_write_text, read_json
from cart.params import load_params, section


def choose(root: Path = Path(".")) -> dict:
    params = load_params(root / "params.yaml")
    stage1 = read_json(root / "metrics/stage1.json", "Stage 1 summary")
    widest = max(stage1["best_per_d"], key=int)
    p = int(stage1["best_per_d"][widest]["n_prelude"])
    lr = {}
    for family in ("cart", "dense"):
        best = read_json(root / f"metrics/sweep_{family}.json", f"the {family} lr sweep's summary")["best_variant"]
        lr[family] = float(section(params, f"sweep_{family}.variants.{best}")["train"]["lr"])
    base = dict(section(params, "ablation.base")) | {"n_prelude": p}
    return {"stage2": {"n_prelude": p, "train": {"lr": lr["cart"]}}, "ablation": {"base": base, "train": {"lr": lr["cart"]}},
            "dense": {"train": {"lr": lr["dense"]}}, "lrt": {"train": {"lr": lr["dense"]}},
            "ratplus": {"train": {"lr": lr["dense"]}},
            "ratplus_adapt": {"train": {"lr": lr["dense"] / 10, "warmup_steps": 0}}}


def main() -> int:
    overlay = choose()
    text = ("# Chosen by bench/gpu/choose.py from the Stage 1 screen and the lr sweeps of this profile.\n"
            + yaml.safe_dump(overlay, sort_keys=False))
    atomic_write_text(Path(__file__).resolve().parents[2] / "configs" / "gpu_chosen.yaml", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
