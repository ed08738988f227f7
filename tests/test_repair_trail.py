"""Repair's audit trail under faults, its preconditions, and writes Firestore would refuse; on real Postgres and
the real Firestore emulator. Faults are injected around real calls: the client's real commit (which lands, and
then the reply is lost, or the process dies), pg_terminate_backend on the tool's own backend."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import threading
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.services.firestore.client import FirestoreClient
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from test_repair_orders import orders_loaded  # noqa: F401  (a fixture: Firestore is the truth)

from demo import customers as demo_customers
from reconciler import repair as repair_module
from reconciler.cli import main
from reconciler.engine import run_audit
from reconciler.repair import LOG_TABLE, Options
from reconciler.report import render_html, to_dict, write_reports
from reconciler.result import RepairStatus
from reconciler.sources import postgres as pg_source
from reconciler.sources.firestore import FirestoreWriter, FsDoc, FsWrite, holds, stamp, value_problem

ROOT = Path(__file__).parents[1]


def lenient(settings):
    """These tests drift a large share of few records: the ratio guard has its own test."""
    return dataclasses.replace(settings, repair=dataclasses.replace(settings.repair, max_drift_ratio=1.0))


def trail(dsn: str) -> list[tuple]:
    """(entity_id, firestore_status, run_id, resolved_by, error_message) of every trail row, oldest first."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT entity_id, firestore_status, run_id, resolved_by, error_message FROM {LOG_TABLE} "
                            "ORDER BY id").fetchall()


def drifted(settings) -> set[str]:
    e = run_audit(settings, ["customers"]).entities[0]
    assert e.error is None, e.error
    return {f.key for f in e.findings}


def age(dsn: str) -> None:
    """Make every pending trail row as old as a row a dead run left long ago."""
    with psycopg.connect(dsn) as conn:
        conn.execute(f"UPDATE {LOG_TABLE} SET created_at = created_at - interval '1 day' "
                     "WHERE firestore_status = 'pending'")


class ProcessDied(BaseException):
    """The process ends here (not an Exception: nothing in the tool catches it, as nothing survives a kill -9)."""


def wrap_commit(monkeypatch, before=None, after=None, times=1):
    """Wrap the function every batch commit calls (the generated client's Commit): the first `times` calls run
    before(), the real commit, then after(). Returns the list of calls made."""
    real = FirestoreClient.commit
    calls = []

    def commit(self, *args, **kwargs):
        calls.append(1)
        faulty = len(calls) <= times
        if faulty and before is not None:
            before()
        response = real(self, *args, **kwargs)
        if faulty and after is not None:
            after()
        return response

    monkeypatch.setattr(FirestoreClient, "commit", commit)
    return calls


# ------------------------------------------------------------------------------------------ 3: NaN in the truth

def test_nan_in_the_postgres_truth_is_repaired_instead_of_changed_during_run_forever(customers_loaded, fs_client,
                                                                                       pg_dsn):
    settings, people = customers_loaded
    settings = lenient(settings)
    with_metrics = [p for p in people if p.document.get("metrics")]
    nan_only, nan_and_name = with_metrics[0], with_metrics[1]
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE customer_metrics SET total_spent = 'NaN' WHERE customer_id = ANY(%s)",
                     ([nan_only.id, nan_and_name.id],))
    col = fs_client.collection("customers")
    col.document(nan_and_name.id).update({"metrics.totalSpent": math.nan, "lastName": "Wrong"})  # NaN on both sides
    assert drifted(settings) == {f"customers/{nan_only.id}", f"customers/{nan_and_name.id}"}

    e = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
    assert {f.key: (f.repair.status, f.repair.reason) for f in e.findings} == {
        f"customers/{nan_only.id}": (RepairStatus.APPLIED, ""), f"customers/{nan_and_name.id}": (RepairStatus.APPLIED, "")}
    assert math.isnan(col.document(nan_only.id).get().to_dict()["metrics"]["totalSpent"])
    assert col.document(nan_and_name.id).get().to_dict()["lastName"] == nan_and_name.document["lastName"]
    assert drifted(settings) == set()


def test_nan_in_postgres_the_written_side_does_not_stop_a_repair_toward_postgres(orders_loaded, pg_dsn,  # noqa: F811
                                                                                 fs_client):
    settings, data = orders_loaded
    with psycopg.connect(pg_dsn) as conn:  # the in-transaction re-read of Postgres meets NaN on both reads
        conn.execute("UPDATE order_line_items SET price = 'NaN' WHERE order_id = 'ord_1000'")
        conn.execute("UPDATE order_line_items SET price = 'NaN' WHERE order_id = 'ord_1001'")
        conn.execute("UPDATE orders SET email = 'stale@example.com' WHERE id = 'ord_1001'")
    items = [dict(x, price=math.nan) for x in data[1][0]["line_items"]]  # the truth says NaN too, for ord_1001
    fs_client.document("orders/ord_1001").update({"line_items": items})
    e = run_audit(settings, ["orders"], repair=Options(apply=True)).entities[0]
    assert {f.key: (f.repair.status, f.repair.reason) for f in e.findings} == {
        "orders/ord_1000": (RepairStatus.APPLIED, ""), "orders/ord_1001": (RepairStatus.APPLIED, "")}
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT email FROM orders WHERE id = 'ord_1001'").fetchone()[0] == "buyer1@example.com"
        assert {str(r[0]) for r in conn.execute("SELECT price FROM order_line_items WHERE order_id = 'ord_1001'")} == {"NaN"}
    assert run_audit(settings, ["orders"]).entities[0].findings == ()


# ------------------------------------------------------------------------------------------ 4: written ahead

def kill_the_tools_backend(dsn: str) -> list[tuple]:
    """pg_terminate_backend on the tool's own connection to this test's database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND application_name = 'reconciler' AND pid <> pg_backend_pid()").fetchall()


def kill_after_commit(monkeypatch, dsn: str, n: int) -> list:
    """After the n-th batch commit has landed, the tool's backend is terminated: that batch's trail update meets a
    dead connection, and the engine starts the repair over on a new one. Returns what was killed."""
    killed = []
    calls = wrap_commit(monkeypatch, after=lambda: killed.extend(kill_the_tools_backend(dsn)) if len(calls) == n
                        else None, times=10**6)
    return killed


def in_report(entity: dict) -> list[str]:
    """The key of every write the JSON report says landed, once per entry: findings, this run's earlier attempt,
    other runs' rows settled."""
    r = entity["repair"]
    return sorted([f["key"] for f in entity["findings"] if f.get("repair", {}).get("status") == "applied"]
                  + [x["key"] for x in r["earlier"] if x["status"] == "applied"]
                  + [x["key"] for x in r["resolved"] if x["status"] == "applied"])


def test_a_connection_killed_between_the_firestore_commit_and_its_trail_row_loses_no_write(customers_loaded, fs_client,
                                                                                            pg_dsn, tmp_path,
                                                                                            monkeypatch):
    """Four batches; the connection dies after the second one landed. Every write that landed has exactly one trail
    row, `applied`, and the report lists each once: the first two batches as the earlier attempt's, the rest as
    findings; the summary counts all of them."""
    settings, people = customers_loaded
    settings = dataclasses.replace(settings, repair=dataclasses.replace(settings.repair, max_drift_ratio=1.0,
                                                                         batch_size=10))
    col = fs_client.collection("customers")
    keys = []
    for p in people:
        col.document(p.id).update({"lastName": "Wrong"})
        keys.append(f"customers/{p.id}")
    for p in [p for p in people if p.subcollections.get("addresses")][:10]:
        addr_id = next(iter(p.subcollections["addresses"]))
        col.document(p.id).collection("addresses").document(addr_id).update({"city": "Atlantis"})
        keys.append(f"customers/{p.id}/addresses/{addr_id}")
    assert len(keys) == 40
    killed = kill_after_commit(monkeypatch, pg_dsn, 2)
    result = run_audit(settings, ["customers"], repair=Options(apply=True))
    assert killed == [(True,)], "the tool's backend was not terminated: nothing was tested"
    e = result.entities[0]
    assert e.error is None and e.repair.refused is None

    rows = trail(pg_dsn)
    assert sorted(r[0] for r in rows) == sorted(keys)  # every write that landed: exactly one row
    assert {r[1] for r in rows} == {"applied"}
    assert [r[3] for r in rows] == [None] * 10 + [result.run_id] * 10 + [None] * 20  # batch 2 settled after the reconnect
    assert (e.repair.done, e.repair.failed, e.repair.skipped) == (40, 0, 0) and e.repair.resolved == ()
    assert [(x.key, x.status) for x in e.repair.earlier] == [(r[0], "applied") for r in rows[:20]]
    report = json.loads(write_reports(result, tmp_path).json.read_text())
    entity = report["entities"][0]
    assert in_report(entity) == sorted(keys)
    assert (entity["repair"]["done"], entity["repair"]["failed"]) == (40, 0)
    assert drifted(settings) == set()


def test_a_repair_started_over_keeps_the_max_repairs_limit(customers_loaded, fs_client, pg_dsn, monkeypatch):
    settings, people = customers_loaded
    settings = dataclasses.replace(settings, repair=dataclasses.replace(settings.repair, max_drift_ratio=1.0,
                                                                         batch_size=5, max_repairs=10))
    col = fs_client.collection("customers")
    for p in people:
        col.document(p.id).update({"lastName": "Wrong"})
    killed = kill_after_commit(monkeypatch, pg_dsn, 2)  # the limit's last batch landed, then the connection died
    e = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
    assert killed
    rows = trail(pg_dsn)
    assert len(rows) == 10 and {r[1] for r in rows} == {"applied"}
    assert e.repair.refused is None and e.repair.done == 10 and len(e.repair.earlier) == 10
    assert {f.repair.reason for f in e.findings} == {
        "not repaired: over the limit of 10 repairs per entity (--max-repairs, repair.max_repairs)"}
    assert len(e.findings) == 20 and e.repair.skipped == 20


def test_a_record_that_failed_before_the_reconnect_fails_once(customers_loaded, fs_client, pg_dsn, monkeypatch):
    """The first attempt failed a record (a value Firestore refuses); after the reconnect it is still drifted, and
    is not tried (nor recorded) a second time: one trail row, `failed`, counted once."""
    settings, people = customers_loaded
    settings = dataclasses.replace(settings, repair=dataclasses.replace(settings.repair, max_drift_ratio=1.0,
                                                                         batch_size=10))
    col = fs_client.collection("customers")
    for p in people:
        col.document(p.id).update({"lastName": "Wrong"})
    first = min(people, key=lambda p: p.id)  # in the first batch
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE customers SET custom_attributes = %s WHERE id = %s", (json.dumps({"big": 2**70}), first.id))
    killed = kill_after_commit(monkeypatch, pg_dsn, 2)
    e = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
    assert killed
    rows = trail(pg_dsn)
    assert sorted(r[0] for r in rows) == sorted(f"customers/{p.id}" for p in people)
    assert [r[0] for r in rows if r[1] == "failed"] == [f"customers/{first.id}"]
    assert (e.repair.done, e.repair.failed, e.repair.skipped) == (29, 1, 0)
    (f,) = [f for f in e.findings if f.key == f"customers/{first.id}"]
    assert f.repair.status == RepairStatus.FAILED and "not tried again in this run" in f.repair.reason
    assert "outside Firestore's 64-bit range" in f.repair.reason


def test_a_repair_started_over_toward_postgres_reports_what_it_wrote_before(orders_loaded, pg_dsn,  # noqa: F811
                                                                           monkeypatch):
    """Toward Postgres each record commits with its trail row; after the connection dies half way, the writes the
    first attempt committed are counted and reported, and not written again."""
    settings, data = orders_loaded
    settings = dataclasses.replace(settings, repair=dataclasses.replace(settings.repair, batch_size=4))
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE orders SET email = 'stale@example.com'")
    real, done, killed = repair_module._Applier._write_record, [], []

    def write_record(self, p):
        out = real(self, p)
        done.append(out.status)
        if len(done) == 6:
            killed.extend(kill_the_tools_backend(pg_dsn))
        return out

    monkeypatch.setattr(repair_module._Applier, "_write_record", write_record)
    result = run_audit(settings, ["orders"], repair=Options(apply=True))
    assert killed == [(True,)]
    e = result.entities[0]
    assert e.error is None, e.error
    with psycopg.connect(pg_dsn) as conn:
        logged = conn.execute(f"SELECT entity_id, postgres_status FROM {LOG_TABLE} ORDER BY id").fetchall()
    keys = sorted(f"orders/ord_{1000 + i}" for i in range(len(data)))
    assert sorted(k for k, _ in logged) == keys and {s for _, s in logged} == {"applied"}
    assert e.repair.done == len(keys) and not e.failed
    assert [x.key for x in e.repair.earlier] == [k for k, _ in logged[:6]]
    assert in_report(to_dict(result)["entities"][0]) == keys


def test_pending_rows_of_dead_runs_are_settled_by_reading_the_documents(customers_loaded, fs_client, pg_dsn,
                                                                         monkeypatch):
    """Three outcomes of a write nobody recorded: it landed, it did not, the document changed otherwise since;
    and a run that still holds its lock is left alone."""
    settings, people = customers_loaded
    settings = lenient(settings)
    col = fs_client.collection("customers")
    a1, a2, a3, b1 = people[:4]
    for p in (a1, a2, a3):
        col.document(p.id).update({"lastName": "Wrong"})

    def die():
        raise ProcessDied()

    with monkeypatch.context() as m, pytest.raises(ProcessDied):
        wrap_commit(m, after=die)  # run 1: the batch lands, then the process dies
        run_audit(settings, ["customers"], repair=Options(apply=True), ids=(a1.id, a2.id, a3.id))
    rows = trail(pg_dsn)
    assert [r[1] for r in rows] == ["pending"] * 3
    run1 = rows[0][2]
    col.document(a3.id).update({"lastName": "Written by the app since"})

    col.document(b1.id).update({"lastName": "Wrong"})
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [repair_module._lock_key(run1)])  # run 1 is still applying
        with monkeypatch.context() as m, pytest.raises(ProcessDied):
            wrap_commit(m, before=die)  # run 2: the process dies before the batch is sent
            run_audit(settings, ["customers"], repair=Options(apply=True), ids=(b1.id,))
        assert [r[1] for r in trail(pg_dsn)] == ["pending"] * 4  # run 1's rows untouched: its lock is held
    run2 = trail(pg_dsn)[3][2]

    age(pg_dsn)  # past the window in which their commits could still land
    run3 = run_audit(settings, ["customers"], repair=Options(apply=True))
    e, e_run = run3.entities[0], run3.run_id
    assert {(x.run_id, x.key, x.status) for x in e.repair.resolved} == {
        (run1, f"customers/{a1.id}", "applied"), (run1, f"customers/{a2.id}", "applied"),
        (run1, f"customers/{a3.id}", "unknown"), (run2, f"customers/{b1.id}", "not_applied")}
    assert {f.key: f.repair.status for f in e.findings} == {  # what did not land is repaired now
        f"customers/{a3.id}": RepairStatus.APPLIED, f"customers/{b1.id}": RepairStatus.APPLIED}
    rows = trail(pg_dsn)
    assert {(r[0], r[1], r[2], r[3]) for r in rows[:4]} == {
        (f"customers/{a1.id}", "applied", run1, e_run), (f"customers/{a2.id}", "applied", run1, e_run),
        (f"customers/{a3.id}", "unknown", run1, e_run), (f"customers/{b1.id}", "not_applied", run2, e_run)}
    assert {(r[0], r[1]) for r in rows[4:]} == {(f"customers/{a3.id}", "applied"), (f"customers/{b1.id}", "applied")}
    assert len(rows) == 6
    assert drifted(settings) == set()
    assert run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0].repair.resolved == ()


def test_the_trail_records_the_precondition_each_write_required(customers_loaded, fs_client, pg_dsn):
    settings, people = customers_loaded
    settings = lenient(settings)
    ref = fs_client.collection("customers").document(people[0].id)
    ref.update({"lastName": "Wrong"})
    seen = ref.get().update_time  # the version the diff reads, and the update must still find
    fs_client.collection("customers").document(people[1].id).delete()  # a create
    run_audit(settings, ["customers"], repair=Options(apply=True))
    with psycopg.connect(pg_dsn) as conn:
        got = dict(conn.execute(f"SELECT entity_id, firestore_precondition FROM {LOG_TABLE}").fetchall())
    assert got == {f"customers/{people[0].id}": stamp(seen), f"customers/{people[1].id}": "absent"}


OLD_LOG_DDL = f"""
CREATE TABLE {LOG_TABLE} (
  id BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL,
  operation TEXT NOT NULL, postgres_status TEXT NOT NULL, firestore_status TEXT NOT NULL,
  data_snapshot JSONB NOT NULL, error_message TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  completed_at TIMESTAMPTZ);
CREATE INDEX {LOG_TABLE}_entity ON {LOG_TABLE} (entity_type, entity_id);
INSERT INTO {LOG_TABLE} (run_id, entity_type, entity_id, operation, postgres_status, firestore_status, data_snapshot)
VALUES ('old-run', 'customers', 'customers/x', 'update', 'source', 'applied', '{{"writes": []}}');
"""


def test_an_existing_trail_table_is_migrated_in_place(customers_loaded, fs_client, pg_dsn):
    settings, people = customers_loaded
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(OLD_LOG_DDL)
    fs_client.collection("customers").document(people[0].id).update({"lastName": "Wrong"})
    e = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
    assert e.repair.done == 1 and not e.failed
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(f"SELECT run_id, entity_id, firestore_status, firestore_precondition IS NOT NULL "
                            f"FROM {LOG_TABLE} ORDER BY id").fetchall()
    assert rows[0] == ("old-run", "customers/x", "applied", False)  # kept as it was
    assert rows[1][1:] == (f"customers/{people[0].id}", "applied", True) and len(rows) == 2


# ------------------------------------------------------------------------------------------ 5: lost replies

@pytest.mark.parametrize("landed, records", [(True, 5), (False, 5), (True, 1)],
                         ids=["reply-lost", "request-lost", "reply-lost-one-write"])
def test_a_commit_whose_reply_is_lost_is_settled_by_reading_back(customers_loaded, fs_client, pg_dsn, monkeypatch,
                                                                  landed, records):
    settings, people = customers_loaded
    settings = lenient(settings)
    col = fs_client.collection("customers")
    chosen = people[:records]
    for p in chosen:
        col.document(p.id).update({"lastName": "Wrong"})

    def deadline():
        raise gexc.DeadlineExceeded("Deadline Exceeded")

    calls = wrap_commit(monkeypatch, **({"after": deadline} if landed else {"before": deadline}))
    e = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
    assert len(calls) == (1 if landed else 2)  # resent only when the documents show it did not land
    assert {f.key: f.repair.status for f in e.findings} == {f"customers/{p.id}": RepairStatus.APPLIED for p in chosen}
    assert all("confirmed by reading the document back after 504 Deadline Exceeded" in f.repair.reason
               for f in e.findings)
    rows = trail(pg_dsn)
    assert sorted((r[0], r[1]) for r in rows) == sorted((f"customers/{p.id}", "applied") for p in chosen)
    assert e.repair.done == records and not e.failed
    assert drifted(settings) == set()


def test_an_outcome_that_cannot_be_read_back_is_never_guessed(customers_loaded, fs_client, pg_dsn, monkeypatch):
    """The reply is lost and Firestore cannot be read either: the record fails as unknown, its row stays pending,
    and the next apply settles it from the document."""
    settings, people = customers_loaded
    settings = lenient(settings)
    ref = fs_client.collection("customers").document(people[0].id)
    ref.update({"lastName": "Wrong"})

    down = []
    real_get = FirestoreClient.batch_get_documents

    def deadline():  # the commit landed; from now on Firestore cannot be reached at all
        down.append(True)
        raise gexc.DeadlineExceeded("Deadline Exceeded")

    def get(self, *args, **kwargs):
        if down:
            raise gexc.ServiceUnavailable("connection reset")
        return real_get(self, *args, **kwargs)

    with monkeypatch.context() as m:
        wrap_commit(m, after=deadline)
        m.setattr(FirestoreClient, "batch_get_documents", get)
        m.setattr("reconciler.backoff.delay", lambda attempt, **kw: 0.0)  # the retries' waits, not their number
        result = run_audit(settings, ["customers"], repair=Options(apply=True))
    (f,) = result.entities[0].findings
    assert f.repair.status == RepairStatus.FAILED and result.failed
    assert f.repair.reason.startswith("outcome unknown: 504 Deadline Exceeded, and the document could not be read back")
    assert [(r[0], r[1]) for r in trail(pg_dsn)] == [(f"customers/{people[0].id}", "pending")]

    age(pg_dsn)
    again = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
    assert [(x.key, x.status) for x in again.repair.resolved] == [(f"customers/{people[0].id}", "applied")]
    assert [(r[0], r[1]) for r in trail(pg_dsn)] == [(f"customers/{people[0].id}", "applied")]
    assert again.findings == ()


# ------------------------------------------------------------------------------------------ commits that may still land

def test_every_commit_has_a_deadline(customers_loaded, fs_client, monkeypatch):
    """A commit without one may be answered (and land) at any time later: no other run could ever settle its row."""
    settings, people = customers_loaded
    for p in people[:3]:
        fs_client.collection("customers").document(p.id).update({"lastName": "Wrong"})
    timeouts = []
    real = FirestoreClient.commit

    def commit(self, *args, **kwargs):
        timeouts.append(kwargs.get("timeout"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FirestoreClient, "commit", commit)
    e = run_audit(lenient(settings), ["customers"], repair=Options(apply=True)).entities[0]
    assert e.repair.done == 3 and timeouts
    assert all(t is not None and 0 < t <= 60 for t in timeouts), timeouts


def test_another_runs_recent_pending_rows_are_left_pending_until_no_commit_can_land(customers_loaded, fs_client,
                                                                                    pg_dsn, monkeypatch):
    """Run 1's backend died while its process may still have a commit outstanding (here: it never sent it). A run
    starting at once must not call those rows not_applied: the commit could still land after that. It reports them
    as pending; once they are older than any commit's window, a run settles them."""
    settings, people = customers_loaded
    settings = lenient(settings)
    col = fs_client.collection("customers")
    a1, a2, b = people[:3]
    for p in (a1, a2):
        col.document(p.id).update({"lastName": "Wrong"})

    def die():
        raise ProcessDied()

    with monkeypatch.context() as m, pytest.raises(ProcessDied):
        wrap_commit(m, before=die)
        run_audit(settings, ["customers"], repair=Options(apply=True), ids=(a1.id, a2.id))
    run1 = trail(pg_dsn)[0][2]

    col.document(b.id).update({"lastName": "Wrong"})
    soon = run_audit(settings, ["customers"], repair=Options(apply=True), ids=(b.id,)).entities[0]
    assert {(x.run_id, x.key, x.status) for x in soon.repair.resolved} == {
        (run1, f"customers/{a1.id}", "pending"), (run1, f"customers/{a2.id}", "pending")}
    assert all("may still land" in x.reason for x in soon.repair.resolved)
    assert sorted((r[0], r[1]) for r in trail(pg_dsn)) == sorted([
        (f"customers/{a1.id}", "pending"), (f"customers/{a2.id}", "pending"), (f"customers/{b.id}", "applied")])

    age(pg_dsn)
    later = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
    assert {(x.key, x.status) for x in later.repair.resolved} == {
        (f"customers/{a1.id}", "not_applied"), (f"customers/{a2.id}", "not_applied")}
    assert {f.key: f.repair.status for f in later.findings} == {
        f"customers/{a1.id}": RepairStatus.APPLIED, f"customers/{a2.id}": RepairStatus.APPLIED}


@pytest.mark.parametrize("records", [1, 3], ids=["one-write", "a-batch"])
def test_a_write_whose_every_attempt_went_unanswered_stays_pending(customers_loaded, fs_client, pg_dsn, monkeypatch,
                                                                   records):
    """Every attempt ends in a deadline and the document shows none of them yet: the last one may still land, so
    the outcome is unknown (the row stays pending), never 'not applied'."""
    settings, people = customers_loaded
    settings = lenient(settings)
    chosen = people[:records]
    for p in chosen:
        fs_client.collection("customers").document(p.id).update({"lastName": "Wrong"})

    def deadline():
        raise gexc.DeadlineExceeded("Deadline Exceeded")

    with monkeypatch.context() as m:
        calls = wrap_commit(m, before=deadline, times=10**6)
        m.setattr("reconciler.backoff.delay", lambda attempt, **kw: 0.0)
        e = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
    assert len(calls) == 6  # sent, and sent again five times while the documents showed no write
    assert {f.repair.status for f in e.findings} == {RepairStatus.FAILED} and e.failed
    assert all(f.repair.reason.startswith("outcome unknown: 504 Deadline Exceeded") and "may still land" in f.repair.reason
               for f in e.findings), [f.repair.reason for f in e.findings]
    assert {r[1] for r in trail(pg_dsn)} == {"pending"} and len(trail(pg_dsn)) == records

    age(pg_dsn)
    again = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
    assert {x.status for x in again.repair.resolved} == {"not_applied"}
    assert {f.repair.status for f in again.findings} == {RepairStatus.APPLIED}


def test_no_attempt_is_sent_after_the_write_window(customers_loaded, fs_client, pg_dsn, monkeypatch):
    """The window bounds when an attempt can still land, whatever the retries: past it, none is sent."""
    settings, people = customers_loaded
    fs_client.collection("customers").document(people[0].id).update({"lastName": "Wrong"})

    def deadline():
        raise gexc.DeadlineExceeded("Deadline Exceeded")

    with monkeypatch.context() as m:
        calls = wrap_commit(m, before=deadline, times=10**6)
        m.setattr("reconciler.backoff.delay", lambda attempt, **kw: 1.0)
        m.setattr("reconciler.sources.firestore.WRITE_WINDOW_S", 1.5, raising=False)
        (f,) = run_audit(lenient(settings), ["customers"], repair=Options(apply=True)).entities[0].findings
    assert 1 <= len(calls) <= 3, len(calls)  # at 0 s and about 1 s; at 2 s the window is closed
    assert f.repair.status == RepairStatus.FAILED and f.repair.reason.startswith("outcome unknown")
    assert [r[1] for r in trail(pg_dsn)] == ["pending"]


def test_a_refused_retry_after_an_ambiguous_attempt_that_cannot_be_read_back_is_unknown(customers_loaded, fs_client,
                                                                                        pg_dsn, monkeypatch):
    """The first attempt's reply is lost; the document still shows no write, so it is sent again; meanwhile the
    first attempt lands, so the retry's precondition fails; Firestore then cannot be read. Our own first attempt
    may be what changed the document: unknown (the row stays pending), not 'changed during the run'."""
    settings, people = customers_loaded
    fs_client.collection("customers").document(people[0].id).update({"lastName": "Wrong"})
    real_commit, real_get = FirestoreClient.commit, FirestoreClient.batch_get_documents
    calls, down = [], []

    def commit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise gexc.DeadlineExceeded("Deadline Exceeded")  # lost on the way: not applied (yet)
        real_commit(self, *args, **kwargs)  # the first attempt lands late
        down.append(True)
        return real_commit(self, *args, **kwargs)  # the retry: its precondition no longer holds

    def get(self, *args, **kwargs):
        if down:
            raise gexc.ServiceUnavailable("connection reset")
        return real_get(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(FirestoreClient, "commit", commit)
        m.setattr(FirestoreClient, "batch_get_documents", get)
        m.setattr("reconciler.backoff.delay", lambda attempt, **kw: 0.0)
        (f,) = run_audit(lenient(settings), ["customers"], repair=Options(apply=True)).entities[0].findings
    assert len(calls) == 2
    assert f.repair.status == RepairStatus.FAILED and f.repair.reason.startswith(
        "outcome unknown: 504 Deadline Exceeded, and the document could not be read back"), f.repair.reason
    assert [(r[0], r[1]) for r in trail(pg_dsn)] == [(f"customers/{people[0].id}", "pending")]
    age(pg_dsn)
    again = run_audit(lenient(settings), ["customers"], repair=Options(apply=True)).entities[0]
    assert [(x.key, x.status) for x in again.repair.resolved] == [(f"customers/{people[0].id}", "applied")]
    assert again.findings == ()


# ------------------------------------------------------------------------------------------ the run's own lock

def hold_the_runs_lock(monkeypatch, dsn: str, release_after: float | None) -> list:
    """Just before an apply takes its run's lock, another session takes it (as the server process of the run's
    lost connection would still hold it), releasing it after `release_after` seconds (None: never). Returns the
    holder's connections."""
    holders = []
    real = repair_module._Applier.__init__

    def init(self, rules, sides, settings, run_id):
        conn = psycopg.connect(dsn, autocommit=True)
        holders.append(conn)
        conn.execute("SELECT pg_advisory_lock(%s)", [repair_module._lock_key(run_id)])
        if release_after is not None:
            threading.Timer(release_after, conn.close).start()
        real(self, rules, sides, settings, run_id)

    monkeypatch.setattr(repair_module._Applier, "__init__", init)
    return holders


def lock_holders(dsn: str, run_id: str) -> list[str]:
    """The application names of the sessions that hold the run's lock."""
    key = repair_module._lock_key(run_id) & (2**64 - 1)
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' "
            "AND l.granted AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())", [key >> 32, key & (2**32 - 1)])]


def test_an_apply_waits_for_its_own_lock_and_holds_it_while_it_writes(customers_loaded, fs_client, pg_dsn,
                                                                      monkeypatch):
    settings, people = customers_loaded
    fs_client.collection("customers").document(people[0].id).update({"lastName": "Wrong"})
    hold_the_runs_lock(monkeypatch, pg_dsn, release_after=1.0)
    seen = []
    runs = []
    real = repair_module._Applier.apply

    def apply(self, batch):
        runs.append(self.run_id)
        seen.extend(lock_holders(pg_dsn, self.run_id))
        return real(self, batch)

    monkeypatch.setattr(repair_module._Applier, "apply", apply)
    e = run_audit(lenient(settings), ["customers"], repair=Options(apply=True)).entities[0]
    assert e.repair.done == 1 and runs
    assert seen == ["reconciler"], seen  # the run's own connection holds it: other runs see it applying


def test_an_apply_that_cannot_get_its_own_lock_writes_nothing(customers_loaded, fs_client, pg_dsn, monkeypatch):
    settings, people = customers_loaded
    fs_client.collection("customers").document(people[0].id).update({"lastName": "Wrong"})
    holders = hold_the_runs_lock(monkeypatch, pg_dsn, release_after=None)
    monkeypatch.setattr(repair_module, "LOCK_WAIT_S", 1.0, raising=False)
    calls = wrap_commit(monkeypatch)
    try:
        result = run_audit(lenient(settings), ["customers"], repair=Options(apply=True))
    finally:
        for h in holders:
            h.close()
    (e,) = result.entities
    assert calls == [] and e.error is not None and result.failed
    assert "cannot take this run's repair lock" in e.error and result.run_id in e.error, e.error
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute(f"SELECT count(*) FROM {LOG_TABLE}").fetchone()[0] == 0


# ------------------------------------------------------------------------------------------ the trail's JSON

def test_a_settled_row_tells_integers_beyond_double_precision_apart(customers_loaded, fs_client, pg_dsn, monkeypatch):
    """The write set 2**53 + 1; the document now holds 2**53 (someone else wrote it): as doubles they are equal,
    as the integers they are, not. The row is unknown, not applied."""
    settings, people = customers_loaded
    settings = lenient(settings)
    p = people[0]
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE customers SET custom_attributes = %s WHERE id = %s",
                     (json.dumps({"big": 2**53 + 1}), p.id))

    def die():
        raise ProcessDied()

    with monkeypatch.context() as m, pytest.raises(ProcessDied):
        wrap_commit(m, before=die)
        run_audit(settings, ["customers"], repair=Options(apply=True))
    fs_client.collection("customers").document(p.id).update({"customAttributes": {"big": 2**53}})
    age(pg_dsn)
    e = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
    assert [(x.key, x.status) for x in e.repair.resolved] == [(f"customers/{p.id}", "unknown")]
    assert fs_client.collection("customers").document(p.id).get().to_dict()["customAttributes"] == {"big": 2**53 + 1}


JSON_NUMBERS = st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False))


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(number=JSON_NUMBERS)
def test_property_a_number_in_the_trail_is_the_number_firestore_holds(pg_dsn, number):
    """What the trail keeps of a number (through a real jsonb column and the tool's own JSON loader) equals the
    number as Firestore gives it back, and no other: the next integer, or the next double, is another number."""
    conn = pg_source.connect(pg_dsn)
    try:
        stored = conn.execute("SELECT %s::jsonb", [repair_module._trail_json(number)]).fetchone()[0]
    finally:
        conn.close()
    doc = FsDoc({"n": number}, None)
    assert repair_module._holds({"op": "update", "set": {"n": stored}}, doc)
    other = number + 1 if isinstance(number, int) else math.nextafter(number, math.inf)
    if other != number:
        assert not repair_module._holds({"op": "update", "set": {"n": stored}}, FsDoc({"n": other}, None))


# ------------------------------------------------------------------------------------------ 8: refused values

@pytest.fixture
def sixty(pg_dsn, fs_client, fs_project):
    people = demo_customers.generate(60, seed=11)
    with psycopg.connect(pg_dsn) as conn:
        demo_customers.load(conn, fs_client, people)
    return people


def test_values_firestore_refuses_fail_their_records_and_the_others_are_repaired(sixty, fs_client, pg_dsn, tmp_path):
    people = sixty
    col = fs_client.collection("customers")
    batch = fs_client.batch()
    for p in people:
        batch.update(col.document(p.id), {"lastName": "Wrong"})
    batch.commit()
    empty_source = [p for p in people if p.document.get("sources")][:10]  # a map key from data: a field-path part
    rest = [p for p in people if p not in empty_source]
    big, empty_key, good = rest[:10], rest[10:20], rest[20:]
    bad = empty_source + big + empty_key
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("""UPDATE customers SET custom_attributes = '{"big": 1180591620717411303424}' WHERE id = ANY(%s)""",
                     ([p.id for p in big],))  # 2**70
        conn.execute("""UPDATE customers SET custom_attributes = '{"ok": 1, "": {"x": 1}}' WHERE id = ANY(%s)""",
                     ([p.id for p in empty_key],))
        conn.execute("UPDATE customer_sources SET source = '' WHERE id IN (SELECT DISTINCT ON (customer_id) id FROM "
                     "customer_sources WHERE customer_id = ANY(%s) ORDER BY customer_id, id)", ([p.id for p in empty_source],))
    config = tmp_path / "reconciler.toml"
    config.write_text(f'[audit]\nrules_dir = "{ROOT / "rules"}"\n[repair]\nmax_drift_ratio = 1.0\n')
    runner = CliRunner(env={"RECONCILER_PG_DSN": pg_dsn})
    before = {p.id: col.document(p.id).get().update_time for p in bad}

    dry = runner.invoke(main, ["--config", str(config), "--entity", "customers", "--repair", "--report-dir",
                               str(tmp_path / "dry"), "--no-progress"])
    assert dry.exit_code == 1, dry.output
    dry_report = json.loads((tmp_path / "dry" / "report.json").read_text())
    reasons = {f["key"]: f["repair"]["reason"] for f in dry_report["entities"][0]["findings"]}
    cannot = "firestore cannot hold this write: "
    assert {p.id: reasons[f"customers/{p.id}"] for p in bad} == {
        **{p.id: cannot + "integer 1180591620717411303424 at customAttributes.big is outside Firestore's 64-bit range"
           for p in big},
        **{p.id: cannot + "map key '' at customAttributes is not a field name (empty, or not text)" for p in empty_key},
        **{p.id: cannot + "map key '' at sources is not a field name (empty, or not text)" for p in empty_source}}
    assert all(reasons[f"customers/{p.id}"] == "dry run: not applied (use --apply)" for p in good)

    r = runner.invoke(main, ["--config", str(config), "--entity", "customers", "--repair", "--apply", "--report-dir",
                             str(tmp_path / "apply"), "--no-progress"])
    assert r.exit_code == 3, r.output
    report = json.loads((tmp_path / "apply" / "report.json").read_text())
    got = {f["key"]: (f["repair"]["status"], f["repair"]["reason"]) for f in report["entities"][0]["findings"]}
    assert got == {**{k: ("failed", why) for k, why in reasons.items() if why.startswith(cannot)},
                   **{f"customers/{p.id}": ("applied", "") for p in good}}
    assert report["entities"][0]["repair"]["done"] == 30 and report["entities"][0]["repair"]["failed"] == 30
    assert {p.id: col.document(p.id).get().update_time for p in bad} == before  # not written at all
    assert all(col.document(p.id).get().to_dict()["lastName"] == p.document["lastName"] for p in good)
    rows = trail(pg_dsn)
    assert sorted((r[0], r[1]) for r in rows) == sorted(
        [(f"customers/{p.id}", "failed") for p in bad] + [(f"customers/{p.id}", "applied") for p in good])


def test_a_value_the_client_cannot_encode_fails_that_write_alone(fs_client):
    docs = [fs_client.document(f"things/{i}") for i in range(3)]
    for d in docs[:2]:
        d.set({"n": 1})
    times = [d.get().update_time for d in docs[:2]]
    writer = FirestoreWriter(fs_client)
    outcomes = writer.commit([FsWrite("things/0", "update", {"n": 2**70}, times[0]),
                              FsWrite("things/1", "update", {"n": 2}, times[1]),
                              FsWrite("things/2", "create", {"s": "\ud800"})])
    assert [o[0] for o in outcomes] == ["failed", "applied", "failed"], outcomes
    assert "out of range" in outcomes[0][1] and "surrogates" in outcomes[2][1]
    assert [d.get().to_dict() for d in docs] == [{"n": 1}, {"n": 2}, None]


KEYS = st.one_of(st.text(max_size=4), st.sampled_from(["", "__x__", "__", "a.b", "`", "\ud800"]))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.just("lone \udc00 surrogate"), st.binary(max_size=6),
    st.datetimes(timezones=st.just(dt.timezone.utc)), st.datetimes(),
    st.builds(firestore.GeoPoint, st.floats(-90, 90), st.floats(-180, 180)),
)
VALUES = st.recursive(SCALARS, lambda children: st.one_of(st.lists(children, max_size=3),
                                                          st.dictionaries(KEYS, children, max_size=3)), max_leaves=8)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=VALUES)
def test_property_what_the_validator_allows_is_what_firestore_takes_and_gives_back(fs_client, value):
    """The allow-list against the real client and emulator: a value passes iff Firestore takes it, and what it
    takes it gives back exactly (holds(): the check that settles an ambiguous commit)."""
    ref = fs_client.document("values/v")
    problem = value_problem(value)
    try:
        ref.set({"v": value})
    except (ValueError, TypeError, gexc.InvalidArgument) as exc:
        assert problem is not None, f"Firestore refused what the validator allows: {exc}"
        return
    # one refusal on purpose: a timestamp without a zone names no instant (the client would take it as UTC)
    assert problem is None or problem.endswith("has no time zone"), f"Firestore took what the validator refuses: {problem}"
    if problem is not None:
        return
    snap = ref.get()
    assert holds(FsWrite("values/v", "create", {"v": value}), FsDoc(snap.to_dict(), snap.update_time))


# ------------------------------------------------------------------------------------------ 2: written whole

def test_a_value_written_whole_keeps_what_already_equals_the_truth_in_firestores_types(customers_loaded, fs_client,
                                                                                      pg_dsn):
    settings, people = customers_loaded
    p = people[0]
    truth = {"a": 1.0, "b": 2, "c": "x", "d": 5, "n": {"p": 3.0, "q": "y"}, "l": [1.0, 2]}
    held = {"a": 1, "b": 2.0, "c": "x", "d": 6, "n": {"p": 3, "q": "z"}, "l": [1, 3]}
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE customers SET custom_attributes = %s WHERE id = %s", (json.dumps(truth), p.id))
    ref = fs_client.collection("customers").document(p.id)
    ref.update({"customAttributes": held})
    e = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
    (f,) = e.findings
    assert f.repair.status == RepairStatus.APPLIED
    after = ref.get().to_dict()["customAttributes"]
    assert after == {"a": 1, "b": 2.0, "c": "x", "d": 5, "n": {"p": 3, "q": "y"}, "l": [1, 2]}
    kinds = {k: type(v) for k, v in after.items()}
    assert (kinds["a"], kinds["b"], type(after["n"]["p"]), type(after["l"][0])) == (int, float, int, int)
    assert drifted(settings) == set()


# ------------------------------------------------------------------------------------------ the report

def test_the_report_lists_settled_rows_with_their_outcome():
    from reconciler.result import EntityResult, Counts, RepairAction, RepairSummary, Resolved, RunResult

    t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    resolved = (Resolved("run-a", "customers/1", RepairAction.UPDATE, "unknown", "overwritten since"),)
    earlier = (Resolved("r", "customers/2", RepairAction.UPDATE, "applied", ""),
               Resolved("r", "customers/3", RepairAction.CREATE, "failed", "refused"))
    e = EntityResult("customers", "postgres", Counts(), (), False, repair=RepairSummary(
        "firestore", True, resolved=resolved, earlier=earlier))
    report = to_dict(RunResult("r", "repair", t, t, (e,)))
    assert report["entities"][0]["repair"]["resolved"] == [
        {"run_id": "run-a", "key": "customers/1", "action": "update", "status": "unknown", "reason": "overwritten since"}]
    html = render_html(report)
    assert "update customers/1 (run run-a): unknown: overwritten since" in html
    assert "update customers/2: applied</li>" in html and "create customers/3: failed: refused" in html
    from reconciler.cli import _summary

    text = _summary(RunResult("r", "repair", t, t, (e,)))
    assert "settled update customers/1 (left pending by run run-a): unknown (overwritten since)" in text
    assert "1 of them written before the Postgres connection was lost" in text
    assert "create customers/3: failed before the reconnect (refused)" in text

