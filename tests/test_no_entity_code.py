"""Rules are data: no module of reconciler/ names an entity, table, collection or distinctive field of the seeds.

The names come from the rules files (entity, collection, table, column and field names) and the schemas (table
and column names). Entity, table and collection names count whatever they look like; other names count when
they are distinctive identifiers (a `_` or a camelCase hump), so that ordinary words such as `id` or `email`
may still appear in prose.
"""

from __future__ import annotations

import re
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).parents[1]
DISTINCTIVE = re.compile(r"_|[a-z][A-Z]")


def _ours() -> set[str]:
    """Our own vocabulary that shares names with seed columns: the columns of repair's audit-trail table
    (reconciler_repairs), which follows the seed's sync-log shape on purpose and is documented in the README."""
    from reconciler.repair import LOG_DDL

    return set(re.findall(r"^\s*(\w+)\s+[A-Z]", LOG_DDL, re.M))


def _walk_rules(node, names: set[str], fields: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("entity", "collection", "table", "parent_collection") and isinstance(value, str):
                names.add(value)
            elif key in ("columns",) and isinstance(value, dict):
                for column, opts in value.items():
                    fields.add(column)
                    if isinstance(opts, str):
                        fields.update(opts.split("."))
                    elif isinstance(opts, dict) and isinstance(opts.get("field"), str):
                        fields.update(opts["field"].split("."))
            elif key in ("into", "key", "parent", "join", "map_key", "order_by") and isinstance(value, str):
                fields.update(value.split("."))
            _walk_rules(value, names, fields)
    elif isinstance(node, list):
        for item in node:
            _walk_rules(item, names, fields)


def seed_names() -> tuple[set[str], set[str]]:
    names: set[str] = set()
    fields: set[str] = set()
    for path in sorted((ROOT / "rules").glob("*.yaml")):
        _walk_rules(YAML(typ="safe").load(path.read_text()), names, fields)
    for path in sorted((ROOT / "schema").glob("*.sql")):
        text = re.sub(r"--[^\n]*", "", path.read_text())
        names.update(re.findall(r"CREATE TABLE (\w+)", text))
        for body in re.findall(r"CREATE TABLE \w+ \((.*?)\n\);", text, re.S):
            fields.update(m for m in re.findall(r"^\s*(\w+)\s+[A-Z]", body, re.M)
                          if m not in ("PRIMARY", "UNIQUE", "CHECK", "CONSTRAINT", "FOREIGN", "INDEX"))
    return names, {f for f in fields if DISTINCTIVE.search(f)} - _ours() - names


def test_seed_names_are_found():
    """The scan itself works: it knows the seeds' entities, tables, collections and distinctive fields."""
    names, fields = seed_names()
    assert {"customers", "orders", "order_line_items", "preferences", "service_packages", "pricing_tiers",
            "ipAddresses", "conversation_attachments"} <= names
    assert {"risk_score", "overallScore", "financial_status", "preference_value", "firestore_id"} <= fields


def test_no_module_of_reconciler_names_an_entity_table_collection_or_seed_field():
    names, fields = seed_names()
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, sorted(names | fields, key=len, reverse=True)))
                         + r")(?![A-Za-z0-9_])")
    hits = []
    for path in sorted((ROOT / "reconciler").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in pattern.finditer(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {m.group(1)!r} in {line.strip()[:100]}")
    assert hits == []
