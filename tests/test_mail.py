"""E-mailed reports: a real local SMTP server (aiosmtpd, STARTTLS with a self-signed certificate + AUTH LOGIN/PLAIN)
receives a multipart message built from real audits of seed-shaped customers, with personal data masked."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
import ssl
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg
import pytest
from aiosmtpd.controller import Controller
from hypothesis import given
from hypothesis import strategies as st
from aiosmtpd.smtp import AuthResult, LoginPassword

from reconciler.config import MailSettings
from reconciler.engine import run_audit
from reconciler.errors import RuntimeFailure
from reconciler.mail import send_run_report
from reconciler.masking import MASKED, mask_report
from reconciler.result import RunResult

USER, PASSWORD = "reconciler", "s3cret-pw"


@dataclass
class Inbox:
    messages: list[tuple[list[str], email.message.EmailMessage]] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        assert session.authenticated, "the client sent without AUTH"
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content,
                                                                                  policy=email.policy.default)))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def smtp(cert):
    """A real SMTP server on 127.0.0.1 that requires STARTTLS, then AUTH with USER/PASSWORD."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*cert)

    def authenticate(server, session, envelope, mechanism, auth_data):
        return AuthResult(handled=False, success=isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode()
                          and auth_data.password == PASSWORD.encode())

    inbox = Inbox()
    port = _free_port()
    quiet = logging.getLogger("mail.log")  # aiosmtpd logs every connection at INFO
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    controller = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True,
                            authenticator=authenticate, auth_required=True)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()
        quiet.setLevel(level)


def _mail(settings, port: int, cert: Path, **kw):
    mail = MailSettings(host="127.0.0.1", port=port, starttls=True, username=USER, password=PASSWORD,
                        from_addr="reconciler@ops.example", recipients=("oncall@ops.example",), ca_file=cert,
                        timeout_s=10, **kw)
    return replace(settings, mail=mail)


def _parts(msg) -> dict[str, str]:
    return {part.get_content_type(): part.get_content() for part in msg.walk() if not part.is_multipart()}


@pytest.fixture
def audits(customers_loaded, fs_client, pg_dsn):
    """(clean, drifted) RunResults of real audits; the drift changes personal fields and one number."""
    settings, people = customers_loaded
    clean = run_audit(settings, ["customers"])
    p = people[0]
    fs_client.collection("customers").document(p.id).update(
        {"email": "leaked.person@mailbox.example", "firstName": "Zebedeus", "metrics.totalOrders": -7})
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE customers SET phone = '+49 30 98765432' WHERE id = %s", (people[1].id,))
    drifted = run_audit(settings, ["customers"])
    personal = {p.document["email"], p.document["email"].lower(), "leaked.person@mailbox.example",
                p.document["firstName"], "Zebedeus", "+49 30 98765432", people[1].document.get("phone")} - {None}
    return settings, clean, drifted, personal, p


def test_the_report_arrives_multipart_over_starttls_and_auth_with_personal_data_masked(smtp, cert, audits):
    inbox, port = smtp
    settings, _, drifted, personal, p = audits
    assert {d.path for f in drifted.entities[0].findings for d in f.fields} >= {"email", "firstName", "phone"}
    sent = send_run_report(_mail(settings, port, cert[0]), drifted)
    assert sent == ["oncall@ops.example"]
    ((rcpt, msg),) = inbox.messages
    assert rcpt == ["oncall@ops.example"] and msg["From"] == "reconciler@ops.example"
    assert "drift in customers (2)" in msg["Subject"]
    parts = _parts(msg)
    assert set(parts) == {"text/plain", "text/html"}
    whole = msg.as_string() + "".join(parts.values())  # encoded and decoded: the values are in neither
    for value in personal:
        assert value not in whole, f"personal value {value!r} is in the mail"
    for text in parts.values():  # both parts: the field paths and the fact that they differ stay, values masked
        assert MASKED in text and "firstName" in text and "phone" in text and f"customers/{p.id}" in text
        assert "metrics.totalOrders" in text and "-7" in text  # not personal: shown as is
    assert "<svg" in parts["text/html"] and "2 mismatched" in parts["text/plain"]


def test_the_send_policies(smtp, cert, audits):
    inbox, port = smtp
    settings, clean, drifted, _, _ = audits

    def sends(policy: str, result: RunResult, previous: RunResult | None = None) -> bool:
        before = len(inbox.messages)
        sent = send_run_report(_mail(settings, port, cert[0], send=policy), result, previous=previous)
        assert bool(sent) == (len(inbox.messages) > before)
        return bool(sent)

    assert not sends("on_drift", clean) and sends("on_drift", drifted)
    assert sends("always", clean) and sends("always", drifted)
    assert sends("on_change", drifted, previous=clean) and sends("on_change", drifted, previous=None)
    assert not sends("on_change", drifted, previous=drifted) and not sends("on_change", clean, previous=clean)
    assert sends("on_change", clean, previous=drifted)  # the drift went away: that is a change too
    # the same counts but other drifted keys are a change
    (e,) = drifted.entities
    moved = replace(drifted, entities=(replace(e, findings=(replace(e.findings[0], key="customers/other"),)
                                               + e.findings[1:]),))
    assert sends("on_change", moved, previous=drifted)


def test_per_entity_recipients_get_only_their_entity(smtp, cert, audits):
    inbox, port = smtp
    settings, clean, drifted, _, p = audits
    other = replace(clean.entities[0], entity="accounts")  # a second entity (same real counts, another name)
    run = replace(drifted, entities=(drifted.entities[0], other))
    mail = _mail(settings, port, cert[0], send="always",
                 entity_recipients={"accounts": ("accounts-team@ops.example", "oncall@ops.example"),
                                    "customers": ("crm@ops.example",)})
    sent = send_run_report(mail, run)
    assert sorted(sent) == ["accounts-team@ops.example", "crm@ops.example", "oncall@ops.example"]
    by_rcpt = {tuple(r): m for r, m in inbox.messages}
    assert len(inbox.messages) == 3  # oncall gets the global mail only, though also listed for accounts
    everything = _parts(by_rcpt[("oncall@ops.example",)])["text/html"]
    accounts = _parts(by_rcpt[("accounts-team@ops.example",)])
    crm = _parts(by_rcpt[("crm@ops.example",)])
    assert f"customers/{p.id}" in everything and "accounts" in everything
    assert f"customers/{p.id}" not in accounts["text/html"] + accounts["text/plain"] and "accounts" in accounts["text/plain"]
    assert f"customers/{p.id}" in crm["text/html"] and "accounts:" not in crm["text/plain"]



def test_the_cli_mails_after_a_run(smtp, cert, audits, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from reconciler.cli import main

    inbox, port = smtp
    settings, _, _, personal, p = audits
    cfg = tmp_path / "reconciler.toml"
    cfg.write_text(f"""[audit]\nrules_dir = "{settings.rules_dir}"\n[postgres]\ndsn = "{settings.postgres.dsn}"
[mail]\nhost = "127.0.0.1"\nport = {port}\nusername = "{USER}"\nfrom = "reconciler@ops.example"
recipients = ["oncall@ops.example"]\nca_file = "{cert[0]}"\n""")
    monkeypatch.setenv("RECONCILER_SMTP_PASSWORD", PASSWORD)
    r = CliRunner().invoke(main, ["--config", str(cfg), "--entity", "customers", "--no-progress"])
    assert r.exit_code == 1, r.output
    ((rcpt, msg),) = inbox.messages
    html = _parts(msg)["text/html"]
    whole = msg.as_string() + "".join(_parts(msg).values())
    assert f"customers/{p.id}" in html and MASKED in html and not any(v in whole for v in personal)
    monkeypatch.setenv("RECONCILER_SMTP_PASSWORD", "wrong")  # a mail that cannot be sent fails the run
    r = CliRunner().invoke(main, ["--config", str(cfg), "--entity", "customers", "--no-progress"])
    assert r.exit_code == 3 and "cannot send the report e-mail" in r.output


def test_smtp_failures_are_runtime_failures(smtp, cert, audits):
    _, port = smtp
    settings, _, drifted, _, _ = audits
    bad_password = _mail(settings, port, cert[0])
    bad_password = replace(bad_password, mail=replace(bad_password.mail, password="wrong"))
    with pytest.raises(RuntimeFailure, match=f"127.0.0.1:{port}.*SMTPAuthenticationError"):
        send_run_report(bad_password, drifted)
    untrusted = _mail(settings, port, cert[0])
    untrusted = replace(untrusted, mail=replace(untrusted.mail, ca_file=None))  # the self-signed cert is not trusted
    with pytest.raises(RuntimeFailure, match="CERTIFICATE_VERIFY_FAILED"):
        send_run_report(untrusted, drifted)
    no_tls = _mail(settings, port, cert[0])
    no_tls = replace(no_tls, mail=replace(no_tls.mail, starttls=False))  # the server requires STARTTLS
    with pytest.raises(RuntimeFailure):
        send_run_report(no_tls, drifted)


def test_without_a_host_nothing_is_sent(audits):
    settings, _, drifted, _, _ = audits
    assert send_run_report(settings, drifted) == []


def test_masking_is_one_pass_over_the_report_dict():
    report = {"entities": [{"findings": [
        {"key": "things/1", "fields": [{"path": "contact.Email", "postgres": "a@b.example", "firestore": None},
                                       {"path": "tags", "postgres": [{"ownerName": "Ann"}], "firestore": []}],
         "repair": {"writes": [{"side": "firestore", "op": "update", "path": "things/1",
                                "set": {"contact.Email": "a@b.example"}, "delete": []}],
                    "deleted": {"billingAddress": {"line1": "Main St 1"}, "total": 3}}},
        {"key": "things/1/addresses/9", "fields": [{"path": "line1", "postgres": "Main St 1", "firestore": "x"}]},
    ]}]}
    masked = mask_report(report, ["email", "*name", "address"])
    (a, b) = masked["entities"][0]["findings"]
    assert a["fields"][0] == {"path": "contact.Email", "postgres": MASKED, "firestore": None}
    assert a["fields"][1]["postgres"] == [{"ownerName": MASKED}]
    assert a["repair"]["writes"][0]["set"] == {"contact.Email": MASKED}
    assert a["repair"]["deleted"] == {"billingAddress": MASKED, "total": 3}
    assert b["fields"][0] == {"path": "line1", "postgres": MASKED, "firestore": MASKED}  # addresses/line1
    assert report["entities"][0]["findings"][0]["fields"][0]["postgres"] == "a@b.example"  # input unchanged
    assert mask_report(report, []) == report


def test_mail_and_sentry_config_is_validated(tmp_path):
    from reconciler.config import load_settings
    from reconciler.errors import ConfigError

    cfg = tmp_path / "c.toml"

    def load(text: str, env: dict[str, str] | None = None):
        cfg.write_text(text)
        return load_settings(cfg, env=env or {})

    ok = ('[mail]\nhost = "smtp.example"\nfrom = "r@x.example"\nrecipients = ["a@x.example"]\nusername = "r"\n'
          'starttls = false\nsend = "on_change"\nmask = []\n[mail.entity_recipients]\nthings = ["t@x.example"]\n'
          '[sentry]\nmin_drifted = 5\nmin_drift_ratio = 0\n')
    s = load(ok, {"RECONCILER_SMTP_PASSWORD": "pw"})
    assert (s.mail.password, s.mail.starttls, s.mail.mask, s.mail.entity_recipients) == ("pw", False, (), {"things": ("t@x.example",)})
    assert (s.sentry.min_drifted, s.sentry.min_drift_ratio) == (5, 0.0)
    assert load('[sentry]\n', {"SENTRY_DSN": "http://k@127.0.0.1:9/1"}).sentry.dsn == "http://k@127.0.0.1:9/1"
    with pytest.raises(ConfigError, match=r"mail.password_env: .*\$RECONCILER_SMTP_PASSWORD"):
        load(ok)
    with pytest.raises(ConfigError, match="mail.password: the SMTP password is never read from the file"):
        load('[mail]\npassword = "x"\n')
    with pytest.raises(ConfigError, match="mail.send: must be one of always, on_drift, on_change"):
        load('[mail]\nsend = "sometimes"\n')
    with pytest.raises(ConfigError, match="mail.starttls: must be bool"):
        load('[mail]\nstarttls = "yes"\n')
    with pytest.raises(ConfigError, match="mail.port: must be int"):
        load('[mail]\nport = true\n')
    with pytest.raises(ConfigError, match="mail.recipients: must be a list of e-mail recipients"):
        load('[mail]\nrecipients = ["nobody"]\n')
    with pytest.raises(ConfigError, match="mail.recipients: mail.host is set but nobody would get the report"):
        load('[mail]\nhost = "h"\nfrom = "r@x.example"\n')
    with pytest.raises(ConfigError, match="mail.from"):
        load('[mail]\nhost = "h"\nrecipients = ["a@x.example"]\n')
    with pytest.raises(ConfigError, match=r"sentry.min_drift_ratio: must be a share"):
        load('[sentry]\nmin_drift_ratio = 2.0\n')
    with pytest.raises(ConfigError, match="SENTRY_DSN: is set but empty"):
        load('', {"SENTRY_DSN": ""})



_words = st.sampled_from(["email", "Email", "phone", "firstName", "total", "city", "id", "notes", "billing"])
_paths = st.lists(_words, min_size=1, max_size=3).map(".".join)
_scalars = st.one_of(st.none(), st.integers(), st.text(max_size=8))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(_words, inner, max_size=3)), max_leaves=8)


def _nodes(path: str, value):
    """(path, value) for a value and everything nested in it, by the paths masking uses (lists keep the path)."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _nodes(f"{path}.{k}", v)
    elif isinstance(value, list):
        for v in value:
            yield from _nodes(path, v)


@given(st.lists(st.tuples(_paths, _values, _values), min_size=1, max_size=5),
       st.lists(st.sampled_from(["email", "phone", "*name", "city", "notes.*"]), max_size=3))
def test_no_value_under_a_masked_path_survives_and_nothing_else_changes(fields, patterns):
    from reconciler.masking import Mask

    report = {"entities": [{"findings": [{"key": "things/1", "kind": "mismatch", "fields": [
        {"path": p, "postgres": a, "firestore": b} for p, a, b in fields]}]}]}
    masked = mask_report(report, patterns)
    mask = Mask(patterns)
    pairs = zip(report["entities"][0]["findings"][0]["fields"], masked["entities"][0]["findings"][0]["fields"])
    for before, after in pairs:
        assert after["path"] == before["path"]
        for side in ("postgres", "firestore"):
            for path, value in _nodes(after["path"], after[side]):  # nothing under a matching path survives
                assert not mask.matches(path) or value in (None, MASKED), (path, value)
            if not any(mask.matches(path) for path, _ in _nodes(before["path"], before[side])):
                assert after[side] == before[side]  # and nothing else is touched


def test_run_once_mails_on_change_against_the_previous_run_in_history(smtp, cert, audits, customers_loaded, fs_client,
                                                                      tmp_path, monkeypatch):
    """run_job delivers: with send = "on_change" the previous run comes from the history, so the same drift
    twice mails once, and a newly drifted record mails again."""
    from click.testing import CliRunner

    from reconciler.cli import main

    inbox, port = smtp
    settings, _, _, personal, p = audits
    cfg = tmp_path / "reconciler.toml"
    cfg.write_text(f"""[audit]\nrules_dir = "{settings.rules_dir}"\nentities = ["customers"]
[postgres]\ndsn = "{settings.postgres.dsn}"
[mail]\nhost = "127.0.0.1"\nport = {port}\nusername = "{USER}"\nfrom = "reconciler@ops.example"
recipients = ["oncall@ops.example"]\nca_file = "{cert[0]}"\nsend = "on_change"\n""")
    monkeypatch.setenv("RECONCILER_SMTP_PASSWORD", PASSWORD)

    def run_once() -> int:
        r = CliRunner().invoke(main, ["--config", str(cfg), "run-once"])
        assert r.exit_code == 1, r.output
        return len(inbox.messages)

    assert run_once() == 1  # no history yet: drift is a change from "no drift"
    assert run_once() == 1  # the same drift as the recorded run: no mail
    fs_client.collection("customers").document(p.id).update({"lastName": "Changed"})
    assert run_once() == 1, "another field of an already drifted record: the same keys and counts, no change"
    fs_client.collection("customers").document(customers_loaded.people[2].id).update({"metrics.totalOrders": 999})
    assert run_once() == 2  # a newly drifted record
    whole = "".join(m.as_string() for _, m in inbox.messages)
    assert not any(v in whole for v in personal)
