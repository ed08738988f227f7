"""A starting rules file for a table and a collection, from the live columns and a sample of documents.

Pure: the caller reads the schema and the documents. Columns are matched to document fields by the naming
convention (the one that matches more, unless given), then by flattened map paths (`billing_city` <->
`billing.city`); a field that holds the document ID maps the key column. Types are guessed from the sample
(money as strings -> decimal_string, ISO strings -> timestamp). What cannot be decided is written as a
comment: the unmatched columns, the unmatched document fields, and columns whose values do not look like the
documents' (e.g. a UUID foreign key where documents hold readable IDs: a `references:` to fill in).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from reconciler.rules.naming import CONVENTIONS

NUMERIC = {"numeric", "float4", "float8", "int2", "int4", "int8"}
TIMESTAMPS = {"timestamptz", "timestamp"}
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def _paths(doc: dict[str, Any], prefix: tuple[str, ...] = (), depth: int = 3) -> dict[tuple[str, ...], Any]:
    """Every field path of a document (maps descended into, up to `depth`), with its value."""
    out: dict[tuple[str, ...], Any] = {}
    for k, v in doc.items():
        path = prefix + (str(k),)
        out[path] = v
        if isinstance(v, dict) and v and len(path) < depth:
            out.update(_paths(v, path, depth))
    return out


def _flat(path: tuple[str, ...]) -> str:
    """A field path as a column would spell it: camelCase humps and dots become underscores."""
    return "_".join(re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", p).lower() for p in path)


def _guess_naming(columns: list[str], fields: set[str]) -> str:
    scores = {name: sum(fn(c) in fields for c in columns) for name, fn in CONVENTIONS.items()}
    return max(scores, key=lambda n: (scores[n], n == "camelCase"))


def _values(docs: list[dict[str, Any]], path: tuple[str, ...]) -> list[Any]:
    out = []
    for d in docs:
        v: Any = d
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if v is not None:
            out.append(v)
    return out


def _options(udt: str, values: list[Any]) -> tuple[str, str]:
    """(inline options, a comment) for a column whose documents hold `values`."""
    strings = [v for v in values if isinstance(v, str)]
    if not values or len(strings) != len(values):
        return "", ""
    if udt in NUMERIC and all(_DECIMAL.fullmatch(s) for s in strings):
        return "{type: decimal_string}", "money/numbers as strings"
    if udt in TIMESTAMPS:
        try:
            for s in strings:
                dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            return "", ""
        return "{type: timestamp}", "ISO-8601 strings"
    if udt == "uuid" and not all(_UUID.fullmatch(s) for s in strings):
        return "REFERENCE", ""
    return "", ""


def new_rules(*, entity: str, table: str, collection: str, columns: dict[str, str], documents: list[tuple[str, dict]],
              key: str | None = None, naming: str | None = None, source_of_truth: str = "postgres") -> str:
    """The text of a rules file. `columns`: column -> type name, in table order; `documents`: (ID, fields)."""
    docs = [d for _, d in documents]
    paths: dict[tuple[str, ...], Any] = {}
    for d in docs:
        for p, v in _paths(d).items():
            paths.setdefault(p, v)
    top = {p[0] for p in paths}
    naming = naming or _guess_naming(list(columns), top)
    convert = CONVENTIONS[naming]
    key = key or ("id" if "id" in columns else next(iter(columns)))
    id_fields = [p for p in paths if len(p) == 1 and docs and all(d.get(p[0]) == i for i, d in documents)]

    matched: dict[str, tuple[str, ...]] = {}
    claimed: set[tuple[str, ...]] = set()
    if id_fields and (convert(key),) not in id_fields:
        matched[key] = id_fields[0]  # the key column's value is the document ID: map it to the field holding it
        claimed.add(id_fields[0])
    by_flat = {_flat(p): p for p in paths if len(p) > 1}
    for c in columns:
        if c in matched:
            continue
        for path in ((convert(c),), by_flat.get(c)):
            if path and path in paths and path not in claimed:
                matched[c] = path
                claimed.add(path)
                break

    lines = [f"# Rules for {entity}: table {table} <-> collection {collection}. Written by `reconcile rules new` from",
             f"# the live schema and {len(docs)} sample documents: review every line, then `reconcile rules check`.",
             f"entity: {entity}",
             f"source_of_truth: {source_of_truth}      # the side repair trusts (postgres or firestore)",
             f"naming: {naming}",
             f"collection: {collection}",
             f"table: {table}",
             f"key: {key}                         # the column whose text is the document ID",
             "columns:"]
    todo = []
    for c, udt in columns.items():
        if c not in matched:
            continue
        path = matched[c]
        opts, note = _options(udt, _values(docs, path))
        rename = "" if path == (convert(c),) else ".".join(path)
        if opts == "REFERENCE":
            lines.append(f"  # {c}: {{references: TABLE.COLUMN}}   # TODO: {udt} here, readable IDs in the documents "
                         f"({_values(docs, path)[0]!r}): name the referenced table's document-ID column")
            todo.append(c)
            continue
        if rename and opts:
            value = "{field: " + rename + ", " + opts[1:]
        else:
            value = rename or opts
        lines.append(f"  {c}: {value}".rstrip() + (f"   # {note}" if note else ""))
    unmatched_columns = [c for c in columns if c not in matched]
    used_tops = {p[0] for p in claimed}
    unmatched_fields = sorted(p[0] for p in paths if len(p) == 1 and p[0] not in used_tops)
    if unmatched_columns:
        lines.append("  # columns no document field matched (map them with `column: field.path`, or leave them out):")
        lines.append("  #   " + ", ".join(unmatched_columns))
    if unmatched_fields:
        lines.append("# document fields no column matched (child tables? `embed:`; server-set? leave them out):")
        lines.append("#   " + ", ".join(unmatched_fields))
    if todo:
        lines.append(f"# TODO before `rules check`: {', '.join(todo)} (see the TODO lines above)")
    return "\n".join(lines) + "\n"
