"""Attention patterns pi = (D, W, P): which earlier keys a query sees (docs/ratplus.md, Model).

Torch-free, so configs, run names and the accounting hold and count patterns without torch; the
attention under a pattern is in `pattern_attention.py`.

    S_pi(t) = {j <= t : t - j <= W} U {j <= t : j < P} U {j <= t : (j + 1) mod D = 0}

D = 1 is dense attention; D = -1 drops the strided term (local window + sinks only). A query always
sees its own key. A pattern may add a top-k block term (reconstructed: the spec names Quest/MoBA
scoring but the authors' code has none): keys are grouped in blocks of `block`; query t scores
each block that ends before its own block by q_t . mean(keys of the block) and also sees the
`topk` best blocks and its own block up to t.

String syntax (params, run names): "dense", or "-"-joined terms D<dilation>, W<window>, P<sink>,
K<topk>, B<block> (each at most once; no D means D = -1), e.g. "D16", "D16-W256-P4", "W64-P4",
"D64-K8-B16". A per-layer hybrid is a ","-joined list with one pattern per layer, e.g. "dense,D64";
a single pattern applies to every layer. A per-head hybrid (the paper's hybrid layer/head
compositions) gives one layer's heads their own patterns: a "+"-joined list, e.g. "dense+D64" or
"D16+W64-P4+D64+dense", split over the layer's heads in equal consecutive groups (so its length
must divide n_heads: "dense+D64" on 8 heads runs heads 0-3 dense and heads 4-7 at D64; one per
head is the finest). Layers combine with ",": "dense,dense+D64".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

SYNTAX = ("'dense' or '-'-joined terms D<dilation>, W<window>, P<sink>, K<topk>, B<block> "
          "(e.g. D16, D16-W256-P4, W64, D64-K8); per head groups joined by '+' (dense+D64); "
          "one per layer joined by ','")
_TERM = re.compile(r"([DWPKB])(\d+)")
_FIELD_OF_LETTER = {"D": "dilation", "W": "window", "P": "sink", "K": "topk", "B": "block"}
DEFAULT_BLOCK = 64  # Quest/MoBA-style block of keys scored as one (reconstructed)


@dataclass(frozen=True)
class Pattern:
    """One layer's attention pattern; frozen and hashable (a dict key, a torch.compile constant)."""

    dilation: int = 1  # D: strided keys j with (j + 1) mod D = 0; 1 = dense; -1 = no strided term
    window: int = 0  # W: keys t - W .. t
    sink: int = 0  # P: the first P keys (attention sinks)
    topk: int = 0  # K: best-scoring earlier blocks also seen (0 = no top-k term)
    block: int = DEFAULT_BLOCK  # keys per top-k block

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"Pattern.{f.name}: expected an int, got {value!r}")
        if self.dilation < 1 and self.dilation != -1:
            raise ValueError(f"Pattern.dilation: must be >= 1 (1 = dense) or -1 (no strided term), got {self.dilation}")
        for name in ("window", "sink", "topk"):
            if getattr(self, name) < 0:
                raise ValueError(f"Pattern.{name}: must be >= 0, got {getattr(self, name)}")
        if self.block < 1:
            raise ValueError(f"Pattern.block: must be >= 1, got {self.block}")
        if self.dilation == 1 and (self.window or self.sink or self.topk):
            raise ValueError("Pattern.dilation: 1 (dense) already sees every key; window, sink and topk must be 0, "
                             f"got {self}")

    @property
    def is_dense(self) -> bool:
        return self.dilation == 1

    def __str__(self) -> str:
        if self.is_dense:
            return "dense"
        terms = [] if self.dilation == -1 else [f"D{self.dilation}"]
        if self.window or self.dilation == -1 and not (self.sink or self.topk):
            terms.append(f"W{self.window}")
        terms += [f"P{self.sink}"] if self.sink else []
        if self.topk:
            terms += [f"K{self.topk}"] + ([f"B{self.block}"] if self.block != DEFAULT_BLOCK else [])
        return "-".join(terms)


DENSE = Pattern()


@dataclass(frozen=True)
class HeadPatterns:
    """One layer whose heads run different patterns: `groups` split the layer's n_heads heads
    into len(groups) equal consecutive groups, group i at groups[i]. Frozen and hashable, as Pattern."""

    groups: tuple[Pattern, ...]

    def __post_init__(self):
        if not isinstance(self.groups, tuple) or len(self.groups) < 2 or \
                not all(isinstance(p, Pattern) for p in self.groups):
            raise ValueError(f"HeadPatterns.groups: expected a tuple of 2 or more Patterns, got {self.groups!r}")

    @property
    def is_dense(self) -> bool:
        return all(p.is_dense for p in self.groups)

    @property
    def topk(self) -> int:
        """The largest top-k term of its heads (0: every head's pattern is static)."""
        return max(p.topk for p in self.groups)

    def spans(self, n_heads: int, where: str = "pattern") -> tuple[tuple[int, int, Pattern], ...]:
        """(first head, end head, pattern) of each group over n_heads heads."""
        n = len(self.groups)
        if n_heads % n:
            raise ValueError(f"{where}: {self} gives {n} head groups, which do not split n_heads={n_heads} "
                             f"evenly; give a number of groups that divides {n_heads}")
        size = n_heads // n
        return tuple((i * size, (i + 1) * size, p) for i, p in enumerate(self.groups))

    def heads(self, n_heads: int) -> tuple[Pattern, ...]:
        """The pattern of every head."""
        return tuple(p for a, b, p in self.spans(n_heads) for _ in range(a, b))

    def __str__(self) -> str:
        return "+".join(str(p) for p in self.groups)


LayerPattern = Pattern | HeadPatterns  # what one layer runs: one pattern, or one per head group


def head_patterns(pattern: LayerPattern, n_heads: int) -> tuple[Pattern, ...]:
    """The pattern of each of a layer's n_heads heads."""
    return pattern.heads(n_heads) if isinstance(pattern, HeadPatterns) else (pattern,) * n_heads


def parse_pattern(text: str, where: str = "pattern") -> Pattern:
    """One pattern from its string (see the module docstring); ValueError naming `where`."""
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected a pattern string ({SYNTAX}), got {text!r}")
    if text == "dense":
        return DENSE
    values: dict[str, int] = {}
    for term in text.split("-"):
        m = _TERM.fullmatch(term)
        if m is None:
            raise ValueError(f"{where}: {text!r}: bad term {term!r}; expected {SYNTAX}")
        name = _FIELD_OF_LETTER[m.group(1)]
        if name in values:
            raise ValueError(f"{where}: {text!r}: {m.group(1)} given twice")
        values[name] = int(m.group(2))
    values.setdefault("dilation", -1)
    try:
        return Pattern(**values)
    except ValueError as e:
        raise ValueError(f"{where}: {text!r}: {e}") from None


def parse_layer_pattern(text: str, where: str = "pattern") -> LayerPattern:
    """One layer's pattern from its string: a Pattern, or with '+' a HeadPatterns."""
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected a pattern string ({SYNTAX}), got {text!r}")
    if "+" not in text:
        return parse_pattern(text, where)
    return HeadPatterns(tuple(parse_pattern(part, where) for part in text.split("+")))


def layer_patterns(spec, n_layers: int, where: str = "pattern", n_heads: int | None = None) -> tuple[LayerPattern, ...]:
    """The pattern of every layer from a string ("D16", "dense,D64", "dense+D64"), a Pattern or
    HeadPatterns, or a sequence of them: one applies to all layers, a list must have exactly one
    per layer. With n_heads, each per-head pattern is checked to split the heads evenly."""
    if isinstance(spec, (Pattern, HeadPatterns)):
        spec = (spec,)
    elif isinstance(spec, str):
        spec = tuple(parse_layer_pattern(part, where) for part in spec.split(","))
    if not isinstance(spec, (tuple, list)) or not all(isinstance(p, (Pattern, HeadPatterns)) for p in spec):
        raise ValueError(f"{where}: expected a pattern string ({SYNTAX}), a Pattern or a list of Patterns, "
                         f"got {spec!r}")
    if len(spec) == 1:
        spec = tuple(spec) * n_layers
    if len(spec) != n_layers:
        raise ValueError(f"{where}: {len(spec)} per-layer patterns for n_layers={n_layers}; "
                         "give one pattern for all layers or exactly one per layer")
    if n_heads is not None:
        for p in spec:
            if isinstance(p, HeadPatterns):
                p.spans(n_heads, where)
    return tuple(spec)


def format_patterns(patterns) -> str:
    """The string of per-layer patterns; one pattern when all layers share it."""
    patterns = tuple(patterns)
    if len(set(patterns)) == 1:
        return str(patterns[0])
    return ",".join(str(p) for p in patterns)


# ---- counting (torch-free: the accounting in ratplus/config.py uses these) ----

def visible_set(pattern: Pattern, t: int) -> set[int]:
    """S_pi(t) straight from its definition (static terms only; top-k depends on the keys)."""
    D, W, P = pattern.dilation, pattern.window, pattern.sink
    return {j for j in range(t + 1) if t - j <= W or j < P or (D > 0 and (j + 1) % D == 0)}


def visible_count(pattern: Pattern, t: int) -> int:
    """|S_pi(t)| in closed form: the window, then the sinks before it, then the strided keys
    j = mD - 1 with P <= j < t - W (the same disjoint split as the two-branch attention)."""
    D, W, P = pattern.dilation, pattern.window, pattern.sink
    local = min(t, W) + 1
    sinks = max(0, min(P, t - W))
    strided = max(0, (t - W) // D - P // D) if D > 0 else 0
    return local + sinks + strided


def cache_regions(pattern: Pattern, max_len: int) -> tuple[int, int, int]:
    """The slots a decode cache (PatternKVCache) stores between calls for up to max_len tokens, per
    region: the first P positions (sinks), a ring of the last W and the strided positions
    (pos + 1 = 0 mod D; dense D = 1: every position), P and W capped at max_len. The new tokens'
    own keys are attended from their projections, never stored. A top-k pattern has no such cache."""
    if pattern.topk:
        raise ValueError(f"pattern: {pattern} has a top-k term, which may pick any earlier block; it has no "
                         "pattern cache")
    D, W, P = pattern.dilation, pattern.window, pattern.sink
    return min(P, max_len), min(W, max_len), max_len // D if D > 0 else 0


def stored_slots(pattern: Pattern, seq_len: int) -> int:
    """Keys (and values) a decoder stores per layer and head for a sequence of seq_len tokens:
    the sum of `cache_regions` (dense: T); a top-k term may pick any earlier block, so all T."""
    return seq_len if pattern.topk else sum(cache_regions(pattern, seq_len))


def cache_slots(pattern: Pattern, seq_len: int) -> int:
    """Keys a decoder keeps per layer and head for a sequence of seq_len tokens (docs/ratplus.md,
    Cost accounting): dense T; else P + W + 1 + floor(T / D) (the first P, the last W, the current one and
    the strided ones; D = -1 has no strided ones), with P and W capped at T. A top-k term may pick
    any earlier block, so it keeps all T. The spec's count: the cache stores one slot less
    (`stored_slots`), the current token's key coming from its projection."""
    T = seq_len
    if pattern.is_dense or pattern.topk:
        return T
    strided = T // pattern.dilation if pattern.dilation > 0 else 0
    return min(pattern.sink, T) + min(pattern.window, T) + 1 + strided


__all__ = ["DENSE", "HeadPatterns", "LayerPattern", "Pattern", "SYNTAX", "cache_regions", "cache_slots",
           "format_patterns", "head_patterns", "layer_patterns", "parse_layer_pattern", "parse_pattern",
           "stored_slots", "visible_count", "visible_set"]
