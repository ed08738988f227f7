"""Repair: drifted records -> a plan of writes to the side that is not the source of truth -> checked, applied.

What keeps it safe, in the order it happens:
- A dry run is the default: the plan lists the exact writes and nothing is written.
- Blast radius: an entity whose drifted share of records exceeds `repair.max_drift_ratio` is refused
  (a wrong project ID reads as an empty collection: everything "missing"), unless forced; at most
  `max_repairs` records per entity are repaired, the rest are skipped.
- Orphans (records only the written side has) are deleted only with `delete_orphans`; the report keeps a
  full copy of each deleted record.
- Preconditions: just before writing, the source of truth is re-read and must still equal what the diff saw,
  under the diff's own equality (so NaN equals NaN, and a tolerance means the same as in the audit). The
  written side must still be at the version the diff saw: Firestore writes carry the document's update time
  (a create requires the document not to exist); Postgres writes run in a SERIALIZABLE transaction that first
  re-reads the record and compares it the same way, so a concurrent commit to anything read aborts ours. A
  record that changed is skipped as `changed_during_run`, never overwritten.
- Only mapped fields are written, and only the truth's values: Firestore updates name field paths (unmapped
  fields, also inside the elements of rewritten arrays, are kept; so is every part of a value written whole
  that already equals the truth, in Firestore's own type); Postgres writes only mapped columns, one
  transaction per record. A value Firestore cannot hold (an integer beyond int64, an empty map key...) fails
  its record with the field path and why; the other records are repaired.
- The audit trail (`reconciler_repairs`) is written ahead. Toward Firestore, a batch's rows are committed as
  `pending` (with the update time each write requires) before Firestore sees the batch, then set to what
  happened. A run holds a session advisory lock while it applies; at the start of an apply, pending rows of
  runs whose lock is free (the process or its connection died between the write and its outcome) are settled
  by reading the documents back and reported, once no commit of theirs can still land (FirestoreWriter's
  window, and a margin); this run's own rows after a reconnect are settled at once. Toward Postgres the row
  is written in the same transaction as the write, which is atomic: it is never pending.
- A repair started over after a lost Postgres connection (the engine runs the step again) continues the
  run: what the earlier attempt wrote, as its trail rows say, counts against `max_repairs`, is not written
  again, and is in the report (`RepairSummary.earlier`) and the summary's counts.
- An ambiguous Firestore commit (a deadline, a lost connection) is settled by reading the documents back,
  never by a blind retry (see FirestoreWriter).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import psycopg
from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath

from reconciler import stop
from reconciler.config import Settings
from reconciler.diff import node_differs, same
from reconciler.errors import MissingPrivileges, RuntimeFailure
from reconciler.keys import Key, Scope
from reconciler.mapping import (Branch, KeyedMap, KeyedSet, Leaf, Node, PostgresMapper, Unholdable, canon, project,
                                set_sort_key, shape_of, to_firestore, to_postgres)
from reconciler.result import (Counts, Finding, FindingKind, Repair, RepairAction, RepairStatus, RepairSummary,
                               Resolved)
from reconciler.rules.model import CompareOptions, DocumentSpec, EntityRules, Reference
from reconciler.sources import Sides
from reconciler.sources import postgres as pg_source
from reconciler.sources.firestore import (WRITE_WINDOW_S, FirestoreWriter, FsDoc, FsWrite, field_at, key_problem,
                                          name_problem, stamp, write_problem)
from reconciler.values import identical, to_json

log = logging.getLogger(__name__)
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
    repairs: dict[str, Repair] = {}
    resolved: tuple[Resolved, ...] = ()
    earlier: tuple[Resolved, ...] = ()
    before: dict[str, Resolved] = {}  # records this run already wrote (or failed), before a lost connection
    if not options.apply:
        plans = [_plan(rules, d, target, options, sides.schema) for d in drifts[:limit]]
    else:
        writer = _Applier(rules, sides, settings, run_id)
        try:
            resolved = writer.resolve_dead()
            earlier = writer.earlier()
            before = {x.key: x for x in earlier if x.status in _COUNTED}
            repairs = {d.finding.key: _again(before[d.finding.key]) for d in drifts if d.finding.key in before}
            plans = [_plan(rules, d, target, options, sides.schema)
                     for d in [d for d in drifts if d.finding.key not in before][:max(0, limit - len(before))]]
            for batch in _batches(_apply_order(p for p in plans if p.writes or p.impossible),
                                  settings.repair.batch_size):
                if stop.requested():  # between batches: every record is applied whole (and logged) or not at all
                    break
                repairs.update(writer.apply(batch))
        finally:
            writer.close()
    for p in plans:
        if p.drift.finding.key not in repairs:
            status = RepairStatus.SKIPPED
            if options.apply and p.writes and not p.reason:
                reason = f"interrupted: stopped by {stop.signal_name()} before this record was written"
            else:
                reason = p.reason or ("dry run: not applied (use --apply)" if p.writes else "nothing to write")
            repairs[p.drift.finding.key] = Repair(p.action, status, reason, p.shown)
    statuses = [r.status for r in repairs.values()]
    done, failed = statuses.count(RepairStatus.APPLIED), statuses.count(RepairStatus.FAILED)
    others = Repair(RepairAction.SKIP, RepairStatus.SKIPPED, f"not repaired: over the limit of {limit} repairs "
                                                             "per entity (--max-repairs, repair.max_repairs)")
    # what the earlier attempt did counts once: its records that are findings again carry its outcome (above)
    done_before = sum(x.status == "applied" for x in before.values())
    failed_before = sum(x.status != "applied" and k not in repairs for k, x in before.items())
    return Outcome(repairs, others, RepairSummary(
        target, options.apply, planned=sum(p.writes for p in plans) + len(before), done=done + done_before,
        failed=failed + failed_before, skipped=counts.drifted - done - failed, duration_s=time.monotonic() - started,
        resolved=resolved, earlier=earlier))


# The outcomes of an earlier attempt of this run that stand for its record: not written again in this run.
_COUNTED = ("applied", "failed", "unknown")


def _again(x: Resolved) -> Repair:
    """The repair of a record that is a finding again after this run's earlier attempt wrote (or failed) it."""
    if x.status == "applied":
        return Repair(x.action, RepairStatus.SKIPPED, "this run repaired it before its Postgres connection was lost "
                                                      "(see repair.earlier) and it differs again: not written twice")
    return Repair(x.action, RepairStatus.FAILED, f"{x.status} before this run's Postgres connection was lost (see "
                                                 f"repair.earlier), not tried again in this run: {x.reason}")


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

def _plan(rules: EntityRules, d: Drift, target: str, options: Options, schema: dict[str, dict[str, str]]) -> _Plan:
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
    return _plan_postgres(d, action, schema)


class _Unwritable(Exception):
    """No Firestore write can say what the truth says here (the message names the field path and why)."""


def _plan_firestore(rules: EntityRules, d: Drift, action: RepairAction) -> _Plan:
    problem = key_problem(d.key)  # a Postgres-only record whose key Firestore refuses: real drift, no repair
    if problem is not None:
        return _Plan(d, action, problem, impossible=True)
    shape = shape_of(d.doc)
    path = d.finding.key
    if action == RepairAction.DELETE:
        assert d.firestore is not None
        return _Plan(d, action, fs=FsWrite(path, "delete", {}, d.firestore.update_time))
    try:
        if action == RepairAction.CREATE:
            write = FsWrite(path, "create", overlay(shape, None, d.postgres or {}))
        else:
            assert d.firestore is not None
            updates: dict[str, Any] = {}
            field_updates(shape, d.postgres, d.firestore_canonical, d.firestore.fields, (), rules.compare, updates)
            if not updates:
                return _Plan(d, RepairAction.SKIP, "nothing to write: the difference is not in a writable field")
            write = FsWrite(path, "update", updates, d.firestore.update_time)
        problem = write_problem(write)
        if problem is not None:
            raise _Unwritable(problem)
    except _Unwritable as exc:  # the truth holds a value Firestore refuses: this record fails, the others go on
        return _Plan(d, action, f"firestore cannot hold this write: {exc}", impossible=True)
    return _Plan(d, action, fs=write)


def _field_path(*parts: str) -> str:
    for i, part in enumerate(parts):
        problem = name_problem(part, ".".join(parts[:i]))
        if problem is not None:
            raise _Unwritable(problem)
    return FieldPath(*parts).to_api_repr()


def field_updates(node: Node, truth: Any, other: Any, raw: Any, path: tuple[str, ...], compare: CompareOptions,
                  out: dict[str, Any]) -> None:
    """The Firestore field paths (and values) that make `raw` say what `truth` says, touching nothing else.

    Maps are descended into, so only differing mapped leaves are written; a value that has to be written
    whole (a leaf, an array compared as a set, a map element only one side has, a value of the wrong kind)
    keeps the unmapped fields of what it replaces and its parts that already equal the truth (see overlay()).
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
                out[_field_path(*path, k)] = DELETE
    elif not path:
        raise AssertionError("a document's root is always a map")
    elif truth is None:
        out[_field_path(*path)] = DELETE if compare.null_equals_absent else None
    else:
        out[_field_path(*path)] = overlay(node, raw, truth, other, compare)


def overlay(node: Node, raw: Any, truth: Any, other: Any = None, compare: CompareOptions | None = None) -> Any:
    """`truth` (canonical) written in Firestore's types over `raw` (what Firestore holds now; `other` is its
    canonical form), keeping every field of `raw` the rules do not map, also inside array elements matched by
    their set key, and every part of `raw` that already equals the truth under the diff's rules (`compare`;
    None for a create: nothing to keep) as it is, in Firestore's type: a Timestamp where the truth has the
    same instant as text, an integer 1 where the truth says 1.0. Only the truth's values are written elsewhere."""
    if compare is not None and raw is not None and not node_differs(node, truth, other, compare):
        return raw
    base = raw if isinstance(raw, dict) else {}
    seen = other if isinstance(other, dict) else {}
    if isinstance(node, Branch) and isinstance(truth, dict):
        out = dict(base)
        for name, child in node.children.items():
            if name in truth:
                out[name] = overlay(child, base.get(name), truth[name], seen.get(name), compare)
            else:
                out.pop(name, None)
        return out
    if isinstance(node, KeyedMap) and isinstance(truth, dict):
        return {k: overlay(node.element, base.get(k), v, seen.get(k), compare) for k, v in truth.items()}
    if isinstance(node, KeyedSet) and isinstance(truth, list):
        # elements Firestore has keep their place (the order means nothing, but is not ours to change);
        # elements it lacks are appended, elements the truth lacks are dropped
        wanted = {set_sort_key(t, node.key_fields): t for t in truth}
        absent = compare.null_equals_absent if compare is not None else True
        out = []
        for element in raw if isinstance(raw, list) else ():
            projected = project(node.element, element, absent)
            t = wanted.pop(set_sort_key(projected, node.key_fields), None)
            if t is not None:
                out.append(overlay(node.element, element, t, projected, compare))
        return out + [overlay(node.element, None, t) for t in wanted.values()]
    if isinstance(node, Leaf) and not node.geo and compare is not None:  # a free-form value (jsonb): part by part
        if isinstance(truth, dict) and isinstance(raw, dict) and isinstance(other, dict):
            return {k: overlay(node, raw[k], v, seen.get(k), compare) if k in raw else to_firestore(node, v)
                    for k, v in truth.items()}
        if isinstance(truth, list) and isinstance(raw, list) and isinstance(other, list) and \
                len(truth) == len(raw) == len(other):
            return [overlay(node, r, t, o, compare) for r, t, o in zip(raw, truth, other)]
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


def _rows(doc: DocumentSpec, key: Key, record: dict[str, Any] | None,
          schema: dict[str, dict[str, str]]) -> dict[str, dict[tuple[str, ...], dict]]:
    """The record's rows per table, indexed by their key columns' values (as text)."""
    if record is None:
        return {}
    tables = to_postgres(doc, key[-1], record, schema)
    if doc.parent:
        tables[doc.table][0][doc.parent] = key[0]
    keys = _key_columns(doc)
    return {t: {tuple(str(r.get(c)) for c in keys[t]): r for r in rows} for t, rows in tables.items()}


def _in_held_form(truth: Any, held: Any) -> Any:
    """The truth, with every part the written side already holds identically (an instant as its own ISO text, NaN)
    taken as the written side holds it: so what already equals the truth is not rewritten in another form."""
    if identical(truth, held):
        return held
    if isinstance(truth, dict) and isinstance(held, dict):
        return {k: _in_held_form(v, held.get(k)) for k, v in truth.items()}
    if isinstance(truth, list) and isinstance(held, list) and len(truth) == len(held):
        return [_in_held_form(t, h) for t, h in zip(truth, held)]
    return truth


def _plan_postgres(d: Drift, action: RepairAction, schema: dict[str, dict[str, str]]) -> _Plan:
    keys = _key_columns(d.doc)
    latest = [e for e in d.doc.embeds if e.kind == "latest" and e.order_by not in {c.name for c in e.columns}]
    if latest and action != RepairAction.DELETE:
        return _Plan(d, RepairAction.SKIP, f"cannot write {latest[0].table}: its order_by column is not mapped")
    try:
        truth = _rows(d.doc, d.key, _in_held_form(d.firestore_canonical, d.postgres), schema)
    except Unholdable as exc:  # the truth holds a value its column cannot: this record fails, the others go on
        return _Plan(d, action, f"postgres cannot hold this write: {exc}", impossible=True)
    other = _rows(d.doc, d.key, d.postgres, schema)
    writes: list[PgWrite] = []
    tables = tuple(dict.fromkeys((d.doc.table, *(e.table for e in d.doc.embeds))))  # two embeds may share one
    if action != RepairAction.DELETE:
        for table in tables:
            for k, row in truth.get(table, {}).items():
                held = other.get(table, {}).get(k)
                key = {c: row.get(c) for c in keys[table]}
                # only the columns that differ: the others keep what Postgres holds, in its own form
                values = {c: v for c, v in row.items()
                          if c not in key and (held is None or not identical(v, held.get(c)))}
                if held is None or values:
                    writes.append(PgWrite(table, "upsert", key, values))
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
  -- source | pending (written ahead) | applied | failed | skipped (changed_during_run) | settled from pending:
  -- not_applied (the write did not land) | unknown (the document changed since: overwritten, or never landed)
  postgres_status TEXT NOT NULL,
  firestore_status TEXT NOT NULL,
  data_snapshot   JSONB NOT NULL,         -- {{"before": ..., "after": ..., "writes": [...]}}
  error_message   TEXT,
  created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
  completed_at    TIMESTAMPTZ,
  firestore_precondition TEXT,            -- the update time the Firestore write required (RFC 3339); 'absent': a create
  resolved_by     TEXT                    -- the run that settled this row from pending, when another run left it
);
CREATE INDEX IF NOT EXISTS {LOG_TABLE}_entity ON {LOG_TABLE} (entity_type, entity_id);
CREATE INDEX IF NOT EXISTS {LOG_TABLE}_pending ON {LOG_TABLE} (entity_type, run_id) WHERE firestore_status = 'pending'
"""
# A table made before the trail was written ahead: migrated in place, nothing lost.
LOG_ADDED_COLUMNS = ("firestore_precondition", "resolved_by")
LOG_MIGRATION = f"""
ALTER TABLE {LOG_TABLE} ADD COLUMN IF NOT EXISTS firestore_precondition TEXT,
                        ADD COLUMN IF NOT EXISTS resolved_by TEXT;
CREATE INDEX IF NOT EXISTS {LOG_TABLE}_pending ON {LOG_TABLE} (entity_type, run_id) WHERE firestore_status = 'pending'
"""
ABSENT = "absent"  # the precondition of a create: the document does not exist
PENDING = "pending"
_TRAIL_INSERT = (f"INSERT INTO {LOG_TABLE} (run_id, entity_type, entity_id, operation, postgres_status, firestore_status, "
                 "data_snapshot, firestore_precondition, error_message, completed_at) "
                 "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s)")
# Another run's pending row is settled only when older than this: none of its commits can still land by then
# (FirestoreWriter sends none after its window; the margin covers a server finishing one at its deadline).
SETTLE_AFTER_S = WRITE_WINDOW_S + 60.0
LOCK_WAIT_S = 30.0  # how long an apply waits for its own lock (an earlier connection of the run may hold it)
# (run_id, entity) of every apply started in this process: only those can find trail rows of their own run
_STARTED: set[tuple[str, str]] = set()


WRITE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")  # re-read, create, update, remove rows
TRAIL_PRIVILEGES = ("SELECT", "UPDATE")  # toward Firestore the trail is written ahead, then settled


def check_privileges(rules: list[EntityRules], sides: Sides) -> None:
    """Before anything is written: the Postgres role may write every table repair writes (when Postgres is
    the written side) and record in the audit table (always; toward Firestore also read and update it), and
    the session can really write: a role whose session is read-only (default_transaction_read_only, a
    standby's DSN) has every privilege and still cannot. Raises naming every missing privilege, or the cause."""
    tables = {t: WRITE_PRIVILEGES for r in rules if r.written_side == "postgres" for t in r.tables()}
    ahead = any(r.written_side == "firestore" for r in rules)
    missing = pg_source.missing_privileges(sides.pg, tables, LOG_TABLE, ("INSERT", *TRAIL_PRIVILEGES) if ahead
                                           else ("INSERT",))
    user = sides.pg.info.user
    if missing:
        raise MissingPrivileges(f"postgres: role {user!r} may not repair ({', '.join(r.entity for r in rules)}): "
                                f"it lacks {'; '.join(missing)}. Nothing was written. See README, 'Least privilege'")
    _prove_write(sides.pg, user, settle=ahead)


def _prove_write(conn: psycopg.Connection, user: str, *, settle: bool) -> None:
    """Write a trail row (creating or migrating the table first when needed), settle it, and roll all of it
    back: DDL is transactional, so this leaves nothing behind, and fails here, before the audit, where a
    repair could not record what it writes."""
    conn.rollback()
    try:
        _prepare_log(conn)
        row = ["write-check", "", "", "update", "source", PENDING if settle else "applied", "{}", None, None, None]
        if settle:  # RETURNING and the UPDATE need SELECT on the table, which only a written-ahead trail needs
            written = conn.execute(_TRAIL_INSERT + " RETURNING id", row).fetchone()[0]
            conn.execute(f"UPDATE {LOG_TABLE} SET firestore_status = 'applied' WHERE id = %s", [written])
        else:
            conn.execute(_TRAIL_INSERT, row)
    except psycopg.Error as exc:
        why = " ".join(str(exc).split())
        if exc.sqlstate == "25006":  # read_only_sql_transaction
            why += (" (this session is read-only: default_transaction_read_only is on for the role or the database,"
                    " or the DSN names a standby; repair needs a session that can write, on the primary)")
        raise MissingPrivileges(f"postgres: role {user!r} cannot write the repair audit trail {LOG_TABLE}: {why}. "
                                "Nothing was written") from None
    finally:
        if not pg_source.lost(conn):
            conn.rollback()


def _lock_key(run_id: str) -> int:
    """The session advisory lock a run holds while it applies: while it is held, the run's pending rows are its own."""
    return int.from_bytes(hashlib.sha256(f"{LOG_TABLE}:{run_id}".encode()).digest()[:8], "big", signed=True)


class _Applier:
    def __init__(self, rules: EntityRules, sides: Sides, settings: Settings, run_id: str) -> None:
        self.rules, self.pg, self.schema, self.run_id = rules, sides.pg, sides.schema, run_id
        self.fs = FirestoreWriter(sides.fs)
        self.target = rules.written_side
        self.itersize = settings.postgres.itersize
        self.batch_size = settings.repair.batch_size
        self.shapes: dict[int, Branch] = {}
        ensure_log(self.pg)
        self._lock()
        self.again = (run_id, rules.entity) in _STARTED  # the repair started over: rows of this run may exist
        _STARTED.add((run_id, rules.entity))

    def _lock(self) -> None:
        """Take this run's lock, waiting for it a while: after a reconnect, the earlier connection's server process
        may still hold it (it has not noticed the connection is gone). Applying without it would make this run
        look dead to another, which would then settle this run's rows while its commits may still land."""
        try:
            self.pg.execute("SELECT set_config('lock_timeout', %s, true)", [f"{round(LOCK_WAIT_S * 1000)}ms"])
            self.pg.execute("SELECT pg_advisory_lock(%s)", [_lock_key(self.run_id)])
            self.pg.commit()
        except psycopg.errors.LockNotAvailable:
            self.pg.rollback()
            raise RuntimeFailure(
                f"postgres: {self.rules.entity}: cannot take this run's repair lock in {LOCK_WAIT_S:.0f} s: an earlier "
                f"connection of run {self.run_id} still holds it (its server process has not noticed that the "
                f"connection is gone). Nothing more was written; what the run wrote before is in {LOG_TABLE} "
                f"(run_id {self.run_id!r}), and the next --apply settles what it left pending") from None

    def close(self) -> None:
        if pg_source.lost(self.pg):
            return
        try:
            self.pg.rollback()
            self.pg.execute("SELECT pg_advisory_unlock(%s)", [_lock_key(self.run_id)])
            self.pg.commit()
        except psycopg.Error:
            pass  # the connection went: the lock went with it

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

    def _differs(self, doc: DocumentSpec, now: dict[str, Any] | None, seen: dict[str, Any] | None) -> bool:
        """The precondition's equality is the diff's: a record the diff would call equal has not changed."""
        shape = self.shapes.get(id(doc))
        if shape is None:
            shape = self.shapes[id(doc)] = shape_of(doc)
        return (now is None) != (seen is None) or not same(shape, now, seen, self.rules.compare)

    # ---- toward Firestore: the Postgres truth re-read in one snapshot, the trail written ahead, one batch

    def _to_firestore(self, batch: list[_Plan]) -> dict[str, Repair]:
        fresh = self._reread_postgres(batch)
        out: dict[str, Repair] = {}
        ready = []
        for p in batch:
            if self._differs(p.drift.doc, fresh.get(p.drift.key), p.drift.postgres):
                out[p.drift.finding.key] = _changed(p, "postgres (the source of truth) changed since it was read")
            else:
                ready.append(p)
        if not ready:
            return out
        since = time.monotonic()  # the write window opens before the rows are written (see SETTLE_AFTER_S)
        rows = self._trail_ahead(ready)  # committed before Firestore sees a write: whatever lands has its row
        outcomes = self.fs.commit([p.fs for p in ready], since)  # type: ignore[misc]
        settled = []
        for p, row, (status, message) in zip(ready, rows, outcomes):
            key = p.drift.finding.key
            if status == "changed":
                out[key] = _changed(p, f"firestore changed since it was read ({message})")
                settled.append((row, "skipped", out[key].reason))
            elif status == "unknown":  # the row stays pending: the next apply reads the document again
                out[key] = _done(p, "failed", f"{message}; its trail row stays {PENDING} until an apply settles it",
                                 None)
            else:
                out[key] = _done(p, status, message, self._deleted_fs(p))
                settled.append((row, status, message))
        self._settle(settled)
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
            if self._differs(doc, current, p.drift.postgres):
                self.pg.rollback()
                return _changed(p, "postgres changed since it was read")
            if p.action == RepairAction.DELETE:
                deleted = {w.table: pg_source.copy_rows(self.pg, w.table, w.key) for w in p.pg}
            for w in p.pg:
                if w.op == "upsert":
                    pg_source.upsert_row(self.pg, w.table, w.key, w.values, self.schema.get(w.table, {}))
                else:
                    pg_source.delete_rows(self.pg, w.table, w.key)
            self._log([(p, "applied", "")])  # in the write's own transaction: both commit, or neither
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

    def _row(self, p: _Plan, status: str) -> tuple[str, str, str, str, str, str]:
        """(entity_id, operation, postgres_status, firestore_status, data_snapshot as JSON, precondition)."""
        statuses = {self.rules.source_of_truth: "source", self.target: status}
        before = p.drift.firestore_canonical if self.target == "firestore" else p.drift.postgres
        after = None if p.action == RepairAction.DELETE else (
            p.drift.postgres if self.target == "firestore" else p.drift.firestore_canonical)
        snapshot = _trail_json({"before": to_json(before), "after": to_json(after), "writes": list(p.shown)})
        precondition = None
        if p.fs is not None:
            precondition = ABSENT if p.fs.op == "create" else stamp(p.fs.update_time)
        return (p.drift.finding.key, p.action.value, statuses["postgres"], statuses["firestore"], snapshot,
                precondition)

    def _log(self, entries: list[tuple[_Plan, str, str]]) -> None:
        """Rows of writes whose outcome is known as they are recorded (failed plans; writes toward Postgres)."""
        if not entries:
            return
        now = dt.datetime.now(dt.timezone.utc)
        rows = [(self.run_id, self.rules.entity, *self._row(p, status), message or None,
                 now if status == "applied" else None) for p, status, message in entries]
        self._trail_sql("record", [r[2] for r in rows], lambda cur: cur.executemany(_TRAIL_INSERT, rows))

    def _trail_ahead(self, plans: list[_Plan]) -> list[int]:
        """One `pending` row per write, sent in one pipeline (one round trip), committed; their ids, in order.
        (One INSERT of text arrays would cost more: psycopg escapes every quote of the snapshots for them.)"""
        rows = [(self.run_id, self.rules.entity, *self._row(p, PENDING), None, None) for p in plans]
        ids: list[int] = []

        def insert(cur: psycopg.Cursor[Any]) -> None:
            cur.executemany(_TRAIL_INSERT + " RETURNING id", rows, returning=True)
            while True:
                ids.append(cur.fetchone()[0])
                if not cur.nextset():
                    break

        self._trail_sql("record ahead", [r[2] for r in rows], insert)
        self.pg.commit()
        return ids

    def _settle(self, entries: list[tuple[int, str, str]], resolved_by: str | None = None) -> set[int]:
        """Pending rows -> what happened (one statement, committed); the ids of the rows that were still pending."""
        if not entries:
            return set()
        done: set[int] = set()

        def update(cur: psycopg.Cursor[Any]) -> None:
            cur.execute(f"UPDATE {LOG_TABLE} AS t SET firestore_status = u.status, error_message = u.message, "
                        "completed_at = CASE WHEN u.status = 'applied' THEN now() END, resolved_by = %s "
                        "FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS u(id, status, message) "
                        f"WHERE t.id = u.id AND t.firestore_status = '{PENDING}' RETURNING t.id",
                        [resolved_by, [e[0] for e in entries], [e[1] for e in entries],
                         [e[2] or None for e in entries]])
            done.update(r[0] for r in cur.fetchall())

        self._trail_sql("settle", [str(e[0]) for e in entries], update)
        self.pg.commit()
        return done

    def _trail_sql(self, what: str, keys: list[str], run: Any) -> None:
        try:
            with self.pg.cursor() as cur:
                run(cur)
        except psycopg.Error as exc:
            raise RuntimeFailure(f"postgres: cannot {what} {len(keys)} repairs in {LOG_TABLE} "
                                 f"({', '.join(keys[:3])}...): {' '.join(str(exc).split())}") from None

    def resolve_dead(self) -> tuple[Resolved, ...]:
        """Settle the pending rows of runs that are no longer applying (their lock is free) by reading each
        document back: still at the version the write required -> not_applied; holding exactly the write ->
        applied; changed in another way -> unknown (overwritten since, or never landed). Another run's row is
        settled only once none of its commits can land any more (SETTLE_AFTER_S); a younger one stays pending and
        is returned as such. This run's own rows (after a reconnect: its earlier connection and lock are gone) are
        settled at once: the commit calls that left them have returned. Returns the other runs' rows, each logged
        (this run's own are in earlier())."""
        if self.target != "firestore":
            return ()  # toward Postgres a trail row commits with its write: never pending
        runs = {r for (r,) in self.pg.execute(f"SELECT DISTINCT run_id FROM {LOG_TABLE} WHERE entity_type = %s "
                                              f"AND firestore_status = '{PENDING}'", [self.rules.entity])}
        others = runs - {self.run_id}
        dead = sorted((others - self._applying(others)) | (runs & {self.run_id}))
        rows = self.pg.execute(f"SELECT id, run_id, entity_id, operation, data_snapshot, firestore_precondition, "
                               "extract(epoch FROM now() - created_at)::float8 "
                               f"FROM {LOG_TABLE} WHERE entity_type = %s AND firestore_status = '{PENDING}' "
                               "AND run_id = ANY(%s) ORDER BY id", [self.rules.entity, dead]).fetchall() if dead else []
        self.pg.commit()
        out = [Resolved(r[1], r[2], RepairAction(r[3]), PENDING,
                        f"not settled yet: run {r[1]} stopped applying, but recorded this write {r[6]:.0f} s ago and a "
                        f"commit of it may still land until {SETTLE_AFTER_S:.0f} s after; a later --apply settles it")
               for r in rows if r[1] != self.run_id and r[6] < SETTLE_AFTER_S]
        for x in out:
            log.warning("%s: repair %s %s of run %s stays %s: %s", self.rules.entity, x.action.value, x.key, x.run_id,
                        PENDING, x.reason, extra={"entity": self.rules.entity, "key": x.key})
        rows = [r for r in rows if r[1] == self.run_id or r[6] >= SETTLE_AFTER_S]
        for chunk in (rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)):
            docs = self.fs.read([r[2] for r in chunk])
            verdicts = [(r, *_resolution(r[3], (r[4] or {}).get("writes") or [{}], r[5], docs[r[2]])) for r in chunk]
            settled = self._settle([(r[0], status, why) for r, status, why in verdicts], resolved_by=self.run_id)
            for (row_id, run, path, operation, *_), status, why in verdicts:
                if row_id not in settled:
                    continue  # settled meanwhile by another run starting
                log.warning("%s: repair %s %s of run %s was left %s: %s (%s)", self.rules.entity, operation, path, run,
                            PENDING, status, why, extra={"entity": self.rules.entity, "key": path})
                if run != self.run_id:
                    out.append(Resolved(run, path, RepairAction(operation), status, why))
        return tuple(out)

    def _applying(self, runs: set[str]) -> set[str]:
        """The runs that hold their lock, read from pg_locks: taking another run's lock to test it, even briefly,
        would make that run wait for its own."""
        if not runs:
            return set()
        keys = {_lock_key(r): r for r in runs}
        held = self.pg.execute("SELECT classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory' "
                               "AND objsubid = 1 AND granted AND database = "
                               "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchall()
        self.pg.commit()
        return {keys[k] for k in (_signed(high, low) for high, low in held) if k in keys}

    def earlier(self) -> tuple[Resolved, ...]:
        """This run's own trail rows of this entity from before this attempt (the repair step started over after
        a lost connection), oldest first, with their status (settled by resolve_dead when they were pending)."""
        if not self.again:
            return ()
        status = "firestore_status" if self.target == "firestore" else "postgres_status"
        rows = self.pg.execute(f"SELECT entity_id, operation, {status}, error_message FROM {LOG_TABLE} "
                               "WHERE run_id = %s AND entity_type = %s ORDER BY id",
                               [self.run_id, self.rules.entity]).fetchall()
        self.pg.commit()
        return tuple(Resolved(self.run_id, key, RepairAction(op), st, message or "") for key, op, st, message in rows)


def _signed(high: int, low: int) -> int:
    """A bigint advisory lock key from pg_locks, which shows it as two unsigned halves (classid, objid)."""
    key = high << 32 | low
    return key - (1 << 64) if key >> 63 else key


def _resolution(operation: str, writes: list[dict[str, Any]], precondition: str | None,
                doc: FsDoc | None) -> tuple[str, str]:
    """What became of a write left pending, from the document as it is now (see resolve_dead)."""
    if (doc is None) if precondition == ABSENT else (doc is not None and stamp(doc.update_time) == precondition):
        return "not_applied", "the write did not land: the document is still as it was when the write was planned"
    if _holds(writes[0], doc):
        return "applied", "the write landed: the document holds exactly what it wrote"
    return "unknown", "the document changed since and does not hold this write: overwritten since, or it never landed"


def _holds(write: dict[str, Any], doc: FsDoc | None) -> bool:
    """Whether the document holds the write as the trail recorded it (JSON: see _shown). Not firestore.holds: the
    write sent is gone with the run that sent it, and its JSON has lost Firestore's types (a Timestamp is ISO text,
    a GeoPoint a map), so the document is compared in that form, numbers by value (_same_json)."""
    if write.get("op") == "delete":
        return doc is None
    if doc is None:
        return False
    if write.get("op") == "create":
        return _same_json(_stored(doc.fields), write.get("document"))
    for path, value in (write.get("set") or {}).items():
        found, got = field_at(doc.fields, path)
        if not found or not _same_json(_stored(got), value):
            return False
    return not any(field_at(doc.fields, path)[0] for path in write.get("delete") or ())


def _trail_json(value: Any) -> str:
    """JSON jsonb takes (`value` is values.to_json's, which writes non-finite numbers as text): NUL as text too."""
    return json.dumps(pg_source.jsonb_safe(value), default=str, allow_nan=False)


def _stored(value: Any) -> Any:
    """A Firestore value in the form the trail keeps it in."""
    return json.loads(_trail_json(to_json(canon(value))))


def _same_json(a: Any, b: Any) -> bool:
    """Equal as the trail keeps values: two integers exactly; an integer and a float by value, as a double (jsonb
    prints a double such as 1e300 with every digit, which reads back as an integer); the rest identical."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same_json, a, b))
    if {type(a), type(b)} == {int, float}:
        try:
            return float(a) == float(b)
        except OverflowError:  # an integer beyond double range is no double
            return False
    return identical(a, b)


def _prepare_log(conn: psycopg.Connection) -> None:
    """Create the trail table, or migrate an older one in place, in the current transaction."""
    missing, present = conn.execute(
        "SELECT to_regclass(%s) IS NULL, (SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attname = ANY(%s) AND NOT attisdropped)", [LOG_TABLE, LOG_TABLE, list(LOG_ADDED_COLUMNS)]).fetchone()
    if missing:
        conn.execute(LOG_DDL)
    elif present < len(LOG_ADDED_COLUMNS):
        conn.execute(LOG_MIGRATION)


def ensure_log(conn: psycopg.Connection) -> None:
    conn.rollback()
    try:
        # CREATE ... IF NOT EXISTS needs CREATE on the schema even when the table exists: a role that may only
        # insert into an existing audit table must not be asked for it (so _prepare_log looks first)
        _prepare_log(conn)
        conn.commit()
    except psycopg.Error as exc:
        conn.rollback()
        raise RuntimeFailure(f"postgres: cannot create or migrate the repair audit table {LOG_TABLE} (an older "
                             f"table is migrated by its owner: `reconcile init-db`): "
                             f"{' '.join(str(exc).split())}") from None


def _changed(p: _Plan, why: str) -> Repair:
    return Repair(p.action, RepairStatus.SKIPPED, f"{CHANGED_DURING_RUN}: {why}", p.shown)


def _done(p: _Plan, status: str, message: str, deleted: Any) -> Repair:
    return Repair(p.action, RepairStatus(status), message, p.shown, deleted)
