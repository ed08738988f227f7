"""Toward Postgres with the shipped rules (rules/orders.yaml, seed 001's orders: Firestore is the truth): a value
inside a jsonb column that jsonb cannot hold as what it is fails its record with the field path, instead of being
written as text that never equals the truth (and written again on every run). On real Postgres and the emulator."""

from __future__ import annotations

import datetime as dt

import psycopg
from test_entities import orders_db  # noqa: F401  (a fixture: seed 001's orders under rules/orders.yaml)

from reconciler.repair import LOG_TABLE, Options
from reconciler.result import RepairStatus


def test_a_timestamp_in_a_jsonb_array_without_json_rules_fails_its_record_and_is_never_written(orders_db):  # noqa: F811
    db = orders_db
    bad, good = list(db.data.docs)[:2]
    when = dt.datetime(2025, 5, 4, 3, 2, 1, tzinfo=dt.timezone.utc)
    db.fs.document(bad).update({"note_attributes": [{"name": "placed_at", "value": when}]})  # the webhook's own type
    db.fs.document(good).update({"note": "gift wrap"})
    with psycopg.connect(db.dsn) as conn:
        held = conn.execute("SELECT note_attributes::text FROM orders WHERE id = %s", (int(bad.split("/")[1]),)).fetchone()

    for attempt in (1, 2):
        e = db.audit("orders", repair=Options(apply=True))
        got = {f.key: (f.repair.status, f.repair.reason) for f in e.findings}
        status, reason = got[bad]
        assert status == RepairStatus.FAILED, reason
        assert reason.startswith("postgres cannot hold this write: note_attributes[0].value: a timestamp inside JSON")
        assert "`json: {timestamps: iso}`" in reason
        assert got.get(good, (RepairStatus.APPLIED,))[0] == RepairStatus.APPLIED
    with psycopg.connect(db.dsn) as conn:
        assert conn.execute("SELECT note_attributes::text FROM orders WHERE id = %s",
                            (int(bad.split("/")[1]),)).fetchone() == held
        assert conn.execute("SELECT note FROM orders WHERE id = %s", (int(good.split("/")[1]),)).fetchone()[0] == \
            "gift wrap"
        assert sorted(conn.execute(f"SELECT entity_id, postgres_status FROM {LOG_TABLE}").fetchall()) == sorted(
            [(bad, "failed"), (bad, "failed"), (good, "applied")])
