"""Triage of one record: both sides raw and canonical, side by side, their differences, and its history.

A single-record read (Scope(ids=...), the engine's own readers and mappers, one Postgres snapshot): the
root document and every subcollection document of that ID, on both sides.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, replace
from typing import Any, Iterator

from reconciler import engine, settle
from reconciler.config import Settings
from reconciler.diff import diff_records
from reconciler.errors import ReconcilerError
from reconciler.history import FirstSeen, History
from reconciler.keys import Key, Scope, sort_key
from reconciler.mapping import FirestoreMapper, PostgresMapper, shape_of
from reconciler.result import FieldDiff, FindingKind
from reconciler.rules import EntityRules
from reconciler.rules.model import DocumentSpec
from reconciler.sources import firestore as fs_source
from reconciler.sources import postgres as pg_source
from reconciler.values import Bool, Geo, to_json

WIDE = 38  # characters of a value column; longer values get lines of their own


@dataclass(frozen=True)
class Document:
    """One document of the record (the root, or a subcollection document) as both sides have it."""

    path: str  # <collection>/<id>[/<subcollection>/<id>]
    postgres_rows: dict[str, list[dict[str, Any]]]  # table -> rows, every column (root: with embedded tables)
    postgres: dict[str, Any] | None  # canonical; None: no row
    firestore_raw: dict[str, Any] | None  # the stored fields; None: no document
    firestore: dict[str, Any] | None  # canonical
    kind: FindingKind | None  # None: in sync
    fields: tuple[FieldDiff, ...]
    first_seen: FirstSeen | None = None
    unwritable: str | None = None  # why Firestore can never have it: its key is no document ID


@dataclass(frozen=True)
class Explanation:
    entity: str
    source_of_truth: str
    doc_id: str
    documents: tuple[Document, ...]
    history_note: str  # what history says overall, or why it could not say

    @property
    def drifted(self) -> tuple[Document, ...]:
        return tuple(d for d in self.documents if d.kind is not None)


def explain(settings: Settings, entity: str, doc_id: str) -> Explanation:
    (rules,) = engine.load_rules(settings, [entity])
    link = engine.Link(settings, engine.open_sides(settings, rules.tables()))
    try:
        engine.check_rules([rules], link.sides.schema)

        def read(sides: Any) -> list[Document]:
            pg_source.begin_snapshot(sides.pg)
            try:
                return [d for spec in rules.documents for d in _documents(rules, spec, sides, doc_id, settings)]
            finally:
                pg_source.end_snapshot(sides.pg)

        docs = link.run(f"reading {rules.entity} {doc_id}", read)
    finally:
        link.close()
    docs, note = _with_history(settings, rules.entity, docs)
    return Explanation(rules.entity, rules.source_of_truth, doc_id, tuple(docs), note)


def _documents(rules: EntityRules, spec: DocumentSpec, sides: Any, doc_id: str, settings: Settings) -> Iterator[Document]:
    scope = Scope(ids=(doc_id,))
    pg_reader = pg_source.PostgresReader(sides.pg, sides.schema, server_side=False)
    fs_reader = fs_source.FirestoreReader(sides.fs, timeout=settings.firestore.timeout_s)
    pg_map, fs_map = PostgresMapper(spec, rules.compare), FirestoreMapper(spec, rules.compare)
    pg = {k: pg_map.record(*raw) for k, raw in pg_reader.stream(spec, scope)}
    fs = {k: d.fields for k, d in fs_reader.stream(spec, scope, rules.root.collection)}
    rows = _raw_rows(sides, spec, doc_id)
    shape = shape_of(spec)
    for key in sorted(pg.keys() | fs.keys(), key=sort_key):
        canonical_fs = fs_map.record(fs[key]) if key in fs else None
        canonical_pg = pg.get(key)
        fields: tuple[FieldDiff, ...] = ()
        if canonical_pg is None:
            kind: FindingKind | None = FindingKind.MISSING_IN_POSTGRES
        elif canonical_fs is None:
            kind = FindingKind.MISSING_IN_FIRESTORE
        else:
            fields = diff_records(shape, canonical_pg, canonical_fs, rules.compare)
            kind = FindingKind.MISMATCH if fields else None
        yield Document(settle.document_path(rules, spec, key), _rows_for(spec, rows, key), canonical_pg,
                       fs.get(key), canonical_fs, kind, fields, unwritable=fs_source.key_problem(key))


def _raw_rows(sides: Any, spec: DocumentSpec, doc_id: str) -> dict[str, list[dict[str, Any]]]:
    if spec.parent is not None:
        return {spec.table: pg_source.rows_of(sides.pg, sides.schema, spec.table, spec.parent, doc_id)}
    out = {spec.table: pg_source.rows_of(sides.pg, sides.schema, spec.table, spec.key, doc_id)}
    for e in spec.embeds:
        out[e.table] = pg_source.rows_of(sides.pg, sides.schema, e.table, e.join, doc_id, e.order_by)
    return out


def _rows_for(spec: DocumentSpec, rows: dict[str, list[dict[str, Any]]], key: Key) -> dict[str, list[dict[str, Any]]]:
    if spec.parent is None:
        return rows
    return {spec.table: [r for r in rows[spec.table] if str(r.get(spec.key)) == key[1]]}


def _with_history(settings: Settings, entity: str, docs: list[Document]) -> tuple[list[Document], str]:
    if not settings.history.enabled:
        return docs, "history is disabled ([history] enabled = false)"
    try:
        with engine.postgres_step("reading the history"), History.open(settings) as h:
            seen = [h.first_seen(entity, d.path) for d in docs]
    except ReconcilerError as exc:  # triage goes on without history
        return docs, f"history unreadable: {exc}"
    runs = max((s.runs for s in seen), default=0)
    note = f"{runs} recorded {'run' if runs == 1 else 'runs'} of {entity}" if runs else "no recorded runs yet"
    return [replace(d, first_seen=s) for d, s in zip(docs, seen)], note


# ------------------------------------------------------------------------------------------ text


def render(x: Explanation) -> str:
    docs = x.documents
    if not docs:
        verdict = "neither side has it"
    elif x.drifted:
        verdict = f"DRIFT: {len(x.drifted)} of {len(docs)} {'document differs' if len(docs) == 1 else 'documents differ'}"
    else:
        verdict = f"in sync ({len(docs)} {'document' if len(docs) == 1 else 'documents'})"
    out = [f"{x.entity} {x.doc_id} (source of truth: {x.source_of_truth}): {verdict}", f"history: {x.history_note}"]
    for d in docs:
        out += ["", f"== {d.path}: {_kind(d.kind)}"] + ([f"   the key {d.unwritable}"] if d.unwritable else [])
        out.append(f"   {_history_line(d.first_seen)}")
        out += _postgres_rows(d)
        out.append("-- Firestore document (raw)")
        out += ([f"  {p}: {v}" for p, v in _flat(d.firestore_raw, _raw, sort=True)] if d.firestore_raw is not None
                else ["  (no document)"])
        out += _side_by_side(d)
        if d.fields:
            out.append(f"-- Differences ({len(d.fields)})")
            out += [f"  {f.path}: postgres {_canon(f.postgres)} | firestore {_canon(f.firestore)}" for f in d.fields]
    return "\n".join(out)


def _kind(kind: FindingKind | None) -> str:
    return {None: "in sync", FindingKind.MISMATCH: "MISMATCH", FindingKind.MISSING_IN_FIRESTORE: "MISSING IN FIRESTORE",
            FindingKind.MISSING_IN_POSTGRES: "MISSING IN POSTGRES"}[kind]


def _history_line(s: FirstSeen | None) -> str:
    if s is None:
        return "first seen drifting: (no history)"
    if s.since is not None:
        return (f"first seen drifting: {_when(s.since)} ({s.streak_runs} {'run' if s.streak_runs == 1 else 'runs'} "
                f"in a row up to {_when(s.last)}); first ever: {_when(s.ever)}")
    if s.ever is not None:
        return f"first seen drifting: not in the latest run; last drifted {_when(s.last)}, first ever {_when(s.ever)}"
    return f"first seen drifting: never (in {s.runs} recorded {'run' if s.runs == 1 else 'runs'})"


def _when(t: dt.datetime | None) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"


def _postgres_rows(d: Document) -> list[str]:
    out = ["-- Postgres rows (raw)"]
    for table, rows in d.postgres_rows.items():
        out.append(f"  {table}: {len(rows)} {'row' if len(rows) == 1 else 'rows'}")
        for i, row in enumerate(rows):
            prefix = f"    [{i}] " if len(rows) > 1 else "    "
            out.append(prefix + ", ".join(f"{k}={_raw(v)}" for k, v in row.items()))
    return out


def _side_by_side(d: Document) -> list[str]:
    pg, fs = dict(_flat(d.postgres, _canon)), dict(_flat(d.firestore, _canon))
    paths = list(dict.fromkeys([*pg, *fs]))
    width = min(max((len(p) for p in paths), default=5), 44)
    out = ["-- Canonical (as compared; * differs)", f"    {'field'.ljust(width)}  {'postgres'.ljust(WIDE)}  firestore"]
    for p in paths:
        mark = "*" if any(_within(p, f.path) for f in d.fields) else " "
        a, b = pg.get(p, "—") if d.postgres is not None else "(no row)", fs.get(p, "—") if d.firestore is not None \
            else "(no document)"
        if len(a) > WIDE or len(p) > width:
            out += [f"  {mark} {p}", f"      postgres:  {a}", f"      firestore: {b}"]
        else:
            out.append(f"  {mark} {p.ljust(width)}  {a.ljust(WIDE)}  {b}")
    return out


def _within(row_path: str, diff_path: str) -> bool:
    return (diff_path == row_path or diff_path.startswith((row_path + ".", row_path + "["))
            or row_path.startswith(diff_path + "."))


def _flat(value: dict[str, Any] | None, fmt: Any, prefix: str = "", sort: bool = False) -> Iterator[tuple[str, str]]:
    """Leaf paths of a nested map (lists stay whole), in the map's order or sorted (Firestore keeps none)."""
    for k, v in sorted((value or {}).items()) if sort else (value or {}).items():
        if isinstance(v, dict) and v:
            yield from _flat(v, fmt, f"{prefix}{k}.", sort)
        else:
            yield f"{prefix}{k}", fmt(v)


def _canon(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, Bool):
        return repr(v)
    if isinstance(v, Geo):
        return f"GeoPoint({v.latitude}, {v.longitude})"
    if isinstance(v, str):
        return v if v and v.strip() == v else json.dumps(v, ensure_ascii=False)
    if isinstance(v, (dt.date, dt.datetime)):
        return str(to_json(v))
    return json.dumps(to_json(v), ensure_ascii=False, separators=(",", ":"), default=str)


def _raw(v: Any) -> str:
    """A stored value as its database client returns it, typed where the type is not obvious."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if hasattr(v, "latitude") and hasattr(v, "longitude") and not isinstance(v, dict):
        return f"GeoPoint({v.latitude}, {v.longitude})"
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, (dict, list)):
        return json.dumps(to_json(v), ensure_ascii=False, separators=(",", ":"), default=str)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return str(v)
