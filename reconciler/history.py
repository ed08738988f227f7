"""Run history in Postgres: every scheduled or run-once run, its entities and its findings.

Three tables of our own (created by `reconcile init-db`, or on the first run that records one):
reconciler_runs (one row a run), reconciler_run_entities (one row an entity of a run: counts, duration,
outcome) and reconciler_findings (one row a drifted record: key, kind, differing field paths; values are
not kept). They live in `history.dsn`, by default the audited database (`postgres.dsn`).

Readers never create anything: with no tables yet, there is simply no history. Only runs over every
record of an entity are recorded (never --ids or --limit), so trends and streaks compare like with like.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Iterable

import psycopg

from reconciler.config import Settings
from reconciler.errors import RuntimeFailure, one_line
from reconciler.result import Counts, EntityResult, FieldDiff, Finding, FindingKind, RunResult
from reconciler.sources import postgres as pg_source
from reconciler.sources.postgres import jsonb_safe, text_safe

RUNS, ENTITIES, FINDINGS = "reconciler_runs", "reconciler_run_entities", "reconciler_findings"
COUNT_COLUMNS = ("postgres", "firestore", "matched", "mismatched", "missing_in_firestore", "missing_in_postgres")

DDL = f"""
CREATE TABLE IF NOT EXISTS {RUNS} (
  run_id      TEXT PRIMARY KEY,
  job         TEXT NOT NULL,                 -- run-once | the schedule job's name
  mode        TEXT NOT NULL,                 -- audit | repair
  started_at  TIMESTAMPTZ NOT NULL,
  finished_at TIMESTAMPTZ NOT NULL,
  duration_s  DOUBLE PRECISION NOT NULL,
  outcome     TEXT NOT NULL                  -- clean | drift | failed
);
CREATE INDEX IF NOT EXISTS {RUNS}_started ON {RUNS} (started_at);
CREATE TABLE IF NOT EXISTS {ENTITIES} (
  run_id      TEXT NOT NULL REFERENCES {RUNS} ON DELETE CASCADE,
  entity      TEXT NOT NULL,
  source_of_truth TEXT NOT NULL,
  {", ".join(f"{c} BIGINT NOT NULL" for c in COUNT_COLUMNS)},
  drifted     BIGINT NOT NULL,
  field_counts JSONB NOT NULL,               -- drifted field path pattern -> records
  findings_truncated BOOLEAN NOT NULL,       -- more drifted records than reconciler_findings holds
  duration_s  DOUBLE PRECISION NOT NULL,
  outcome     TEXT NOT NULL,                 -- clean | drift | failed
  error       TEXT,
  PRIMARY KEY (run_id, entity)
);
CREATE INDEX IF NOT EXISTS {ENTITIES}_entity ON {ENTITIES} (entity);
CREATE TABLE IF NOT EXISTS {FINDINGS} (
  run_id      TEXT NOT NULL,
  entity      TEXT NOT NULL,
  key         TEXT NOT NULL,                 -- the Firestore document path
  kind        TEXT NOT NULL,                 -- mismatch | missing_in_firestore | missing_in_postgres
  fields      TEXT[] NOT NULL,               -- differing field paths
  PRIMARY KEY (run_id, entity, key),
  FOREIGN KEY (run_id, entity) REFERENCES {ENTITIES} ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS {FINDINGS}_key ON {FINDINGS} (entity, key);
"""


def outcome(failed: bool, drift: bool) -> str:
    return "failed" if failed else ("drift" if drift else "clean")


@dataclass(frozen=True)
class EntityRun:
    """One entity in one recorded run: a point of its trend."""

    run_id: str
    job: str
    started_at: dt.datetime
    counts: Counts
    duration_s: float
    outcome: str
    error: str | None

    @property
    def drifted(self) -> int:
        return self.counts.drifted


@dataclass(frozen=True)
class FirstSeen:
    """When a key was seen drifting. `since`: the first run of the current unbroken streak of runs in which
    it drifted (None: it did not drift in the latest run); `ever`: the first recorded run it drifted in."""

    since: dt.datetime | None
    streak_runs: int
    ever: dt.datetime | None
    last: dt.datetime | None  # the latest run it drifted in
    runs: int  # recorded runs of the entity


class History:
    """The history tables on one connection. Use as a context manager; `open(settings)` connects."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    @classmethod
    def open(cls, settings: Settings) -> History:
        return cls(pg_source.connect(settings.history_dsn, application_name="reconciler-history",
                                     **settings.postgres.timeouts()))

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.conn.close()

    # ---- schema

    def exists(self) -> bool:
        self.conn.rollback()
        found = self._one(f"SELECT to_regclass('{FINDINGS}') IS NOT NULL")[0]
        self.conn.rollback()
        return bool(found)

    def ensure_schema(self) -> None:
        """Create the tables unless they exist (checked first, so that a role without CREATE can still record)."""
        if self.exists():
            return
        try:
            # two jobs starting at once would race on CREATE TABLE IF NOT EXISTS: one creates, one waits
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('reconciler_history_schema'))")
            self.conn.execute(DDL)
            self.conn.commit()
        except psycopg.Error as exc:
            self.conn.rollback()
            raise RuntimeFailure(f"postgres: cannot create the history tables ({RUNS}, ...): {one_line(exc)}") \
                from None

    # ---- writing

    def record(self, result: RunResult, job: str) -> None:
        """Record a run and everything it found, in one transaction."""
        self.ensure_schema()
        r = result
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.execute(f"INSERT INTO {RUNS} (run_id, job, mode, started_at, finished_at, duration_s, outcome) "
                            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                            (r.run_id, job, r.mode, r.started_at, r.finished_at,
                             (r.finished_at - r.started_at).total_seconds(), outcome(r.failed, r.has_drift)))
                cur.executemany(
                    f"INSERT INTO {ENTITIES} (run_id, entity, source_of_truth, {', '.join(COUNT_COLUMNS)}, drifted, "
                    "field_counts, findings_truncated, duration_s, outcome, error) VALUES "
                    f"({', '.join(['%s'] * (len(COUNT_COLUMNS) + 9))})",
                    [(r.run_id, e.entity, e.source_of_truth, *(getattr(e.counts, c) for c in COUNT_COLUMNS),
                      e.counts.drifted, json.dumps(jsonb_safe(e.field_counts)), e.findings_truncated, e.duration_s,
                      outcome(e.failed, e.has_drift), e.error and text_safe(e.error)) for e in r.entities])
                # a Firestore-only document's ID (or a map key in a field path) may hold NUL: recorded escaped
                cur.executemany(
                    f"INSERT INTO {FINDINGS} (run_id, entity, key, kind, fields) VALUES (%s, %s, %s, %s, %s)",
                    [(r.run_id, e.entity, text_safe(f.key), f.kind.value,
                      list(dict.fromkeys(text_safe(d.path) for d in f.fields)))
                     for e in r.entities for f in e.findings])
        except psycopg.Error as exc:
            raise RuntimeFailure(f"postgres: cannot record run {r.run_id} in the history: {one_line(exc)}") from None

    # ---- reading

    def trend(self, entity: str, limit: int = 30, before: dt.datetime | None = None) -> list[EntityRun]:
        """The entity's last `limit` recorded runs (started before `before`), oldest first."""
        if not self.exists():
            return []
        rows = self._all(
            f"SELECT r.run_id, r.job, r.started_at, {', '.join('e.' + c for c in COUNT_COLUMNS)}, e.duration_s, "
            f"e.outcome, e.error FROM {ENTITIES} e JOIN {RUNS} r USING (run_id) "
            "WHERE e.entity = %s AND r.started_at < %s ORDER BY r.started_at DESC LIMIT %s",
            (entity, before or _FAR_FUTURE, limit))
        n = len(COUNT_COLUMNS)
        return [EntityRun(run_id=row[0], job=row[1], started_at=row[2], counts=Counts(*row[3:3 + n]),
                          duration_s=row[3 + n], outcome=row[4 + n], error=row[5 + n]) for row in reversed(rows)]

    def last_started(self, entity: str) -> dt.datetime | None:
        """When the entity's latest recorded run started (None: never recorded)."""
        if not self.exists():
            return None
        return self._one(f"SELECT max(r.started_at) FROM {ENTITIES} e JOIN {RUNS} r USING (run_id) "
                         "WHERE e.entity = %s", (entity,))[0]

    def last_result(self, entities: Iterable[str], before: dt.datetime | None = None) -> RunResult | None:
        """The previous result of these entities, rebuilt: per entity its latest recorded run (started before
        `before`) with counts, field counts and findings (key, kind and field paths; the values are not kept,
        so FieldDiff.postgres/firestore are None). run_id, mode and times are those of the newest of them.
        None when none of the entities has a recorded run."""
        if not self.exists():
            return None
        results, runs = [], []
        for entity in dict.fromkeys(entities):
            row = self._one(
                f"SELECT r.run_id, r.mode, r.started_at, r.finished_at, e.source_of_truth, "
                f"{', '.join('e.' + c for c in COUNT_COLUMNS)}, e.field_counts, e.findings_truncated, e.duration_s, "
                f"e.error FROM {ENTITIES} e JOIN {RUNS} r USING (run_id) WHERE e.entity = %s AND r.started_at < %s "
                "ORDER BY r.started_at DESC LIMIT 1", (entity, before or _FAR_FUTURE))
            if row is None:
                continue
            n = len(COUNT_COLUMNS)
            findings = tuple(
                Finding(key, FindingKind(kind), tuple(FieldDiff(p, None, None, p) for p in fields))
                for key, kind, fields in self._all(f"SELECT key, kind, fields FROM {FINDINGS} WHERE run_id = %s AND "
                                                   "entity = %s ORDER BY key COLLATE \"C\"", (row[0], entity)))
            runs.append(row[:4])
            results.append(EntityResult(entity=entity, source_of_truth=row[4], counts=Counts(*row[5:5 + n]),
                                        findings=findings, findings_truncated=row[6 + n], field_counts=row[5 + n],
                                        duration_s=row[7 + n], error=row[8 + n]))
        if not results:
            return None
        run_id, mode, _, _ = max(runs, key=lambda r: r[2])
        return RunResult(run_id=run_id, mode=mode, started_at=min(r[2] for r in runs),
                         finished_at=max(r[3] for r in runs), entities=tuple(results))

    def first_seen(self, entity: str, key: str) -> FirstSeen:
        """Walk the entity's runs from the latest back: the streak holds while the key drifted in each run.
        A run that failed for this entity says nothing, nor does one whose findings were truncated and do
        not list the key (it may have drifted beyond the cut): neither breaks the streak."""
        if not self.exists():
            return FirstSeen(None, 0, None, None, 0)
        rows = self._all(
            f"SELECT r.started_at, e.error IS NOT NULL, e.findings_truncated, f.key IS NOT NULL "
            f"FROM {ENTITIES} e JOIN {RUNS} r USING (run_id) "
            f"LEFT JOIN {FINDINGS} f ON f.run_id = e.run_id AND f.entity = e.entity AND f.key = %s "
            "WHERE e.entity = %s ORDER BY r.started_at DESC", (text_safe(key), entity))
        drifted_at = [started for started, _, _, drifted in rows if drifted]
        since, streak, broken = None, 0, False
        for started, failed, truncated, drifted in rows:
            if drifted and not broken:
                since, streak = started, streak + 1
            elif not drifted and not failed and not truncated:
                broken = True
        return FirstSeen(since=since, streak_runs=streak, ever=min(drifted_at, default=None),
                         last=max(drifted_at, default=None), runs=len(rows))

    # ---- plumbing

    def _all(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(query, params).fetchall()
        except psycopg.Error as exc:
            raise RuntimeFailure(f"postgres: cannot read the history: {one_line(exc)}") from None
        finally:
            self.conn.rollback()

    def _one(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self._all(query, params)
        return rows[0] if rows else None


_FAR_FUTURE = dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc)


def last_result(settings: Settings, entities: Iterable[str], before: dt.datetime | None = None) -> RunResult | None:
    """History.last_result on a connection of its own (None also when history is disabled)."""
    if not settings.history.enabled:
        return None
    with History.open(settings) as h:
        return h.last_result(entities, before)


def first_seen(settings: Settings, entity: str, key: str) -> FirstSeen | None:
    """History.first_seen on a connection of its own (None when history is disabled)."""
    if not settings.history.enabled:
        return None
    with History.open(settings) as h:
        return h.first_seen(entity, key)
