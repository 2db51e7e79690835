"""Names of model configs and training runs: one grammar, and the registry of named configs.

A name is words joined by '-'. A field word is a one-letter code and the field's value, a decimal
integer written without sign or leading zero (so each value has one spelling):

    code  field        e.g.
    d     d_model      d1024
    P     n_prelude    P6
    R     n_loops      R6
    L     n_layers     L7
    s     seed         s42

A flag word is a code alone that sets a boolean field: X sets unfreeze_kv (CART's ablation X).

Config names are `<arch>-<words>`, e.g. `cart-d1024-P6-R6` (the model of Stage 2 and of the
variable-R study) or `dense-d1024-L7`. Parsed, the words may come in any order and a family's
optional field may be left out (CART's P is 6, Dense's d is 1024: `cart-d1024-R6` and `dense-L7`
are the benchmarks' short names); formatted, a name holds every field of its family in the
family's order. `config_from_name(name, **overrides)` builds the config, as litgpt's
`Config.from_name`; NAMED_CONFIGS lists the paper's models.

Run names are `<group>/<name>` with the name written by its group's template (cart/experiments.py),
field words and at most one `{variant}`, e.g. stage1 `d{d_model}-P{n_prelude}-R{n_loops}`,
stage2 `d{d_model}-R{n_loops}-s{seed}`, the variant groups `{variant}-s{seed}`. A variant is one
or more words of letters, digits and '_' (`lr3e-4` is two words), so it may hold '-' itself.

Torch-free: building a config imports the family's config module alone.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

FIELD_CODES: dict[str, str] = {"d": "d_model", "P": "n_prelude", "R": "n_loops", "L": "n_layers", "s": "seed"}
FLAG_CODES: dict[str, str] = {"X": "unfreeze_kv"}
CODE_OF: dict[str, str] = {f: c for c, f in (FIELD_CODES | FLAG_CODES).items()}

_VALUE = re.compile(r"0|[1-9][0-9]*")
_VARIANT_WORD = re.compile(r"[A-Za-z0-9_]+")
_ARCH = re.compile(r"[a-z][a-z0-9_]*")


def _value(word: str, code: str) -> int | None:
    """The integer of field word `word` of `code` (e.g. R6 -> 6), None when it is not one."""
    digits = word[len(code):]
    return int(digits) if word.startswith(code) and _VALUE.fullmatch(digits) else None


def _check_value(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}: a name holds a non-negative integer, got {value!r}")
    return value


# ---- run names: a group's template ----------------------------------------------------------------

@dataclass(frozen=True)
class NameForm:
    """A run-name template: words `<code>{<field>}` (the code of FIELD_CODES for that field) and at
    most one `{variant}`, joined by '-'. Formats a run's fields into its name and parses a name back."""

    template: str
    words: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)  # (code, field)

    def __post_init__(self):
        words = []
        for word in self.template.split("-"):
            parts = list(string.Formatter().parse(word))
            literal, name = (parts[0][0], parts[0][1]) if len(parts) == 1 else ("", None)
            if name == "variant" and literal == "":
                words.append(("", "variant"))
            elif name is not None and FIELD_CODES.get(literal) == name and not parts[0][2] and not parts[0][3]:
                words.append((literal, name))
            else:
                raise ValueError(f"name template {self.template!r}: word {word!r} is neither {{variant}} nor a "
                                 f"field word <code>{{field}} of {_codes_text()}")
        if [f for _, f in words].count("variant") > 1 or len({f for _, f in words}) != len(words):
            raise ValueError(f"name template {self.template!r}: each field (and {{variant}}) at most once")
        object.__setattr__(self, "words", tuple(words))

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f for _, f in self.words)

    def format(self, **values) -> str:
        if sorted(values) != sorted(self.fields):
            raise ValueError(f"name template {self.template!r}: expected the fields {list(self.fields)}, "
                             f"got {sorted(values)}")
        out = []
        for code, f in self.words:
            if f == "variant":
                variant = values[f]
                if not isinstance(variant, str) or not all(_VARIANT_WORD.fullmatch(w) for w in variant.split("-")):
                    raise ValueError(f"variant {variant!r}: a variant is words of letters, digits and '_' "
                                     f"joined by '-'")
                out.append(variant)
            else:
                out.append(f"{code}{_check_value(f, values[f])}")
        return "-".join(out)

    def match(self, name: str) -> dict | None:
        """The fields of `name` (ints, the variant a str), None when it is not of this template."""
        words = name.split("-")
        n_variant = len(words) - len(self.words) + 1  # the words the variant takes
        if "variant" not in self.fields and n_variant != 1 or n_variant < 1:
            return None
        out, i = {}, 0
        for code, f in self.words:
            if f == "variant":
                taken = words[i:i + n_variant]
                if not all(_VARIANT_WORD.fullmatch(w) for w in taken):
                    return None
                out[f], i = "-".join(taken), i + n_variant
            else:
                value = _value(words[i], code)
                if value is None:
                    return None
                out[f], i = value, i + 1
        return out

    def parse(self, name: str) -> dict:
        fields = self.match(name)
        if fields is None:
            raise ValueError(f"run name {name!r} does not match the pattern {self.template!r}")
        return fields


# ---- config names: a model family's fields --------------------------------------------------------

@dataclass(frozen=True)
class ConfigForm:
    """How a family's configs are named: `<arch>` then its fields in order; `optional` fields may
    be left out of a name (they mean the value given), `flags` are flag words it may hold."""

    arch: str
    fields: tuple[str, ...]
    optional: dict[str, int] = field(default_factory=dict)
    flags: tuple[str, ...] = ()

    @property
    def expected(self) -> str:
        words = [f"[-{CODE_OF[f]}<{f}>]" if f in self.optional else f"-{CODE_OF[f]}<{f}>" for f in self.fields]
        return self.arch + "".join(words) + "".join(f"[-{CODE_OF[f]}]" for f in self.flags)

    def format(self, **values) -> str:
        missing = [f for f in self.fields if f not in values]
        unknown = sorted(set(values) - set(self.fields) - set(self.flags))
        if missing or unknown:
            raise ValueError(f"{self.arch} config name: expected the fields {list(self.fields)} (flags "
                             f"{list(self.flags)}), got {sorted(values)}")
        words = [f"{CODE_OF[f]}{_check_value(f, values[f])}" for f in self.fields]
        for f in self.flags:
            if not isinstance(values.get(f, False), bool):
                raise ValueError(f"{f}: a flag word stands for a bool, got {values[f]!r}")
            words += [CODE_OF[f]] if values.get(f) else []
        return "-".join([self.arch, *words])

    def match(self, words: list[str]) -> dict | None:
        out = {}
        for word in words:
            if word in (CODE_OF[f] for f in self.flags):
                f, value = FLAG_CODES[word], True
            else:
                f = FIELD_CODES.get(word[:1])
                value = _value(word, word[:1]) if f in self.fields else None
            if value is None or f in out:
                return None
            out[f] = value
        if not set(self.fields) - set(self.optional) <= set(out):
            return None
        return {f: out.get(f, self.optional.get(f)) for f in self.fields} | {f: out[f] for f in self.flags if f in out}


CONFIG_FORMS: dict[str, ConfigForm] = {form.arch: form for form in (
    ConfigForm("cart", ("d_model", "n_prelude", "n_loops"), optional={"n_prelude": 6}, flags=("unfreeze_kv",)),
    ConfigForm("dense", ("d_model", "n_layers"), optional={"d_model": 1024}),
    ConfigForm("lrt", ("d_model", "n_layers")),
    ConfigForm("ratplus", ("d_model", "n_layers")),
)}


def _codes_text() -> str:
    return ", ".join(f"{c}={f}" for c, f in FIELD_CODES.items())


def expected_config_names(archs=None) -> str:
    return " or ".join(CONFIG_FORMS[a].expected for a in (archs or CONFIG_FORMS))


def parse_config_name(name: str, archs=None) -> tuple[str, dict]:
    """`<arch>-<words>` -> (arch, the fields its words set, optional ones filled in); a ValueError
    names the name and the forms expected (of `archs`, default every family's)."""
    archs = tuple(archs or CONFIG_FORMS)
    arch, *words = name.split("-") if isinstance(name, str) else [None]
    fields = CONFIG_FORMS[arch].match(words) if arch in archs else None
    if fields is None:
        raise ValueError(f"bad config name {name!r}: expected {expected_config_names(archs)} (words in any order; "
                         f"codes {_codes_text()})")
    return arch, fields


def config_name(arch: str, **fields) -> str:
    """The name of a config of `arch` with these name fields, e.g. config_name("cart", d_model=1024,
    n_prelude=6, n_loops=6) == "cart-d1024-P6-R6"."""
    if arch not in CONFIG_FORMS:
        raise ValueError(f"config name: unknown architecture {arch!r}; valid: {sorted(CONFIG_FORMS)}")
    return CONFIG_FORMS[arch].format(**fields)


def name_of(config) -> str:
    """A model config's name: its family's name fields (the rest of the config is not named)."""
    form = CONFIG_FORMS[type(config).arch]
    values = {f: getattr(config, f) for f in (*form.fields, *form.flags)}
    return form.format(**values)


def config_from_name(name: str, **overrides):
    """The config a name stands for, with `overrides` of its other fields (e.g. vocab_size); an
    override contradicting the name is refused."""
    from . import config_from_dict

    arch, fields = parse_config_name(name)
    for k, v in overrides.items():
        if k in fields and fields[k] != v:
            raise ValueError(f"config_from_name({name!r}): {k}={v!r} contradicts the name's {fields[k]!r}")
    return config_from_dict({"arch": arch, **fields, **overrides}, where=f"config name {name!r}")


# The paper's models (docs/cart.md), by name: Stage 2's grid of width x loop count at P=6
# (cart-d1024-P6-R6 is also the variable-R study's model, trained at R=6), the prelude-depth spot
# check at P=4, and the Dense baselines matching CART d1024's stored parameters (7L), its effective
# parameters (12L) and its FLOPs at R=10 (17L).
NAMED_CONFIGS: dict[str, dict] = {
    name: {"arch": arch, **fields} for name in (
        *(f"cart-d{d}-P6-R{r}" for d in (256, 512, 768, 1024) for r in (6, 8, 10)),
        "cart-d1024-P4-R10",
        "dense-d1024-L7", "dense-d1024-L12", "dense-d1024-L17",
    ) for arch, fields in [parse_config_name(name)]}
