"""Shared fixtures: a real PostgreSQL server and the real Firestore emulator, started once per session.

Set TEST_PG_DSN (a DSN of a role that may CREATE DATABASE) and/or FIRESTORE_EMULATOR_HOST to use servers
that are already running instead of starting throwaway ones. Nothing here skips a test: if a server
cannot start, the tests that need it error with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import pytest

from reconciler import sandbox

# A test that uses any of these talks to a real server: it is marked `integration` automatically.
INTEGRATION_FIXTURES = frozenset(
    {"pg_server", "pg_dsn", "pg_database", "firestore_emulator", "fs_project", "fs_client"}
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _no_settle_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped config waits audit.settle_s = 5 s before re-reading what differs; tests still re-read, without
    the wait (the concurrent-writer tests set their own delay). Subprocesses inherit it."""
    monkeypatch.setenv("RECONCILER_SETTLE_S", "0")


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """The CLI configures the root logger for its process (logs.configure); in-process CLI tests must not leave
    that handler behind for the tests after them."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# ------------------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def pg_server() -> Iterator[sandbox.PostgresServer | sandbox.ExistingPostgres]:
    """The server: ours (started now, stopped at the end) or $TEST_PG_DSN's. Either way it has
    `create_database(name, icu_locale=None) -> dsn`, `drop_database(name)` and `dsn(dbname)`."""
    if os.environ.get("TEST_PG_DSN"):
        yield sandbox.ExistingPostgres(os.environ["TEST_PG_DSN"])
        return
    server = sandbox.start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_database(pg_server) -> Iterator[Callable[..., str]]:
    """A factory: `pg_database(icu_locale="en-US")` creates a fresh empty database and returns its DSN;
    `pg_database(icu_locale=None)` gives one with the server's byte-order ("C") collation. All of them
    are dropped after the test."""
    created: list[str] = []

    def make(*, icu_locale: str | None = "en-US") -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        dsn = pg_server.create_database(name, icu_locale=icu_locale)
        created.append(name)
        return dsn

    yield make
    for name in created:
        pg_server.drop_database(name)


@pytest.fixture
def pg_dsn(pg_database) -> str:
    """A fresh empty database for this test, dropped afterwards. It sorts text with the ICU "en-US"
    collation, as a production database would (not byte order): code that needs Firestore's key order
    must ask for it (COLLATE "C")."""
    return pg_database()


# ------------------------------------------------------------------------------------------ Firestore


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[sandbox.FirestoreEmulator]:
    """The emulator: ours (started now, stopped at the end) or the one $FIRESTORE_EMULATOR_HOST names."""
    if os.environ.get("FIRESTORE_EMULATOR_HOST"):
        yield sandbox.FirestoreEmulator(host=os.environ["FIRESTORE_EMULATOR_HOST"])
        return
    emulator = sandbox.start_firestore_emulator()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def fs_project(firestore_emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A project id of this test's own ("test-<hex>"), with FIRESTORE_EMULATOR_HOST (and
    GOOGLE_CLOUD_PROJECT) set for the test; all its documents are deleted afterwards."""
    project = f"test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", project)
    yield project
    firestore_emulator.reset(project)


@pytest.fixture
def fs_client(fs_project):
    """A google.cloud.firestore.Client for this test's project, on the emulator."""
    from google.cloud import firestore

    client = firestore.Client(project=fs_project)
    yield client
    client.close()


# ------------------------------------------------------------------------------------------ seed data

ROOT = Path(__file__).parents[1]


class Loaded(NamedTuple):
    settings: Any
    people: list[Any]

    def __repr__(self) -> str:  # hypothesis prints fixtures of a failing example: keep it short
        return f"Loaded({len(self.people)} customers)"


@pytest.fixture
def customers_loaded(pg_dsn, fs_client, fs_project) -> Loaded:
    """30 seed-000 customers in both databases, in sync; returns (settings, customers)."""
    from demo import customers
    from reconciler.config import load_settings

    people = customers.generate(30, seed=7)
    with psycopg.connect(pg_dsn) as conn:
        customers.load(conn, fs_client, people)
    settings = load_settings(None, env={"RECONCILER_PG_DSN": pg_dsn, "GOOGLE_CLOUD_PROJECT": fs_project,
                                        "RECONCILER_RULES_DIR": str(ROOT / "rules"),
                                        "RECONCILER_SETTLE_S": "0"})  # as _no_settle_wait, which env= bypasses
    return Loaded(settings, people)
