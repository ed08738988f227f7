"""`reconcile explain`: one record on both sides, raw and canonical, its differences and its history."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.runner import run_job

ROOT = Path(__file__).parents[1]


def _explain(monkeypatch, settings, doc_id: str):
    monkeypatch.setenv("RECONCILER_PG_DSN", settings.postgres.dsn)
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(ROOT / "rules"))
    return CliRunner().invoke(main, ["explain", "--entity", "customers", doc_id])


def _when(t) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def test_explain_a_drifted_key_and_a_clean_key_with_their_history(customers_loaded, fs_client, monkeypatch):
    settings, people = customers_loaded
    p = next(p for p in people if p.subcollections.get("addresses"))
    clean = next(c for c in people if c is not p)
    orders = p.document["metrics"]["totalOrders"]
    run_job(settings, ["customers"])
    fs_client.collection("customers").document(p.id).update({"metrics.totalOrders": -7})
    drift_run = run_job(settings, ["customers"])

    r = _explain(monkeypatch, settings, p.id)
    assert r.exit_code == 1, r.output
    out = r.stdout
    docs = 1 + sum(len(d) for d in p.subcollections.values())
    assert out.startswith(f"customers {p.id} (source of truth: postgres): DRIFT: 1 of {docs} documents differ\n"
                          "history: 2 recorded runs of customers\n")
    at = _when(drift_run.started_at)
    assert f"== customers/{p.id}: MISMATCH\n   first seen drifting: {at} (1 run in a row up to {at}); " \
           f"first ever: {at}\n-- Postgres rows (raw)\n  customers: 1 row\n" in out
    assert f'email="{p.document["email"]}"' in out and f"total_orders={orders}," in out  # raw rows, every column
    firestore_raw = out[out.index("-- Firestore document (raw)"):out.index("-- Canonical")]
    assert "\n  metrics.totalOrders: -7\n" in firestore_raw and f'\n  email: "{p.document["email"]}"\n' in firestore_raw
    assert re.search(rf"^  \* metrics\.totalOrders +{orders} +-7$", out, re.M)
    assert re.search(rf"^    email\n      postgres:  {re.escape(p.document['email'])}\n"
                     rf"      firestore: {re.escape(p.document['email'])}$", out, re.M)
    assert f"-- Differences (1)\n  metrics.totalOrders: postgres {orders} | firestore -7\n" in out
    assert len(re.findall(r"^  \* ", out, re.M)) == 1
    for address_id in p.subcollections["addresses"]:  # subcollection documents of the record, both sides
        assert f"== customers/{p.id}/addresses/{address_id}: in sync\n   first seen drifting: never (in 2 recorded runs)" in out
    assert "customer_addresses: 1 row" in out

    ok = _explain(monkeypatch, settings, clean.id)
    assert ok.exit_code == 0, ok.output
    n = 1 + sum(len(d) for d in clean.subcollections.values())
    assert ok.stdout.startswith(f"customers {clean.id} (source of truth: postgres): in sync ({n} "
                                f"{'document' if n == 1 else 'documents'})\n")
    assert f"== customers/{clean.id}: in sync\n   first seen drifting: never (in 2 recorded runs)\n" in ok.stdout
    assert not re.search(r"^  \* ", ok.stdout, re.M) and "-- Differences" not in ok.stdout
    assert re.search(rf"^    metrics\.totalOrders +{clean.document['metrics']['totalOrders']} +"
                     rf"{clean.document['metrics']['totalOrders']}$", ok.stdout, re.M)

    fs_client.collection("customers").document(p.id).update({"metrics.totalOrders": orders})  # fixed: streak ends
    run_job(settings, ["customers"])
    fixed = _explain(monkeypatch, settings, p.id)
    assert fixed.exit_code == 0
    assert f"first seen drifting: not in the latest run; last drifted {at}, first ever {at}" in fixed.stdout


def test_explain_a_key_missing_on_one_side_and_on_both(customers_loaded, fs_client, pg_dsn, monkeypatch):
    settings, people = customers_loaded
    gone, only_fs = people[2], people[4]
    fs_client.collection("customers").document(gone.id).delete()
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("DELETE FROM customers WHERE id = %s", (only_fs.id,))
    r = _explain(monkeypatch, settings, gone.id)
    assert r.exit_code == 1
    assert f"== customers/{gone.id}: MISSING IN FIRESTORE\n" in r.stdout
    assert "-- Firestore document (raw)\n  (no document)\n" in r.stdout
    assert re.search(rf"^    email\n      postgres:  {re.escape(gone.document['email'])}\n      firestore: \(no document\)$",
                     r.stdout, re.M)
    r = _explain(monkeypatch, settings, only_fs.id)
    assert r.exit_code == 1 and f"== customers/{only_fs.id}: MISSING IN POSTGRES\n" in r.stdout
    assert "-- Postgres rows (raw)\n  customers: 0 rows\n" in r.stdout
    assert "history: no recorded runs yet" in r.stdout
    for nowhere in ("00000000-0000-4000-8000-00000000abcd", "not-a-uuid"):
        r = _explain(monkeypatch, settings, nowhere)
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith(f"customers {nowhere} (source of truth: postgres): neither side has it")
