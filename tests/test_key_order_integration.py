"""Text keys under a non-C database collation, and Firestore's numeric __id<n>__ IDs: no false findings."""

import datetime as dt
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from reconciler.config import load_settings
from reconciler.engine import run_audit
from reconciler.result import FindingKind

RULES_DIR = Path(__file__).parent / "fixtures" / "rules"
# Mixed case, '_' between upper and lower case in bytes, unicode, digits, numeric IDs out of text order.
IDS = ["a", "B", "__id5__", "__id10__", "__id-3__", "Z", "é", "😀", "aa", "_x", "0", "a b", "Ab"]
PARTS = ["p", "P", "__id3__", "__id20__", "ß"]
WHEN = dt.datetime(2024, 1, 1, 8, 30, 15, 123456, tzinfo=dt.timezone.utc)


@pytest.fixture
def widgets(pg_database, fs_client, fs_project):
    dsn = pg_database(icu_locale="en-US")
    with psycopg.connect(dsn, autocommit=True) as conn:
        # the collation really is not C: the database sorts 'a' before 'B'
        assert [r[0] for r in conn.execute("SELECT x FROM (VALUES ('B'), ('a')) v(x) ORDER BY x")] == ["a", "B"]
        conn.execute("CREATE TABLE widgets (code text PRIMARY KEY, label text, price numeric(10,2), "
                     "made_at timestamptz, made_on date)")
        conn.execute("CREATE TABLE widget_parts (widget_code text REFERENCES widgets, part_code text, qty int, "
                     "PRIMARY KEY (widget_code, part_code))")
        for i, code in enumerate(IDS):
            conn.execute("INSERT INTO widgets VALUES (%s, %s, %s, %s, %s)",
                         (code, f"label {i}", Decimal("12.50"), WHEN, dt.date(2024, 2, 29)))
            for part in PARTS:
                conn.execute("INSERT INTO widget_parts VALUES (%s, %s, %s)", (code, part, i))
    for i, code in enumerate(IDS):
        ref = fs_client.collection("widgets").document(code)
        ref.set({"code": code, "label": f"label {i}", "price": 12.5, "madeAt": WHEN, "madeOn": "2024-02-29",
                 "unmapped": "ignored"})
        for part in PARTS:
            ref.collection("parts").document(part).set({"qty": i})
    # same-named collection groups under other parents, before and after ours in key order, must not count
    for other in ("aaa", "zzz"):
        fs_client.collection(other).document("a").collection("parts").document("p").set({"qty": 99})
    fs_client.collection("widgets").document("a").collection("parts").document("p").collection("x").document(
        "y").collection("parts").document("deep").set({"qty": 99})
    return load_settings(None, env={"RECONCILER_PG_DSN": dsn, "GOOGLE_CLOUD_PROJECT": fs_project,
                                    "RECONCILER_RULES_DIR": str(RULES_DIR)})


def test_text_keys_under_icu_collation_and_numeric_ids_audit_clean(widgets):
    result = run_audit(widgets, ["widgets"])
    e = result.entities[0]
    assert e.error is None
    n = len(IDS) * (1 + len(PARTS))
    assert (e.counts.postgres, e.counts.firestore, e.counts.matched) == (n, n, n)
    assert e.findings == ()


def test_real_drift_among_odd_keys_is_found_exactly(widgets, fs_client):
    fs_client.collection("widgets").document("__id10__").delete()
    fs_client.collection("widgets").document("B").update({"label": "changed"})
    fs_client.collection("widgets").document("é").collection("parts").document("__id20__").update({"qty": 1000})
    fs_client.collection("widgets").document("Ab").collection("parts").document("new").set({"qty": 1})
    e = run_audit(widgets, ["widgets"]).entities[0]
    got = {(f.key, f.kind, tuple(x.path for x in f.fields)) for f in e.findings}
    assert got == {
        ("widgets/__id10__", FindingKind.MISSING_IN_FIRESTORE, ()),
        ("widgets/B", FindingKind.MISMATCH, ("label",)),
        ("widgets/é/parts/__id20__", FindingKind.MISMATCH, ("qty",)),
        ("widgets/Ab/parts/new", FindingKind.MISSING_IN_POSTGRES, ()),
    }


def test_limit_and_ids_narrow_both_sides_alike(widgets, fs_client):
    fs_client.collection("widgets").document("__id10__").delete()  # the 3rd root in key order
    e = run_audit(widgets, ["widgets"], limit=4).entities[0]
    # the first 4 roots on each side: __id-3__, __id5__, (__id10__ only in Postgres), 0, B
    assert [f.key for f in e.findings] == ["widgets/__id10__"]
    assert e.counts.postgres == 4 * (1 + len(PARTS))
    e = run_audit(widgets, ["widgets"], ids=("B", "__id10__")).entities[0]
    assert e.counts.postgres == 2 * (1 + len(PARTS)) and e.counts.firestore == 1 + 2 * len(PARTS)
    assert [f.key for f in e.findings] == ["widgets/__id10__"]


def test_range_bounds_mean_on_postgres_what_they_mean_in_key_order(pg_database):
    """A key range's bound (a --workers/--shard split point, a --resume checkpoint) cuts the Postgres rows exactly
    where id_sort_key cuts the IDs: numeric IDs of any size and with leading zeros, text under ICU collation."""
    from psycopg import sql

    from reconciler.keys import id_sort_key
    from reconciler.sources.postgres import range_condition

    big = "9" * 30
    keys = [*IDS, "__id0__", "__id00__", "__id007__", "__id7__", "__id-7__", f"__id{big}__", f"__id-{big}__",
            "__id__", "__id5x__", "a/b", "zz"]
    with psycopg.connect(pg_database(icu_locale="en-US"), autocommit=True) as conn:
        conn.execute("CREATE TABLE k (code text PRIMARY KEY)")
        conn.cursor().executemany("INSERT INTO k VALUES (%s)", [(k,) for k in keys])
        for bound in keys:
            for op in (">=", "<"):
                cond, params = range_condition("code", "text", op, bound)
                got = {r[0] for r in conn.execute(sql.SQL("SELECT code FROM k t WHERE {}").format(cond), params)}
                want = {k for k in keys if (id_sort_key(k) >= id_sort_key(bound)) == (op == ">=")}
                assert got == want, (bound, op, sorted(got ^ want))
