"""run-once (audit -> reports -> history), the history tables and what reads them, on real Postgres + emulator."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import socket
from pathlib import Path

import psycopg
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.history import History, last_result
from reconciler.report import render_html, to_dict
from reconciler.result import Counts, EntityResult, FieldDiff, Finding, FindingKind, RunResult
from reconciler.runner import run_job

ROOT = Path(__file__).parents[1]


def _records(people) -> int:
    return sum(1 + sum(len(docs) for docs in p.subcollections.values()) for p in people)


def _env(monkeypatch, settings, report_dir: Path | None = None) -> None:
    monkeypatch.setenv("RECONCILER_PG_DSN", settings.postgres.dsn)
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(ROOT / "rules"))
    if report_dir is not None:
        monkeypatch.setenv("RECONCILER_REPORT_DIR", str(report_dir))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_once_exit_codes_reports_history_rows_and_the_history_command(customers_loaded, fs_client, tmp_path,
                                                                         monkeypatch):
    settings, people = customers_loaded
    _env(monkeypatch, settings, tmp_path / "out")
    clean = CliRunner().invoke(main, ["run-once", "--entity", "customers"])
    assert clean.exit_code == 0, clean.output
    assert f"customers: {_records(people):,} in Postgres" in clean.stdout
    html1 = (tmp_path / "out" / "report.html").read_text()

    fs_client.collection("customers").document(people[3].id).update({"metrics.totalOrders": -7})
    fs_client.collection("customers").document(people[5].id).delete()
    drift = CliRunner().invoke(main, ["run-once"])  # no --entity: audit.entities of the shipped config (customers)
    assert drift.exit_code == 1, drift.output

    with psycopg.connect(settings.postgres.dsn) as conn:
        runs = conn.execute("SELECT run_id, job, mode, outcome, finished_at >= started_at, duration_s > 0 "
                            "FROM reconciler_runs ORDER BY started_at").fetchall()
        assert [r[1:] for r in runs] == [("run-once", "audit", "clean", True, True),
                                         ("run-once", "audit", "drift", True, True)]
        ents = conn.execute("SELECT run_id, entity, postgres, firestore, matched, mismatched, missing_in_firestore, "
                            "drifted, outcome, error, field_counts FROM reconciler_run_entities "
                            "ORDER BY run_id = %s", (runs[1][0],)).fetchall()
        n = _records(people)
        findings = conn.execute("SELECT key, kind, fields FROM reconciler_findings WHERE run_id = %s ORDER BY kind",
                                (runs[1][0],)).fetchall()
    assert ents[0][1:] == ("customers", n, n, n, 0, 0, 0, "clean", None, {})
    assert findings == [("customers/" + people[3].id, "mismatch", ["metrics.totalOrders"]),
                        ("customers/" + people[5].id, "missing_in_firestore", [])]
    # deleting a Firestore document leaves its subcollections: only the root document is missing
    assert ents[1][1:] == ("customers", n, n - 1, n - 2, 1, 1, 2, "drift", None, {"metrics.totalOrders": 1})

    shown = CliRunner().invoke(main, ["history", "--entity", "customers"])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0].split()[:3] == ["started", "(UTC)", "run"] and len(lines) == 3
    assert re.fullmatch(rf"\S+ \S+\s+{runs[0][0]}\s+run-once\s+{n:,}\s+{n:,}\s+{n:,}\s+0\s+\S+ s\s+clean", lines[1])
    assert re.fullmatch(rf"\S+ \S+\s+{runs[1][0]}\s+run-once\s+{n:,}\s+{n - 1:,}\s+{n - 2:,}\s+2\s+\S+ s\s+drift",
                        lines[2])
    limited = CliRunner().invoke(main, ["history", "--entity", "customers", "--limit", "1"])
    assert len(limited.stdout.splitlines()) == 2 and runs[1][0] in limited.stdout

    # the report shows the drift over time: the first run had one column, the second two (this one outlined)
    assert 'id="chart-trend-customers"' in html1 and html1.count('<g class="col') == 1
    html2 = (tmp_path / "out" / "report.html").read_text()
    trend = html2[html2.index('id="chart-trend-customers"'):]
    trend = trend[:trend.index("</svg>")]
    assert re.findall(r'<g class="col ([a-z ]+)"><title>[^<]*run (\w+): (\d+) drifted', trend) == [
        ("clean", runs[0][0], "0"), ("drift current", runs[1][0], "2")]
    assert "Drift over time" in html2
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [(p["run_id"], p["drifted"], p["outcome"]) for p in report["history"]["customers"]] == [
        (runs[0][0], 0, "clean"), (runs[1][0], 2, "drift")]


def test_run_once_exit_2_on_a_config_error_and_3_when_postgres_is_unreachable(tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[schedule.jobs]]\nname = "n"\ncron = "0 2 * *"\n')
    r = CliRunner().invoke(main, ["--config", str(bad), "run-once"])
    assert r.exit_code == 2 and f"{bad}: schedule.jobs[0].cron: '0 2 * *' has 4 fields" in r.output
    monkeypatch.setenv("RECONCILER_PG_DSN", f"postgresql://nobody@127.0.0.1:{_free_port()}/x")
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(ROOT / "rules"))
    r = CliRunner().invoke(main, ["run-once", "--entity", "customers"])
    plain = [line for line in r.output.splitlines() if not line.startswith("{")]  # not the JSON log lines
    assert r.exit_code == 3 and plain[0].startswith("reconcile: error: postgres: cannot connect:")


def test_run_once_exits_3_when_the_history_cannot_be_written_but_still_writes_the_report(customers_loaded, tmp_path,
                                                                                          monkeypatch):
    settings, _ = customers_loaded
    _env(monkeypatch, settings, tmp_path)
    monkeypatch.setenv("RECONCILER_HISTORY_DSN", f"postgresql://nobody@127.0.0.1:{_free_port()}/x")
    r = CliRunner().invoke(main, ["run-once", "--entity", "customers"])
    assert r.exit_code == 3 and "cannot connect" in r.output
    assert (tmp_path / "report.html").is_file() and "chart-trend" not in (tmp_path / "report.html").read_text()


def test_history_in_another_database_and_last_result_rebuilds_the_previous_run(customers_loaded, fs_client, pg_database):
    settings, people = customers_loaded
    other = pg_database()
    settings = dataclasses.replace(settings, history=dataclasses.replace(settings.history, dsn=other))
    assert last_result(settings, ["customers"]) is None  # no tables yet: no history, and nothing created by reading
    with psycopg.connect(other) as conn:
        assert conn.execute("SELECT to_regclass('reconciler_runs')").fetchone() == (None,)
    first = run_job(settings, ["customers"])
    fs_client.collection("customers").document(people[0].id).update({"email": "x@example.org"})
    second = run_job(settings, ["customers"])
    with psycopg.connect(settings.postgres.dsn) as conn:  # the audited database got no tables of ours
        assert conn.execute("SELECT to_regclass('reconciler_runs')").fetchone() == (None,)

    got = last_result(settings, ["customers"])
    (e,), (want,) = got.entities, second.entities
    assert got.run_id == second.run_id and got.mode == "audit"
    assert e.counts == want.counts and e.field_counts == want.field_counts == {"email": 1}
    assert [(f.key, f.kind, tuple(d.path for d in f.fields)) for f in e.findings] == [
        (f"customers/{people[0].id}", FindingKind.MISMATCH, ("email",))]
    before = last_result(settings, ["customers"], before=second.started_at)
    assert before.run_id == first.run_id and before.entities[0].findings == () and not before.has_drift


T = dt.datetime(2026, 1, 1, 2, 0, tzinfo=dt.timezone.utc)


def _result(day: int, keys: tuple[str, ...], *, truncated: bool = False, error: str | None = None) -> RunResult:
    findings = tuple(Finding(k, FindingKind.MISMATCH, (FieldDiff("a.b", 1, 2, "a.b"),)) for k in keys)
    entity = EntityResult("things", "postgres", Counts(postgres=5, firestore=5, matched=5 - len(keys),
                                                       mismatched=len(keys) + truncated),
                          findings, truncated, {"a.b": len(keys)}, 1.0, error)
    start = T + dt.timedelta(days=day)
    return RunResult(f"run{day}", "audit", start, start + dt.timedelta(seconds=3), (entity,))


def test_first_seen_is_the_start_of_the_current_unbroken_streak(pg_dsn):
    # day: 0 drift, 1 drift, 2 clean, 3 drift, 4 truncated without the key (unknown), 5 failed, 6 drift
    with History(psycopg.connect(pg_dsn)) as h:
        for day, keys, extra in [(0, ("k",), {}), (1, ("k",), {}), (2, (), {}), (3, ("k",), {}),
                                 (4, ("other",), {"truncated": True}), (5, (), {"error": "boom"}), (6, ("k", "j"), {})]:
            h.record(_result(day, keys, **extra), job="nightly")
        k = h.first_seen("things", "k")
        assert (k.since, k.streak_runs, k.ever, k.last, k.runs) == (T + dt.timedelta(days=3), 2, T,
                                                                   T + dt.timedelta(days=6), 7)
        j = h.first_seen("things", "j")
        assert (j.since, j.streak_runs, j.ever) == (T + dt.timedelta(days=6), 1, T + dt.timedelta(days=6))
        h.record(_result(7, ()), job="nightly")
        k = h.first_seen("things", "k")
        assert k.since is None and k.streak_runs == 0 and k.ever == T and k.last == T + dt.timedelta(days=6)
        never = h.first_seen("things", "nope")
        assert (never.since, never.ever, never.runs) == (None, None, 8)
        assert [(r.run_id, r.drifted, r.outcome) for r in h.trend("things", limit=3)] == [
            ("run5", 0, "failed"), ("run6", 2, "drift"), ("run7", 0, "clean")]
        assert h.last_started("things") == T + dt.timedelta(days=7) and h.last_started("nothing") is None


def test_the_report_renders_without_history_and_has_no_trend_chart():
    entity = EntityResult("things", "postgres", Counts(postgres=1, firestore=1, matched=1), (), False)
    page = render_html(to_dict(RunResult("r1", "audit", T, T, (entity,))))
    assert "No drift" in page and "Drift over time" not in page and "chart-trend" not in page


def test_init_db_creates_our_tables_and_a_disabled_history_records_nothing(customers_loaded, pg_database, tmp_path,
                                                                           monkeypatch):
    settings, _ = customers_loaded
    other = pg_database()
    _env(monkeypatch, settings)
    monkeypatch.setenv("RECONCILER_HISTORY_DSN", other)
    r = CliRunner().invoke(main, ["init-db"])
    assert r.exit_code == 0, r.output
    tables = "SELECT to_regclass(%s) IS NOT NULL"
    with psycopg.connect(other) as conn:
        assert [conn.execute(tables, (t,)).fetchone()[0] for t in
                ("reconciler_runs", "reconciler_run_entities", "reconciler_findings", "reconciler_repairs")] == [
            True, True, True, False]
    with psycopg.connect(settings.postgres.dsn) as conn:
        assert [conn.execute(tables, (t,)).fetchone()[0] for t in ("reconciler_runs", "reconciler_repairs")] == [
            False, True]
    cfg = tmp_path / "off.toml"
    cfg.write_text(f'[audit]\nrules_dir = "{ROOT / "rules"}"\n[history]\nenabled = false\n')
    monkeypatch.delenv("RECONCILER_HISTORY_DSN")
    r = CliRunner().invoke(main, ["--config", str(cfg), "run-once", "--entity", "customers"])
    assert r.exit_code == 0, r.output
    with psycopg.connect(settings.postgres.dsn) as conn:
        assert conn.execute(tables, ("reconciler_runs",)).fetchone()[0] is False
    r = CliRunner().invoke(main, ["--config", str(cfg), "history", "--entity", "customers"])
    assert r.exit_code == 2 and "history is disabled" in r.output


def test_a_run_that_cannot_reach_firestore_is_recorded_as_failed(pg_dsn, monkeypatch):
    from demo import customers

    with psycopg.connect(pg_dsn) as conn:
        customers.create_schema(conn)
    monkeypatch.setenv("RECONCILER_PG_DSN", pg_dsn)
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(ROOT / "rules"))
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{_free_port()}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "nowhere")
    r = CliRunner().invoke(main, ["run-once", "--entity", "customers"])
    assert r.exit_code == 3 and "firestore: cannot reach" in r.output
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT job, outcome FROM reconciler_runs").fetchall() == [("run-once", "failed")]
        (entity, outcome, error), = conn.execute("SELECT entity, outcome, error FROM reconciler_run_entities").fetchall()
    assert (entity, outcome) == ("customers", "failed") and error.startswith("firestore: cannot reach 127.0.0.1:")
    shown = CliRunner().invoke(main, ["history", "--entity", "customers"])
    assert shown.stdout.splitlines()[1].endswith("failed: " + error)
