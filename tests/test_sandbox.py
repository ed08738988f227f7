"""The throwaway servers: ICU databases sort like production, the emulator stores and forgets, and
stopping (or dying) leaves no server behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from reconciler import sandbox
from reconciler.sandbox import ServerStartError, is_listening

WORDS = [("B",), ("a",), ("b",), ("A",)]


def _sorted(dsn: str, collate: str = "") -> list[str]:
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE words (x text)")
        conn.cursor().executemany("INSERT INTO words VALUES (%s)", WORDS)
        return [r[0] for r in conn.execute(f"SELECT x FROM words ORDER BY x {collate}")]


def test_icu_database_sorts_by_its_collation_and_c_by_bytes(pg_server, pg_database):
    dsn = pg_database(icu_locale="en-US")
    assert _sorted(dsn) == ["a", "A", "b", "B"]
    assert _sorted(pg_database(icu_locale="en-US"), 'COLLATE "C"') == ["A", "B", "a", "b"]
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT datlocprovider, daticulocale FROM pg_database WHERE datname = current_database()"
        ).fetchone() == ("i", "en-US")


def test_database_without_icu_sorts_by_bytes(pg_database):
    assert _sorted(pg_database(icu_locale=None)) == ["A", "B", "a", "b"]


def test_pg_dsn_is_a_fresh_empty_icu_database(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        name, provider = conn.execute(
            "SELECT current_database(), datlocprovider FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        assert (name[:5], provider) == ("test_", "i")
        assert conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone() == (0,)


def test_drop_database_works_while_a_connection_is_open(pg_server):
    name = f"test_drop_{os.getpid()}"
    conn = psycopg.connect(pg_server.create_database(name))  # what a test might leave open
    try:
        pg_server.drop_database(name)
        with psycopg.connect(pg_server.dsn()) as admin:
            assert admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone() == (0,)
    finally:
        conn.close()


def test_emulator_stores_and_reads_back_a_document(fs_client, fs_project):
    assert os.environ["FIRESTORE_EMULATOR_HOST"]
    doc = fs_client.collection("things").document("t1")
    doc.set({"name": "Zoë", "n": 3, "nested": {"tags": ["x", "y"]}})
    doc.collection("parts").document("p1").set({"w": 1.5})
    assert doc.get().to_dict() == {"name": "Zoë", "n": 3, "nested": {"tags": ["x", "y"]}}
    assert [d.id for d in fs_client.collection("things/t1/parts").stream()] == ["p1"]


def test_reset_empties_one_project_and_only_that_one(firestore_emulator, fs_client, fs_project):
    from google.cloud import firestore

    for i in range(3):
        fs_client.collection("things").document(f"t{i}").set({"i": i})
    other = firestore.Client(project=f"{fs_project}-other")
    other.collection("things").document("keep").set({"k": True})
    try:
        firestore_emulator.reset(fs_project)
        assert list(fs_client.collection("things").stream()) == []
        assert [d.id for d in other.collection("things").stream()] == ["keep"]
    finally:
        firestore_emulator.reset(f"{fs_project}-other")
        other.close()


def _processes_mentioning(text: str) -> list[psutil.Process]:
    """Live (non-zombie) processes with `text` in their command line, followed by a space or its end."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and f"{text} " in " ".join(p.info["cmdline"] or ()) + " ":
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.mark.integration
def test_stop_leaves_no_process_listening():
    with sandbox.sandbox() as (pg, fs):
        assert is_listening("127.0.0.1", pg.port) and is_listening("127.0.0.1", fs.port)
        assert _processes_mentioning(f"--port={fs.port}"), "the emulator's java should be running"
        pg_dir, fs_port, pg_port = pg.datadir, fs.port, pg.port
        with psycopg.connect(pg.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not is_listening("127.0.0.1", pg_port)
    assert not is_listening("127.0.0.1", fs_port)
    assert _processes_mentioning(f"--port={fs_port}") == []  # no java, no shell wrapper
    assert _processes_mentioning(f"--host-port=127.0.0.1:{fs_port}") == []  # no gcloud
    assert _processes_mentioning(str(pg_dir)) == []
    assert not pg_dir.parent.exists()  # the whole temp dir is gone
    pg.stop(), fs.stop()  # stopping twice is harmless


@pytest.mark.integration
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_process_that_dies_leaves_no_server_behind(sig):
    """Ctrl-C and SIGTERM stop the servers in the process itself; after kill -9 the watchdogs do it."""
    proc = subprocess.Popen([sys.executable, "-m", "reconciler.sandbox"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[-1].startswith("Ctrl-C"), "".join(lines) + proc.stderr.read()
        pg_port = int(lines[0].split("@127.0.0.1:")[1].split("/")[0])
        fs_port = int(lines[1].split("FIRESTORE_EMULATOR_HOST=127.0.0.1:")[1].split()[0])
        assert is_listening("127.0.0.1", pg_port) and is_listening("127.0.0.1", fs_port)
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        is_listening("127.0.0.1", pg_port) or is_listening("127.0.0.1", fs_port)
        or _processes_mentioning(f"--port={fs_port}")
    ):
        time.sleep(0.2)
    assert not is_listening("127.0.0.1", pg_port)
    assert not is_listening("127.0.0.1", fs_port)
    assert _processes_mentioning(f"--port={fs_port}") == []
    assert _processes_mentioning(f"--host-port=127.0.0.1:{fs_port}") == []
    assert _processes_mentioning(f"-p {pg_port}") == []


@pytest.mark.integration
def test_postgres_under_a_workdir_removes_its_directory(tmp_path):
    reachable = Path(tempfile.mkdtemp(prefix="sandbox-workdir-"))
    os.chmod(reachable, 0o755)
    try:
        # As root, pytest's tmp_path (0700) is out of the postgres user's reach: the server goes to /tmp.
        for workdir in (reachable, tmp_path):
            pg = sandbox.start_postgres(workdir)
            with psycopg.connect(pg.dsn()) as conn:
                assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
            base = pg.datadir.parent
            if workdir == reachable or os.geteuid() != 0:
                assert base.parent == workdir
            pg.stop()
            assert not base.exists()
            assert not is_listening("127.0.0.1", pg.port)
        assert list(reachable.iterdir()) == []
    finally:
        shutil.rmtree(reachable, ignore_errors=True)


def test_a_taken_port_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServerStartError, match=f"127.0.0.1:{port}.*already listens"):
            sandbox.start_postgres(port=port)
        with pytest.raises(ServerStartError, match=f"127.0.0.1:{port}.*already listens"):
            sandbox.start_firestore_emulator(port=port)


def test_missing_postgres_binaries_are_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("PG_BINDIR", raising=False)
    monkeypatch.setattr(sandbox.glob, "glob", lambda pattern: [])
    with pytest.raises(sandbox.BinaryNotFound, match="initdb, pg_ctl, postgres"):
        sandbox.start_postgres()


@pytest.mark.integration
def test_an_emulator_that_does_not_come_up_in_time_is_a_clear_error():
    t0 = time.monotonic()
    with pytest.raises(ServerStartError, match="did not answer on http://127.0.0.1:[0-9]+/ within 0 s") as err:
        sandbox.start_firestore_emulator(timeout=0.3)
    assert time.monotonic() - t0 < 20
    port = int(str(err.value).split("http://127.0.0.1:")[1].split("/")[0])
    assert _processes_mentioning(f"--port={port}") == []  # what did start was stopped
