"""The seed 001/002 entities (rules/*.yaml only, no Python of their own), end to end on a real Postgres and the
real Firestore emulator: seed-shaped data audits clean, drift injected in every kind of mapped construct is
found exactly (finding keys and field paths), and repair toward the side that is not the source of truth
leaves a clean audit."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import psycopg
import pytest

from demo import catalog, conversations, dataset, orders
from reconciler.config import load_settings
from reconciler.engine import run_audit
from reconciler.repair import Options
from reconciler.result import RepairStatus

ROOT = Path(__file__).parents[1]


class Loaded:
    def __init__(self, settings: Any, data: dataset.Dataset, dsn: str, fs: Any) -> None:
        self.settings, self.data, self.dsn, self.fs = settings, data, dsn, fs

    def sql(self, *statements: str, params: tuple = ()) -> None:
        with psycopg.connect(self.dsn) as conn:
            for s in statements:
                conn.execute(s, params if "%s" in s else None)

    def audit(self, entity: str, repair: Options | None = None):
        e = run_audit(self.settings, [entity], repair=repair).entities[0]
        assert e.error is None, e.error
        return e

    def findings(self, entity: str) -> set[tuple[str, str, tuple[str, ...]]]:
        e = self.audit(entity)
        return {(f.key, f.kind.value, tuple(sorted(x.path for x in f.fields))) for f in e.findings}

    def docs(self, prefix: str) -> list[str]:
        return [p for p in self.data.docs if p.startswith(prefix)]


def _load(pg_dsn: str, fs_client: Any, fs_project: str, data: dataset.Dataset, schema: str) -> Loaded:
    with psycopg.connect(pg_dsn) as conn:
        dataset.create_schema(conn, schema)
        dataset.load_postgres(conn, data)
    dataset.load_firestore(fs_client, data)
    settings = load_settings(None, env={"RECONCILER_PG_DSN": pg_dsn, "GOOGLE_CLOUD_PROJECT": fs_project,
                                        "RECONCILER_RULES_DIR": str(ROOT / "rules")})
    settings = dataclasses.replace(settings, repair=dataclasses.replace(settings.repair, max_drift_ratio=1.0))
    return Loaded(settings, data, pg_dsn, fs_client)


@pytest.fixture
def orders_db(pg_dsn, fs_client, fs_project) -> Loaded:
    return _load(pg_dsn, fs_client, fs_project, orders.generate(24, seed=3), orders.SCHEMA)


@pytest.fixture
def conversations_db(pg_dsn, fs_client, fs_project) -> Loaded:
    return _load(pg_dsn, fs_client, fs_project, conversations.generate(12, seed=4), conversations.SCHEMA)


@pytest.fixture
def catalog_db(pg_dsn, fs_client, fs_project) -> Loaded:
    return _load(pg_dsn, fs_client, fs_project, catalog.generate(6, seed=5), catalog.SCHEMA)


def _clean(db: Loaded, entity: str, documents: int) -> None:
    e = db.audit(entity)
    assert e.findings == ()
    assert e.counts.postgres == e.counts.firestore == e.counts.matched == documents > 0


# ------------------------------------------------------------------------------------------ orders

def test_orders_audit_clean(orders_db):
    _clean(orders_db, "orders", len(orders_db.data.docs))


def _order_with(db: Loaded, *fields: str) -> tuple[str, dict]:
    return next((p, d) for p, d in db.data.docs.items() if all(d.get(f) for f in fields))


def test_orders_drift_in_every_construct_is_found_exactly(orders_db):
    db = orders_db
    disc_path, _ = _order_with(db, "discount_codes")
    tax_path, tax_doc = next((p, d) for p, d in db.data.docs.items() if d["tax_lines"] and p != disc_path)
    rest = iter(p for p in db.data.docs if p not in (disc_path, tax_path))
    a, b, c, d, e, f = (next(rest) for _ in range(6))
    ids = {p: int(p.split("/")[1]) for p in (a, b, c, d, e, f, disc_path)}
    db.sql(f"UPDATE orders SET current_total_price = current_total_price + 1 WHERE id = {ids[a]}",  # money scalar
           f"UPDATE orders SET customer_email = 'x@example.com' WHERE id = {ids[b]}",  # nested map (customer)
           f"UPDATE orders SET customer_id = 42 WHERE id = {ids[c]}",  # the customer link
           f"UPDATE order_addresses SET city = 'Nowhere' WHERE order_id = {ids[d]} AND address_type = 'billing'",
           f"UPDATE order_line_items SET quantity = quantity + 5 WHERE order_id = {ids[e]} "
           f"AND id = (SELECT min(id) FROM order_line_items WHERE order_id = {ids[e]})",  # array <-> child table
           f"DELETE FROM orders WHERE id = {ids[f]}",  # a whole order missing in Postgres (children cascade)
           f"DELETE FROM order_discount_codes WHERE order_id = {ids[disc_path]}")  # a set element missing
    tax = tax_doc["tax_lines"][0]
    db.fs.document(tax_path).update({"tax_lines": [dict(tax, rate=0.5), *tax_doc["tax_lines"][1:]]})  # set key
    db.fs.document(disc_path).update({"note_attributes": [{"name": "source", "value": "tiktok"}]})  # jsonb array
    first_item = min(x["id"] for x in db.data.docs[e]["line_items"])
    assert db.findings("orders") == {
        (a, "mismatch", ("current_total_price",)),
        (b, "mismatch", ("customer.email",)),
        (c, "mismatch", ("customer.id",)),
        (d, "mismatch", ("billing_address.city",)),
        (e, "mismatch", (f"line_items[{first_item}].quantity",)),
        (f, "missing_in_postgres", ()),
        (disc_path, "mismatch", ("discount_codes[SPRING10]", "note_attributes")),
        (tax_path, "mismatch", (f"tax_lines[{tax['title']},{tax['rate']}]", f"tax_lines[{tax['title']},0.5]")),
    }


def test_orders_repair_writes_postgres_and_the_audit_is_then_clean(orders_db):
    db = orders_db
    paths = list(db.data.docs)
    ids = [int(p.split("/")[1]) for p in paths[:5]]
    shipped = next(p for p, d in db.data.docs.items() if "shipping_address" in d)
    db.sql(f"UPDATE orders SET financial_status = 'voided', internal_note = 'keep me' WHERE id = {ids[0]}",
           f"DELETE FROM order_line_items WHERE order_id = {ids[1]}",
           f"DELETE FROM order_addresses WHERE order_id = {int(shipped.split('/')[1])}",
           f"DELETE FROM orders WHERE id = {ids[2]}",
           f"UPDATE order_tax_lines SET price = price + 1 WHERE order_id = {ids[3]}")
    db.fs.document(paths[4]).update({"customer.email": "moved@example.com", "shipping_lines": []})
    drifted = db.findings("orders")
    assert len(drifted) >= 4
    e = db.audit("orders", repair=Options(apply=True))
    assert {f.repair.status for f in e.findings} == {RepairStatus.APPLIED}, [(f.key, f.repair) for f in e.findings]
    assert db.findings("orders") == set()
    with psycopg.connect(db.dsn) as conn:
        assert conn.execute(f"SELECT internal_note FROM orders WHERE id = {ids[0]}").fetchone() == ("keep me",)
        types = {r[0] for r in conn.execute(
            f"SELECT address_type FROM order_addresses WHERE order_id = {int(shipped.split('/')[1])}")}
    assert types == {"billing", "shipping"}  # the embed's `where` was written on insert


# ------------------------------------------------------------------------------------------ preferences, conversations

def test_preferences_and_conversations_audit_clean(conversations_db):
    db = conversations_db
    _clean(db, "customer_preferences", len(db.docs("customers/")))
    _clean(db, "conversations", len(db.docs("conversations/")))


def test_preferences_drift_in_every_construct_is_found_exactly(conversations_db):
    db = conversations_db
    prefs = db.docs("customers/")
    p1, p2, p3, p4 = prefs[:4]
    pid = lambda p: p.rsplit("/", 1)[1]  # noqa: E731
    db.sql(f"UPDATE customer_preferences SET priority = priority + 10 WHERE id = '{pid(p1)}'",  # scalar
           f"UPDATE customer_preferences SET preference_value = jsonb_set(preference_value, '{{value}}', "
           f"'\"changed\"') WHERE id = '{pid(p2)}'",  # JSONB <-> map
           f"DELETE FROM customer_preferences WHERE id = '{pid(p3)}'")  # subcollection document missing
    db.fs.document(p4).update({"context": {"interaction_count": 99}})
    assert db.findings("customer_preferences") == {
        (p1, "mismatch", ("priority",)),
        (p2, "mismatch", ("preference_value.value",)),
        (p3, "missing_in_postgres", ()),
        (p4, "mismatch", tuple(sorted(_changed_context(db.data.docs[p4].get("context"))))),
    }
    assert db.findings("conversations") == set()  # the other entity of the same database is untouched


def _changed_context(before: dict | None) -> set[str]:
    if before is None:
        return {"context"}
    return {"context.interaction_count", "context.learned_from_pattern", "context.success_rate"}


def test_conversations_drift_in_every_construct_is_found_exactly(conversations_db):
    db = conversations_db
    convs = [p for p in db.docs("conversations/") if p.count("/") == 1]
    with_nlp = [p for p in convs if db.data.docs[p]["nlp_analysis"]]
    atts = [p for p in db.docs("conversations/") if "/attachments/" in p]
    c1, c2 = with_nlp[:2]
    c3 = next(p for p in convs if p not in (c1, c2))
    a1, a2 = atts[:2]
    uid = lambda p: p.rsplit("/", 1)[1]  # noqa: E731
    db.sql(f"UPDATE conversations SET status = 'failed' WHERE id = '{uid(c1)}'",  # scalar
           f"UPDATE conversations SET cc_addresses = ARRAY['x@example.com', 'y@example.com'] WHERE id = '{uid(c3)}'",
           f"UPDATE conversation_attachments SET file_size = file_size + 1 WHERE id = '{uid(a1)}'",  # subcollection
           f"DELETE FROM conversation_attachments WHERE id = '{uid(a2)}'")
    db.fs.document(c2).update({"nlp_analysis.sentiment": "furious",  # JSONB <-> nested map
                               "message_timestamp": "2030-01-01T00:00:00Z"})  # ISO string <-> timestamptz
    assert db.findings("conversations") == {
        (c1, "mismatch", ("status",)),
        (c2, "mismatch", ("message_timestamp", "nlp_analysis.sentiment")),
        (c3, "mismatch", ("cc_addresses",)),
        (a1, "mismatch", ("file_size",)),
        (a2, "missing_in_postgres", ()),
    }


def test_preferences_and_conversations_repair_toward_firestore(conversations_db):
    db = conversations_db
    prefs = db.docs("customers/")
    convs = [p for p in db.docs("conversations/") if p.count("/") == 1]
    atts = [p for p in db.docs("conversations/") if "/attachments/" in p]
    db.sql(f"UPDATE customer_preferences SET is_active = NOT is_active WHERE id = '{prefs[0].rsplit('/', 1)[1]}'",
           f"UPDATE conversations SET subject = 'fixed in Postgres' WHERE id = '{convs[0].split('/')[1]}'")
    db.fs.document(prefs[1]).delete()
    db.fs.document(atts[0]).update({"virus_scan_result.result": "infected"})
    db.fs.document(convs[1]).update({"unmapped_note": "stays"})  # not drift: the rules do not map it
    assert len(db.findings("customer_preferences")) == 2 and len(db.findings("conversations")) == 2
    for entity in ("customer_preferences", "conversations"):
        e = db.audit(entity, repair=Options(apply=True))
        assert {f.repair.status for f in e.findings} == {RepairStatus.APPLIED}
        assert db.findings(entity) == set()
    assert db.fs.document(convs[1]).get().to_dict()["unmapped_note"] == "stays"
    assert db.fs.document(prefs[1]).get().to_dict()["preference_type"]


# ------------------------------------------------------------------------------------------ the service catalog

CATALOG = ("service_categories", "services", "service_packages")


def test_catalog_audits_clean(catalog_db):
    db = catalog_db
    for entity in CATALOG:
        _clean(db, entity, len(db.docs(f"{entity}/")))


def test_catalog_drift_in_every_construct_is_found_exactly(catalog_db):
    db = catalog_db
    services = [p for p in db.docs("services/") if p.count("/") == 1]
    tiers = [p for p in db.docs("services/") if "/pricing_tiers/" in p]
    links = [p for p in db.docs("service_packages/") if "/services/" in p]
    categories = db.docs("service_categories/")
    s1, s2, s3 = services[:3]
    t1 = tiers[0]
    other_cat = next(c for c in categories if c.split("/")[1] != db.data.docs[s2]["category_id"])
    fid = lambda p: p.rsplit("/", 1)[1]  # noqa: E731
    db.sql(f"UPDATE services SET base_price = base_price + 1 WHERE firestore_id = '{fid(s1)}'",  # scalar
           f"UPDATE services SET category_id = (SELECT id FROM service_categories WHERE firestore_id = "
           f"'{fid(other_cat)}') WHERE firestore_id = '{fid(s2)}'",  # reference (UUID FK <-> document ID)
           f"UPDATE services SET metadata = metadata || '{{\"tools_provided\": false}}' WHERE firestore_id = '{fid(s3)}'",
           f"UPDATE service_pricing_tiers SET unit = 'sqft' WHERE firestore_id = '{fid(t1)}'")  # subcollection
    link = links[0]
    package = link.split("/")[1]
    in_package = {db.data.docs[x]["service_id"] for x in links if x.split("/")[1] == package}
    outsider = next(fid(s) for s in services if fid(s) not in in_package)
    db.sql(f"UPDATE package_services SET service_id = (SELECT id FROM services WHERE firestore_id = '{outsider}') "
           f"WHERE firestore_id = '{fid(link)}'")  # a reference inside a subcollection document
    zones = db.data.docs[s3]["availability_zones"]
    db.fs.document(s3).update({"availability_zones": [*zones, "mars"]})  # text[] <-> array (one more element)
    assert db.findings("services") == {
        (s1, "mismatch", ("base_price",)),
        (s2, "mismatch", ("category_id",)),
        (s3, "mismatch", ("availability_zones", "metadata.tools_provided")),
        (t1, "mismatch", ("unit",)),
    }
    assert db.findings("service_packages") == {(link, "mismatch", ("service_id",))}
    assert db.findings("service_categories") == set()
    root, other = categories[0], categories[1]  # a self-reference: the category tree
    db.sql(f"UPDATE service_categories SET parent_category_id = (SELECT id FROM service_categories WHERE "
           f"firestore_id = '{fid(other)}') WHERE firestore_id = '{fid(root)}'")
    db.fs.document(other).update({"sort_order": 99})
    assert db.findings("service_categories") == {(root, "mismatch", ("parent_category_id",)),
                                                 (other, "mismatch", ("sort_order",))}


def test_catalog_repair_toward_firestore_resolves_references(catalog_db):
    db = catalog_db
    services = [p for p in db.docs("services/") if p.count("/") == 1]
    tiers = [p for p in db.docs("services/") if "/pricing_tiers/" in p]
    categories = db.docs("service_categories/")
    other_cat = next(c for c in categories if c.split("/")[1] != db.data.docs[services[0]]["category_id"])
    db.sql(f"UPDATE services SET category_id = (SELECT id FROM service_categories WHERE firestore_id = "
           f"'{other_cat.split('/')[1]}') WHERE firestore_id = '{services[0].split('/')[1]}'")
    db.fs.document(tiers[0]).delete()
    db.fs.document(services[1]).update({"name": "renamed in Firestore"})
    e = db.audit("services", repair=Options(apply=True))
    assert {f.repair.status for f in e.findings} == {RepairStatus.APPLIED} and len(e.findings) == 3
    assert db.findings("services") == set()
    assert db.fs.document(services[0]).get().to_dict()["category_id"] == other_cat.split("/")[1]
    assert db.fs.document(tiers[0]).get().to_dict()["service_id"] == tiers[0].split("/")[1]


# ------------------------------------------------------------------------------------------ --all

def test_all_audits_every_entity_and_one_broken_entity_does_not_stop_the_others(catalog_db, tmp_path):
    """--all: the catalog entities audit; conversations (its tables are not in this database) and a rules file
    with an unknown key fail on their own, in the report and in the exit code (3)."""
    import json
    import shutil

    from click.testing import CliRunner

    from reconciler.cli import main

    rules = tmp_path / "rules"
    rules.mkdir()
    for name in (*CATALOG, "conversations"):
        shutil.copy(ROOT / "rules" / f"{name}.yaml", rules)
    (rules / "gadgets.yaml").write_text((ROOT / "rules" / "service_packages.yaml").read_text()
                                        .replace("entity: service_packages", "entity: gadgets")
                                        .replace("package_type:", "package_type: {colour: red}"))
    config = tmp_path / "reconciler.toml"
    config.write_text(f'[audit]\nrules_dir = "{rules}"\n'
                      f'entities = ["service_categories", "conversations", "services", "gadgets", "service_packages"]\n')
    db = catalog_db
    db.sql("UPDATE services SET name = 'drift' WHERE firestore_id = (SELECT min(firestore_id) FROM services)")
    r = CliRunner().invoke(main, ["--config", str(config), "--all", "--report-dir", str(tmp_path / "out"),
                                  "--pg-dsn", db.dsn])
    assert r.exit_code == 3, r.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    sections = {e["entity"]: e for e in report["entities"]}
    assert list(sections) == ["service_categories", "conversations", "services", "gadgets", "service_packages"]
    assert "table 'conversations' does not exist" in sections["conversations"]["error"]
    assert "unknown key 'colour'" in sections["gadgets"]["error"] and "gadgets.yaml:" in sections["gadgets"]["error"]
    for name in CATALOG:
        assert sections[name]["error"] is None
        assert sections[name]["counts"]["firestore"] == len(db.docs(f"{name}/"))
    assert sections["services"]["counts"]["mismatched"] == 1
    assert "conversations: FAILED" in r.output and "gadgets: FAILED" in r.output


# ------------------------------------------------------------------------------------------ rules new

# The manual edits a team makes to what `rules new` writes for seed 002's services table: exactly these.
SERVICES_EDITS = [
    ("  # category_id: {references: TABLE.COLUMN}", "  category_id: {references: service_categories.firestore_id}"),
]


def test_rules_new_on_services_passes_rules_check_after_the_listed_edits(catalog_db, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from reconciler.cli import main

    db = catalog_db
    rules = tmp_path / "rules"
    rules.mkdir()
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(rules))
    monkeypatch.setenv("RECONCILER_PG_DSN", db.dsn)
    out = rules / "services.yaml"
    r = CliRunner().invoke(main, ["rules", "new", "--table", "services", "--collection", "services",
                                  "--key", "firestore_id", "-o", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "naming: identity" in text and "key: firestore_id" in text
    assert "  firestore_id: id" in text  # the column holding the document ID maps the field holding it
    assert "#   id" in text  # the UUID primary key matches no field: listed, not mapped
    r = CliRunner().invoke(main, ["rules", "new", "--table", "services", "--collection", "services", "-o", str(out)])
    assert r.exit_code == 2 and "never overwrites" in r.output
    lines = text.splitlines()
    for old, new in SERVICES_EDITS:
        (i,) = [n for n, line in enumerate(lines) if line.startswith(old)]
        lines[i] = new
    out.write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(main, ["rules", "check", "--entity", "services"])
    assert r.exit_code == 0, r.output + out.read_text()
    settings = dataclasses.replace(db.settings, rules_dir=rules)
    e = run_audit(settings, ["services"]).entities[0]  # and it audits the seed-shaped data clean
    assert e.error is None and e.findings == () and e.counts.matched == len(
        [p for p in db.docs("services/") if p.count("/") == 1])


def test_repair_toward_postgres_looks_foreign_keys_up_from_document_ids(catalog_db, tmp_path):
    """The services rules with Firestore as the source of truth: a reference and a subcollection's parent link are
    written as the UUID of the row whose firestore_id the document names."""
    db = catalog_db
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "services.yaml").write_text((ROOT / "rules" / "services.yaml").read_text()
                                         .replace("source_of_truth: postgres", "source_of_truth: firestore"))
    settings = dataclasses.replace(db.settings, rules_dir=rules)
    services = [p for p in db.docs("services/") if p.count("/") == 1]
    tier = next(p for p in db.docs("services/") if "/pricing_tiers/" in p)
    s1 = services[0]
    other_cat = next(c.split("/")[1] for c in db.docs("service_categories/")
                     if c.split("/")[1] != db.data.docs[s1]["category_id"])
    db.fs.document(s1).update({"category_id": other_cat})  # the truth moves the service to another category
    db.sql(f"DELETE FROM service_pricing_tiers WHERE firestore_id = '{tier.rsplit('/', 1)[1]}'")  # a row missing
    e = run_audit(settings, ["services"], repair=Options(apply=True)).entities[0]
    assert e.error is None and {f.key for f in e.findings} == {s1, tier}
    assert {f.repair.status for f in e.findings} == {RepairStatus.APPLIED}, [f.repair for f in e.findings]
    assert run_audit(settings, ["services"]).entities[0].findings == ()
    with psycopg.connect(db.dsn) as conn:
        (cat,) = conn.execute("SELECT c.firestore_id FROM services s JOIN service_categories c ON c.id = s.category_id "
                              f"WHERE s.firestore_id = '{s1.split('/')[1]}'").fetchone()
        (parent,) = conn.execute("SELECT s.firestore_id FROM service_pricing_tiers t JOIN services s "
                                 f"ON s.id = t.service_id WHERE t.firestore_id = '{tier.rsplit('/', 1)[1]}'").fetchone()
    assert (cat, parent) == (other_cat, tier.split("/")[1])


def test_key_order_through_references_matches_firestore_for_awkward_ids(pg_dsn, fs_client, fs_project):
    """Subcollection streams ordered by the parent's firestore_id through the JOIN: numeric IDs first, then byte
    order whatever the database collation (en-US here would put 'a' before 'B'); any mismatch would read as
    missing records."""
    import datetime as dt
    import uuid

    ids = ["B", "a", "__id2__", "__id10__", "é", "Z_1", "a-b", "ab", "A"]
    data = dataset.Dataset()
    data.tables("service_categories", "services", "service_pricing_tiers")
    cat = uuid.uuid4()
    when = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    data.add_row("service_categories", {"id": cat, "firestore_id": "c", "name": "C", "slug": "c"})
    data.docs["service_categories/c"] = {"id": "c", "name": "C", "slug": "c"}
    for n, sid in enumerate(ids):
        suid = uuid.uuid4()
        data.add_row("services", {"id": suid, "firestore_id": sid, "category_id": cat, "name": sid, "slug": f"s{n}",
                                  "pricing_model": "fixed", "created_at": when})
        data.docs[f"services/{sid}"] = {"id": sid, "category_id": "c", "name": sid, "slug": f"s{n}",
                                        "pricing_model": "fixed", "created_at": when}
        for tid in ids if n == len(ids) - 1 else [f"{sid}-t"]:  # the last service's tiers: the awkward IDs too
            data.add_row("service_pricing_tiers", {"id": uuid.uuid4(), "firestore_id": tid, "service_id": suid,
                                                   "tier_name": tid, "price": 1})
            data.docs[f"services/{sid}/pricing_tiers/{tid}"] = {"id": tid, "service_id": sid, "tier_name": tid,
                                                               "price": 1}
    db = _load(pg_dsn, fs_client, fs_project, data, catalog.SCHEMA)
    e = db.audit("services")  # column defaults (currency, created_by...) differ: only the pairing is under test
    total = len(ids) + (len(ids) - 1) + len(ids)
    assert e.counts.postgres == e.counts.firestore == e.counts.matched + e.counts.mismatched == total
    assert e.counts.missing_in_firestore == e.counts.missing_in_postgres == 0
