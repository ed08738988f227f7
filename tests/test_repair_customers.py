"""Repair toward Firestore (customers: Postgres is the source of truth), on real Postgres and the real emulator."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import psycopg
from click.testing import CliRunner
from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from reconciler import repair as repair_module
from reconciler.cli import main
from reconciler.engine import run_audit
from reconciler.repair import LOG_TABLE, Options
from reconciler.result import RepairAction, RepairStatus

ROOT = Path(__file__).parents[1]

GHOST = "00000000-0000-4000-8000-000000000000"


def lenient(settings):
    """These tests drift a large share of 30 customers: the ratio guard has its own test."""
    return dataclasses.replace(settings, repair=dataclasses.replace(settings.repair, max_drift_ratio=1.0))


def dump(client: firestore.Client) -> dict[str, dict]:
    """Every document of the customers collection and its subcollections, with its update time."""
    out = {}
    for snap in client.collection("customers").stream():
        out[snap.reference.path] = (snap.to_dict(), snap.update_time)
    for name in ("addresses", "ipAddresses", "activities"):
        for snap in client.collection_group(name).stream():
            out[snap.reference.path] = (snap.to_dict(), snap.update_time)
    return out


def drifted(settings):
    e = run_audit(settings, ["customers"]).entities[0]
    assert e.error is None
    return {(f.key, f.kind.value) for f in e.findings}


def pick(people, predicate):
    return next(p for p in people if predicate(p))


def inject_every_kind(fs_client, pg_dsn, people):
    """One drift of each kind and construct; returns the expected (key, kind) findings."""
    col = fs_client.collection("customers")
    rich = [p for p in people if p.document.get("risk") and p.document.get("segments") and p.document.get("sources")]
    a, b, c = rich[:3]
    seg = a.document["segments"][0]
    addr = pick(people, lambda p: p.subcollections.get("addresses"))
    addr_id = next(iter(addr.subcollections["addresses"]))
    ip = pick(people, lambda p: len(p.subcollections.get("ipAddresses", {})) > 0 and p is not addr)
    ip_id = next(iter(ip.subcollections["ipAddresses"]))
    gone = people[-1]
    col.document(a.id).update({"metrics.totalSpent": 1.5, "firstName": firestore.DELETE_FIELD,
                               "segments": [dict(s, confidence=0.01) if s is seg else s for s in a.document["segments"]]})
    col.document(b.id).update({"sources.bogus": {"id": "x"}, "risk.level": "tampered", "demographics": "not a map"})
    col.document(addr.id).collection("addresses").document(addr_id).update({"city": "Atlantis"})
    col.document(ip.id).collection("ipAddresses").document(ip_id).delete()
    col.document(gone.id).delete()
    col.document(GHOST).set({"email": "ghost@example.com"})
    col.document(GHOST).collection("addresses").document("a1").set({"city": "Nowhere"})
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE customers SET status = 'blocked' WHERE id = %s", (c.id,))
    return {
        (f"customers/{a.id}", "mismatch"), (f"customers/{b.id}", "mismatch"), (f"customers/{c.id}", "mismatch"),
        (f"customers/{addr.id}/addresses/{addr_id}", "mismatch"),
        (f"customers/{ip.id}/ipAddresses/{ip_id}", "missing_in_firestore"),
        (f"customers/{gone.id}", "missing_in_firestore"),  # (its subcollection documents outlive it in Firestore)
        (f"customers/{GHOST}", "missing_in_postgres"), (f"customers/{GHOST}/addresses/a1", "missing_in_postgres"),
    }


def pg_checksum(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_name LIKE 'customer%'")]
        return {t: conn.execute(f'SELECT md5(coalesce(string_agg(t::text, \'|\' ORDER BY t::text), \'\')) FROM "{t}" t')
                .fetchone()[0] for t in tables}


def test_every_finding_kind_is_repaired_toward_firestore_and_a_second_run_does_nothing(customers_loaded, fs_client, pg_dsn):
    settings, people = customers_loaded
    settings = lenient(settings)
    expected = inject_every_kind(fs_client, pg_dsn, people)
    assert drifted(settings) == expected
    before_pg = pg_checksum(pg_dsn)

    result = run_audit(settings, ["customers"], repair=Options(apply=True, delete_orphans=True))
    e = result.entities[0]
    assert result.mode == "repair" and e.repair.applied and not e.failed
    assert {f.key: f.repair.status for f in e.findings} == {k: RepairStatus.APPLIED for k, _ in expected}
    actions = {f.key: f.repair.action for f in e.findings}
    assert actions[f"customers/{GHOST}"] == RepairAction.DELETE
    assert actions[f"customers/{people[-1].id}"] == RepairAction.CREATE
    assert e.repair.done == len(expected) and e.repair.clean

    assert drifted(settings) == set()  # repair, then audit: clean
    assert pg_checksum(pg_dsn) == before_pg  # the source of truth was not touched
    assert not fs_client.document(f"customers/{GHOST}").get().exists
    with psycopg.connect(pg_dsn) as conn:
        logged = conn.execute(f"SELECT entity_id, operation, postgres_status, firestore_status, data_snapshot, "
                              f"completed_at IS NOT NULL FROM {LOG_TABLE}").fetchall()
    assert {row[0] for row in logged} == {k for k, _ in expected}
    assert all(row[2] == "source" and row[3] == "applied" and row[5] for row in logged)
    status_row = next(r for r in logged if r[4]["writes"] and "status" in r[4]["writes"][0].get("set", {}))
    assert status_row[4]["after"]["status"] == "blocked" and status_row[4]["before"]["status"] != "blocked"

    before = dump(fs_client)
    again = run_audit(settings, ["customers"], repair=Options(apply=True, delete_orphans=True))
    assert again.entities[0].repair.planned == 0 and not again.has_drift
    assert dump(fs_client) == before  # the second run wrote nothing (update times unchanged)


def test_unmapped_firestore_fields_survive_a_repair_byte_for_byte(customers_loaded, fs_client):
    settings, people = customers_loaded
    settings = lenient(settings)
    p = pick(people, lambda p: p.document.get("segments") and p.document.get("risk") and p.subcollections.get("addresses"))
    col = fs_client.collection("customers")
    addr_id = next(iter(p.subcollections["addresses"]))
    addr = col.document(p.id).collection("addresses").document(addr_id)
    unmapped = {"appOnly": {"blob": b"\x00\xffbytes", "when": firestore.SERVER_TIMESTAMP, "n": [1, "two", None]},
                "metrics.appComputed": 0.1 + 0.2}
    col.document(p.id).update(unmapped)
    segments = [dict(s, appNote=f"note {i}") for i, s in enumerate(p.document["segments"])]
    segments[0]["confidence"] = -5  # mapped drift inside the array: the whole array is rewritten
    col.document(p.id).update({"segments": segments, "metrics.totalOrders": -1, "risk.level": firestore.DELETE_FIELD})
    addr.update({"city": "Atlantis", "appGeoHash": "u4pruydqqvj"})
    before = col.document(p.id).get().to_dict()
    addr_before = addr.get().to_dict()

    e = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
    assert e.repair.done == 2 and e.repair.clean

    after = col.document(p.id).get().to_dict()
    assert after["appOnly"] == before["appOnly"] and after["metrics"]["appComputed"] == before["metrics"]["appComputed"]
    assert [s["appNote"] for s in after["segments"]] == [s["appNote"] for s in before["segments"]]
    assert after["segments"][0]["confidence"] == p.document["segments"][0]["confidence"]
    assert after["metrics"]["totalOrders"] == p.document["metrics"]["totalOrders"]
    assert after["risk"]["level"] == p.document["risk"]["level"]
    # everything the repair was not about is identical, value and type
    untouched = lambda d: {k: v for k, v in d.items() if k not in ("segments", "metrics", "risk")}  # noqa: E731
    assert untouched(after) == untouched(before)
    assert addr.get().to_dict() == dict(addr_before, city=p.subcollections["addresses"][addr_id]["city"])
    assert drifted(settings) == set()


def test_dry_run_is_the_default_lists_the_writes_and_writes_nothing(customers_loaded, fs_client, pg_dsn, tmp_path,
                                                                     monkeypatch):
    settings, people = customers_loaded
    fs_client.collection("customers").document(people[0].id).update({"metrics.totalOrders": -1})
    before = dump(fs_client)
    monkeypatch.setenv("RECONCILER_PG_DSN", pg_dsn)
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(ROOT / "rules"))
    r = CliRunner().invoke(main, ["--entity", "customers", "--repair", "--report-dir", str(tmp_path)])
    assert r.exit_code == 1, r.output
    expected = people[0].document["metrics"]["totalOrders"]
    assert f"firestore update customers/{people[0].id}: set metrics.totalOrders = {expected}" in r.stdout
    assert "dry run" in r.stdout
    assert dump(fs_client) == before
    with psycopg.connect(pg_dsn) as conn:  # not even the audit table is created by a dry run
        assert conn.execute("SELECT to_regclass(%s)", (LOG_TABLE,)).fetchone()[0] is None
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["mode"] == "repair"
    (finding,) = report["entities"][0]["findings"]
    assert finding["repair"]["action"] == "update" and finding["repair"]["status"] == "skipped"
    assert finding["repair"]["writes"] == [{"side": "firestore", "op": "update", "path": f"customers/{people[0].id}",
                                            "set": {"metrics.totalOrders": expected}, "delete": []}]
    assert "Repair toward Firestore, dry run" in (tmp_path / "report.html").read_text()

    applied = CliRunner().invoke(main, ["--entity", "customers", "--repair", "--apply"])
    assert applied.exit_code == 0, applied.output
    assert "repair toward firestore: 1 records repaired, 0 skipped, 0 failed" in applied.stdout


def test_orphans_are_only_deleted_with_delete_orphans_and_the_report_keeps_a_copy(customers_loaded, fs_client):
    settings, _ = customers_loaded
    settings = lenient(settings)
    ghost = fs_client.document(f"customers/{GHOST}")
    ghost.set({"email": "ghost@example.com", "appOnly": {"k": [1, 2]}})
    kept = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
    (f,) = kept.findings
    assert f.repair.action == RepairAction.SKIP and "--delete-orphans" in f.repair.reason
    assert ghost.get().exists and kept.drift_left

    deleted = run_audit(settings, ["customers"], repair=Options(apply=True, delete_orphans=True)).entities[0]
    (f,) = deleted.findings
    assert f.repair.action == RepairAction.DELETE and f.repair.status == RepairStatus.APPLIED
    assert f.repair.deleted == {"email": "ghost@example.com", "appOnly": {"k": [1, 2]}}
    assert not ghost.get().exists


def test_a_record_changed_between_diff_and_apply_is_skipped_not_overwritten(customers_loaded, fs_client, pg_dsn,
                                                                             monkeypatch):
    settings, people = customers_loaded
    settings = lenient(settings)
    col = fs_client.collection("customers")
    target, truth, steady = people[0], people[1], people[2]
    for p in (target, truth, steady):
        col.document(p.id).update({"metrics.totalOrders": -1})
    original = repair_module._Applier.apply

    def concurrent_writer_then_apply(self, batch):
        col.document(target.id).update({"metrics.totalOrders": 777})  # the app writes Firestore
        with psycopg.connect(pg_dsn) as conn:  # and someone changes the source of truth
            conn.execute("UPDATE customer_metrics SET total_orders = 555 WHERE customer_id = %s", (truth.id,))
        return original(self, batch)

    monkeypatch.setattr(repair_module._Applier, "apply", concurrent_writer_then_apply)
    e = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
    by_key = {f.key: f.repair for f in e.findings}
    assert by_key[f"customers/{target.id}"].status == RepairStatus.SKIPPED
    assert by_key[f"customers/{target.id}"].reason.startswith("changed_during_run: firestore")
    assert by_key[f"customers/{truth.id}"].reason.startswith("changed_during_run: postgres")
    assert by_key[f"customers/{steady.id}"].status == RepairStatus.APPLIED
    assert col.document(target.id).get().to_dict()["metrics"]["totalOrders"] == 777  # not overwritten
    assert col.document(truth.id).get().to_dict()["metrics"]["totalOrders"] == -1  # not written from a stale read
    assert e.repair.skipped == 2 and e.repair.done == 1 and e.drift_left


def test_the_drift_ratio_guard_refuses_an_empty_collection(customers_loaded, pg_dsn, monkeypatch):
    monkeypatch.setenv("RECONCILER_PG_DSN", pg_dsn)
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(ROOT / "rules"))
    empty_project = f"wrong-{uuid.uuid4().hex[:8]}"  # a wrong project ID: the collection reads as empty
    r = CliRunner().invoke(main, ["--entity", "customers", "--firestore-project", empty_project, "--repair", "--apply"])
    assert r.exit_code == 3, r.output
    assert "refused" in r.stdout and "max_drift_ratio" in r.stdout
    client = firestore.Client(project=empty_project)
    assert list(client.collection("customers").limit(1).stream()) == []  # nothing was written
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (LOG_TABLE,)).fetchone()[0] is None

    forced = CliRunner().invoke(main, ["--entity", "customers", "--firestore-project", empty_project, "--repair",
                                       "--apply", "--force", "--max-repairs", "2"])
    assert "WARNING: --force" in forced.stderr
    assert forced.exit_code == 1, forced.output  # two created, the rest left: drift remains
    assert len(list(client.collection("customers").stream())) == 2
    client.close()


def test_repair_flags_without_repair_are_a_usage_error(customers_loaded, pg_dsn, monkeypatch):
    monkeypatch.setenv("RECONCILER_PG_DSN", pg_dsn)
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(ROOT / "rules"))
    r = CliRunner().invoke(main, ["--entity", "customers", "--apply"])
    assert r.exit_code == 2 and "--apply only work with --repair" in r.output


# ------------------------------------------------------------------------------------------ the property

FS_FIELDS = ["status", "metrics.totalOrders", "engagement.email.totalOpened", "demographics.ageRange", "firstName",
             "risk.overallScore", "tags"]
DRIFT = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 29), st.sampled_from(FS_FIELDS),
              st.one_of(st.integers(-5, 5), st.text(max_size=5), st.none(), st.lists(st.text(max_size=3), max_size=2))),
    st.tuples(st.just("delete_field"), st.integers(0, 29), st.sampled_from(FS_FIELDS), st.none()),
    st.tuples(st.just("delete_doc"), st.integers(0, 29), st.none(), st.none()),
    st.tuples(st.just("delete_subdoc"), st.integers(0, 29), st.sampled_from(["addresses", "ipAddresses", "activities"]),
              st.none()),
    st.tuples(st.just("extra_source"), st.integers(0, 29), st.text(min_size=1, max_size=6), st.none()),
    st.tuples(st.just("shuffle_segments"), st.integers(0, 29), st.none(), st.floats(-1, 1)),
    st.tuples(st.just("orphan"), st.integers(0, 29), st.uuids(version=4), st.none()),
    st.tuples(st.just("unmapped"), st.integers(0, 29), st.text(min_size=1, max_size=5), st.integers(-2**63, 2**63 - 1)),
    st.tuples(st.just("pg_status"), st.integers(0, 29), st.sampled_from(["active", "inactive", "blocked"]), st.none()),
)


def apply_drift(op, fs_client, pg_dsn, people) -> None:
    kind, i, arg, value = op
    p = people[i]
    ref = fs_client.collection("customers").document(p.id)
    if kind in ("set", "delete_field", "extra_source", "shuffle_segments", "unmapped") and not ref.get().exists:
        return
    if kind == "set":
        ref.update({arg: value})
    elif kind == "delete_field":
        ref.update({arg: firestore.DELETE_FIELD})
    elif kind == "delete_doc":
        ref.delete()
    elif kind == "delete_subdoc":
        for doc_id in list(p.subcollections.get(arg, {}))[:1]:
            ref.collection(arg).document(doc_id).delete()
    elif kind == "extra_source":
        ref.update({FieldPath("sources", arg).to_api_repr(): {"id": arg}})
    elif kind == "shuffle_segments":
        segments = list(reversed(ref.get().to_dict().get("segments") or []))
        if segments and isinstance(segments[0], dict):
            segments[0]["confidence"] = value
        ref.update({"segments": segments})
    elif kind == "orphan":
        fs_client.collection("customers").document(str(arg)).set({"email": "orphan@example.com"})
    elif kind == "unmapped":
        ref.update({FieldPath("appOnly", arg).to_api_repr(): value})
    elif kind == "pg_status":
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("UPDATE customers SET status = %s WHERE id = %s", (arg, p.id))


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drift=st.lists(DRIFT, min_size=1, max_size=6))
def test_property_audit_repair_audit_is_clean_and_the_truth_is_unchanged(customers_loaded, fs_client, pg_dsn, drift):
    settings, people = customers_loaded
    settings = lenient(settings)
    for op in drift:
        apply_drift(op, fs_client, pg_dsn, people)
    truth = pg_checksum(pg_dsn)
    result = run_audit(settings, ["customers"], repair=Options(apply=True, delete_orphans=True))
    e = result.entities[0]
    assert not e.failed, [(f.key, f.repair) for f in e.findings if f.repair and f.repair.status != RepairStatus.APPLIED]
    assert drifted(settings) == set()
    assert pg_checksum(pg_dsn) == truth

