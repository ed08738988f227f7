"""One function that runs an audit and returns a RunResult; the CLI (and later the scheduler) wrap it.

Per document kind of an entity (the root collection, then each subcollection): both sides stream in
key order on their own threads (reading and mapping into canonical records, with bounded buffers), the
main thread merge-joins them and diffs what both sides have.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

import psycopg

from reconciler import backoff, checkpoint, settle, stop
from reconciler.config import Settings
from reconciler.errors import ReconcilerError, RulesError, RuntimeFailure, UsageError, one_line
from reconciler.keys import Key, Scope, id_sort_key, merge_join, sort_key
from reconciler.logs import bind_run
from reconciler.mapping import FirestoreMapper, PostgresMapper, shape_of
from reconciler.repair import Drift, Options, check_privileges, repair_entity
from reconciler.result import Counts, EntityResult, Finding, FindingKind, RunResult
from reconciler.rules import EntityRules, load_entity
from reconciler.rules.model import DocumentSpec
from reconciler.rules.scaffold import new_rules
from reconciler.rules.schema_check import check_against_schema
from reconciler.sources import Sides
from reconciler.sources import firestore as fs_source
from reconciler.sources import postgres as pg_source

T = TypeVar("T")
log = logging.getLogger(__name__)
Progress = Callable[[str, str, int, int], None]  # (entity, collection, records so far, drifted so far)


def no_progress(entity: str, collection: str, records: int, drifted: int) -> None:
    pass


# ---------------------------------------------------------------- bounded read-ahead on a thread

class _Done:
    pass


def prefetch(items: Iterable[T], size: int = 2000, name: str = "prefetch", batch: int = 100) -> Iterator[T]:
    """Run `items` on a thread, at most about `size` ahead of the consumer; its errors re-raise here.
    Items cross between the threads in lists of `batch`: a hand-over per item (a lock, a condition and
    often a GIL switch each) cost more than mapping a record (measured with py-spy)."""
    buf: queue.Queue[Any] = queue.Queue(maxsize=max(1, size // batch))
    halt = threading.Event()

    def put(item: Any) -> bool:
        while not halt.is_set():
            try:
                buf.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        chunk: list[Any] = []
        try:
            n = 0
            for n, item in enumerate(items, 1):
                chunk.append(item)
                if len(chunk) >= batch:
                    if not put(chunk):
                        return
                    chunk = []
            if chunk and not put(chunk):
                return
            log.debug("%s: %d read", name, n)
            put(_Done)
        except BaseException as exc:  # handed to the consumer (after what came before it), which re-raises it
            if not chunk or put(chunk):
                put(exc)

    # the producer runs in a copy of this context: its log lines carry the run id (logs.bind_run)
    thread = threading.Thread(target=contextvars.copy_context().run, args=(produce,), name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = buf.get()
            if item is _Done:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item
    finally:
        halt.set()
        if thread is not threading.current_thread():  # the GC may finalize this generator on its own producer
            thread.join(timeout=5)


# ---------------------------------------------------------------- one entity

@dataclass
class Tally:
    max_findings: int
    max_drifts: int = 0  # drifted records kept whole for repair (0: an audit keeps none)
    counts: Counter[str] = field(default_factory=Counter)
    fields: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    drifts: list[Drift] = field(default_factory=list)
    pending: list[tuple[DocumentSpec, Key, Finding]] = field(default_factory=list)  # read again once settled

    def to_json(self) -> dict[str, Any]:
        """For a checkpoint (audits: every pending record is a listed finding)."""
        index = {id(f): i for i, f in enumerate(self.findings)}
        return {"counts": dict(self.counts), "fields": dict(self.fields),
                "findings": [checkpoint.finding_to_json(f) for f in self.findings],
                "pending": [[d.collection, list(k), index[id(f)]] for d, k, f in self.pending]}

    def restore(self, data: dict[str, Any], rules: EntityRules) -> None:
        self.counts, self.fields = Counter(data["counts"]), Counter(data["fields"])
        self.findings = [checkpoint.finding_from_json(f) for f in data["findings"]]
        docs = {d.collection: d for d in rules.documents}
        self.pending = [(docs[c], tuple(k), self.findings[i]) for c, k, i in data["pending"]]

    def settle(self, rereads: dict[tuple[str, Key], settle.Reread], rules: EntityRules) -> None:
        """Replace each pending finding by what the re-read found: settled (matched), in flight, or drift."""
        for doc, key, old in self.pending:
            r = rereads[(doc.collection, key)]
            prefix = "" if doc.parent is None else f"{doc.collection}/"
            self.counts[_count_key(old)] -= 1
            self.counts["postgres"] += (r.postgres is not None) - (old.kind != FindingKind.MISSING_IN_POSTGRES)
            self.counts["firestore"] += (r.firestore is not None) - (old.kind != FindingKind.MISSING_IN_FIRESTORE)
            for pattern in dict.fromkeys(f.pattern for f in old.fields):
                self.fields[prefix + pattern] -= 1
            new = None if r.in_flight else r.finding
            if r.in_flight:
                self.counts["in_flight"] += 1
            elif new is not None:
                self.counts[_count_key(new)] += 1
                for pattern in dict.fromkeys(f.pattern for f in new.fields):
                    self.fields[prefix + pattern] += 1
            elif r.postgres is not None:
                self.counts["matched"] += 1
            self.findings = [new if f is old else f for f in self.findings if f is not old or new is not None]
            self.drifts = [Drift(doc, key, new, r.postgres, r.firestore_doc, r.firestore) if d.finding is old else d
                           for d in self.drifts if d.finding is not old or new is not None]
        self.fields = Counter({k: n for k, n in self.fields.items() if n > 0})
        self.pending = []

    def add(self, finding: Finding | None, field_prefix: str = "") -> None:
        if finding is None:
            self.counts["matched"] += 1
            return
        self.counts[_count_key(finding)] += 1
        for pattern in dict.fromkeys(f.pattern for f in finding.fields):
            self.fields[field_prefix + pattern] += 1
        if len(self.findings) < self.max_findings:
            self.findings.append(finding)

    def field_counts(self) -> dict[str, int]:
        """Most drifted first, ties by name: the same order however the records were split into ranges."""
        return dict(sorted(self.fields.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def drifted(self) -> int:
        return self.counts["mismatched"] + self.counts["missing_in_firestore"] + self.counts["missing_in_postgres"]


def _count_key(finding: Finding) -> str:
    return finding.kind.value if finding.kind != FindingKind.MISMATCH else "mismatched"


def audit_entity(rules: EntityRules, sides: Sides, settings: Settings, scope: Scope,
                 progress: Progress = no_progress, repair: Options | None = None,
                 run_id: str = "", checkpoints: checkpoint.Store | None = None) -> EntityResult:
    """Audit one entity; with `repair`, then plan (and apply) the repair of what differs. With `checkpoints`
    (audits only), save progress every audit.checkpoint_every records and continue from what was saved."""
    started = time.monotonic()
    tally = Tally(settings.max_findings, repair.limit(settings) if repair else 0)
    saver = _Saver(checkpoints, rules, settings.checkpoint_every) if checkpoints and repair is None else None
    docs, after = list(rules.documents), None
    if saver is not None and (position := saver.store.load(rules.entity)) is not None:
        tally.restore(position.tally, rules)
        names = [d.collection for d in docs]
        docs = docs[names.index(position.collection):] if position.collection in names else []
        after = position.last_key
    if docs:
        instant = pg_source.begin_snapshot(sides.pg)
        try:
            pg_reader = pg_source.PostgresReader(sides.pg, sides.schema, itersize=settings.postgres.itersize)
            fs_reader = fs_source.FirestoreReader(sides.fs, page_size=settings.firestore.page_size,
                                                  timeout=settings.firestore.timeout_s, read_time=instant)
            for i, doc in enumerate(docs):
                _audit_documents(rules, doc, pg_reader, fs_reader, scope, tally, progress, saver,
                                 after if i == 0 else None)
        finally:
            pg_source.end_snapshot(sides.pg)
        tally.settle(settle.reread(rules, sides, settings, settle.keys_of((d, k) for d, k, _ in tally.pending),
                                   instant, fs_reader.lost), rules)
        if saver is not None:
            saver.store.save(rules.entity, None, None, tally.to_json())
    c = tally.counts
    counts = Counts(postgres=c["postgres"], firestore=c["firestore"], matched=c["matched"],
                    mismatched=c["mismatched"], missing_in_firestore=c["missing_in_firestore"],
                    missing_in_postgres=c["missing_in_postgres"], in_flight=c["in_flight"])
    findings, summary = tuple(tally.findings), None
    if repair is not None:
        outcome = repair_entity(rules, sides, settings, tally.drifts, counts, repair, run_id)
        findings = tuple(replace(f, repair=outcome.repairs.get(f.key, outcome.others)) for f in findings)
        summary = outcome.summary
    return EntityResult(entity=rules.entity, source_of_truth=rules.source_of_truth, counts=counts,
                        findings=findings, findings_truncated=tally.drifted > len(tally.findings),
                        field_counts=tally.field_counts(), duration_s=time.monotonic() - started,
                        repair=summary)


@dataclass
class _Saver:
    store: checkpoint.Store
    rules: EntityRules
    every: int


def _audit_documents(rules: EntityRules, doc: DocumentSpec, pg_reader: pg_source.PostgresReader,
                     fs_reader: fs_source.FirestoreReader, scope: Scope, tally: Tally, progress: Progress,
                     saver: _Saver | None = None, after: Key | None = None) -> None:
    """Sweep one document kind: each side read and mapped ahead on a thread of its own, then diff_streams.
    `after` (a checkpoint's last key): both sides start at its root ID, inclusive (that root's subdocuments
    after it are not done yet); diff_streams skips the few done keys still read. A root ID Firestore would
    refuse as a range bound (a Postgres-only key such as "a/b") cannot start a query: then both start at the
    beginning, and diff_streams skips the whole done part."""
    if after and fs_source.is_document_id(after[0]):
        scope = scope.from_id(after[0])
    pg_map = PostgresMapper(doc, rules.compare)
    fs_map = FirestoreMapper(doc, rules.compare)
    pg_records = ((k, pg_map.record(*raw)) for k, raw in pg_reader.stream(doc, scope))
    # the raw document rides along: repair keeps it (and its update time) for drifted records only
    fs_records = ((k, (fs_map.record(d.fields), d)) for k, d in fs_reader.stream(doc, scope, rules.top_collection))
    diff_streams(rules, doc, prefetch(pg_records, name=f"postgres {doc.collection}"),
                 prefetch(fs_records, name=f"firestore {doc.collection}"), tally, progress, saver, after)


def diff_streams(rules: EntityRules, doc: DocumentSpec, pg_records: Iterable[tuple[Key, Any]],
                 fs_records: Iterable[tuple[Key, tuple[Any, Any]]], tally: Tally,
                 progress: Progress = no_progress, saver: _Saver | None = None, after: Key | None = None) -> None:
    """The diff core: merge-join two key-ordered streams of canonical records (Firestore's paired with its raw
    document) and count, diff and keep what differs (and what to re-read once settled). `after`: a checkpoint's
    last key; it and every key before it were counted. `./run bench core` times exactly this."""
    done_up_to = sort_key(after) if after else None
    shape = shape_of(doc)
    reread_at_most = max(tally.max_findings, tally.max_drifts)
    n = 0
    field_prefix = "" if doc.parent is None else f"{doc.collection}/"  # "<subcollection>/<field.path>" in per-field counts
    for key, pg, fs_pair in merge_join(pg_records, fs_records, entity=rules.entity):
        if done_up_to is not None and sort_key(key) <= done_up_to:
            continue
        n += 1
        fs, fs_doc = fs_pair if fs_pair is not None else (None, None)
        tally.counts["postgres"] += pg is not None
        tally.counts["firestore"] += fs is not None
        finding = settle.finding_for(rules, doc, shape, key, pg, fs)
        tally.add(finding, field_prefix)
        if finding is not None and len(tally.drifts) < tally.max_drifts:
            tally.drifts.append(Drift(doc, key, finding, pg, fs_doc, fs))
        if finding is not None and len(tally.pending) < reread_at_most:
            tally.pending.append((doc, key, finding))
        if saver is not None and saver.every and n % saver.every == 0:  # 0: a resume under a config without it
            saver.store.save(rules.entity, doc.collection, key, tally.to_json())
        if n % 1000 == 0:
            progress(rules.entity, doc.collection, n, tally.drifted)
            stop.check(f"while auditing {rules.entity}")
    progress(rules.entity, doc.collection, n, tally.drifted)


# ---------------------------------------------------------------- a run

def load_rules(settings: Settings, entities: Iterable[str]) -> list[EntityRules]:
    return [load_entity(settings.rules_dir, e) for e in dict.fromkeys(entities)]


def check_rules(loaded: list[EntityRules], schema: dict[str, dict[str, str]]) -> None:
    """Every table and column the rules name must exist; all problems are raised as one error."""
    problems = [p for r in loaded for p in check_against_schema(r, schema)]
    if problems:
        raise RulesError("the rules do not match the database:\n  " + "\n  ".join(str(p) for p in problems))


def connect_postgres(settings: Settings, application_name: str = "reconciler") -> Any:
    """Every Postgres connection of a run is made here, with the run's settings."""
    return pg_source.connect(settings.postgres.dsn, application_name=application_name, **settings.postgres.timeouts())


@contextlib.contextmanager
def postgres_step(doing: str, conn: Any = None) -> Iterator[None]:
    """A psycopg error escaping `doing` becomes a RuntimeFailure that says what was being done (and, given the
    connection, which of our timeouts cancelled it)."""
    try:
        yield
    except psycopg.Error as exc:
        if conn is not None:
            raise pg_source.failure(conn, exc, doing) from exc
        raise RuntimeFailure(f"postgres: {doing}: {one_line(exc)}") from exc


class Link:
    """The run's two sides. Each Postgres step runs through `run`, which replaces a lost connection (a restart,
    pg_terminate_backend, the network) and runs the step again from its start."""

    def __init__(self, settings: Settings, sides: Sides) -> None:
        self.settings, self.sides = settings, sides

    def run(self, doing: str, fn: Callable[[Sides], T]) -> T:
        """fn(sides), again on a new connection (after a backoff) when the connection was lost under it, at most
        postgres.reconnects times. A step that starts over gets a fresh snapshot and tally, so no record is skipped
        or counted twice (a repair re-audits first, so what it already wrote is matched)."""
        attempt = 0
        while True:
            try:
                if pg_source.lost(self.sides.pg):  # lost before this step, or a reconnect that failed
                    self.sides = replace(self.sides, pg=connect_postgres(self.settings))
                with postgres_step(doing, self.sides.pg):
                    return fn(self.sides)
            except Exception as exc:
                attempt += 1
                if not pg_source.lost(self.sides.pg) or attempt > self.settings.postgres.reconnects:
                    raise
                log.warning("postgres: the connection was lost while %s (%s); reconnecting (%d of %d)", doing,
                            one_line(exc), attempt, self.settings.postgres.reconnects)
            self.sides.pg.close()
            time.sleep(backoff.delay(attempt))

    def close(self) -> None:
        self.sides.pg.close()


def open_sides(settings: Settings, tables: Iterable[str]) -> Sides:
    """Both sides connected, and the live schema of `tables` read. Firestore's check takes a while: the Postgres
    connection made before it may be gone after it, and is then made again."""
    link = Link(settings, Sides(pg=connect_postgres(settings), fs=None))
    try:
        fs = fs_source.connect(settings.firestore.project)
        schema = link.run("reading the live schema", lambda s: _schema(s, tuple(tables)))
    except BaseException:
        link.close()
        raise
    return replace(link.sides, fs=fs, schema=schema)


def _schema(sides: Sides, tables: tuple[str, ...]) -> dict[str, dict[str, str]]:
    schema = pg_source.fetch_schema(sides.pg, tables)
    sides.pg.rollback()
    return schema


def limit_scope(rules: EntityRules, sides: Sides, limit: int) -> Scope:
    """The first `limit` root records: up to the smaller of both sides' limit-th ID, so neither side is cut short."""
    pg_reader = pg_source.PostgresReader(sides.pg, sides.schema)
    fs_reader = fs_source.FirestoreReader(sides.fs, page_size=limit)
    doc = rules.root
    pg_source.begin_snapshot(sides.pg)
    try:
        pg_keys = [k for k, _ in islice(pg_reader.stream(doc, Scope()), limit)]
    finally:
        pg_source.end_snapshot(sides.pg)
    fs_keys = [k for k, _ in islice(fs_reader.stream(doc, Scope(), rules.top_collection), limit)]
    lasts = [keys[-1][0] for keys in (pg_keys, fs_keys) if len(keys) == limit]
    return Scope(upper=min(lasts, key=id_sort_key)) if lasts else Scope()


class Planner(Protocol):
    """How a run narrows and splits its sweep (reconciler.parallel: --workers, --shard, --changed-since)."""

    def scope(self, rules: EntityRules, sides: Sides, scope: Scope) -> Scope: ...

    def audit(self, rules: EntityRules, sides: Sides, settings: Settings, scope: Scope, progress: Progress,
              repair: Options | None, run_id: str) -> EntityResult: ...


def run_audit(settings: Settings, entities: Iterable[str], *, ids: tuple[str, ...] | None = None,
              limit: int | None = None, progress: Progress = no_progress, repair: Options | None = None,
              resume: str | None = None, planner: Planner | None = None) -> RunResult:
    """Audit (and with `repair`, repair) each entity. A failure of one entity (its rules file, the tables or
    columns it names, or a runtime failure) is recorded in its result and the others go on; only when no
    entity's rules hold up does the rules error itself stop the run."""
    started = dt.datetime.now(dt.timezone.utc)
    run_id = resume or uuid.uuid4().hex[:12]
    bind_run(run_id)
    names = list(dict.fromkeys(entities))
    log.info("run started", extra={"mode": "repair" if repair else "audit", "entities": names})
    failures: dict[str, ReconcilerError] = {}
    rules_list = []
    for name in names:
        try:
            rules_list.append(load_entity(settings.rules_dir, name))
        except RulesError as exc:
            failures[name] = exc
    if not rules_list:
        raise _first_error(failures)
    if resume and (repair is not None or ids or limit or planner is not None):
        raise UsageError("--resume continues a full audit in one process: it does not combine with --repair, --ids, "
                         "--limit, --workers, --shard or --changed-since")
    store = None
    if resume:
        store = checkpoint.open_for_resume(settings.postgres, resume)
    elif settings.checkpoint_every and repair is None and not ids and not limit and planner is None:
        # a planner's ranges would share one checkpoint per entity (and --resume would have to redo its split)
        store = checkpoint.Store(settings.postgres, run_id)
    try:
        link = Link(settings, open_sides(settings, [t for r in rules_list for t in r.tables()]))
    except BaseException:
        if store is not None:
            store.close()
        raise
    try:
        for rules in rules_list:
            try:
                check_rules([rules], link.sides.schema)
            except RulesError as exc:
                failures[rules.entity] = exc
        if len(failures) == len(names):
            raise _first_error(failures)
        if repair is not None and repair.apply:  # before auditing: a refusal costs nothing and writes nothing
            checked = [r for r in rules_list if r.entity not in failures]
            link.run("checking the privileges repair needs", lambda s: check_privileges(checked, s))
        by_name = {r.entity: r for r in rules_list}
        results = []
        for name in names:
            rules = by_name.get(name)
            if stop.requested():  # between entities: the rest is left out, and what was done is still reported
                results.append(_stopped(name, rules, f"not audited: stopped by {stop.signal_name()} before it began"))
                continue
            if name in failures or rules is None:
                results.append(_failed(name, rules, f"rules: {failures[name]}"))
                continue
            try:
                def audit(s: Sides, rules: EntityRules = rules) -> EntityResult:
                    scope = Scope(ids=ids) if ids else (limit_scope(rules, s, limit) if limit else Scope())
                    if planner is None:
                        return audit_entity(rules, s, settings, scope, progress, repair, run_id, store)
                    return planner.audit(rules, s, settings, planner.scope(rules, s, scope), progress, repair, run_id)

                results.append(link.run(f"{'repairing' if repair else 'auditing'} {name}", audit))
                log.info("%s audited", rules.entity, extra={"entity": rules.entity, "drifted": results[-1].counts.drifted})
            except RuntimeFailure as exc:
                results.append(_failed(name, rules, str(exc)))
            except stop.Interrupted as exc:  # mid-sweep: its partial counts would mislead; the entities before stand
                results.append(_stopped(name, rules, f"not audited: {exc}"))
            except ReconcilerError:  # a usage error: the run's, not this entity's
                raise
            except Exception as exc:  # a bug or a library's surprise: this entity fails, the others, report, history go on
                log.error("%s: unexpected %s", name, type(exc).__name__, exc_info=True, extra={"entity": name})
                results.append(_failed(name, rules, f"unexpected {type(exc).__name__}: {one_line(exc)}"))
    finally:
        link.close()
        if store is not None:
            store.close()
    result = RunResult(run_id=run_id, mode="repair" if repair else "audit", started_at=started,
                       finished_at=dt.datetime.now(dt.timezone.utc), entities=tuple(results))
    log.info("run finished", extra={"drift": result.has_drift, "failed": result.failed})
    return result


def with_reconnects(settings: Settings, sides: Sides, fn: Callable[[Sides], T],
                    doing: str = "reading") -> tuple[T, Sides]:
    """Link.run for a caller that keeps its own Sides: the result and the sides it ended with."""
    link = Link(settings, sides)
    try:
        return link.run(doing, fn), link.sides
    except BaseException:
        if link.sides.pg is not sides.pg:  # the caller closes the one it gave; a replacement is ours to close
            link.close()
        raise


def _failed(name: str, rules: EntityRules | None, error: str) -> EntityResult:
    log.error("%s: failed: %s", name, error, extra={"entity": name})
    return EntityResult(entity=name, source_of_truth=rules.source_of_truth if rules else "unknown", counts=Counts(),
                        findings=(), findings_truncated=False, error=error)


def _stopped(name: str, rules: EntityRules | None, why: str) -> EntityResult:
    log.warning("%s: %s", name, why, extra={"entity": name})
    return EntityResult(entity=name, source_of_truth=rules.source_of_truth if rules else "unknown", counts=Counts(),
                        findings=(), findings_truncated=False, skipped=why)


def _first_error(failures: dict[str, ReconcilerError]) -> ReconcilerError:
    """Every entity failed before it was read: one entity's error as it is, several as one rules error."""
    if len(failures) == 1:
        return next(iter(failures.values()))
    return RulesError("no entity's rules hold up:\n  " + "\n  ".join(f"{n}: {e}" for n, e in failures.items()))


def live_schema(settings: Settings, tables: Iterable[str]) -> dict[str, dict[str, str]]:
    conn = connect_postgres(settings)
    try:
        with postgres_step("reading the live schema", conn):
            return pg_source.fetch_schema(conn, tuple(tables))
    finally:
        conn.close()


def scaffold_rules(settings: Settings, *, table: str, collection: str, key: str | None = None,
                   naming: str | None = None, entity: str | None = None, sample: int = 50) -> str:
    """A starting rules file for `table` <-> `collection`, from the live columns and the first `sample` documents."""
    columns = live_schema(settings, [table]).get(table)
    if not columns:
        raise UsageError(f"table {table!r} does not exist in the database's current schema")
    if key is not None and key not in columns:
        raise UsageError(f"--key {key!r} is not a column of {table} (columns: {', '.join(columns)})")
    reader = fs_source.FirestoreReader(fs_source.connect(settings.firestore.project), timeout=settings.firestore.timeout_s)
    documents = reader.sample(collection, sample)
    if not documents:
        raise UsageError(f"collection {collection!r} has no documents to learn the fields from")
    return new_rules(entity=entity or collection, table=table, collection=collection, columns=columns,
                     documents=documents, key=key, naming=naming)
