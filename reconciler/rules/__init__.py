"""Mapping rules: YAML files (one per entity) -> a typed, validated model."""

from reconciler.rules.loader import load_entity, load_rules_dir
from reconciler.rules.model import (
    CompareOptions,
    Column,
    DocumentSpec,
    Embed,
    EntityRules,
    GeoPointRule,
)

__all__ = [
    "CompareOptions",
    "Column",
    "DocumentSpec",
    "Embed",
    "EntityRules",
    "GeoPointRule",
    "load_entity",
    "load_rules_dir",
]
