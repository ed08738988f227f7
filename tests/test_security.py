"""Injection and leaks: names from rules are identifiers, never SQL; report values are text in a real browser,
never markup; passwords never reach stdout, stderr or report files (real processes, real Postgres)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from click.testing import CliRunner

from reconciler import sandbox
from reconciler.cli import main
from reconciler.config import load_settings
from reconciler.engine import run_audit
from reconciler.errors import RulesError
from reconciler.redact import dsn_password, scrub
from reconciler.repair import Options
from reconciler.report import write_reports
from reconciler.result import (Counts, EntityResult, FieldDiff, Finding, FindingKind, Repair, RepairAction,
                               RepairStatus, RepairSummary, RunResult)

ROOT = Path(__file__).parents[1]

# ------------------------------------------------------------------------------------------ SQL injection

EVIL_TABLE = 'things; DROP TABLE victim; --'
EVIL_COLUMN = 'na"me\'); DROP TABLE victim; --'
EVIL_CHILD = 'parts"; DELETE FROM victim; --'


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _evil_rules(tmp: Path, table: str = EVIL_TABLE) -> Path:
    rules = tmp / "rules"
    rules.mkdir(exist_ok=True)
    # YAML single-quoted scalars: a quote is doubled
    q = lambda s: "'" + s.replace("'", "''") + "'"  # noqa: E731
    (rules / "things.yaml").write_text(f"""\
entity: things
source_of_truth: firestore
collection: things
table: {q(table)}
key: id
columns:
  {q(EVIL_COLUMN)}: name
  "select": {{field: sel}}
subcollections:
  - collection: parts
    table: {q(EVIL_CHILD)}
    key: id
    parent: thing_id
    columns:
      {q('la bel')}: label
""")
    return rules


def test_table_and_column_names_from_rules_are_quoted_identifiers(pg_dsn, fs_client, fs_project, tmp_path):
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE victim (x int)")
        conn.execute("INSERT INTO victim VALUES (1)")
        conn.execute(f"CREATE TABLE {_ident(EVIL_TABLE)} (id text PRIMARY KEY, {_ident(EVIL_COLUMN)} text, "
                     '"select" int)')
        conn.execute(f"CREATE TABLE {_ident(EVIL_CHILD)} (id text, thing_id text, \"la bel\" text)")
        conn.execute(f"INSERT INTO {_ident(EVIL_TABLE)} VALUES ('t1', 'one', 1), ('t2', 'two', 2)")
        conn.execute(f"INSERT INTO {_ident(EVIL_CHILD)} VALUES ('p1', 't1', 'L1')")
    col = fs_client.collection("things")
    col.document("t1").set({"name": "one", "sel": 1})
    col.document("t1").collection("parts").document("p1").set({"label": "L1"})
    col.document("t2").set({"name": "TWO'); DROP TABLE victim; --", "sel": 2})  # drift, repaired toward Postgres
    settings = load_settings(None, env={"RECONCILER_PG_DSN": pg_dsn, "GOOGLE_CLOUD_PROJECT": fs_project,
                                        "RECONCILER_RULES_DIR": str(_evil_rules(tmp_path))})

    result = run_audit(settings, ["things"])
    (e,) = result.entities
    assert e.error is None
    assert (e.counts.postgres, e.counts.matched, e.counts.mismatched) == (3, 2, 1), e.findings
    assert [(f.key, [d.path for d in f.fields]) for f in e.findings] == [("things/t2", ["name"])]

    repaired = run_audit(settings, ["things"], repair=Options(apply=True, force=True))
    assert repaired.entities[0].repair.done == 1, repaired.entities[0]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT x FROM victim").fetchall() == [(1,)]
        assert conn.execute(f"SELECT {_ident(EVIL_COLUMN)} FROM {_ident(EVIL_TABLE)} WHERE id = 't2'").fetchone() \
            == ("TWO'); DROP TABLE victim; --",)
    assert not run_audit(settings, ["things"]).has_drift

    # a rules file naming a table that is not there: a clean error naming it, and nothing dropped
    other = tmp_path / "other"
    other.mkdir()
    settings = load_settings(None, env={"RECONCILER_PG_DSN": pg_dsn, "GOOGLE_CLOUD_PROJECT": fs_project,
                                        "RECONCILER_RULES_DIR": str(_evil_rules(other, "customers; DROP TABLE victim"))})
    with pytest.raises(RulesError, match=r"customers; DROP TABLE victim"):
        run_audit(settings, ["things"])
    res = CliRunner(env={"RECONCILER_PG_DSN": pg_dsn, "RECONCILER_RULES_DIR": str(other / "rules")}).invoke(
        main, ["--entity", "things"])
    assert res.exit_code == 2 and "customers; DROP TABLE victim" in res.output and "Traceback" not in res.output
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT x FROM victim").fetchall() == [(1,)]


# ------------------------------------------------------------------------------------------ HTML in a browser

XSS = ["<script>document.title='pwned'</script>", "<img src=x onerror=\"document.title='pwned'\">",
       "\"><svg onload=\"document.title='pwned'\">", "</td></tr></table><script>document.title='pwned'</script>",
       "javascript:document.title='pwned'", "{{ 7*7 }}{% raw %}"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_dom(page: Path) -> str:
    """The DOM of `page` after Chromium loaded it (and ran whatever scripts it would run)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Chromium is needed (Debian package `chromium`; .ci/run installs it when root)"
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        res = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "<html" in res.stdout, res.stderr[-2000:]
    return res.stdout


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_title = tag == "title" and not self.title  # the page's; later ones are SVG tooltips

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_title:
            self.title += data


def _hostile_result() -> RunResult:
    t = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    findings = tuple(
        Finding(f"customers/{x}", FindingKind.MISMATCH,
                (FieldDiff(x, x, {x: [x]}, pattern=x), FieldDiff("n", 1, x, pattern="n", kind="type_mismatch")),
                Repair(RepairAction.UPDATE, RepairStatus.FAILED, x, ({"side": "firestore", "op": "update", "path": x,
                                                                      "set": {x: x}, "delete": [x]},)))
        for x in XSS)
    entities = tuple(
        EntityResult(entity=x, source_of_truth="postgres", counts=Counts(3, 3, 1, 2), findings=findings,
                     findings_truncated=True, field_counts={x: 2}, error=x,
                     repair=RepairSummary("firestore", True, refused=x))
        for x in XSS[:2])
    return RunResult(run_id=XSS[0], mode="repair", started_at=t, finished_at=t, entities=entities)


def test_html_report_shows_hostile_values_as_text_in_chromium(tmp_path):
    paths = write_reports(_hostile_result(), tmp_path)
    dom = _Markup()
    dom.feed(chromium_dom(paths.html))
    assert dom.title.startswith("Drift found")  # a script that ran would have set it to "pwned"
    assert not [t for t, _ in dom.tags if t in ("script", "img", "iframe", "object", "embed")]  # its charts are svg
    assert not [(t, a) for t, a in dom.tags for name in a if name.startswith("on")]
    assert not [(t, a) for t, a in dom.tags if "javascript:" in (a.get("href") or "")]
    text = "".join(dom.text)
    for x in XSS:
        assert x in text, x  # shown as the text it is


# ------------------------------------------------------------------------------------------ password leaks

PASSWORD = "Lk9-pw!zQ@x#7 r"  # distinctive, and needing URL-encoding


def test_dsn_password_parsing():
    assert dsn_password(f"postgresql://u:{quote(PASSWORD, safe='')}@h:5/db") == PASSWORD
    assert dsn_password("host=h password='a b\\'c' user=u") == "a b'c"
    assert dsn_password("password=plain host=h") == "plain"
    assert dsn_password("postgresql://u@h/db") is None and dsn_password("") is None
    assert scrub(f"x {quote(PASSWORD, safe='')} y {PASSWORD}", [PASSWORD]) == "x *** y ***"


@pytest.fixture
def password_role(pg_server, customers_loaded):
    """A role that logs in with PASSWORD over TCP (scram, however the rest of the server authenticates)."""
    settings, _ = customers_loaded
    role = f"leaky_{uuid.uuid4().hex[:8]}"
    admin = settings.postgres.dsn
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f"CREATE ROLE {role}_b LOGIN PASSWORD 'another one'")  # PASSWORD is the wrong one for it
        conn.execute(f"GRANT pg_read_all_data TO {role}")
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        before = hba.read_text()
        hba.write_text(f"host all {role},{role}_b 127.0.0.1/32 scram-sha-256\n" + before)
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield role, settings
    finally:
        hba.write_text(before)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}, {role}_b")


def _reconcile(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=ROOT, timeout=300)


def test_passwords_never_reach_output_or_reports(password_role, pg_server, tmp_path):
    role, settings = password_role
    info = psycopg.conninfo.conninfo_to_dict(settings.postgres.dsn)
    host, port, db = info.get("host", "127.0.0.1"), info["port"], info["dbname"]
    enc = quote(PASSWORD, safe="")
    good = f"postgresql://{role}:{enc}@{host}:{port}/{db}"
    base = {"RECONCILER_RULES_DIR": str(ROOT / "rules"), "PGCONNECT_TIMEOUT": "5"}
    report = tmp_path / "out"
    cases = [  # (name, args, env, expected exit code, a text that shows the message still says what failed)
        ("audit ok", ["--entity", "customers", "--report-dir", str(report)], {"RECONCILER_PG_DSN": good}, 0, "matched"),
        ("rules check ok", ["rules", "check", "--entity", "customers"], {"RECONCILER_PG_DSN": good}, 0, "ok"),
        ("wrong password", ["--entity", "customers"],
         {"RECONCILER_PG_DSN": f"postgresql://{role}_b:{enc}@{host}:{port}/{db}"}, 3, "authentication failed"),
        ("no such database", ["--entity", "customers", "--pg-dsn", f"postgresql://{role}:{enc}@{host}:{port}/nodb"],
         {}, 3, "does not exist"),
        ("nothing listens", ["--entity", "customers", "--report-dir", str(report)],
         {"RECONCILER_PG_DSN": f"postgresql://{role}:{enc}@{host}:{sandbox.free_port()}/{db}"}, 3, "cannot connect"),
        ("malformed URL", ["--entity", "customers", "--debug"],
         {"RECONCILER_PG_DSN": f"postgresql://{role}:{enc}@[::1/{db}"}, 2, "not a valid connection string"),
        ("password pasted without its key", ["--entity", "customers"],
         {"RECONCILER_PG_DSN": f"host={host} port={port} {PASSWORD.replace(' ', '')}"}, 2,
         "not a valid connection string"),
        ("password with an unquoted space", ["--entity", "customers"],
         {"RECONCILER_PG_DSN": f"host={host} port={port} password={PASSWORD}"}, 2, "not a valid connection string"),
        ("PGPASSWORD, wrong user", ["--entity", "customers"],
         {"PGPASSWORD": PASSWORD, "RECONCILER_PG_DSN": f"host={host} port={port} dbname={db} user={role}_b"}, 3,
         "authentication failed"),
    ]
    forms = {PASSWORD, enc, quote(PASSWORD), PASSWORD.replace(" ", "")}
    for name, args, env, code, says in cases:
        res = _reconcile(args, {**base, **env})
        assert res.returncode == code, (name, res.stdout, res.stderr)
        assert says in res.stdout + res.stderr, (name, res.stdout, res.stderr)
        for form in forms:
            assert form not in res.stdout and form not in res.stderr, (name, form, res.stdout, res.stderr)
    files = list(report.iterdir())
    assert {p.name for p in files} >= {"report.json", "report.html"}
    for p in files:
        text = p.read_text(errors="replace")
        for form in forms:
            assert form not in text, (p, form)


def test_a_failure_sent_to_sentry_carries_no_password(customers_loaded, tmp_path):
    from dataclasses import replace

    from test_alerts import Envelopes, _with_dsn

    from reconciler.alerts import capture_failure
    from reconciler.errors import RuntimeFailure

    settings, _ = customers_loaded
    enc = quote(PASSWORD, safe="")
    settings = replace(settings, postgres=replace(settings.postgres, dsn=f"postgresql://u:{enc}@127.0.0.1:1/db"))
    sentry = Envelopes()
    try:
        try:
            raise RuntimeFailure(f"postgres: a library quoted the DSN postgresql://u:{enc}@127.0.0.1:1/db back")
        except RuntimeFailure as exc:
            capture_failure(_with_dsn(settings, sentry.dsn), exc)
        (ev,) = sentry.events()
        sent = b"".join(sentry.raw).decode()
    finally:
        sentry.stop()
    assert "postgresql://u:***@127.0.0.1:1/db" in ev["exception"]["values"][0]["value"]
    assert enc not in sent and PASSWORD not in sent
