"""Drift is only drift once it has settled.

The sweep reads both sides as of one instant (Postgres: one REPEATABLE READ snapshot; Firestore: `read_time` set
to the snapshot's instant). A record the application was writing at that instant can still differ. So every
record that differed is read again, once, after `audit.settle_s`, both sides as of a new common instant, and
only what still differs then is drift. A record that still differs is in flight (counted as such, not reported
as drift) when its Firestore document changed after that instant, or after the sweep's instant and within
`audit.recent_s` before the re-read: the sweep saw another version of it, and the write may be half done.

A dual write needs it either way round. An app that commits Postgres first has Firestore behind for a moment:
settle_s lets that moment pass. Seed 000's syncCustomer writes Firestore first and commits Postgres after the
document and its subcollection documents: a re-read can land where Firestore is ahead and the Postgres rows
are not visible yet. Then the Firestore document is the recent one, and recent_s must outlast that window. A
document written before the sweep's instant and still differing after the sweep and settle_s is no write in
progress (a window of seconds): drift, however recent, so drift made just before a run is reported by it.

A server that stopped serving a read instant (the emulator restarted from an export: every document's update
time becomes the import instant) moves its reader forward (FirestoreReader.lost). Update times inside such a
window were stamped by the restart, not by a write: they make no record in flight. Whether a document changed
between the re-read and the in-flight check is judged by what the rules compare, not by its update time.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Iterable

from reconciler.config import Settings
from reconciler.diff import diff_records, same
from reconciler.errors import RuntimeFailure
from reconciler.keys import Key, Scope
from reconciler.mapping import Branch, FirestoreMapper, PostgresMapper, shape_of
from reconciler.result import Finding, FindingKind
from reconciler.rules.model import DocumentSpec, EntityRules
from reconciler.sources import Sides
from reconciler.sources import firestore as fs_source
from reconciler.sources import postgres as pg_source


def document_path(rules: EntityRules, doc: DocumentSpec, key: Key) -> str:
    if doc.parent is None:
        return f"{doc.collection}/{key[0]}"
    return f"{rules.top_collection}/{key[0]}/{doc.collection}/{key[1]}"


def finding_for(rules: EntityRules, doc: DocumentSpec, shape: Branch, key: Key, pg: dict[str, Any] | None,
                fs: dict[str, Any] | None) -> Finding | None:
    """What one record's two canonical versions amount to: None when they agree under the rules."""
    if fs is None:
        return Finding(document_path(rules, doc, key), FindingKind.MISSING_IN_FIRESTORE)
    if pg is None:
        return Finding(document_path(rules, doc, key), FindingKind.MISSING_IN_POSTGRES)
    fields = diff_records(shape, pg, fs, rules.compare)
    return Finding(document_path(rules, doc, key), FindingKind.MISMATCH, fields) if fields else None


@dataclass(frozen=True)
class Reread:
    """One record read again: its finding now (None: it settled), both versions, and whether it is in flight."""

    finding: Finding | None
    postgres: dict[str, Any] | None
    firestore_doc: fs_source.FsDoc | None
    firestore: dict[str, Any] | None
    in_flight: bool = False


Window = tuple[dt.datetime, dt.datetime]  # (a read instant the server lost, the instant its reader moved to)


def reread(rules: EntityRules, sides: Sides, settings: Settings, wanted: dict[int, tuple[DocumentSpec, list[Key]]],
           swept_at: dt.datetime, lost: Iterable[Window] = ()) -> dict[tuple[str, Key], Reread]:
    """Read the `wanted` records (per document kind) again after the settle delay; keyed (collection, key).
    `swept_at`: the instant the sweep read them as of; `lost`: the instants its Firestore reader lost."""
    if not any(keys for _, keys in wanted.values()):
        return {}
    time.sleep(settings.settle_s)
    lost = list(lost)
    for _ in range(2):  # a re-read whose own instant was lost is done again at a fresh common one, once
        out: dict[tuple[str, Key], Reread] = {}
        instant = pg_source.begin_snapshot(sides.pg)
        try:
            pg_reader = pg_source.PostgresReader(sides.pg, sides.schema, server_side=False)
            fs_reader = fs_source.FirestoreReader(sides.fs, timeout=settings.firestore.timeout_s, read_time=instant)
            for doc, keys in wanted.values():
                out.update(_reread_doc(rules, doc, keys, pg_reader, fs_reader))
        finally:
            pg_source.end_snapshot(sides.pg)
        lost += fs_reader.lost
        if not fs_reader.lost:
            _mark_in_flight(rules, sides, settings, wanted, out, instant, swept_at, lost)
            return out
    raise RuntimeFailure(f"{rules.entity}: the Firestore server lost the instant of the re-read twice (restarting?): "
                         "no common instant to settle the differing records at")


def _reread_doc(rules: EntityRules, doc: DocumentSpec, keys: list[Key], pg_reader: pg_source.PostgresReader,
                fs_reader: fs_source.FirestoreReader) -> dict[tuple[str, Key], Reread]:
    wanted = set(keys)
    parents = tuple(sorted({k[0] for k in wanted}))
    # subdocuments by their exact keys (one batched get), not every child of each parent (a query per parent:
    # on the emulator each scans the whole collection group, 1.5 s apiece at 650k documents)
    scope = Scope(ids=parents) if doc.parent is None else Scope(ids=parents, keys=tuple(wanted))
    pg_map, fs_map, shape = PostgresMapper(doc, rules.compare), FirestoreMapper(doc, rules.compare), shape_of(doc)
    pg = {k: pg_map.record(*raw) for k, raw in pg_reader.stream(doc, scope) if k in wanted}
    fs = {k: d for k, d in fs_reader.stream(doc, scope, rules.top_collection) if k in wanted}
    out = {}
    for key in keys:
        fs_doc = fs.get(key)
        fs_rec = fs_map.record(fs_doc.fields) if fs_doc is not None else None
        if key not in pg and fs_doc is None:  # gone from both sides since the sweep: nothing left to compare
            out[(doc.collection, key)] = Reread(None, None, None, None)
            continue
        out[(doc.collection, key)] = Reread(finding_for(rules, doc, shape, key, pg.get(key), fs_rec), pg.get(key),
                                            fs_doc, fs_rec)
    return out


def _mark_in_flight(rules: EntityRules, sides: Sides, settings: Settings,
                    wanted: dict[int, tuple[DocumentSpec, list[Key]]], out: dict[tuple[str, Key], Reread],
                    instant: dt.datetime, swept_at: dt.datetime, lost: list[Window]) -> None:
    """A record that still differs is in flight when its Firestore document changed (what the rules compare)
    since the re-read (the second half of a dual write landed since), or was written after the sweep's instant
    and less than recent_s before the re-read's (Firestore written first, Postgres not committed yet); an
    update time a restarted server stamped (inside a `lost` window) is no write."""
    still = [(doc, key) for doc, keys in wanted.values() for key in keys
             if out[(doc.collection, key)].finding is not None]
    if not still:
        return
    # a key that is no document ID (key_problem) has no document: its path is not asked for (nor looked up:
    # "a/parts/b" as a root ID would be the path of another document)
    paths = {(doc.collection, key): document_path(rules, doc, key) for doc, key in still
             if fs_source.key_problem(key) is None}
    latest = fs_source.FirestoreWriter(sides.fs).read(list(paths.values()))
    recent = max(instant - dt.timedelta(seconds=settings.recent_s), swept_at)
    mappers: dict[int, tuple[FirestoreMapper, Branch]] = {}
    for doc, key in still:
        r = out[(doc.collection, key)]
        current = latest[paths[(doc.collection, key)]] if (doc.collection, key) in paths else None
        fs_map, shape = mappers.setdefault(id(doc), (FirestoreMapper(doc, rules.compare), shape_of(doc)))
        changed = (current is None) != (r.firestore_doc is None) or (
            current is not None and not same(shape, fs_map.record(current.fields), r.firestore, rules.compare))
        seen = _utc(r.firestore_doc.update_time) if r.firestore_doc is not None else None
        written = seen is not None and not any(a < seen <= b for a, b in lost)
        if changed or (written and settings.recent_s > 0 and seen > recent):
            out[(doc.collection, key)] = Reread(r.finding, r.postgres, r.firestore_doc, r.firestore, in_flight=True)


def _utc(value: Any) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def keys_of(pending: Iterable[tuple[DocumentSpec, Key]]) -> dict[int, tuple[DocumentSpec, list[Key]]]:
    """Pending records grouped per document kind (by identity: specs are not hashable by value cheaply)."""
    out: dict[int, tuple[DocumentSpec, list[Key]]] = {}
    for doc, key in pending:
        out.setdefault(id(doc), (doc, []))[1].append(key)
    return out
