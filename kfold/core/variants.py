"""The registry of named model variants (head specifications). Torch-free.

Each row of the source competition's results table is a named variant here or a flag of ``kfold run``
(``--label-smoothing 0.05``, ``--marker typed_entity_marker_punct``, ``--batch-size 8``, ``--max-len 250``).
Names are filled by the explicit ``register`` calls at the bottom of this module; a duplicate is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError, unknown_name

COMBINES = {
    "cat": "(CLS, e1, e2)",
    "mul": "(CLS, e1, e2, e1*e2)",
    "absdiff": "(CLS, e1, e2, |e1-e2|)",
    "clsmul": "(CLS*e1, CLS*e2)",
    "clsmul_mul": "(CLS*e1, CLS*e2, e1*e2)",
    "sbert": "(e1, e2, |e1-e2|, e1*e2)",
    "pair": "(e1, e2)",
    "cls": "(CLS)",
}
ACTIVATIONS = ("tanh", "gelu")
POOLS = ("mean", "start")


@dataclass(frozen=True)
class Variant:
    """A relation head.

    head: ``rbert`` (vectors through dropout -> activation -> linear, combined, then dropout -> linear)
        or ``linear`` (vectors combined, then dropout -> linear).
    combine: key of COMBINES. share: one entity layer for both entities (R-BERT) instead of one each.
    pool: entity vector = ``mean`` of its tokens, or its ``start`` marker token (Zhou & Chen 2021).
    use_pooler: take [CLS] from the backbone's pooler when it has trained pooler weights.
    source: the source competition's accuracy for this row of its table, for the listing.
    """

    name: str
    help: str
    head: str = "rbert"
    combine: str = "cat"
    share: bool = False
    activation: str = "tanh"
    pool: str = "mean"
    use_pooler: bool = True
    source: str = ""

    def with_overrides(self, activation: str = "", pool: str = "") -> "Variant":
        """A copy with the activation and/or pooling replaced (empty string keeps the variant's)."""
        from dataclasses import replace

        if activation and activation not in ACTIVATIONS:
            raise unknown_name("activation", activation, ACTIVATIONS)
        if pool and pool not in POOLS:
            raise unknown_name("pool", pool, POOLS)
        return replace(self, activation=activation or self.activation, pool=pool or self.pool)

    @property
    def uses_cls(self) -> bool:
        return self.combine in ("cat", "mul", "absdiff", "clsmul", "clsmul_mul", "cls")

    @property
    def uses_entities(self) -> bool:
        return self.combine != "cls"


_REGISTRY: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    """Add a variant; a duplicate name, or an unknown combine/activation/pool, is a ConfigError."""
    if variant.name in _REGISTRY:
        raise ConfigError(f"variant '{variant.name}' is registered twice")
    if variant.name != variant.name.lower() or " " in variant.name:
        raise ConfigError(f"variant name '{variant.name}' must be short, lowercase, without spaces")
    if variant.combine not in COMBINES:
        raise unknown_name("combine", variant.combine, COMBINES)
    if variant.head not in ("rbert", "linear"):
        raise unknown_name("head", variant.head, ("rbert", "linear"))
    variant.with_overrides(variant.activation, variant.pool)  # validates both
    _REGISTRY[variant.name] = variant
    return variant


def get_variant(name: str) -> Variant:
    """The registered variant ``name``; unknown names raise ConfigError listing the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_name("variant", name, _REGISTRY) from None


def list_variants() -> list[Variant]:
    """Registered variants in registration order."""
    return list(_REGISTRY.values())


def parse_variants(text: str) -> list[str]:
    """Split ``split,absdiff`` into names, checking each one now (before any training starts)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--variants: expected at least one variant name")
    for n in names:
        get_variant(n)
    return names


register(Variant("cls", "plain baseline: [CLS] (pooler when trained) -> dropout -> linear", head="linear", combine="cls"))
register(Variant("share", "R-BERT: CLS + mean e1 + mean e2, ONE shared entity layer, tanh", share=True, source="77.8"))
register(Variant("split", "R-BERT with a SEPARATE linear layer per entity (the source's best)", source="80.4"))
register(Variant("absdiff", "split + |e1-e2|: (CLS, e1, e2, |e1-e2|)", combine="absdiff", source="79.0"))
register(Variant("mul", "split + e1*e2: (CLS, e1, e2, e1*e2)", combine="mul", source="76.5"))
register(Variant("clsmul", "split, products with CLS: (CLS*e1, CLS*e2)", combine="clsmul", source="76.2"))
register(Variant("clsmul_mul", "split, (CLS*e1, CLS*e2, e1*e2)", combine="clsmul_mul", source="76.2"))
register(Variant("split_gelu", "split with GELU instead of tanh", activation="gelu", source="77.0"))
register(Variant("sbert", "split, SBERT features (e1, e2, |e1-e2|, e1*e2), no CLS", combine="sbert"))
register(Variant("split_start", "split with start-marker pooling instead of token means", pool="start"))
register(Variant("entity_start", "Baldini Soares 'entity start': (e1 start, e2 start) -> dropout -> linear",
                 head="linear", combine="pair", pool="start"))
