"""--changed-since for every entity of rules/: a root collection that is itself a subcollection
(customer_preferences: customers/{customer_id}/preferences/{id}), a Firestore-authoritative entity whose update
times are ISO-8601 strings (orders), and `--all` over the real rules directory. Real Postgres, real emulator:
records updated on one side only are audited, exactly those; drift written without an update time is not."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import psycopg
from click.testing import CliRunner
from google.cloud import firestore

from demo import catalog, conversations, customers, dataset, orders
from reconciler import engine, parallel
from reconciler.cli import main
from reconciler.repair import Options
from reconciler.sources.firestore import _text_after as _after
from test_entities import ROOT, Loaded, catalog_db, conversations_db, orders_db  # noqa: F401  (fixtures)

UTC = dt.timezone.utc


def _now(dsn: str) -> dt.datetime:
    """Postgres' clock (the emulator runs on the same machine), a little before the updates that follow."""
    with psycopg.connect(dsn) as conn:
        since = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    time.sleep(0.05)
    return since


def _changed(db: Loaded, entity: str, since: dt.datetime, repair: Options | None = None):
    result = engine.run_audit(db.settings, [entity], repair=repair,
                              planner=parallel.Planner(db.settings, since=since)).entities[0]
    assert result.error is None, result.error
    return result


def _found(result) -> set[tuple[str, str, tuple[str, ...]]]:
    return {(f.key, f.kind.value, tuple(sorted(x.path for x in f.fields))) for f in result.findings}


def test_update_times_in_text_are_compared_as_instants():
    since = dt.datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert _after("2026-11-23T12:00:01Z", since)
    assert _after("2026-11-23T07:30:00-05:00", since)  # 12:30 UTC, though it sorts before "2026-11-23T12"
    assert not _after("2026-11-23T22:00:00+14:00", since)  # 08:00 UTC, though it sorts after
    assert _after("2026-11-23T12:00:01", since)  # no zone: UTC
    assert not _after("2026-11-23T12:00:00Z", since) and not _after("yesterday", since) and not _after(None, since)


def test_preferences_changed_since_audits_exactly_the_subdocuments_updated_on_either_side(conversations_db):  # noqa: F811
    """customers/{customer_id}/preferences/{id}: the records are (customer, preference) pairs, so a sibling of an
    updated preference (same customer) is not audited, and documents of a same-named collection elsewhere are
    not either."""
    db = conversations_db
    assert _changed(db, "customer_preferences", parallel.parse_since("1h")).counts.postgres == 0  # 2025 data
    prefs = db.data.rows["customer_preferences"]
    by_customer = Counter(p["customer_id"] for p in prefs)
    twins = [p for p in prefs if by_customer[p["customer_id"]] >= 2]
    sibling_of = next(p for p in twins[1:] if p["customer_id"] == twins[0]["customer_id"])
    others = [p for p in prefs if p["customer_id"] != twins[0]["customer_id"]]
    pg_a, pg_b, fs_a, fs_b, silent = twins[0], others[0], others[1], others[2], sibling_of
    path = lambda p: f"customers/{p['customer_id']}/preferences/{p['id']}"  # noqa: E731

    since = _now(db.dsn)
    db.sql("UPDATE customer_preferences SET priority = priority + 10, updated_at = clock_timestamp() "
           "WHERE id = ANY(%s::uuid[])", params=([pg_a["id"], pg_b["id"]],))
    for p in (fs_a, fs_b):
        db.fs.document(path(p)).update({"is_active": not p["is_active"], "updated_at": firestore.SERVER_TIMESTAMP})
    db.fs.document(path(silent)).update({"source": "silent"})  # drift without an update time: invisible here
    new = f"customers/{pg_b['customer_id']}/preferences/00000000-0000-4000-8000-000000000000"
    db.fs.document(new).set({**db.data.docs[path(pg_b)], "updated_at": firestore.SERVER_TIMESTAMP})
    db.fs.document(f"conversations/{pg_b['customer_id']}/preferences/{pg_b['id']}").set(
        {"updated_at": firestore.SERVER_TIMESTAMP})  # another parent collection: not this entity's

    result = _changed(db, "customer_preferences", since)
    assert _found(result) == {
        (path(pg_a), "mismatch", ("priority", "updated_at")),
        (path(pg_b), "mismatch", ("priority", "updated_at")),
        (path(fs_a), "mismatch", ("is_active", "updated_at")),
        (path(fs_b), "mismatch", ("is_active", "updated_at")),
        (new, "missing_in_postgres", ()),
    }
    assert (result.counts.postgres, result.counts.firestore, result.counts.mismatched,
            result.counts.missing_in_postgres, result.counts.matched) == (4, 5, 4, 1, 0)
    assert [f.key for f in result.findings] == sorted(
        (f.key for f in result.findings), key=lambda k: [parallel.sort_key(tuple(k.split("/")[1::2]))])
    assert (path(silent), "mismatch", ("source",)) in db.findings("customer_preferences")  # a full sweep sees it


def test_orders_changed_since_reads_shopify_text_update_times_and_repairs_postgres(orders_db):  # noqa: F811
    """orders: Firestore is the source of truth and keeps updated_at as Shopify writes it, ISO-8601 text with
    the shop's UTC offset; repair under --changed-since writes Postgres."""
    db = orders_db
    assert _changed(db, "orders", parallel.parse_since("1h")).counts.firestore == 0  # 2025 data
    ids = sorted(r["id"] for r in db.data.rows["orders"])
    pg_a, pg_b, fs_z, fs_offset, silent = ids[:5]
    since = _now(db.dsn)
    db.sql("UPDATE orders SET note = 'edited in postgres', updated_at = clock_timestamp() WHERE id = ANY(%s)",
           params=([pg_a, pg_b],))
    db.sql("UPDATE orders SET email = 'silent@example.com' WHERE id = %s", params=(silent,))  # no update time
    now = dt.datetime.now(UTC)
    eastern = dt.timezone(dt.timedelta(hours=-5))
    db.fs.document(f"orders/{fs_z}").update({"financial_status": "refunded",
                                               "updated_at": now.isoformat().replace("+00:00", "Z")})
    # "...T07:..-05:00" sorts before since's "...T12:..Z" as text; as an instant it is after since
    db.fs.document(f"orders/{fs_offset}").update({"financial_status": "refunded",
                                                    "updated_at": now.astimezone(eastern).isoformat()})

    result = _changed(db, "orders", since)
    assert _found(result) == {
        (f"orders/{pg_a}", "mismatch", ("note", "updated_at")),
        (f"orders/{pg_b}", "mismatch", ("note", "updated_at")),
        (f"orders/{fs_z}", "mismatch", ("financial_status", "updated_at")),
        (f"orders/{fs_offset}", "mismatch", ("financial_status", "updated_at")),
    }
    assert (result.counts.postgres, result.counts.firestore, result.counts.mismatched) == (4, 4, 4)
    assert result.source_of_truth == "firestore"

    repaired = _changed(db, "orders", since, repair=Options(apply=True))
    assert repaired.repair is not None and repaired.repair.target == "postgres" and repaired.repair.done == 4
    assert db.findings("orders") == {(f"orders/{silent}", "mismatch", ("email",))}  # only the silent drift is left


TIERS = """
entity: tiers
source_of_truth: postgres
naming: identity
parent_collection: services
parent: service_id                        # a UUID: services.id ...
parent_references: services.firestore_id  # ... whose document ID is services.firestore_id
collection: pricing_tiers
table: service_pricing_tiers
key: firestore_id
changed: {column: created_at, field: created_at}  # no update time here: the creation time stands in
columns:
  firestore_id: id
  price:
  created_at:
"""


def test_changed_since_reads_parent_ids_through_parent_references(catalog_db, tmp_path):  # noqa: F811
    """A root collection under parents whose document IDs are not the parent column's values (a UUID foreign
    key): the changed keys carry the parent's document ID, so the records are found and read on both sides."""
    db = catalog_db
    (tmp_path / "tiers.yaml").write_text(TIERS)
    db.settings = dataclasses.replace(db.settings, rules_dir=tmp_path)
    tiers = [p for p in db.docs("services/") if "/pricing_tiers/" in p]
    pg_tier, fs_tier = tiers[0], tiers[-1]
    since = _now(db.dsn)
    db.sql("UPDATE service_pricing_tiers SET price = price + 1, created_at = clock_timestamp() "
           "WHERE firestore_id = %s", params=(pg_tier.rsplit("/", 1)[1],))
    db.fs.document(fs_tier).update({"created_at": firestore.SERVER_TIMESTAMP})
    result = _changed(db, "tiers", since)
    assert _found(result) == {(pg_tier, "mismatch", ("created_at", "price")), (fs_tier, "mismatch", ("created_at",))}
    assert (result.counts.postgres, result.counts.firestore) == (2, 2)


# ------------------------------------------------------------------------------------------ --all

def _load_everything(pg_dsn: str, fs_client) -> None:
    with psycopg.connect(pg_dsn) as conn:
        customers.load(conn, fs_client, customers.generate(8, seed=11))
        for module, data in ((orders, orders.generate(6, seed=12)), (conversations, conversations.generate(4, seed=13)),
                             (catalog, catalog.generate(3, seed=14))):
            dataset.create_schema(conn, module.SCHEMA)
            dataset.load_postgres(conn, data)
            dataset.load_firestore(fs_client, data)


ROOT_TABLES = {"customers": ("customers", "id"), "orders": ("orders", "id"),
               "customer_preferences": ("customer_preferences", "id"), "conversations": ("conversations", "id"),
               "service_categories": ("service_categories", "firestore_id"),
               "services": ("services", "firestore_id"), "service_packages": ("service_packages", "firestore_id")}


def test_all_changed_since_covers_every_entity_of_rules_and_skips_one_without_update_times(
        pg_dsn, fs_client, fs_project, tmp_path):
    """Every entity in rules/ has `changed:`: --all --changed-since audits each one's updated record. An entity
    whose rules lack it is skipped with a warning under --all (the exit code is the others'), and is a rules
    error (exit 2) when named on its own."""
    _load_everything(pg_dsn, fs_client)
    rules = sorted(p.stem for p in (ROOT / "rules").glob("*.yaml"))
    assert rules == sorted(ROOT_TABLES)  # a new rules file: add it here, with `changed:` or a reason why not
    since = _now(pg_dsn)
    updated = {}
    with psycopg.connect(pg_dsn) as conn:
        for entity, (table, key) in ROOT_TABLES.items():
            (updated[entity],) = conn.execute(f"SELECT {key}::text FROM {table} ORDER BY 1 LIMIT 1").fetchone()
            change = ("email = 'changed@example.com'" if entity == "customers"  # updated_at: its trigger; not compared
                      else "updated_at = clock_timestamp()")
            conn.execute(f"UPDATE {table} SET {change} WHERE {key}::text = %s", [updated[entity]])

    def run(rules_dir: Path, *args: str) -> tuple[int, str, dict]:
        config = tmp_path / "reconciler.toml"
        config.write_text(f'[audit]\nrules_dir = "{rules_dir}"\n')
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        r = CliRunner().invoke(main, ["--config", str(config), "--pg-dsn", pg_dsn, "--report-dir", str(out),
                                      "--changed-since", since.isoformat(), *args])
        report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
        return r.exit_code, r.output, {e["entity"]: e for e in report.get("entities", ())}

    code, output, sections = run(ROOT / "rules", "--all")
    assert sorted(sections) == rules, output
    for entity, section in sections.items():
        assert section["error"] is None and "skipped" not in section, (entity, section)
        assert section["sweep"]["changed_since"] == since.astimezone(UTC).isoformat()
        roots = [f["key"] for f in section["findings"] if f["key"].count("/") == (3 if entity == "customer_preferences"
                                                                                  else 1)]
        assert len(roots) == 1 and roots[0].endswith("/" + updated[entity]), (entity, section["findings"])
    assert code == 1, output

    mine = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", mine)
    text = (mine / "services.yaml").read_text()
    (mine / "services.yaml").write_text("\n".join(l for l in text.splitlines() if not l.startswith("changed:")))
    code, output, sections = run(mine, "--all")
    assert code == 1, output
    assert sorted(sections) == rules and sections["services"]["error"] is None
    assert "services.yaml: --changed-since needs `changed:" in sections["services"]["skipped"]
    assert sections["services"]["counts"]["postgres"] == 0 and not sections["services"]["findings"]
    assert f"services: skipped: {mine / 'services.yaml'}" in output
    assert all("skipped" not in s and s["findings"] for n, s in sections.items() if n != "services")
    assert "Not audited in this run" in (tmp_path / "out" / "report.html").read_text()

    code, output, _ = run(mine, "--entity", "services")
    assert code == 2 and "services.yaml: --changed-since needs `changed:" in output, output
