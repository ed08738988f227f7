"""Repair toward Postgres (a small orders entity: Firestore is the source of truth), on real Postgres and the
real emulator. The rules and schema are fixtures: tests/fixtures/rules/orders.yaml, tests/fixtures/schema/orders.sql."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
from pathlib import Path

import psycopg
import pytest
from google.cloud.firestore_v1 import GeoPoint
from psycopg.types.json import Jsonb

from reconciler import repair as repair_module
from reconciler.config import load_settings
from reconciler.engine import run_audit
from reconciler.repair import LOG_TABLE, Options
from reconciler.report import to_dict
from reconciler.result import RepairAction, RepairStatus

FIXTURES = Path(__file__).parent / "fixtures"
N = 12


def order(i: int, rng: random.Random) -> tuple[dict, dict[str, list[dict]], dict[str, dict]]:
    """One order: its Firestore document, its Postgres rows per table, its fulfillment documents."""
    oid = f"ord_{1000 + i}"
    created = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=i, microseconds=rng.randrange(10**6))
    items = [{"id": f"li_{i}_{k}", "title": f"Item {k}", "quantity": rng.randint(1, 5),
              "price": f"{rng.randint(100, 9999) / 100:.2f}", "sku_internal": f"webhook-{k}"} for k in range(rng.randint(1, 3))]
    total = f"{sum(float(x['price']) * x['quantity'] for x in items):.2f}"
    doc = {"order_number": 1000 + i, "email": f"buyer{i}@example.com", "financial_status": "paid",
           "current_total_price": total, "currency": "EUR", "created_at": created, "tags": ["web", f"t{i % 3}"],
           "note_attributes": {"gift": i % 2 == 0, "channel": {"name": "web"}},
           "line_items": items, "customer": {"id": f"cus_{i}", "first_name": "Ana", "last_name": f"N{i}"},
           "webhook_id": f"wh_{i}"}  # fields the rules do not map
    rows = {
        "orders": [{"id": oid, "order_number": 1000 + i, "email": doc["email"], "financial_status": "paid",
                    "current_total_price": total, "currency": "EUR", "created_at": created, "tags": doc["tags"],
                    "note_attributes": Jsonb(doc["note_attributes"]), "internal_flag": f"keep-{i}"}],
        "order_line_items": [{"order_id": oid, "id": x["id"], "title": x["title"], "quantity": x["quantity"],
                              "price": x["price"], "warehouse": "berlin"} for x in items],
        "order_customers": [{"order_id": oid, "customer_id": f"cus_{i}", "first_name": "Ana", "last_name": f"N{i}",
                             "internal_flag": "crm"}],
        "order_fulfillments": [],
    }
    fulfillments = {}
    for k in range(i % 3):
        fid = f"ful_{i}_{k}"
        shipped = created + dt.timedelta(days=k + 1)
        fulfillments[fid] = {"status": "success", "tracking_number": f"TRK{i}{k}", "shipped_at": shipped}
        rows["order_fulfillments"].append({"order_id": oid, "id": fid, "status": "success",
                                           "tracking_number": f"TRK{i}{k}", "shipped_at": shipped})
    return doc, rows, fulfillments


def insert(conn: psycopg.Connection, table: str, row: dict) -> None:
    conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})", list(row.values()))


@pytest.fixture
def orders_loaded(pg_dsn, fs_client, fs_project):
    rng = random.Random(5)
    data = [order(i, rng) for i in range(N)]
    with psycopg.connect(pg_dsn) as conn:
        conn.execute((FIXTURES / "schema" / "orders.sql").read_text())
        for _, rows, _ in data:
            for table in ("orders", "order_line_items", "order_customers", "order_fulfillments"):
                for row in rows[table]:
                    insert(conn, table, row)
    batch = fs_client.batch()
    for i, (doc, _, fulfillments) in enumerate(data):
        ref = fs_client.collection("orders").document(f"ord_{1000 + i}")
        batch.set(ref, doc)
        for fid, f in fulfillments.items():
            batch.set(ref.collection("fulfillments").document(fid), f)
    batch.commit()
    settings = load_settings(None, env={"RECONCILER_PG_DSN": pg_dsn, "GOOGLE_CLOUD_PROJECT": fs_project,
                                        "RECONCILER_RULES_DIR": str(FIXTURES / "rules")})
    settings = dataclasses.replace(settings, repair=dataclasses.replace(settings.repair, max_drift_ratio=1.0))
    return settings, data


def findings(settings) -> set[tuple[str, str]]:
    e = run_audit(settings, ["orders"]).entities[0]
    assert e.error is None, e.error
    return {(f.key, f.kind.value) for f in e.findings}


def unmapped_columns(dsn: str) -> dict[tuple, str | None]:
    """The Postgres-only columns of every row, by (table, key)."""
    with psycopg.connect(dsn) as conn:
        return {**{("orders", r[0]): r[1] for r in conn.execute("SELECT id, internal_flag FROM orders")},
                **{("order_line_items", r[0], r[1]): r[2]
                   for r in conn.execute("SELECT order_id, id, warehouse FROM order_line_items")},
                **{("order_customers", r[0]): r[1] for r in conn.execute("SELECT order_id, internal_flag FROM order_customers")}}


def firestore_dump(client) -> dict:
    out = {s.reference.path: (s.to_dict(), s.update_time) for s in client.collection("orders").stream()}
    out.update({s.reference.path: (s.to_dict(), s.update_time) for s in client.collection_group("fulfillments").stream()})
    return out


def test_seed_shaped_orders_audit_clean(orders_loaded):
    settings, data = orders_loaded
    e = run_audit(settings, ["orders"]).entities[0]
    assert e.error is None and e.findings == ()
    assert e.counts.matched == N + sum(len(f) for _, _, f in data)


def test_every_finding_kind_is_repaired_toward_postgres_and_a_second_run_does_nothing(orders_loaded, pg_dsn, fs_client):
    settings, data = orders_loaded
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE orders SET current_total_price = 0.01, tags = '{x}' WHERE id = 'ord_1000'")  # scalar
        conn.execute("UPDATE orders SET note_attributes = '{\"gift\": true}' WHERE id = 'ord_1001'")  # jsonb map
        conn.execute("UPDATE order_line_items SET quantity = 99 WHERE order_id = 'ord_1002'")  # array element
        conn.execute("DELETE FROM order_line_items WHERE order_id = 'ord_1003'")  # elements missing
        insert(conn, "order_line_items", {"order_id": "ord_1004", "id": "li_extra", "title": "x", "quantity": 1})
        conn.execute("UPDATE order_customers SET last_name = 'Changed' WHERE order_id = 'ord_1005'")  # nested map
        conn.execute("DELETE FROM order_customers WHERE order_id = 'ord_1006'")  # nested map missing
        conn.execute("DELETE FROM order_fulfillments WHERE order_id = 'ord_1004'")  # subcollection documents
        conn.execute("UPDATE order_fulfillments SET status = 'failure' WHERE order_id = 'ord_1005'")
        for table in ("order_line_items", "order_customers", "order_fulfillments"):  # a whole order missing
            conn.execute(f"DELETE FROM {table} WHERE order_id = 'ord_1008'")
        conn.execute("DELETE FROM orders WHERE id = 'ord_1008'")
        insert(conn, "orders", {"id": "ord_9999", "order_number": 9999, "email": "orphan@example.com"})  # orphan
        insert(conn, "order_line_items", {"order_id": "ord_9999", "id": "li_o", "quantity": 1})
        insert(conn, "order_fulfillments", {"order_id": "ord_9999", "id": "ful_o", "status": "x"})
    fs_client.document("orders/ord_1007").update({"email": "new@example.com", "customer.first_name": "Bea"})
    drifted = findings(settings)
    assert {k for k, kind in drifted if kind == "missing_in_firestore"} == {
        "orders/ord_9999", "orders/ord_9999/fulfillments/ful_o"}
    assert ("orders/ord_1008", "missing_in_postgres") in drifted and len(drifted) >= 12
    kept = unmapped_columns(pg_dsn)
    fs_before = firestore_dump(fs_client)

    e = run_audit(settings, ["orders"], repair=Options(apply=True, delete_orphans=True)).entities[0]
    assert not e.failed, [(f.key, f.repair) for f in e.findings]
    assert {f.key for f in e.findings if f.repair.status == RepairStatus.APPLIED} == {k for k, _ in drifted}
    actions = {f.key: f.repair.action for f in e.findings}
    assert actions["orders/ord_1008"] == RepairAction.CREATE and actions["orders/ord_9999"] == RepairAction.DELETE
    orphan = next(f for f in e.findings if f.key == "orders/ord_9999")
    assert orphan.repair.deleted["orders"][0]["email"] == "orphan@example.com"  # the report keeps a full copy
    assert orphan.repair.deleted["order_line_items"][0]["id"] == "li_o"

    assert findings(settings) == set()  # repair, then audit: clean
    assert firestore_dump(fs_client) == fs_before  # the source of truth was not touched
    now = unmapped_columns(pg_dsn)  # Postgres-only columns of every row the repair kept are unchanged
    deleted = {("orders", "ord_9999"), ("order_line_items", "ord_9999", "li_o"), ("order_line_items", "ord_1004", "li_extra")}
    assert set(kept) - set(now) == deleted
    assert {k: now[k] for k in kept if k in now} == {k: v for k, v in kept.items() if k not in deleted}
    assert len(now) > len(kept) - len(deleted)  # and the rows the repair created are there too
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM order_line_items WHERE order_id = 'ord_1003'").fetchone()[0] == \
               len(data[3][0]["line_items"])
        assert conn.execute("SELECT count(*) FROM orders WHERE id = 'ord_9999'").fetchone()[0] == 0
        logged = conn.execute(f"SELECT entity_id, postgres_status, firestore_status FROM {LOG_TABLE}").fetchall()
    assert {r[0] for r in logged} == {k for k, _ in drifted} and {r[1:] for r in logged} == {("applied", "source")}

    again = run_audit(settings, ["orders"], repair=Options(apply=True, delete_orphans=True)).entities[0]
    assert again.repair.planned == 0 and not again.has_drift


def test_a_postgres_record_changed_between_diff_and_apply_is_skipped(orders_loaded, pg_dsn, fs_client, monkeypatch):
    settings, _ = orders_loaded
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE orders SET email = 'stale@example.com' WHERE id IN ('ord_1000', 'ord_1001', 'ord_1002')")
    original = repair_module._Applier.apply

    def concurrent_writers_then_apply(self, batch):
        with psycopg.connect(pg_dsn) as conn:  # the listener writes Postgres...
            conn.execute("UPDATE order_line_items SET quantity = 42 WHERE order_id = 'ord_1000'")
        fs_client.document("orders/ord_1001").update({"financial_status": "refunded"})  # ...the webhook, Firestore
        return original(self, batch)

    monkeypatch.setattr(repair_module._Applier, "apply", concurrent_writers_then_apply)
    e = run_audit(settings, ["orders"], repair=Options(apply=True)).entities[0]
    by_key = {f.key: f.repair for f in e.findings}
    assert by_key["orders/ord_1000"].reason.startswith("changed_during_run: postgres")
    assert by_key["orders/ord_1001"].reason.startswith("changed_during_run: firestore")
    assert by_key["orders/ord_1002"].status == RepairStatus.APPLIED
    with psycopg.connect(pg_dsn) as conn:
        emails = dict(conn.execute("SELECT id, email FROM orders WHERE id IN ('ord_1000', 'ord_1001', 'ord_1002')"))
        quantities = {r[0] for r in conn.execute("SELECT quantity FROM order_line_items WHERE order_id = 'ord_1000'")}
    assert emails == {"ord_1000": "stale@example.com", "ord_1001": "stale@example.com", "ord_1002": "buyer2@example.com"}
    assert quantities == {42}  # the concurrent write is kept, not overwritten


def test_a_concurrent_commit_inside_the_write_aborts_it(orders_loaded, pg_dsn, monkeypatch):
    """The SERIALIZABLE transaction: a commit to a row the repair read, landing after the re-read and before
    the repair commits, makes Postgres refuse the repair's commit: it is skipped, never half-applied."""
    settings, _ = orders_loaded
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE orders SET email = 'stale@example.com' WHERE id = 'ord_1000'")
        conn.execute("UPDATE order_customers SET last_name = 'Stale' WHERE order_id = 'ord_1000'")
    original = repair_module.pg_source.upsert_row
    done = []

    def racing_upsert(conn, table, key, values, types):
        if not done:
            done.append(True)
            with psycopg.connect(pg_dsn, autocommit=True) as other:
                other.execute("UPDATE order_customers SET first_name = 'Racer' WHERE order_id = 'ord_1000'")
        return original(conn, table, key, values, types)

    monkeypatch.setattr(repair_module.pg_source, "upsert_row", racing_upsert)
    (f,) = run_audit(settings, ["orders"], repair=Options(apply=True)).entities[0].findings
    assert f.repair.status == RepairStatus.SKIPPED and "serialization" in f.repair.reason
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT email FROM orders WHERE id = 'ord_1000'").fetchone()[0] == "stale@example.com"
        assert conn.execute("SELECT first_name, last_name FROM order_customers WHERE order_id = 'ord_1000'"
                            ).fetchone() == ("Racer", "Stale")


def test_postgres_orphans_stay_without_delete_orphans(orders_loaded, pg_dsn):
    settings, _ = orders_loaded
    with psycopg.connect(pg_dsn) as conn:
        insert(conn, "orders", {"id": "ord_9999", "order_number": 9999})
    (f,) = run_audit(settings, ["orders"], repair=Options(apply=True)).entities[0].findings
    assert f.repair.action == RepairAction.SKIP and "orphan" in f.repair.reason
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE id = 'ord_9999'").fetchone()[0] == 1


def test_a_write_postgres_rejects_is_failed_rolled_back_and_logged(orders_loaded, pg_dsn, fs_client):
    settings, _ = orders_loaded
    fs_client.document("orders/ord_1000").update({"order_number": None, "email": "x@example.com"})  # NOT NULL column
    result = run_audit(settings, ["orders"], repair=Options(apply=True))
    (f,) = result.entities[0].findings
    assert f.repair.status == RepairStatus.FAILED and "order_number" in f.repair.reason
    assert result.failed
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT email FROM orders WHERE id = 'ord_1000'").fetchone()[0] == "buyer0@example.com"
        assert conn.execute(f"SELECT postgres_status, error_message IS NOT NULL FROM {LOG_TABLE}").fetchall() == [
            ("failed", True)]


# ------------------------------------------------------------------------------------------ values jsonb cannot hold

def test_a_value_inside_json_that_jsonb_cannot_hold_fails_its_record_with_the_field_path(orders_loaded, pg_dsn,
                                                                                        fs_client, tmp_path):
    """note_attributes is jsonb without `json:` rules. A Timestamp, a GeoPoint, a reference or bytes in it
    (Firestore is the truth) cannot be written as what they are: as text or an array they would never equal the
    truth, and every run would write them again. Each such record fails with the field path and why; the others
    are repaired, the report is written."""
    settings, _ = orders_loaded
    placed = dt.datetime(2025, 3, 1, 12, tzinfo=dt.timezone.utc)
    bad = {
        "ord_1000": ({"gift": True, "placed_at": placed}, "note_attributes.placed_at: a timestamp inside JSON"),
        "ord_1001": ({"where": GeoPoint(52.5, 13.4)}, "note_attributes.where: a GeoPoint inside JSON"),
        "ord_1002": ({"by": fs_client.document("users/u1")}, "note_attributes.by: a document reference inside JSON"),
        "ord_1003": ({"sig": b"\x00\x01"}, "note_attributes.sig: bytes inside JSON"),
        "ord_1004": ([placed], "note_attributes[0]: a timestamp inside JSON"),  # jsonb holding an array
        "ord_1006": ({"rate": math.nan}, "note_attributes.rate: nan inside JSON"),
    }
    for oid, (value, _) in bad.items():
        fs_client.document(f"orders/{oid}").update({"note_attributes": value})
    fs_client.document("orders/ord_1005").update({"email": "new@example.com"})
    held = note_attributes(pg_dsn)

    for attempt in (1, 2):  # and a second run does not write them either
        result = run_audit(settings, ["orders"], repair=Options(apply=True))
        (e,) = result.entities
        assert e.error is None, e.error
        got = {f.key: (f.repair.status, f.repair.reason) for f in e.findings}
        for oid, (_, why) in bad.items():
            status, reason = got[f"orders/{oid}"]
            assert status == RepairStatus.FAILED and reason.startswith(f"postgres cannot hold this write: {why}"), reason
        assert "`json: {timestamps: iso}`" in got["orders/ord_1000"][1]
        assert got.get("orders/ord_1005", (RepairStatus.APPLIED,))[0] == RepairStatus.APPLIED
        assert result.failed and e.repair.failed == len(bad)
        assert to_dict(result)["entities"][0]["repair"]["failed"] == len(bad)
    assert note_attributes(pg_dsn) == held  # not written at all
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT email FROM orders WHERE id = 'ord_1005'").fetchone()[0] == "new@example.com"
        statuses = conn.execute(f"SELECT entity_id, postgres_status FROM {LOG_TABLE}").fetchall()
    assert sorted(statuses) == sorted([(f"orders/{oid}", "failed") for oid in bad] * 2 + [("orders/ord_1005", "applied")])


def note_attributes(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT id, note_attributes::text FROM orders"))


# ------------------------------------------------------------------------------------------ only what differs

def test_only_the_columns_that_differ_are_written_and_the_rest_keeps_postgres_form(orders_loaded, pg_dsn, fs_client,
                                                                                   tmp_path):
    """A row holding NaN where the truth does too is not rewritten; nor is a column that equals the truth, such as
    jsonb text naming the instant of the truth's Timestamp (`json: {timestamps: iso}`), which keeps its own text
    also inside a jsonb value that is rewritten for another difference."""
    _, data = orders_loaded
    rules = tmp_path / "rules"
    rules.mkdir()
    text = (FIXTURES / "rules" / "orders.yaml").read_text()
    assert "  note_attributes:\n" in text
    (rules / "orders.yaml").write_text(text.replace("  note_attributes:\n", "  note_attributes: {json: {timestamps: iso}}\n"))
    settings = load_settings(None, env={"RECONCILER_PG_DSN": pg_dsn, "GOOGLE_CLOUD_PROJECT": fs_client.project,
                                        "RECONCILER_RULES_DIR": str(rules)})
    settings = dataclasses.replace(settings, repair=dataclasses.replace(settings.repair, max_drift_ratio=1.0))
    at_text = "2025-01-01T10:00:00+01:00"  # what Postgres holds; Firestore has the Timestamp of that instant
    at = dt.datetime(2025, 1, 1, 9, tzinfo=dt.timezone.utc)
    with psycopg.connect(pg_dsn) as conn:
        for oid in ("ord_1000", "ord_1001"):
            conn.execute("UPDATE orders SET note_attributes = note_attributes || jsonb_build_object('at', %s::text) "
                         "WHERE id = %s", (at_text, oid))
        conn.execute("UPDATE order_line_items SET price = 'NaN' WHERE order_id = 'ord_1000'")
        conn.execute("UPDATE orders SET email = 'stale@example.com' WHERE id = 'ord_1000'")
    fs_client.document("orders/ord_1000").update({
        "note_attributes.at": at, "line_items": [dict(x, price=math.nan) for x in data[0][0]["line_items"]]})
    fs_client.document("orders/ord_1001").update({"note_attributes.at": at, "note_attributes.gift": True})

    (e,) = run_audit(settings, ["orders"], repair=Options()).entities
    writes = {f.key: f.repair.writes for f in e.findings}
    assert writes["orders/ord_1000"] == ({"side": "postgres", "op": "upsert", "table": "orders",
                                          "key": {"id": "ord_1000"}, "values": {"email": "buyer0@example.com"}},)
    assert writes["orders/ord_1001"] == ({"side": "postgres", "op": "upsert", "table": "orders", "key": {"id": "ord_1001"},
                                          "values": {"note_attributes": {"gift": True, "channel": {"name": "web"},
                                                                         "at": at_text}}},)
    (e,) = run_audit(settings, ["orders"], repair=Options(apply=True)).entities
    assert not e.failed and e.repair.done == 2
    with psycopg.connect(pg_dsn) as conn:
        assert dict(conn.execute("SELECT id, note_attributes->>'at' FROM orders WHERE id IN ('ord_1000', 'ord_1001')")) \
            == {"ord_1000": at_text, "ord_1001": at_text}
        assert conn.execute("SELECT (note_attributes->>'gift')::bool FROM orders WHERE id = 'ord_1001'").fetchone()[0]
    assert run_audit(settings, ["orders"]).entities[0].findings == ()
