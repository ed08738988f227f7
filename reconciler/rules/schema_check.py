"""Rules against the live Postgres schema: every table and column they name must exist."""

from __future__ import annotations

from reconciler.errors import RulesError
from reconciler.rules.model import EntityRules

NUMERIC = {"numeric", "float4", "float8", "int2", "int4", "int8"}


def check_against_schema(rules: EntityRules, schema: dict[str, dict[str, str]]) -> list[RulesError]:
    """Every problem found (not just the first), each with the rules file and line."""
    errors: list[RulesError] = []

    def err(message: str, line: int) -> None:
        errors.append(RulesError(message, file=rules.file, line=line or None))

    def need(table: str, column: str | None, line: int, what: str) -> None:
        if column is not None and column not in schema.get(table, {}):
            known = ", ".join(sorted(schema.get(table, {})))
            err(f"{what}: column {table}.{column} does not exist (columns: {known})", line)

    if rules.changed is not None and rules.root.table in schema:
        need(rules.root.table, rules.changed.column, 1, "changed.column")
    for doc in rules.documents:
        sections = [(doc.table, doc.line, doc.columns, doc.geopoints)] + [
            (e.table, e.line, e.columns, e.geopoints) for e in doc.embeds]
        for table, line, _, _ in sections:
            if table not in schema:
                err(f"table {table!r} does not exist in the database's current schema", line)
        if doc.table not in schema:
            continue
        need(doc.table, doc.key, doc.line, f"collection {doc.collection!r} key")
        need(doc.table, doc.parent, doc.line, f"collection {doc.collection!r} parent")
        for e in doc.embeds:
            if e.table in schema:
                for col, what in ((e.join, "join"), (e.order_by, "order_by"), (e.map_key, "map_key"),
                                  *((c, "where") for c, _ in e.where)):
                    need(e.table, col, e.line, f"embed {e.table!r} {what}")
        for table, _, columns, geopoints in sections:
            if table not in schema:
                continue
            for c in columns:
                need(table, c.name, c.line, "columns")
                udt = schema[table].get(c.name)
                if c.json_timestamps is not None and udt is not None and udt.lstrip("_") not in ("json", "jsonb"):
                    err(f"columns: {table}.{c.name} is {udt}, not json or jsonb: `json:` does not apply", c.line)
            for g in geopoints:
                for col in (g.latitude, g.longitude):
                    need(table, col, g.line, "geopoints")
                    if col in schema[table] and schema[table][col] not in NUMERIC:
                        err(f"geopoints: column {table}.{col} is {schema[table][col]}, not a number", g.line)
    for ref in rules.references():
        if ref.table not in schema:
            err(f"references: table {ref.table!r} does not exist in the database's current schema", ref.line)
            continue
        need(ref.table, ref.column, ref.line, "references")
        need(ref.table, ref.join, ref.line, "references join")
    return errors
