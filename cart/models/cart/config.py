"""Config and accounting of CART(d, P, R): P prelude layers, a once-computed MLA anchor, one core
block looped R times, one coda layer. The flags are the paper's ablations (docs/cart.md, Ablations).

Two readings of the model are kept (docs/cart.md, What the authors' code does), chosen by `variant`:
    paper_text   the paper's equations, with our reconstructions where its maths was lost
    paper_code   what the authors trained (github.com/ccapps42/CART, model/*.py)
Each modelling choice that differs is its own field (core_update, hc_init_logit, lie, anchor_norm,
init, norm_eps, unfrozen_kv_input). Left unset (None) a field takes its variant's value
(VARIANT_CHOICES); set explicitly it must agree with the variant, so a config is always one reading
or the other, never a silent mix (e.g. `replace(variant=...)` on a resolved config is an error, not
a relabelling). PAPER_TEXT_VS_CODE lists every difference, recipe included, for the report.

Accounting (the paper's conventions, docs/cart.md, Accounting):
    stored    = every weight held in memory once (tied embedding once, norms included)
    effective = stored + (R - 1) * core: the shared core counts once per iteration
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

from ..base import ConfigBase, require

# The value each variant gives the choice fields. paper_code's are read from the authors' files:
# layers.py/cart.py (CoreBlock returns h + attn + ffn, then LTIInjection adds sigmoid(a) * h_input),
# hyper.py (weights init [1, 0, 0]), lie.py (16 x 32 sinusoid -> Linear(32, d, bias=False)),
# attention.py (MLAKVProjection has no norm; unfreeze_kv projects the LIE-injected h_input),
# cart.py _init_weights (N(0, 0.02) for every Linear and the embedding), config.py (rms_norm_eps 1e-6).
VARIANT_CHOICES: dict[str, dict[str, object]] = {
    "paper_text": {"core_update": "lti_gate", "hc_init_logit": 6.0, "lie": "sinusoid", "anchor_norm": True,
                   "init": "depth_scaled", "norm_eps": 1e-5, "unfrozen_kv_input": "state"},
    "paper_code": {"core_update": "residual_plus_gate", "hc_init_logit": 1.0, "lie": "projected",
                   "anchor_norm": False, "init": "plain", "norm_eps": 1e-6, "unfrozen_kv_input": "core_input"},
}


class Difference(NamedTuple):
    item: str
    paper_text: str
    paper_code: str
    setting: str  # where the choice lives: model fields (model.<field>) or params.yaml keys


# The paper text vs the authors' released code, one row per difference: the report renders this.
PAPER_TEXT_VS_CODE: tuple[Difference, ...] = (
    Difference("core update", "h = lambda * x_r + delta_r, lambda = sigmoid(a) < 1; LTI off: x_r + delta_r",
               "h = (1 + sigmoid(a)) * u_r + delta_r, u_r = x_r + LIE(r) (the block returns u + attn + ffn, "
               "the gate adds sigmoid(a) * u on top); LTI off: 2 u_r + delta_r", "model.core_update"),
    Difference("HyperConnection init", "logits [6, 0, 0] (softmax 0.995 on the newest state)",
               "logits [1, 0, 0] (softmax 0.58 / 0.21 / 0.21)", "model.hc_init_logit"),
    Difference("loop-index embedding", "fixed d-dim sinusoid of r, no parameters, any R",
               "32-dim sinusoid of r (16-row table) through a learned Linear(32 -> d), no bias; R <= 16",
               "model.lie, model.lie_dim, model.lie_rows"),
    Difference("anchor K/V", "projected from RMSNorm(prelude output)", "projected from the prelude output, no norm",
               "model.anchor_norm"),
    Difference("ablation X (unfreeze_kv) K/V input", "the HyperConnection blend x_r", "the LIE-injected core input u_r",
               "model.unfrozen_kv_input"),
    Difference("init", "N(0, 0.02), residual output projections scaled by 1/sqrt(2 (P + R + 1))",
               "plain N(0, 0.02) everywhere", "model.init"),
    Difference("RMSNorm eps", "1e-5", "1e-6", "model.norm_eps"),
    Difference("weight decay", "0.1 on matrices only", "0.1 on every parameter (LTI gate, HC logits, norm gains too)",
               "train.weight_decay_scope"),
    Difference("learning rate", "6e-4 x 512/d peak, cosine to 10%, warm-up 100",
               "flat 3e-4 peak at every width, cosine to 3e-5, warm-up 100",
               "train.lr, train.lr_width_scaling, train.min_lr_ratio, train.warmup_steps"),
    Difference("seeds", "42, 43, 44; best model = lowest seed", "42, 137, 271 (their best models are seed 271)",
               "stage2.grid.seed, dense.grid.seed"),
    Difference("Stage 1 prelude grid", "P in {2, 4, 6, 8}", "P in {2, 3, 4, 6}", "stage1.grid.n_prelude"),
    Difference("training stream", "equal thirds, chunks shuffled",
               "fixed unshuffled cycle in source order: 3 TinyStories, 3 Wikipedia, 4 FineWeb-Edu chunks (30/30/40)",
               "bins.stream, bins.mixture"),
    Difference("document format", "text + EOS", "BOS + text + EOS", "bins.document_format"),
    Difference("a training window's last target at a chunk boundary", "(not stated) ignored: no target from "
               "the next chunk's domain", "trained on (FixedOrderDataset: 1 target in 1,024)",
               "train.cross_chunk_target"),
    Difference("validation windows", "(not stated) disjoint windows of seq_len + 1 tokens",
               "stride seq_len: consecutive windows share one token (eval_perplexity)", "train.val_windows"),
    Difference("benchmark context prefix", "none", "BOS (lm-eval's HF adapter with the Llama-2 tokenizer)",
               "benchmarks.prefix_context"),
    Difference("P=4 spot check", "1 seed", "3 seeds", "ablation (P4)"),
    Difference("benchmark metric in tables", "acc", "HellaSwag and ARC-C acc_norm; LAMBADA acc and perplexity",
               "report tables"),
)


@dataclass(frozen=True)
class CARTConfig(ConfigBase):
    n_prelude: int = 6
    n_loops: int = 6
    kv_latent_ratio: int = 4  # d_c = d / kv_latent_ratio
    hc_window: int = 3  # HyperConnection ring buffer of the last 3 states
    hc_init_logit: float | None = None  # HC logits init [hc_init_logit, 0, 0]; paper_text (reconstructed) 6.0
    lti_init: float = 0.9  # initial per-channel sigmoid(a)
    # which reading of the model; the choice fields below default (None) to its values
    variant: Literal["paper_text", "paper_code"] = "paper_text"
    # lti_gate: h = lambda * x_r + delta (reconstructed); residual_plus_gate: h = (1 + sigma) * u_r + delta
    core_update: Literal["lti_gate", "residual_plus_gate"] | None = None
    lie: Literal["sinusoid", "projected"] | None = None  # loop-index embedding form
    lie_dim: int = 32  # lie="projected": sinusoid width before the learned projection
    lie_rows: int = 16  # lie="projected": table rows, so at most 16 loops
    anchor_norm: bool | None = None  # RMSNorm before the anchor's K/V projection (reconstructed in paper_text)
    # depth_scaled (reconstructed: the paper gives no init; GPT-2's choice): residual output
    # projections N(0, 0.02 / sqrt(2 L)), L = P + R + 1; plain: N(0, 0.02) everywhere (the authors' code)
    init: Literal["depth_scaled", "plain"] | None = None
    norm_eps: float | None = None
    unfrozen_kv_input: Literal["state", "core_input"] | None = None  # what ablation X projects K/V from
    # ablations, all off by default
    unfreeze_kv: bool = False  # X: K, V recomputed from the evolving state every iteration
    unshare_core: bool = False  # Z: R distinct core blocks
    self_attn_core: bool = False  # W: core layers use MLA self-attention + RoPE, no anchor
    # HC: x_r = h_r. (reconstructed) The disabled HyperConnection is not built, so its 3 logits are
    # not stored; the authors' model keeps the unused module (3 more stored parameters, and 32 d
    # more for a disabled projected LIE). Results are the same; only the stored count differs by that.
    disable_hyperconnection: bool = False
    disable_lti: bool = False  # LTI: plain residual (paper_text x_r + delta_r, paper_code 2 u_r + delta_r)
    disable_lie: bool = False  # LIE: no loop-index embedding
    # The leak-collapse experiment: a cross-attention without its causal mask sees token t+1 from
    # position t through the anchor (the paper's bug: training loss collapses to ~0, PPL ~1.02). A
    # first-class ablation for that study and the proof the causality tests can fail; such a model
    # cannot decode token by token (new_cache refuses it).
    noncausal_cross_attn: bool = False

    arch: ClassVar[str] = "cart"
    model_class: ClassVar[str] = "cart.models.cart.model:CART"

    def __post_init__(self):
        self._apply_variant()
        super().__post_init__()

    def _apply_variant(self) -> None:
        """Fill the unset choice fields with the variant's values; an explicit value must agree."""
        require(self.variant in VARIANT_CHOICES, "CARTConfig.variant",
                f"{self.variant!r} is not one of {list(VARIANT_CHOICES)}")
        for field, value in VARIANT_CHOICES[self.variant].items():
            given = getattr(self, field)
            if given is None:
                object.__setattr__(self, field, value)  # frozen dataclass: resolved once, here
            else:
                require(given == value, f"CARTConfig.{field}",
                        f"{given!r} contradicts variant={self.variant!r}, which uses {value!r}; leave it unset "
                        f"(null) to take the variant's value")

    def _validate(self) -> None:
        require(self.n_prelude >= 1, "CARTConfig.n_prelude", f"must be >= 1, got {self.n_prelude}")
        require(self.n_loops >= 1, "CARTConfig.n_loops", f"must be >= 1, got {self.n_loops}")
        require(self.kv_latent_ratio >= 1 and self.d_model % self.kv_latent_ratio == 0,
                "CARTConfig.kv_latent_ratio", f"must divide d_model={self.d_model}, got {self.kv_latent_ratio}")
        require(self.hc_window >= 1, "CARTConfig.hc_window", f"must be >= 1, got {self.hc_window}")
        require(0.0 < self.lti_init < 1.0, "CARTConfig.lti_init", f"must be in (0, 1), got {self.lti_init}")
        require(self.lie_dim >= 2 and self.lie_dim % 2 == 0, "CARTConfig.lie_dim",
                f"must be even and >= 2 (sin/cos pairs), got {self.lie_dim}")
        require(self.lie_rows >= 1, "CARTConfig.lie_rows", f"must be >= 1, got {self.lie_rows}")
        # the authors' table has 16 rows and indexes it by r: past it their model fails, and so does ours
        require(self.lie != "projected" or self.disable_lie or self.n_loops <= self.lie_rows, "CARTConfig.n_loops",
                f"{self.n_loops} loops exceed the projected loop-index table's lie_rows={self.lie_rows} rows; "
                f"use n_loops <= {self.lie_rows}, a larger lie_rows, or lie='sinusoid'")
        require(not (self.unfreeze_kv and self.self_attn_core), "CARTConfig.unfreeze_kv",
                "cannot be combined with self_attn_core (a self-attention core has no anchor)")

    @property
    def d_latent(self) -> int:
        return self.d_model // self.kv_latent_ratio

    def runtime_kwargs(self) -> frozenset[str]:
        """n_loops: R (the most iterations under an adaptive exit); exit_threshold: CART.hidden."""
        return frozenset({"n_loops", "exit_threshold"})

    def training_kwargs(self) -> frozenset[str]:
        """backprop_loops: truncated backpropagation through the last k iterations (CART.recur)."""
        return frozenset({"backprop_loops"})

    def kv_cache_values_per_token(self, n_loops: int | None = None) -> int:
        """MLA latents (d_c each) of the prelude layers, the coda and the anchor; X caches one
        anchor latent per loop and W one self-attention latent per loop instead (CART.new_cache)."""
        R = self.n_loops if n_loops is None else n_loops
        per_loop = 1 if self.unfreeze_kv or self.self_attn_core else 0
        once = 0 if per_loop else 1  # the frozen anchor
        return self.d_latent * (self.n_prelude + 1 + once + per_loop * R)

    # ---- accounting ----
    def _parts(self) -> dict[str, int]:
        """Matmul weights of each kind of block (no norms)."""
        d, dc = self.d_model, self.d_latent
        ffn = 3 * d * self.ffn_hidden
        latent_kv = d * dc + dc * 2 * d  # W_down, W_up
        mla = 2 * d * d + latent_kv  # q + o + latent kv
        return {
            "layer": mla + ffn,
            "anchor_kv": 0 if self.self_attn_core else latent_kv,
            "core": (mla if self.self_attn_core else 2 * d * d) + ffn,  # a cross-attending core has no K/V
        }

    def count_params(self) -> dict[str, int]:
        d, parts = self.d_model, self._parts()
        layer = parts["layer"] + 2 * d  # two RMSNorm gains
        anchor = parts["anchor_kv"] + (d if parts["anchor_kv"] and self.anchor_norm else 0)  # + the anchor's norm
        core = parts["core"] + 2 * d
        n_blocks = self.n_loops if self.unshare_core else 1
        lie = self.lie_dim * d if self.lie == "projected" and not self.disable_lie else 0  # Linear(lie_dim -> d)
        machinery = d + (0 if self.disable_hyperconnection else self.hc_window) + lie  # LTI a, HC logits, LIE
        stored = self.vocab_size * d + self.n_prelude * layer + anchor + n_blocks * core + machinery + layer + d
        reuse = 0 if self.unshare_core else (self.n_loops - 1) * core
        if self.unfreeze_kv:  # the anchor projection runs every iteration instead of once
            reuse += (self.n_loops - 1) * anchor
        return {"stored": stored, "effective": stored + reuse}

    def forward_flops(self, seq_len: int) -> int:
        """The projected LIE is left out: it maps one 32-dim row per iteration, not per token."""
        T, R, parts = seq_len, self.n_loops, self._parts()
        anchor_calls = R if self.unfreeze_kv else 1
        weights = (self.n_prelude + 1) * parts["layer"] + anchor_calls * parts["anchor_kv"] + R * parts["core"]
        return 2 * weights * T + (self.n_prelude + R + 1) * 4 * T * T * self.d_model
