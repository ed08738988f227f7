"""postgres.lock_timeout_s / statement_timeout_s: a lock held forever by another session, or a statement that never
ends, fails the read or the write within seconds, as a RuntimeFailure that says which timeout fired and how to
raise it. Real Postgres, a real second session holding the lock."""

from __future__ import annotations

import time

import psycopg
import pytest

from reconciler.errors import RuntimeFailure
from reconciler.keys import Scope
from reconciler.rules.loader import parse_entity
from reconciler.sources import postgres as pg_source

RULES = parse_entity("entity: t\nsource_of_truth: firestore\ncollection: t\ntable: t\nkey: id\ncolumns:\n  v:\n",
                     "t.yaml")


@pytest.fixture
def db(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id text PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t VALUES ('a', 'x'), ('b', 'y')")
        conn.execute("CREATE VIEW slow AS SELECT 'a'::text AS id, pg_sleep(30)::text AS v")
    return pg_dsn


def _read(conn, table: str = "t") -> list:
    doc = RULES.root if table == "t" else parse_entity(
        f"entity: s\nsource_of_truth: firestore\ncollection: s\ntable: {table}\nkey: id\ncolumns:\n  v:\n",
        "s.yaml").root
    schema = pg_source.fetch_schema(conn, (table,))
    pg_source.begin_snapshot(conn)
    try:
        return list(pg_source.PostgresReader(conn, schema).stream(doc, Scope()))
    finally:
        pg_source.end_snapshot(conn)


def test_a_read_waiting_on_a_lock_fails_within_seconds_naming_the_setting(db):
    holder = psycopg.connect(db)
    holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # held until rollback: an ALTER TABLE that hangs
    conn = pg_source.connect(db, lock_timeout_s=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeFailure) as err:
            _read(conn)
        assert time.monotonic() - started < 5
        assert "lock timeout" in str(err.value)
        assert "postgres.lock_timeout_s = 0.5 s fired: raise it in the config" in str(err.value), str(err.value)
    finally:
        conn.close()
        holder.close()


def test_a_write_waiting_on_a_locked_row_fails_within_seconds_naming_the_setting(db):
    holder = psycopg.connect(db)
    holder.execute("SELECT * FROM t WHERE id = 'a' FOR UPDATE")  # another writer's open transaction
    conn = pg_source.connect(db, lock_timeout_s=0.5)
    try:
        schema = pg_source.fetch_schema(conn, ("t",))
        pg_source.begin_serializable(conn)
        started = time.monotonic()
        with pytest.raises(RuntimeFailure) as err:
            pg_source.upsert_row(conn, "t", {"id": "a"}, {"v": "z"}, schema["t"])
        assert time.monotonic() - started < 5
        assert "postgres.lock_timeout_s = 0.5 s fired" in str(err.value), str(err.value)
        conn.rollback()
        # the other row is not locked: the same session still writes it
        assert pg_source.upsert_row(conn, "t", {"id": "b"}, {"v": "z"}, schema["t"]) == "update"
    finally:
        conn.close()
        holder.close()


def test_a_statement_that_runs_too_long_fails_naming_statement_timeout(db):
    conn = pg_source.connect(db, statement_timeout_s=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeFailure) as err:
            _read(conn, "slow")
        assert time.monotonic() - started < 5
        assert "postgres.statement_timeout_s = 0.5 s fired" in str(err.value), str(err.value)
        assert _read(conn) == _read(conn)  # the session goes on
    finally:
        conn.close()


def test_no_timeouts_by_default_and_canonical_text_whatever_the_servers_defaults(db):
    """Dates, intervals and floats print as the canonical forms expect even where the database's defaults differ."""
    with psycopg.connect(db, autocommit=True) as admin:
        name = admin.info.dbname
        for setting, value in (("DateStyle", "SQL, DMY"), ("IntervalStyle", "iso_8601"), ("extra_float_digits", "0"),
                               ("TimeZone", "Asia/Kolkata")):
            admin.execute(f'ALTER DATABASE "{name}" SET {setting} = \'{value}\'')
    conn = pg_source.connect(db)
    try:
        shown = {n: conn.execute(f"SHOW {n}").fetchone()[0] for n in ("lock_timeout", "statement_timeout")}
        texts = conn.execute("SELECT '2024-03-01'::date::text, '1 mon 2 days'::interval::text, "
                             "(0.1::float8 + 0.2::float8)::text, "
                             "'2024-03-01 00:00:00+00'::timestamptz::text").fetchone()
        values = conn.execute("SELECT 0.1::float8 + 0.2::float8, '2024-03-01'::date").fetchone()
    finally:
        conn.close()
    assert shown == {"lock_timeout": "0", "statement_timeout": "0"}
    assert texts == ("2024-03-01", "1 mon 2 days", "0.30000000000000004", "2024-03-01 00:00:00+00")
    assert values[0] == 0.1 + 0.2  # exact, not rounded to 15 digits
