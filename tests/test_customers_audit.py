"""The customers entity end to end, on a real Postgres (seed 000 schema) and the real Firestore emulator."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
from click.testing import CliRunner

from demo import customers
from reconciler.cli import main
from reconciler.engine import run_audit

ROOT = Path(__file__).parents[1]
N = 30


def _records(people) -> int:
    return sum(1 + sum(len(docs) for docs in p.subcollections.values()) for p in people)


def _findings(result):
    (entity,) = result.entities
    assert entity.error is None
    return {(f.key, f.kind.value, tuple(sorted(x.path for x in f.fields))) for f in entity.findings}


def test_seed_shaped_customers_audit_clean(customers_loaded):
    """Every mapped field of seed 000 round-trips: decimals vs doubles (and ints), timestamps, dates, GeoPoints,
    inet/uuid strings, arrays, jsonb maps, the latest risk assessment, sources map, segments set in another
    order, NULL columns written as null or left out, server-set timestamps that differ."""
    settings, people = customers_loaded
    result = run_audit(settings, ["customers"])
    e = result.entities[0]
    assert e.error is None and e.findings == ()
    assert e.counts.postgres == e.counts.firestore == e.counts.matched == _records(people)
    assert not result.has_drift


def _with(people, predicate):
    return next(p for p in people if predicate(p))


def test_every_mapped_construct_drift_is_found_with_its_path(customers_loaded, fs_client, pg_dsn):
    settings, people = customers_loaded
    col = fs_client.collection("customers")
    rich = [p for p in people if p.document.get("risk") and p.document.get("segments") and p.document.get("demographics")]
    a, b, c, d = rich[:4]
    seg = a.document["segments"][0]
    src = next(iter(b.document["sources"]))
    addr = _with(people, lambda p: p.subcollections.get("addresses"))
    ip = _with(people, lambda p: p.subcollections.get("ipAddresses"))
    act = _with(people, lambda p: p.subcollections.get("activities"))
    addr_id, ip_id, act_id = (next(iter(x.subcollections[n])) for x, n in
                              ((addr, "addresses"), (ip, "ipAddresses"), (act, "activities")))
    gone = people[-1]
    # Firestore-side changes
    col.document(a.id).update({"metrics.totalSpent": 123456.78, "engagement.email.totalOpened": 987654,
                               "segments": [dict(s, confidence=0.01) if s is seg else s for s in a.document["segments"]]})
    col.document(b.id).update({"risk.fraudIndicators.ipCountryCount": 77, "risk.externalScores.sift": 1234,
                               f"sources.{src}.id": "tampered", "demographics.ageRange": "99-100",
                               "engagement.loyalty.tier": "tin"})
    col.document(addr.id).collection("addresses").document(addr_id).update({"city": "Atlantis"})
    col.document(ip.id).collection("ipAddresses").document(ip_id).update({"isp.name": "Evil ISP"})
    col.document(act.id).collection("activities").document(act_id).update({"context.utm.source": "tampered"})
    col.document(gone.id).delete()
    col.document("00000000-0000-4000-8000-000000000000").set({"email": "ghost@example.com"})
    # Postgres-side changes
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE customers SET email = 'changed@example.com' WHERE id = %s", (c.id,))
        conn.execute("UPDATE customer_risk_assessments SET payment_failures = 99 WHERE customer_id = %s AND "
                     "assessed_at = (SELECT max(assessed_at) FROM customer_risk_assessments WHERE customer_id = %s)",
                     (d.id, d.id))
        conn.execute("UPDATE customer_engagement SET bounce_rate = 0.99 WHERE customer_id = %s", (d.id,))
    seg_label = f"segments[{seg['type']},{seg['name']}].confidence"
    got = _findings(run_audit(settings, ["customers"]))
    sub_a, sub_i, sub_v = (f"customers/{addr.id}/addresses/{addr_id}", f"customers/{ip.id}/ipAddresses/{ip_id}",
                           f"customers/{act.id}/activities/{act_id}")
    expected = {
        (f"customers/{a.id}", "mismatch", tuple(sorted(["metrics.totalSpent", "engagement.email.totalOpened", seg_label]))),
        (f"customers/{b.id}", "mismatch", tuple(sorted([
            "risk.fraudIndicators.ipCountryCount", "risk.externalScores.sift", f"sources.{src}.id",
            "demographics.ageRange", "engagement.loyalty.tier"]))),
        (f"customers/{c.id}", "mismatch", ("email", "emailLowercase")),  # a generated column follows
        (f"customers/{d.id}", "mismatch", ("engagement.web.bounceRate", "risk.paymentFlags.paymentFailures")),
        (sub_a, "mismatch", ("city",)),
        (sub_i, "mismatch", ("isp.name",)),
        (sub_v, "mismatch", ("context.utm.source",)),
        (f"customers/{gone.id}", "missing_in_firestore", ()),
        ("customers/00000000-0000-4000-8000-000000000000", "missing_in_postgres", ()),
    }
    assert got == expected


def test_a_newer_risk_assessment_in_postgres_changes_the_compared_risk(customers_loaded, pg_dsn):
    settings, people = customers_loaded
    p = _with(people, lambda p: p.document.get("risk") and p.document["risk"]["level"] != "critical")
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO customer_risk_assessments (customer_id, risk_score, risk_level, assessed_at) "
                     "VALUES (%s, 100, 'critical', now() + interval '1 day')", (p.id,))
    (finding,) = run_audit(settings, ["customers"]).entities[0].findings
    paths = {f.path: (f.postgres, f.firestore) for f in finding.fields}
    assert paths["risk.overallScore"][0] == 100 and paths["risk.level"] == ("critical", p.document["risk"]["level"])


def test_cli_writes_reports_and_exits_1_on_drift(customers_loaded, fs_client, tmp_path, monkeypatch):
    settings, people = customers_loaded
    fs_client.collection("customers").document(people[0].id).update({"metrics.totalOrders": -1})
    monkeypatch.setenv("RECONCILER_PG_DSN", settings.postgres.dsn)
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(ROOT / "rules"))
    result = CliRunner().invoke(main, ["--entity", "customers", "--report-dir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    (entity,) = report["entities"]
    assert entity["counts"]["mismatched"] == 1 and entity["counts"]["postgres"] == _records(people)
    (finding,) = entity["findings"]
    assert finding == {"key": f"customers/{people[0].id}", "kind": "mismatch",
                       "fields": [{"path": "metrics.totalOrders", "kind": "value", "postgres": people[0].document["metrics"]["totalOrders"],
                                   "firestore": -1}]} | {k: v for k, v in finding.items() if k not in ("key", "kind", "fields")}
    html = (tmp_path / "report.html").read_text()
    assert "metrics.totalOrders" in html and people[0].id in html
    clean = CliRunner().invoke(main, ["--entity", "customers", "--ids", people[1].id, "--no-progress"])
    assert clean.exit_code == 0, clean.output


def test_rules_check_against_the_live_seed_schema(customers_loaded, tmp_path, monkeypatch):
    settings, _ = customers_loaded
    monkeypatch.setenv("RECONCILER_PG_DSN", settings.postgres.dsn)
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(ROOT / "rules"))
    ok = CliRunner().invoke(main, ["rules", "check", "--entity", "customers"])
    assert ok.exit_code == 0, ok.output
    assert "checked against the live schema" in ok.output
    broken = (ROOT / "rules" / "customers.yaml").read_text().replace("  phone_normalized:\n", "  phone_normalised:\n")
    (tmp_path / "customers.yaml").write_text(broken)
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(tmp_path))
    bad = CliRunner().invoke(main, ["rules", "check", "--entity", "customers"])
    assert bad.exit_code == 2
    line = broken.splitlines().index("  phone_normalised:") + 1
    assert f"customers.yaml:{line}: columns: column customers.phone_normalised does not exist" in bad.output
    audit = CliRunner().invoke(main, ["--entity", "customers"])  # the audit refuses the same rules up front
    assert audit.exit_code == 2 and "phone_normalised" in audit.output


def test_per_field_counts_name_the_subcollection(customers_loaded, fs_client):
    settings, people = customers_loaded
    ip = _with(people, lambda p: p.subcollections.get("ipAddresses"))
    ip_id = next(iter(ip.subcollections["ipAddresses"]))
    fs_client.collection("customers").document(ip.id).collection("ipAddresses").document(ip_id).update({"isp.name": "x"})
    fs_client.collection("customers").document(people[0].id).update({"metrics.totalOrders": -5})
    e = run_audit(settings, ["customers"]).entities[0]
    assert e.field_counts == {"ipAddresses/isp.name": 1, "metrics.totalOrders": 1}


def test_libpq_variables_are_used_when_no_dsn_is_given_and_progress_shows_only_when_asked(customers_loaded, monkeypatch):
    from psycopg.conninfo import conninfo_to_dict

    settings, people = customers_loaded
    parts = conninfo_to_dict(settings.postgres.dsn)
    monkeypatch.delenv("RECONCILER_PG_DSN", raising=False)
    for var, key in (("PGHOST", "host"), ("PGPORT", "port"), ("PGUSER", "user"), ("PGDATABASE", "dbname")):
        monkeypatch.setenv(var, str(parts[key]))
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(ROOT / "rules"))
    quiet = CliRunner().invoke(main, ["--entity", "customers"])  # not a terminal: no progress line (cron)
    assert quiet.exit_code == 0, quiet.output
    assert "records," not in quiet.stderr and f"{_records(people):,} in Postgres" in quiet.stdout
    shown = CliRunner().invoke(main, ["--entity", "customers", "--progress"])
    assert shown.exit_code == 0 and "customers/customers:" in shown.stderr and "/s" in shown.stderr


def test_all_runs_the_entities_the_config_enables(customers_loaded, monkeypatch):
    settings, people = customers_loaded
    monkeypatch.setenv("RECONCILER_PG_DSN", settings.postgres.dsn)
    monkeypatch.setenv("RECONCILER_CONFIG", str(ROOT / "config" / "reconciler.toml"))  # audit.entities = customers
    r = CliRunner().invoke(main, ["--all"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"customers: {_records(people):,} in Postgres")


def test_the_demo_drift_is_found_exactly(customers_loaded, fs_client, pg_dsn):
    settings, people = customers_loaded
    with psycopg.connect(pg_dsn) as conn:
        injected = customers.inject_demo_drift(conn, fs_client, people, seed=3)
    assert {d["kind"] for d in injected} == {"mismatch", "missing_in_firestore", "missing_in_postgres"}
    found = run_audit(settings, ["customers"]).entities[0].findings
    assert {(f.key, f.kind.value) for f in found} == {(d["key"], d["kind"]) for d in injected}
