"""Sentry: the real sentry-sdk sends its envelopes to a local HTTP endpoint (Sentry's servers are the one thing
we cannot run here); the test reads the events. Results come from real audits of seed-shaped customers."""

from __future__ import annotations

import gzip
import json
import pickle
import subprocess
import sys
import threading
import uuid
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reconciler.alerts import capture_failure, send_run_alerts
from reconciler.config import SentrySettings
from reconciler.engine import run_audit
from reconciler.errors import RuntimeFailure


class Envelopes:
    """A tiny Sentry ingest: POST /api/<project>/envelope/ -> the items, decoded."""

    def __init__(self) -> None:
        self.items: list[tuple[dict, dict]] = []  # (item header, payload)
        self.raw: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                assert self.headers.get("Content-Encoding") in (None, "gzip"), self.headers
                outer.raw.append(body)
                outer.items.extend(_parse(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.server_address[1]}/1"

    def events(self) -> list[dict]:
        return [payload for header, payload in self.items if header.get("type") == "event"]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _parse(body: bytes) -> list[tuple[dict, dict]]:
    """An envelope: a header line, then per item a header line and a payload (its `length`, else one line)."""
    _, rest = body.split(b"\n", 1)
    items = []
    while rest.strip():
        header_line, rest = rest.split(b"\n", 1)
        header = json.loads(header_line)
        if "length" in header:
            payload, rest = rest[:header["length"]], rest[header["length"] + 1:]
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((header, json.loads(payload)))
    return items


@pytest.fixture
def sentry():
    e = Envelopes()
    yield e
    e.stop()


@pytest.fixture
def drifted(customers_loaded, fs_client):
    settings, people = customers_loaded
    clean = run_audit(settings, ["customers"])
    for p in people[:3]:
        fs_client.collection("customers").document(p.id).update({"email": f"secret-{p.id[:8]}@private.example",
                                                                 "metrics.totalOrders": 999})
    fs_client.collection("customers").document(people[3].id).delete()
    return settings, clean, run_audit(settings, ["customers"]), people


def _with_dsn(settings, dsn: str, **kw):
    return replace(settings, sentry=SentrySettings(dsn=dsn, environment="test", **kw))


def test_one_event_per_drifted_entity_with_counts_as_tags_and_a_grouping_fingerprint(sentry, drifted):
    settings, clean, result, people = drifted
    (customers,) = result.entities
    assert customers.counts.drifted == 4 and customers.counts.mismatched == 3
    others = (replace(clean.entities[0], entity="accounts"),  # clean: no event
              replace(customers, entity="ledger"),  # drifted too: its own event
              replace(clean.entities[0], entity="broken", error="firestore: cannot reach the emulator"))
    run = replace(result, entities=(customers, *others))
    assert send_run_alerts(_with_dsn(settings, sentry.dsn), run) == 3
    events = {e["tags"]["entity"]: e for e in sentry.events()}
    assert set(events) == {"customers", "ledger", "broken"} and len(sentry.events()) == 3
    ev = events["customers"]
    assert ev["fingerprint"] == ["reconciler-drift", "customers"] and ev["level"] == "warning"
    assert ev["environment"] == "test"
    assert ev["tags"].items() >= {"entity": "customers", "run_id": result.run_id, "mode": "audit", "drifted": "4",
                               "mismatched": "3", "missing_in_firestore": "1", "missing_in_postgres": "0"}.items()
    drift = ev["contexts"]["drift"]
    assert drift["drifted"] == 4 and drift["matched"] == customers.counts.matched
    assert drift["top_fields"]["metrics.totalOrders"] == 3
    assert events["ledger"]["fingerprint"] == ["reconciler-drift", "ledger"]
    assert events["broken"]["level"] == "error" and events["broken"]["fingerprint"] == ["reconciler-failure", "broken"]
    everything = b"".join(sentry.raw).decode()
    for p in people[:3]:  # counts and field paths only: no finding's values leave the machine
        assert f"secret-{p.id[:8]}" not in everything and p.document["email"] not in everything
    # a second run with the same entity drifting groups into the same issue: the same fingerprint
    sentry.items.clear()
    assert send_run_alerts(_with_dsn(settings, sentry.dsn), result) == 1
    assert sentry.events()[0]["fingerprint"] == ev["fingerprint"]


def test_the_threshold(sentry, drifted):
    settings, _, result, _ = drifted
    assert send_run_alerts(_with_dsn(settings, sentry.dsn, min_drifted=5), result) == 0  # 4 drifted
    assert send_run_alerts(_with_dsn(settings, sentry.dsn, min_drifted=4, min_drift_ratio=0.5), result) == 0
    assert sentry.events() == []
    assert send_run_alerts(_with_dsn(settings, sentry.dsn, min_drifted=4, min_drift_ratio=0.01), result) == 1


def test_failures_are_sent_as_errors_without_local_values(sentry, drifted):
    settings, *_ = drifted
    secret = f"{uuid.uuid4().hex}@private.example"  # made at run time: not in the source context lines either

    def fails() -> None:
        customer_email = secret  # noqa: F841 - a local variable: must not be sent
        raise RuntimeFailure("postgres: cannot connect: connection refused")

    try:
        fails()
    except RuntimeFailure as exc:
        capture_failure(_with_dsn(settings, sentry.dsn), exc)
    (ev,) = sentry.events()
    (exc,) = ev["exception"]["values"]
    assert exc["type"] == "RuntimeFailure" and "cannot connect" in exc["value"] and ev["level"] == "error"
    assert exc["stacktrace"]["frames"][-1]["function"] == "fails"
    assert secret not in b"".join(sentry.raw).decode()


def test_without_a_dsn_nothing_is_sent_and_sentry_is_not_even_imported(sentry, drifted):
    settings, _, result, _ = drifted
    assert send_run_alerts(settings, result) == 0
    capture_failure(settings, RuntimeFailure("boom"))
    assert sentry.raw == []
    code = ("import pickle, sys; from reconciler import alerts, config; from reconciler.errors import RuntimeFailure\n"
            "settings, result = pickle.load(sys.stdin.buffer)\n"
            "n = alerts.send_run_alerts(settings, result); alerts.capture_failure(settings, RuntimeFailure('x'))\n"
            "print(n, 'sentry_sdk' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps((settings, result)), capture_output=True,
                         check=True)
    assert out.stdout.decode().split() == ["0", "False"]


def test_the_cli_sends_drift_events_and_failures(sentry, drifted, monkeypatch):
    from click.testing import CliRunner

    from reconciler.cli import main

    settings, *_ = drifted
    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    monkeypatch.setenv("RECONCILER_PG_DSN", settings.postgres.dsn)
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(settings.rules_dir))
    r = CliRunner().invoke(main, ["--entity", "customers", "--no-progress"])
    assert r.exit_code == 1, r.output
    (ev,) = sentry.events()
    assert ev["fingerprint"] == ["reconciler-drift", "customers"]
    sentry.items.clear()
    monkeypatch.setenv("RECONCILER_PG_DSN", "postgresql://nobody@127.0.0.1:1/x")  # unreachable: exit 3
    r = CliRunner().invoke(main, ["--entity", "customers", "--no-progress"])
    assert r.exit_code == 3, r.output
    (ev,) = sentry.events()
    assert ev["level"] == "error" and ev["exception"]["values"][0]["type"] == "RuntimeFailure"


def test_a_malformed_dsn_is_a_config_error(drifted):
    from reconciler.errors import ConfigError

    settings, _, result, _ = drifted
    with pytest.raises(ConfigError, match=r"sentry.dsn \(or SENTRY_DSN\): not a Sentry DSN"):
        send_run_alerts(_with_dsn(settings, "not-a-dsn"), result)
    capture_failure(_with_dsn(settings, "not-a-dsn"), RuntimeFailure("x"))  # logs a warning, never raises
