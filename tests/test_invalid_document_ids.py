"""Postgres keys that cannot be Firestore document IDs ("a/b", "..", "__x__"...): real drift, never a crash.

Such a record can never exist in Firestore: the audit reports it missing there (the re-read after the settle
delay does not ask Firestore for it), --ids and explain say so, repair marks it failed with the reason, and key
ranges never use such a key as a bound. Real Postgres, real emulator, the widgets entity (text keys).
"""

from __future__ import annotations

import dataclasses
import json

import psycopg
import pytest
from click.testing import CliRunner

from reconciler import engine, parallel
from reconciler.cli import main
from reconciler.keys import Scope, id_sort_key, order_text
from reconciler.repair import LOG_TABLE, Options
from reconciler.sources import firestore as fs_source
from reconciler.sources import postgres as pg_source
from test_key_order_integration import RULES_DIR
from test_key_order_integration import widgets  # noqa: F401  (a fixture: text keys, numeric IDs)
from test_repair_orders import orders_loaded  # noqa: F401  (a fixture: Firestore is the truth, text keys)

BAD_ROOTS = ["a/b", "..", "__x__"]
# (key, kind) of every finding, in report order: root documents in key order, then the parts
EXPECTED = [
    ("widgets/..", "missing_in_firestore"),
    ("widgets/B", "mismatch"),
    ("widgets/Z", "missing_in_firestore"),
    ("widgets/__x__", "missing_in_firestore"),
    ("widgets/a/b", "missing_in_firestore"),
    ("widgets/a/parts/x/y", "missing_in_firestore"),  # a child key with a '/' under a parent Firestore has
    ("widgets/a/b/parts/p", "missing_in_firestore"),  # a child under a parent ID with a '/'
    ("widgets/é/parts/P", "mismatch"),
]


@pytest.fixture
def bad_keys(widgets, fs_client):  # noqa: F811
    """The widgets in sync, then Postgres-only records whose keys no Firestore document can have, and ordinary
    drift around them (a mismatch, a root missing in Firestore, a subdocument mismatch)."""
    with psycopg.connect(widgets.postgres.dsn, autocommit=True) as conn:
        for code in BAD_ROOTS:
            conn.execute("INSERT INTO widgets (code, label) VALUES (%s, 'only in Postgres')", (code,))
        conn.execute("INSERT INTO widget_parts VALUES ('a/b', 'p', 1), ('a', 'x/y', 2)")
    col = fs_client.collection("widgets")
    col.document("B").update({"label": "changed"})
    col.document("Z").delete()  # its parts stay: Firestore keeps a deleted document's subcollections
    col.document("é").collection("parts").document("P").update({"qty": -1})
    return widgets


def _cli(settings, *args: str):
    env = {"RECONCILER_PG_DSN": settings.postgres.dsn, "RECONCILER_RULES_DIR": str(RULES_DIR)}
    return CliRunner(env=env).invoke(main, list(args))


def _findings(report_dir) -> list[tuple[str, str]]:
    report = json.loads((report_dir / "report.json").read_text())
    (entity,) = report["entities"]
    assert entity["error"] is None, entity["error"]
    return [(f["key"], f["kind"]) for f in entity["findings"]]


def test_the_audit_reports_them_missing_in_firestore_after_the_re_read(bad_keys, tmp_path):
    r = _cli(bad_keys, "--entity", "widgets", "--report-dir", str(tmp_path))
    assert r.exit_code == 1, r.output
    assert _findings(tmp_path) == EXPECTED
    assert "Traceback" not in r.output


def test_ids_and_explain_on_such_a_key_say_it_is_missing_in_firestore(bad_keys, tmp_path):
    r = _cli(bad_keys, "--entity", "widgets", "--ids", "a/b,a,..,__x__", "--report-dir", str(tmp_path))
    assert r.exit_code == 1, r.output
    assert _findings(tmp_path) == [("widgets/..", "missing_in_firestore"), ("widgets/__x__", "missing_in_firestore"),
                                   ("widgets/a/b", "missing_in_firestore"),
                                   ("widgets/a/parts/x/y", "missing_in_firestore"),
                                   ("widgets/a/b/parts/p", "missing_in_firestore")]

    r = _cli(bad_keys, "explain", "--entity", "widgets", "a/b")
    assert r.exit_code == 1, r.output
    assert r.output.startswith("widgets a/b (source of truth: postgres): DRIFT: 2 of 2 documents differ\n"), r.output
    assert "== widgets/a/b: MISSING IN FIRESTORE\n" in r.output
    assert "== widgets/a/b/parts/p: MISSING IN FIRESTORE\n" in r.output
    assert "cannot be a Firestore document ID: 'a/b' contains '/'" in r.output

    r = _cli(bad_keys, "explain", "--entity", "widgets", "a")
    assert r.exit_code == 1, r.output
    assert "== widgets/a/parts/x/y: MISSING IN FIRESTORE\n" in r.output
    assert "cannot be a Firestore document ID: 'x/y' contains '/'" in r.output

    r = _cli(bad_keys, "explain", "--entity", "widgets", "__x__")
    assert r.exit_code == 1, r.output
    assert "cannot be a Firestore document ID: '__x__' is reserved" in r.output


def test_repair_fixes_the_rest_and_fails_those_records_with_the_reason(bad_keys, fs_client, tmp_path):
    reasons = {
        "widgets/..": "cannot be a Firestore document ID: '..' is '.' or '..'",
        "widgets/__x__": "cannot be a Firestore document ID: '__x__' is reserved (__.*__, other than __id<int64>__)",
        "widgets/a/b": "cannot be a Firestore document ID: 'a/b' contains '/'",
        "widgets/a/parts/x/y": "cannot be a Firestore document ID: 'x/y' contains '/'",
        "widgets/a/b/parts/p": "cannot be a Firestore document ID: 'a/b' contains '/'",
    }
    dry = _cli(bad_keys, "--entity", "widgets", "--repair", "--report-dir", str(tmp_path / "dry"))
    assert dry.exit_code == 1, dry.output
    for key, reason in reasons.items():
        assert f"create {key}: skipped ({reason})" in dry.output, dry.output
    before = {s.reference.path: s.update_time for s in fs_client.collection("widgets").stream()}

    r = _cli(bad_keys, "--entity", "widgets", "--repair", "--apply", "--report-dir", str(tmp_path / "apply"))
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    report = json.loads((tmp_path / "apply" / "report.json").read_text())
    (entity,) = report["entities"]
    got = {f["key"]: (f["repair"]["status"], f["repair"]["reason"]) for f in entity["findings"]}
    assert got == {**{k: ("failed", why) for k, why in reasons.items()},
                   "widgets/B": ("applied", ""), "widgets/Z": ("applied", ""), "widgets/é/parts/P": ("applied", "")}
    assert entity["repair"]["done"] == 3 and entity["repair"]["failed"] == 5, entity["repair"]
    for key, reason in reasons.items():
        assert f"create {key}: failed ({reason})" in r.output, r.output
    with psycopg.connect(bad_keys.postgres.dsn) as conn:
        trail = conn.execute(f"SELECT entity_id, operation, postgres_status, firestore_status, error_message, "
                             f"completed_at IS NULL FROM {LOG_TABLE}").fetchall()
    assert sorted(trail) == sorted(
        [(k, "create", "source", "failed", why, True) for k, why in reasons.items()]
        + [("widgets/B", "update", "source", "applied", None, False),
           ("widgets/Z", "create", "source", "applied", None, False),
           ("widgets/é/parts/P", "update", "source", "applied", None, False)])
    # nothing was written where such a key would point ("a/b" as a path is a collection; "../x" a parent)
    after = {s.reference.path: s.update_time for s in fs_client.collection("widgets").stream()}
    assert after.keys() == before.keys() | {"widgets/Z"}
    assert not list(fs_client.collection("widgets").document("a").collection("b").stream())

    again = _cli(bad_keys, "--entity", "widgets", "--report-dir", str(tmp_path / "again"))
    assert again.exit_code == 1, again.output
    assert _findings(tmp_path / "again") == [f for f in EXPECTED if f[0] in reasons]


def test_key_ranges_never_use_such_a_key_as_a_bound_and_three_workers_find_what_one_finds(bad_keys):  # noqa: F811
    settings = dataclasses.replace(bad_keys, settle_s=0)
    with psycopg.connect(settings.postgres.dsn, autocommit=True) as conn:
        # with 17 roots, 3 parts are cut at the 5th and the 11th in key order: the 5th is "A/x"
        conn.execute("INSERT INTO widgets (code, label) VALUES ('A/x', 'only in Postgres')")
    rules = engine.load_rules(settings, ["widgets"])[0]
    sides = engine.open_sides(settings, rules.tables())
    try:
        sampled = pg_source.sample_split_points(sides.pg, "widgets", "code", "text", 3, None, None)
        sides.pg.rollback()
        scopes = parallel.key_ranges(rules, sides, 3)
    finally:
        sides.pg.close()
    assert sampled == ["A/x", "a"]  # what a split at equal row counts would take
    assert [s.start for s in scopes] == [None, "Ab", "a"]  # the next key that can be a bound instead
    assert [s.end for s in scopes] == ["Ab", "a", None]

    one = engine.run_audit(settings, ["widgets"]).entities[0]
    three = engine.run_audit(settings, ["widgets"], planner=parallel.Planner(settings, workers=3)).entities[0]
    assert one.error is None and three.error is None, (one.error, three.error)
    assert (one.counts, one.findings, one.field_counts) == (three.counts, three.findings, three.field_counts)
    assert [(f.key, f.kind.value) for f in one.findings] == [EXPECTED[0], ("widgets/A/x", "missing_in_firestore"),
                                                             *EXPECTED[1:]]
    assert all(fs_source.is_document_id(s.start) for s in scopes[1:])



def test_reads_by_key_skip_such_keys_without_asking_firestore(widgets, fs_client):  # noqa: F811
    """--changed-since of a root collection that is a subcollection reads (parent ID, ID) pairs by key."""
    rules = engine.load_rules(widgets, ["widgets"])[0]
    parts = rules.documents[1]
    reader = fs_source.FirestoreReader(fs_client, retries=0)
    keys = (("a", "x/y"), ("a", "p"), ("a/b", "p"), ("..", "p"), ("B", "__x__"), ("B", "P"))
    got = [k for k, _ in reader.stream(parts, Scope(ids=("..", "B", "a", "a/b"), keys=keys), "widgets")]
    assert got == [("B", "P"), ("a", "p")]


def test_repair_toward_postgres_deletes_such_orphans_without_reading_them_from_firestore(orders_loaded):  # noqa: F811
    settings, _ = orders_loaded
    settings = dataclasses.replace(settings, settle_s=0)
    with psycopg.connect(settings.postgres.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (id, order_number) VALUES ('ord/x', 1), ('__x__', 2)")
        conn.execute("INSERT INTO order_fulfillments (order_id, id, status) VALUES ('ord_1000', 'f/1', 'x')")
    e = engine.run_audit(settings, ["orders"], repair=Options(apply=True, delete_orphans=True)).entities[0]
    assert e.error is None, e.error
    assert {f.key: (f.kind.value, f.repair.status.value) for f in e.findings} == {
        "orders/__x__": ("missing_in_firestore", "applied"), "orders/ord/x": ("missing_in_firestore", "applied"),
        "orders/ord_1000/fulfillments/f/1": ("missing_in_firestore", "applied")}
    assert engine.run_audit(settings, ["orders"]).entities[0].findings == ()


def test_numeric_ids_firestore_refuses_keep_both_sides_in_one_key_order(widgets):  # noqa: F811
    """Postgres sorts __id<n>__ keys by value, then by text: beyond int64 and with leading zeros too."""
    settings = dataclasses.replace(widgets, settle_s=0)
    big, bigger = "1" + "0" * 44, "9" * 45
    codes = [f"__id-{bigger}__", f"__id-{big}__", "__id005__", f"__id{2**63}__", f"__id{big}__", f"__id{bigger}__"]
    with psycopg.connect(settings.postgres.dsn, autocommit=True) as conn:
        for code in reversed(codes):
            conn.execute("INSERT INTO widgets (code, label) VALUES (%s, 'only in Postgres')", (code,))
    e = engine.run_audit(settings, ["widgets"]).entities[0]
    assert e.error is None, e.error
    assert [(f.key, f.kind.value) for f in e.findings] == [(f"widgets/{c}", "missing_in_firestore") for c in codes]


def test_order_text_sorts_numeric_ids_of_any_size_by_value_then_text():
    big = 10**45
    ordered = [f"__id-{big * 10}__", f"__id-{big + 1}__", f"__id-{big}__", f"__id-{9 * big // 10}__",
               f"__id{-2**63}__", "__id-7__", "__id-0__", "__id00__", "__id0__", "__id007__", "__id07__", "__id7__",
               f"__id{2**63 - 1}__", f"__id{2**63}__", f"__id{9 * big // 10}__", f"__id{big}__", f"__id{big + 1}__",
               f"__id{big * 10}__", "__id" + "9" * 5000 + "__", "", "__id__", "a"]
    for key in (order_text, id_sort_key):
        assert sorted(reversed(ordered), key=key) == ordered, key
