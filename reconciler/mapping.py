"""Raw records of either side -> the same canonical record, and back (for repair).

The canonical record is a nested dict in Firestore's shape, holding only the fields the rules map, with
scalars normalised: numbers as int/float, timestamps as aware datetimes, dates as "YYYY-MM-DD", UUIDs as
strings, GeoPoints as `values.Geo`, set-like arrays sorted by their key. Values whose Python type would print
them otherwise than Postgres (inet, cidr, interval, time...) arrive as Postgres's own text (the loaders of
sources.postgres); values neither Python nor Firestore can hold arrive as `values.PostgresOnly`. With
`null_equals_absent` (the default) NULL/None values and maps left empty are dropped, so that two records
that mean the same thing are `==` and the diff can take its fast path.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Iterable, Union

from google.cloud.firestore_v1 import GeoPoint
from google.cloud.firestore_v1.document import DocumentReference

from reconciler.rules.model import Column, CompareOptions, DocumentSpec, Embed, GeoPointRule, Path
from reconciler.values import FALSE, TRUE, Bool, Geo, PostgresOnly, Ref, plain, text_instant, to_json

UTC = dt.timezone.utc
Row = tuple[Any, ...]


# ---------------------------------------------------------------- scalar normalisation (both sides)

def _datetime(v: dt.datetime) -> dt.datetime:
    return v if v.tzinfo is not None else v.replace(tzinfo=UTC)


def _decimal(v: Decimal) -> float | str | PostgresOnly:
    # NaN and +-Infinity (numeric columns hold them) become the floats Firestore holds; only sNaN has none.
    # A finite number rounds to the nearest double (tiny ones to 0.0), as every decimal fraction does; one
    # beyond double range has no nearest double (float() says inf): Firestore cannot hold it
    if v.is_snan():
        return str(v)
    f = float(v)
    return PostgresOnly(format(v, "f"), "numeric") if math.isinf(f) and v.is_finite() else f


def _list(v: Iterable[Any]) -> list[Any]:
    return [canon(x) for x in v]


def _dict(v: dict[Any, Any]) -> dict[str, Any]:
    return {str(k): canon(x) for k, x in v.items()}


_CANON: dict[type, Callable[[Any], Any]] = {
    str: lambda v: v,
    int: lambda v: v,
    float: lambda v: v,
    bool: lambda v: TRUE if v else FALSE,
    type(None): lambda v: v,
    Decimal: _decimal,
    dt.datetime: _datetime,
    dt.date: lambda v: v.isoformat(),
    dt.time: lambda v: v.isoformat(),
    uuid.UUID: str,
    list: _list,
    tuple: _list,
    dict: _dict,
    bytes: lambda v: v,
    GeoPoint: lambda v: Geo(v.latitude, v.longitude),
    Geo: lambda v: v,
    Bool: lambda v: v,
    Ref: lambda v: v,
    PostgresOnly: lambda v: v,
}


def canon(value: Any) -> Any:
    """Normalise one value from either database (see module doc). Unknown types become their str()."""
    fn = _CANON.get(type(value))
    if fn is not None:
        return fn(value)
    for base, fn in _CANON.items():  # subclasses: DatetimeWithNanoseconds, psycopg's Jsonb wrappers...
        if isinstance(value, base):
            return fn(value)
    if isinstance(value, DocumentReference):
        return Ref(value.path)
    return str(value)


def _as_number(v: Any) -> Any:
    if isinstance(v, (Bool, PostgresOnly)) or v is None:
        return v
    if isinstance(v, (int, float)):
        return v
    try:
        return _decimal(Decimal(str(v).strip()))
    except ArithmeticError:
        return v  # not a number: kept as is, so the diff reports it


def _as_timestamp(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return _datetime(dt.datetime.fromisoformat(v.replace("Z", "+00:00")))
        except ValueError:
            return v
    return v


def _as_date(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return v.astimezone(UTC).date().isoformat()
    return v


# An explicit `type:` in the rules: applied after canon() on both sides. A PostgresOnly stays one, except as
# `string`: its text is what Postgres prints, which a string field can hold.
CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "decimal_string": _as_number,
    "number": _as_number,
    "string": lambda v: v if v is None or isinstance(v, str) else str(v),
    "timestamp": _as_timestamp,
    "date": _as_date,
    "json": lambda v: v,
}

# ISO-8601 date and time with a zone: an instant. A date alone, or a time without a zone, is not one.
_ISO_INSTANT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?"
                          r"(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)")


def json_instants(v: Any) -> Any:
    """`json: {timestamps: iso}`: inside the column's JSON, ISO-8601 text with a zone is the instant it names (a
    values.TextInstant that keeps the text), so that it equals a Firestore Timestamp of that instant. Compared
    at microseconds, like every timestamp."""
    if isinstance(v, str):
        if _ISO_INSTANT.fullmatch(v) is None:
            return v
        try:
            parsed = dt.datetime.fromisoformat(v.upper().replace(",", ".").replace(" ", "T"))
        except ValueError:  # 24:00, month 13...: text that only looks like an instant
            return v
        return text_instant(v, parsed)
    if isinstance(v, dict):
        return {k: json_instants(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_instants(x) for x in v]
    return v


def _json_text(v: Any) -> Any:
    """An instant inside JSON written as text: the text it was read from, else ISO-8601 UTC ('Z', microseconds
    when it has them), which reads back as exactly that instant."""
    if isinstance(v, dt.datetime):
        return to_json(v)
    if isinstance(v, dict):
        return {k: _json_text(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_text(x) for x in v]
    return v


def conversion(column: Column) -> Callable[[Any], Any] | None:
    """What the rules apply to the column's value on both sides after canon(): its `type:`, then `json:`."""
    typed = CONVERSIONS[column.type] if column.type else None
    if column.json_timestamps is None:
        return typed
    if typed is None:
        return json_instants
    return lambda v: json_instants(typed(v))


# ---------------------------------------------------------------- the shape of a canonical record

@dataclass(frozen=True)
class Leaf:
    tolerance: float | None = None
    convert: Callable[[Any], Any] | None = None
    geo: bool = False


@dataclass(frozen=True)
class Branch:
    children: dict[str, "Node"]


@dataclass(frozen=True)
class KeyedMap:
    """A map whose keys are data (e.g. sources.{shopify,klaviyo}); every value has the element shape."""

    element: Branch


@dataclass(frozen=True)
class KeyedSet:
    """An array compared as a set: elements are matched by the values of `key_fields`."""

    key_fields: tuple[str, ...]
    element: Branch


Node = Union[Leaf, Branch, KeyedMap, KeyedSet]


def _insert(root: Branch, path: Path, node: Node) -> None:
    branch = root
    for part in path[:-1]:
        nxt = branch.children.setdefault(part, Branch({}))
        assert isinstance(nxt, Branch), path  # the loader rejects a path inside a value
        branch = nxt
    if isinstance(node, Branch) and isinstance(branch.children.get(path[-1]), Branch):
        branch.children[path[-1]].children.update(node.children)  # type: ignore[union-attr]
    else:
        branch.children[path[-1]] = node


def _leaf(column: Column) -> Leaf:
    return Leaf(tolerance=column.tolerance, convert=conversion(column))


def _section(columns: tuple[Column, ...], geopoints: tuple[GeoPointRule, ...]) -> Branch:
    branch = Branch({})
    for c in columns:
        if not c.ignore:
            _insert(branch, c.path, _leaf(c))
    for g in geopoints:
        _insert(branch, g.path, Leaf(tolerance=g.tolerance, geo=True))
    return branch


def shape_of(doc: DocumentSpec) -> Branch:
    """The canonical shape of one document kind, from its rules."""
    root = _section(doc.columns, doc.geopoints)
    for e in doc.embeds:
        section = _section(e.columns, e.geopoints)
        if e.kind in ("one", "latest"):
            _insert(root, e.into, section)
        elif e.kind == "map":
            _insert(root, e.into, KeyedMap(section))
        else:
            _insert(root, e.into, KeyedSet(e.set_key_fields, section))
    return root


# ---------------------------------------------------------------- Firestore document -> canonical

def _is_empty(v: Any) -> bool:
    return v is None or (isinstance(v, (dict, list)) and not v)


def set_sort_key(element: Any, key_fields: tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(element, dict):
        return ("\uffff", repr(element))  # not an element at all: kept, sorted last, reported by the diff
    return tuple(repr(get_path(element, f.split("."))) for f in key_fields)


def get_path(record: Any, path: Iterable[str]) -> Any:
    for part in path:
        if not isinstance(record, dict):
            return None
        record = record.get(part)
    return record


def project(node: Node, value: Any, null_equals_absent: bool) -> Any:
    """A Firestore value seen through the rules: only mapped fields, canonical scalars.

    A value of the wrong kind (a string where the rules expect a map...) is kept as it is, so that the
    diff reports it instead of the mapping crashing on it.
    """
    if isinstance(node, Leaf):
        v = canon(value)
        return node.convert(v) if node.convert is not None and v is not None else v
    if isinstance(node, Branch):
        if not isinstance(value, dict):
            return canon(value)
        out = {}
        for name, child in node.children.items():
            if name in value:
                v = project(child, value[name], null_equals_absent)
                # absent == NULL: drop None, and maps/sets the rules build that came out empty
                if null_equals_absent and (v is None or (not isinstance(child, Leaf) and _is_empty(v))):
                    continue
                out[name] = v
        return out
    if isinstance(node, KeyedMap):
        if not isinstance(value, dict):
            return canon(value)
        return {str(k): project(node.element, v, null_equals_absent) for k, v in value.items()}
    if not isinstance(value, list):
        return canon(value)
    elements = [project(node.element, v, null_equals_absent) for v in value]
    return sorted(elements, key=lambda e: set_sort_key(e, node.key_fields))


# ---------------------------------------------------------------- Postgres rows -> canonical

@dataclass(frozen=True)
class _Setter:
    index: int
    path: Path
    convert: Callable[[Any], Any] | None


@dataclass(frozen=True)
class _GeoSetter:
    lat: int
    lon: int
    path: Path


class _SectionMapper:
    """Builds the canonical fields of one table's row. Row layout: (key text, *select_columns)."""

    def __init__(self, select: tuple[str, ...], columns: tuple[Column, ...], geopoints: tuple[GeoPointRule, ...],
                 null_equals_absent: bool) -> None:
        index = {name: i + 1 for i, name in enumerate(select)}
        self.setters = tuple(_Setter(index[c.name], c.path, conversion(c)) for c in columns if not c.ignore)
        self.geos = tuple(_GeoSetter(index[g.latitude], index[g.longitude], g.path) for g in geopoints)
        self.null_equals_absent = null_equals_absent

    def build(self, row: Row, into: dict[str, Any]) -> dict[str, Any]:
        skip_null = self.null_equals_absent
        for s in self.setters:
            v = canon(row[s.index])
            if s.convert is not None and v is not None:
                v = s.convert(v)
            if v is None and skip_null:
                continue
            _set(into, s.path, v)
        for g in self.geos:
            lat, lon = row[g.lat], row[g.lon]
            if lat is None or lon is None:
                if not skip_null:
                    _set(into, g.path, None)
                continue
            _set(into, g.path, Geo(float(lat), float(lon)))
        return into


def _set(record: dict[str, Any], path: Path, value: Any) -> None:
    for part in path[:-1]:
        record = record.setdefault(part, {})
    record[path[-1]] = value


class _EmbedMapper:
    def __init__(self, embed: Embed, null_equals_absent: bool) -> None:
        self.embed = embed
        self.section = _SectionMapper(embed.select_columns, embed.columns, embed.geopoints, null_equals_absent)
        self.map_key_index = 1 + embed.select_columns.index(embed.map_key) if embed.map_key else 0

    def build(self, rows: list[Row], record: dict[str, Any]) -> None:
        if not rows:
            return
        e = self.embed
        if e.kind in ("one", "latest"):
            target = record
            for part in e.into:
                target = target.setdefault(part, {})
            self.section.build(rows[0], target)
            _prune_empty(record, e.into)
        elif e.kind == "map":
            _set(record, e.into, {str(canon(r[self.map_key_index])): self.section.build(r, {}) for r in rows})
        else:
            elements = [self.section.build(r, {}) for r in rows]
            _set(record, e.into, sorted(elements, key=lambda el: set_sort_key(el, e.set_key_fields)))


def _prune_empty(record: dict[str, Any], path: Path) -> None:
    """A 1:1 row whose mapped columns are all NULL leaves no empty map behind (as project() drops it)."""
    parents = [record]
    for part in path[:-1]:
        parents.append(parents[-1][part])
    for depth in range(len(path) - 1, -1, -1):
        if parents[depth].get(path[depth]) == {}:
            del parents[depth][path[depth]]
        else:
            break


class PostgresMapper:
    """Postgres rows of one document kind -> canonical records."""

    def __init__(self, doc: DocumentSpec, compare: CompareOptions) -> None:
        self.root = _SectionMapper(doc.select_columns, doc.columns, doc.geopoints, compare.null_equals_absent)
        self.embeds = tuple(_EmbedMapper(e, compare.null_equals_absent) for e in doc.embeds)

    def record(self, row: Row, embedded: tuple[list[Row], ...] = ()) -> dict[str, Any]:
        record = self.root.build(row, {})
        for mapper, rows in zip(self.embeds, embedded):
            mapper.build(rows, record)
        return record


class FirestoreMapper:
    """Firestore documents of one document kind -> canonical records."""

    def __init__(self, doc: DocumentSpec, compare: CompareOptions) -> None:
        self.shape = shape_of(doc)
        self.null_equals_absent = compare.null_equals_absent

    def record(self, document: dict[str, Any]) -> dict[str, Any]:
        return project(self.shape, document, self.null_equals_absent)


# ---------------------------------------------------------------- canonical -> either side (repair)

def to_firestore(node: Node, value: Any) -> Any:
    """A canonical record -> the Firestore document fields the rules map (GeoPoints restored, instants read from
    JSON text as Timestamps). A values.PostgresOnly stays what it is: no Firestore type holds it, and the write
    path refuses every value that is not a plain Firestore type."""
    if isinstance(node, Leaf):
        if node.geo and isinstance(value, Geo):
            return GeoPoint(value.latitude, value.longitude)
        return plain(value)
    if isinstance(node, Branch) and isinstance(value, dict):
        return {k: to_firestore(node.children[k], v) if k in node.children else v for k, v in value.items()}
    if isinstance(node, KeyedMap) and isinstance(value, dict):
        return {k: to_firestore(node.element, v) for k, v in value.items()}
    if isinstance(node, KeyedSet) and isinstance(value, list):
        return [to_firestore(node.element, v) for v in value]
    return plain(value)


class Unholdable(ValueError):
    """A value of the source of truth that its Postgres column cannot hold as what it is: written, it would be
    another value (a Timestamp as text, a GeoPoint as an array) that never equals the truth, or not written at all.
    `path`: the field path in the document."""

    def __init__(self, path: str, why: str) -> None:
        self.path, self.why = path, why
        super().__init__(f"{path}: {why}")


_NOT_JSON = {Geo: "a GeoPoint", Ref: "a document reference", bytes: "bytes"}


def _json_problem(v: Any, instants: bool, where: str) -> tuple[str, str] | None:
    """(where, why) for the first part of a JSON value jsonb cannot hold as what it is; `instants`: the column's
    rules say `json: {timestamps: iso}` (an instant is then ISO text that compares as one)."""
    if isinstance(v, dict):
        return next(filter(None, (_json_problem(x, instants, f"{where}.{k}") for k, x in v.items())), None)
    if isinstance(v, list):
        return next(filter(None, (_json_problem(x, instants, f"{where}[{i}]") for i, x in enumerate(v))), None)
    if isinstance(v, dt.datetime) and not instants:
        return where, ("a timestamp inside JSON: as text it would never equal the Timestamp again; "
                       "`json: {timestamps: iso}` on the column makes ISO text and Timestamps compare as instants")
    if isinstance(v, float) and not math.isfinite(v):
        return where, f"{v!r} inside JSON: jsonb holds no such number"
    kind = next((name for t, name in _NOT_JSON.items() if isinstance(v, t)), None)
    return (where, f"{kind} inside JSON: jsonb has no such type") if kind else None


def _column_value(column: Column, value: Any, where: str, is_json: bool) -> Any:
    """A canonical value as its column takes it: instants inside JSON as text (a top-level array is JSON when the
    column is json/jsonb or its rules say it is JSON; otherwise an array column, whose timestamps stay timestamps).
    Raises Unholdable for a value inside JSON that jsonb cannot hold as what it is."""
    instants = column.json_timestamps is not None
    if isinstance(value, dict) or (isinstance(value, list) and (is_json or instants)):
        _check_json(value, instants, where)
        return plain(_json_text(value))
    if isinstance(value, list):  # an array column: elements that are maps or arrays are JSON
        for i, v in enumerate(value):
            if isinstance(v, (dict, list)):
                _check_json(v, instants, f"{where}[{i}]")
        return plain([_json_text(v) if isinstance(v, (dict, list)) else v for v in value])
    return plain(value)


def _check_json(value: Any, instants: bool, where: str) -> None:
    problem = _json_problem(value, instants, where)
    if problem is not None:
        raise Unholdable(*problem)


def _section_row(columns: tuple[Column, ...], geopoints: tuple[GeoPointRule, ...], record: Any, where: str,
                 types: dict[str, str]) -> dict[str, Any]:
    row = {c.name: _column_value(c, get_path(record, c.path), _dotted(where, ".".join(c.path)),
                                 types.get(c.name) in ("json", "jsonb"))
           for c in columns if not c.ignore}
    for g in geopoints:
        geo = get_path(record, g.path)
        row[g.latitude], row[g.longitude] = (geo.latitude, geo.longitude) if isinstance(geo, Geo) else (None, None)
    return row


def _dotted(base: str, name: str) -> str:
    return f"{base}.{name}" if base else name


def to_postgres(doc: DocumentSpec, key: str, record: dict[str, Any],
                schema: dict[str, dict[str, str]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """A canonical record -> rows per table (column -> value), children carrying the parent key.

    Values stay canonical (dates as ISO strings, numbers as float): Postgres casts them to the column type.
    Instants inside JSON become text (json_instants' way back). `schema` (table -> column -> type) tells a
    json/jsonb column holding an array from an array column. Raises Unholdable (see _column_value).
    """
    types = schema or {}
    root_row = _section_row(doc.columns, doc.geopoints, record, "", types.get(doc.table, {}))
    root_row[doc.key] = key
    rows: dict[str, list[dict[str, Any]]] = {doc.table: [root_row]}
    for e in doc.embeds:
        value = get_path(record, e.into)
        if value is None:
            items: list[tuple[str | None, Any]] = []
        elif e.kind in ("one", "latest"):
            items = [(None, value)]
        elif e.kind == "map":
            items = list(value.items()) if isinstance(value, dict) else []
        else:
            items = [(None, v) for v in value] if isinstance(value, list) else []
        table_rows = rows.setdefault(e.table, [])
        for map_key, element in items:
            row = _section_row(e.columns, e.geopoints, element, _element_path(e, map_key, element),
                               types.get(e.table, {}))
            row[e.join] = key
            row.update(e.where)
            if e.map_key:
                row[e.map_key] = map_key
            table_rows.append(row)
    return rows


def _element_path(e: Embed, map_key: str | None, element: Any) -> str:
    """Where an embedded row's fields are in the document (a set's element named by its key, as the diff does)."""
    into = ".".join(e.into)
    if e.kind == "map":
        return _dotted(into, str(map_key))
    if e.kind == "set":
        return f"{into}[{','.join(str(get_path(element, f.split('.'))) for f in e.set_key_fields)}]"
    return into
