"""A Firestore document ID may hold NUL; Postgres text cannot. Such a document is missing in Postgres, and the key
is never sent to Postgres as a parameter: not by the sweep's re-read, --ids, explain, a key range's bound, nor the
run history (which records it escaped, as \\u0000). Real Postgres, real emulator."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from reconciler import engine, explain, runner
from reconciler.keys import Scope, id_sort_key
from reconciler.result import FindingKind
from reconciler.sources import postgres as pg_source
from test_key_order_integration import IDS
from test_key_order_integration import widgets  # noqa: F401  (a fixture: text keys)

NUL_ID = "nul\x00id"


def test_a_customer_document_whose_id_holds_nul_is_missing_in_postgres_and_recorded(customers_loaded, fs_client,
                                                                                   tmp_path):
    settings, people = customers_loaded
    fs_client.collection("customers").document(NUL_ID).set({"email": "nul@example.com"})
    fs_client.collection("customers").document(people[0].id).collection("addresses").document(NUL_ID).set(
        {"city": "Lagos"})

    (e,) = engine.run_audit(settings, ["customers"]).entities
    assert e.error is None, e.error
    kinds = {f.key: f.kind for f in e.findings}
    assert kinds == {f"customers/{NUL_ID}": FindingKind.MISSING_IN_POSTGRES,
                     f"customers/{people[0].id}/addresses/{NUL_ID}": FindingKind.MISSING_IN_POSTGRES}

    (e,) = runner.run_job(settings, ["customers"]).entities
    assert e.error is None, e.error
    with psycopg.connect(settings.postgres.dsn) as conn:
        recorded = {r[0] for r in conn.execute("SELECT key FROM reconciler_findings")}
    assert recorded == {"customers/nul\\u0000id", f"customers/{people[0].id}/addresses/nul\\u0000id"}
    # triage reads the record (and its history) without sending the ID to Postgres
    assert [d.kind for d in explain.explain(settings, "customers", NUL_ID).drifted] == [FindingKind.MISSING_IN_POSTGRES]


def test_ids_and_key_ranges_with_nul_on_a_text_keyed_entity(widgets, fs_client):  # noqa: F811
    fs_client.collection("widgets").document(NUL_ID).set({"code": NUL_ID, "label": "only in Firestore"})
    (e,) = engine.run_audit(widgets, ["widgets"], ids=(NUL_ID, "B")).entities
    assert e.error is None, e.error
    assert [(f.key, f.kind) for f in e.findings] == [(f"widgets/{NUL_ID}", FindingKind.MISSING_IN_POSTGRES)]
    (e,) = engine.run_audit(widgets, ["widgets"]).entities
    assert e.error is None, e.error
    assert [(f.key, f.kind) for f in e.findings] == [(f"widgets/{NUL_ID}", FindingKind.MISSING_IN_POSTGRES)]
    # a resumed or split sweep starting or ending at that ID (a checkpoint's last key, a split point)
    conn = pg_source.connect(widgets.postgres.dsn)
    try:
        schema = pg_source.fetch_schema(conn, ("widgets", "widget_parts"))
        rules = engine.load_rules(widgets, ["widgets"])[0]
        pg_source.begin_snapshot(conn)
        reader = pg_source.PostgresReader(conn, schema)
        after = [k[0] for k, _ in reader.stream(rules.root, Scope(start=NUL_ID))]
        before = [k[0] for k, _ in reader.stream(rules.root, Scope(end=NUL_ID))]
    finally:
        conn.close()
    assert sorted(before + after, key=id_sort_key) == sorted(IDS, key=id_sort_key)
    assert all(id_sort_key(k) > id_sort_key(NUL_ID) for k in after)


UUIDS = ["00000000-0000-0000-0000-000000000000", "5f000000-0000-0000-0000-000000000000",
         "a0000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"]
KEYS = ["a", "a b", "ab", "__id5__", "__id5__x", "_", "é", "😀", "", "b", "a\x01"]


@pytest.fixture
def pg_keys(pg_database):
    conn = pg_source.connect(pg_database(icu_locale="en-US"))
    conn.autocommit = True
    conn.execute("CREATE TABLE k (code text PRIMARY KEY)")
    conn.cursor().executemany("INSERT INTO k VALUES (%s)", [(k,) for k in KEYS])
    conn.execute("CREATE TABLE u (code uuid PRIMARY KEY)")
    conn.cursor().executemany("INSERT INTO u VALUES (%s)", [(k,) for k in UUIDS])
    yield conn
    conn.close()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(bound=st.lists(st.sampled_from(["a", "b", "\x00", "__id5__", "é", "_", "x", "\x01"]), min_size=1,
                      max_size=5).map("".join).filter(lambda b: "\x00" in b))
def test_a_bound_with_nul_cuts_postgres_where_key_order_does(pg_keys, bound):
    for udt, table in (("text", "k"), ("uuid", "u")):
        for op in (">=", "<"):
            cond, params = pg_source.range_condition("code", udt, op, bound)
            got = {r[0] for r in pg_keys.execute(sql.SQL("SELECT code::text FROM {} t WHERE {}").format(
                sql.Identifier(table), cond), params)}
            keys = KEYS if udt == "text" else UUIDS
            want = {k for k in keys if (id_sort_key(k) >= id_sort_key(bound)) == (op == ">=")}
            assert got == want, (udt, bound, op, sorted(got ^ want))


def test_checkpoints_keep_a_nul_key_exactly(widgets, fs_client):  # noqa: F811
    """A checkpoint holds the keys to re-read and the findings listed; a resumed run looks them up again, so a NUL
    in a key must come back exactly (jsonb and text[] cannot hold it: escaped reversibly, not as \\u0000)."""
    import dataclasses

    from reconciler import checkpoint

    fs_client.collection("widgets").document(NUL_ID).set({"code": NUL_ID, "label": "only in Firestore"})
    fs_client.collection("widgets").document("back\\0slash").set({"code": "back\\0slash"})  # the escape's own text
    saving = dataclasses.replace(widgets, checkpoint_every=1)
    run = engine.run_audit(saving, ["widgets"])
    (e,) = run.entities
    assert e.error is None, e.error
    expected = {(f"widgets/{NUL_ID}", FindingKind.MISSING_IN_POSTGRES),
                ("widgets/back\\0slash", FindingKind.MISSING_IN_POSTGRES)}
    assert {(f.key, f.kind) for f in e.findings} == expected
    store = checkpoint.Store(widgets.postgres, run.run_id)
    try:
        saved = store.load("widgets")
    finally:
        store.close()
    assert {f["key"] for f in saved.tally["findings"]} == {k for k, _ in expected}
    (resumed,) = engine.run_audit(widgets, ["widgets"], resume=run.run_id).entities  # the whole tally restored
    assert {(f.key, f.kind) for f in resumed.findings} == expected and resumed.counts == e.counts
