"""postgres.lock_timeout_s and statement_timeout_s reach every connection of a run: a lock that is never
released fails the run with its cause instead of hanging it, and the setting's name is in the message."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).parents[1]


def test_a_lock_never_released_fails_the_audit_naming_the_setting(customers_loaded, pg_dsn, tmp_path):
    config = tmp_path / "reconciler.toml"
    config.write_text(f'[postgres]\nlock_timeout_s = 0.5\n[audit]\nrules_dir = "{ROOT / "rules"}"\n')
    cmd = [sys.executable, "-m", "reconciler.cli", "--config", str(config), "--pg-dsn", pg_dsn, "--log-level",
           "error", "--entity", "customers"]
    with psycopg.connect(pg_dsn) as locker:  # a migration left open: ALTER TABLE's lock, held for ever
        locker.execute("LOCK TABLE customer_metrics IN ACCESS EXCLUSIVE MODE")
        began = time.monotonic()
        try:
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("the audit waited for the lock for a minute: no lock_timeout") from None
        took = time.monotonic() - began
        locker.rollback()
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "customers: FAILED: postgres: " in r.stdout and "lock timeout" in r.stdout, r.stdout
    assert "postgres.lock_timeout_s = 0.5 s fired" in r.stdout, r.stdout
    assert took < 30, took


def test_the_timeouts_are_set_on_every_connection_of_a_run(customers_loaded, pg_dsn, tmp_path, monkeypatch):
    """The audit's, the checkpoints' and the history's sessions all carry the configured values (pg_stat_activity
    cannot show another session's settings: each connection reports its own, read where the run uses it)."""
    import dataclasses

    from reconciler import checkpoint, engine
    from reconciler.history import History

    settings, _ = customers_loaded
    settings = dataclasses.replace(settings, postgres=dataclasses.replace(
        settings.postgres, lock_timeout_s=1.25, statement_timeout_s=321))
    ask = "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
    conns = [engine.connect_postgres(settings), checkpoint.Store(settings.postgres, "r").conn,
             History.open(settings).conn]
    try:
        assert [tuple(c.execute(ask).fetchone()) for c in conns] == [("1250ms", "321s")] * 3
    finally:
        for c in conns:
            c.close()
