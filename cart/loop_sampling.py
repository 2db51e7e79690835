"""Training with a sampled recurrence depth: the R each optimizer step runs.

The paper trains CART at one R and finds every other inference R worse (its Table 12); it names
training with a sampled depth as the remedy and never tries it. `train.loop_sampling` picks R
afresh for every optimizer step (all its micro-batches and sub-steps run the same R):

    fixed              R = n_loops at every step (the paper)
    uniform            R ~ U{r_min, ..., r_max}, both ends included
    poisson_lognormal  Huginn's depth sampler (Geiping et al. 2025, "Scaling up test-time compute
                       with latent reasoning: a recurrent depth approach", arXiv:2502.05171, and its
                       `randomized_iteration_sampler` in github.com/seal-rg/recurrent-pretraining,
                       recpre/raven_modeling_minimal.py, which fixes sigma = 0.5):
                           tau ~ N(log(rbar) - sigma^2 / 2, sigma),  R = 1 + Poisson(exp(tau))
                       so E[exp(tau)] = rbar and E[R] = rbar + 1. We set rbar = n_loops - 1, so the
                       mean R is n_loops as in the other schemes (Huginn names its runs by rbar,
                       whose mean R is rbar + 1). R is clamped to r_max when it is set.

The mean R is the model's n_loops, the R the run is named by: uniform must be centred on it
((r_min + r_max) / 2 = n_loops). Effective parameters and MFU are counted at n_loops, i.e. at the
mean R. The clamp at r_max lowers poisson_lognormal's mean (sigma 0.5: by 0.3% at r_max = 3 n_loops,
3% at 2 n_loops, 6% for n_loops 10 at r_max 16), so it must lie above n_loops; every step's R is
logged (the train/n_loops curve), so the realised mean can be read off. Only a CART model with a
shared core can run a sampled R; an unshared core (ablation Z) has exactly n_loops blocks.

The R of step s is a pure function of (run seed, s): a fresh numpy Generator seeded from the
SeedSequence of (seed, s). So every DDP rank draws the same R without a broadcast, and a resumed
run draws the same sequence as an uninterrupted one with nothing to save in the checkpoint (the
step and the seed already are). Torch-free, so run specs validate without torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

SCHEMES = ("fixed", "uniform", "poisson_lognormal")
# Mixed into every step's seed, so R's stream is independent of any other stream seeded by the run seed.
_STREAM = 0x6C6F6F70  # "loop"


@dataclass(frozen=True)
class LoopSampling:
    """`train.loop_sampling`: how many loop iterations each optimizer step runs."""

    scheme: Literal["fixed", "uniform", "poisson_lognormal"] = "fixed"
    r_min: int | None = None  # uniform: the smallest R
    r_max: int | None = None  # uniform: the largest R; poisson_lognormal: the clamp (None: unbounded)
    sigma: float | None = None  # poisson_lognormal: std of the log Poisson rate (Huginn: 0.5)

    def __post_init__(self):
        """Checks of these fields alone; those against the model are `check_model`'s."""
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme: {self.scheme!r} is not one of {list(SCHEMES)}")
        reads = {"fixed": (), "uniform": ("r_min", "r_max"), "poisson_lognormal": ("sigma", "r_max")}[self.scheme]
        for name in ("r_min", "r_max", "sigma"):
            if name not in reads and getattr(self, name) is not None:
                raise ValueError(f"{name}: the {self.scheme} scheme does not read it; leave it null")
        if self.scheme == "uniform":
            if self.r_min is None or self.r_max is None:
                raise ValueError("r_min, r_max: the uniform scheme needs both")
            if self.r_min < 1:
                raise ValueError(f"r_min: must be >= 1 (every step runs at least one loop), got {self.r_min}")
            if self.r_min > self.r_max:
                raise ValueError(f"r_min: {self.r_min} > r_max {self.r_max}")
        if self.scheme == "poisson_lognormal":
            if self.sigma is None or not self.sigma > 0:
                raise ValueError(f"sigma: the poisson_lognormal scheme needs sigma > 0 (Huginn: 0.5), got {self.sigma}")
            if self.r_max is not None and self.r_max < 1:
                raise ValueError(f"r_max: must be >= 1, got {self.r_max}")

    @property
    def varies(self) -> bool:
        return self.scheme != "fixed"

    def check_model(self, cfg, backprop_loops: int | None, where: str = "train") -> None:
        """Reject, naming the key, what the model cannot train with: a sampled R on anything but a
        CART with a shared core, a mean R other than the model's n_loops, an R past the projected
        loop-index table, and truncated backpropagation that would leave weights untrained (no
        loop, no anchor of the prelude output, an unshared core's early blocks)."""
        key = f"{where}.loop_sampling"
        if backprop_loops is not None and cfg.arch != "cart":
            raise ValueError(f"{where}.backprop_loops: truncated backpropagation through the loop needs a CART "
                             f"model, this run trains {cfg.arch!r}; leave it null")
        if backprop_loops is not None and (cfg.unfreeze_kv or cfg.self_attn_core):
            raise ValueError(f"{where}.backprop_loops: this CART's core reads no anchor of the prelude output "
                             f"(unfreeze_kv or self_attn_core), so truncation would leave the prelude without "
                             f"gradient whenever R > {backprop_loops}; leave it null")
        if backprop_loops is not None and cfg.unshare_core and backprop_loops < cfg.n_loops:
            raise ValueError(f"{where}.backprop_loops: {backprop_loops} < n_loops={cfg.n_loops} would leave the "
                             f"first {cfg.n_loops - backprop_loops} block(s) of an unshared core without gradient; "
                             f"leave it null")
        if not self.varies:
            return
        if cfg.arch != "cart" or cfg.unshare_core:
            what = "an unshared core (exactly n_loops blocks)" if cfg.arch == "cart" else f"a {cfg.arch!r} model"
            raise ValueError(f"{key}.scheme: {self.scheme} samples R per step, which only a CART model with a "
                             f"shared core can run; this run trains {what}; use fixed")
        R = cfg.n_loops
        if self.scheme == "uniform" and self.r_min + self.r_max != 2 * R:
            raise ValueError(f"{key}.r_max: uniform R must average the model's n_loops={R} (the R the run is named "
                             f"and accounted by), but (r_min + r_max) / 2 = {(self.r_min + self.r_max) / 2}; "
                             f"with r_min={self.r_min} use r_max={2 * R - self.r_min}")
        if self.scheme == "poisson_lognormal" and R < 2:
            raise ValueError(f"{key}.scheme: poisson_lognormal R = 1 + Poisson(rate) has mean n_loops, which must "
                             f"be >= 2 for a positive rate; the model has n_loops={R}")
        if self.scheme == "poisson_lognormal" and self.r_max is not None and self.r_max <= R:
            raise ValueError(f"{key}.r_max: a clamp at {self.r_max} <= the mean R (the model's n_loops={R}) is "
                             f"another distribution; use r_max >= {2 * R} (or null)")
        if cfg.lie == "projected" and not cfg.disable_lie:
            largest = self.r_max
            if largest is None or largest > cfg.lie_rows:
                raise ValueError(f"{key}.r_max: the projected loop-index embedding has lie_rows={cfg.lie_rows} "
                                 f"rows, one per iteration, so R must stay <= {cfg.lie_rows}; got r_max={largest}")

    def sample(self, n_loops: int, seed: int, step: int) -> int:
        """The R of optimizer step `step` (0-based) of a run with this seed and mean n_loops."""
        if not self.varies:
            return n_loops
        rng = np.random.default_rng([_STREAM, seed, step])
        if self.scheme == "uniform":
            return int(rng.integers(self.r_min, self.r_max, endpoint=True))
        tau = rng.normal(math.log(n_loops - 1) - self.sigma ** 2 / 2, self.sigma)
        R = 1 + int(rng.poisson(math.exp(tau)))
        return R if self.r_max is None else min(R, self.r_max)
