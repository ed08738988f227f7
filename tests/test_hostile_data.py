"""Hostile and odd data on both sides becomes findings, never a crash; reports stay valid JSON and safe HTML.

Real Postgres (seed 000 schema) and the real Firestore emulator. Every case names the record it spoils and
the finding it must produce (path and kind), so a case that silently stopped being a finding fails here.
"""

from __future__ import annotations

import dataclasses
import json
import math

import psycopg
import pytest
from click.testing import CliRunner
from google.cloud import firestore
from google.cloud.firestore_v1 import GeoPoint
from google.cloud.firestore_v1 import _helpers as fs_helpers

from reconciler import engine
from reconciler.cli import main
from reconciler.keys import Scope
from reconciler.mapping import PostgresMapper, shape_of, to_firestore
from reconciler.repair import Options
from reconciler.result import RepairStatus
from reconciler.sources import postgres as pg_source
from reconciler.values import PostgresOnly

NUL_EMOJI = "nul\x00byte 🙂 \u202e rtl"


def _nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for i in range(depth - 1):
        value = {f"l{depth - 1 - i}": value}
    return value


def _strict_json(text: str):
    """json.loads that refuses NaN/Infinity, which are not JSON (Python writes them by default)."""
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_hostile_firestore_documents_and_odd_postgres_rows_become_findings(customers_loaded, fs_client, pg_dsn,
                                                                          tmp_path):
    settings, people = customers_loaded
    col = fs_client.collection("customers")
    with_metrics = [p for p in people if p.document.get("metrics") and p.tables.get("customer_metrics")]
    with_addr = [p for p in people if p.subcollections.get("addresses")]
    ids = [p.id for p in people]
    taken = {p.id for p in with_metrics[:4]} | {with_addr[0].id}
    rest = [i for i in ids if i not in taken]
    m1, m2, m3 = (p.id for p in with_metrics[:3])
    addr_parent = with_addr[0].id
    addr_id = next(iter(with_addr[0].subcollections["addresses"]))
    huge = "x" * 1_040_000  # the document stays just under Firestore's 1 MiB limit

    # Firestore: values of the wrong kind, non-finite numbers, unusual types, big and deep documents
    col.document(m1).update({"metrics.totalSpent": "12.50 USD",          # string where a number is expected
                             "metrics.churnProbability": float("nan"),
                             "metrics.lifetimeValue": float("inf"),
                             "metrics.netRevenue": float("-inf")})
    col.document(m2).update({"tags": {"not": "an array"},                # map where an array is expected
                             "segments": {"also": "a map"},              # map where a set of maps is expected
                             "notes": b"\x00\xffbytes"})                 # bytes where text is expected
    col.document(m3).update({"email": fs_client.document("other/doc"),  # a reference where a string is expected
                             "phone": GeoPoint(1.5, 2.5),                # a GeoPoint where a string is expected
                             "metrics": "flat string"})                  # a string where a map is expected
    col.document(with_metrics[3].id).update({"metrics.totalSpent": float("nan")})  # NaN on both sides: equal
    col.document(rest[0]).update({"firstName": NUL_EMOJI})
    col.document(rest[1]).update({"internalNotes": huge})
    col.document(rest[2]).update({"customAttributes": _nested(19)})    # 20 levels deep with the field itself
    col.document(rest[3]).update({"createdAt": "2024-01-01T00:00:00Z"})  # text where a timestamp is expected
    col.document(addr_parent).collection("addresses").document(addr_id).update(
        {"geoPoint": "51.5,-0.1", "city": ["a", "list"]})               # text where a GeoPoint is, list for text
    col.document(rest[4]).update({"risk": [1, 2, 3]})                   # an array where a map is expected
    # documents whose IDs are odd (they exist only in Firestore)
    odd_ids = ["__id7__", "🙂", "<img src=x onerror=alert(1)>", "a b"]
    for odd in odd_ids:
        col.document(odd).set({"email": "<script>alert('x')</script>", "firstName": NUL_EMOJI})

    # Postgres: NULL where NOT NULL looks likely, JSONB of every JSON type and beyond double range
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE customer_metrics SET total_spent = 'NaN' WHERE customer_id = %s", (with_metrics[3].id,))
        conn.execute("UPDATE customers SET status = NULL, created_at = NULL, customer_type = NULL WHERE id = %s",
                     (rest[5],))
        conn.execute("""UPDATE customers SET custom_attributes = '"just a string"'::jsonb WHERE id = %s""", (rest[6],))
        conn.execute("UPDATE customers SET custom_attributes = '[1, \"two\", null, {\"x\": []}]'::jsonb "
                     "WHERE id = %s", (rest[7],))
        conn.execute("UPDATE customers SET custom_attributes = '{\"big\": 1e400, \"tiny\": 1e-400}'::jsonb "
                     "WHERE id = %s", (rest[8],))
        conn.execute("UPDATE customers SET custom_attributes = 'null'::jsonb WHERE id = %s", (rest[9],))
        conn.execute("UPDATE customers SET tags = ARRAY[NULL, '', '<b>bold</b>']::text[] WHERE id = %s", (rest[10],))

    out = tmp_path / "report"
    runner = CliRunner(env={"RECONCILER_PG_DSN": pg_dsn})
    res = runner.invoke(main, ["--entity", "customers", "--report-dir", str(out)], catch_exceptions=False)
    assert res.exit_code == 1, res.output  # drift, not a failure
    report = _strict_json((out / "report.json").read_text())
    (entity,) = report["entities"]
    assert entity["error"] is None
    found = {f["key"]: {d["path"]: d for d in f["fields"]} | {"": f["kind"]} for f in entity["findings"]}

    def field(doc_id: str, path: str, sub: str = "") -> dict:
        key = f"customers/{doc_id}{sub}"
        assert key in found, f"no finding for {key}"
        assert path in found[key], f"{key}: no {path} in {sorted(found[key])}"
        return found[key][path]

    assert field(m1, "metrics.totalSpent")["kind"] == "type_mismatch"
    assert field(m1, "metrics.totalSpent")["firestore"] == "12.50 USD"
    for path, text in (("metrics.churnProbability", "nan"), ("metrics.lifetimeValue", "inf"),
                       ("metrics.netRevenue", "-inf")):
        d = field(m1, path)
        assert d["firestore"] == text and d["kind"] == "value", d
    assert "metrics.totalSpent" not in found.get(f"customers/{with_metrics[3].id}", {})
    assert field(m2, "tags")["kind"] == "type_mismatch"
    assert field(m2, "segments")["kind"] == "type_mismatch"
    assert field(m2, "notes")["firestore"] == {"bytes_base64": "AP9ieXRlcw=="}
    assert field(m2, "notes")["kind"] == "type_mismatch"
    assert field(m3, "email")["firestore"] == {"reference": "other/doc"}
    assert field(m3, "email")["kind"] == "type_mismatch"
    assert field(m3, "phone")["firestore"] == {"latitude": 1.5, "longitude": 2.5}
    assert field(m3, "phone")["kind"] == "type_mismatch"
    assert field(m3, "metrics")["kind"] == "type_mismatch"
    assert field(rest[0], "firstName")["firestore"] == NUL_EMOJI
    assert field(rest[1], "internalNotes")["firestore"] == huge
    assert field(rest[2], "customAttributes.l1")["firestore"] == _nested(19)["l1"]
    assert field(rest[3], "createdAt")["kind"] == "type_mismatch"
    sub = f"/addresses/{addr_id}"
    assert field(addr_parent, "geoPoint", sub)["kind"] == "type_mismatch"
    assert field(addr_parent, "city", sub)["kind"] == "type_mismatch"
    assert field(rest[4], "risk")["kind"] == "type_mismatch"
    for odd in odd_ids:
        assert found[f"customers/{odd}"][""] == "missing_in_postgres"
    assert field(rest[5], "status")["postgres"] is None
    assert field(rest[5], "createdAt")["postgres"] is None
    assert field(rest[6], "customAttributes")["postgres"] == "just a string"
    assert field(rest[6], "customAttributes")["kind"] == "type_mismatch"
    assert field(rest[7], "customAttributes")["kind"] == "type_mismatch"
    assert field(rest[8], "customAttributes.big")["postgres"] == 10 ** 400  # exact: jsonb keeps numerics whole
    assert field(rest[10], "tags")["postgres"] == [None, "", "<b>bold</b>"]
    assert report["entities"][0]["counts"]["missing_in_postgres"] == len(odd_ids)
    # JSON null in a jsonb column reads as NULL: Firestore's map is then all the difference
    assert {d["path"] for d in found[f"customers/{rest[9]}"].values() if isinstance(d, dict)} == {"customAttributes"}, found[f"customers/{rest[9]}"]

    page = (out / "report.html").read_text()
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>bold" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "\x00" not in page  # a NUL is shown escaped, not sent to the browser
    assert "type mismatch" in page

    # the same data through repair planning (a dry run) is no crash either
    res = runner.invoke(main, ["--entity", "customers", "--repair", "--force", "--report-dir", str(out)],
                        catch_exceptions=False)
    assert res.exit_code == 1, res.output
    report = _strict_json((out / "report.json").read_text())
    assert report["entities"][0]["repair"]["planned"] > 0
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in _walk(report))


def _walk(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)
    else:
        yield value


def test_values_python_cannot_hold_are_findings_on_their_field(customers_loaded, fs_client, pg_dsn):
    """timestamptz 'infinity', a BC date, year 10000, a jsonb number beyond double range: each is a type_mismatch
    on its own field (also where Firestore lacks the field), never a failed entity; what repair would write to
    Firestore keeps them as values.PostgresOnly, which no Firestore type holds (the client refuses to encode it)."""
    settings, people = customers_loaded
    with_metrics = [p for p in people if p.tables.get("customer_metrics")]
    a, b, c = (p.id for p in with_metrics[:3])
    huge = "1" + "0" * 400 + ".5"  # jsonb prints it whole; as a double it would be inf
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE customers SET created_at = 'infinity', last_active_at = '-infinity', "
                     "deleted_at = '10000-01-01 00:00:00+00' WHERE id = %s", (a,))
        conn.execute("UPDATE customer_metrics SET first_order_date = '0044-03-15 BC', last_order_date = '10000-01-01' "
                     "WHERE customer_id = %s", (b,))
        conn.execute(f"UPDATE customers SET custom_attributes = '{{\"huge\": {huge}, \"big\": 1e400}}' WHERE id = %s",
                     (c,))
    fs_client.collection("customers").document(a).update({"deletedAt": firestore.DELETE_FIELD})

    (e,) = engine.run_audit(settings, ["customers"], repair=Options()).entities
    assert e.error is None, e.error
    found = {(f.key.rpartition("/")[2], d.path): d for f in e.findings for d in f.fields}
    for key, path, text in ((a, "createdAt", "infinity"), (a, "lastActiveAt", "-infinity"),
                            (a, "deletedAt", "10000-01-01 00:00:00+00"),  # Firestore has no deletedAt at all
                            (b, "metrics.firstOrderDate", "0044-03-15 BC"), (b, "metrics.lastOrderDate", "10000-01-01"),
                            (c, "customAttributes.huge", huge)):
        d = found[(key, path)]
        assert d.kind == "type_mismatch" and isinstance(d.postgres, PostgresOnly) and d.postgres.text == text, d
    assert found[(c, "customAttributes.big")].postgres == 10**400  # an integer: exact, not a PostgresOnly

    rules = engine.load_rules(settings, ["customers"])[0]
    shape = shape_of(rules.root)
    # each record fails with the field path and why (a dry run lists it as not written), and no write of it is planned
    cannot = "firestore cannot hold this write: "
    planned = {f.key.rpartition("/")[2]: f.repair for f in e.findings if f.key.endswith((a, b, c))}
    assert {k: (r.reason, r.writes) for k, r in planned.items()} == {
        a: (cannot + "timestamptz 'infinity' at createdAt is a value only Postgres holds (no Firestore type can hold it)",
            ()),
        b: (cannot + "date '0044-03-15 BC' at metrics.firstOrderDate is a value only Postgres holds (no Firestore type "
                     "can hold it)", ()),
        c: (cannot + f"integer {str(10**400)[:57]}... at customAttributes.big is outside Firestore's 64-bit range",
            ())}
    col = fs_client.collection("customers")
    before = {k: col.document(k).get().update_time for k in (a, b, c)}
    applied = engine.run_audit(dataclasses.replace(settings, repair=dataclasses.replace(
        settings.repair, max_drift_ratio=1.0)), ["customers"], repair=Options(apply=True), ids=(a, b, c)).entities[0]
    assert {f.key.rpartition("/")[2]: (f.repair.status, f.repair.reason) for f in applied.findings} == {
        k: (RepairStatus.FAILED, r.reason) for k, r in planned.items()}
    assert {k: col.document(k).get().update_time for k in (a, b, c)} == before  # never written
    # the canonical Postgres record written Firestore's way keeps them unwritable
    conn = pg_source.connect(pg_dsn)
    try:
        schema = pg_source.fetch_schema(conn, rules.tables())
        pg_source.begin_snapshot(conn)
        records = {k[0]: PostgresMapper(rules.root, rules.compare).record(*raw)
                   for k, raw in pg_source.PostgresReader(conn, schema).stream(rules.root, Scope(ids=(a, b, c)))}
    finally:
        conn.close()
    document = to_firestore(shape, records[a])
    assert document["createdAt"] == PostgresOnly("infinity", "timestamptz")
    for value in (document["createdAt"], to_firestore(shape, records[b])["metrics"]["firstOrderDate"],
                  to_firestore(shape, records[c])["customAttributes"]["huge"]):
        with pytest.raises(TypeError):
            fs_helpers.encode_value(value)
    with pytest.raises(ValueError):  # an integer beyond int64: Firestore refuses it too
        fs_helpers.encode_value(to_firestore(shape, records[c])["customAttributes"]["big"])
