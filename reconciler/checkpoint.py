"""Checkpoints: how far an audit got, per run and entity, kept in Postgres (`reconciler_checkpoints`), so that
`--resume RUN_ID` continues a run that failed (a database gone for longer than the retries, a crash, a kill)
instead of starting over.

A checkpoint is the last key reconciled of the document kind being swept (earlier kinds of the entity are
done) and the tally so far (counts, per-field counts, the findings listed, the records to re-read once
settled). Resuming restores the tally and reads no kind that was done; both sides' queries of the kind being
swept start at the last key's root ID (a key range, inclusive: a subdocument's key is (parent ID, child ID),
and that parent's later children are not done yet), and the few keys read again up to and including the last
one are skipped, so no record is counted twice and none is skipped. The kinds after it are read whole.

Written every `audit.checkpoint_every` records on a connection of its own (the audit's is read-only), so
checkpoints need INSERT/UPDATE on the table (and CREATE on the schema for the first run): off by default.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import psycopg

from reconciler import backoff
from reconciler.config import PostgresSettings
from reconciler.errors import RuntimeFailure, UsageError
from reconciler.keys import Key
from reconciler.result import FieldDiff, Finding, FindingKind
from reconciler.sources import postgres as pg_source
from reconciler.values import map_strings, to_json

T = TypeVar("T")
TABLE = "reconciler_checkpoints"
DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
  run_id      TEXT NOT NULL,
  entity      TEXT NOT NULL,
  collection  TEXT,                 -- the document kind being swept (NULL: the entity is done)
  last_key    TEXT[],               -- the last key of it reconciled (NULL: none yet)
  tally       JSONB NOT NULL,       -- counts, field counts, findings, keys to re-read
  saved_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (run_id, entity)
)
"""


@dataclass(frozen=True)
class Position:
    collection: str | None  # None: the entity was done
    last_key: Key | None
    tally: dict[str, Any]


# Postgres text and jsonb cannot hold NUL, and a Firestore ID may: every string of a checkpoint is escaped
# reversibly (a resumed run looks its keys up again, so jsonb_safe's one-way \u0000 would not do).
_ESCAPE = re.compile(r"\\([\\0])")


def _escaped(value: Any) -> Any:
    return map_strings(value, lambda s: s.replace("\\", "\\\\").replace("\x00", "\\0"))


def _unescaped(value: Any) -> Any:
    return map_strings(value, lambda s: _ESCAPE.sub(lambda m: "\x00" if m[1] == "0" else "\\", s) if "\\" in s else s)


class Store:
    """Checkpoints of one run, on a connection of their own (autocommit: each save stands on its own). A lost
    connection is made again (postgres.reconnects times) and the statement repeated: each is idempotent."""

    def __init__(self, settings: PostgresSettings, run_id: str) -> None:
        self.settings, self.run_id = settings, run_id
        self.conn = self._connect()
        try:
            self._do(f"cannot create the checkpoint table {TABLE} (audit.checkpoint_every needs it)", _create)
        except RuntimeFailure:
            self.conn.close()
            raise

    def _connect(self) -> psycopg.Connection:
        conn = pg_source.connect(self.settings.dsn, application_name="reconciler-checkpoint",
                                 **self.settings.timeouts())
        conn.autocommit = True
        return conn

    def _do(self, doing: str, fn: Callable[[psycopg.Connection], T]) -> T:
        for attempt in range(1, self.settings.reconnects + 2):
            try:
                if pg_source.lost(self.conn):
                    self.conn = self._connect()
                return fn(self.conn)
            except (psycopg.Error, RuntimeFailure) as exc:  # RuntimeFailure: the reconnect itself failed
                if not pg_source.lost(self.conn) or attempt > self.settings.reconnects:
                    if isinstance(exc, RuntimeFailure):
                        raise
                    raise pg_source.failure(self.conn, exc, doing) from None
            time.sleep(backoff.delay(attempt))
        raise AssertionError("unreachable")

    def save(self, entity: str, collection: str | None, last_key: Key | None, tally: dict[str, Any]) -> None:
        params = [self.run_id, entity, collection, _escaped(list(last_key)) if last_key else None,
                  json.dumps(_escaped(tally), default=str)]
        self._do("cannot save a checkpoint", lambda c: c.execute(
            f"INSERT INTO {TABLE} (run_id, entity, collection, last_key, tally) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (run_id, entity) DO UPDATE SET collection = excluded.collection, "
            "last_key = excluded.last_key, tally = excluded.tally, saved_at = now()", params))

    def load(self, entity: str) -> Position | None:
        row = self._do("cannot read the checkpoint", lambda c: c.execute(
            f"SELECT collection, last_key, tally FROM {TABLE} WHERE run_id = %s AND entity = %s",
            [self.run_id, entity]).fetchone())
        if row is None:
            return None
        return Position(row[0], tuple(_unescaped(row[1])) if row[1] else None, _unescaped(row[2]))

    def exists(self) -> bool:
        return self._do("cannot read the checkpoints", lambda c: c.execute(
            f"SELECT 1 FROM {TABLE} WHERE run_id = %s LIMIT 1", [self.run_id]).fetchone()) is not None

    def close(self) -> None:
        self.conn.close()


def _create(conn: psycopg.Connection) -> None:
    if conn.execute("SELECT to_regclass(%s) IS NULL", [TABLE]).fetchone()[0]:
        conn.execute(DDL)


def open_for_resume(settings: PostgresSettings, run_id: str) -> Store:
    store = Store(settings, run_id)
    if not store.exists():
        store.close()
        raise UsageError(f"--resume {run_id}: no checkpoints of that run in {TABLE} (was audit.checkpoint_every set?)")
    return store


# ---------------------------------------------------------------- findings <-> JSON

def finding_to_json(f: Finding) -> dict[str, Any]:
    return {"key": f.key, "kind": f.kind.value,
            "fields": [{"path": d.path, "pattern": d.pattern, "kind": d.kind, "postgres": to_json(d.postgres),
                        "firestore": to_json(d.firestore)} for d in f.fields]}


def finding_from_json(d: dict[str, Any]) -> Finding:
    """Values come back in their JSON form (what every report shows them as)."""
    return Finding(d["key"], FindingKind(d["kind"]),
                   tuple(FieldDiff(x["path"], x["postgres"], x["firestore"], x["pattern"], x["kind"])
                         for x in d["fields"]))
