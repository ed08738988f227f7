"""Repair: drifted records -> a plan of writes to the side that is not the source of truth -> checked, applied.

What keeps it safe, in the order it happens:
- A dry run is the default: the plan lists the exact writes and nothing is written.
- Blast radius: an entity whose drifted share of records exceeds `repair.max_drift_ratio` is refused
  (a wrong project ID reads as an empty collection: everything "missing"), unless forced; at most
  `max_repairs` records per entity are repaired, the rest are skipped.
- Orphans (records only the written side has) are deleted only with `delete_orphans`; the report keeps a
  full copy of each deleted record.
- Preconditions: just before writing, the source of truth is re-read and must map to exactly what the diff
  saw. The written side must still be at the version the diff saw: Firestore writes carry the document's
  update time (a create requires the document not to exist); Postgres writes run in a SERIALIZABLE
  transaction that first re-reads the record and compares it, so a concurrent commit to anything read
  aborts ours. A record that changed is skipped as `changed_during_run`, never overwritten.
- Only mapped fields are written: Firestore updates name field paths (unmapped fields, also inside the
  elements of rewritten arrays, are kept); Postgres writes only mapped columns, one transaction per record.
- Every applied or failed write is recorded in `reconciler_repairs` (for Postgres-side repairs in the same
  transaction as the write).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import psycopg
from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath

from reconciler import stop
from reconciler.config import Settings
from reconciler.diff import node_differs
from reconciler.errors import MissingPrivileges, RuntimeFailure
from reconciler.keys import Key, Scope
from reconciler.mapping import (Branch, KeyedMap, KeyedSet, Node, PostgresMapper, canon, project,
                                set_sort_key, shape_of, to_firestore, to_postgres)
from reconciler.result import Counts, Finding, FindingKind, Repair, RepairAction, RepairStatus, RepairSummary
from reconciler.rules.model import CompareOptions, DocumentSpec, EntityRules, Reference
from reconciler.sources import Sides
from reconciler.sources import postgres as pg_source
from reconciler.sources.firestore import FirestoreWriter, FsDoc, FsWrite, key_problem
from reconciler.values import to_json

CHANGED_DURING_RUN = "changed_during_run"
DELETE = firestore.DELETE_FIELD


@dataclass(frozen=True)
class Options:
    apply: bool = False  # False: a dry run
    delete_orphans: bool = False
    max_repairs: int | None = None  # None: settings.repair.max_repairs
    force: bool = False  # repair even past the drift-ratio guard

    def limit(self, settings: Settings) -> int:
        return self.max_repairs if self.max_repairs is not None else settings.repair.max_repairs


@dataclass
class Drift:
    """One drifted record as the diff read it: what repair plans from and checks preconditions against."""

    doc: DocumentSpec
    key: Key
    finding: Finding
    postgres: dict[str, Any] | None  # canonical
    firestore: FsDoc | None  # raw document and its update time
    firestore_canonical: dict[str, Any] | None


@dataclass(frozen=True)
class PgWrite:
    table: str
    op: str  # "upsert" | "delete"
    key: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Plan:
    drift: Drift
    action: RepairAction
    reason: str = ""
    fs: FsWrite | None = None
    pg: tuple[PgWrite, ...] = ()
    impossible: bool = False  # no write can repair it (`reason` says why): it fails when applied

    @property
    def writes(self) -> bool:
        return self.fs is not None or bool(self.pg)

    @functools.cached_property
    def shown(self) -> tuple[dict[str, Any], ...]:
        """The writes as JSON-ready dicts (report, dry-run listing, audit trail): built once per record."""
        return _shown(self)


# ------------------------------------------------------------------------------------------ entry point

@dataclass(frozen=True)
class Outcome:
    repairs: dict[str, Repair]  # finding key -> what was done
    others: Repair  # what happened to drifted records not in `repairs` (beyond the limit, or refused)
    summary: RepairSummary


def repair_entity(rules: EntityRules, sides: Sides, settings: Settings, drifts: list[Drift], counts: Counts,
                  options: Options, run_id: str) -> Outcome:
    """Plan (and with options.apply, apply) the repair of `drifts`, the first drifted records in key order."""
    started = time.monotonic()
    target = rules.written_side
    limit = options.limit(settings)
    refused = _refusal(counts, settings.repair.max_drift_ratio, options.force)
    if refused:
        return Outcome({}, Repair(RepairAction.SKIP, RepairStatus.SKIPPED, refused),
                       RepairSummary(target, options.apply, skipped=counts.drifted, refused=refused))
    plans = [_plan(rules, d, target, options) for d in drifts[:limit]]
    repairs: dict[str, Repair] = {}
    if options.apply:
        writer = _Applier(rules, sides, settings, run_id)
        for batch in _batches(_apply_order(p for p in plans if p.writes or p.impossible), settings.repair.batch_size):
            if stop.requested():  # between batches: every record is applied whole (and logged) or not at all
                break
            repairs.update(writer.apply(batch))
    for p in plans:
        if p.drift.finding.key not in repairs:
            status = RepairStatus.SKIPPED
            if options.apply and p.writes and not p.reason:
                reason = "interrupted: stopped by SIGTERM before this record was written"
            else:
                reason = p.reason or ("dry run: not applied (use --apply)" if p.writes else "nothing to write")
            repairs[p.drift.finding.key] = Repair(p.action, status, reason, p.shown)
    statuses = [r.status for r in repairs.values()]
    done, failed = statuses.count(RepairStatus.APPLIED), statuses.count(RepairStatus.FAILED)
    others = Repair(RepairAction.SKIP, RepairStatus.SKIPPED, f"not repaired: over the limit of {limit} repairs "
                                                             "per entity (--max-repairs, repair.max_repairs)")
    return Outcome(repairs, others, RepairSummary(target, options.apply, planned=sum(p.writes for p in plans),
                                                  done=done, failed=failed, skipped=counts.drifted - done - failed,
                                                  duration_s=time.monotonic() - started))


def _refusal(counts: Counts, max_ratio: float, force: bool) -> str | None:
    records = counts.matched + counts.drifted
    if force or not records or counts.drifted / records <= max_ratio:
        return None
    return (f"refused: {counts.drifted:,} of {records:,} records ({counts.drifted / records:.0%}) differ, more than "
            f"repair.max_drift_ratio {max_ratio:.0%}; a wrong project, database or rules file looks like this. "
            f"Check, then raise the ratio or use --force")


def _batches(items: list[_Plan], size: int) -> Iterator[list[_Plan]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _apply_order(plans: Iterator[_Plan]) -> list[_Plan]:
    """Creates and updates parents first (root documents, then subcollections); deletes children first."""
    plans = list(plans)
    return ([p for p in plans if p.action != RepairAction.DELETE]
            + [p for p in reversed(plans) if p.action == RepairAction.DELETE])


# ------------------------------------------------------------------------------------------ plan

def _plan(rules: EntityRules, d: Drift, target: str, options: Options) -> _Plan:
    orphan = (d.finding.kind == FindingKind.MISSING_IN_POSTGRES if target == "firestore"
              else d.finding.kind == FindingKind.MISSING_IN_FIRESTORE)
    if orphan and not options.delete_orphans:
        return _Plan(d, RepairAction.SKIP, f"orphan: only {target} has it; --delete-orphans deletes it")
    if orphan:
        action = RepairAction.DELETE
    elif d.finding.kind == FindingKind.MISMATCH:
        action = RepairAction.UPDATE
    else:
        action = RepairAction.CREATE
    if target == "firestore":
        return _plan_firestore(rules, d, action)
    return _plan_postgres(d, action)


def _plan_firestore(rules: EntityRules, d: Drift, action: RepairAction) -> _Plan:
    problem = key_problem(d.key)  # a Postgres-only record whose key Firestore refuses: real drift, no repair
    if problem is not None:
        return _Plan(d, action, problem, impossible=True)
    shape = shape_of(d.doc)
    path = d.finding.key
    if action == RepairAction.DELETE:
        assert d.firestore is not None
        return _Plan(d, action, fs=FsWrite(path, "delete", {}, d.firestore.update_time))
    if action == RepairAction.CREATE:
        return _Plan(d, action, fs=FsWrite(path, "create", overlay(shape, None, d.postgres or {})))
    assert d.firestore is not None
    updates: dict[str, Any] = {}
    field_updates(shape, d.postgres, d.firestore_canonical, d.firestore.fields, (), rules.compare, updates)
    if not updates:
        return _Plan(d, RepairAction.SKIP, "nothing to write: the difference is not in a writable field")
    return _Plan(d, action, fs=FsWrite(path, "update", updates, d.firestore.update_time))


def field_updates(node: Node, truth: Any, other: Any, raw: Any, path: tuple[str, ...], compare: CompareOptions,
                  out: dict[str, Any]) -> None:
    """The Firestore field paths (and values) that make `raw` say what `truth` says, touching nothing else.

    Maps are descended into, so only differing mapped leaves are written; a value that has to be written
    whole (a leaf, an array compared as a set, a map element only one side has, a value of the wrong kind)
    keeps the unmapped fields of what it replaces (see overlay()).
    """
    if not node_differs(node, truth, other, compare):
        return
    if isinstance(node, Branch) and isinstance(raw, dict) and isinstance(truth, dict | None):
        t, o = truth or {}, other if isinstance(other, dict) else {}
        for name, child in node.children.items():
            field_updates(child, t.get(name), o.get(name), raw.get(name), path + (name,), compare, out)
    elif isinstance(node, KeyedMap) and isinstance(raw, dict) and isinstance(truth, dict | None):
        t, o = truth or {}, other if isinstance(other, dict) else {}
        for k in sorted(t.keys() | {str(k) for k in raw}):
            if k in t:
                field_updates(node.element, t[k], o.get(k), raw.get(k), path + (k,), compare, out)
            else:  # an element the truth does not have is removed whole, as the diff reports it
                out[FieldPath(*path, k).to_api_repr()] = DELETE
    elif not path:
        raise AssertionError("a document's root is always a map")
    elif truth is None:
        out[FieldPath(*path).to_api_repr()] = DELETE if compare.null_equals_absent else None
    else:
        out[FieldPath(*path).to_api_repr()] = overlay(node, raw, truth)


def overlay(node: Node, raw: Any, truth: Any) -> Any:
    """`truth` (canonical) written in Firestore's types over `raw` (what Firestore holds now), keeping every
    field of `raw` the rules do not map, also inside array elements matched by their set key."""
    if isinstance(node, Branch) and isinstance(truth, dict):
        out = dict(raw) if isinstance(raw, dict) else {}
        for name, child in node.children.items():
            if name in truth:
                out[name] = overlay(child, out.get(name), truth[name])
            else:
                out.pop(name, None)
        return out
    if isinstance(node, KeyedMap) and isinstance(truth, dict):
        base = raw if isinstance(raw, dict) else {}
        return {k: overlay(node.element, base.get(k), v) for k, v in truth.items()}
    if isinstance(node, KeyedSet) and isinstance(truth, list):
        # elements Firestore has keep their place (the order means nothing, but is not ours to change);
        # elements it lacks are appended, elements the truth lacks are dropped
        wanted = {set_sort_key(t, node.key_fields): t for t in truth}
        out = []
        for element in raw if isinstance(raw, list) else ():
            t = wanted.pop(set_sort_key(project(node.element, element, True), node.key_fields), None)
            if t is not None:
                out.append(overlay(node.element, element, t))
        return out + [overlay(node.element, None, t) for t in wanted.values()]
    return to_firestore(node, truth)


def _key_columns(doc: DocumentSpec) -> dict[str, tuple[str, ...]]:
    """The columns that identify a row of each table of the document."""
    out = {doc.table: ((doc.parent,) if doc.parent else ()) + (doc.key,)}
    for e in doc.embeds:
        out[e.table] = (e.join,) + e.row_key
    return out


def _references(doc: DocumentSpec) -> dict[str, dict[str, Reference]]:
    """Per table, the columns whose canonical value is the referenced row's document ID, not the column's own."""
    out: dict[str, dict[str, Reference]] = {}
    sections = [(doc.table, doc.columns, {doc.parent: doc.parent_references} if doc.parent else {})]
    sections += [(e.table, e.columns, {e.join: e.join_references}) for e in doc.embeds]
    for table, columns, links in sections:
        refs = {c.name: c.references for c in columns if c.references is not None}
        refs.update({c: r for c, r in links.items() if r is not None})
        out.setdefault(table, {}).update(refs)
    return out


def _resolved(values: dict[str, Any], refs: dict[str, Reference]) -> dict[str, Any]:
    """Written through the reference: the foreign key is looked up from the referenced document ID."""
    return {c: pg_source.Lookup(refs[c], v) if c in refs and v is not None else v for c, v in values.items()}


def _rows(doc: DocumentSpec, key: Key, record: dict[str, Any] | None) -> dict[str, dict[tuple[str, ...], dict]]:
    """The record's rows per table, indexed by their key columns' values (as text)."""
    if record is None:
        return {}
    tables = to_postgres(doc, key[-1], record)
    if doc.parent:
        tables[doc.table][0][doc.parent] = key[0]
    keys = _key_columns(doc)
    return {t: {tuple(str(r.get(c)) for c in keys[t]): r for r in rows} for t, rows in tables.items()}


def _plan_postgres(d: Drift, action: RepairAction) -> _Plan:
    keys = _key_columns(d.doc)
    latest = [e for e in d.doc.embeds if e.kind == "latest" and e.order_by not in {c.name for c in e.columns}]
    if latest and action != RepairAction.DELETE:
        return _Plan(d, RepairAction.SKIP, f"cannot write {latest[0].table}: its order_by column is not mapped")
    truth = _rows(d.doc, d.key, d.firestore_canonical)
    other = _rows(d.doc, d.key, d.postgres)
    writes: list[PgWrite] = []
    tables = tuple(dict.fromkeys((d.doc.table, *(e.table for e in d.doc.embeds))))  # two embeds may share one
    if action != RepairAction.DELETE:
        for table in tables:
            for k, row in truth.get(table, {}).items():
                if other.get(table, {}).get(k) != row:
                    key = {c: row.get(c) for c in keys[table]}
                    writes.append(PgWrite(table, "upsert", key, {c: v for c, v in row.items() if c not in key}))
    one_row = {e.table for e in d.doc.embeds if e.kind in ("one", "latest")}
    for table in reversed(tables):
        if action == RepairAction.DELETE:
            writes.append(PgWrite(table, "delete", _own_key(d) if table == d.doc.table
                                  else {_join_of(d.doc, table): d.key[-1]}))
            continue
        for k, row in other.get(table, {}).items():
            if k in truth.get(table, {}):
                continue
            key = {c: row.get(c) for c in keys[table]}
            if table in one_row:  # the document has no such map: clear the mapped columns, keep the row
                writes.append(PgWrite(table, "upsert", key, {c: None for c in row if c not in key}))
            else:  # an element the document does not have
                writes.append(PgWrite(table, "delete", key))
    refs = _references(d.doc)
    writes = [PgWrite(w.table, w.op, _resolved(w.key, refs.get(w.table, {})), _resolved(w.values, refs.get(w.table, {})))
              for w in writes]
    return _Plan(d, action, pg=tuple(writes))


def _own_key(d: Drift) -> dict[str, Any]:
    return {d.doc.parent: d.key[0], d.doc.key: d.key[1]} if d.doc.parent else {d.doc.key: d.key[0]}


def _join_of(doc: DocumentSpec, table: str) -> str:
    return next(e.join for e in doc.embeds if e.table == table)


def _shown(p: _Plan) -> tuple[dict[str, Any], ...]:
    """The plan's writes as JSON-ready dicts, for the report and the dry-run listing."""
    if p.fs is not None:
        w = p.fs
        if w.op == "update":
            return ({"side": "firestore", "op": "update", "path": w.path,
                     "set": {k: to_json(canon(v)) for k, v in w.fields.items() if v is not DELETE},
                     "delete": [k for k, v in w.fields.items() if v is DELETE]},)
        if w.op == "create":
            return ({"side": "firestore", "op": "create", "path": w.path, "document": to_json(canon(w.fields))},)
        return ({"side": "firestore", "op": "delete", "path": w.path},)
    return tuple({"side": "postgres", "op": w.op, "table": w.table, "key": to_json(_unresolved(w.key)),
                  **({"values": to_json(_unresolved(w.values))} if w.op == "upsert" else {})} for w in p.pg)


def _unresolved(values: dict[str, Any]) -> dict[str, Any]:
    return {c: v.value if isinstance(v, pg_source.Lookup) else v for c, v in values.items()}


# ------------------------------------------------------------------------------------------ apply

LOG_TABLE = "reconciler_repairs"
LOG_DDL = f"""
CREATE TABLE IF NOT EXISTS {LOG_TABLE} (
  id              BIGSERIAL PRIMARY KEY,
  run_id          TEXT NOT NULL,
  entity_type     TEXT NOT NULL,
  entity_id       TEXT NOT NULL,          -- the Firestore document path of the record
  operation       TEXT NOT NULL,          -- create | update | delete
  postgres_status TEXT NOT NULL,          -- source | applied | failed
  firestore_status TEXT NOT NULL,         -- source | applied | failed
  data_snapshot   JSONB NOT NULL,         -- {{"before": ..., "after": ..., "writes": [...]}}
  error_message   TEXT,
  created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
  completed_at    TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS {LOG_TABLE}_entity ON {LOG_TABLE} (entity_type, entity_id)
"""


WRITE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")  # re-read, create, update, remove rows


def check_privileges(rules: list[EntityRules], sides: Sides) -> None:
    """Before anything is written: the Postgres role may write every table repair writes (when Postgres is
    the written side) and record in the audit table (always). Raises naming every missing privilege."""
    tables = {t: WRITE_PRIVILEGES for r in rules if r.written_side == "postgres" for t in r.tables()}
    missing = pg_source.missing_privileges(sides.pg, tables, LOG_TABLE)
    if missing:
        user = sides.pg.info.user
        raise MissingPrivileges(f"postgres: role {user!r} may not repair ({', '.join(r.entity for r in rules)}): "
                                f"it lacks {'; '.join(missing)}. Nothing was written. See README, 'Least privilege'")


class _Applier:
    def __init__(self, rules: EntityRules, sides: Sides, settings: Settings, run_id: str) -> None:
        self.rules, self.pg, self.schema, self.run_id = rules, sides.pg, sides.schema, run_id
        self.fs = FirestoreWriter(sides.fs)
        self.target = rules.written_side
        self.itersize = settings.postgres.itersize
        ensure_log(self.pg)

    def apply(self, batch: list[_Plan]) -> dict[str, Repair]:
        impossible = [p for p in batch if p.impossible]
        out = {p.drift.finding.key: _done(p, "failed", p.reason, None) for p in impossible}
        if impossible:  # failed like a refused write: in the report and the audit trail, the run exits 3
            self._log([(p, "failed", p.reason) for p in impossible])
            self.pg.commit()
        batch = [p for p in batch if not p.impossible]
        if batch:
            out.update(self._to_firestore(batch) if self.target == "firestore" else self._to_postgres(batch))
        return out

    # ---- toward Firestore: the Postgres truth re-read in one snapshot, the writes in one batch

    def _to_firestore(self, batch: list[_Plan]) -> dict[str, Repair]:
        fresh = self._reread_postgres(batch)
        out: dict[str, Repair] = {}
        ready = []
        for p in batch:
            if fresh.get(p.drift.key) != p.drift.postgres:
                out[p.drift.finding.key] = _changed(p, "postgres (the source of truth) changed since it was read")
            else:
                ready.append(p)
        outcomes = self.fs.commit([p.fs for p in ready])  # type: ignore[misc]
        logged = []
        for p, (status, message) in zip(ready, outcomes):
            if status == "changed":
                out[p.drift.finding.key] = _changed(p, f"firestore changed since it was read ({message})")
                continue
            out[p.drift.finding.key] = _done(p, status, message, self._deleted_fs(p))
            logged.append((p, status, message))
        self._log(logged)
        self.pg.commit()
        return out

    def _deleted_fs(self, p: _Plan) -> Any:
        if p.action == RepairAction.DELETE and p.drift.firestore is not None:
            return to_json(canon(p.drift.firestore.fields))
        return None

    def _reread_postgres(self, batch: list[_Plan]) -> dict[Key, dict[str, Any]]:
        out: dict[Key, dict[str, Any]] = {}
        pg_source.begin_snapshot(self.pg)
        try:
            reader = pg_source.PostgresReader(self.pg, self.schema, itersize=self.itersize)
            for doc in {id(p.drift.doc): p.drift.doc for p in batch}.values():
                mapper = PostgresMapper(doc, self.rules.compare)
                wanted = {p.drift.key for p in batch if p.drift.doc is doc}
                scope = Scope(ids=tuple(sorted({k[0] for k in wanted})))
                for key, raw in reader.stream(doc, scope):
                    if key in wanted:
                        out[key] = mapper.record(*raw)
        finally:
            self.pg.rollback()
        return out

    # ---- toward Postgres: the Firestore truth re-read in one call, each record in its own transaction

    def _to_postgres(self, batch: list[_Plan]) -> dict[str, Repair]:
        # a Postgres orphan whose key is no document ID has no Firestore document to re-read (see FirestoreWriter.read)
        now = self.fs.read([p.drift.finding.key for p in batch if key_problem(p.drift.key) is None])
        out = {}
        for p in batch:
            seen, current = p.drift.firestore, now.get(p.drift.finding.key)  # not asked for: no document
            if (seen is None) != (current is None) or (seen and current and seen.update_time != current.update_time):
                out[p.drift.finding.key] = _changed(p, "firestore (the source of truth) changed since it was read")
            else:
                out[p.drift.finding.key] = self._write_record(p)
        return out

    def _write_record(self, p: _Plan) -> Repair:
        doc = p.drift.doc
        deleted = None
        try:
            pg_source.begin_serializable(self.pg)
            reader = pg_source.PostgresReader(self.pg, self.schema, server_side=False)
            mapper = PostgresMapper(doc, self.rules.compare)
            current = None
            for key, raw in reader.stream(doc, Scope(ids=(p.drift.key[0],))):
                if key == p.drift.key:
                    current = mapper.record(*raw)
            if current != p.drift.postgres:
                self.pg.rollback()
                return _changed(p, "postgres changed since it was read")
            if p.action == RepairAction.DELETE:
                deleted = {w.table: pg_source.copy_rows(self.pg, w.table, w.key) for w in p.pg}
            for w in p.pg:
                if w.op == "upsert":
                    pg_source.upsert_row(self.pg, w.table, w.key, w.values, self.schema.get(w.table, {}))
                else:
                    pg_source.delete_rows(self.pg, w.table, w.key)
            self._log([(p, "applied", "")])
            self.pg.commit()
        except psycopg.errors.SerializationFailure:
            self.pg.rollback()
            return _changed(p, "postgres changed while the repair ran (serialization failure)")
        except (psycopg.Error, RuntimeFailure) as exc:
            self.pg.rollback()
            message = " ".join(str(exc).split())
            self._log([(p, "failed", message)])
            self.pg.commit()
            return _done(p, "failed", message, None)
        return _done(p, "applied", "", deleted)

    # ---- the audit trail

    def _log(self, entries: list[tuple[_Plan, str, str]]) -> None:
        if not entries:
            return
        now = dt.datetime.now(dt.timezone.utc)
        rows = []
        for p, status, message in entries:
            statuses = {self.rules.source_of_truth: "source", self.target: status}
            before = p.drift.firestore_canonical if self.target == "firestore" else p.drift.postgres
            after = None if p.action == RepairAction.DELETE else (
                p.drift.postgres if self.target == "firestore" else p.drift.firestore_canonical)
            snapshot = pg_source.jsonb_safe({"before": to_json(before), "after": to_json(after), "writes": list(p.shown)})
            rows.append((self.run_id, self.rules.entity, p.drift.finding.key, p.action.value,
                         statuses["postgres"], statuses["firestore"], json.dumps(snapshot, default=str),
                         message or None, now if status == "applied" else None))
        try:
            with self.pg.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {LOG_TABLE} (run_id, entity_type, entity_id, operation, postgres_status, "
                    "firestore_status, data_snapshot, error_message, completed_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)", rows)
        except psycopg.Error as exc:
            raise RuntimeFailure(f"postgres: cannot record {len(rows)} repairs in {LOG_TABLE} "
                                 f"({', '.join(r[2] for r in rows[:3])}...): {' '.join(str(exc).split())}") from None


def ensure_log(conn: psycopg.Connection) -> None:
    conn.rollback()
    try:
        # CREATE ... IF NOT EXISTS needs CREATE on the schema even when the table exists: a role that may only
        # insert into an existing audit table must not be asked for it
        if conn.execute("SELECT to_regclass(%s) IS NULL", [LOG_TABLE]).fetchone()[0]:
            conn.execute(LOG_DDL)
        conn.commit()
    except psycopg.Error as exc:
        conn.rollback()
        raise RuntimeFailure(f"postgres: cannot create the repair audit table {LOG_TABLE}: "
                             f"{' '.join(str(exc).split())}") from None


def _changed(p: _Plan, why: str) -> Repair:
    return Repair(p.action, RepairStatus.SKIPPED, f"{CHANGED_DURING_RUN}: {why}", p.shown)


def _done(p: _Plan, status: str, message: str, deleted: Any) -> Repair:
    return Repair(p.action, RepairStatus(status), message, p.shown, deleted)
