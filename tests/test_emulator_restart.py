"""The Firestore emulator restarted from an export under a reader that reads as of an instant (`read_time`).

After an import every document has the import instant as its create and update time, so as of any earlier instant
the restarted server has no documents at all. A stream resumed at the old instant would end there, silently, and
every record after it would be reported missing in Firestore; the re-read after the settle delay only saves the
first max(audit.max_findings, repair limit) of them. These tests restart the real emulator process (its own, on the
same port) from its own export and check that the readers move to the server's current instant instead (or fail
with a clear error when they may not move again), whichever way the restart meets them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from google.cloud import firestore
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from reconciler import sandbox
from reconciler.engine import run_audit
from reconciler.errors import RuntimeFailure
from reconciler.keys import Scope, sort_key
from reconciler.rules import load_entity
from reconciler.sources import firestore as fs_source

RULES = Path(__file__).parents[1] / "rules"
WIDGETS = load_entity(Path(__file__).parent / "fixtures" / "rules", "widgets")
PARTS = WIDGETS.documents[1]
MOVED = "no longer serves read instant"  # what the reader's warning (and its error) says


class Restartable:
    """A Firestore emulator of this module's own, stopped and started again on its port from an export."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.emu = sandbox.start_firestore_emulator()
        self.host = self.emu.host
        self.port = int(self.host.rsplit(":", 1)[1])

    def export(self, project: str) -> Path:
        """The project's documents, exported through the emulator's own endpoint: the metadata file to import."""
        into = self.workdir / uuid.uuid4().hex[:8]
        into.mkdir()
        body = {"database": f"projects/{project}/databases/(default)", "export_directory": str(into)}
        urllib.request.urlopen(urllib.request.Request(
            f"http://{self.host}/emulator/v1/projects/{project}:export", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST"), timeout=60)
        (saved,) = into.glob("*/*.overall_export_metadata")
        return saved

    def stop(self) -> None:
        self.emu.stop()

    def start(self, saved: Path) -> None:
        self.emu = sandbox.start_firestore_emulator(port=self.port, args=(f"--import-data={saved}",))

    def client(self, project: str) -> firestore.Client:
        """A client of a project with no documents: after an import, every project shows the imported ones until
        it is reset."""
        self.emu.reset(project)
        return firestore.Client(project=project)

    def restart(self, project: str) -> None:
        """Stopped and started again with the project as it is now (every other project is gone)."""
        saved = self.export(project)
        self.stop()
        self.start(saved)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Iterator[Restartable]:
    server = Restartable(tmp_path_factory.mktemp("exports"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(emulator, monkeypatch) -> Iterator[firestore.Client]:
    """A client of a project of this test's own on the restartable emulator."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", emulator.host)
    c = emulator.client(f"restart-{uuid.uuid4().hex[:10]}")
    yield c
    c.close()


def _widgets(c: firestore.Client, ids: list[str], parts: tuple[str, ...] = ()) -> dt.datetime:
    """Root documents (each with `parts`), then the instant just after them."""
    for i in ids:
        ref = c.collection("widgets").document(i)
        ref.set({"label": i})
        for p in parts:
            ref.collection("parts").document(p).set({"qty": 1})
    time.sleep(0.05)
    return dt.datetime.now(dt.timezone.utc)


def _keys(reader: fs_source.FirestoreReader, doc=WIDGETS.root, scope: Scope = Scope()) -> list[tuple[str, ...]]:
    return [k for k, _ in reader.stream(doc, scope, "widgets")]


def _moves(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if MOVED in r.getMessage()]


# ------------------------------------------------------------------------------------------ a whole audit

def _summary(result):
    (e,) = result.entities
    assert e.error is None, e.error
    return e.counts, sorted((f.key, f.kind.value, tuple(d.path for d in f.fields)) for f in e.findings)


def test_an_audit_whose_emulator_restarts_from_an_export_mid_sweep_reports_what_an_uninterrupted_one_does(
        emulator, client, pg_dsn, caplog):
    """The emulator process stopped while the sweep streams subcollection documents and started again on the same
    port from its export: the sweep retries with backoff, notices the lost instant and reads on. The re-read after
    the settle delay is capped at 5 records (audit.max_findings), so false `missing_in_firestore` of the documents
    a resumed stream no longer saw as of the old instant would outnumber it and be reported."""
    from demo import customers
    from reconciler.config import load_settings

    people = customers.generate(120, seed=7)
    with psycopg.connect(pg_dsn) as conn:
        customers.load(conn, client, people)
    client.collection("customers").document(people[3].id).update({"lastName": "Drifted"})
    client.collection("customers").document(people[-1].id).delete()
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE customers SET phone = '+000' WHERE id = %s", (people[7].id,))
    settings = load_settings(None, env={"RECONCILER_PG_DSN": pg_dsn, "GOOGLE_CLOUD_PROJECT": client.project,
                                        "RECONCILER_RULES_DIR": str(RULES)})
    settings = dataclasses.replace(settings, max_findings=5)
    uninterrupted = _summary(run_audit(settings, ["customers"]))
    assert len(uninterrupted[1]) == 3
    saved = emulator.export(client.project)

    roots_done, restarted = threading.Event(), threading.Event()

    def stop_and_start_again() -> None:
        roots_done.wait(timeout=60)
        emulator.stop()
        emulator.start(saved)
        restarted.set()

    def progress(entity: str, collection: str, n: int, drifted: int) -> None:
        if collection == "customers":
            roots_done.set()  # the subcollection streams start now, and the emulator goes away under them

    stopper = threading.Thread(target=stop_and_start_again, daemon=True)
    stopper.start()
    small_pages = dataclasses.replace(settings, firestore=dataclasses.replace(settings.firestore, page_size=2))
    with caplog.at_level(logging.WARNING, logger="reconciler.sources.firestore"):
        interrupted = _summary(run_audit(small_pages, ["customers"], progress=progress))
    stopper.join(timeout=90)
    assert restarted.is_set(), "the emulator was not started again"
    assert [r for r in caplog.records if "retry" in r.getMessage()], "the sweep never met the stopped emulator"
    assert interrupted == uninterrupted
    assert _moves(caplog)


# ------------------------------------------------------------------------------------------ one reader

def test_a_restart_between_two_pages_that_no_request_sees_moves_the_instant(emulator, client, caplog):
    """The stream waits between two pages (its consumer is slower) while the emulator restarts: no request fails,
    the next page, as of the old instant, simply has nothing. The stream must read on as of the server's current
    instant; a reader that may not move again (retries=0) fails with the reason instead of ending short."""
    ids = [f"w{i:02}" for i in range(10)]
    instant = _widgets(client, ids)
    moving = fs_source.FirestoreReader(client, page_size=4, read_time=instant)
    stuck = fs_source.FirestoreReader(client, page_size=4, read_time=instant, retries=0)
    streams = [moving.stream(WIDGETS.root, Scope(), "widgets"), stuck.stream(WIDGETS.root, Scope(), "widgets")]
    firsts = [[next(s)[0] for _ in range(4)] for s in streams]  # exactly one page: no request is open now
    assert firsts == [[(i,) for i in ids[:4]]] * 2
    emulator.restart(client.project)
    with caplog.at_level(logging.WARNING, logger="reconciler.sources.firestore"):
        rest = [k for k, _ in streams[0]]
        assert firsts[0] + rest == [(i,) for i in ids]
        with pytest.raises(RuntimeFailure, match=MOVED) as failed:
            list(streams[1])
    assert moving.lost == [(instant, moving.read_time)] and moving.read_time > instant
    assert "widgets/w03, delivered as of that instant, is no longer there as of it" in str(failed.value)
    assert not [r for r in caplog.records if "retry" in r.getMessage()], "a request failed: not the case tested"
    (warning,) = _moves(caplog)
    assert "widgets/w03" in warning and "reading on as of" in warning


def test_every_kind_of_read_after_a_restart_between_two_reads_moves_its_instant(emulator, client, caplog):
    """The restart falls between two reads of one reader (one document kind done, the next not begun; or --ids):
    the next read as of the old instant has nothing. A document the reader delivered before vouches for the
    instant: read again as of it, it is not there either, so the reader moves. Subcollection streams, --ids reads
    of root and child documents, and reads by exact keys (the settle re-read's) alike."""
    ids, parts = ["a", "b", "__id7__", "c"], ("p", "q")
    instant = _widgets(client, ids, parts)
    latest = fs_source.FirestoreReader(client)
    reads = {  # name -> the read after the restart
        "subcollection stream": lambda r: _keys(r, PARTS),
        "--ids roots": lambda r: _keys(r, WIDGETS.root, Scope(ids=("a", "c", "zz"))),
        "--ids children": lambda r: _keys(r, PARTS, Scope(ids=("a", "c"))),
        "exact keys": lambda r: _keys(r, PARTS, Scope(ids=("a", "b"), keys=(("a", "p"), ("b", "q"), ("b", "x")))),
    }
    expected = {name: read(latest) for name, read in reads.items()}
    assert all(expected.values())
    readers = {name: fs_source.FirestoreReader(client, read_time=instant) for name in reads}
    for reader in readers.values():
        assert len(_keys(reader)) == len(ids)  # the root documents: now the reader has delivered some
    emulator.restart(client.project)
    with caplog.at_level(logging.WARNING, logger="reconciler.sources.firestore"):
        got = {name: read(readers[name]) for name, read in reads.items()}
    assert got == expected
    assert all(r.lost == [(instant, r.read_time)] and r.read_time > instant for r in readers.values())
    assert len(_moves(caplog)) == len(reads)


def test_a_reader_that_has_read_nothing_yet_moves_after_the_server_went_away(emulator, client, caplog):
    """The settle re-read (and any sweep's first read) has no document of its own to vouch for its instant. The
    emulator is down when it asks, so it retries; the restarted server then has nothing as of the instant. After
    the server went away, nothing as of the instant is not believed: the reader moves."""
    ids = ["a", "b", "c"]
    instant = _widgets(client, ids, ("p",))
    saved = emulator.export(client.project)
    reads = {
        "by ids": lambda r: _keys(r, WIDGETS.root, Scope(ids=tuple(ids))),
        "stream": lambda r: _keys(r),
        "exact keys": lambda r: _keys(r, PARTS, Scope(ids=("a",), keys=(("a", "p"),))),
    }
    readers = {name: fs_source.FirestoreReader(client, read_time=instant) for name in reads}
    emulator.stop()
    with caplog.at_level(logging.WARNING, logger="reconciler.sources.firestore"), ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(read, readers[name]) for name, read in reads.items()}
        time.sleep(1.0)  # each has failed at least once by now
        emulator.start(saved)
        got = {name: f.result(timeout=120) for name, f in futures.items()}
    assert got == {"by ids": [(i,) for i in ids], "stream": [(i,) for i in ids], "exact keys": [("a", "p")]}
    assert len([r for r in caplog.records if "retry 1 of" in r.getMessage()]) >= len(reads)
    assert all(r.lost == [(instant, r.read_time)] and r.read_time > instant for r in readers.values())
    assert len(_moves(caplog)) == len(reads)


# One example restarts a JVM (seconds): no shrinking, few examples.
@settings(max_examples=10, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.sampled_from(["a", "B", "é", "b", "__id3__", "__id-5__", "aa", "Z", "c", "d", "e", "f"]),
                    min_size=1, max_size=9, unique=True),
       data=st.data(), restart=st.booleans())
def test_a_stream_as_of_an_instant_is_the_instant_up_to_a_restart_and_the_servers_instant_after_it(
        emulator, client, ids, data, restart):
    """Documents deleted and created after the instant while the stream is in or between pages: without a
    restart, the stream is exactly the documents as of the instant (a deleted one, the one the next page starts at
    included, still exists as of it: no move); with a restart (from an export of what is there then) between two
    pages, it is the documents as of the instant up to there, then those after it as of the server's instant.
    (A restart in the middle of a page is test_an_audit_whose_emulator_restarts...: which documents of that page
    had reached the client before is up to the network.)"""
    page_size = data.draw(st.integers(1, min(4, len(ids)) if restart else 4), label="page size")
    if restart:
        k = page_size * data.draw(st.integers(1, len(ids) // page_size), label="pages read before the restart")
    else:
        k = data.draw(st.integers(0, len(ids)), label="read before the deletes")
    gone = data.draw(st.sets(st.sampled_from(ids)), label="deleted after the instant")
    born = data.draw(st.sets(st.sampled_from(["A", "b0", "zz", "__id4__"])), label="created after the instant")
    c = emulator.client(f"restart-{uuid.uuid4().hex[:10]}")
    instant = _widgets(c, ids)
    before = sorted(((i,) for i in ids), key=sort_key)
    reader = fs_source.FirestoreReader(c, page_size=page_size, read_time=instant)
    stream = reader.stream(WIDGETS.root, Scope(), "widgets")
    got = [next(stream)[0] for _ in range(k)]
    for i in gone:
        c.collection("widgets").document(i).delete()
    for i in born - set(ids):
        c.collection("widgets").document(i).set({"label": i})
    if restart:
        emulator.restart(c.project)
    got += [key for key, _ in stream]
    if not restart:
        assert got == before and reader.read_time == instant
    else:
        after = sorted(((i,) for i in (set(ids) - gone) | born), key=sort_key)
        assert got == before[:k] + [key for key in after if sort_key(key) > sort_key(before[k - 1])]
        assert reader.lost == [(instant, reader.read_time)] and reader.read_time > instant
    c.close()
