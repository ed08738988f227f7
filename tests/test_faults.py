"""Faults on real servers: a Postgres backend terminated in the middle of a stream, Firestore connections cut
in the middle of a sweep, SIGTERM in the middle of `--repair --apply`. Each run completes (or is re-run) to
the result of an uninterrupted run: no record skipped, none counted twice, no half-applied repair."""

from __future__ import annotations

import dataclasses
import threading
import time

import psycopg

from reconciler.engine import run_audit


def _summary(result):
    (e,) = result.entities
    assert e.error is None, e.error
    return e.counts, sorted((f.key, f.kind.value, tuple(d.path for d in f.fields)) for f in e.findings)


def _drift(people, fs_client, pg_dsn):
    fs_client.collection("customers").document(people[3].id).update({"lastName": "Drifted"})
    fs_client.collection("customers").document(people[-1].id).delete()
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE customers SET phone = '+000' WHERE id = %s", (people[7].id,))


def _terminate_when_fetching(admin_dsn: str, killed: list[int], stop: threading.Event) -> None:
    """Terminate the audit's backend the first time it is seen fetching from a cursor."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        while not stop.is_set() and not killed:
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'reconciler' "
                               "AND query ILIKE 'FETCH%' AND pid <> pg_backend_pid() LIMIT 1").fetchone()
            if row and conn.execute("SELECT pg_terminate_backend(%s)", row).fetchone()[0]:
                killed.append(row[0])
            time.sleep(0.001)


def test_postgres_backend_terminated_mid_stream(customers_loaded, fs_client, pg_dsn):
    settings, people = customers_loaded
    _drift(people, fs_client, pg_dsn)
    uninterrupted = _summary(run_audit(settings, ["customers"]))
    slow = dataclasses.replace(settings, postgres=dataclasses.replace(settings.postgres, itersize=1))
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_terminate_when_fetching, args=(pg_dsn, killed, stop), daemon=True)
    killer.start()
    try:
        interrupted = _summary(run_audit(slow, ["customers"]))
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, "the backend was never terminated: nothing was tested"
    assert interrupted == uninterrupted
